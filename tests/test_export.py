"""Tests of export.py: TFLite / ONNX export of tiny basic models, parity on real faces, clear input errors."""
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from keras_insightface import export  # noqa: E402
from tests.helpers import write_image  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

HERE = os.path.dirname(os.path.abspath(__file__))
LFW_BIN = os.path.join(HERE, "data", "faces_rec", "lfw.bin")
IMAGE_SHAPE = (112, 112, 3)


# ---------------------------------------------------------------- tiny basic models, saved once
def _prelu_gdc_model():
    """Conv / BN / PReLU stem, then a GDC head: full-map DepthwiseConv2D, Conv 1x1, BN, PReLU."""
    inputs = keras.Input(IMAGE_SHAPE)
    nn = inputs
    for filters in (8, 16, 16):
        nn = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(nn)
        nn = keras.layers.BatchNormalization()(nn)
        nn = keras.layers.PReLU(shared_axes=[1, 2])(nn)
    nn = keras.layers.DepthwiseConv2D(tuple(nn.shape[1:3]), use_bias=False, name="GDC_dw")(nn)
    nn = keras.layers.Conv2D(32, 1, use_bias=False, name="GDC_conv")(nn)
    nn = keras.layers.BatchNormalization(name="GDC_bn")(nn)
    nn = keras.layers.PReLU(shared_axes=[1, 2], name="GDC_prelu")(nn)
    nn = keras.layers.Flatten()(nn)
    embedding = keras.layers.Activation("linear", dtype="float32", name="embedding")(nn)
    return keras.Model(inputs, embedding, name="prelu_gdc")


def _se_model():
    """Conv stem, a squeeze-and-excitation block (GAP, Dense, Dense sigmoid, Multiply), GAP + Dense embedding."""
    inputs = keras.Input(IMAGE_SHAPE)
    nn = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    nn = keras.layers.MaxPooling2D(2)(nn)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(nn)
    se = keras.layers.Dense(4, activation="relu")(se)
    se = keras.layers.Dense(16, activation="sigmoid")(se)
    nn = keras.layers.Multiply()([nn, se])
    nn = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(nn)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(32)(nn)
    nn = keras.layers.BatchNormalization(name="pre_embedding")(nn)
    embedding = keras.layers.Activation("linear", dtype="float32", name="embedding")(nn)
    return keras.Model(inputs, embedding, name="se_net")


def _randomize_batchnorm(model, seed):
    """Non-trivial moving statistics, so that BatchNorm folding is exercised by the parity check."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)])
    return model


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    paths = {}
    for name, build in (("prelu_gdc", _prelu_gdc_model), ("se", _se_model)):
        paths[name] = str(folder / (name + ".keras"))
        _randomize_batchnorm(build(), seed=len(paths)).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def lfw_images():
    from keras_insightface import face_io

    return face_io.load_bin(LFW_BIN)[0]


# ---------------------------------------------------------------- independent references
def _keras_reference(model_path, images):
    model = keras.models.load_model(model_path, compile=False)
    return model.predict((images.astype("float32") - 127.5) / 128.0, verbose=0)


def _tflite_reference(path, images):
    """Run a .tflite with the plain TF interpreter, one image at a time, (de)quantizing by the file's parameters."""
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        inputs = (image[None].astype("float32") - 127.5) / 128.0
        if input_detail["dtype"] != np.float32:
            scale, zero_point = input_detail["quantization"]
            info = np.iinfo(input_detail["dtype"])
            inputs = np.clip(np.round(inputs / scale + zero_point), info.min, info.max).astype(input_detail["dtype"])
        interpreter.set_tensor(input_detail["index"], inputs)
        interpreter.invoke()
        output = interpreter.get_tensor(output_detail["index"]).astype("float32")
        if output_detail["dtype"] != np.float32:
            scale, zero_point = output_detail["quantization"]
            output = (output - zero_point) * scale
        outputs.append(output[0])
    return np.stack(outputs)


def _cosines(aa, bb):
    aa, bb = np.asarray(aa, "float64"), np.asarray(bb, "float64")
    return (aa * bb).sum(1) / (np.linalg.norm(aa, axis=1) * np.linalg.norm(bb, axis=1))


# ---------------------------------------------------------------- TFLite
@pytest.mark.parametrize(
    "model_name, quantization, min_cosine",
    [
        ("prelu_gdc", "float32", 0.9999),
        ("se", "float32", 0.9999),
        ("prelu_gdc", "float16", 0.999),
        ("se", "dynamic", 0.99),
    ],
)
def test_tflite_float_exports_match_keras(saved_models, lfw_images, tmp_path, capsys, model_name, quantization, min_cosine):
    output = str(tmp_path / "model.tflite")
    assert export.convert_tflite(saved_models[model_name], output, quantization=quantization, bin_file=LFW_BIN) == output
    printed = capsys.readouterr().out
    assert ">>>> Parity tflite {} on 40 images from lfw.bin: cosine min".format(quantization) in printed
    assert "lfw.bin verification accuracy: keras" in printed
    cosines = _cosines(_keras_reference(saved_models[model_name], lfw_images), _tflite_reference(output, lfw_images))
    assert cosines.min() >= min_cosine
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]  # no temporary file left


