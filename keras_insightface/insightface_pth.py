"""arcface_torch `.pth` state dicts: the tensors read (without running pickled code), grouped into source units, and
the network they spell (IResNet depths or MobileFaceNet scale / blocks, embedding size).

Usage:
    from keras_insightface import insightface_pth
    tensors = insightface_pth.read_state_dict("backbone.pth")
    units, description = insightface_pth.state_dict_units(tensors, "backbone.pth"), insightface_pth.describe_state_dict(tensors)
"""
import os
import re
from collections import OrderedDict

from .insightface_units import ARCFACE_TORCH_BN_EPSILON, Unit, WeightsMismatchError, _mbf_description

PTH_EXTENSIONS = (".pth", ".pt")
STATE_DICT_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone")  # checkpoints that wrap the state dict


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
