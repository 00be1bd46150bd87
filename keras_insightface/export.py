#!/usr/bin/env python3
"""Export a saved basic model (`.h5` / `.keras`) to TFLite or ONNX, checking parity before anything is written.

Every export runs the Keras model and the exported one on the same images and prints the cosine
similarity of their embeddings (min / mean). float32 TFLite and ONNX need a min cosine >= 0.9999,
float16 >= 0.999; dynamic-range and integer exports report theirs. With a `.bin` the verification
accuracy of both models is printed too, so the cost of a quantization is visible.

Inputs of the exported models ("the model's": `face_io.model_normalization(model)`, the `InputNormalization`
layer's, e.g. (x - 127.5) / 127.5 for a model converted from insightface, else (x - 127.5) / 128):
| format            | input                               | normalization fed by the caller |
| ----------------- | ----------------------------------- | ------------------------------- |
| TFLite float      | float32 [batch, 112, 112, 3] RGB    | the model's                     |
| TFLite uint8/int8 | uint8/int8 [batch, 112, 112, 3] RGB | the model's, quantized with the input's scale / zero point |
| ONNX (default)    | float32 [batch, 112, 112, 3] RGB    | the model's                     |
| ONNX `nchw=True`  | float32 [batch, 3, 112, 112] RGB    | (x - 127.5) / 127.5 whatever the model's (insightface style; converted inside) |

The `nchw=True` file is what insightface's `ArcFaceONNX` (python-package insightface/model_zoo) expects: a static
[batch, 3, 112, 112] input, one output, and no node named `Sub...` / `Mul...` among the first eight (which would
make it feed raw pixels), so it normalizes with (x - 127.5) / 127.5.

Usage:
    from keras_insightface import export
    export.convert_tflite("checkpoints/basic_model.h5", quantization="float16", bin_file="lfw.bin")
    export.convert_onnx("checkpoints/basic_model.h5", nchw=True)
CLI:
    python export.py -m checkpoints/basic_model.h5 -f tflite -q uint8 -r faces_folder/ -b lfw.bin
"""
import argparse
import contextlib
import io
import os
import sys
import warnings

import numpy as np
from tqdm import tqdm

from . import cli, evals, face_io, io_utils, surgery
from .parity import (  # noqa: F401  (export.<name> as before parity.py held them: the same objects)
    PARITY_BATCH, PARITY_THRESHOLDS, ParityError, cosine_similarities, keras_embeddings, synthetic_images,
)

FORMATS = ("tflite", "onnx")
MODEL_EXTENSIONS = (".h5", ".keras")
DEFAULT_ONNX_OPSET = 13  # runs on every onnxruntime release of the last years, CPU provider included
MIN_ONNX_OPSET = 7  # onnxruntime runs opset 7 and later; tf2onnx reads opset 0 as "its default" (15), not 0
SCRIPT = "export.py"


