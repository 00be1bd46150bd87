"""Partial FC: a cosine head that computes logits for a sample of the classes only (An et al., "Killing Two Birds
with One Stone: Efficient and Robust Training of Face Recognition CNNs by Partial FC", CVPR 2022).

Each training step keeps every class that has a sample in the batch (the positives) and fills up to
`num_sample = int(sample_rate * classes)` with negatives drawn uniformly, as insightface's arcface_torch
`PartialFC_V2`: a uniform random score per class, 2.0 for the positives, the top `num_sample` scores, sorted; when
the positives alone are more than `num_sample`, all of them and nothing else. Labels are remapped to positions in
that sorted index. Only the sampled kernel rows take part (a gather, so the kernel's gradient is an
`IndexedSlices`), and `rows_only(optimizer)` makes SGD / Adam / AdamW (Keras' and `optimizers.SGDW / AdamW`) update
those rows only: the other rows of the kernel and of its slot variables stay bit-identical. See docs/partial_fc.md.

Usage:
    labels = keras.Input((), dtype="int32", name="label")
    logits = partial_fc.NormDensePartialFC(num_classes, sample_rate=0.1)([basic_model.output, labels])
    model = keras.Model([basic_model.input, labels], logits)
    model.compile(optimizer=partial_fc.rows_only(keras.optimizers.SGD(0.1, momentum=0.9)),
                  loss=partial_fc.PartialFCLoss(losses.ArcfaceLoss()))
    model.fit(dataset.map(lambda x, y: ((x, y), y)))
"""
import random

import keras
import tensorflow as tf
from keras import ops

from . import losses

_PACKAGE = "keras_insightface"
_POSITIVE_SCORE = 2.0  # above every uniform score in [0, 1): positives are always among the top scores
_MAX_EXACT_LABEL = 2**24  # labels travel as a float32 column: exact below this


def _register(obj):
    return keras.saving.register_keras_serializable(package=_PACKAGE)(obj)


def sample_rate_of(partial_fc_sample_rate=None, partial_fc_split=0):
    """The sample rate `Train` uses, None for the dense head (rate None or 1.0, split 0 or 1).

    `partial_fc_split=K` (the original Keras_insightface option) maps to rate `1 / K`; giving both is an error.
    Usage: rate = sample_rate_of(0.1) ; sample_rate_of(partial_fc_split=4) -> 0.25
    """
    if partial_fc_split not in (0, 1, None):
        if not isinstance(partial_fc_split, int) or partial_fc_split < 0:
            raise ValueError("partial_fc_split must be an integer >= 0, got {!r}".format(partial_fc_split))
        if partial_fc_sample_rate is not None:
            raise ValueError("Give partial_fc_sample_rate or partial_fc_split, not both (split K means rate 1 / K)")
        partial_fc_sample_rate = 1.0 / partial_fc_split
    if partial_fc_sample_rate is None:
        return None
    if isinstance(partial_fc_sample_rate, bool) or not isinstance(partial_fc_sample_rate, (int, float)) or not 0 < partial_fc_sample_rate <= 1:
        raise ValueError("partial_fc_sample_rate must be a number in (0, 1], got {!r}".format(partial_fc_sample_rate))
    return None if partial_fc_sample_rate == 1 else float(partial_fc_sample_rate)


def num_sampled_classes(sample_rate, num_classes):
    """`int(sample_rate * num_classes)` as arcface_torch, at least 1.  Usage: num_sampled_classes(0.1, 93431) -> 9343"""
    return max(1, int(sample_rate * num_classes))


def sample_classes(labels, num_classes, num_sample, seed):
    """The Partial FC v2 sample: (sorted class index, labels remapped into it).

    Every class in `labels` is kept; the rest of the `num_sample` places go to uniformly drawn other classes. When
    the distinct labels exceed `num_sample`, the index is exactly the distinct labels. `seed`: a shape (2,) integer
    seed of `tf.random.stateless_uniform` (the same seed and labels give the same sample).
    Usage: index, local_labels = sample_classes(labels, 93431, 9343, seed=[0, step])
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    scores = tf.random.stateless_uniform((num_classes,), seed=seed, dtype="float32")
    scores = ops.scatter_update(scores, labels[:, None], ops.full(ops.shape(labels), _POSITIVE_SCORE, "float32"))
    num_positive = ops.sum(ops.cast(scores >= _POSITIVE_SCORE, "int32"))
    index = ops.sort(ops.top_k(scores, ops.maximum(num_positive, num_sample), sorted=False)[1])
    return index, ops.cast(ops.searchsorted(index, labels), "int32")


def _class_rows(index, loss_top_k):
    """Kernel rows of the classes in `index`: class c's sub-centers are rows `c * K ... c * K + K - 1`."""
    if loss_top_k == 1:
        return index
    return ops.reshape(index[:, None] * loss_top_k + ops.arange(loss_top_k, dtype="int32")[None, :], (-1,))


