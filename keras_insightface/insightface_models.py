"""Keras basic models built from an insightface weight file, the network and embedding size read from the file.

Usage:
    from keras_insightface import insightface_models
    basic_model = insightface_models.build_from_insightface("w600k_r50.onnx")
"""
import os

from .insightface_units import ARCFACE_TORCH_BN_EPSILON, WeightsMismatchError
from .insightface_weights import load_insightface_weights, read_source


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
