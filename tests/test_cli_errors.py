"""Every tool reports a user error as one line `prog: error: <what, which file>` with exit status 2, never a traceback."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import cv2
import keras
import numpy as np
import pytest

from keras_insightface import IJB_evals, data_distiller, data_drop_top_k, eval_folder, export, model_interf, models, prepare_data
from tests.helpers import make_image_folder, tiny_basic_model


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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_library_module_run_as_a_script_names_the_commands():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run([sys.executable, "losses.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.rstrip("\n").split("\n")[-1] == (
        "losses.py is a library module, not a command: import it (`import losses` at the repo root, or `from keras_insightface "
        "import losses`); the commands are: train.py, prepare_data.py, data_drop_top_k.py, data_distiller.py, IJB_evals.py, "
        "export.py, eval_folder.py, convert_insightface.py, plot.py")


@pytest.fixture(scope="module")
def foreign_callable_file(tmp_path_factory):
    """A .keras basic model whose Dense activation names `os.system`: refused before Keras reads the config."""
    inputs = keras.Input((112, 112, 3))
    path = str(tmp_path_factory.mktemp("models") / "hostile.keras")
    keras.Model(inputs, keras.layers.Dense(4, name="embedding")(keras.layers.GlobalAveragePooling2D()(inputs))).save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["layers"][-1]["config"]["activation"] = {"module": "os", "class_name": "function", "config": "system",
                                                               "registered_name": "system"}
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


@pytest.mark.parametrize("tool", ["eval_folder", "data_distiller", "IJB_evals"])
def test_a_config_naming_a_foreign_callable_is_one_line(foreign_callable_file, tmp_path, capsys, tool):
    folder = make_image_folder(tmp_path / "faces", num_classes=2, images_per_class=2)
    ijb_root = tmp_path / "IJB_release"
    meta_dir = ijb_root / "IJBB" / "meta"
    meta_dir.mkdir(parents=True)
    (ijb_root / "IJBB" / "loose_crop").mkdir()
    (meta_dir / "ijbb_face_tid_mid.txt").write_text("1.jpg 1 1\n2.jpg 2 2\n")
    (meta_dir / "ijbb_name_5pts_score.txt").write_text("".join("{}.jpg {} 0.9\n".format(ii, " ".join(["50"] * 10)) for ii in (1, 2)))
    (meta_dir / "ijbb_template_pair_label.txt").write_text("1 2 0\n1 1 1\n")
    for name in ("1.jpg", "2.jpg"):
        (ijb_root / "IJBB" / "loose_crop" / name).write_bytes(b"")
    argv = {
        "eval_folder": ["-m", foreign_callable_file, "-d", folder],
        "data_distiller": ["-M", foreign_callable_file, "-D", folder, "-d", str(tmp_path / "out.tfrecord")],
        "IJB_evals": ["-m", foreign_callable_file, "-d", str(ijb_root), "-o", str(tmp_path / "out")],
    }[tool]
    main = {"eval_folder": eval_folder.main, "data_distiller": data_distiller.main, "IJB_evals": IJB_evals.main}[tool]
    status, err = run_main(main, argv, capsys)
    last = err.rstrip("\n").split("\n")[-1]
    assert status == 2 and "Traceback" not in err, err
    assert last == "{}.py: error: {}: the model config names 'os.system', outside Keras and the registered custom objects; it is " \
                   "neither imported nor run (Keras safe mode). Load only models whose code you have and trust".format(tool, foreign_callable_file)


def test_data_distiller_takes_the_embedding_of_a_training_model(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "faces", num_classes=2, images_per_class=2)
    basic = tiny_basic_model(emb=6)
    full_path = str(tmp_path / "full_model.h5")
    keras.Model(basic.inputs[0], models.NormDense(9, name="NormDense")(basic.outputs[0])).save(full_path)
    dest = str(tmp_path / "teacher.npz")
    assert data_distiller.main(["-M", full_path, "-D", folder, "-d", dest, "--save_npz", "-b", "2"]) == 0
    assert "cut at its 'embedding' layer, whose 6-d output" in capsys.readouterr().out
    with np.load(dest) as saved:
        images = np.stack([cv2.cvtColor(cv2.imread(str(name)), cv2.COLOR_BGR2RGB) for name in saved["image_names"]])
        expected = np.array(basic((images.astype("float32") - 127.5) / 128, training=False))
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-4)  # 6-d embeddings, not 9 class scores
