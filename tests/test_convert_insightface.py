"""convert_insightface: arcface_torch state dicts and insightface ONNX models become Keras models with the same embeddings.

No downloads: the sources are PyTorch networks written from arcface_torch's facts (tests/insightface_torch_nets.py)
with random weights and BatchNorm statistics, saved as `.pth` and exported with `torch.onnx.export` like the model
zoo's files. r100 / r200 / mbf_large run only with KERAS_INSIGHTFACE_FULL_TESTS=1 (skipped otherwise, with the reason).
"""
import os
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
keras = pytest.importorskip("keras")

from tests import insightface_torch_nets as nets  # noqa: E402
from tests.helpers import noise_face  # noqa: E402
from keras_insightface import convert_insightface, export, face_io, model_interf, models, surgery, train  # noqa: E402
from keras_insightface.convert_insightface import UnsupportedOpError, WeightsMismatchError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_TESTS = os.environ.get("KERAS_INSIGHTFACE_FULL_TESTS") == "1"
TOLERANCE = 1e-4  # max abs difference of float32 embeddings
E_HEAD = dict(dropout=0, emb_shape=512, output_layer="E", use_bias=True)
GDC_HEAD = dict(dropout=0, emb_shape=512, output_layer="GDC", use_bias=False)
DEPTHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3), "r200": (6, 26, 60, 6)}
torch.set_num_threads(2)


def faces(count=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, 112, 112, 3), dtype=np.uint8)


def torch_embeddings(net, images, norm=face_io.INSIGHTFACE_NORM):
    """What arcface_torch computes: RGB, (x - 127.5) / 127.5, NCHW."""
    inputs = np.ascontiguousarray(face_io.normalize(images, norm).transpose(0, 3, 1, 2))
    with torch.no_grad():
        return net(torch.from_numpy(inputs)).numpy()


def keras_embeddings(model, images):
    """The model's embeddings through face_io, i.e. with the normalization the model stores."""
    return face_io.embed_images(model, images, batch_size=8, flip=False, normalized=False)


def export_onnx(net, path, input_size=112):
    net.eval()  # a module in train mode would update its BatchNorm statistics while being traced
    torch.onnx.export(net, torch.zeros(1, 3, input_size, input_size), str(path), dynamo=False, input_names=["data"],
                      output_names=["fc1"], dynamic_axes={"data": {0: "None"}, "fc1": {0: "None"}})
    return str(path)


class Source:
    def __init__(self, net, folder, name, images):
        self.net, self.name, self.images = net, name, images
        self.pth = str(folder / (name + ".pth"))
        torch.save(net.state_dict(), self.pth)
        self.onnx = export_onnx(net, folder / (name + ".onnx"))
        self.reference = torch_embeddings(net, images)


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    net = nets.randomize(nets.IResNet(DEPTHS["r18"]), seed=18)
    return Source(net, tmp_path_factory.mktemp("r18"), "r18", faces())


@pytest.fixture(scope="module")
def mbf(tmp_path_factory):
    net = nets.randomize(nets.MobileFaceNet(), seed=3)
    return Source(net, tmp_path_factory.mktemp("mbf"), "mbf", faces())


def assert_same_embeddings(model, source, label):
    difference = float(np.abs(keras_embeddings(model, source.images) - source.reference).max())
    print(">>>> {}: max abs difference {:.3g} (embedding max {:.3g})".format(label, difference, np.abs(source.reference).max()))
    assert difference < TOLERANCE
    return difference


