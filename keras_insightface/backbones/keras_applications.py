"""keras.applications models as headless backbones: the seed's "Keras application" names, and any other
keras.applications name (DenseNet121, InceptionV3, ...) through the registry's fallback.

Usage:
    from keras_insightface.backbones import registry
    backbone = registry.get_backbone_builder("densenet121")(input_shape=(112, 112, 3))
"""
import keras

from keras_insightface.backbones import registry

GROUP = "Keras application"
SEED_NAMES = ("MobileNet", "MobileNetV2", "ResNet50", "ResNet50V2", "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2")
APPLICATION_NAMES = {name.lower(): name for name in dir(keras.applications) if name[:1].isupper()}


def application_builder(application_name):
    """A builder for `keras.applications.<application_name>`; the registry adds include_top=False."""

    def builder(input_shape=(112, 112, 3), include_top=False, weights=None, **kwargs):
        application = getattr(keras.applications, application_name)
        return application(include_top=include_top, weights=weights, input_shape=input_shape, **kwargs)

    builder.__name__ = "keras.applications." + application_name
    return builder


def _lookup(name):
    if name not in APPLICATION_NAMES:
        return None
    builder = application_builder(APPLICATION_NAMES[name])
    return lambda input_shape=(112, 112, 3), weights=None, **kwargs: builder(input_shape, False, weights, **kwargs)


for _name in SEED_NAMES:
    registry.register(_name, GROUP, application_builder(_name))
registry.register_fallback(_lookup)
