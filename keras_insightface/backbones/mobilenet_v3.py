"""MobileNetV3 Small / Large (Howard et al., "Searching for MobileNetV3", ICCV 2019), headless.

Stem Conv3x3(16, /2) + BN + hard-swish, then the inverted residual blocks of the paper's tables 1
and 2 (1x1 expand, depthwise k x k, optional squeeze-excite with a hard-sigmoid gate, linear 1x1
project, identity shortcut when the shape holds), then Conv1x1 to 6x the last block's channels
(576 for Small, 960 for Large) + BN + hard-swish. The pooling and classifier convs are left out.

Written with plain Keras layers (not wrapping keras.applications, whose hard-swish is built from
tensor arithmetic that a `.h5` file cannot load back), so the models save and reload in both
formats and convert to TFLite.

Usage:
    from keras_insightface.backbones import mobilenet_v3
    mm = mobilenet_v3.MobileNetV3Small(input_shape=(112, 112, 3))  # output (None, 4, 4, 576)
    mm = mobilenet_v3.MobileNetV3Large(input_shape=(112, 112, 3))  # output (None, 4, 4, 960)
"""
import keras

from . import _layers, registry

# kernel size, expanded channels, output channels, squeeze-excite, activation, stride.
SMALL_CONFIG = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hard_swish", 2),
    (5, 240, 40, True, "hard_swish", 1),
    (5, 240, 40, True, "hard_swish", 1),
    (5, 120, 48, True, "hard_swish", 1),
    (5, 144, 48, True, "hard_swish", 1),
    (5, 288, 96, True, "hard_swish", 2),
    (5, 576, 96, True, "hard_swish", 1),
    (5, 576, 96, True, "hard_swish", 1),
)
LARGE_CONFIG = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hard_swish", 2),
    (3, 200, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 184, 80, False, "hard_swish", 1),
    (3, 480, 112, True, "hard_swish", 1),
    (3, 672, 112, True, "hard_swish", 1),
    (5, 672, 160, True, "hard_swish", 2),
    (5, 960, 160, True, "hard_swish", 1),
    (5, 960, 160, True, "hard_swish", 1),
)
STEM_CHANNELS = 16
LAST_EXPANSION = 6
SE_RATIO = 0.25


def make_divisible(value, divisor=8):
    """Round `value` to the nearest multiple of `divisor`, never going below 90% of `value`."""
    return _layers.make_divisible(value, divisor)


class _Builder(_layers.LayerBuilder):
    """Writes the layers of one MobileNetV3 graph with shared BatchNorm settings."""

    def inverted_residual(self, inputs, kernel_size, expand, filters, use_se, activation, strides, name):
        nn = inputs
        if expand != inputs.shape[-1]:
            nn = self.conv_bn(nn, expand, 1, 1, name + "_expand", activation)
        nn = self.depthwise_bn(nn, kernel_size, strides, name, activation)
        if use_se:
            nn = self.squeeze_excite(nn, make_divisible(nn.shape[-1] * SE_RATIO), name, gate="hard_sigmoid")
        nn = self.conv_bn(nn, filters, 1, 1, name + "_project")
        if strides == 1 and inputs.shape[-1] == filters:
            nn = keras.layers.Add(name=name + "_add")([inputs, nn])
        return nn


def _mobilenet_v3(config, input_shape, include_top, weights, alpha, bn_momentum, bn_epsilon, name):
    _layers.check_headless(name, include_top, weights)
    builder = _Builder(bn_momentum, bn_epsilon)
    inputs = keras.layers.Input(shape=input_shape)
    nn = builder.conv_bn(inputs, STEM_CHANNELS, 3, 2, "stem", "hard_swish")
    for index, (kernel_size, expand, filters, use_se, activation, strides) in enumerate(config):
        expand, filters = make_divisible(expand * alpha), make_divisible(filters * alpha)
        nn = builder.inverted_residual(nn, kernel_size, expand, filters, use_se, activation, strides, f"block{index + 1}")
    nn = builder.conv_bn(nn, make_divisible(nn.shape[-1] * LAST_EXPANSION), 1, 1, "last", "hard_swish")
    return keras.Model(inputs, nn, name=name)


def MobileNetV3Small(
    input_shape=(112, 112, 3), include_top=False, weights=None, alpha=1.0, bn_momentum=0.99, bn_epsilon=0.001, name="mobilenetv3_small", **kwargs
):
    """Headless MobileNetV3-Small; `alpha` scales the block widths. Extra keyword arguments are ignored.

    Usage:
        mm = MobileNetV3Small(input_shape=(112, 112, 3))
    """
    return _mobilenet_v3(SMALL_CONFIG, input_shape, include_top, weights, alpha, bn_momentum, bn_epsilon, name)


def MobileNetV3Large(
    input_shape=(112, 112, 3), include_top=False, weights=None, alpha=1.0, bn_momentum=0.99, bn_epsilon=0.001, name="mobilenetv3_large", **kwargs
):
    """Headless MobileNetV3-Large; `alpha` scales the block widths. Extra keyword arguments are ignored.

    Usage:
        mm = MobileNetV3Large(input_shape=(112, 112, 3))
    """
    return _mobilenet_v3(LARGE_CONFIG, input_shape, include_top, weights, alpha, bn_momentum, bn_epsilon, name)


registry.register("mobilenetv3_small", "Custom", MobileNetV3Small)
registry.register("mobilenetv3_large", "Custom", MobileNetV3Large)
