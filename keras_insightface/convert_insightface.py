#!/usr/bin/env python3
"""Start from insightface's trained weights: arcface_torch `backbone.pth` state dicts and insightface ONNX
recognition models (e.g. `w600k_r50.onnx`) become Keras basic models that embed a face to the same vector.

Sources and the networks they convert into (`models.buildin_models` names):
| source                                   | network                         | Keras basic model                                   |
| ---------------------------------------- | ------------------------------- | --------------------------------------------------- |
| arcface_torch r18/r34/r50/r100/r200 .pth | IResNet (iresnet.py)            | `r18` ... `r200` (built with PReLU, = `iresnet18` ...), output_layer="E", use_bias=True |
| arcface_torch mbf / mbf_large .pth       | MobileFaceNet (mobilefacenet.py)| `mbf` / `mbf_large`, output_layer="GDC", use_bias=False |
| insightface ONNX of either (model zoo)   | the same, read from the graph   | the same                                            |

The converted model takes the source's normalized input, `(x - 127.5) / 127.5` of RGB pixels for arcface_torch
(or what the ONNX graph's leading Sub / Mul nodes do), in NHWC; that normalization is stored in the model as a
`face_io.InputNormalization` layer after the input, so evals, IJB_evals, the distiller and export use it.
BatchNorm epsilon comes from the source (1e-5 in arcface_torch). ONNX exports fold each Conv's BatchNorm into
the Conv: the Keras BatchNorm after such a conv becomes the identity plus the conv's bias.

How tensors are matched: both networks are walked in one canonical order (data flow from the input; at each
residual Add the longer branch first), and the Conv / BatchNorm / PReLU / Linear (and, for ONNX, Add) of the
source are paired with the Keras layers of the same kind, shape by shape. Anything that does not fit raises
`WeightsMismatchError` naming the source tensor (and the Keras layer), an ONNX op without a counterpart
`UnsupportedOpError` naming the node; before that, a source of another depth or embedding size than the Keras
model is refused with the tensor that shows it.

Usage:
    from keras_insightface import models, convert_insightface
    basic_model = models.buildin_models("r100", dropout=0, emb_shape=512, output_layer="E", use_bias=True, weights="backbone.pth")
    basic_model = convert_insightface.build_from_insightface("w600k_r50.onnx")  # network read from the file
CLI:
    python convert_insightface.py -i backbone.pth -o r100_glint360k.keras
"""
import argparse
import os
import re
import sys
from collections import OrderedDict

import numpy as np

from . import cli, io_utils