# ---------------------------------------------------------------- loading the basic model
def check_basic_model(model, source="model"):
    """Refuse models that are not a single-input, single-output basic model (no NormDense head); the model to export,
    computing in float32 (a copy with the same weights when it was trained in mixed precision).

    Usage: check_basic_model(keras.models.load_model("basic_model.h5", compile=False))
    """
    norm_dense = [layer.name for layer in surgery.iter_layers(model) if type(layer).__name__ == "NormDense"]
    if norm_dense:
        raise ValueError(
            "{}: holds the NormDense training head ({}); export the basic model only, e.g. "
            "keras.Model(model.inputs[0], model.get_layer('embedding').output)".format(source, ", ".join(norm_dense))
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("{}: expected one image input and one embedding output, got {} inputs and {} outputs".format(
            source, len(model.inputs), len(model.outputs)))
    input_shape = tuple(model.inputs[0].shape[1:])
    if len(input_shape) != 3 or input_shape[-1] != 3 or None in input_shape:
        raise ValueError("{}: expected a fixed [height, width, 3] image input, got {}".format(source, input_shape))
    return surgery.mixed_precision_model(model, "float32")  # a mixed precision model exports in float32


def load_basic_model(model_or_path):
    """A keras.Model as is, or a `.h5` / `.keras` file loaded with compile=False; checked by `check_basic_model`.

    Usage: basic_model = load_basic_model("checkpoints/basic_model.h5")
    """
    if not isinstance(model_or_path, (str, os.PathLike)):
        import keras

        if not isinstance(model_or_path, keras.Model):
            raise TypeError("expected a keras.Model or the path of a saved one, got {}".format(type(model_or_path).__name__))
        return check_basic_model(model_or_path, model_or_path.name)
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: model file not found (expected a saved basic model, .h5 or .keras)".format(path))
    if not path.endswith(MODEL_EXTENSIONS):
        raise ValueError("{}: expected a saved Keras basic model ending with {}".format(path, " or ".join(MODEL_EXTENSIONS)))
    from .model_interf import load_keras_model

    return check_basic_model(load_keras_model(path), path)


# ---------------------------------------------------------------- images for calibration and parity
def _read_image(path, image_size):
    """The image, or None when the file is not a readable image (counted and skipped by the caller)."""
    try:
        return face_io.read_image(path, tuple(image_size))
    except (OSError, ValueError):
        return None


def _evenly_spaced(items, count):
    if count is None or len(items) <= count:
        return items
    return [items[int(index)] for index in np.linspace(0, len(items) - 1, count)]


def _load_folder_images(folder, count, image_size):
    paths = sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if face_io.is_image_file(name)
    )
    if not paths:
        raise ValueError("{}: no images ({}) found in the folder or its sub-folders".format(folder, ", ".join(face_io.IMAGE_EXTENSIONS)))
    images, skipped = [], 0
    for path in tqdm(_evenly_spaced(paths, count), desc="Loading " + os.path.basename(os.path.normpath(folder)), leave=False):
        image = _read_image(path, image_size)
        skipped += image is None
        if image is not None:
            images.append(image)
    if skipped:
        warnings.warn("{}: skipped {} unreadable image(s)".format(folder, skipped))
    if not images:
        raise ValueError("{}: none of the images could be decoded".format(folder))
    return np.stack(images)