def _write_face_folder(folder, images):
    for index, image in enumerate(images):
        write_image(folder / "id_{}".format(index % 3) / "{}.jpg".format(index), image)
    (folder / "id_0" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped with a warning


@pytest.mark.parametrize("model_name, quantization, dtype", [("prelu_gdc", "uint8", np.uint8), ("se", "int8", np.int8)])
def test_tflite_integer_export_from_image_folder(saved_models, lfw_images, tmp_path, capsys, model_name, quantization, dtype):
    faces = tmp_path / "faces"
    _write_face_folder(faces, lfw_images[:24])
    output = str(tmp_path / "model_int.tflite")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        export.convert_tflite(saved_models[model_name], output, quantization=quantization, representative_data=str(faces))
    assert "images from faces: cosine min" in capsys.readouterr().out
    interpreter = tf.lite.Interpreter(model_path=output)
    assert interpreter.get_input_details()[0]["dtype"] == dtype
    assert interpreter.get_output_details()[0]["dtype"] == dtype
    cosines = _cosines(_keras_reference(saved_models[model_name], lfw_images), _tflite_reference(output, lfw_images))
    assert cosines.mean() >= 0.98  # integer exports only report; a broken calibration lands far below this


def test_failed_parity_writes_nothing(saved_models, tmp_path, monkeypatch):
    monkeypatch.setitem(export.PARITY_THRESHOLDS, "float32", 1.5)
    output = tmp_path / "never.tflite"
    with pytest.raises(export.ParityError, match="below the required 1.5"):
        export.convert_tflite(saved_models["se"], str(output), num_parity_images=4)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- ONNX
@pytest.mark.parametrize("model_name, nchw", [("prelu_gdc", False), ("prelu_gdc", True), ("se", True)])
def test_onnx_export_matches_keras(saved_models, lfw_images, tmp_path, capsys, model_name, nchw):
    import onnxruntime as ort

    output = str(tmp_path / "model.onnx")
    export.convert_onnx(saved_models[model_name], output, nchw=nchw, input_name="data" if nchw else "input", bin_file=LFW_BIN)
    assert ">>>> Parity onnx on 40 images from lfw.bin: cosine min" in capsys.readouterr().out
    session = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    assert model_input.name == ("data" if nchw else "input")
    assert model_input.shape == (["batch", 3, 112, 112] if nchw else ["batch", 112, 112, 3])
    assert session.get_outputs()[0].name == "embedding"
    if nchw:  # insightface style: (x - 127.5) / 127.5, channels first
        inputs = ((lfw_images.astype("float32") - 127.5) / 127.5).transpose(0, 3, 1, 2)
    else:
        inputs = (lfw_images.astype("float32") - 127.5) / 128.0
    onnx_embeddings = session.run(None, {model_input.name: inputs})[0]
    assert _cosines(_keras_reference(saved_models[model_name], lfw_images), onnx_embeddings).min() >= 0.9999


# ---------------------------------------------------------------- bad inputs
def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.h5: model file not found"):
        export.convert_tflite(str(tmp_path / "absent.h5"))


def test_corrupt_model_file(tmp_path):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n garbage " * 20)
    with pytest.raises(ValueError, match="corrupt.h5: not a readable Keras model"):
        export.convert_onnx(str(corrupt))
    assert sorted(os.listdir(tmp_path)) == ["corrupt.h5"]


def test_wrong_model_extension(tmp_path):
    other = tmp_path / "model.onnx"
    other.write_bytes(b"0")
    with pytest.raises(ValueError, match="expected a saved Keras basic model"):
        export.convert_tflite(str(other))


def test_norm_dense_model_is_refused(tmp_path):
    from keras_insightface import models

    inputs = keras.Input((8,))
    outputs = models.NormDense(5, name="NormDense")(keras.layers.Dense(4, name="embedding")(inputs))
    path = str(tmp_path / "training_model.keras")
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="NormDense training head.*basic model only"):
        export.convert_tflite(path)
    assert sorted(os.listdir(tmp_path)) == ["training_model.keras"]


def test_integer_quantization_needs_representative_data(saved_models):
    with pytest.raises(ValueError, match="uint8 quantization needs representative_data"):
        export.convert_tflite(saved_models["se"], quantization="uint8")


