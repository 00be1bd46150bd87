"""VarGFaceNet (Yan et al., "VarGFaceNet: An Efficient Variable Group Convolutional Neural Network for
Lightweight Face Recognition", ICCVW 2019), headless, as the original Keras_insightface builds it.

A variable-group separable conv is a 3x3 grouped conv (8 input channels per group) expanding the
channels by `hidden_ratio`, BN + activation, then a 1x1 conv to the output channels + BN. A block is
two of them (the first, in the first block of a stack, as the sum of two branches, "merge"), an
activation between, optional squeeze-excite, plus the shortcut (a separable conv when the shape
changes), then the activation. Layout: Conv3x3(32) + BN + act -> a stem block (stride 2, hidden ratio
1) -> stacks of 3 / 7 / 4 blocks with 64 / 128 / 256 channels, each starting with stride 2 -> Conv1x1(1024)
+ BN + act -> a grouped conv over the whole 7x7 map (groups of 8) + BN; output 1x1x1024 for 112x112.
BatchNorm momentum 0.9, epsilon 1e-5; 3x3 convs pad 1 on every side (PyTorch style).

Usage:
    from keras_insightface.backbones import vargface
    backbone = vargface.VargFace(input_shape=(112, 112, 3))  # output (None, 1, 1, 1024)
"""
import keras

from . import _layers, registry

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
GROUP_SIZE = 8


class _Builder(_layers.LayerBuilder):
    """Writes the layers of one VarGFaceNet graph with shared BatchNorm settings and activation."""

    def __init__(self, bn_momentum, bn_epsilon, activation):
        super().__init__(bn_momentum, bn_epsilon)
        self.act = activation

    def padded_conv(self, inputs, filters, kernel_size, strides, name, groups=1):
        """Conv without bias, padded by `kernel_size // 2` on every side first."""
        if kernel_size > 1:
            inputs = keras.layers.ZeroPadding2D(kernel_size // 2, name=name + "_pad")(inputs)
        return self.conv(inputs, filters, kernel_size, strides, name, groups=groups, padding="valid")

    def separable(self, inputs, hidden_ratio, filters, strides, name):
        """Grouped 3x3 conv to `channels * hidden_ratio` + BN + act, then Conv1x1(filters) + BN."""
        channels = inputs.shape[-1]
        nn = self.padded_conv(inputs, int(channels * hidden_ratio), 3, strides, name + "_1", groups=channels // GROUP_SIZE)
        nn = self.bn(nn, name + "_1", self.act)
        return self.bn(self.conv(nn, filters, 1, 1, name + "_2", padding="valid"), name + "_2")

    def squeeze_excite_block(self, inputs, se_ratio, name):
        """SE with bias: Conv1x1(int(channels * se_ratio)) + act, Conv1x1(channels) + sigmoid."""
        return self.squeeze_excite(inputs, int(inputs.shape[-1] * se_ratio), name, activation=self.act)

    def block(self, inputs, filters, strides, hidden_ratio, se_ratio, name, conv_shortcut=False, merge=False):
        shortcut = self.separable(inputs, hidden_ratio, filters, strides, name + "_shortcut") if conv_shortcut else inputs
        nn = self.separable(inputs, hidden_ratio, filters, strides, name + "_sep1")
        if merge:
            branch = self.separable(inputs, hidden_ratio, filters, strides, name + "_sep1_branch2")
            nn = keras.layers.Add(name=name + "_merge")([nn, branch])
        nn = self.activation(nn, name + "_sep1", self.act)
        nn = self.separable(nn, hidden_ratio, filters, 1, name + "_sep2")
        if se_ratio > 0:
            nn = self.squeeze_excite_block(nn, se_ratio, name)
        nn = keras.layers.Add(name=name + "_add")([shortcut, nn])
        return self.activation(nn, name + "_out", self.act)


def VargFace(
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    num_blocks=(3, 7, 4),
    out_channels=(64, 128, 256),
    stem_width=32,
    hidden_ratio=2,
    se_ratio=0,
    activation="relu",
    output_num_features=1024,
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    name="vargface",
):
    """Headless VarGFaceNet; `se_ratio > 0` adds squeeze-excite to the stem block and every non-first block.

    Usage: VargFace(input_shape=(112, 112, 3), activation="prelu")
    """
    _layers.check_headless("VargFace", include_top, weights)
    builder = _Builder(bn_momentum, bn_epsilon, activation)
    inputs = keras.Input(shape=input_shape, name="input")
    nn = builder.bn(builder.padded_conv(inputs, stem_width, 3, 1, "stem"), "stem", activation)
    nn = builder.block(nn, stem_width, 2, 1, se_ratio, "stem_block", conv_shortcut=True)
    for stack_id, (blocks, filters) in enumerate(zip(num_blocks, out_channels), start=1):
        for block_id in range(1, blocks + 1):
            first = block_id == 1
            block_name = f"stack{stack_id}_block{block_id}"
            nn = builder.block(
                nn, filters, 2 if first else 1, hidden_ratio, 0 if first else se_ratio, block_name, conv_shortcut=first, merge=first
            )
    nn = builder.bn(builder.conv(nn, output_num_features, 1, 1, "output_1", padding="valid"), "output_1", activation)
    groups = output_num_features // GROUP_SIZE
    nn = builder.bn(builder.conv(nn, output_num_features, nn.shape[1], 1, "output_2", groups=groups, padding="valid"), "output_2")
    return keras.Model(inputs, nn, name=name)


registry.register("vargface", "Custom", VargFace)
