"""Turn a saved face model into an embedding function: uint8 RGB faces in, float32 embeddings out.

One place knows how to run every supported model kind, chosen by the file type:

| model file                  | backend            | layout | default normalization          |
| --------------------------- | ------------------ | ------ | ------------------------------ |
| `*.h5`, `*.keras`           | Keras 3            | NHWC   | the model's (face_io.model_normalization), (x - 127.5) / 128 by default |
| `*.onnx`                    | onnxruntime        | from the input shape: NCHW -> (x - 127.5) / 127.5 (insightface export; raw pixels when its first nodes are Sub and Mul, as insightface's ArcFaceONNX decides), NHWC -> (x - 127.5) / 128 (Keras export) |
| `*.pt`, `*.pth` TorchScript | torch (optional)   | NCHW   | (x - 127.5) / 127.5 (a state dict: convert it with convert_insightface) |
| `prefix,epoch` MXNet        | mxnet (optional)   | NCHW   | none: the graph holds it       |

A Keras training model (a classification head after its `embedding` layer) is cut at `embedding` (`embedding_model`),
and a Keras file whose config names a callable outside Keras is refused unread (`load_keras_model`).

Usage:
    from keras_insightface.model_interf import load_model_interf
    interf = load_model_interf("checkpoints/basic_model.h5", batch_size=128)
    embs = interf(faces)  # faces: uint8 [B, 112, 112, 3] RGB -> float32 [B, D], not normalized
"""
import os
import re

import numpy as np

from . import cli, face_io
from .face_io import INSIGHTFACE_NORM, KERAS_NORM

_MXNET_SPEC = re.compile(r"^(?P<prefix>.+),(?P<epoch>\d+)$")


