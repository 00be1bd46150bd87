"""The VPL output head: `NormDenseVPL` (variational prototype learning) and its `OutputHead`, whose training
model updates the prototype queue after each step.

Usage:
    from keras_insightface.heads.vpl import NormDenseVPL
    head = NormDenseVPL(num_classes, start_iters=8000, allowed_delta=200, name="NormDense")
"""
import keras
from keras import ops

from . import registry
from .base import HeadOptions, HeadRequest
from .cosine import CosineHead, NormDense


@keras.saving.register_keras_serializable(package="keras_insightface")
class NormDenseVPL(NormDense):
    """NormDense with variational prototype learning (Deng et al., "Variational Prototype Learning for Deep Face
    Recognition", CVPR 2021), as the original Keras_insightface's NormDenseVPL.

    Non-trainable state: `queue_features` (units, emb), per class the last L2-normalized feature seen of it;
    `queue_iters` (units,), the training step it was seen at; `iters`, the training steps done. During step
    `t = iters + 1`, a class with `t > start_iters` and `t - queue_iters <= allowed_delta` uses the prototype
    `normalize((1 - vpl_lambda) * normalize(w_c) + vpl_lambda * queue_c)` instead of `normalize(w_c)`.
    `update_queue(labels)` ends each training step (`sam.SAMModel` calls it as `after_train_step`): `iters = t`, and each label's queue
    row takes that sample's normalized feature (the last sample of a class in the batch wins) and `queue_iters`
    `t`. Sub-centers (`loss_top_k > 1`) are not taken, as in the original.
    Usage: head = NormDenseVPL(num_classes, start_iters=8000, allowed_delta=200, name="NormDense")
    """

    def __init__(self, units=1000, kernel_regularizer=None, vpl_lambda=0.15, start_iters=8000, allowed_delta=200, **kwargs):
        if int(kwargs.get("loss_top_k", 1)) != 1:
            raise ValueError("NormDenseVPL keeps one prototype per class; loss_top_k must be 1, got {}".format(kwargs["loss_top_k"]))
        super().__init__(units, kernel_regularizer, **kwargs)
        self.vpl_lambda, self.start_iters, self.allowed_delta = float(vpl_lambda), int(start_iters), int(allowed_delta)
        self._step_features = None  # this step's normalized features, for update_queue within the same step

    def build(self, input_shape):
        super().build(input_shape)
        self.queue_features = self.add_weight(
            name="queue_features", shape=(self.units, input_shape[-1]), initializer="glorot_normal", trainable=False
        )
        self.queue_iters = self.add_weight(name="queue_iters", shape=(self.units,), initializer="zeros", dtype="int64", trainable=False)
        self.iters = self.add_weight(name="iters", shape=(), initializer="zeros", dtype="int64", trainable=False)

    def queue_lambda(self):
        """Per class, the weight of its queued feature in this step's prototype: `vpl_lambda` or 0."""
        step = self.iters + 1
        fresh = ops.logical_and(step > self.start_iters, step - self.queue_iters <= self.allowed_delta)
        return ops.where(fresh, self.vpl_lambda, 0.0)

    def call(self, inputs):
        feature_norm = ops.sqrt(ops.maximum(ops.sum(ops.square(inputs), axis=-1, keepdims=True), self.epsilon))
        norm_inputs = inputs / feature_norm
        self._step_features = norm_inputs
        queue_lambda = ops.cast(self.queue_lambda(), self.w.dtype)
        injected = _l2_normalize_columns(self.w, self.epsilon) * (1.0 - queue_lambda) + ops.transpose(self.queue_features) * queue_lambda
        output = ops.matmul(norm_inputs, ops.cast(_l2_normalize_columns(injected, self.epsilon), inputs.dtype))
        if self.append_norm:
            output = ops.concatenate([output, ops.cast(feature_norm, output.dtype)], axis=-1)
        return output

    def update_queue(self, labels):
        """After a training step: queue this step's features at their int `labels` [B].  Usage: head.update_queue(labels)"""
        if self._step_features is None:
            raise RuntimeError("NormDenseVPL.update_queue: the layer has not been called in this step")
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        positions = ops.arange(ops.shape(labels)[0], dtype="int32")
        last_of_class = ops.take(ops.segment_max(positions, labels, num_segments=self.units), labels)
        features = ops.take(ops.stop_gradient(self._step_features), last_of_class, axis=0)
        self.iters.assign_add(1)
        _scatter_rows(self.queue_features, labels, ops.cast(features, self.queue_features.dtype))
        _scatter_rows(self.queue_iters, labels, ops.broadcast_to(ops.convert_to_tensor(self.iters), ops.shape(labels)))

    after_train_step = update_queue  # the hook sam.SAMModel runs at the end of each training step

    def get_config(self):
        config = super().get_config()
        config.pop("loss_top_k")
        config.update({"vpl_lambda": self.vpl_lambda, "start_iters": self.start_iters, "allowed_delta": self.allowed_delta})
        return config


def _l2_normalize_columns(weights, epsilon):
    return weights / ops.sqrt(ops.maximum(ops.sum(ops.square(weights), axis=0, keepdims=True), epsilon))


def _scatter_rows(variable, indices, rows):
    """`variable[indices] = rows` (equal rows at repeated indices): a sparse update of the touched rows on
    TensorFlow, a dense scatter elsewhere."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return variable.value.scatter_update(tf.IndexedSlices(rows, indices))
    return variable.assign(ops.scatter_update(variable, indices[:, None], rows))



@registry.register
class VPLHead(CosineHead):
    """The cosine head of margin-loss plans under `Train(vpl_start_iters > 0)`: `NormDenseVPL`, trained by
    `sam.SAMModel`, whose step ends with the queue update. `vpl_start_iters < 50` counts epochs, as the original.
    Usage: head = VPLHead(HeadRequest("arcface", classes, steps_per_epoch=100), HeadOptions(vpl_start_iters=2))"""

    kind = "vpl"
    priority = 80
    enabled_by = "vpl_start_iters"
    refuses = {"lossTopK": "NormDenseVPL keeps one prototype per class; loss_top_k must be 1"}
    own_train_step = True

    @classmethod
    def applies(cls, request, options):
        return request.loss_type == "arcface" and options.vpl_start_iters > 0

    @classmethod
    def from_layer(cls, layer):
        if not isinstance(layer, NormDenseVPL):
            return None
        return cls(HeadRequest("arcface", layer.units, 1, layer.append_norm), HeadOptions(), layer=layer)

    def start_step(self):
        """The training step the queue starts being used at: `vpl_start_iters` epochs (< 50) or steps."""
        start = self.options.vpl_start_iters
        return start * self.request.steps_per_epoch if start < 50 else start

    def new_layer(self):
        request, options = self.request, self.options
        return NormDenseVPL(request.classes, kernel_regularizer=options.kernel_regularizer, append_norm=request.append_norm,
                            name="NormDense", dtype="float32", start_iters=self.start_step(), allowed_delta=options.vpl_allowed_delta)

    def describe(self):
        return super().describe() + ", vpl start step={}".format(self.start_step())