def load_images(source, count=None, image_size=(112, 112)):
    """uint8 RGB images [N, H, W, 3] from an image folder (searched recursively), a `.bin` or an array.

    `count` picks that many, evenly spaced over the sorted files / the `.bin` order (all when None).
    Usage: images = load_images("lfw.bin", count=64)
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 4 or source.shape[-1] != 3:
            raise ValueError("images array: expected [N, H, W, 3] RGB, got shape {}".format(source.shape))
        return np.asarray(_evenly_spaced(list(source), count), dtype=np.uint8)
    path = os.fspath(source)
    if os.path.isdir(path):
        return _load_folder_images(path, count, image_size)
    if not os.path.exists(path):
        raise FileNotFoundError("{}: no such image folder or .bin file".format(path))
    if not path.endswith(".bin"):
        raise ValueError("{}: expected an image folder or an insightface .bin file".format(path))
    images, _ = face_io.load_bin(path, image_size=tuple(image_size))
    return np.asarray(_evenly_spaced(list(images), count), dtype=np.uint8)


def _source_name(source):
    return "the given array" if isinstance(source, np.ndarray) else os.path.basename(os.path.normpath(os.fspath(source)))


def _verification_inputs(representative_data, bin_file, count, image_size, representative_name=None):
    """Load, before any conversion: (parity images, their description, (bin images, issame, bin name) or None).

    Parity images come from the representative data, else the .bin, else clearly-labelled synthetic noise.
    """
    pairs = None
    if bin_file is not None:
        bin_file = os.fspath(bin_file)
        pairs = (*face_io.load_bin(bin_file, image_size=tuple(image_size)), os.path.basename(bin_file))
        evals.check_both_pair_kinds(pairs[1], bin_file)  # an accuracy of one pair kind says nothing about the model
    if representative_data is not None:
        images, name = load_images(representative_data, count, image_size), representative_name or _source_name(representative_data)
    elif pairs is not None:
        images, name = load_images(pairs[0], count), pairs[2]
    else:
        images = synthetic_images(count, image_size)
        return images, "{} SYNTHETIC random-noise images (give representative_data / bin_file for real faces)".format(len(images)), None
    return images, "{} images from {}".format(len(images), name), pairs


# ---------------------------------------------------------------- running the models
def make_tflite_interpreter(model_path_or_content, num_threads=None, use_xnnpack=True):
    """A TFLite interpreter (ai_edge_litert when installed, else tf.lite); `use_xnnpack=False` drops the default delegate.

    Usage: interpreter = make_tflite_interpreter("model.tflite", num_threads=2)
    """
    try:
        from ai_edge_litert import interpreter as litert

        Interpreter, resolver_types = litert.Interpreter, litert.OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter, resolver_types = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    source = {"model_content": model_path_or_content} if isinstance(model_path_or_content, bytes) else {"model_path": os.fspath(model_path_or_content)}
    resolver = resolver_types.AUTO if use_xnnpack else resolver_types.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        interpreter = Interpreter(**source, num_threads=num_threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def quantize(values, detail):
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(detail["dtype"], np.integer):
        return values.astype(detail["dtype"])
    limits = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale + zero_point), limits.min, limits.max).astype(detail["dtype"])


def dequantize(values, detail):
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(detail["dtype"], np.integer):
        return values.astype("float32")
    return ((values.astype("float32") - zero_point) * scale).astype("float32")


def run_tflite(interpreter, inputs, batch_size=PARITY_BATCH):
    """float32 outputs of a TFLite model on normalized float32 inputs, (de)quantizing integer models.

    Usage: embs = run_tflite(make_tflite_interpreter("model.tflite"), face_io.normalize(images))
    """
    input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        if tuple(input_detail["shape"]) != batch.shape:
            interpreter.resize_tensor_input(input_detail["index"], batch.shape)
            interpreter.allocate_tensors()
            input_detail, output_detail = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.set_tensor(input_detail["index"], quantize(batch, input_detail))
        interpreter.invoke()
        outputs.append(dequantize(interpreter.get_tensor(output_detail["index"]), output_detail))
    return np.concatenate(outputs, axis=0).reshape(len(inputs), -1)


def _onnx_runner(path, norm=face_io.KERAS_NORM):
    """Embeddings of uint8 images by the exported ONNX file: NCHW fed insightface-style, NHWC fed `norm` (the model's)."""
    ort = cli.require("onnxruntime", "onnx", "{}: ONNX parity checks".format(path))

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_name, nchw = session.get_inputs()[0].name, session.get_inputs()[0].shape[1] == 3

    def run(images):
        inputs = face_io.normalize(np.asarray(images), face_io.INSIGHTFACE_NORM if nchw else norm)
        inputs = inputs.transpose(0, 3, 1, 2) if nchw else inputs
        batches = [session.run(None, {input_name: inputs[ss : ss + PARITY_BATCH]})[0] for ss in range(0, len(inputs), PARITY_BATCH)]
        return np.concatenate(batches, axis=0).reshape(len(images), -1).astype("float32")

    return run


def _tflite_runner(path, norm=face_io.KERAS_NORM):
    interpreter = make_tflite_interpreter(path)
    return lambda images: run_tflite(interpreter, face_io.normalize(np.asarray(images), norm))


# ---------------------------------------------------------------- parity
def _check_parity(model, run_exported, images, description, label, threshold):
    """Print the min / mean cosine of Keras vs exported embeddings; raise ParityError below `threshold`."""
    cosines = cosine_similarities(keras_embeddings(model, images), run_exported(images))
    required = "" if threshold is None else ", required min >= {}".format(threshold)
    print(">>>> Parity {} on {}: cosine min {:.6f}, mean {:.6f}{}".format(label, description, cosines.min(), cosines.mean(), required))
    if threshold is not None and not cosines.min() >= threshold:
        raise ParityError("{}: min cosine {:.6f} is below the required {}; the export was not written".format(label, cosines.min(), threshold))
    return cosines


def _verification_accuracy(embeddings, issame):
    accuracy = evals.evaluate(embeddings, issame)[2]
    return float(np.mean(accuracy)), float(np.std(accuracy))


def _compare_on_bin(model, run_exported, pairs, label):
    """Print the verification accuracy (10-fold, no flip) of the Keras and the exported model on a .bin's pairs."""
    images, issame, name = pairs
    results = {"keras": _verification_accuracy(keras_embeddings(model, images), issame)}
    results[label] = _verification_accuracy(run_exported(images), issame)
    print(">>>> {} verification accuracy: {}".format(name, ", ".join("{} {:.4f} ± {:.4f}".format(kk, *vv) for kk, vv in results.items())))
    return results


def _verify_export(model, run_exported, label, threshold, verification_inputs):
    images, description, pairs = verification_inputs
    _check_parity(model, run_exported, images, description, label, threshold)
    if pairs is not None:
        _compare_on_bin(model, run_exported, pairs, label)


# ---------------------------------------------------------------- TFLite
def _float32(converter):
    pass


def _float16(converter):
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic(converter):
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _full_integer(dtype_name):
    def configure(converter):
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, dtype_name)

    return configure