@pytest.mark.parametrize("make_source, error, message", [
    (lambda tmp: tmp / "absent_folder", FileNotFoundError, "absent_folder: no such image folder or .bin file"),
    (lambda tmp: tmp, ValueError, "no images"),
    (lambda tmp: (tmp / "faces.txt").write_text("x") and tmp / "faces.txt", ValueError, "expected an image folder or an insightface .bin"),
])
def test_bad_representative_data(saved_models, tmp_path, make_source, error, message):
    with pytest.raises(error, match=message):
        export.convert_tflite(saved_models["se"], str(tmp_path / "out.tflite"), quantization="int8", representative_data=str(make_source(tmp_path)))


def test_cli_reports_missing_model_file(tmp_path):
    script = os.path.join(os.path.dirname(HERE), "export.py")
    result = subprocess.run([sys.executable, script, "-m", str(tmp_path / "nothing.h5"), "-f", "onnx"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "export.py: error:" in result.stderr and "nothing.h5: model file not found" in result.stderr


def test_cli_exports_tflite(saved_models, tmp_path, capsys):
    output = str(tmp_path / "cli.tflite")
    assert export.main(["-m", saved_models["prelu_gdc"], "-f", "tflite", "-q", "float32", "-o", output, "-r", LFW_BIN, "-n", "8"]) == 0
    assert ">>>> Parity tflite float32 on 8 images from lfw.bin" in capsys.readouterr().out
    assert os.path.getsize(output) > 0


# ---------------------------------------------------------------- hostile command lines
def _cli_error(argv, capsys):
    """(exit status, last stderr line) of export.main."""
    status = export.main(argv)
    return status, capsys.readouterr().err.rstrip("\n").split("\n")[-1]


@pytest.mark.parametrize("opset", ["0", "6", "19", "-1"])
def test_onnx_opsets_outside_the_supported_range_are_refused_before_converting(saved_models, tmp_path, capsys, opset):
    import tf2onnx

    highest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)  # tf2onnx's own table of the opsets it can write
    output = tmp_path / "model.onnx"
    status, line = _cli_error(["-m", saved_models["se"], "-f", "onnx", "--opset", opset, "-o", str(output)], capsys)
    assert status == 2 and line == (
        "export.py: error: opset={}: ONNX export supports opsets 7 (the lowest onnxruntime runs) to {} (the highest the "
        "installed tf2onnx knows)".format(opset, highest))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="opset=0: ONNX export supports opsets 7"):
        export.to_onnx_bytes(keras.models.load_model(saved_models["se"], compile=False), opset=0)


@pytest.mark.parametrize("opset", [7, 18])
def test_the_ends_of_the_opset_range_export_and_run(saved_models, tmp_path, opset):
    import onnx

    output = export.convert_onnx(saved_models["se"], str(tmp_path / "model.onnx"), opset=opset, num_parity_images=4)
    assert [entry.version for entry in onnx.load(output).opset_import if entry.domain in ("", "ai.onnx")] == [opset]


@pytest.mark.parametrize("name", ["random.keras", "random.h5"])
def test_a_model_file_of_random_bytes_is_one_line(tmp_path, capsys, name):
    model_file = tmp_path / name
    model_file.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    status, line = _cli_error(["-m", str(model_file), "-f", "onnx"], capsys)
    assert status == 2 and line.startswith("export.py: error: {}: not a readable Keras model".format(model_file))
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("argv, words", [
    (["-n", "0"], "num_parity_images=0: expected a number >= 1"),
    (["-n", "-3", "-f", "onnx"], "num_parity_images=-3: expected a number >= 1"),
])
def test_bad_numbers_are_one_line(saved_models, tmp_path, capsys, argv, words):
    status, line = _cli_error(["-m", saved_models["se"], "-o", str(tmp_path / "out.file"), *argv], capsys)
    assert status == 2 and line == "export.py: error: " + words
    assert os.listdir(tmp_path) == []


def test_the_default_output_beside_the_model_is_kept_unless_overwrite(saved_models, tmp_path, capsys):
    import shutil

    model_file = str(tmp_path / "se.keras")
    shutil.copy(saved_models["se"], model_file)
    (tmp_path / "se_float16.tflite").write_bytes(b"earlier export")
    status, line = _cli_error(["-m", model_file, "-q", "float16", "-n", "2"], capsys)
    assert status == 2 and line == "export.py: error: output file {}: already exists; it is kept (pass --overwrite to replace it)".format(
        tmp_path / "se_float16.tflite")
    assert (tmp_path / "se_float16.tflite").read_bytes() == b"earlier export"
    assert export.main(["-m", model_file, "-q", "float16", "-n", "2", "--overwrite"]) == 0
    assert (tmp_path / "se_float16.tflite").read_bytes()[4:8] == b"TFL3"  # the flatbuffer identifier of a TFLite model