@_register
class NormDensePartialFC(keras.layers.Layer):
    """`NormDense` with Partial FC sampling: inputs `[embedding, labels]`, output `[cosines, (norm), labels]`.

    In training the cosines are those of the sampled classes (see `sample_classes`) and the last column holds each
    sample's label remapped into the sample, as float32; `PartialFCLoss` splits it off. Out of training every class
    is scored and the labels pass unchanged. The kernel has one row per class (sub-center), shape
    `(units * loss_top_k, emb)`, so its gradient is an `IndexedSlices` of the sampled rows; `loss_top_k`, `append_norm`
    and `kernel_regularizer` (on the sampled rows) mean what they mean for `NormDense`. The sample of step `n` is
    drawn from the seed `(seed, n)`; `n` is a non-trainable weight, saved and restored with the model.

    Usage: logits = NormDensePartialFC(93431, sample_rate=0.1, name="NormDense")([embedding, labels])
    """

    def __init__(self, units=1000, sample_rate=0.1, kernel_regularizer=None, loss_top_k=1, append_norm=False, epsilon=1e-12, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < float(sample_rate) <= 1:
            raise ValueError("NormDensePartialFC: sample_rate must be in (0, 1], got {!r}".format(sample_rate))
        if int(units) * int(loss_top_k) >= _MAX_EXACT_LABEL:
            raise ValueError("NormDensePartialFC: units * loss_top_k must be below 2**24, got {}".format(int(units) * int(loss_top_k)))
        self.units, self.sample_rate, self.loss_top_k = int(units), float(sample_rate), int(loss_top_k)
        self.append_norm, self.epsilon = bool(append_norm), float(epsilon)
        self.seed = random.randrange(2**31) if seed is None else int(seed)
        self.num_sample = num_sampled_classes(self.sample_rate, self.units)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        embedding_shape = input_shape[0]
        self.w = self.add_weight(
            name="partial_fc_w", shape=(self.units * self.loss_top_k, embedding_shape[-1]), initializer="glorot_normal", trainable=True
        )
        self.step = self.add_weight(name="sample_step", shape=(), initializer="zeros", dtype="int64", trainable=False)

    def sample(self, labels):
        """(sorted class index, remapped labels) of the next training step; advances the step counter."""
        seed = ops.stack([ops.cast(self.seed, "int64"), ops.cast(self.step, "int64")])
        self.step.assign_add(1)
        return sample_classes(labels, self.units, self.num_sample, seed)

    def call(self, inputs, training=None):
        embedding, labels = inputs
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        if training:
            index, labels = self.sample(labels)
        else:
            index = ops.arange(self.units, dtype="int32")
        weight = ops.take(self.w, _class_rows(index, self.loss_top_k), axis=0)
        if self.kernel_regularizer is not None and training:
            self.add_loss(self.kernel_regularizer(weight))
        norm_w = weight / ops.sqrt(ops.maximum(ops.sum(ops.square(weight), axis=-1, keepdims=True), self.epsilon))
        feature_norm = ops.sqrt(ops.maximum(ops.sum(ops.square(embedding), axis=-1, keepdims=True), self.epsilon))
        output = ops.matmul(embedding / feature_norm, ops.transpose(ops.cast(norm_w, embedding.dtype)))
        if self.loss_top_k > 1:
            output = ops.max(ops.reshape(output, (ops.shape(output)[0], -1, self.loss_top_k)), axis=-1)
        columns = [output, ops.cast(feature_norm, output.dtype)] if self.append_norm else [output]
        return ops.concatenate([*columns, ops.cast(labels, output.dtype)[:, None]], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], None)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "sample_rate": self.sample_rate,
                "loss_top_k": self.loss_top_k,
                "append_norm": self.append_norm,
                "epsilon": self.epsilon,
                "seed": self.seed,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