def trainable_count(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


# ---------------------------------------------------------------- same embeddings
def test_r18_state_dict_embeds_like_arcface_torch(r18):
    model = models.buildin_models("r18", weights=r18.pth, **E_HEAD)
    assert_same_embeddings(model, r18, "r18 .pth")
    # the source's normalization is stored right after the input; BatchNorm epsilon comes from the source
    assert isinstance(model.layers[1], face_io.InputNormalization)
    assert face_io.model_normalization(model) == face_io.INSIGHTFACE_NORM
    batchnorms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and all(layer.epsilon == pytest.approx(1e-5) for layer in batchnorms)
    # exactly arcface_torch's parameters (its frozen features.weight included)
    assert trainable_count(model) == sum(parameter.numel() for parameter in r18.net.parameters())


def test_r18_onnx_embeds_like_arcface_torch(r18):
    model = models.buildin_models("r18", weights=r18.onnx, **E_HEAD)
    assert_same_embeddings(model, r18, "r18 .onnx")
    assert face_io.model_normalization(model) == face_io.INSIGHTFACE_NORM
    max_diff, min_cosine = convert_insightface.compare_with_onnx(model, r18.onnx, num_images=2)
    assert max_diff < TOLERANCE and min_cosine > 0.99999


@pytest.mark.parametrize("name, via", [("r34", "pth"), ("r50", "onnx"), ("r100", "pth"), ("r200", "onnx")])
def test_every_depth_converts(tmp_path, name, via):
    if name in ("r100", "r200") and not FULL_TESTS:
        pytest.skip("large IResNet: set KERAS_INSIGHTFACE_FULL_TESTS=1 to convert it")
    net = nets.randomize(nets.IResNet(DEPTHS[name]), seed=len(name), passes=1)
    images = faces(2)
    source = type("S", (), {"images": images, "reference": torch_embeddings(net, images)})
    if via == "pth":
        path = str(tmp_path / "backbone.pth")
        torch.save(net.state_dict(), path)
    else:
        path = export_onnx(net, tmp_path / "model.onnx")
    model = convert_insightface.build_from_insightface(path)  # the network is read from the file
    assert model.name == name
    assert_same_embeddings(model, source, "{} .{}".format(name, via))


def test_mbf_state_dict_and_onnx_embed_like_arcface_torch(mbf):
    for path in (mbf.pth, mbf.onnx):
        model = models.buildin_models("mbf", weights=path, **GDC_HEAD)
        assert_same_embeddings(model, mbf, "mbf " + os.path.splitext(path)[1])
    assert trainable_count(model) == sum(parameter.numel() for parameter in mbf.net.parameters())
    grouped = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and getattr(layer, "groups", 1) == 64]
    assert len(grouped) == 1 and grouped[0].kernel.shape == (3, 3, 2, 128)  # arcface_torch's grouped (not depthwise) stem conv


def test_mbf_large(tmp_path):
    if not FULL_TESTS:
        pytest.skip("mbf_large: set KERAS_INSIGHTFACE_FULL_TESTS=1 to convert it")
    net = nets.randomize(nets.MobileFaceNet(blocks=(2, 8, 12, 4), scale=4), seed=4)
    images = faces(2)
    source = type("S", (), {"images": images, "reference": torch_embeddings(net, images)})
    path = str(tmp_path / "mbf_large.pth")
    torch.save(net.state_dict(), path)
    model = convert_insightface.build_from_insightface(path)
    assert model.name == "mbf_large"
    assert_same_embeddings(model, source, "mbf_large .pth")


def test_an_onnx_graph_that_normalizes_itself(r18, tmp_path):
    """MXNet-era graphs take raw pixels and start with Sub / Mul nodes: the Keras model stores that normalization."""
    path = export_onnx(nets.Normalized(r18.net, mean=127.5, scale=0.0078125), tmp_path / "mxnet_style.onnx")
    model = convert_insightface.build_from_insightface(path)
    assert face_io.model_normalization(model) == pytest.approx((127.5, 128.0))
    reference = torch_embeddings(r18.net, r18.images, face_io.KERAS_NORM)
    assert np.abs(keras_embeddings(model, r18.images) - reference).max() < TOLERANCE
    max_diff, _ = convert_insightface.compare_with_onnx(model, path, num_images=2)
    assert max_diff < TOLERANCE
    # IJB_evals / data_distiller on the ONNX file itself decide as insightface's ArcFaceONNX: raw pixels
    interf = model_interf.load_model_interf(path)
    assert (interf.input_layout, interf.mean, interf.std) == ("NCHW", 0.0, 1.0)
    assert np.abs(interf(r18.images) - reference).max() < TOLERANCE


