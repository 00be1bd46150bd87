"""Layer helpers shared by the backbone builders, written with plain Keras layers only.

`LayerBuilder` holds the BatchNorm settings of one graph and writes the common blocks; its BatchNorms are
the fused `keras_insightface.batchnorm.BatchNormalization`, its PReLUs `keras_insightface.prelu.PReLU`. A block
called `name` is made of `name_conv` (or `name_dw` for a depthwise conv), `name_bn` and
`name_<activation>` (`name_prelu` for a PReLU shared over height and width), so the backbones
keep one naming scheme and their saved models load without custom objects.

Usage:
    from keras_insightface.backbones._layers import LayerBuilder
    builder = LayerBuilder(bn_momentum=0.99, bn_epsilon=0.001)
    inputs = keras.layers.Input(shape=(112, 112, 3))
    nn = builder.conv_bn(inputs, 64, 3, 2, "stem", "relu")  # layers stem_conv, stem_bn, stem_relu
"""
import keras

from ..batchnorm import BatchNormalization
from ..grouped_conv import Conv2D
from ..prelu import PReLU


def make_divisible(value, divisor, min_value=None):
    """Round `value` to the nearest multiple of `divisor` (at least `min_value`), never going below 90% of `value`."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def check_headless(display_name, include_top, weights):
    """Refuse a classifier top or pretrained weights for a backbone that has neither."""
    if include_top:
        raise ValueError(f"include_top=True: {display_name} here is a headless backbone; add a head with models.buildin_models.")
    if weights is not None:
        raise ValueError(f"weights={weights!r}: no pretrained {display_name} weights exist; use weights=None.")


def named_builder(builder, name, doc):
    """Give a builder function made by a factory its public name and docstring."""
    builder.__name__ = name
    builder.__doc__ = doc
    return builder


def residual_stages(inputs, block, depths, stage_channels, stage_strides):
    """Apply `block(nn, filters, strides, name)` `depth` times per stage; the first block of a stage has its stride.

    Blocks are named `stack<stage>_block<block>`, both counted from 1.
    """
    nn = inputs
    for stage, (depth, filters, strides) in enumerate(zip(depths, stage_channels, stage_strides)):
        for index in range(depth):
            block_strides = strides if index == 0 else 1
            nn = block(nn, filters, block_strides, f"stack{stage + 1}_block{index + 1}")
    return nn


class LayerBuilder:
    """Writes conv / BatchNorm / activation blocks of one graph with shared BatchNorm settings."""

    def __init__(self, bn_momentum=0.99, bn_epsilon=0.001):
        self.bn_momentum, self.bn_epsilon = bn_momentum, bn_epsilon

    def activation(self, inputs, name, activation):
        """`name_<activation>`: an Activation layer, or a PReLU shared over height and width for "prelu"."""
        if activation == "prelu":
            return PReLU(shared_axes=[1, 2], name=name + "_prelu")(inputs)
        return keras.layers.Activation(activation, name=name + "_" + activation)(inputs)

    def bn(self, inputs, name, activation=None):
        nn = BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name + "_bn")(inputs)
        return self.activation(nn, name, activation) if activation else nn

    def conv(self, inputs, filters, kernel_size, strides, name, groups=1, padding="same"):
        conv_class = Conv2D if groups > 1 else keras.layers.Conv2D  # grouped: dense on a CPU (grouped_conv.py)
        return conv_class(
            filters, kernel_size, strides, padding=padding, groups=groups, use_bias=False, name=name + "_conv"
        )(inputs)

    def depthwise(self, inputs, kernel_size, strides, name, padding="same"):
        return keras.layers.DepthwiseConv2D(kernel_size, strides, padding=padding, use_bias=False, name=name + "_dw")(inputs)

    def conv_bn(self, inputs, filters, kernel_size, strides, name, activation=None, groups=1):
        """Conv (no bias) + BN + optional activation: `name_conv`, `name_bn`, `name_<activation>`."""
        return self.bn(self.conv(inputs, filters, kernel_size, strides, name, groups), name, activation)

    def depthwise_bn(self, inputs, kernel_size, strides, name, activation=None):
        """Depthwise conv (no bias) + BN + optional activation: `name_dw`, `name_dw_bn`, `name_dw_<activation>`."""
        return self.bn(self.depthwise(inputs, kernel_size, strides, name), name + "_dw", activation)

    def squeeze_excite(self, inputs, reduced_channels, name, activation="relu", gate="sigmoid"):
        """Global pool, 1x1 conv to `reduced_channels` + `activation`, 1x1 conv back + `gate`, rescale the input."""
        channels = inputs.shape[-1]
        nn = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name + "_se_pool")(inputs)
        if activation == "prelu":  # PReLU has weights, so it is a layer of its own after the conv
            nn = keras.layers.Conv2D(reduced_channels, 1, name=name + "_se_reduce")(nn)
            nn = self.activation(nn, name + "_se", activation)
        else:
            nn = keras.layers.Conv2D(reduced_channels, 1, activation=activation, name=name + "_se_reduce")(nn)
        nn = keras.layers.Conv2D(channels, 1, activation=gate, name=name + "_se_expand")(nn)
        return keras.layers.Multiply(name=name + "_se_scale")([inputs, nn])