def split_labels(y_pred):
    """(int32 labels, the rest) of a `NormDensePartialFC` output.  Usage: labels, cosines = split_labels(y_pred)"""
    return ops.cast(ops.round(y_pred[:, -1]), "int32"), y_pred[:, :-1]


@_register
class PartialFCLoss(keras.losses.Loss):
    """Any loss of the dense cosine head, applied to a `NormDensePartialFC` output.

    The labels come from the output's last column (remapped into the sample; the dataset's `y_true` is not read).
    Losses that read integer labels (`losses.takes_integer_labels`: every margin loss, `scale_softmax`, ...) get them
    as they are; any other loss (e.g. `keras.losses.CategoricalCrossentropy(from_logits=True)`) gets one-hot rows as
    wide as the sample. With `append_norm` the norm column stays last for MagFace / AdaFace.
    Usage: model.compile(loss=PartialFCLoss(losses.ArcfaceLoss(scale=64)), ...)
    """

    def __init__(self, loss, **kwargs):
        loss = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
        kwargs.setdefault("name", getattr(loss, "name", getattr(loss, "__name__", "partial_fc_loss")))
        super().__init__(**kwargs)
        self.loss = loss

    def call(self, y_true, y_pred):
        labels, y_pred = split_labels(y_pred)
        if not losses.takes_integer_labels(self.loss):
            labels = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return self.loss.call(labels, y_pred) if isinstance(self.loss, keras.losses.Loss) else self.loss(labels, y_pred)

    def get_config(self):
        config = super().get_config()
        config["loss"] = keras.saving.serialize_keras_object(self.loss)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**dict(config, loss=keras.saving.deserialize_keras_object(config["loss"])))


@_register
def sampled_accuracy(y_true, y_pred, append_norm=False):
    """Accuracy of a `NormDensePartialFC` output among the sampled classes (labels from its last column).

    Usage: keras.metrics.MeanMetricWrapper(partial_fc.sampled_accuracy, name="accuracy", append_norm=False)
    """
    labels, y_pred = split_labels(y_pred)
    y_pred = y_pred[:, :-1] if append_norm else y_pred
    return ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels), "float32")


# ---------------------------------------------------------------- optimizer: sampled rows only
def _rows_decay(optimizer, variable):
    """The fraction of a row removed by weight decay at this step: `wd` (SGDW / AdamW of optimizers.py, absolute),
    `wd * lr` (Keras' `weight_decay`), 0 when none or the variable is excluded."""
    if not optimizer._use_weight_decay(variable):
        return 0.0
    decoupled = getattr(optimizer, "decoupled_weight_decay", None)
    if decoupled is not None:
        return ops.cast(decoupled, variable.dtype)
    if optimizer.weight_decay is None:
        return 0.0
    return ops.cast(optimizer.weight_decay, variable.dtype) * ops.cast(optimizer.learning_rate, variable.dtype)


def _sgd_rows(optimizer, variable, rows, gradient, indices, learning_rate):
    """SGD (momentum, nesterov) on the rows `indices`: Keras' `SGD.update_step` restricted to those rows."""
    if optimizer.momentum == 0:
        return rows - gradient * learning_rate
    velocity = optimizer.momentums[optimizer._get_variable_index(variable)]
    momentum = ops.cast(optimizer.momentum, rows.dtype)
    velocity_rows = tf.gather(velocity.value, indices) * momentum - gradient * learning_rate
    velocity.value.scatter_update(tf.IndexedSlices(velocity_rows, indices))
    if optimizer.nesterov:
        return rows + velocity_rows * momentum - gradient * learning_rate
    return rows + velocity_rows


def _adam_rows(optimizer, variable, rows, gradient, indices, learning_rate):
    """Adam (amsgrad) on the rows `indices`: Keras' `Adam.update_step` restricted to those rows (lazy moments)."""
    position = optimizer._get_variable_index(variable)
    first, second = optimizer._momentums[position], optimizer._velocities[position]
    step = ops.cast(optimizer.iterations + 1, rows.dtype)
    beta_1, beta_2 = ops.cast(optimizer.beta_1, rows.dtype), ops.cast(optimizer.beta_2, rows.dtype)
    alpha = learning_rate * ops.sqrt(1 - ops.power(beta_2, step)) / (1 - ops.power(beta_1, step))
    first_rows = tf.gather(first.value, indices)
    first_rows = first_rows + (gradient - first_rows) * (1 - beta_1)
    second_rows = tf.gather(second.value, indices)
    second_rows = second_rows + (ops.square(gradient) - second_rows) * (1 - beta_2)
    first.value.scatter_update(tf.IndexedSlices(first_rows, indices))
    second.value.scatter_update(tf.IndexedSlices(second_rows, indices))
    if optimizer.amsgrad:
        highest = optimizer._velocity_hats[position]
        second_rows = ops.maximum(tf.gather(highest.value, indices), second_rows)
        highest.value.scatter_update(tf.IndexedSlices(second_rows, indices))
    return rows - first_rows * alpha / (ops.sqrt(second_rows) + optimizer.epsilon)


