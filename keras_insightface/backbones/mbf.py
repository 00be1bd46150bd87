"""insightface arcface_torch's MobileFaceNet ("mbf", "mbf_large"), layer for layer, so its trained weights carry over.

arcface_torch's network (recognition/arcface_torch/backbones/mobilefacenet.py) differs from the
original Keras_insightface MobileFaceNet (`backbones/mobile_facenet.py`): every width is multiplied
by `scale` (2 for "mbf", 4 for "mbf_large"), the stem's second conv is a grouped 3x3 conv with 64
groups (2 channels per group) when `blocks[0] == 1`, and each bottleneck expands with a 1x1 conv to
`expand` channels (128 / 256 / 512 / 256 for its four groups), filters with a 3x3 depthwise conv and
projects back with a linear 1x1 conv. Every conv is followed by BN (+ PReLU except the projections).
Layout for a 112x112 input, "mbf" (scale 2, blocks (1, 4, 6, 2)):
Conv3x3(128, /2) -> grouped Conv3x3(128, 64 groups) -> bottleneck(/2, 128) -> 4 x bottleneck(128)
-> bottleneck(/2, 256) -> 6 x bottleneck(256) -> bottleneck(/2, 256) -> 2 x bottleneck(256) -> Conv1x1(512).
The output is the 7x7x512 feature map; with `models.buildin_models(..., output_layer="GDC", use_bias=False)`
the head is arcface_torch's GDC (7x7 depthwise conv + BN, Linear without bias, BN).
Strided 3x3 convs pad 1 on every side (as PyTorch), not Keras' asymmetric "same".

Usage:
    from keras_insightface.backbones import mbf
    backbone = mbf.MBF(input_shape=(112, 112, 3))  # headless, (None, 7, 7, 512)
    basic_model = models.buildin_models("mbf", dropout=0, emb_shape=512, output_layer="GDC", weights="backbone.pth")
"""
import keras

from . import _layers, registry

BN_MOMENTUM = 0.99
BN_EPSILON = 0.001
# Expanded channels (arcface_torch's `groups` of DepthWise / Residual), fixed whatever the scale:
# the downsampling bottleneck opening stages 1..3, and the residual bottlenecks of stages 0..3.
DOWN_EXPANSIONS = (128, 256, 512)
RESIDUAL_EXPANSIONS = (128, 128, 256, 256)
VARIANTS = {"mbf": {"scale": 2, "blocks": (1, 4, 6, 2)}, "mbf_large": {"scale": 4, "blocks": (2, 8, 12, 4)}}


class _Builder(_layers.LayerBuilder):
    def conv_bn_act(self, inputs, filters, kernel_size, strides, name, groups=1, depthwise=False, activation="prelu"):
        """Conv (or depthwise conv) + BN (+ PReLU); a strided conv first pads `kernel_size // 2` on every side."""
        padding = "same"
        if strides > 1:
            inputs = keras.layers.ZeroPadding2D(padding=kernel_size // 2, name=name + "_pad")(inputs)
            padding = "valid"
        if depthwise:
            nn = self.depthwise(inputs, kernel_size, strides, name, padding=padding)
        else:
            nn = self.conv(inputs, filters, kernel_size, strides, name, groups=groups, padding=padding)
        return self.bn(nn, name, activation)

    def bottleneck(self, inputs, filters, expand, strides, residual, name):
        """1x1 expand + BN + PReLU, 3x3 depthwise (strides) + BN + PReLU, 1x1 project + BN (+ the input)."""
        nn = self.conv_bn_act(inputs, expand, 1, 1, name + "_expand")
        nn = self.conv_bn_act(nn, expand, 3, strides, name + "_depthwise", depthwise=True)
        nn = self.conv_bn_act(nn, filters, 1, 1, name + "_project", activation=None)
        return keras.layers.Add(name=name + "_add")([inputs, nn]) if residual else nn


def MBF(
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    scale=2,
    blocks=(1, 4, 6, 2),
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    name="mbf",
    **kwargs,
):
    """Headless arcface_torch MobileFaceNet; output the Conv1x1(512) + BN + PReLU feature map.

    scale: width multiplier of the stages (arcface_torch: 2 for mbf, 4 for mbf_large).
    blocks: bottlenecks of the four stages; blocks[0] == 1 means the stem's grouped conv instead.
    Usage: MBF((112, 112, 3)) or MBF(scale=4, blocks=(2, 8, 12, 4), name="mbf_large")
    """
    _layers.check_headless("MBF", include_top, weights)
    if kwargs:
        raise TypeError(f"MBF: unexpected arguments {sorted(kwargs)}")
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"MBF: blocks must be 4 positive counts, got {blocks}")
    builder = _Builder(bn_momentum, bn_epsilon)
    width = 64 * scale
    stage_filters = (width, width, 2 * width, 2 * width)
    inputs = keras.Input(shape=input_shape, name="input")
    nn = builder.conv_bn_act(inputs, width, 3, 2, "stem")
    if blocks[0] == 1:
        nn = builder.conv_bn_act(nn, width, 3, 1, "stem_grouped", groups=64)
    else:
        for block_id in range(1, blocks[0] + 1):
            nn = builder.bottleneck(nn, width, RESIDUAL_EXPANSIONS[0], 1, True, f"stage0_block{block_id}")
    for stage_id in range(1, 4):
        filters = stage_filters[stage_id]
        nn = builder.bottleneck(nn, filters, DOWN_EXPANSIONS[stage_id - 1], 2, False, f"stage{stage_id}_down")
        for block_id in range(1, blocks[stage_id] + 1):
            nn = builder.bottleneck(nn, filters, RESIDUAL_EXPANSIONS[stage_id], 1, True, f"stage{stage_id}_block{block_id}")
    nn = builder.conv_bn_act(nn, 512, 1, 1, "sep")
    return keras.Model(inputs, nn, name=name)


for _name, _variant in VARIANTS.items():
    registry.register(_name, "Custom", MBF, name=_name, **_variant)