class ModelInterf:
    """Callable embedding function around a backend `predict(float32 batch) -> array`.

    Images are normalized as `(x - mean) / std`, transposed to the backend's layout and run in
    slices of `batch_size` (all at once when None).

    Usage:
        interf = ModelInterf(lambda x: x.reshape(len(x), -1), input_layout="NHWC")
        embs = interf(np.zeros([2, 112, 112, 3], "uint8"))
    """

    def __init__(self, predict, input_layout="NHWC", mean=127.5, std=128.0, batch_size=None, name="model"):
        if input_layout not in ("NHWC", "NCHW"):
            raise ValueError("input_layout must be 'NHWC' or 'NCHW', got {!r}".format(input_layout))
        self.predict, self.input_layout, self.name = predict, input_layout, name
        self.mean, self.std = float(mean), float(std)
        self.batch_size = None if batch_size is None else int(batch_size)

    def __call__(self, images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError("{}: expected RGB images shaped [B, H, W, 3], got {}".format(self.name, images.shape))
        step = self.batch_size or max(len(images), 1)
        outputs = [self._predict_batch(images[start : start + step]) for start in range(0, len(images), step)]
        if not outputs:
            return np.zeros([0, 0], dtype="float32")
        return np.concatenate(outputs, axis=0)

    def _predict_batch(self, images):
        inputs = (images.astype("float32") - self.mean) / self.std
        if self.input_layout == "NCHW":
            inputs = inputs.transpose(0, 3, 1, 2)
        outputs = self.predict(np.ascontiguousarray(inputs, dtype="float32"))
        return np.asarray(outputs, dtype="float32").reshape(len(images), -1)

    def __repr__(self):
        return "ModelInterf(name={!r}, layout={}, mean={}, std={})".format(self.name, self.input_layout, self.mean, self.std)


class KerasModelInterf(ModelInterf):
    """A Keras model run through `face_io.embedding_function` (traced once, reused).

    Normalization: the model's own (`face_io.model_normalization`) unless `mean` / `std` are given.
    Usage: embs = KerasModelInterf(basic_model, batch_size=64)(faces)
    """

    def __init__(self, model, mean=None, std=None, batch_size=None, name=None):
        model_mean, model_std = face_io.model_normalization(model)
        mean, std = model_mean if mean is None else mean, model_std if std is None else std
        super().__init__(None, "NHWC", mean, std, batch_size, name or model.name)
        self.model = model

    def _predict_batch(self, images):
        embed = face_io.embedding_function(self.model, images.shape[1:], flip=False, norm=(self.mean, self.std))
        return np.asarray(embed(images), dtype="float32").reshape(len(images), -1)


def load_keras_model(model_file):
    """keras.models.load_model(model_file, compile=False) with errors that name the file and say why.

    Keras' safe mode is kept: a Lambda layer (a Python function) is explained, never loaded unsafely, and a config naming
    a callable outside Keras and the registered custom objects (e.g. `os.system`) is refused before Keras reads it.
    Usage: model = load_keras_model("checkpoints/basic_model.h5")
    """
    import keras

    if not os.path.isfile(model_file):
        raise FileNotFoundError("{}: model file not found".format(model_file))
    foreign = sorted(set(_foreign_callables(_saved_model_config(model_file))))
    if foreign:
        raise ValueError(
            "{}: the model config names {}, outside Keras and the registered custom objects; it is neither imported nor run "
            "(Keras safe mode). Load only models whose code you have and trust".format(model_file, ", ".join(foreign))
        )
    try:
        return keras.models.load_model(model_file, compile=False)
    except Exception as error:
        if "Lambda" in str(error) and "safe_mode" in str(error):
            raise ValueError(
                "{}: the model has a Lambda layer (a Python function), which Keras' safe mode refuses to load since it can run "
                "code; if you trust the file, load it yourself with keras.models.load_model(path, safe_mode=False)".format(model_file)
            ) from error
        reason = str(error).strip().split("\n")[0][:300]
        raise ValueError("{}: not a readable Keras model ({}: {})".format(model_file, type(error).__name__, reason)) from error


def _saved_model_config(model_file):
    """The model config (parsed JSON) of a `.keras` zip or a Keras `.h5` file, or None when it cannot be read here
    (Keras then reports the file)."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(model_file):
            with zipfile.ZipFile(model_file) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(model_file, "r") as ff:
            text = ff.attrs.get("model_config")
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text) if text is not None else None
    except (OSError, KeyError, ValueError):
        return None


_TRUSTED_PACKAGES = ("keras", "builtins", "keras_insightface")  # Keras' own names, and this package's registered layers


def _foreign_callables(config):
    """`module.name` of every serialized object in `config` that is neither Keras' own nor a registered custom object."""
    import keras

    if isinstance(config, list):
        for item in config:
            yield from _foreign_callables(item)
    elif isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and "class_name" in config and module.split(".")[0] not in _TRUSTED_PACKAGES:
            registered = config.get("registered_name")
            if not (isinstance(registered, str) and keras.saving.get_registered_object(registered) is not None):
                name = config["config"] if config["class_name"] == "function" else config["class_name"]
                yield "'{}.{}'".format(module, name)
        for value in config.values():
            yield from _foreign_callables(value)


_CLASSIFICATION_LAYERS = ("NormDense", "NormDenseVPL", "NormDensePartialFC")


def embedding_model(model, source="model"):
    """The embedding part of a Keras model: a basic model as it is; a training model (a classification head after its
    `embedding` layer, or more outputs) cut at `embedding`, saying so; a head without an `embedding` layer is refused.

    Usage: basic_model = embedding_model(keras.models.load_model("model.h5", compile=False), "model.h5")
    """
    import keras

    if "embedding" in {layer.name for layer in model.layers}:
        embedding = model.get_layer("embedding").output
        if len(model.outputs) == 1 and model.outputs[0] is embedding:
            return model
        print(">>>> {}: a training model (outputs {}): cut at its 'embedding' layer, whose {}-d output is used as the embeddings".format(
            source, ", ".join(str(tuple(output.shape)) for output in model.outputs), embedding.shape[-1]))
        return keras.Model(model.inputs[0], embedding, name=model.name)
    head = _classification_head(model)
    if head:
        raise ValueError(
            "{}: the model ends in a classification head ({}) and has no layer named 'embedding' to cut it at; its outputs "
            "are class scores, not embeddings: pass the basic model (its last layer named 'embedding')".format(source, head)
        )
    if len(model.outputs) != 1:
        raise ValueError("{}: the model has {} outputs and no layer named 'embedding'; expected one embedding output".format(
            source, len(model.outputs)))
    return model


def _classification_head(model):
    """The name of a classification layer of `model` (a NormDense kind, or a final softmax), or None."""
    for layer in model.layers:
        if type(layer).__name__ in _CLASSIFICATION_LAYERS:
            return "{} '{}'".format(type(layer).__name__, layer.name)
    last = model.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") == "softmax":
        return "softmax layer '{}'".format(last.name)
    return None


def load_teacher(teacher_model_interf):
    """The teacher of online distillation (`Train(teacher_model_interf=...)`): None, a keras.Model, or a Keras model
    file loaded without compile.  Usage: teacher = load_teacher("teacher_basic_model.h5")
    """
    import keras

    if teacher_model_interf is None:
        return None
    if isinstance(teacher_model_interf, keras.Model):
        return embedding_model(teacher_model_interf, "teacher model '{}'".format(teacher_model_interf.name))
    if isinstance(teacher_model_interf, (str, os.PathLike)):
        print(">>>> Load teacher model from:", teacher_model_interf)
        return embedding_model(load_keras_model(os.fspath(teacher_model_interf)), os.fspath(teacher_model_interf))
    raise ValueError("teacher_model_interf must be a keras.Model or a Keras model file (.h5 / .keras), got {!r}; other teachers "
                     "(ONNX, TorchScript, MXNet) give their embeddings through data_distiller.py".format(teacher_model_interf))



def _onnx_layout(shape):
    """NCHW when the channel axis (size 3) is second, NHWC when it is last."""
    if len(shape) == 4 and shape[1] == 3:
        return "NCHW"
    if len(shape) == 4 and shape[-1] == 3:
        return "NHWC"
    raise ValueError("ONNX model input shape {} has no 3-channel axis at position 1 or 3".format(shape))


def _load_onnx(model_file):
    ort = cli.require("onnxruntime", "onnx", "{}: ONNX models".format(model_file))

    try:
        session = ort.InferenceSession(model_file, providers=ort.get_available_providers())
    except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise ValueError("{}: not a readable ONNX model ({})".format(model_file, str(error).strip().split("\n")[0][:300])) from error
    model_input = session.get_inputs()[0]
    try:
        layout = _onnx_layout(model_input.shape)
    except ValueError as error:
        raise ValueError("{}: {}".format(model_file, error)) from None

    def predict(inputs):
        return session.run(None, {model_input.name: inputs})[0]

    norm = INSIGHTFACE_NORM if layout == "NCHW" else KERAS_NORM
    if layout == "NCHW" and _normalizes_itself(model_file):
        norm = (0.0, 1.0)
    return predict, layout, norm


def _normalizes_itself(model_file):
    """True when the graph normalizes raw pixels itself: a Sub and a Mul among its first eight nodes.

    insightface's ArcFaceONNX looks at node names (`Sub...` / `_minus...` and `Mul...` / `_mul...`, as MXNet
    conversions name them); recent torch exports name them `/Sub`, `/Mul`, so the op types count too.
    False when the onnx package is missing.
    """
    try:
        import onnx
    except ImportError:
        return False
    nodes = onnx.load(model_file, load_external_data=False).graph.node[:8]
    find_sub = any(node.op_type == "Sub" or node.name.startswith(("Sub", "_minus")) for node in nodes)
    find_mul = any(node.op_type == "Mul" or node.name.startswith(("Mul", "_mul")) for node in nodes)
    return find_sub and find_mul


def _load_torchscript(model_file):
    torch = cli.require("torch", "torch", "{}: TorchScript models".format(model_file))
    try:
        module = torch.jit.load(model_file, map_location="cpu").eval()
    except RuntimeError as error:
        raise ValueError(
            "{}: not a TorchScript model ({}); an arcface_torch state dict (backbone.pth) converts into a Keras model "
            "first: keras-insightface-convert-insightface -i {}".format(model_file, str(error).splitlines()[0], model_file)
        ) from error

    def predict(inputs):
        with torch.no_grad():
            return face_io.first_output(module(torch.from_numpy(inputs))).cpu().numpy()

    return predict, "NCHW", INSIGHTFACE_NORM


def _mxnet_files(prefix, epoch):
    return prefix + "-symbol.json", "{}-{:04d}.params".format(prefix, epoch)


def _load_mxnet(prefix, epoch, output_layer="fc1_output"):
    try:
        import mxnet as mx
    except ImportError as error:
        raise ImportError(
            "{},{}: MXNet models need the optional `mxnet` package, which is not installed. mxnet requires "
            "numpy<1.24, so it cannot share an environment with TensorFlow>=2.20: run this in a separate "
            "environment, or convert the model to ONNX and pass the .onnx file".format(prefix, epoch)
        ) from error
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    module = mx.mod.Module(symbol=symbol.get_internals()[output_layer], context=mx.cpu(), label_names=None)
    module.bind(data_shapes=[("data", (1, 3, 112, 112))], for_training=False)
    module.set_params(arg_params, aux_params)

    def predict(inputs):
        module.forward(mx.io.DataBatch(data=(mx.nd.array(inputs),)), is_train=False)
        return module.get_outputs()[0].asnumpy()

    return predict, "NCHW", (0.0, 1.0)


KERAS_EXTENSIONS = (".h5", ".keras")
_FILE_LOADERS = {
    ".onnx": _load_onnx,
    ".pt": _load_torchscript,
    ".pth": _load_torchscript,
}


def _load_backend(model_file):
    """(predict, layout, (mean, std)) for a model file or an MXNet `prefix,epoch` spec."""
    mxnet_spec = _MXNET_SPEC.match(model_file) if not os.path.exists(model_file) else None
    if mxnet_spec:
        prefix, epoch = mxnet_spec.group("prefix"), int(mxnet_spec.group("epoch"))
        for path in _mxnet_files(prefix, epoch):
            if not os.path.exists(path):
                raise FileNotFoundError("MXNet model '{}': file not found: {}".format(model_file, path))
        return _load_mxnet(prefix, epoch)

    suffix = os.path.splitext(model_file)[1].lower()
    if suffix not in _FILE_LOADERS:
        raise ValueError(
            "{}: unsupported model type '{}'; expected one of {} or an MXNet 'prefix,epoch'".format(
                model_file, suffix, ", ".join(sorted([*_FILE_LOADERS, *KERAS_EXTENSIONS]))
            )
        )
    if not os.path.exists(model_file):
        raise FileNotFoundError("model file not found: {}".format(model_file))
    return _FILE_LOADERS[suffix](model_file)


def model_name(model_file):
    """Short name used for result files: file stem, or the folder name of an MXNet `prefix,epoch`.

    Usage: model_name("checkpoints/basic_model.h5") -> "basic_model"
    """
    model_file = os.fspath(model_file)
    if _MXNET_SPEC.match(model_file) and not os.path.exists(model_file):
        return os.path.basename(os.path.dirname(os.path.abspath(model_file.rsplit(",", 1)[0])))
    return os.path.splitext(os.path.basename(model_file))[0]


def load_model_interf(model_file, input_layout=None, mean=None, std=None, batch_size=None):
    """Load `model_file` (path, MXNet `prefix,epoch`, or an in-memory keras.Model) as a `ModelInterf`.

    `input_layout`, `mean` and `std` override the backend defaults listed in the module docstring.
    Usage: embs = load_model_interf("model.onnx", batch_size=64)(faces)
    """
    if not isinstance(model_file, (str, os.PathLike)):
        return KerasModelInterf(embedding_model(model_file, "model '{}'".format(model_file.name)), mean, std, batch_size)
    name, model_file = model_name(model_file), os.fspath(model_file)
    if model_file.lower().endswith(KERAS_EXTENSIONS):
        if not os.path.exists(model_file):
            raise FileNotFoundError("model file not found: {}".format(model_file))
        return KerasModelInterf(embedding_model(load_keras_model(model_file), model_file), mean, std, batch_size, name)
    predict, layout, (default_mean, default_std) = _load_backend(model_file)
    return ModelInterf(
        predict,
        input_layout=input_layout or layout,
        mean=default_mean if mean is None else mean,
        std=default_std if std is None else std,
        batch_size=batch_size,
        name=name,
    )
