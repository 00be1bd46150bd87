"""The softmax output head: a `Dense(classes, activation="softmax")` named `softmax`, the head of plans whose loss
reads probabilities (Keras' categorical losses, `MarginSoftmax`).

Usage:
    head = SoftmaxHead(HeadRequest("softmax", classes), HeadOptions(kernel_regularizer=keras.regularizers.L2(5e-4)))
"""
import keras

from . import registry
from .base import HeadOptions, HeadRequest, OutputHead

LAYER_NAME = "softmax"


@registry.register
class SoftmaxHead(OutputHead):
    """`Dense(classes, activation="softmax")`; its kernel is not a set of class centers, so nothing carries to or from
    a cosine head.  Usage: model = SoftmaxHead(request, options).training_model(basic_model, [], loss, 0, "train")"""

    kind = "softmax"
    priority = 40

    @classmethod
    def applies(cls, request, options):
        return request.loss_type == "softmax"

    @classmethod
    def from_layer(cls, layer):
        if layer.name != LAYER_NAME:
            return None
        return cls(HeadRequest("softmax", layer.units), HeadOptions(), layer=layer)

    def new_layer(self):
        return keras.layers.Dense(self.request.classes, name=LAYER_NAME, activation="softmax",
                                  kernel_regularizer=self.options.kernel_regularizer, dtype="float32")

    def signature(self):
        return (self.kind, self.request.classes)
