"""insightface trained weights into a Keras basic model of the same network: `.pth` / `.onnx` source units paired
with the Keras model's layers and assigned, with the source's BatchNorm epsilon and input normalization.

How tensors are matched: both networks are walked in one canonical order (data flow from the input; at each
residual Add the longer branch first), and the Conv / BatchNorm / PReLU / Linear (and, for ONNX, Add) of the
source are paired with the Keras layers of the same kind, shape by shape. Anything that does not fit raises
`WeightsMismatchError` naming the source tensor (and the Keras layer), an ONNX op without a counterpart
`UnsupportedOpError` naming the node; before that, a source of another depth or embedding size than the Keras
model is refused with the tensor that shows it.

Usage:
    from keras_insightface import insightface_weights, models
    basic_model = models.buildin_models("r50", dropout=0, emb_shape=512, output_layer="E", use_bias=True, activation="prelu")
    basic_model = insightface_weights.load_insightface_weights(basic_model, "backbone.pth", "r50")
"""
import os

import numpy as np

from .insightface_onnx import ONNX_EXTENSIONS, read_onnx
from .insightface_pth import PTH_EXTENSIONS, describe_state_dict, read_state_dict, state_dict_units
from .insightface_units import (  # noqa: F401  (the errors a load raises, reachable from here too)
    ARCFACE_TORCH_BN_EPSILON, Unit, UnsupportedOpError, WeightsMismatchError, _link_units, canonical_order,
)

SOURCE_EXTENSIONS = PTH_EXTENSIONS + ONNX_EXTENSIONS


def is_insightface_weights(weights):
    """True when `weights` names a file the converter reads (`.pth` / `.pt` / `.onnx`).  Usage: is_insightface_weights("r50.onnx")"""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(SOURCE_EXTENSIONS)


# ---------------------------------------------------------------- the Keras side
def keras_units(model):
    """Units of a Keras basic model in canonical order; every layer is either mapped or a pass-through."""
    import keras

    from .face_io import InputNormalization

    passthrough_types = (keras.layers.InputLayer, InputNormalization, keras.layers.ZeroPadding2D, keras.layers.Flatten, keras.layers.Dropout)
    parents, layers = {}, {}
    stack = [model.outputs[0]]
    while stack:
        tensor = stack.pop()
        layer, node_index, _ = tensor._keras_history
        if id(layer) in layers:
            continue
        if isinstance(layer, keras.Model):
            raise WeightsMismatchError("{}: holds the nested model {!r}; convert into a flat basic model".format(model.name, layer.name))
        layers[id(layer)] = layer
        node = layer._inbound_nodes[node_index]
        parents[id(layer)] = [id(value._keras_history[0]) for value in node.input_tensors]
        stack.extend(node.input_tensors)
    output = id(model.outputs[0]._keras_history[0])
    units, unit_of_node, passthrough = [], {}, set()
    for node_id in canonical_order(parents, output):
        layer = layers[node_id]
        kind = None
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            kind = "conv"
        elif isinstance(layer, keras.layers.BatchNormalization):
            kind = "bn"
        elif isinstance(layer, keras.layers.PReLU):
            kind = "prelu"
        elif isinstance(layer, keras.layers.Dense):
            kind = "linear"
        elif isinstance(layer, keras.layers.Add):
            kind = "add"
        elif isinstance(layer, passthrough_types) or (isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] == "linear"):
            passthrough.add(node_id)
            continue
        else:
            raise WeightsMismatchError("Keras layer {!r} ({}) has no counterpart in insightface's IResNet / MobileFaceNet".format(
                layer.name, type(layer).__name__))
        unit = Unit(kind, "Keras layer {!r}".format(layer.name), layer=layer)
        unit.node = node_id
        unit_of_node[node_id] = len(units)
        if kind == "conv":
            unit.attrs = _keras_conv_geometry(layer, layers[parents[node_id][0]])
        if kind in ("linear", "conv"):
            unit.attrs["flatten_from"] = _flattened_shape(node_id, layers, parents, passthrough)
        units.append(unit)
    _link_units(units, unit_of_node, parents, passthrough)
    return units


