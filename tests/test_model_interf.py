"""model_interf: Keras / ONNX models become embedding functions; clear errors for missing files and optional backends."""
import importlib.util

import keras
import numpy as np
import pytest

from keras_insightface.model_interf import ModelInterf, load_model_interf, model_name

SIZE = 8  # small faces keep the tests fast; the interface does not fix the image size


def _faces(count=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, [count, SIZE, SIZE, 3], dtype="uint8")


def _dense_model(weights):
    inputs = keras.Input([SIZE, SIZE, 3])
    outputs = keras.layers.Dense(weights.shape[1], use_bias=False, name="embedding")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("embedding").set_weights([weights])
    return model


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_keras_file_matches_numpy_with_project_normalization(tmp_path, suffix):
    weights = np.random.default_rng(1).normal(size=[SIZE * SIZE * 3, 6]).astype("float32")
    path = str(tmp_path / ("basic_model" + suffix))
    _dense_model(weights).save(path)
    faces = _faces()
    expected = ((faces.astype("float64") - 127.5) * 0.0078125).reshape(len(faces), -1) @ weights

    interf = load_model_interf(path, batch_size=2)
    embs = interf(faces)
    assert embs.dtype == np.float32 and embs.shape == (5, 6)
    np.testing.assert_allclose(embs, expected, rtol=1e-4, atol=1e-4)
    assert interf.name == "basic_model"


def test_keras_in_memory_model_and_normalization_override():
    weights = np.random.default_rng(2).normal(size=[SIZE * SIZE * 3, 4]).astype("float32")
    faces = _faces(3)
    embs = load_model_interf(_dense_model(weights), mean=0.0, std=255.0)(faces)
    np.testing.assert_allclose(embs, (faces / 255.0).reshape(3, -1) @ weights, rtol=1e-4, atol=1e-4)


def _onnx_matmul_model(path, weights, layout):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = ["batch", 3, SIZE, SIZE] if layout == "NCHW" else ["batch", SIZE, SIZE, 3]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["fc1"])],
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("layout, std", [("NCHW", 127.5), ("NHWC", 128.0)])
def test_onnx_layout_inferred_from_input_shape(tmp_path, layout, std):
    pytest.importorskip("onnx")
    weights = np.random.default_rng(3).normal(size=[SIZE * SIZE * 3, 7]).astype("float32")
    path = str(tmp_path / "r100.onnx")
    _onnx_matmul_model(path, weights, layout)
    faces = _faces(4)
    normalized = (faces.astype("float64") - 127.5) / std
    if layout == "NCHW":
        normalized = normalized.transpose(0, 3, 1, 2)
    expected = normalized.reshape(4, -1) @ weights

    interf = load_model_interf(path)
    assert interf.input_layout == layout
    np.testing.assert_allclose(interf(faces), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(load_model_interf(path, batch_size=3)(faces), expected, rtol=1e-4, atol=1e-4)


def test_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "nowhere.h5")
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        load_model_interf(missing)


def test_missing_mxnet_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model-symbol.json"):
        load_model_interf(str(tmp_path / "model") + ",0")


