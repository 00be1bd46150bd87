"""Model building: built-in backbones, embedding heads, the NormDense output head and model surgery.

Usage:
    from keras_insightface import models
    models.print_buildin_models()  # or models.list_models()
    basic_model = models.buildin_models("mobilenet", dropout=0, emb_shape=256, output_layer="GDC")
    basic_model = models.add_l2_regularizer_2_model(basic_model, 1e-3, apply_to_batch_normal=True)
"""
import keras
from keras import ops

from . import batchnorm, heads
from .backbones import registry, resnet
from .sam import SAMModel  # noqa: F401  (the original's models.SAMModel)
from .surgery import (  # noqa: F401
    MIXED_PRECISION_POLICIES, add_l2_regularizer_2_model, get_l2_regularizer_value, iter_layers, mixed_precision_model, model_compute_policy,
    replace_ReLU_with_PReLU, set_batchnorm,
)



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


@keras.saving.register_keras_serializable(package="keras_insightface")
class NormDenseVPL(NormDense):
    """NormDense with variational prototype learning (Deng et al., "Variational Prototype Learning for Deep Face
    Recognition", CVPR 2021), as the original Keras_insightface's NormDenseVPL.

    Non-trainable state: `queue_features` (units, emb), per class the last L2-normalized feature seen of it;
    `queue_iters` (units,), the training step it was seen at; `iters`, the training steps done. During step
    `t = iters + 1`, a class with `t > start_iters` and `t - queue_iters <= allowed_delta` uses the prototype
    `normalize((1 - vpl_lambda) * normalize(w_c) + vpl_lambda * queue_c)` instead of `normalize(w_c)`.
    `update_queue(labels)` ends each training step (`sam.SAMModel` calls it): `iters = t`, and each label's queue
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
    basic_model = heads.add_embedding_head(
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