QUANTIZATIONS = {"float32": _float32, "float16": _float16, "dynamic": _dynamic, "uint8": _full_integer("uint8"), "int8": _full_integer("int8")}
INTEGER_QUANTIZATIONS = ("uint8", "int8")


def _serving_function(model, input_shape, nchw=False, input_name="input"):
    """A tf.function with a dynamic batch for tf2onnx, running the model in inference mode.

    NCHW input is insightface-normalized, (x - 127.5) / 127.5: it is transposed and turned into the model's own
    normalization (nothing when that is insightface's too). The ops get names that insightface's ArcFaceONNX does
    not take for an MXNet-style Sub / Mul input normalization.
    """
    import tensorflow as tf

    height, width, channels = input_shape
    shape = (None, channels, height, width) if nchw else (None, height, width, channels)
    spec = [tf.TensorSpec(shape, tf.float32, name=input_name)]
    (their_mean, their_std), (mean, std) = face_io.INSIGHTFACE_NORM, face_io.model_normalization(model)
    scale, shift = their_std / std, (their_mean - mean) / std  # (x * their_std + their_mean - mean) / std

    def serve(inputs):
        if nchw:
            inputs = tf.transpose(inputs, [0, 2, 3, 1], name="nchw_to_nhwc")
            if scale != 1:
                inputs = tf.math.multiply(inputs, scale, name="input_rescale")
            if shift != 0:
                inputs = tf.math.add(inputs, shift, name="input_shift")
        return tf.cast(model(inputs, training=False), tf.float32)

    return tf.function(serve, input_signature=spec)