def _keras_conv_geometry(layer, parent):
    """strides and the (top, left, bottom, right) zero padding a Keras conv applies, ZeroPadding2D before it included."""
    import keras

    kernel = layer.kernel_size
    strides = tuple(layer.strides)
    if layer.padding == "same":
        if strides != (1, 1):
            return {"strides": strides, "pads": "asymmetric 'same'"}
        pads = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
        return {"strides": strides, "pads": (pads[0], pads[1], kernel[0] - 1 - pads[0], kernel[1] - 1 - pads[1])}
    if isinstance(parent, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = parent.padding
        return {"strides": strides, "pads": (top, left, bottom, right)}
    return {"strides": strides, "pads": (0, 0, 0, 0)}


def _flattened_shape(node_id, layers, parents, passthrough):
    """(H, W, C) of the feature map a Flatten turned into this layer's input, None when there is none."""
    import keras

    parent = parents[node_id][0] if parents[node_id] else None
    while parent is not None and parent in passthrough:
        layer = layers[parent]
        if isinstance(layer, keras.layers.Flatten):
            shape = layer.input.shape
            return tuple(shape[1:]) if len(shape) == 4 else None
        parent = parents[parent][0] if parents[parent] else None
    return None


# ---------------------------------------------------------------- loading
HEAD_HINT = ("arcface_torch's heads are output_layer=\"E\", use_bias=True for the IResNets and "
             "output_layer=\"GDC\", use_bias=False for MobileFaceNet")
HEAD_LAYER_PREFIXES = ("E_", "GDC_", "F_", "GAP_", "pw_", "pre_embedding")


def _mismatch(source, unit, layer_unit, what):
    hint = ""
    if layer_unit.layer is not None and layer_unit.layer.name.startswith(HEAD_LAYER_PREFIXES):
        hint = " ({})".format(HEAD_HINT)
    return WeightsMismatchError("{}: {} does not fit {}: {}{}".format(source, unit.name, layer_unit.name, what, hint))


def _conv_kernel(source, unit, target):
    """The PyTorch / ONNX conv weight (out, in / groups, kh, kw) in the Keras layer's kernel layout, checked."""
    import keras

    layer, weight = target.layer, unit.arrays["weight"]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        if weight.shape[1] != 1:
            raise _mismatch(source, unit, target, "weight {} is not a depthwise conv".format(weight.shape))
        kernel = weight.transpose(2, 3, 0, 1)
        expected_group = weight.shape[0]
    else:
        kernel = weight.transpose(2, 3, 1, 0)
        expected_group = layer.groups
    if tuple(kernel.shape) != tuple(layer.kernel.shape):
        raise _mismatch(source, unit, target, "weight {} is kernel {}, the layer's kernel is {}".format(
            weight.shape, kernel.shape, tuple(layer.kernel.shape)))
    if "group" in unit.attrs and unit.attrs["group"] != expected_group:
        raise _mismatch(source, unit, target, "group {} against {}".format(unit.attrs["group"], expected_group))
    for key in ("strides", "pads"):  # ONNX says where it pads and strides; a state dict does not
        if key in unit.attrs and unit.attrs[key] != target.attrs[key]:
            raise _mismatch(source, unit, target, "{} {} against the layer's {}".format(key, unit.attrs[key], target.attrs[key]))
    return kernel


def _linear_kernel(source, unit, target):
    """A (out, in) Linear / Gemm weight in the layout of a Dense (or a 1x1 Conv2D) reading a NHWC Flatten."""
    import keras

    weight = unit.arrays["weight"]
    out_features, in_features = weight.shape
    flatten_from = target.attrs.get("flatten_from")
    if flatten_from and flatten_from[0] * flatten_from[1] > 1:
        height, width, channels = flatten_from
        if in_features != height * width * channels:
            raise _mismatch(source, unit, target, "weight {} reads {} features, the layer reads a flattened {}x{}x{} map".format(
                weight.shape, in_features, height, width, channels))
        # PyTorch flattens (C, H, W), Keras (H, W, C)
        weight = weight.reshape(out_features, channels, height, width).transpose(0, 2, 3, 1).reshape(out_features, -1)
    kernel = weight.T
    layer = target.layer
    if isinstance(layer, keras.layers.Conv2D):
        if layer.kernel_size != (1, 1):
            raise _mismatch(source, unit, target, "a Linear maps only onto a 1x1 conv")
        kernel = kernel.reshape(1, 1, *kernel.shape)
    if tuple(kernel.shape) != tuple(layer.kernel.shape):
        raise _mismatch(source, unit, target, "weight {} is kernel {}, the layer's kernel is {}".format(
            weight.shape, kernel.shape, tuple(layer.kernel.shape)))
    return kernel


def _assign_bn(source, target, gamma, beta, mean, var, epsilon, unit):
    layer = target.layer
    channels = layer.moving_mean.shape[-1]
    for name, value in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if value is not None and value.shape != (channels,):
            raise _mismatch(source, unit, target, "{} has {} channels, the layer {}".format(name, value.shape, channels))
    if layer.scale:
        layer.gamma.assign(np.ones(channels, "float32") if gamma is None else gamma)
    elif gamma is not None and not np.allclose(gamma, 1):
        raise _mismatch(source, unit, target, "the source's gamma is not all ones and the layer has none (build with scale=True)")
    if layer.center:
        layer.beta.assign(np.zeros(channels, "float32") if beta is None else beta)
    elif beta is not None and np.any(beta != 0):
        raise _mismatch(source, unit, target, "the source's beta is not all zeros and the layer has none")
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(var)
    layer.epsilon = float(epsilon)


def assign_units(source_units, target_units, source="source"):
    """Copy the source units' arrays onto the Keras units, pair by pair; raises WeightsMismatchError naming the tensor."""
    with_adds = any(unit.kind == "add" for unit in source_units)
    targets = [unit for unit in target_units if with_adds or unit.kind != "add"]
    epsilons = [unit.attrs["epsilon"] for unit in source_units if unit.kind == "bn"]
    default_epsilon = epsilons[0] if epsilons else ARCFACE_TORCH_BN_EPSILON
    target_index = {id(unit): index for index, unit in enumerate(target_units)}
    ss, tt, pending = 0, 0, None  # pending: (bias, source unit) waiting for the BatchNorm after a bias-free Keras layer
    while tt < len(targets):
        target = targets[tt]
        if ss >= len(source_units):
            last = source_units[-1].name if source_units else "nothing"
            raise WeightsMismatchError("{}: {} gets no weights: the source ends with {} (it is shallower or another network)".format(
                source, target.name, last))
        unit = source_units[ss]
        kind = unit.kind
        if target.kind == "conv" and kind == "linear":
            kind = "conv"  # arcface_torch's Linear after a 1x1 map is a 1x1 conv of the GDC head
        if kind != target.kind:
            raise _mismatch(source, unit, target, "a {} against a {} ({})".format(unit.kind, target.kind, type(target.layer).__name__))
        layer = target.layer
        if target.kind in ("conv", "linear"):
            kernel = _linear_kernel(source, unit, target) if unit.kind == "linear" else _conv_kernel(source, unit, target)
            layer.kernel.assign(kernel)
            bias = unit.arrays.get("bias")
            if layer.use_bias:
                if bias is not None and bias.shape != tuple(layer.bias.shape):
                    raise _mismatch(source, unit, target, "bias {} against {}".format(bias.shape, tuple(layer.bias.shape)))
                layer.bias.assign(np.zeros(layer.bias.shape, "float32") if bias is None else bias)
                bias = None
            following = targets[tt + 1] if tt + 1 < len(targets) else None
            feeds_bn = following is not None and following.kind == "bn" and following.parent == target_index[id(target)]
            next_unit = source_units[ss + 1] if ss + 1 < len(source_units) else None
            source_feeds_bn = next_unit is not None and next_unit.kind == "bn" and next_unit.parent == ss
            if feeds_bn and not source_feeds_bn:  # BatchNorm folded into the source conv: identity plus its bias
                channels = following.layer.moving_mean.shape[-1]
                zeros = np.zeros(channels, "float32")
                if bias is not None and bias.shape != (channels,):
                    raise _mismatch(source, unit, following, "bias {} against {} channels".format(bias.shape, channels))
                epsilon = default_epsilon
                _assign_bn(source, following, None, zeros if bias is None else bias, zeros, np.full(channels, 1 - epsilon, "float32"), epsilon, unit)
                ss, tt = ss + 1, tt + 2
                continue
            if bias is not None and not (feeds_bn and source_feeds_bn):
                raise _mismatch(source, unit, target, "the source has a bias and the layer none (build with use_bias=True)")
            pending = (bias, unit) if bias is not None else None
        elif target.kind == "bn":
            arrays = unit.arrays
            mean = arrays["mean"]
            if pending is not None:  # a source bias before this BatchNorm shifts its mean
                mean = mean - pending[0]
                pending = None
            _assign_bn(source, target, arrays["gamma"], arrays["beta"], mean, arrays["var"], unit.attrs["epsilon"], unit)
        elif target.kind == "prelu":
            alpha, slope = layer.alpha, unit.arrays["weight"].reshape(-1)
            channels = alpha.shape[-1]
            if slope.size not in (1, channels):
                raise _mismatch(source, unit, target, "{} slopes against {} channels".format(slope.size, channels))
            alpha.assign(np.broadcast_to(slope, tuple(alpha.shape)).astype("float32"))
        ss, tt = ss + 1, tt + 1
    if ss < len(source_units):
        raise WeightsMismatchError("{}: {} has no place in the Keras model, which ends before it ({} more source layers: the "
                                   "source is deeper or another network)".format(source, source_units[ss].name, len(source_units) - ss))


def _keras_embedding_size(model):
    return model.outputs[0].shape[-1]


def _check_against(path, description, model, stem_name):
    """Refuse a source of another network, depth or embedding size than the Keras model, naming the tensor that shows it."""
    from .backbones import mbf, resnet

    if description["family"] is None:
        return
    stem = stem_name.lower() if isinstance(stem_name, str) else None
    arch = description["arch"] or description["family"]
    if stem in resnet.STAGE_DEPTHS and description["family"] == "iresnet" and stem != description["arch"]:
        ours, theirs = resnet.STAGE_DEPTHS[stem], description["depths"]
        stage = next(index for index in range(4) if ours[index] != theirs[index])
        if theirs[stage] > ours[stage]:
            tensor = "layer{}.{}.bn1.weight".format(stage + 1, ours[stage])
            what = "has no place in {} (blocks per stage {})".format(stem, ", ".join(map(str, ours)))
        else:
            tensor = "layer{}.{}".format(stage + 1, theirs[stage])
            what = "is missing: {} has {} blocks in stage {}".format(stem, ours[stage], stage + 1)
        raise WeightsMismatchError("{}: holds an arcface_torch {} (blocks per stage {}): {} {}".format(
            path, arch, ", ".join(map(str, theirs)), tensor, what))
    known = set(resnet.STAGE_DEPTHS) | set(mbf.VARIANTS)
    if stem in known and (stem in resnet.STAGE_DEPTHS) != (description["family"] == "iresnet"):
        first = "conv1.weight" if description["family"] == "iresnet" else "layers.0.layers.0.weight"
        raise WeightsMismatchError("{}: holds an arcface_torch {} ({} ...), stem_model is {!r}: another network".format(path, arch, first, stem))
    emb_size = _keras_embedding_size(model)
    if description["emb_size"] is not None and emb_size != description["emb_size"]:
        raise WeightsMismatchError("{}: {} embeds to {} values, the Keras model to {} (emb_shape={}): build with emb_shape={}".format(
            path, description["emb_tensor"], description["emb_size"], emb_size, emb_size, description["emb_size"]))


def read_source(path):
    """(units, description, input normalization, input dims or None) of a `.pth` / `.onnx` file."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith(PTH_EXTENSIONS):
        from . import face_io

        tensors = read_state_dict(path)
        return state_dict_units(tensors, path), describe_state_dict(tensors), face_io.INSIGHTFACE_NORM, None
    if lower.endswith(ONNX_EXTENSIONS):
        from . import face_io

        units, description, norm, input_dims = read_onnx(path)
        return units, description, norm or face_io.INSIGHTFACE_NORM, input_dims
    raise ValueError("{}: expected an arcface_torch state dict ({}) or an insightface ONNX model (.onnx)".format(
        path, " / ".join(PTH_EXTENSIONS)))


def load_insightface_weights(model, path, stem_name=None):
    """`model` (a basic model of the source's network) with the weights of `path` and its input normalization.

    Returns a model with `face_io.InputNormalization` after its input (the source's normalization, e.g.
    `(x - 127.5) / 127.5`); raises WeightsMismatchError / UnsupportedOpError naming what did not fit.
    Usage: basic_model = load_insightface_weights(models.buildin_models("r50", 0, 512, output_layer="E", use_bias=True), "backbone.pth")
    """
    from . import surgery

    path = os.fspath(path)
    source_units, description, norm, input_dims = read_source(path)
    _check_against(path, description, model, stem_name)
    if input_dims and len(input_dims) == 4:
        height, width = model.inputs[0].shape[1:3]
        if None not in input_dims[2:] and tuple(input_dims[2:]) != (height, width) and None not in (height, width):
            raise WeightsMismatchError("{}: the graph's input is {}x{}, the Keras model's {}x{} (build with input_shape=({}, {}, 3))".format(
                path, input_dims[2], input_dims[3], height, width, input_dims[2], input_dims[3]))
    model = surgery.add_input_normalization(model, *norm)
    try:
        units = keras_units(model)
    except WeightsMismatchError as error:
        raise WeightsMismatchError("{}: {}".format(path, error)) from None
    assign_units(source_units, units, path)
    return model

