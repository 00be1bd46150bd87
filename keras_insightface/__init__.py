"""Keras InsightFace: ArcFace-family face recognition training on Keras 3 and TensorFlow.

Importing the package registers every custom Keras object it defines (layers, losses, optimizers),
so `keras.models.load_model()` of any model or checkpoint the project writes needs nothing else.

Usage:
    import keras_insightface
    from keras_insightface import train, losses, models
    basic_model = keras.models.load_model("checkpoints/model_basic_lfw_epoch_3_0.990000.h5")
"""
from keras_insightface import heads, losses, models, optimizers  # noqa: F401  (registration of custom objects)

__version__ = "0.2.0"