def to_tflite_bytes(model, quantization="float32", representative_images=None):
    """The TFLite flatbuffer of a basic model; integer types calibrate on `representative_images` (uint8 array).

    Usage: content = to_tflite_bytes(basic_model, "float16")
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError("quantization must be one of {}, got {!r}".format(", ".join(QUANTIZATIONS), quantization))
    if quantization in INTEGER_QUANTIZATIONS and representative_images is None:
        raise ValueError("{} quantization needs representative images (an image folder or a .bin)".format(quantization))
    # from_keras_model goes through a SavedModel export, which freezes the Keras 3 variables (a concrete function
    # of the model does not: its TFLite file would read uninitialized resource variables)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    QUANTIZATIONS[quantization](converter)
    if quantization in INTEGER_QUANTIZATIONS:
        inputs = face_io.normalize(np.asarray(representative_images), face_io.model_normalization(model))
        converter.representative_dataset = lambda: ([image[None]] for image in tqdm(inputs, desc="Calibrating", leave=False))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the SavedModel export lists its endpoints and captures; integer types warn about unset input statistics
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def supported_onnx_opsets():
    """(lowest, highest) ONNX opset an export may use: the lowest onnxruntime runs, the highest tf2onnx knows.

    Usage: low, high = supported_onnx_opsets()
    """
    tf2onnx = cli.require("tf2onnx", "onnx", "ONNX export")
    return MIN_ONNX_OPSET, max(tf2onnx.constants.OPSET_TO_IR_VERSION)


def check_onnx_opset(opset):
    """Refuse an opset outside `supported_onnx_opsets()` (ValueError naming the range).  Usage: check_onnx_opset(13)"""
    low, high = supported_onnx_opsets()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not low <= opset <= high:
        raise ValueError("opset={!r}: ONNX export supports opsets {} (the lowest onnxruntime runs) to {} (the highest the "
                         "installed tf2onnx knows)".format(opset, low, high))
    return int(opset)


def _output_path(model_or_path, output_path, suffix, overwrite):
    """`output_path`, by default beside the model file (`<model><suffix>`; `<model name><suffix>` for a keras.Model),
    checked by cli.check_output_file: an existing file is kept unless `overwrite`, a directory is refused."""
    if output_path is None and isinstance(model_or_path, (str, os.PathLike)):
        output_path = os.path.splitext(os.fspath(model_or_path))[0] + suffix
    elif output_path is None:
        output_path = model_or_path.name + suffix
    return cli.check_output_file(os.fspath(output_path), overwrite)


def convert_tflite(
    model_or_path,
    output_path=None,
    quantization="float32",
    representative_data=None,
    num_parity_images=64,
    bin_file=None,
    num_representative_images=200,
    overwrite=False,
):
    """Convert a basic model to TFLite, check parity, write `output_path` atomically and return it.

    quantization: "float32", "float16", "dynamic" (int8 weights, float activations), or full-integer
        "uint8" / "int8" (integer input and output too) calibrated on `representative_data`
        (an image folder, a .bin, or a uint8 array; falls back to `bin_file`).
    output_path: default `<model>.tflite` for float32, `<model>_<quantization>.tflite` otherwise, beside the model
        file; an existing file is kept (FileExistsError) unless `overwrite`.
    Parity: cosine of Keras vs TFLite embeddings on `num_parity_images` images; float32 needs
        min >= 0.9999, float16 >= 0.999, else ParityError and nothing is written.
    Usage: convert_tflite("basic_model.h5", quantization="uint8", representative_data="faces/", bin_file="lfw.bin")
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError("quantization must be one of {}, got {!r}".format(", ".join(QUANTIZATIONS), quantization))
    cli.check_number("num_parity_images", num_parity_images, minimum=1)
    cli.check_number("num_representative_images", num_representative_images, minimum=1)
    suffix = ".tflite" if quantization == "float32" else "_{}.tflite".format(quantization)
    output_path = _output_path(model_or_path, output_path, suffix, overwrite)
    model = load_basic_model(model_or_path)
    image_size = tuple(model.inputs[0].shape[1:3])
    representative_images, representative_name = None, None
    if quantization in INTEGER_QUANTIZATIONS:
        source = representative_data if representative_data is not None else bin_file
        if source is None:
            raise ValueError("{} quantization needs representative_data: an image folder or a .bin of aligned faces".format(quantization))
        representative_images = load_images(source, num_representative_images, image_size)
        representative_name = _source_name(source)
        print(">>>> Representative dataset: {} images from {}".format(len(representative_images), representative_name))
    parity_source = representative_data if representative_images is None else representative_images
    inputs = _verification_inputs(parity_source, bin_file, num_parity_images, image_size, representative_name)
    print(">>>> Converting {} to TFLite {}".format(model.name, quantization))
    content = to_tflite_bytes(model, quantization, representative_images)
    with io_utils.atomic_path(output_path) as tmp:
        with open(tmp, "wb") as ff:
            ff.write(content)
        _verify_export(model, _tflite_runner(tmp, face_io.model_normalization(model)), "tflite " + quantization, PARITY_THRESHOLDS.get(quantization), inputs)
    print(">>>> Saved: {} ({:.3f} MB)".format(output_path, len(content) / 2**20))
    return output_path


# ---------------------------------------------------------------- ONNX
def _rename_onnx_io(model_proto, output_name="embedding", batch_name="batch"):
    """Name the output tensor `output_name` and the dynamic batch axis `batch_name` (tf2onnx leaves generated ones)."""
    graph = model_proto.graph
    old_output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [output_name if name == old_output else name for name in node.output]
        node.input[:] = [output_name if name == old_output else name for name in node.input]
    graph.output[0].name = output_name
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = batch_name
    return model_proto


def to_onnx_bytes(model, opset=DEFAULT_ONNX_OPSET, nchw=False, input_name="input"):
    """The serialized ONNX model of a basic model, via tf2onnx on an inference tf.function.

    Usage: content = to_onnx_bytes(basic_model, nchw=True)
    """
    tf2onnx = cli.require("tf2onnx", "onnx", "ONNX export")
    serve = _serving_function(model, tuple(model.inputs[0].shape[1:]), nchw=nchw, input_name=input_name)
    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=check_onnx_opset(opset))
    return _rename_onnx_io(model_proto).SerializeToString()


