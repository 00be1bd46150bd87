"""EfficientNet B0-B7 and EfficientNetV2 backbones from keras.applications, without input preprocessing.

keras.applications.EfficientNetB* start with Rescaling / Normalization layers that expect
0-255 pixels. Face images here are already normalized by the data pipeline
(`(x - 127.5) / 128`), so these builders drop them: the model starts at `stem_conv_pad`.
EfficientNetV2 builders pass `include_preprocessing=False`.

Usage:
    from keras_insightface.backbones import efficientnet
    mm = efficientnet.EfficientNetB0(weights=None, include_top=False, input_shape=(112, 112, 3))
    [ii.name for ii in mm.layers[1:3]]  # ['stem_conv_pad', 'stem_conv']
"""
import keras

from . import _layers, registry

FIRST_LAYER_AFTER_PREPROCESSING = "stem_conv_pad"


def drop_preprocessing(model, first_layer_name=FIRST_LAYER_AFTER_PREPROCESSING):
    """The part of `model` from `first_layer_name` on, as a new model sharing its layers and weights."""
    first_layer = model.get_layer(first_layer_name)
    return keras.Model(first_layer.input, model.outputs, name=model.name)


def _efficientnet_v1(application_name):
    def builder(input_shape=(112, 112, 3), include_top=False, weights=None, **kwargs):
        application = getattr(keras.applications, application_name)
        return drop_preprocessing(application(include_top=include_top, weights=weights, input_shape=input_shape, **kwargs))

    doc = f"keras.applications.{application_name} without its Rescaling / Normalization layers."
    return _layers.named_builder(builder, application_name, doc)


def _efficientnet_v2(application_name):
    def builder(input_shape=(112, 112, 3), include_top=False, weights=None, **kwargs):
        application = getattr(keras.applications, application_name)
        kwargs.setdefault("include_preprocessing", False)
        return application(include_top=include_top, weights=weights, input_shape=input_shape, **kwargs)

    doc = f"keras.applications.{application_name} with include_preprocessing=False."
    return _layers.named_builder(builder, application_name, doc)


EfficientNetB0 = _efficientnet_v1("EfficientNetB0")
EfficientNetB1 = _efficientnet_v1("EfficientNetB1")
EfficientNetB2 = _efficientnet_v1("EfficientNetB2")
EfficientNetB3 = _efficientnet_v1("EfficientNetB3")
EfficientNetB4 = _efficientnet_v1("EfficientNetB4")
EfficientNetB5 = _efficientnet_v1("EfficientNetB5")
EfficientNetB6 = _efficientnet_v1("EfficientNetB6")
EfficientNetB7 = _efficientnet_v1("EfficientNetB7")

EfficientNetV2B0 = _efficientnet_v2("EfficientNetV2B0")
EfficientNetV2B1 = _efficientnet_v2("EfficientNetV2B1")
EfficientNetV2B2 = _efficientnet_v2("EfficientNetV2B2")
EfficientNetV2B3 = _efficientnet_v2("EfficientNetV2B3")
EfficientNetV2S = _efficientnet_v2("EfficientNetV2S")
EfficientNetV2M = _efficientnet_v2("EfficientNetV2M")
EfficientNetV2L = _efficientnet_v2("EfficientNetV2L")


for _builder in (EfficientNetB0, EfficientNetB1, EfficientNetB2, EfficientNetB3, EfficientNetB4, EfficientNetB5, EfficientNetB6, EfficientNetB7,
                 EfficientNetV2B0, EfficientNetV2B1, EfficientNetV2B2, EfficientNetV2B3, EfficientNetV2S, EfficientNetV2M, EfficientNetV2L):
    registry.register(_builder.__name__, "EfficientNet", _builder)
