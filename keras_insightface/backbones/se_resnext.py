"""SE-ResNeXt-50 / 101 (32x4d) (Xie et al. 2017 "ResNeXt"; Hu et al. 2018 "Squeeze-and-Excitation
Networks"), headless.

Stem Conv7x7(64, /2) + BN + ReLU + 3x3 / 2 max pool. Four stages of bottleneck blocks with 64,
128, 256, 512 base channels (stride 2 from the second stage on): Conv1x1 to 2x base channels,
grouped Conv3x3 with 32 groups of 4 x (base / 64) channels carrying the stride, Conv1x1 to 4x base
channels, each with BN (ReLU on the first two); then squeeze-excite (global pool, 1x1 conv to
1/16 of the channels + ReLU, 1x1 conv back + sigmoid, rescale) before the residual add and ReLU.
Shortcuts that change shape are a strided Conv1x1 + BN.

Usage:
    from keras_insightface.backbones import se_resnext
    mm = se_resnext.SEResNext50(input_shape=(112, 112, 3))  # output (None, 4, 4, 2048)
"""
import keras

from . import _layers, registry

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
CARDINALITY = 32
BASE_WIDTH = 4
EXPANSION = 4
SE_REDUCTION = 16


class _Builder(_layers.LayerBuilder):
    """Writes the layers of one SE-ResNeXt graph with shared BatchNorm settings."""

    def bottleneck(self, inputs, filters, strides, name):
        group_width = filters * BASE_WIDTH // 64 * CARDINALITY
        nn = self.conv_bn(inputs, group_width, 1, 1, name + "_1", "relu")
        nn = self.conv_bn(nn, group_width, 3, strides, name + "_2", "relu", groups=CARDINALITY)
        nn = self.conv_bn(nn, filters * EXPANSION, 1, 1, name + "_3")
        nn = self.squeeze_excite(nn, nn.shape[-1] // SE_REDUCTION, name)
        shortcut = inputs
        if strides > 1 or inputs.shape[-1] != filters * EXPANSION:
            shortcut = self.conv_bn(inputs, filters * EXPANSION, 1, strides, name + "_down")
        nn = keras.layers.Add(name=name + "_add")([nn, shortcut])
        return keras.layers.Activation("relu", name=name + "_out")(nn)


def _se_resnext(depths, input_shape, include_top, weights, bn_momentum, bn_epsilon, name):
    _layers.check_headless(name, include_top, weights)
    builder = _Builder(bn_momentum, bn_epsilon)
    inputs = keras.layers.Input(shape=input_shape)
    nn = builder.conv_bn(inputs, 64, 7, 2, "stem", "relu")
    nn = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(nn)
    nn = _layers.residual_stages(nn, builder.bottleneck, depths, STAGE_CHANNELS, STAGE_STRIDES)
    return keras.Model(inputs, nn, name=name)


def SEResNext50(input_shape=(112, 112, 3), include_top=False, weights=None, bn_momentum=0.99, bn_epsilon=0.001, name="se_resnext50", **kwargs):
    """Headless SE-ResNeXt-50 (32x4d): blocks [3, 4, 6, 3]. Extra keyword arguments are ignored.

    Usage:
        mm = SEResNext50(input_shape=(112, 112, 3))
    """
    return _se_resnext((3, 4, 6, 3), input_shape, include_top, weights, bn_momentum, bn_epsilon, name)


def SEResNext101(input_shape=(112, 112, 3), include_top=False, weights=None, bn_momentum=0.99, bn_epsilon=0.001, name="se_resnext101", **kwargs):
    """Headless SE-ResNeXt-101 (32x4d): blocks [3, 4, 23, 3]. Extra keyword arguments are ignored.

    Usage:
        mm = SEResNext101(input_shape=(112, 112, 3))
    """
    return _se_resnext((3, 4, 23, 3), input_shape, include_top, weights, bn_momentum, bn_epsilon, name)


registry.register("se_resnext", "Custom", SEResNext50)
registry.register("se_resnext50", "Custom", SEResNext50)
registry.register("se_resnext101", "Custom", SEResNext101)
