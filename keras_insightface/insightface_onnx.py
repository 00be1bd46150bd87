"""insightface ONNX recognition models (e.g. `w600k_r50.onnx`): the graph read into source units in canonical order,
its leading input normalization, and the network its units spell.

Usage:
    from keras_insightface import insightface_onnx
    units, description, norm, input_dims = insightface_onnx.read_onnx("w600k_r50.onnx")
"""
import os

import numpy as np

from .insightface_units import Unit, UnsupportedOpError, _link_units, _mbf_description, canonical_order

ONNX_EXTENSIONS = (".onnx",)
# ONNX ops that only carry data or shapes: no weights, nothing to map
PASSTHROUGH_OPS = {"Flatten", "Reshape", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast"}
INPUT_AFFINE_OPS = {"Sub", "Mul", "Div", "Add"}  # with a constant, directly on the input: the input normalization


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
