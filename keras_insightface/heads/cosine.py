"""The cosine output head: `NormDense` (L2-normalized embeddings times L2-normalized class centers, with sub-centers
and the feature norm column) and its `OutputHead`, the head of margin-loss plans.

Usage:
    from keras_insightface.heads.cosine import NormDense
    cosines = NormDense(num_classes, loss_top_k=3, name="NormDense")(basic_model.output)
"""
import keras
from keras import ops

from .. import losses
from . import registry
from .base import HeadOptions, HeadRequest, OutputHead


@keras.saving.register_keras_serializable(package="keras_insightface")
class NormDense(keras.layers.Layer):
    """Cosine head: L2-normalized inputs times L2-normalized class weights, values in [-1, 1].

    `loss_top_k=K` keeps K sub-centers per class (kernel shape `(emb, units * K)`, sub-center
    `k` of class `c` in column `c * K + k`) and returns the max over each class's K columns.
    `append_norm=True` appends the L2 norm of the input feature as one extra last column,
    for MagFace / AdaFace style losses.

    Usage:
        out = NormDense(num_classes, name="NormDense")(basic_model.output)
    """

    def __init__(self, units=1000, kernel_regularizer=None, loss_top_k=1, append_norm=False, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.loss_top_k = int(loss_top_k)
        self.append_norm = bool(append_norm)
        self.epsilon = float(epsilon)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        self.w = self.add_weight(
            name="norm_dense_w",
            shape=(input_shape[-1], self.units * self.loss_top_k),
            initializer="glorot_normal",
            regularizer=self.kernel_regularizer,
            trainable=True,
        )

    def call(self, inputs):
        norm_w = self.w / ops.sqrt(ops.maximum(ops.sum(ops.square(self.w), axis=0, keepdims=True), self.epsilon))
        feature_norm = ops.sqrt(ops.maximum(ops.sum(ops.square(inputs), axis=-1, keepdims=True), self.epsilon))
        output = ops.matmul(inputs / feature_norm, ops.cast(norm_w, inputs.dtype))
        if self.loss_top_k > 1:
            output = ops.max(ops.reshape(output, (-1, self.units, self.loss_top_k)), axis=-1)
        if self.append_norm:
            output = ops.concatenate([output, ops.cast(feature_norm, output.dtype)], axis=-1)
        return output

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units + int(self.append_norm))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "loss_top_k": self.loss_top_k,
                "append_norm": self.append_norm,
                "epsilon": self.epsilon,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config



@registry.register
class CosineHead(OutputHead):
    """The head of margin-loss plans: `NormDense` with `loss_top_k` sub-centers and, for feature-norm losses, the
    norm column.  Usage: head = CosineHead(HeadRequest("arcface", classes, loss_top_k=3), HeadOptions())"""

    kind = "arcface"
    priority = 90

    @classmethod
    def applies(cls, request, options):
        return request.loss_type == "arcface"

    @classmethod
    def from_layer(cls, layer):
        if not isinstance(layer, NormDense):
            return None
        return cls(HeadRequest("arcface", layer.units, layer.loss_top_k, layer.append_norm), HeadOptions(), layer=layer)

    def new_layer(self):
        request, options = self.request, self.options
        return NormDense(request.classes, kernel_regularizer=options.kernel_regularizer, loss_top_k=request.loss_top_k,
                         append_norm=request.append_norm, name="NormDense", dtype="float32")

    def signature(self):
        return (self.kind, self.request.classes, self.request.loss_top_k, self.request.append_norm)

    def describe(self):
        return "type={}, classes={}, loss_top_k={}, append_norm={}".format(self.kind, self.request.classes, self.request.loss_top_k, self.request.append_norm)

    def class_centers(self):
        return self.layer.w

    def set_class_centers(self, centers):
        self.layer.w.assign(centers)

    def metrics(self, loss):
        if self.request.append_norm and not losses.trait(loss, "reads_embedding_and_cosines"):
            return [keras.metrics.MeanMetricWrapper(losses.accuracy_without_norm, name="accuracy")]
        return super().metrics(loss)
