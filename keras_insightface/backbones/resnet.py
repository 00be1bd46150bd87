"""MXNet / insightface style ResNets ("IResNet"), as the original Keras_insightface builds them.

Stem Conv3x3(64, stride 1) + BN + activation, then four stages of 64/128/256/512 channels.
Each stage starts with a stride 2 block whose shortcut is Conv1x1 + BN; every block is the
"IR" block: BN, Conv3x3, BN, activation, Conv3x3 (with the stride), BN, [squeeze-excite], plus the
shortcut. No conv bias; BatchNorm momentum 0.9, epsilon 1e-5. The builders return the headless
backbone; its output is the last feature map (7x7x512 for a 112x112 input). The embedding head
is added by `models.buildin_models`.

Names: "r18", "r34", "r50", "r100", "r101" (and "r200") are the original's builders: `activation="relu"`
by default, `use_se`, `use_max_pool`; "se_r18" .. "se_r101" set `use_se=True`. "iresnet18" ..
"iresnet200" are insightface's arcface_torch iresnets (PReLU): the same as `activation="prelu"`.

Usage:
    from keras_insightface.backbones import resnet
    backbone = resnet.ResNet34(input_shape=(112, 112, 3))                      # original: ReLU
    backbone = resnet.ResNet100(input_shape=(112, 112, 3), activation="prelu")  # arcface_torch r100
"""
import keras

from . import _layers, registry

STAGE_FILTERS = (64, 128, 256, 512)
STAGE_DEPTHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r101": (3, 4, 23, 3),
    "r200": (6, 26, 60, 6),
}
BN_MOMENTUM = 0.9  # the original's and insightface's (PyTorch momentum 0.1)
BN_EPSILON = 1e-5
SE_REDUCTION = 16
DEFAULT_ACTIVATION = "relu"  # the original Keras_insightface; arcface_torch uses "prelu"


def _padded_conv3x3(inputs, filters, strides, name):
    """3x3 conv padded by 1 on every side, as MXNet / PyTorch pad (Keras "same" pads stride 2 asymmetrically)."""
    nn = keras.layers.ZeroPadding2D(padding=1, name=name + "_conv_pad")(inputs)
    return keras.layers.Conv2D(filters, 3, strides=strides, padding="valid", use_bias=False, name=name + "_conv")(nn)


def squeeze_excite_no_bias(inputs, name, reduction=SE_REDUCTION):
    """The original's SE module: mean pool, Conv1x1(channels // 16, no bias) + ReLU, Conv1x1(channels, no bias) + sigmoid, rescale."""
    channels = inputs.shape[-1]
    nn = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name + "_se_pool")(inputs)
    nn = keras.layers.Conv2D(channels // reduction, 1, use_bias=False, activation="relu", name=name + "_se_reduce")(nn)
    nn = keras.layers.Conv2D(channels, 1, use_bias=False, activation="sigmoid", name=name + "_se_expand")(nn)
    return keras.layers.Multiply(name=name + "_se_scale")([inputs, nn])


def _shortcut(builder, inputs, filters, strides, conv_shortcut, name):
    """Conv1x1(strides) + BN; or the input, subsampled by a 1x1 max pool when strided (the original's use_max_pool)."""
    if conv_shortcut:
        return builder.bn(builder.conv(inputs, filters, 1, strides, name + "_shortcut", padding="valid"), name + "_shortcut")
    if strides > 1:
        return keras.layers.MaxPooling2D(1, strides=strides, name=name + "_shortcut_pool")(inputs)
    return inputs


def ir_block(
    inputs, filters, strides, conv_shortcut, name, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, activation=DEFAULT_ACTIVATION, use_se=False
):
    """One IR block: BN, Conv3x3, BN, activation, Conv3x3(strides), BN, [SE], plus the shortcut."""
    builder = _layers.LayerBuilder(momentum, epsilon)
    shortcut = _shortcut(builder, inputs, filters, strides, conv_shortcut, name)
    nn = builder.bn(inputs, name + "_1")
    nn = _padded_conv3x3(nn, filters, 1, name + "_1")
    nn = builder.bn(nn, name + "_2", activation)
    nn = _padded_conv3x3(nn, filters, strides, name + "_2")
    nn = builder.bn(nn, name + "_3")
    if use_se:
        nn = squeeze_excite_no_bias(nn, name)
    return keras.layers.Add(name=name + "_add")([shortcut, nn])


def IResNet(
    depths,
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    activation=DEFAULT_ACTIVATION,
    use_se=False,
    use_max_pool=False,
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    name="iresnet",
    **kwargs,
):
    """Headless IResNet with `depths` blocks per stage.

    activation: of the stem and of every block ("relu", "prelu", any Keras activation name).
    use_se: squeeze-excite (reduction 16, no bias) at the end of every block.
    use_max_pool: a stage whose input already has its channel count (the first) gets a 1x1 max-pool
        shortcut in its strided block instead of Conv1x1 + BN, as the original.
    Usage: IResNet((2, 2, 2, 2), activation="prelu", name="r18")
    """
    _layers.check_headless("IResNet", include_top, weights)
    if kwargs:
        raise TypeError(f"IResNet: unexpected arguments {sorted(kwargs)}")
    inputs = keras.Input(shape=input_shape, name="input")
    nn = _layers.LayerBuilder(bn_momentum, bn_epsilon).conv_bn(inputs, 64, 3, 1, "stem", activation)
    for stage_id, (filters, depth) in enumerate(zip(STAGE_FILTERS, depths), start=1):
        conv_shortcut = not (use_max_pool and nn.shape[-1] == filters)
        for block_id in range(1, depth + 1):
            first = block_id == 1
            block_name = f"stack{stage_id}_block{block_id}"
            nn = ir_block(
                nn, filters, 2 if first else 1, first and conv_shortcut, block_name, bn_momentum, bn_epsilon, activation, use_se
            )
    return keras.Model(inputs, nn, name=name)


def _named_builder(model_name):
    def builder(input_shape=(112, 112, 3), include_top=False, weights=None, name=model_name, **kwargs):
        return IResNet(STAGE_DEPTHS[model_name], input_shape, include_top, weights, name=name, **kwargs)

    doc = f"Headless IResNet {model_name}, stage depths {STAGE_DEPTHS[model_name]}; see `IResNet` for the arguments."
    return _layers.named_builder(builder, "ResNet" + model_name[1:], doc)


ResNet18 = _named_builder("r18")
ResNet34 = _named_builder("r34")
ResNet50 = _named_builder("r50")
ResNet100 = _named_builder("r100")
ResNet101 = _named_builder("r101")
ResNet200 = _named_builder("r200")
BUILDERS = {"r18": ResNet18, "r34": ResNet34, "r50": ResNet50, "r100": ResNet100, "r101": ResNet101, "r200": ResNet200}

for _name, _builder in BUILDERS.items():
    registry.register(_name, "MXNet version resnet", _builder)
for _name, _builder in BUILDERS.items():
    registry.register("se_" + _name, "MXNet version resnet", _builder, use_se=True, name="se_" + _name)
for _name, _builder in BUILDERS.items():
    registry.register("iresnet" + _name[1:], "MXNet version resnet", _builder, activation="prelu", name="iresnet" + _name[1:])