ARCFACE_TORCH_BN_EPSILON = 1e-5  # every BatchNorm of arcface_torch's IResNet and MobileFaceNet
PTH_EXTENSIONS = (".pth", ".pt")
ONNX_EXTENSIONS = (".onnx",)
SOURCE_EXTENSIONS = PTH_EXTENSIONS + ONNX_EXTENSIONS
STATE_DICT_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone")  # checkpoints that wrap the state dict
# ONNX ops that only carry data or shapes: no weights, nothing to map
PASSTHROUGH_OPS = {"Flatten", "Reshape", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast"}
INPUT_AFFINE_OPS = {"Sub", "Mul", "Div", "Add"}  # with a constant, directly on the input: the input normalization


class WeightsMismatchError(ValueError):
    """A source tensor does not fit the Keras model (another depth, embedding size or network); the message names it."""


class UnsupportedOpError(WeightsMismatchError):
    """The ONNX graph holds an op that none of the converter's Keras layers computes; the message names the node."""


def is_insightface_weights(weights):
    """True when `weights` names a file the converter reads (`.pth` / `.pt` / `.onnx`).  Usage: is_insightface_weights("r50.onnx")"""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(SOURCE_EXTENSIONS)


# ---------------------------------------------------------------- source units
class Unit:
    """One weight-carrying (or residual Add) step of a network, in canonical order.

    kind: "conv", "bn", "prelu", "linear" or "add"; name: the tensor / layer name for messages;
    arrays: weight / bias (PyTorch layouts: conv (out, in / groups, kh, kw), linear (out, in)), or
    gamma / beta / mean / var; attrs: strides, pads, group, epsilon where the source says;
    parent: index of the unit whose output this one reads directly (None: another one).
    """

    def __init__(self, kind, name, arrays=None, attrs=None, layer=None):
        self.kind, self.name, self.arrays, self.attrs, self.layer = kind, name, arrays or {}, attrs or {}, layer
        self.parent = None

    def __repr__(self):
        return "Unit({}, {})".format(self.kind, self.name)


def _post_order(parents, output, push_order=None):
    """Nodes reachable from `output`, parents first, iteratively (deep networks exceed the recursion limit);
    `push_order(node)` gives the order a node's parents are pushed on the stack (the last pushed is visited first)."""
    push_order = push_order or (lambda node: parents[node])
    order, done, stack = [], set(), [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if expanded:
            done.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((parent, False) for parent in push_order(node) if parent not in done)
    return order


def canonical_order(parents, output):
    """Nodes in post-order from `output`, visiting the inputs of a merge longest-path-from-the-input first.

    At a residual Add that puts the main branch before the shortcut in any graph of the same network,
    whatever order its builder wrote them in.
    """
    topological = _post_order(parents, output)
    position = {node: index for index, node in enumerate(topological)}
    length = {}
    for node in topological:
        length[node] = 1 + max((length[parent] for parent in parents[node]), default=0)
    return _post_order(parents, output, lambda node: reversed(sorted(parents[node], key=lambda parent: (-length[parent], position[parent]))))


def _link_units(units, unit_of_node, parents, passthrough):
    """Set each unit's `parent`: the unit whose output it reads, through pass-through nodes only."""
    for index, unit in enumerate(units):
        node = unit.node
        data_parents = parents[node]
        if not data_parents:
            continue
        parent = data_parents[0]
        while parent not in unit_of_node and parent in passthrough and parents[parent]:
            parent = parents[parent][0]
        unit.parent = unit_of_node.get(parent)


# ---------------------------------------------------------------- .pth state dicts
def read_state_dict(path):
    """The arcface_torch state dict of a `.pth` as an OrderedDict of float32 NumPy arrays (`module.` prefixes dropped).

    Accepts a bare state dict or a checkpoint holding one under `state_dict_backbone` / `state_dict` / `model`.
    Usage: tensors = read_state_dict("backbone.pth")
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no such file (expected an arcface_torch backbone.pth)".format(path))
    try:
        import torch
    except ImportError as error:
        raise ImportError("{}: reading a .pth needs PyTorch: pip install 'keras_insightface[torch]'".format(path)) from error
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError("{}: not a readable PyTorch state dict ({}: {}); a TorchScript or pickled module is not "
                         "accepted, save `backbone.state_dict()`".format(path, type(error).__name__, str(error).splitlines()[0])) from error
    if isinstance(content, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content:
        raise ValueError("{}: expected a state dict (name -> tensor), got {}".format(path, type(content).__name__))
    tensors = OrderedDict()
    for key, value in content.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError("{}: entry {!r} is a {}, expected a tensor of a state dict".format(path, key, type(value).__name__))
        key = key[len("module."):] if key.startswith("module.") else key
        tensors[key] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return tensors


def state_dict_units(tensors, source="state dict"):
    """Units of a state dict, in its (registration = forward) order: tensors grouped by module name."""
    modules = OrderedDict()
    for key, value in tensors.items():
        prefix, _, param = key.rpartition(".")
        modules.setdefault(prefix, {})[param] = value
    units = []
    for prefix, params in modules.items():
        label = prefix + ".weight" if "weight" in params else prefix + "." + sorted(params)[0]
        weight = params.get("weight")
        if "running_mean" in params:
            channels = len(params["running_mean"])
            arrays = {
                "gamma": params.get("weight"), "beta": params.get("bias"), "mean": params["running_mean"], "var": params["running_var"],
            }
            units.append(Unit("bn", label, arrays, {"epsilon": ARCFACE_TORCH_BN_EPSILON, "channels": channels}))
        elif weight is not None and weight.ndim == 4 and set(params) <= {"weight", "bias"}:
            units.append(Unit("conv", label, {"weight": weight, "bias": params.get("bias")}))
        elif weight is not None and weight.ndim == 2 and set(params) <= {"weight", "bias"}:
            units.append(Unit("linear", label, {"weight": weight, "bias": params.get("bias")}))
        elif weight is not None and weight.ndim == 1 and set(params) == {"weight"}:
            units.append(Unit("prelu", label, {"weight": weight}))
        else:
            shapes = ", ".join("{} {}".format(name, tuple(value.shape)) for name, value in params.items())
            raise WeightsMismatchError("{}: {} ({}) is not a Conv2d, BatchNorm, PReLU or Linear of arcface_torch's IResNet / "
                                       "MobileFaceNet".format(source, prefix or "<root>", shapes))
    for index, unit in enumerate(units):  # arcface_torch: each conv feeds the BatchNorm registered after it
        if unit.kind == "bn" and index and units[index - 1].kind in ("conv", "linear"):
            unit.parent = index - 1
    return units


def describe_state_dict(tensors):
    """{"arch", "depths" or "scale" / "blocks", "emb_size", "emb_tensor"} of an arcface_torch state dict; arch None if unknown."""
    from .backbones import resnet

    blocks = {}
    for key in tensors:
        match = re.match(r"layer([1-4])\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if blocks and "fc.weight" in tensors:
        depths = tuple(blocks.get(stage, 0) for stage in range(1, 5))
        arch = next((name for name, value in resnet.STAGE_DEPTHS.items() if value == depths), None)
        return {"arch": arch, "family": "iresnet", "depths": depths, "emb_size": tensors["fc.weight"].shape[0], "emb_tensor": "fc.weight"}
    emb_tensor = "features.layers.2.weight"
    if "layers.0.layers.0.weight" in tensors and emb_tensor in tensors:
        scale = tensors["layers.0.layers.0.weight"].shape[0] // 64

        def residual_count(index):
            return len({int(mm.group(1)) for key in tensors for mm in [re.match(r"layers\.{}\.layers\.(\d+)\.layers\.".format(index), key)] if mm})

        first = 1 if "layers.1.layers.0.weight" in tensors else residual_count(1)
        block_counts = (first, residual_count(3), residual_count(5), residual_count(7))
        return _mbf_description(scale, block_counts, tensors[emb_tensor].shape[0], emb_tensor)
    return {"arch": None, "family": None, "emb_size": None, "emb_tensor": None}


def _mbf_description(scale, block_counts, emb_size, emb_tensor):
    from .backbones import mbf

    arch = next((name for name, value in mbf.VARIANTS.items() if value == {"scale": scale, "blocks": block_counts}), None)
    return {"arch": arch, "family": "mbf", "scale": scale, "blocks": block_counts, "emb_size": emb_size, "emb_tensor": emb_tensor}


# ---------------------------------------------------------------- ONNX graphs
def _attributes(node):
    from onnx import helper

    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def read_onnx(path):
    """(units in canonical order, description, input normalization, input dims) of an insightface ONNX recognition model.

    The normalization is the (mean, std) that the graph's leading constant Sub / Mul / Div / Add nodes apply to
    raw pixels, None when it has none (then the caller feeds `(x - 127.5) / 127.5`, as insightface does).
    Usage: units, description, norm, dims = read_onnx("w600k_r50.onnx")
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no such file (expected an insightface ONNX recognition model)".format(path))
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise ImportError("{}: reading ONNX needs the onnx package: pip install onnx".format(path)) from error
    try:
        model = onnx.load(path)
    except Exception as error:
        raise ValueError("{}: not a readable ONNX model ({}: {})".format(path, type(error).__name__, error)) from error
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError("{}: expected one image input and one embedding output, got {} and {}".format(path, len(inputs), len(graph.output)))
    input_name = inputs[0].name
    input_dims = [dim.dim_value or None for dim in inputs[0].type.tensor_type.shape.dim]
    producer, parents, nodes = {}, {input_name: []}, {input_name: None}
    for node in graph.node:
        attrs = _attributes(node)
        if node.op_type == "Constant":
            value = attrs.get("value")
            constants[node.output[0]] = numpy_helper.to_array(value) if value is not None else np.asarray(next(iter(attrs.values())))
            continue
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
            continue
        node_id = node.output[0]
        nodes[node_id] = node
        parents[node_id] = [producer.get(name, name) for name in node.input if name and name not in constants]
        for name in node.output:
            producer[name] = node_id
    output = producer.get(graph.output[0].name)
    if output is None:
        raise ValueError("{}: the output {!r} is not computed by any node".format(path, graph.output[0].name))
    for node_id, node_parents in parents.items():
        for parent in node_parents:
            if parent not in nodes:
                raise ValueError("{}: node {!r} reads {!r}, which no node computes".format(path, nodes[node_id].name, parent))

    # the input normalization: constant Sub / Mul / Div / Add nodes straight on the input
    scale, shift, normalization_nodes = 1.0, 0.0, {input_name}
    units, unit_of_node, passthrough = [], {}, set()
    for node_id in canonical_order(parents, output):
        node = nodes[node_id]
        if node is None:
            continue
        op, attrs = node.op_type, _attributes(node)
        label = "{} node {!r}".format(op, node.name or node_id)
        const_inputs = [constants[name] for name in node.input if name in constants]
        if op in INPUT_AFFINE_OPS and len(parents[node_id]) == 1 and parents[node_id][0] in normalization_nodes and len(const_inputs) == 1:
            value = np.unique(np.asarray(const_inputs[0], "float64"))
            if value.size != 1:
                raise UnsupportedOpError("{}: {} applies a per-channel constant to the input; only one value for all "
                                         "channels maps to InputNormalization".format(path, label))
            value = float(value[0])
            if op == "Sub" and node.input[0] not in constants:
                shift -= value
            elif op == "Add":
                shift += value
            elif op == "Mul":
                scale, shift = scale * value, shift * value
            elif op == "Div" and node.input[0] not in constants:
                scale, shift = scale / value, shift / value
            else:
                raise UnsupportedOpError("{}: {} computes constant - input or constant / input".format(path, label))
            normalization_nodes.add(node_id)
            passthrough.add(node_id)
            continue
        unit = _onnx_unit(path, node, op, attrs, label, constants, parents[node_id])
        if unit is None:
            passthrough.add(node_id)
            continue
        if unit == "bias":  # a constant Add after a MatMul / Gemm: that layer's bias
            previous = units[-1] if units else None
            if previous is None or previous.kind != "linear" or unit_of_node.get(parents[node_id][0]) != len(units) - 1:
                raise UnsupportedOpError("{}: {} adds a constant that is not the bias of a MatMul".format(path, label))
            bias = np.asarray(const_inputs[0], "float32").reshape(-1)
            previous.arrays["bias"] = bias if previous.arrays.get("bias") is None else previous.arrays["bias"] + bias
            unit_of_node[node_id] = len(units) - 1
            continue
        unit.node = node_id
        unit_of_node[node_id] = len(units)
        units.append(unit)
    _link_units(units, unit_of_node, parents, passthrough)
    norm = (-shift / scale, 1.0 / scale) if normalization_nodes != {input_name} else None
    return units, describe_units(units), norm, input_dims


def _onnx_unit(path, node, op, attrs, label, constants, data_parents):
    """The Unit of one ONNX node, None for a pass-through node, "bias" for a constant Add; raises for other ops."""
    def const(index, what):
        if len(node.input) <= index or not node.input[index]:
            return None
        if node.input[index] not in constants:
            raise UnsupportedOpError("{}: {} takes its {} from the data flow; only constant {}s map to Keras weights".format(path, label, what, what))
        return np.asarray(constants[node.input[index]], "float32")

    if op == "Conv":
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or any(value != 1 for value in attrs.get("dilations", [1, 1])):
            raise UnsupportedOpError("{}: {} uses auto_pad or dilation, which the converter does not map".format(path, label))
        weight = const(1, "weight")
        attrs = {"strides": tuple(attrs.get("strides", (1, 1))), "pads": tuple(attrs.get("pads", (0, 0, 0, 0))), "group": int(attrs.get("group", 1))}
        return Unit("conv", label, {"weight": weight, "bias": const(2, "bias")}, attrs)
    if op == "BatchNormalization":
        arrays = {"gamma": const(1, "scale"), "beta": const(2, "bias"), "mean": const(3, "mean"), "var": const(4, "variance")}
        return Unit("bn", label, arrays, {"epsilon": float(attrs.get("epsilon", 1e-5))})
    if op == "PRelu":
        return Unit("prelu", label, {"weight": const(1, "slope").reshape(-1)})
    if op == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise UnsupportedOpError("{}: {} uses transA / alpha / beta, which the converter does not map".format(path, label))
        weight = const(1, "weight")
        weight = weight if attrs.get("transB", 0) else weight.T
        bias = const(2, "bias")
        return Unit("linear", label, {"weight": weight, "bias": None if bias is None else np.broadcast_to(bias, weight.shape[:1]).copy()})
    if op == "MatMul" and len(data_parents) == 1:
        return Unit("linear", label, {"weight": const(1, "weight").T, "bias": None})
    if op == "Add" and len(data_parents) == 2:
        return Unit("add", label)
    if op == "Add" and len(data_parents) == 1:
        return "bias"
    if op in PASSTHROUGH_OPS:
        return None
    raise UnsupportedOpError("{}: {} has no counterpart among the layers the converter maps (Conv, BatchNormalization, "
                             "PRelu, residual Add, Gemm / MatMul, Flatten / Reshape, and Sub / Mul on the input)".format(path, label))


def describe_units(units):
    """The network an ONNX graph's units spell: IResNet depths from its residual Adds, or MobileFaceNet from its grouped convs."""
    convs = [unit for unit in units if unit.kind == "conv"]
    linears = [unit for unit in units if unit.kind == "linear"]
    emb_size = linears[-1].arrays["weight"].shape[0] if linears else None
    emb_tensor = linears[-1].name if linears else None
    unknown = {"arch": None, "family": None, "emb_size": emb_size, "emb_tensor": emb_tensor}
    if not convs:
        return unknown
    if any(unit.attrs.get("group", 1) > 1 for unit in convs):
        adds, stage = [0, 0, 0, 0], -1
        for unit in units:
            if unit.kind == "conv" and unit.attrs["strides"][0] == 2:
                stage += 1
            elif unit.kind == "add" and 0 <= stage < 4:
                adds[stage] += 1
        scale = convs[0].arrays["weight"].shape[0] // 64
        return _mbf_description(scale, (max(adds[0], 1), adds[1], adds[2], adds[3]), emb_size, emb_tensor)
    from .backbones import resnet

    depths, stage, strided = [0, 0, 0, 0], 0, False
    for unit in units:
        if unit.kind == "conv" and unit.attrs["strides"][0] == 2:
            strided = True
        elif unit.kind == "add":
            stage += strided
            strided = False
            if not 1 <= stage <= 4:
                return unknown
            depths[stage - 1] += 1
    depths = tuple(depths)
    arch = next((name for name, value in resnet.STAGE_DEPTHS.items() if value == depths), None)
    return {"arch": arch, "family": "iresnet", "depths": depths, "emb_size": emb_size, "emb_tensor": emb_tensor}


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


def build_from_insightface(path, name=None, emb_shape=None, input_shape=(112, 112, 3), dropout=0, bn_momentum=0.9, **kwargs):
    """The Keras basic model of an arcface_torch `.pth` / insightface `.onnx`, network and embedding size read from it.

    bn_momentum: for fine-tuning, arcface_torch's 0.9 (PyTorch momentum 0.1) by default.
    Usage: basic_model = build_from_insightface("w600k_r50.onnx")
    """
    from . import models
    from .backbones import mbf

    path = os.fspath(path)
    _, description, _, _ = read_source(path)
    family = description["family"]
    if family is None:
        raise WeightsMismatchError("{}: neither arcface_torch's IResNet nor its MobileFaceNet: no conv1 / layerN tensors or "
                                   "grouped convs to tell the network by".format(path))
    emb_shape = emb_shape or description["emb_size"]
    common = dict(dropout=dropout, emb_shape=emb_shape, input_shape=input_shape, bn_momentum=bn_momentum, bn_epsilon=ARCFACE_TORCH_BN_EPSILON)
    if family == "iresnet":
        name = name or description["arch"]
        if name is None:
            raise WeightsMismatchError("{}: an IResNet with blocks per stage {}, which is none of {}".format(
                path, description["depths"], ", ".join(sorted(models.list_models()))))
        return models.buildin_models(name, output_layer="E", use_bias=True, weights=path, **common, **kwargs)
    backbone = mbf.MBF(input_shape=input_shape, scale=description["scale"], blocks=description["blocks"], name=name or description["arch"] or "mbf_custom",
                       bn_momentum=bn_momentum, bn_epsilon=ARCFACE_TORCH_BN_EPSILON)
    basic_model = models.buildin_models(backbone, output_layer="GDC", use_bias=False, **common, **kwargs)
    return load_insightface_weights(basic_model, path, name)


# ---------------------------------------------------------------- parity and the CLI
def compare_with_onnx(model, onnx_path, num_images=8, seed=0):
    """(max abs difference, min cosine) of the Keras and the ONNX model's embeddings on random uint8 faces.

    The ONNX model gets NCHW input normalized as the Keras model's InputNormalization says (raw pixels when
    the graph normalizes itself). Usage: max_diff, min_cos = compare_with_onnx(basic_model, "w600k_r50.onnx")
    """
    import onnxruntime as ort

    from . import export, face_io

    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    images = export.synthetic_images(num_images, tuple(model.inputs[0].shape[1:3]), seed=seed)
    _, _, graph_norm, _ = read_onnx(onnx_path)
    feed = face_io.normalize(images, (0.0, 1.0) if graph_norm else face_io.model_normalization(model)).transpose(0, 3, 1, 2)
    theirs = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(feed)})[0].reshape(num_images, -1)
    ours = export.keras_embeddings(model, images)
    return float(np.abs(ours - theirs).max()), float(export.cosine_similarities(ours, theirs).min())