def test_a_state_dict_given_as_a_teacher_says_how_to_convert_it(r18):
    with pytest.raises(ValueError, match="keras-insightface-convert-insightface -i"):
        model_interf.load_model_interf(r18.pth)


def test_a_state_dict_in_a_training_checkpoint_with_module_prefixes(r18, tmp_path):
    path = str(tmp_path / "checkpoint_gpu_0.pt")
    state = {"module." + key: value for key, value in r18.net.state_dict().items()}
    torch.save({"epoch": 3, "state_dict_backbone": state}, path)
    model = models.buildin_models("r18", weights=path, **E_HEAD)
    assert_same_embeddings(model, r18, "r18 checkpoint")


# ---------------------------------------------------------------- mismatches
@pytest.fixture(scope="module")
def other_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("others")
    paths = {}
    for name, net in (("r34", nets.IResNet(DEPTHS["r34"])), ("mbf", nets.MobileFaceNet()), ("relu", nets.IResNet(DEPTHS["r18"], relu=True))):
        paths[name] = str(folder / (name + ".pth"))
        torch.save(net.state_dict(), paths[name])
    paths["relu_onnx"] = export_onnx(nets.IResNet(DEPTHS["r18"], relu=True).eval(), folder / "relu.onnx")
    torch.save({"weight": torch.zeros(3), "bias": torch.zeros(3)}, str(folder / "layernorm.pth"))
    paths["layernorm"] = str(folder / "layernorm.pth")
    return paths


@pytest.mark.parametrize(
    "stem, source, head, error, words",
    [
        ("r18", "r34", E_HEAD, WeightsMismatchError, ["r34", "layer1.2.bn1.weight", "has no place in r18"]),
        ("r50", "r18", E_HEAD, WeightsMismatchError, ["r18", "layer1.2", "r50 has 3 blocks in stage 1"]),
        ("r18", "r18", dict(E_HEAD, emb_shape=256), WeightsMismatchError, ["fc.weight", "512", "emb_shape=256"]),
        ("r18", "mbf", E_HEAD, WeightsMismatchError, ["mbf", "layers.0.layers.0.weight", "another network"]),
        ("r18", "r18", GDC_HEAD, WeightsMismatchError, ["bn2.weight", "GDC_dw", 'output_layer="E"']),
        ("mobilefacenet", "mbf", GDC_HEAD, WeightsMismatchError, ["stem_2_separable", "no counterpart"]),
        ("r18", "relu", E_HEAD, WeightsMismatchError, ["layer1.0.bn1.weight", "stem_prelu"]),
        ("r18", "relu_onnx", E_HEAD, UnsupportedOpError, ["Relu node", "no counterpart"]),
        ("r18", "layernorm", E_HEAD, WeightsMismatchError, ["weight (3,)", "bias (3,)", "not a Conv2d"]),
    ],
)
def test_mismatches_name_the_tensor(r18, other_sources, stem, source, head, error, words):
    path = r18.pth if source == "r18" else other_sources[source]
    with pytest.raises(error) as info:
        models.buildin_models(stem, weights=path, **head)
    message = str(info.value)
    assert path in message
    for word in words:
        assert word in message


def test_the_tensor_walk_names_the_misfit_without_the_depth_check(other_sources):
    """Into a Keras model of unknown name the tensors are paired one by one: the first misfit is named."""
    model = models.buildin_models(models.get_backbone_builder("iresnet18")(), **E_HEAD)
    with pytest.raises(WeightsMismatchError, match=r"layer1\.2\.conv1\.weight does not fit Keras layer 'stack2_block1_1_conv'"):
        convert_insightface.load_insightface_weights(model, other_sources["r34"])


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        models.buildin_models("r18", weights=str(tmp_path / "missing.pth"), **E_HEAD)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx: not a readable ONNX model"):
        convert_insightface.read_source(str(bad))


