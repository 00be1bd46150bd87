"""Model building: built-in backbones, embedding heads, the NormDense output head and model surgery.

Usage:
    import models
    basic_model = models.buildin_models("mobilenet", dropout=0, emb_shape=256, output_layer="GDC")
"""
import keras
from keras import ops


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
