"""Every tool reports a user error as one line `prog: error: <what, which file>` with exit status 2, never a traceback."""
import pickle
import sys

import keras
import numpy as np
import pytest

from keras_insightface import IJB_evals, data_distiller, data_drop_top_k, export, model_interf, models, prepare_data


def run_main(main, argv, capsys):
    """(exit status, stderr) of a tool's main."""
    status = main(argv)
    return status, capsys.readouterr().err


def assert_user_error(main, argv, capsys, prog, *parts):
    status, err = run_main(main, argv, capsys)
    assert status == 2, err
    assert err.startswith(prog + ": error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


@pytest.fixture(scope="module")
def lambda_model_file(tmp_path_factory):
    inputs = keras.Input((112, 112, 3))
    embedding = keras.layers.Dense(4, name="embedding")(keras.layers.Lambda(lambda x: x[:, 0, 0] * 2.0)(inputs))
    path = str(tmp_path_factory.mktemp("models") / "lambda_model.keras")
    keras.Model(inputs, embedding).save(path)
    return path


@pytest.fixture(scope="module")
def no_sub_center_file(tmp_path_factory):
    inputs = keras.Input((112, 112, 3))
    embedding = keras.layers.Dense(3, name="embedding")(keras.layers.GlobalAveragePooling2D()(inputs))
    path = str(tmp_path_factory.mktemp("models") / "plain_head.h5")
    keras.Model(inputs, models.NormDense(2, loss_top_k=1, name="NormDense")(embedding)).save(path)
    return path


def test_model_without_sub_centers(no_sub_center_file, tmp_path, capsys):
    assert_user_error(data_drop_top_k.main, ["-M", no_sub_center_file, "-D", str(tmp_path)], capsys,
                      "data_drop_top_k.py", no_sub_center_file + ": the model has no sub-centers")


@pytest.mark.parametrize("tool", ["data_drop_top_k", "export", "data_distiller"])
def test_lambda_layer_refused_by_safe_mode_is_explained(lambda_model_file, tmp_path, capsys, tool):
    argv = {
        "data_drop_top_k": ["-M", lambda_model_file, "-D", str(tmp_path)],
        "export": ["-m", lambda_model_file, "-o", str(tmp_path / "out.tflite")],
        "data_distiller": ["-M", lambda_model_file, "-D", str(tmp_path)],
    }[tool]
    main = {"data_drop_top_k": data_drop_top_k.main, "export": export.main, "data_distiller": data_distiller.main}[tool]
    assert_user_error(main, argv, capsys, tool + ".py", lambda_model_file + ": the model has a Lambda layer", "safe_mode=False")


def test_missing_folder(tmp_path, capsys):
    missing = str(tmp_path / "no_such_dataset")
    assert_user_error(prepare_data.main, ["-D", missing], capsys, "prepare_data.py", missing)
    assert_user_error(IJB_evals.main, ["-m", "model.h5", "-d", missing], capsys, "IJB_evals.py", missing)


def test_malformed_ijb_meta(tmp_path, capsys):
    meta_dir = tmp_path / "IJB_release" / "IJBB" / "meta"
    meta_dir.mkdir(parents=True)
    (meta_dir / "ijbb_face_tid_mid.txt").write_text("1.jpg 1 1\n2.jpg x 2\n")
    assert_user_error(IJB_evals.main, ["-m", "model.h5", "-d", str(tmp_path / "IJB_release")], capsys,
                      "IJB_evals.py", "ijbb_face_tid_mid.txt: line 2: column 'template' should be int")


def test_missing_optional_dependency_names_the_extra(tmp_path, capsys, monkeypatch):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not loaded")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"model.onnx: ONNX models need the optional package 'onnxruntime'.*pip install keras_insightface\[onnx\]"):
        model_interf.load_model_interf(str(onnx_file))

    np.save(tmp_path / "a.npy", np.array([0.9, 0.1], "float32"))
    np.savez(tmp_path / "IJBB_label.npz", label=np.array([1, 0]))
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert_user_error(IJB_evals.main, ["--plot_only", str(tmp_path / "a.npy"), str(tmp_path / "IJBB_label.npz")], capsys,
                      "IJB_evals.py", "pip install keras_insightface[plot]")


def test_bin_bomb_via_the_command_line(tmp_path, capsys):
    path = tmp_path / "bomb.bin"
    with open(path, "wb") as ff:
        pickle.dump(([b"\xff\xd8\xff" + b"\0" * 4000] * 100000, [True] * 50000), ff, protocol=4)
    assert_user_error(prepare_data.main, ["-D", str(tmp_path), "-T", str(path)], capsys, "prepare_data.py",
                      str(path) + ": lists 100000 images, but a")
