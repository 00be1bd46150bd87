"""MobileFaceNet as insightface defines it (fmobilefacenet), optionally with squeeze-excite blocks.

Layout for a 112x112 input: Conv3x3(64, /2) -> depthwise 3x3 (64) -> bottleneck (/2, 64)
-> 4 residual bottlenecks (64) -> bottleneck (/2, 128) -> 6 residual bottlenecks (128)
-> bottleneck (/2, 128) -> 2 residual bottlenecks (128) -> Conv1x1(512). Bottlenecks expand
by 2 (x4 for the last downsampling one) with a 1x1 conv, filter with a 3x3 depthwise conv and
project back with a linear 1x1 conv; every other conv is followed by BN + PReLU.

Usage:
    from keras_insightface.backbones import mobile_facenet
    basic_model = mobile_facenet.mobile_facenet(256, dropout=0, name="mobile_facenet_256")
    backbone = mobile_facenet.MobileFaceNet(input_shape=(112, 112, 3))  # headless, 7x7x512 output
"""
import keras

from .. import heads, surgery
from . import _layers, registry

BN_MOMENTUM = 0.99
BN_EPSILON = 0.001
SE_REDUCTION = 4
# (output channels, expanded channels, stride, repeats) of each bottleneck group after the stem.
BOTTLENECK_GROUPS = ((64, 128, 2, 1), (64, 128, 1, 4), (128, 256, 2, 1), (128, 256, 1, 6), (128, 512, 2, 1), (128, 256, 1, 2))


class _Builder(_layers.LayerBuilder):
    """Holds the BN settings and the SE switch while the graph is written."""

    def __init__(self, bn_momentum, bn_epsilon, use_se):
        super().__init__(bn_momentum, bn_epsilon)
        self.use_se = use_se

    def padded_conv_bn(self, inputs, filters, kernel_size, strides, name, depthwise=False, activation="prelu"):
        """Conv (or depthwise conv) + BN + activation; strided convs first pad `kernel_size // 2` on every side."""
        padding = "same"
        if strides > 1:
            inputs = keras.layers.ZeroPadding2D(padding=kernel_size // 2, name=name + "_pad")(inputs)
            padding = "valid"
        if depthwise:
            nn = self.depthwise(inputs, kernel_size, strides, name, padding=padding)
        else:
            nn = self.conv(inputs, filters, kernel_size, strides, name, padding=padding)
        return self.bn(nn, name, activation)

    def bottleneck(self, inputs, filters, expand, strides, name):
        nn = self.padded_conv_bn(inputs, expand, 1, 1, name + "_expand")
        nn = self.padded_conv_bn(nn, expand, 3, strides, name + "_depthwise", depthwise=True)
        nn = self.padded_conv_bn(nn, filters, 1, 1, name + "_project", activation=None)
        if self.use_se:
            nn = self.squeeze_excite(nn, filters // SE_REDUCTION, name, activation="prelu")
        if strides == 1 and inputs.shape[-1] == filters:
            nn = keras.layers.Add(name=name + "_add")([inputs, nn])
        return nn


def MobileFaceNet(
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    use_se=False,
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    name="mobilefacenet",
    **kwargs,
):
    """Headless MobileFaceNet; output is the Conv1x1(512) feature map.  Usage: MobileFaceNet((112, 112, 3))"""
    if include_top:
        raise ValueError("MobileFaceNet: include_top=True is not supported; use mobile_facenet() for a full model")
    if weights is not None:
        raise ValueError(f"MobileFaceNet: no downloadable weights, got weights={weights!r}")
    if kwargs:
        raise TypeError(f"MobileFaceNet: unexpected arguments {sorted(kwargs)}")
    builder = _Builder(bn_momentum, bn_epsilon, use_se)
    inputs = keras.Input(shape=input_shape, name="input")
    nn = builder.padded_conv_bn(inputs, 64, 3, 2, "stem")
    nn = builder.padded_conv_bn(nn, 64, 3, 1, "stem_depthwise", depthwise=True)
    for group_id, (filters, expand, strides, repeats) in enumerate(BOTTLENECK_GROUPS, start=1):
        for block_id in range(1, repeats + 1):
            nn = builder.bottleneck(nn, filters, expand, strides, f"group{group_id}_block{block_id}")
    nn = builder.padded_conv_bn(nn, 512, 1, 1, "sep")
    return keras.Model(inputs, nn, name=name)


def mobile_facenet(
    emb_shape=128,
    dropout=1,
    name="mobile_facenet",
    weight_decay=None,
    use_se=False,
    input_shape=(112, 112, 3),
    output_layer="GDC",
    **kwargs,
):
    """Full MobileFaceNet basic model (backbone + GDC embedding head, last layer `embedding`).

    `weight_decay` adds L2(weight_decay / 2) to every kernel, as `surgery.add_l2_regularizer_2_model`.
    Other keyword arguments go to `heads.add_embedding_head` (bn_momentum, bn_epsilon, scale, ...).

    Usage:
        basic_model = mobile_facenet(256, dropout=0, name="se_mobile_facenet_256", use_se=True)
    """
    bn_settings = {key: kwargs.pop(key, default) for key, default in (("bn_momentum", BN_MOMENTUM), ("bn_epsilon", BN_EPSILON))}
    backbone = MobileFaceNet(input_shape=input_shape, use_se=use_se, name=name + "_backbone", **bn_settings)
    basic_model = heads.add_embedding_head(
        backbone, emb_shape=emb_shape, output_layer=output_layer, dropout=dropout, **bn_settings, **kwargs, name=name
    )
    if weight_decay:
        basic_model = surgery.add_l2_regularizer_2_model(basic_model, weight_decay)
    return basic_model


registry.register("mobilefacenet", "Custom", MobileFaceNet, name="mobilefacenet")
registry.register("se_mobilefacenet", "Custom", MobileFaceNet, use_se=True, name="se_mobilefacenet")