# ---------------------------------------------------------------- the command line
def test_cli_writes_a_basic_model_with_the_same_embeddings(r18, tmp_path, capsys):
    output = str(tmp_path / "r18_converted.h5")
    assert convert_insightface.main(["-i", r18.onnx, "-o", output]) == 0
    printed = capsys.readouterr().out
    assert ">>>> Parity with r18.onnx" in printed and ">>>> Saved: " + output in printed
    saved = keras.models.load_model(output, compile=False)
    assert face_io.model_normalization(saved) == face_io.INSIGHTFACE_NORM
    assert_same_embeddings(saved, r18, "r18 .onnx -> .h5")
    assert convert_insightface.main(["-i", str(tmp_path / "none.pth")]) == 2
    assert "convert_insightface.py: error: " in capsys.readouterr().err


def test_cli_shim_and_console_script_name(capsys):
    with open(os.path.join(REPO, "convert_insightface.py")) as ff:
        assert 'alias(__name__, "convert_insightface")' in ff.read()  # `python convert_insightface.py` from a checkout
    assert os.access(os.path.join(REPO, "convert_insightface.py"), os.X_OK)
    with open(os.path.join(REPO, "pyproject.toml")) as ff:
        assert 'keras-insightface-convert-insightface = "keras_insightface.convert_insightface:main"' in ff.read()
    with pytest.raises(SystemExit) as info:
        convert_insightface.main(["--help"])
    assert info.value.code == 0 and "--input" in capsys.readouterr().out


# ---------------------------------------------------------------- the tools use the stored normalization
def test_fine_tuning_a_converted_model_through_train(r18, tmp_path, monkeypatch, image_folder):
    monkeypatch.chdir(tmp_path)
    converted = models.buildin_models("r18", weights=r18.pth, **E_HEAD)
    faces = image_folder(num_classes=2, images_per_class=4, image=noise_face)
    tt = train.Train(faces, "r18_finetune.h5", basic_model=converted, batch_size=4, lr_base=1e-4, random_status=0)
    batch = next(iter(tt.train_ds))[0]  # the data pipeline feeds the model's own normalization
    assert float(np.max(batch)) <= 1.0 + 1e-6 and float(np.min(batch)) >= -1.0 - 1e-6
    from keras_insightface import losses

    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "optimizer": "sgd", "epoch": 1}], 0)
    saved = keras.models.load_model(os.path.join("checkpoints", "r18_finetune_basic_model_latest.h5"), compile=False)
    assert face_io.model_normalization(saved) == face_io.INSIGHTFACE_NORM
    assert np.isfinite(keras_embeddings(saved, r18.images)).all()


def tiny_model_with_norm(norm=(100.0, 50.0)):
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.Conv2D(4, 3, strides=4, name="conv")(inputs)
    nn = keras.layers.PReLU(shared_axes=[1, 2], name="prelu")(nn)
    nn = keras.layers.GlobalAveragePooling2D(name="pool")(nn)
    nn = keras.layers.Dense(8, name="dense")(nn)
    model = keras.Model(inputs, keras.layers.Activation("linear", dtype="float32", name="embedding")(nn), name="tiny_norm")
    model.get_layer("conv").bias.assign(np.linspace(-1, 1, 4).astype("float32"))
    return surgery.add_input_normalization(model, *norm)


def test_add_input_normalization_keeps_weights():
    keras.utils.set_random_seed(1)
    model = tiny_model_with_norm()
    assert isinstance(model.layers[1], face_io.InputNormalization) and model.layers[2].name == "conv"
    plain = keras.Model(model.inputs, model.outputs)
    images = faces(2)
    expected = model.predict((images.astype("float32") - 100) / 50, verbose=0)
    assert np.allclose(face_io.embed_images(model, images, flip=False, normalized=False), expected, atol=1e-5)
    assert face_io.model_normalization(plain) == (100.0, 50.0)


