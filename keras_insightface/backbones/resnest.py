"""ResNeSt-50 / 101 (Zhang et al., "ResNeSt: Split-Attention Networks", 2020), headless.

Deep stem: three 3x3 convs (stem width, stem width, 2x stem width; the first with stride 2), each
with BN + ReLU, then a 3x3 / 2 max pool. Four stages of bottleneck blocks (64, 128, 256, 512
channels, expanded x4 at the output; stride 2 from the second stage on) where the 3x3 conv is a
split-attention conv with radix 2 and cardinality 1: a grouped conv gives 2 branches, their sum
is pooled and passed through two 1x1 convs into a softmax over the branches, which weighs the
branches before they are summed again. The stride of a block sits in a 3x3 average pool after the
split-attention conv ("avd"). Shortcuts that change shape average-pool first, then apply a 1x1 conv ("avg-down").

The branch arithmetic uses plain Keras layers (Reshape, Softmax, Multiply, pooling), so the
models save and reload as `.keras` and `.h5` without custom objects; it needs a fixed input size.

Usage:
    from keras_insightface.backbones import resnest
    mm = resnest.ResNest50(input_shape=(112, 112, 3))  # output (None, 4, 4, 2048)
"""
import keras

from . import _layers, registry

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4
RADIX = 2
ATTENTION_REDUCTION = 4
MIN_ATTENTION_CHANNELS = 32


class _Builder(_layers.LayerBuilder):
    """Writes the layers of one ResNeSt graph with shared BatchNorm settings."""

    def split_attention(self, inputs, filters, name):
        """3x3 split-attention conv: `RADIX` branches of `filters` channels, softmax-weighted and summed."""
        height, width = inputs.shape[1], inputs.shape[2]
        branches = self.conv_bn(inputs, filters * RADIX, 3, 1, name, "relu", groups=RADIX)
        branches = keras.layers.Reshape((height * width, RADIX, filters), name=name + "_branches")(branches)
        # The mean over pixels and branches, times RADIX, is the pooled sum of the branches.
        pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name + "_pool")(branches)
        pooled = keras.layers.Rescaling(RADIX, name=name + "_pool_sum")(pooled)
        attention_channels = max(inputs.shape[-1] * RADIX // ATTENTION_REDUCTION, MIN_ATTENTION_CHANNELS)
        attention = keras.layers.Conv2D(attention_channels, 1, name=name + "_fc1")(pooled)
        attention = self.bn(attention, name + "_fc1", "relu")
        attention = keras.layers.Conv2D(filters * RADIX, 1, name=name + "_fc2")(attention)
        attention = keras.layers.Reshape((1, RADIX, filters), name=name + "_attention")(attention)
        attention = keras.layers.Softmax(axis=2, name=name + "_softmax")(attention)
        # Scaled by RADIX so that the mean over branches below is their weighted sum.
        attention = keras.layers.Rescaling(RADIX, name=name + "_softmax_scale")(attention)
        weighted = keras.layers.Multiply(name=name + "_weighted")([branches, attention])
        summed = keras.layers.AveragePooling2D((1, RADIX), name=name + "_sum")(weighted)
        return keras.layers.Reshape((height, width, filters), name=name + "_out")(summed)

    def bottleneck(self, inputs, filters, strides, name):
        nn = self.conv_bn(inputs, filters, 1, 1, name + "_1", "relu")
        nn = self.split_attention(nn, filters, name + "_2")
        if strides > 1:
            nn = keras.layers.ZeroPadding2D(1, name=name + "_avd_pad")(nn)
            nn = keras.layers.AveragePooling2D(3, strides, name=name + "_avd")(nn)
        nn = self.conv_bn(nn, filters * EXPANSION, 1, 1, name + "_3")
        shortcut = inputs
        if strides > 1:
            shortcut = keras.layers.AveragePooling2D(strides, strides, padding="same", name=name + "_down_pool")(shortcut)
        if strides > 1 or inputs.shape[-1] != filters * EXPANSION:
            shortcut = self.conv_bn(shortcut, filters * EXPANSION, 1, 1, name + "_down")
        nn = keras.layers.Add(name=name + "_add")([nn, shortcut])
        return keras.layers.Activation("relu", name=name + "_out")(nn)

    def deep_stem(self, inputs, stem_width):
        nn = self.conv_bn(inputs, stem_width, 3, 2, "stem_1", "relu")
        nn = self.conv_bn(nn, stem_width, 3, 1, "stem_2", "relu")
        nn = self.conv_bn(nn, stem_width * 2, 3, 1, "stem_3", "relu")
        return keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(nn)


def _resnest(depths, stem_width, input_shape, include_top, weights, bn_momentum, bn_epsilon, name):
    _layers.check_headless(name, include_top, weights)
    if len(input_shape) != 3 or None in tuple(input_shape):
        raise ValueError(f"input_shape={input_shape!r}: {name} needs a fixed (height, width, channels) input size.")
    builder = _Builder(bn_momentum, bn_epsilon)
    inputs = keras.layers.Input(shape=input_shape)
    nn = builder.deep_stem(inputs, stem_width)
    nn = _layers.residual_stages(nn, builder.bottleneck, depths, STAGE_CHANNELS, STAGE_STRIDES)
    return keras.Model(inputs, nn, name=name)


def ResNest50(input_shape=(112, 112, 3), include_top=False, weights=None, bn_momentum=0.99, bn_epsilon=0.001, name="resnest50", **kwargs):
    """Headless ResNeSt-50: blocks [3, 4, 6, 3], stem width 32. Extra keyword arguments are ignored.

    Usage:
        mm = ResNest50(input_shape=(112, 112, 3))
    """
    return _resnest((3, 4, 6, 3), 32, input_shape, include_top, weights, bn_momentum, bn_epsilon, name)


def ResNest101(input_shape=(112, 112, 3), include_top=False, weights=None, bn_momentum=0.99, bn_epsilon=0.001, name="resnest101", **kwargs):
    """Headless ResNeSt-101: blocks [3, 4, 23, 3], stem width 64. Extra keyword arguments are ignored.

    Usage:
        mm = ResNest101(input_shape=(112, 112, 3))
    """
    return _resnest((3, 4, 23, 3), 64, input_shape, include_top, weights, bn_momentum, bn_epsilon, name)


registry.register("resnest50", "Custom", ResNest50)
registry.register("resnest101", "Custom", ResNest101)
