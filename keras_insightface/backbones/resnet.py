"""MXNet / insightface style ResNets ("IResNet"): r18, r34, r50, r100, r101, r200.

Stem Conv3x3(64, stride 1) + BN + PReLU, then four stages of 64/128/256/512 channels.
Each stage starts with a stride 2 block whose shortcut is Conv1x1 + BN; every block is the
"IR" block: BN, Conv3x3, BN, PReLU, Conv3x3 (with the stride), BN, plus the shortcut.
No conv bias. The builders return the headless backbone; its output is the last
feature map (7x7x512 for a 112x112 input). The embedding head is added by
`models.buildin_models`.

Usage:
    from keras_insightface.backbones import resnet
    backbone = resnet.ResNet34(input_shape=(112, 112, 3))
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
BN_MOMENTUM = 0.99  # Keras defaults; insightface trains with momentum 0.9, epsilon 2e-5
BN_EPSILON = 0.001


def _padded_conv3x3(inputs, filters, strides, name):
    """3x3 conv padded by 1 on every side, as MXNet / PyTorch pad (Keras "same" pads stride 2 asymmetrically)."""
    nn = keras.layers.ZeroPadding2D(padding=1, name=name + "_conv_pad")(inputs)
    return keras.layers.Conv2D(filters, 3, strides=strides, padding="valid", use_bias=False, name=name + "_conv")(nn)


def ir_block(inputs, filters, strides, conv_shortcut, name, momentum=BN_MOMENTUM, epsilon=BN_EPSILON):
    """One IR block: BN, Conv3x3, BN, PReLU, Conv3x3(strides), BN, plus the (projected) shortcut."""
    builder = _layers.LayerBuilder(momentum, epsilon)
    shortcut = inputs
    if conv_shortcut:
        shortcut = builder.conv(inputs, filters, 1, strides, name + "_shortcut", padding="valid")
        shortcut = builder.bn(shortcut, name + "_shortcut")
    nn = builder.bn(inputs, name + "_1")
    nn = _padded_conv3x3(nn, filters, 1, name + "_1")
    nn = builder.bn(nn, name + "_2", "prelu")
    nn = _padded_conv3x3(nn, filters, strides, name + "_2")
    nn = builder.bn(nn, name + "_3")
    return keras.layers.Add(name=name + "_add")([shortcut, nn])


def IResNet(
    depths,
    input_shape=(112, 112, 3),
    include_top=False,
    weights=None,
    bn_momentum=BN_MOMENTUM,
    bn_epsilon=BN_EPSILON,
    name="iresnet",
    **kwargs,
):
    """Headless IResNet with `depths` blocks per stage.  Usage: IResNet((2, 2, 2, 2), name="r18")"""
    if include_top:
        raise ValueError("IResNet: include_top=True is not supported; add a head with models.buildin_models")
    if weights is not None:
        raise ValueError(f"IResNet: no downloadable weights, got weights={weights!r}; load them with model.load_weights")
    if kwargs:
        raise TypeError(f"IResNet: unexpected arguments {sorted(kwargs)}")
    inputs = keras.Input(shape=input_shape, name="input")
    nn = _layers.LayerBuilder(bn_momentum, bn_epsilon).conv_bn(inputs, 64, 3, 1, "stem", "prelu")
    for stage_id, (filters, depth) in enumerate(zip(STAGE_FILTERS, depths), start=1):
        for block_id in range(1, depth + 1):
            first = block_id == 1
            block_name = f"stack{stage_id}_block{block_id}"
            nn = ir_block(nn, filters, 2 if first else 1, first, block_name, bn_momentum, bn_epsilon)
    return keras.Model(inputs, nn, name=name)


def _named_builder(model_name):
    def builder(input_shape=(112, 112, 3), include_top=False, weights=None, **kwargs):
        return IResNet(STAGE_DEPTHS[model_name], input_shape, include_top, weights, name=model_name, **kwargs)

    doc = f"Headless insightface {model_name}, stage depths {STAGE_DEPTHS[model_name]}."
    return _layers.named_builder(builder, "ResNet" + model_name[1:], doc)


ResNet18 = _named_builder("r18")
ResNet34 = _named_builder("r34")
ResNet50 = _named_builder("r50")
ResNet100 = _named_builder("r100")
ResNet101 = _named_builder("r101")
ResNet200 = _named_builder("r200")


for _name, _builder in (("r18", ResNet18), ("r34", ResNet34), ("r50", ResNet50), ("r100", ResNet100), ("r101", ResNet101), ("r200", ResNet200)):
    registry.register(_name, "MXNet version resnet", _builder)