def convert_onnx(
    model_or_path,
    output_path=None,
    opset=DEFAULT_ONNX_OPSET,
    nchw=False,
    input_name="input",
    representative_data=None,
    num_parity_images=64,
    bin_file=None,
    overwrite=False,
):
    """Convert a basic model to ONNX, check parity (min cosine >= 0.9999), write `output_path` atomically and return it.

    Input `input_name` ("input"; "data" for insightface-style tools), float32 [batch, H, W, 3] fed
    `(x - 127.5) / 128`, or with `nchw=True` [batch, 3, H, W] fed `(x - 127.5) / 127.5` like insightface
    models; the output is named "embedding". Parity images: `representative_data`, else `bin_file`, else synthetic.
    `opset` must be in `supported_onnx_opsets()`; `output_path` (default `<model>.onnx` beside the model file) is
    kept when it exists unless `overwrite`.
    Usage: convert_onnx("basic_model.h5", nchw=True, bin_file="lfw.bin")
    """
    opset = check_onnx_opset(opset)
    cli.check_number("num_parity_images", num_parity_images, minimum=1)
    output_path = _output_path(model_or_path, output_path, ".onnx", overwrite)
    model = load_basic_model(model_or_path)
    inputs = _verification_inputs(representative_data, bin_file, num_parity_images, tuple(model.inputs[0].shape[1:3]))
    print(">>>> Converting {} to ONNX opset {} ({})".format(model.name, opset, "NCHW" if nchw else "NHWC"))
    content = to_onnx_bytes(model, opset=opset, nchw=nchw, input_name=input_name)
    with io_utils.atomic_path(output_path) as tmp:
        with open(tmp, "wb") as ff:
            ff.write(content)
        _verify_export(model, _onnx_runner(tmp, face_io.model_normalization(model)), "onnx", PARITY_THRESHOLDS["onnx"], inputs)
    print(">>>> Saved: {} ({:.3f} MB)".format(output_path, len(content) / 2**20))
    return output_path


# ---------------------------------------------------------------- CLI
def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog=cli.prog_name(SCRIPT),
        description="Export a saved basic model (.h5 / .keras) to TFLite or ONNX, with a parity check before writing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-m", "--model_file", required=True, help="saved basic model, .h5 or .keras (no NormDense head)")
    parser.add_argument("-f", "--format", choices=FORMATS, default="tflite", help="export format")
    parser.add_argument("-q", "--quantization", choices=list(QUANTIZATIONS), default="float32", help="TFLite conversion type")
    parser.add_argument("-o", "--output", default=None, help="output file, default beside the model: <model>[_<quantization>].tflite / <model>.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file (else it is kept and the export refused)")
    parser.add_argument("-r", "--representative_data", default=None, help="image folder or .bin: calibration for uint8 / int8, and parity images")
    parser.add_argument("-b", "--bin_file", default=None, help=".bin to compare the verification accuracy of the Keras and the exported model")
    parser.add_argument("-n", "--num_parity_images", type=int, default=64, help="images for the cosine parity check")
    parser.add_argument("--nchw", action="store_true", help="ONNX: NCHW input [batch, 3, H, W] fed (x - 127.5) / 127.5, insightface style")
    parser.add_argument("--opset", type=int, default=DEFAULT_ONNX_OPSET, help="ONNX opset, {} to the highest the installed tf2onnx knows (18 for 1.17)".format(MIN_ONNX_OPSET))
    parser.add_argument("--input_name", default="input", help="ONNX input name, e.g. 'data' for insightface-style tools")
    return parser.parse_args(argv)


def _export(args):
    common = dict(output_path=args.output, representative_data=args.representative_data, num_parity_images=args.num_parity_images,
                  bin_file=args.bin_file, overwrite=args.overwrite)
    if args.format == "tflite":
        return convert_tflite(args.model_file, quantization=args.quantization, **common)
    return convert_onnx(args.model_file, opset=args.opset, nchw=args.nchw, input_name=args.input_name, **common)


def main(argv=None):
    """The command line of export.py (console script keras-insightface-export)."""
    return cli.run(SCRIPT, _export, parse_arguments(argv))


if __name__ == "__main__":
    sys.exit(main())