def test_model_interf_and_evals_feed_the_stored_normalization(tmp_path):
    """IJB_evals and data_distiller run Keras models through model_interf; evals through face_io.embedding_function."""
    model = tiny_model_with_norm()
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    images = faces(3)
    expected = model.predict((images.astype("float32") - 100) / 50, verbose=0)
    interf = model_interf.load_model_interf(path)
    assert (interf.mean, interf.std) == (100.0, 50.0)
    assert np.allclose(interf(images), expected, atol=1e-5)
    embed = face_io.embedding_function(keras.models.load_model(path, compile=False), (112, 112, 3), flip=False)
    assert np.allclose(embed(images), expected, atol=1e-5)


def test_export_feeds_and_bakes_in_the_stored_normalization(tmp_path):
    """TFLite / ONNX NHWC files take the model's normalization; the NCHW file takes insightface's and converts inside."""
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model_with_norm()
    images = faces(4)
    expected = model.predict((images.astype("float32") - 100) / 50, verbose=0)
    export.convert_tflite(model, str(tmp_path / "tiny.tflite"), representative_data=images, num_parity_images=4)
    tflite = export.run_tflite(export.make_tflite_interpreter(str(tmp_path / "tiny.tflite")), face_io.normalize(images, (100.0, 50.0)))
    assert np.abs(tflite - expected).max() < 1e-4
    export.convert_onnx(model, str(tmp_path / "tiny_nhwc.onnx"), representative_data=images, num_parity_images=4)
    session = ort.InferenceSession(str(tmp_path / "tiny_nhwc.onnx"), providers=["CPUExecutionProvider"])
    nhwc = session.run(None, {"input": face_io.normalize(images, (100.0, 50.0))})[0]
    assert np.abs(nhwc - expected).max() < 1e-4
    path = export.convert_onnx(model, str(tmp_path / "tiny_nchw.onnx"), nchw=True, input_name="data", representative_data=images, num_parity_images=4)
    assert np.abs(arcface_onnx_embeddings(path, images) - expected).max() < 1e-4


