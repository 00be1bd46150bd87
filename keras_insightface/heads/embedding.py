"""Embedding heads: the layers between a backbone's feature map and the `embedding` layer of a basic model.

"E" (BN, Dropout, Flatten, Dense), "GDC" (global depthwise conv, BN, Dropout, Conv1x1), "F" (Dropout, Flatten,
Dense) and "GAP" (BN, GlobalAveragePooling, Dropout, Dense); each ends with BatchNorm `pre_embedding` and the
float32 layer `embedding`. Their BatchNorms are the fused `batchnorm.BatchNormalization` unless
`fused_batchnorm=False`.

Usage:
    from keras_insightface.heads import embedding
    basic_model = embedding.add_embedding_head(backbone, emb_shape=512, output_layer="GDC", dropout=0)
"""
import functools

import keras

from .. import batchnorm


def _dropout(inputs, dropout, name):
    return keras.layers.Dropout(dropout, name=name)(inputs) if 0 < dropout < 1 else inputs


def _head_E(nn, emb_shape, dropout, use_bias, make_bn):
    """BatchNorm, Dropout, Flatten, Dense: insightface "E" (and the iresnet head)."""
    nn = make_bn(name="E_batchnorm")(nn)
    nn = _dropout(nn, dropout, "E_dropout")
    nn = keras.layers.Flatten(name="E_flatten")(nn)
    return keras.layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="E_dense")(nn)


def _head_F(nn, emb_shape, dropout, use_bias, make_bn):
    """Dropout, Flatten, Dense: "E" without the BatchNorm on the feature map."""
    nn = _dropout(nn, dropout, "F_dropout")
    nn = keras.layers.Flatten(name="F_flatten")(nn)
    return keras.layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="F_dense")(nn)


def _head_GDC(nn, emb_shape, dropout, use_bias, make_bn):
    """Global depthwise conv over the whole feature map, BatchNorm, Dropout, Conv1x1(emb_shape), Flatten."""
    nn = keras.layers.DepthwiseConv2D(tuple(nn.shape[1:3]), use_bias=False, name="GDC_dw")(nn)
    nn = make_bn(name="GDC_batchnorm")(nn)
    nn = _dropout(nn, dropout, "GDC_dropout")
    nn = keras.layers.Conv2D(emb_shape, 1, use_bias=use_bias, kernel_initializer="glorot_normal", name="GDC_conv")(nn)
    return keras.layers.Flatten(name="GDC_flatten")(nn)


def _head_GAP(nn, emb_shape, dropout, use_bias, make_bn):
    """BatchNorm, GlobalAveragePooling, Dropout, Dense."""
    nn = make_bn(name="GAP_batchnorm")(nn)
    nn = keras.layers.GlobalAveragePooling2D(name="GAP_pool")(nn)
    nn = _dropout(nn, dropout, "GAP_dropout")
    return keras.layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="GAP_dense")(nn)


EMBEDDING_HEADS = {"E": _head_E, "F": _head_F, "GDC": _head_GDC, "GAP": _head_GAP}


def _pointwise_conv(nn, add_pointwise_conv, make_bn):
    """Conv1x1 + BN + ReLU before the head: 512 filters, or half the channels for add_pointwise_conv=-1."""
    filters = nn.shape[-1] // 2 if add_pointwise_conv == -1 else 512
    nn = keras.layers.Conv2D(filters, 1, use_bias=False, name="pw_conv")(nn)
    nn = make_bn(name="pw_bn")(nn)
    return keras.layers.ReLU(name="pw_relu")(nn)


def add_embedding_head(backbone, emb_shape=512, output_layer="GDC", dropout=1, bn_momentum=0.99, bn_epsilon=0.001,
                       add_pointwise_conv=False, use_bias=False, scale=True, name=None, fused_batchnorm=True):
    """The basic model: `backbone` (a headless model with a 4D output) + embedding head, last layer `embedding`.

    fused_batchnorm: the head's BatchNorms are `batchnorm.BatchNormalization` (False: the stock Keras layer).

    Usage: basic_model = add_embedding_head(backbone, 256, "GDC", dropout=0)
    """
    make_bn = functools.partial(batchnorm.batchnorm_class(fused_batchnorm), momentum=bn_momentum, epsilon=bn_epsilon)
    output_layer = output_layer.upper()
    if output_layer not in EMBEDDING_HEADS:
        raise ValueError(f"buildin_models: output_layer must be one of {sorted(EMBEDDING_HEADS)}, got {output_layer!r}")
    inputs, nn = backbone.inputs[0], backbone.outputs[0]
    if len(nn.shape) != 4:
        raise ValueError(f"buildin_models: backbone {backbone.name!r} must output a 4D feature map, got shape {nn.shape}")
    if add_pointwise_conv:
        nn = _pointwise_conv(nn, add_pointwise_conv, make_bn)
    nn = EMBEDDING_HEADS[output_layer](nn, emb_shape, dropout, use_bias, make_bn)
    # `fix_gamma=True` of MXNet / a frozen gamma of PyTorch is `scale=False` here
    nn = make_bn(scale=scale, name="pre_embedding")(nn)
    embedding = keras.layers.Activation("linear", dtype="float32", name="embedding")(nn)
    return keras.Model(inputs, embedding, name=name or backbone.name)