def convert(input_path, output_path=None, name=None, emb_shape=None, bn_momentum=0.9, num_parity_images=8):
    """Convert an arcface_torch `.pth` / insightface `.onnx` into a saved Keras basic model (`.keras` / `.h5`).

    ONNX sources are compared with onnxruntime (when installed) on `num_parity_images` random faces before anything
    is written: min cosine >= 0.9999 or nothing is written. Returns the output path.
    Usage: convert("backbone.pth", "r100.keras")
    """
    from . import export, face_io

    input_path = os.fspath(input_path)
    output_path = os.fspath(output_path or os.path.splitext(input_path)[0] + ".keras")
    if not output_path.endswith((".keras", ".h5")):
        raise ValueError("{}: expected an output ending with .keras or .h5".format(output_path))
    model = build_from_insightface(input_path, name=name, emb_shape=emb_shape, bn_momentum=bn_momentum)
    print(">>>> Converted {} into {} ({} parameters), input normalization (x - {}) / {}".format(
        input_path, model.name, model.count_params(), *face_io.model_normalization(model)))
    if input_path.lower().endswith(ONNX_EXTENSIONS) and num_parity_images:
        try:
            max_diff, min_cos = compare_with_onnx(model, input_path, num_parity_images)
        except ImportError:
            print(">>>> onnxruntime is not installed: parity with the ONNX model not checked")
        else:
            print(">>>> Parity with {} on {} random faces: max abs difference {:.3g}, cosine min {:.7f}".format(
                os.path.basename(input_path), num_parity_images, max_diff, min_cos))
            if not min_cos >= export.PARITY_THRESHOLDS["onnx"]:
                raise export.ParityError("{}: min cosine {:.6f} against the ONNX model; nothing was written".format(input_path, min_cos))
    with io_utils.atomic_path(output_path) as tmp:
        model.save(tmp)
    print(">>>> Saved:", output_path)
    return output_path


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert insightface weights (arcface_torch backbone.pth, insightface ONNX recognition model) into a Keras basic model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-i", "--input", required=True, help="arcface_torch state dict (.pth / .pt) or insightface ONNX model (.onnx)")
    parser.add_argument("-o", "--output", default=None, help="Keras basic model to write (.keras / .h5), default beside the input: <input>.keras")
    parser.add_argument("-n", "--name", default=None, help="network name (r18 ... r200, mbf, mbf_large), default read from the file")
    parser.add_argument("--bn_momentum", type=float, default=0.9, help="BatchNorm momentum for fine-tuning (arcface_torch: 0.9)")
    parser.add_argument("--num_parity_images", type=int, default=8, help="random faces for the ONNX parity check (0: none)")
    return parser.parse_args(argv)


def main(argv=None):
    """The command line of convert_insightface.py (console script keras-insightface-convert-insightface)."""
    args = parse_arguments(argv)
    return cli.run("convert_insightface.py", convert, args.input, args.output, args.name, None, args.bn_momentum, args.num_parity_images)


if __name__ == "__main__":
    sys.exit(main())
