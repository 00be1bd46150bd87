"""MobileFaceNet (Chen et al., 2018) in two layouts, optionally with squeeze-excite blocks.

`MobileFaceNet` ("mobilefacenet", "se_mobilefacenet") is the original Keras_insightface network, equal
in layers and parameter count: Conv3x3(64, /2) -> separable conv 3x3 (64) -> five stacks of
bottlenecks, (blocks, channels, stride, expansion) = (5, 64, 2, 2), (1, 128, 2, 4), (6, 128, 1, 2),
(1, 128, 2, 4), (2, 128, 1, 2); the first block of each stack has no residual; output 7x7x128. SE:
reduction 16, PReLU.

`MobileFaceNetInsightface` ("fmobilefacenet", "se_fmobilefacenet") is insightface's fmobilefacenet: Conv3x3(64, /2) ->
depthwise 3x3 (64) -> bottleneck (/2, 64) -> 4 residual bottlenecks (64) -> bottleneck (/2, 128)
-> 6 residual bottlenecks (128) -> bottleneck (/2, 128) -> 2 residual bottlenecks (128) ->
Conv1x1(512); output 7x7x512. SE: reduction 4.

Bottlenecks expand with a 1x1 conv, filter with a 3x3 depthwise conv and project back with a linear
1x1 conv; every other conv is followed by BN + PReLU.

Usage:
    from keras_insightface.backbones import mobile_facenet
    basic_model = mobile_facenet.mobile_facenet(256, dropout=0, name="mobile_facenet_256")
    backbone = mobile_facenet.MobileFaceNet(input_shape=(112, 112, 3))  # headless, 7x7x128 output
    backbone = mobile_facenet.MobileFaceNetInsightface(input_shape=(112, 112, 3))  # headless, 7x7x512 output
"""
import keras

from .. import surgery
from ..heads.embedding import add_embedding_head
from . import _layers, registry

BN_MOMENTUM = 0.99
BN_EPSILON = 0.001
INSIGHTFACE_SE_REDUCTION = 4
# insightface: (output channels, expanded channels, stride, repeats) of each bottleneck group after the stem.
BOTTLENECK_GROUPS = ((64, 128, 2, 1), (64, 128, 1, 4), (128, 256, 2, 1), (128, 256, 1, 6), (128, 512, 2, 1), (128, 256, 1, 2))
ORIGINAL_SE_REDUCTION = 16
# the original Keras_insightface: (blocks, output channels, first stride, expansion ratio) of each stack.
ORIGINAL_STACKS = ((5, 64, 2, 2), (1, 128, 2, 4), (6, 128, 1, 2), (1, 128, 2, 4), (2, 128, 1, 2))
POINTWISE_CHANNELS = 512


