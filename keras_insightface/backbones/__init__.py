"""Backbones: one file per family; each registers its names in `registry` where it defines its builders.

Importing this package loads every family, so the registry is complete.

Usage:
    from keras_insightface.backbones import resnet, mobile_facenet, registry
    backbone = resnet.ResNet50(input_shape=(112, 112, 3))
    registry.list_models()
"""
from keras_insightface.backbones import registry  # noqa: F401
from keras_insightface.backbones import resnet, keras_applications, efficientnet  # noqa: F401  (registration order = print order)
from keras_insightface.backbones import se_resnext, resnest, ghostnet, mobile_facenet, mobilenet_v3, vargface  # noqa: F401
from keras_insightface.backbones import mbf  # noqa: F401