def arcface_onnx_embeddings(path, images_rgb):
    """insightface's ArcFaceONNX (python-package insightface/model_zoo), re-implemented from its facts.

    The model zoo router takes a model whose input is [*, *, 112, 112] as a recognition model. The mean / std:
    a node named Sub... or _minus... and one named Mul... or _mul... among the first eight nodes means an MXNet
    graph fed raw pixels (0, 1), otherwise 127.5 / 127.5. One output. Input: cv2.dnn.blobFromImages of the BGR
    faces with swapRB=True: RGB, (x - mean) / std, NCHW float32.
    """
    import onnxruntime as ort

    graph = onnx.load(path).graph
    names = [node.name for node in graph.node[:8]]
    find_sub = any(name.startswith("Sub") or name.startswith("_minus") for name in names)
    find_mul = any(name.startswith("Mul") or name.startswith("_mul") for name in names)
    input_mean, input_std = (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_cfg = session.get_inputs()[0]
    assert input_cfg.shape[2] == 112 and input_cfg.shape[3] == 112  # the router's test for a recognition model
    assert tuple(input_cfg.shape[2:4][::-1]) == (112, 112)  # ints: cv2.dnn needs them as the blob size
    assert len(session.get_outputs()) == 1
    blob = ((images_rgb.astype("float32") - input_mean) / input_std).transpose(0, 3, 1, 2)
    return session.run([session.get_outputs()[0].name], {input_cfg.name: np.ascontiguousarray(blob)})[0]


def test_export_nchw_round_trip_is_what_insightface_accepts(tmp_path):
    """A converted IResNet exported with nchw=True embeds, in ArcFaceONNX's hands, like arcface_torch itself.

    A one-block-per-stage IResNet with 64 features keeps tf2onnx fast (r18 takes it 90 s on 2 cores); the layers,
    the head and the conversion are those of r18.
    """
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    from keras_insightface.backbones import resnet

    net = nets.randomize(nets.IResNet((1, 1, 1, 1), num_features=64), seed=5)
    path = str(tmp_path / "backbone.pth")
    torch.save(net.state_dict(), path)
    images = faces(4)
    reference = torch_embeddings(net, images)
    model = models.buildin_models(resnet.IResNet((1, 1, 1, 1), activation="prelu", name="r4"), **dict(E_HEAD, emb_shape=64), weights=path)
    path = export.convert_onnx(model, str(tmp_path / "r4_insightface.onnx"), nchw=True, input_name="data",
                               representative_data=images, num_parity_images=4)
    difference = np.abs(arcface_onnx_embeddings(path, images) - reference).max()
    print(">>>> IResNet .pth -> Keras -> ONNX NCHW, run as ArcFaceONNX: max abs difference {:.3g}".format(difference))
    assert difference < TOLERANCE
    interf = model_interf.load_model_interf(path)  # and our own tools feed it the same way
    assert (interf.input_layout, interf.mean, interf.std) == ("NCHW", 127.5, 127.5)


# ---------------------------------------------------------------- the output of the command line
def last_error_line(capsys):
    return capsys.readouterr().err.rstrip("\n").split("\n")[-1].split("\r")[-1]


def test_an_existing_output_is_kept_unless_overwrite_and_checked_first(mbf, tmp_path, capsys):
    output = tmp_path / "mbf.keras"
    output.write_bytes(b"an earlier conversion")
    assert convert_insightface.main(["-i", mbf.pth, "-o", str(output)]) == 2
    assert last_error_line(capsys) == (
        "convert_insightface.py: error: output file {}: already exists; it is kept (pass --overwrite to replace it)".format(output))
    assert convert_insightface.main(["-i", str(tmp_path / "not_read.pth"), "-o", str(output)]) == 2  # before the source
    assert "already exists" in last_error_line(capsys) and output.read_bytes() == b"an earlier conversion"
    assert convert_insightface.main(["-i", mbf.pth, "-o", str(output), "--overwrite"]) == 0
    assert_same_embeddings(keras.models.load_model(str(output), compile=False), mbf, "mbf .pth -> overwritten .keras")
    assert convert_insightface.main(["-i", mbf.pth, "-o", str(tmp_path)]) == 2
    assert last_error_line(capsys) == "convert_insightface.py: error: output file {}: is a directory; give a file name".format(tmp_path)


def test_a_full_disk_is_one_line_naming_the_output(mbf, tmp_path, capsys, monkeypatch):
    """`.keras` only: HDF5 (h5py 3, an `.h5` output) may crash the process closing a file whose write failed."""
    from tests.helpers import file_size_limit

    output = tmp_path / "mbf.keras"
    output.write_bytes(b"an earlier conversion")
    monkeypatch.setattr("sys.argv", ["/usr/bin/keras-insightface-convert-insightface"])
    with file_size_limit(4096):  # the zip writer of .keras meets EFBIG
        assert convert_insightface.main(["-i", mbf.pth, "-o", str(output), "--overwrite"]) == 2
    line = last_error_line(capsys)
    assert line.startswith("keras-insightface-convert-insightface: error: {}: ".format(output)), line
    assert output.read_bytes() == b"an earlier conversion" and os.listdir(tmp_path) == [output.name]


@pytest.mark.parametrize("argv, words", [
    (["--bn_momentum", "1.5"], "bn_momentum=1.5: expected a number between 0 and 1"),
    (["--num_parity_images", "-1"], "num_parity_images=-1: expected a number >= 0"),
])
def test_bad_numbers_are_one_line(tmp_path, capsys, argv, words):
    assert convert_insightface.main(["-i", str(tmp_path / "any.onnx"), *argv]) == 2
    assert last_error_line(capsys) == "convert_insightface.py: error: " + words