# The optimizer classes (and their subclasses: AdamW, optimizers.SGDW / AdamW) whose update is known row by row.
ROW_UPDATES = {keras.optimizers.SGD: _sgd_rows, keras.optimizers.Adam: _adam_rows}


def _row_update_of(optimizer):
    for optimizer_class, update in ROW_UPDATES.items():
        if isinstance(optimizer, optimizer_class):
            return update
    supported = ", ".join(cls.__name__ for cls in ROW_UPDATES)
    raise ValueError(
        "Partial FC updates only the sampled rows, which is implemented for {} and their subclasses (AdamW, SGDW); "
        "got {}".format(supported, type(optimizer).__name__)
    )


def _check_rows_only_options(optimizer):
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "Partial FC: LossScaleOptimizer (mixed_float16) turns the sampled-row gradient dense; use mixed_bfloat16 or float32"
        )
    used = [name for name in ("clipnorm", "clipvalue", "global_clipnorm", "gradient_accumulation_steps") if getattr(optimizer, name, None)]
    if getattr(optimizer, "use_ema", False):
        used.append("use_ema")
    if used:
        raise ValueError("Partial FC: the optimizer options {} are not supported with sampled-row updates".format(used))
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError("Partial FC sampled-row updates run on one replica; under tf.distribute use the sharded head")


def _deduplicated(gradient):
    """(summed values, unique indices) of an IndexedSlices gradient."""
    indices, position = tf.unique(gradient.indices)
    return tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(indices)[0]), indices


def _apply_rows(optimizer, update, gradient, variable):
    """Decay, then update, the rows of `variable` named by the IndexedSlices `gradient`; no other row is written."""
    values, indices = _deduplicated(gradient)
    values = ops.cast(values, variable.dtype)
    learning_rate = ops.cast(optimizer.learning_rate, variable.dtype)
    rows = tf.gather(variable.value, indices)
    rows = rows - rows * _rows_decay(optimizer, variable)
    rows = update(optimizer, variable, rows, values, indices, learning_rate)
    variable.value.scatter_update(tf.IndexedSlices(rows, indices))


def rows_only(optimizer):
    """`optimizer` (changed in place, and returned) updating an `IndexedSlices` gradient's rows only.

    Keras 3's SGD / Adam apply an `IndexedSlices` gradient densely: the momentum of every row decays and moves its
    row, Adam's moments of every row decay, and weight decay shrinks every row. After this call a variable whose
    gradient is an `IndexedSlices` (the `NormDensePartialFC` kernel) gets weight decay and the optimizer's update on
    the gradient's rows only, slot variables included; every other variable is updated as before. Its class, config
    and saved state do not change. Refused (ValueError): other optimizer classes, a LossScaleOptimizer, gradient
    clipping, accumulation, EMA, more than one replica.
    Usage: optimizer = rows_only(keras.optimizers.SGD(0.1, momentum=0.9))
    """
    _check_rows_only_options(optimizer)
    update = _row_update_of(optimizer)
    if getattr(optimizer, "_partial_fc_rows_only", False):
        return optimizer
    apply_dense = optimizer._backend_apply_gradients

    def apply_gradients(grads, trainable_variables):
        pairs = list(zip(grads, trainable_variables))
        dense = [(grad, var) for grad, var in pairs if not isinstance(grad, tf.IndexedSlices)]
        if dense:
            apply_dense([grad for grad, _ in dense], [var for _, var in dense])
        for grad, var in pairs:
            if isinstance(grad, tf.IndexedSlices):
                _apply_rows(optimizer, update, grad, var)

    optimizer._backend_apply_gradients = apply_gradients
    optimizer._partial_fc_rows_only = True
    return optimizer