def test_unsupported_type_lists_supported():
    with pytest.raises(ValueError, match=r"\.onnx"):
        load_model_interf("model.bin")


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_torchscript_without_torch_says_how_to_install(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a real model")
    with pytest.raises(ImportError, match="pip install torch"):
        load_model_interf(str(path))


@pytest.mark.skipif(importlib.util.find_spec("mxnet") is not None, reason="mxnet is installed")
def test_mxnet_without_mxnet_explains_the_numpy_conflict(tmp_path):
    prefix = str(tmp_path / "model")
    open(prefix + "-symbol.json", "w").close()
    open(prefix + "-0001.params", "w").close()
    with pytest.raises(ImportError, match=r"numpy<1\.24"):
        load_model_interf(prefix + ",1")


def test_model_name_and_input_checks():
    assert model_name("checkpoints/basic_model.h5") == "basic_model"
    assert model_name("/m/MS1MV2-ResNet100-Arcface/model,0") == "MS1MV2-ResNet100-Arcface"
    interf = ModelInterf(lambda x: x.reshape(len(x), -1)[:, :2], input_layout="NCHW", mean=0, std=1)
    faces = _faces(2)
    np.testing.assert_array_equal(interf(faces), faces.transpose(0, 3, 1, 2).reshape(2, -1)[:, :2])
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        interf(np.zeros([2, SIZE, SIZE]))


# ---------------------------------------------------------------- training models, foreign callables, broken files
def _training_model(weights, head):
    """_dense_model's embedding followed by a classification head: 'normdense' (NormDense) or 'softmax' (Dense)."""
    from keras_insightface import models

    basic = _dense_model(weights)
    layer = models.NormDense(5, name="NormDense") if head == "normdense" else keras.layers.Dense(5, activation="softmax", name="head")
    return keras.Model(basic.inputs[0], layer(basic.outputs[0]))


@pytest.mark.parametrize("head, suffix", [("normdense", ".h5"), ("softmax", ".keras")])
def test_a_training_model_is_cut_at_its_embedding_layer(tmp_path, capsys, head, suffix):
    from keras_insightface.model_interf import load_teacher

    weights = np.random.default_rng(4).normal(size=[SIZE * SIZE * 3, 6]).astype("float32")
    path = str(tmp_path / ("full_model" + suffix))
    _training_model(weights, head).save(path)
    faces = _faces(3)
    expected = ((faces.astype("float64") - 127.5) * 0.0078125).reshape(3, -1) @ weights  # the embedding, not 5 class scores
    np.testing.assert_allclose(load_model_interf(path)(faces), expected, rtol=1e-4, atol=1e-4)
    assert "{}: a training model (outputs (None, 5)): cut at its 'embedding' layer, whose 6-d output".format(path) in capsys.readouterr().out
    assert load_teacher(path).outputs[0].shape[-1] == 6
    assert load_teacher(_training_model(weights, head)).outputs[0].shape[-1] == 6


def test_a_classification_head_without_an_embedding_layer_is_refused(tmp_path):
    inputs = keras.Input([SIZE, SIZE, 3])
    features = keras.layers.Dense(6, name="features")(keras.layers.Flatten()(inputs))
    path = str(tmp_path / "classifier.keras")
    keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="probabilities")(features)).save(path)
    with pytest.raises(ValueError, match=r"classifier.keras: the model ends in a classification head \(softmax layer 'probabilities'\) "
                                         r"and has no layer named 'embedding'"):
        load_model_interf(path)


def _with_foreign_activation(path, module):
    """Rewrite the saved model's Dense activation to `module.run`, as a hostile file would."""
    import json
    import zipfile

    import h5py

    foreign = {"module": module, "class_name": "function", "config": "run", "registered_name": "run"}

    def rewrite(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Dense":
                layer["config"]["activation"] = foreign
        return json.dumps(config)

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        files["config.json"] = rewrite(json.loads(files["config.json"])).encode()
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in files.items():
                archive.writestr(name, content)
    else:
        with h5py.File(path, "r+") as ff:
            ff.attrs["model_config"] = rewrite(json.loads(ff.attrs["model_config"]))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_config_naming_a_foreign_callable_is_refused_and_never_imported(tmp_path, monkeypatch, suffix):
    marker = tmp_path / "payload_ran"
    (tmp_path / "hostile_payload.py").write_text("open({!r}, 'w').write('imported')\ndef run(x):\n    return x\n".format(str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = str(tmp_path / ("hostile" + suffix))
    _dense_model(np.ones([SIZE * SIZE * 3, 2], "float32")).save(path)
    _with_foreign_activation(path, "hostile_payload")
    with pytest.raises(ValueError, match=r"hostile{}: the model config names 'hostile_payload.run', outside Keras".format(suffix)):
        load_model_interf(path)
    assert not marker.exists()


def test_random_bytes_are_named_errors(tmp_path):
    pytest.importorskip("onnxruntime")
    junk = np.random.default_rng(0).bytes(4000)
    for name, message in (("model.onnx", "not a readable ONNX model"), ("model.keras", "not a readable Keras model"),
                          ("model.h5", "not a readable Keras model")):
        (tmp_path / name).write_bytes(junk)
        with pytest.raises(ValueError, match="{}: {}".format(name, message)):
            load_model_interf(str(tmp_path / name))