class _Builder(_layers.LayerBuilder):
    """Holds the BN settings and the SE switch while the graph is written."""

    def __init__(self, bn_momentum, bn_epsilon, use_se, se_reduction=INSIGHTFACE_SE_REDUCTION, torch_padding=True):
        super().__init__(bn_momentum, bn_epsilon)
        self.use_se, self.se_reduction, self.torch_padding = use_se, se_reduction, torch_padding

    def padded_conv_bn(self, inputs, filters, kernel_size, strides, name, depthwise=False, activation="prelu"):
        """Conv (or depthwise conv) + BN + activation; with torch_padding, strided convs first pad `kernel_size // 2` on every side."""
        padding = "same"
        if strides > 1 and self.torch_padding:
            inputs = keras.layers.ZeroPadding2D(padding=kernel_size // 2, name=name + "_pad")(inputs)
            padding = "valid"
        if depthwise:
            nn = self.depthwise(inputs, kernel_size, strides, name, padding=padding)
        else:
            nn = self.conv(inputs, filters, kernel_size, strides, name, padding=padding)
        return self.bn(nn, name, activation)

    def bottleneck(self, inputs, filters, expand, strides, name, residual=None):
        """Expand 1x1, depthwise 3x3, project 1x1 (linear), [SE]; `residual` None: add when the shape allows."""
        nn = self.padded_conv_bn(inputs, expand, 1, 1, name + "_expand")
        nn = self.padded_conv_bn(nn, expand, 3, strides, name + "_depthwise", depthwise=True)
        nn = self.padded_conv_bn(nn, filters, 1, 1, name + "_project", activation=None)
        if self.use_se:
            nn = self.squeeze_excite(nn, filters // self.se_reduction, name, activation="prelu")
        if residual is None:
            residual = strides == 1 and inputs.shape[-1] == filters
        return keras.layers.Add(name=name + "_add")([inputs, nn]) if residual else nn

    def separable_conv_bn(self, inputs, filters, kernel_size, name):
        """SeparableConv2D (depthwise + pointwise, no bias, "same") + BN + PReLU."""
        nn = keras.layers.SeparableConv2D(filters, kernel_size, padding="same", use_bias=False, name=name + "_separable")(inputs)
        return self.bn(nn, name, "prelu")


def _check_arguments(display_name, include_top, weights, kwargs):
    _layers.check_headless(display_name, include_top, weights)
    if kwargs:
        raise TypeError(f"{display_name}: unexpected arguments {sorted(kwargs)}")


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
    """Headless MobileFaceNet of the original Keras_insightface; output 7x7x128 for 112x112.

    Usage: MobileFaceNet((112, 112, 3), use_se=True)
    """
    _check_arguments("MobileFaceNet", include_top, weights, kwargs)
    builder = _Builder(bn_momentum, bn_epsilon, use_se, ORIGINAL_SE_REDUCTION, torch_padding=False)  # Keras "same", as the original
    inputs = keras.Input(shape=input_shape, name="input")
    nn = builder.conv_bn(inputs, 64, 3, 2, "stem", "prelu")
    nn = builder.separable_conv_bn(nn, 64, 3, "stem_2")
    for stack_id, (blocks, filters, strides, expansion) in enumerate(ORIGINAL_STACKS, start=1):
        for block_id in range(1, blocks + 1):
            first = block_id == 1
            expand = nn.shape[-1] * expansion
            block_strides = strides if first else 1
            nn = builder.bottleneck(nn, filters, expand, block_strides, f"stack{stack_id}_block{block_id}", residual=not first)
    return keras.Model(inputs, nn, name=name)


def MobileFaceNetInsightface(
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    use_se=False,
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    name="fmobilefacenet",
    **kwargs,
):
    """Headless insightface fmobilefacenet; output is the Conv1x1(512) feature map, 7x7x512 for 112x112.

    Usage: MobileFaceNetInsightface((112, 112, 3))
    """
    _check_arguments("MobileFaceNetInsightface", include_top, weights, kwargs)
    builder = _Builder(bn_momentum, bn_epsilon, use_se, INSIGHTFACE_SE_REDUCTION)
    inputs = keras.Input(shape=input_shape, name="input")
    nn = builder.padded_conv_bn(inputs, 64, 3, 2, "stem")
    nn = builder.padded_conv_bn(nn, 64, 3, 1, "stem_depthwise", depthwise=True)
    for group_id, (filters, expand, strides, repeats) in enumerate(BOTTLENECK_GROUPS, start=1):
        for block_id in range(1, repeats + 1):
            nn = builder.bottleneck(nn, filters, expand, strides, f"group{group_id}_block{block_id}")
    nn = builder.padded_conv_bn(nn, POINTWISE_CHANNELS, 1, 1, "sep")
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
    """Full MobileFaceNet basic model, as the original's: backbone, Conv1x1(512) + BN + PReLU, GDC head (`embedding`).

    `weight_decay` adds L2(weight_decay / 2) to every kernel, as `surgery.add_l2_regularizer_2_model`.
    Other keyword arguments go to `heads.add_embedding_head` (bn_momentum, bn_epsilon, scale, ...).

    Usage:
        basic_model = mobile_facenet(256, dropout=0, name="se_mobile_facenet_256", use_se=True)
    """
    bn_settings = {key: kwargs.pop(key, default) for key, default in (("bn_momentum", BN_MOMENTUM), ("bn_epsilon", BN_EPSILON))}
    backbone = MobileFaceNet(input_shape=input_shape, use_se=use_se, name=name + "_backbone", **bn_settings)
    pointwise = _Builder(use_se=use_se, **bn_settings).conv_bn(backbone.output, POINTWISE_CHANNELS, 1, 1, "pointwise", "prelu")
    backbone = keras.Model(backbone.input, pointwise, name=backbone.name)
    basic_model = add_embedding_head(
        backbone, emb_shape=emb_shape, output_layer=output_layer, dropout=dropout, **bn_settings, **kwargs, name=name
    )
    if weight_decay:
        basic_model = surgery.add_l2_regularizer_2_model(basic_model, weight_decay)
    return basic_model


registry.register("mobilefacenet", "Custom", MobileFaceNet, name="mobilefacenet")
registry.register("se_mobilefacenet", "Custom", MobileFaceNet, use_se=True, name="se_mobilefacenet")
registry.register("fmobilefacenet", "Custom", MobileFaceNetInsightface, name="fmobilefacenet")
registry.register("se_fmobilefacenet", "Custom", MobileFaceNetInsightface, use_se=True, name="se_fmobilefacenet")
