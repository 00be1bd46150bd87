"""Partial FC: a cosine head that computes logits for a sample of the classes only (An et al., "Killing Two Birds
with One Stone: Efficient and Robust Training of Face Recognition CNNs by Partial FC", CVPR 2022).

Each training step keeps every class that has a sample in the batch (the positives) and fills up to
`num_sample = int(sample_rate * classes)` with negatives drawn uniformly, as insightface's arcface_torch
`PartialFC_V2`: a uniform random score per class, 2.0 for the positives, the top `num_sample` scores, sorted; when
the positives alone are more than `num_sample`, all of them and nothing else. Labels are remapped to positions in
that sorted index. Only the sampled kernel rows take part (a gather, so the kernel's gradient is an
`IndexedSlices`), and `rows_only(optimizer)` makes SGD / Adam / AdamW (Keras' and `optimizers.SGDW / AdamW`) update
those rows only: the other rows of the kernel and of its slot variables stay bit-identical (`row_updates.py`).
`PartialFCHead` is the output-head kind `Train(partial_fc_sample_rate=r)` builds. See docs/partial_fc.md.

Usage:
    labels = keras.Input((), dtype="int32", name="label")
    logits = partial_fc.NormDensePartialFC(num_classes, sample_rate=0.1)([basic_model.output, labels])
    model = keras.Model([basic_model.input, labels], logits)
    model.compile(optimizer=partial_fc.rows_only(keras.optimizers.SGD(0.1, momentum=0.9)),
                  loss=partial_fc.PartialFCLoss(losses.ArcfaceLoss()))
    model.fit(dataset.map(lambda x, y: ((x, y), y)))
"""
import dataclasses
import random

import keras
import tensorflow as tf
from keras import ops

from .. import losses
from . import registry, row_updates
from .base import HeadOptions, HeadRequest, OutputHead

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
_USER = "Partial FC"


def _check_one_replica():
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        raise ValueError("Partial FC sampled-row updates run on one replica; under tf.distribute use the sharded head")


def rows_only(optimizer):
    """`optimizer` (changed in place, and returned) updating an `IndexedSlices` gradient's rows only.

    Keras 3's SGD / Adam apply an `IndexedSlices` gradient densely: the momentum of every row decays and moves its
    row, Adam's moments of every row decay, and weight decay shrinks every row. After this call a variable whose
    gradient is an `IndexedSlices` (the `NormDensePartialFC` kernel) gets weight decay and the optimizer's update on
    the gradient's rows only, slot variables included (`row_updates.ROW_RULES`); every other variable is updated as
    before. Its class, config and saved state do not change. Refused (ValueError): other optimizer classes, a
    LossScaleOptimizer, gradient clipping, accumulation, EMA, more than one replica.
    Usage: optimizer = rows_only(keras.optimizers.SGD(0.1, momentum=0.9))
    """
    rule = row_updates.row_rule(optimizer, _USER, "sampled-row")
    _check_one_replica()
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
                row_updates.apply_to_rows(optimizer, rule, var, grad)

    optimizer._backend_apply_gradients = apply_gradients
    optimizer._partial_fc_rows_only = True
    return optimizer


# ---------------------------------------------------------------- the output head
@registry.register
class PartialFCHead(OutputHead):
    """The cosine head under `Train(partial_fc_sample_rate=r)`: `NormDensePartialFC`, fed the labels as a second
    input; the loss reads the remapped labels from its output (`PartialFCLoss`), the optimizer updates sampled rows
    only (`rows_only`). A resumed Partial FC head keeps its rate.
    Usage: head = PartialFCHead(HeadRequest("arcface", classes), HeadOptions(partial_fc_sample_rate=0.1, seed=0))"""

    kind = "partial_fc"
    priority = 30
    enabled_by = "partial_fc_sample_rate"
    refuses = {
        "mixup_alpha": "the sampled head needs integer labels and its rows-only optimizer step",
        "sam_rho": "the sampled head needs integer labels and its rows-only optimizer step",
        "vpl_start_iters": "the sampled head needs integer labels and its rows-only optimizer step",
        "jit_compile": "the sampled head has a data-dependent width, which XLA (jit_compile=True) cannot compile",
        "a softmax loss": "it needs a cosine head: a margin loss or 'type': 'arcface'",
        "AcrTripLoss": "it reads the embedding beside every class's cosine, the sampled head scores a sample of the classes",
    }
    takes_label_input = True

    @classmethod
    def applies(cls, request, options):
        return bool(options.partial_fc_sample_rate)

    @classmethod
    def from_layer(cls, layer):
        if not isinstance(layer, NormDensePartialFC):
            return None
        options = HeadOptions(partial_fc_sample_rate=layer.sample_rate, seed=layer.seed)
        return cls(HeadRequest("arcface", layer.units, layer.loss_top_k, layer.append_norm), options, layer=layer)

    def new_layer(self):
        request, options = self.request, self.options
        return NormDensePartialFC(request.classes, options.partial_fc_sample_rate, options.kernel_regularizer, request.loss_top_k,
                                  request.append_norm, seed=options.seed, name="NormDense", dtype="float32")

    def signature(self):
        request = self.request
        return (self.kind, request.classes, request.loss_top_k, request.append_norm, self.options.partial_fc_sample_rate)

    def describe(self):
        request = self.request
        return "type=partial_fc, classes={}, loss_top_k={}, append_norm={}, partial_fc_sample_rate={}".format(
            request.classes, request.loss_top_k, request.append_norm, self.options.partial_fc_sample_rate)

    def class_centers(self):
        return ops.transpose(self.layer.w)

    def set_class_centers(self, centers):
        self.layer.w.assign(ops.transpose(centers))

    def _built(self, embedding_shape):
        if not self.layer.built:
            self.layer.build([embedding_shape, (None,)])
        return self

    def attach(self, basic_model):
        labels = keras.Input((), dtype="int32", name="label")
        return [basic_model.inputs[0], labels], self.layer([basic_model.outputs[0], labels])

    def wrap_loss(self, loss):
        return PartialFCLoss(loss)

    def metrics(self, loss):
        return [keras.metrics.MeanMetricWrapper(sampled_accuracy, name="accuracy", append_norm=self.request.append_norm)]

    def prepare_optimizer(self, optimizer):
        return rows_only(optimizer)

    def options_on_resume(self, options):
        if options.partial_fc_sample_rate is None:
            return dataclasses.replace(options, partial_fc_sample_rate=self.layer.sample_rate)
        return options
