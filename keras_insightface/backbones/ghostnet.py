"""GhostNet (Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020), headless.

A ghost module makes half of its output channels with an ordinary 1x1 conv and the other half
with a cheap 3x3 depthwise conv over those, then concatenates both. A ghost bottleneck is
ghost module (expand, ReLU) -> [depthwise conv when strided] -> [squeeze-excite] -> ghost module
(project, linear), plus an identity shortcut, or depthwise + 1x1 conv shortcut when the shape
changes. The network is a 3x3 stem conv (16 channels), the 16 bottlenecks of the paper's table
and a final 1x1 conv to 960 channels; the classifier (pooling, 1280 conv, dense) is left out.

The registered "ghostnet" is the original Keras_insightface's: `width=1.3` and the last bottleneck
expanding to 512 instead of 960 (`last_expand=512`), so the final conv has make_divisible(512 * 1.3) =
664 channels (4x4x664 for 112x112). "ghostnet_paper" is the paper's 1.0x network (4x4x960).

Usage:
    from keras_insightface.backbones import ghostnet
    mm = ghostnet.GhostNet(input_shape=(112, 112, 3))             # paper 1.0x, output (None, 4, 4, 960)
    mm = ghostnet.GhostNet(input_shape=(112, 112, 3), strides=1)  # output (None, 7, 7, 960)
    mm = ghostnet.GhostNet(input_shape=(112, 112, 3), width=1.3, last_expand=512)  # the original's, (None, 4, 4, 664)
"""
import math

import keras

from . import _layers, registry

# kernel size, expanded channels, output channels, squeeze-excite ratio, stride (paper, table 1).
BLOCK_CONFIG = (
    (3, 16, 16, 0, 1),
    (3, 48, 24, 0, 2),
    (3, 72, 24, 0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0, 2),
    (3, 200, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
)
STEM_CHANNELS = 16
LAST_CHANNELS = 960  # the paper's last expansion and final conv; the original Keras_insightface uses 512
ORIGINAL_WIDTH, ORIGINAL_LAST_EXPAND = 1.3, 512


def make_divisible(value, divisor=4, min_value=None):
    """Round `value` to the nearest multiple of `divisor`, never going below 90% of `value`."""
    return _layers.make_divisible(value, divisor, min_value)


class _Builder(_layers.LayerBuilder):
    """Writes the layers of one GhostNet graph with shared BatchNorm settings."""

    def ghost_module(self, inputs, filters, name, activation="relu"):
        """`filters // 2` channels from a 1x1 conv, the other half from a 3x3 depthwise conv on them."""
        primary = self.conv_bn(inputs, math.ceil(filters / 2), 1, 1, name + "_primary", activation)
        cheap = self.depthwise_bn(primary, 3, 1, name + "_cheap", activation)
        return keras.layers.Concatenate(name=name + "_concat")([primary, cheap])

    def bottleneck(self, inputs, kernel_size, expand, filters, se_ratio, strides, name):
        nn = self.ghost_module(inputs, expand, name + "_ghost1")
        if strides > 1:
            nn = self.depthwise_bn(nn, kernel_size, strides, name + "_down")
        if se_ratio > 0:
            nn = self.squeeze_excite(nn, make_divisible(nn.shape[-1] * se_ratio), name, gate="hard_sigmoid")
        nn = self.ghost_module(nn, filters, name + "_ghost2", activation=None)
        if strides == 1 and inputs.shape[-1] == filters:
            shortcut = inputs
        else:
            shortcut = self.depthwise_bn(inputs, kernel_size, strides, name + "_shortcut")
            shortcut = self.conv_bn(shortcut, filters, 1, 1, name + "_shortcut", activation=None)
        return keras.layers.Add(name=name + "_add")([nn, shortcut])


def GhostNet(
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    width=1.0,
    strides=2,
    last_expand=LAST_CHANNELS,
    bn_momentum=0.99,
    bn_epsilon=0.001,
    name="ghostnet",
    **kwargs,
):
    """Headless GhostNet; `width` scales every channel count, `strides` is the stem conv stride.

    `last_expand` is the expansion of the last bottleneck and the final conv's channel count before
    `width` (paper 960, the original Keras_insightface 512). With `strides=2` a 112x112 input ends as a
    4x4 map, with `strides=1` as 7x7. The output has `make_divisible(last_expand * width, 4)` channels.
    Extra keyword arguments are accepted and ignored.

    Usage:
        mm = GhostNet(input_shape=(112, 112, 3), width=1.3, strides=1)
    """
    _layers.check_headless("GhostNet", include_top, weights)
    builder = _Builder(bn_momentum, bn_epsilon)
    inputs = keras.layers.Input(shape=input_shape)
    nn = builder.conv_bn(inputs, make_divisible(STEM_CHANNELS * width), 3, strides, "stem", "relu")
    block_config = BLOCK_CONFIG[:-1] + ((*BLOCK_CONFIG[-1][:1], last_expand, *BLOCK_CONFIG[-1][2:]),)
    for index, (kernel_size, expand, filters, se_ratio, block_strides) in enumerate(block_config):
        expand, filters = make_divisible(expand * width), make_divisible(filters * width)
        nn = builder.bottleneck(nn, kernel_size, expand, filters, se_ratio, block_strides, f"block{index + 1}")
    nn = builder.conv_bn(nn, make_divisible(last_expand * width), 1, 1, "last", "relu")
    return keras.Model(inputs, nn, name=name)


registry.register("ghostnet", "Custom", GhostNet, width=ORIGINAL_WIDTH, last_expand=ORIGINAL_LAST_EXPAND)
registry.register("ghostnet_paper", "Custom", GhostNet)
