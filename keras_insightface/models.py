"""Model building: built-in backbones + an embedding head -> the basic model; the seed's names of the output heads
(`models.NormDense`, `models.NormDenseVPL`: they live in `heads/`), of `SAMModel` and of model surgery.

Usage:
    from keras_insightface import models
    models.print_buildin_models()  # or models.list_models()
    basic_model = models.buildin_models("mobilenet", dropout=0, emb_shape=256, output_layer="GDC")
    basic_model = models.add_l2_regularizer_2_model(basic_model, 1e-3, apply_to_batch_normal=True)
"""
import keras

from . import batchnorm
from .backbones import registry, resnet
from .heads.cosine import NormDense  # noqa: F401  (the original's models.NormDense)
from .heads.embedding import add_embedding_head
from .heads.vpl import NormDenseVPL  # noqa: F401  (the original's models.NormDenseVPL)
from .sam import SAMModel  # noqa: F401  (the original's models.SAMModel)
from .surgery import (  # noqa: F401
    MIXED_PRECISION_POLICIES, add_l2_regularizer_2_model, get_l2_regularizer_value, iter_layers, mixed_precision_model, model_compute_policy,
    replace_ReLU_with_PReLU, set_batchnorm,
)


def buildin_models(
    stem_model,
    dropout=1,
    emb_shape=512,
    input_shape=(112, 112, 3),
    output_layer="GDC",
    bn_momentum=0.99,
    bn_epsilon=0.001,
    add_pointwise_conv=False,
    use_bias=False,
    scale=True,
    weights=None,
    use_prelu=False,
    fused_batchnorm=True,
    **kwargs,
):
    """Backbone + embedding head: the basic model, whose last layer is named `embedding`.

    stem_model: a registered name (see `print_buildin_models`, case-insensitive), any
        keras.applications name, or a headless keras.Model whose output is a 4D feature map.
    dropout: rate in (0, 1) applied in the head; 0 or >= 1 means none.
    output_layer: "E" (BN, Dropout, Flatten, Dense), "GDC" (global depthwise conv, BN, Dropout,
        Conv1x1), "F" (Dropout, Flatten, Dense) or "GAP" (BN, GlobalAveragePooling, Dropout, Dense);
        all end with BatchNorm(scale=scale) named `pre_embedding` and a float32 `embedding` layer.
    bn_momentum, bn_epsilon: for the head's BatchNorms; applied to a named backbone's BatchNorms too
        when they differ from the Keras defaults (0.99, 0.001).
    add_pointwise_conv: Conv1x1(512) + BN + ReLU before the head (-1: half the channels).
    use_prelu: every ReLU of the result (backbone and head) becomes a PReLU, see `replace_ReLU_with_PReLU`.
    fused_batchnorm: the head's BatchNorms, and a named backbone's (keras.applications ones swapped, weights
        kept), are `batchnorm.BatchNormalization` on TensorFlow's fused kernel; False keeps the stock Keras
        layer everywhere (a keras.Model passed as stem_model is never changed: see batchnorm.convert_batchnorm).
    weights: passed to the backbone builder ("imagenet" where keras.applications offers it); or insightface's
        trained weights: an arcface_torch state dict (`.pth`) or an insightface ONNX recognition model (`.onnx`) of
        the same network (r18 ... r200 with output_layer="E", use_bias=True; mbf with output_layer="GDC"), loaded
        with the source's BatchNorm epsilon and input normalization (see `convert_insightface`).
    kwargs: passed to the backbone builder.

    Usage:
        basic_model = buildin_models("r34", dropout=0.4, emb_shape=512, output_layer="E", bn_momentum=0.9, bn_epsilon=2e-5)
        basic_model = buildin_models("r100", dropout=0, emb_shape=512, output_layer="E", use_bias=True, weights="backbone.pth")
    """
    from .insightface_weights import is_insightface_weights, load_insightface_weights

    insightface_weights = None
    if is_insightface_weights(weights):
        insightface_weights, weights = weights, None
        if isinstance(stem_model, str) and stem_model.lower() in resnet.STAGE_DEPTHS:  # arcface_torch's IResNets are PReLU ones
            kwargs.setdefault("activation", "prelu")
    if isinstance(stem_model, str):
        backbone = registry.get_backbone_builder(stem_model)(input_shape=input_shape, weights=weights, **kwargs)
        backbone = batchnorm.convert_batchnorm(backbone, fused=fused_batchnorm)
        if (bn_momentum, bn_epsilon) != (0.99, 0.001):
            print(f">>>> Change BatchNormalization momentum and epsilon default value: {bn_momentum}, {bn_epsilon}")
            set_batchnorm(backbone, bn_momentum, bn_epsilon)
    elif isinstance(stem_model, keras.Model):
        backbone = stem_model
    else:
        raise TypeError(f"buildin_models: stem_model must be a name or a keras.Model, got {type(stem_model).__name__}")
    basic_model = add_embedding_head(
        backbone, emb_shape, output_layer, dropout, bn_momentum, bn_epsilon, add_pointwise_conv, use_bias, scale,
        fused_batchnorm=fused_batchnorm,
    )
    basic_model = replace_ReLU_with_PReLU(basic_model) if use_prelu else basic_model
    if insightface_weights is not None:
        stem_name = stem_model if isinstance(stem_model, str) else None
        basic_model = load_insightface_weights(basic_model, insightface_weights, stem_name)
    return basic_model


def print_buildin_models():
    """Print the registered backbone names, grouped.  Usage: models.print_buildin_models()"""
    print(">>>> buildin_models")
    for group, names in registry.BUILDIN_MODEL_GROUPS.items():
        print(f"{group}: {', '.join(names)},")
    print("Or other names from keras.applications like DenseNet121 / InceptionV3 / NASNetMobile / VGG19.")


list_models = registry.list_models
get_backbone_builder = registry.get_backbone_builder
BUILDIN_MODEL_GROUPS = registry.BUILDIN_MODEL_GROUPS
BUILDIN_MODELS = {name: builder for group in BUILDIN_MODEL_GROUPS.values() for name, builder in group.items()}
