"""The base of the losses: labels (integer or rows), softmax cross-entropy, the margin base class, and what each
loss declares it can do (its traits).

Every loss of the project declares, as class (or function) attributes, what `Train` needs to know about it:

| trait                          | meaning                                                                        | default |
| ------------------------------ | ------------------------------------------------------------------------------ | ------- |
| `loss_type`                    | the plan it trains: "arcface" (cosine head), "softmax", "triplet", "center"   | "softmax" |
| `reads_integer_labels`         | reads integer class labels itself (else `Train` feeds it one-hot rows)         | False   |
| `reads_soft_labels`            | reads mixup's soft label rows as the original does                             | not `reads_integer_labels` |
| `uses_feature_norm`            | needs `NormDense(append_norm=True)` (the feature norm as a last column)        | False   |
| `reads_embedding_and_cosines`  | reads `concat([embedding, cosines])` as its one output (AcrTripLoss)           | False   |

A subclass inherits its base's traits, so a new margin loss is a cosine-head loss with nothing else to register.
Losses from Keras read the defaults (`SparseCategoricalCrossentropy` reads integer labels, `KERAS_TRAITS`).

Usage:
    from keras_insightface import losses
    losses.trait(losses.ArcfaceLoss(), "loss_type")   # "arcface"
"""
import math

import keras
from keras import ops

_PACKAGE = "keras_insightface"
_TINY = 1e-12  # floor of sin^2(theta); keeps gradients finite at cosine == +/-1


def _register(obj):
    return keras.saving.register_keras_serializable(package=_PACKAGE)(obj)


# ---------------------------------------------------------------- traits
TRAIT_DEFAULTS = {
    "loss_type": "softmax",
    "reads_integer_labels": False,
    "uses_feature_norm": False,
    "reads_embedding_and_cosines": False,
}
# Keras' own losses that read integer labels; every other Keras loss has the defaults
KERAS_TRAITS = {
    keras.losses.SparseCategoricalCrossentropy: {"reads_integer_labels": True},
    keras.losses.sparse_categorical_crossentropy: {"reads_integer_labels": True},
}


def with_traits(**traits):
    """Declare the traits of a loss function (classes declare them as class attributes).

    Usage: @with_traits(loss_type="arcface", reads_integer_labels=True)
    """
    unknown = set(traits) - set(TRAIT_DEFAULTS) - {"reads_soft_labels"}
    if unknown:
        raise ValueError("with_traits: unknown traits {}; known: {}".format(sorted(unknown), sorted(TRAIT_DEFAULTS)))

    def declare(function):
        for name, value in traits.items():
            setattr(function, name, value)
        return function

    return declare


def _declared(loss):
    """The object holding a loss's traits: the function of a functools.partial, else the loss itself."""
    return getattr(loss, "func", loss)


def _keras_traits(loss):
    for keras_loss, traits in KERAS_TRAITS.items():
        if loss is keras_loss or (isinstance(keras_loss, type) and isinstance(loss, keras_loss)):
            return traits
    return {}


def trait(loss, name):
    """The trait `name` of `loss` (see the module docstring): declared on its class or function, else the default.

    Usage: losses.trait(loss, "reads_integer_labels")
    """
    declared = _declared(loss)
    if hasattr(declared, name):
        return getattr(declared, name)
    if name == "reads_soft_labels":
        return not trait(loss, "reads_integer_labels")
    return _keras_traits(declared).get(name, TRAIT_DEFAULTS[name])


def guess_loss_type(loss):
    """'softmax' / 'arcface' / 'triplet' / 'center': the plan type `loss` declares.  Usage: guess_loss_type(loss)"""
    return trait(loss, "loss_type")


def is_margin_loss(loss):
    """True when `loss` reads NormDense cosines (a margin loss or `scale_softmax`).

    Usage: head = NormDense(classes) if losses.is_margin_loss(loss) else keras.layers.Dense(classes)
    """
    return trait(loss, "loss_type") == "arcface"


def takes_integer_labels(loss):
    """True when `loss` reads integer class labels itself: the margin losses, `scale_softmax`, center and triplet
    losses, Keras' sparse categorical cross-entropy, `OneHotLabels`. Any other loss gets one-hot rows.

    Usage: loss = loss if losses.takes_integer_labels(loss) else losses.OneHotLabels(loss, num_classes)
    """
    return trait(loss, "reads_integer_labels")


def takes_soft_labels(loss):
    """True when `loss` reads soft label rows (`Train(mixup_alpha=...)`) as the original does: the margin losses but
    CurricularFace, `scale_softmax`, `MarginSoftmax`, and the Keras losses `Train` feeds one-hot rows (e.g.
    `CategoricalCrossentropy`).  Usage: if mixup_alpha and not losses.takes_soft_labels(loss): raise ...
    """
    return trait(loss, "reads_soft_labels")


def needs_feature_norm(loss):
    """True when `loss` needs `NormDense(append_norm=True)` (MagFace, AdaFace).  Usage: needs_feature_norm(loss)"""
    return trait(loss, "uses_feature_norm")


# ---------------------------------------------------------------- labels and cross-entropy
def combined_margin(cos_t, margin1=1.0, margin2=0.5, margin3=0.0):
    """insightface combined margin `cos(margin1 * theta + margin2) - margin3` with the non-easy-margin rule.

    When `margin1 * theta + margin2` would pass pi, i.e. `cos_t <= cos((pi - margin2) / margin1)`,
    the target logit is `cos_t - cos((pi - margin2) / margin1) - cos(margin2) - margin2 * sin(margin2)
    - margin3` instead. For margin1 == 1 that is insightface's `cos_t - margin2 * sin(margin2) - margin3`
    (`easy_margin=False`); it starts below the margined curve's minimum `-1 - margin3` and keeps
    decreasing with theta, so the target logit never wraps back up. `margin2` may be a per-sample tensor.
    Usage: target_logit = combined_margin(target_cos, 1.0, 0.5, 0.0)
    """
    scalar_margin = isinstance(margin2, (int, float))
    if not scalar_margin:
        margin2 = ops.cast(margin2, cos_t.dtype)
    sin_t = ops.sqrt(ops.maximum(1.0 - ops.square(cos_t), _TINY))
    theta = ops.arctan2(sin_t, cos_t)
    margined = ops.cos(margin1 * theta + margin2) - margin3
    if scalar_margin:
        if margin1 * math.pi + margin2 <= math.pi:
            return margined  # the boundary is never reached
        cos_boundary = math.cos((math.pi - margin2) / margin1)
        offset = cos_boundary + math.cos(margin2) + margin2 * math.sin(margin2) + margin3
    else:
        cos_boundary = ops.cos(ops.minimum((math.pi - margin2) / margin1, math.pi))
        offset = cos_boundary + ops.cos(margin2) + margin2 * ops.sin(margin2) + margin3
    fallback = cos_t - offset
    return ops.where(cos_t > cos_boundary, margined, fallback)


def is_one_hot(y_true):
    """True for one-hot rows `(batch, classes)`, False for integer labels `(batch,)` / `(batch, 1)`.

    Usage: losses.is_one_hot(y_true)
    """
    return len(y_true.shape) == 2 and y_true.shape[-1] != 1


def class_labels(y_true):
    """int32 labels `(batch,)` from integer labels `(batch,)` / `(batch, 1)` or one-hot rows `(batch, classes)`.

    One-hot rows are read as `y_true @ [0, 1, ..., classes - 1]`, exact, with no temporary of the logits' size
    (Keras' argmax builds several).
    Usage: labels = losses.class_labels(y_true)
    """
    if not is_one_hot(y_true):
        return ops.cast(ops.reshape(y_true, (-1,)), "int32")
    y_true = ops.cast(y_true, "float32")
    class_ids = ops.arange(ops.shape(y_true)[-1], dtype="float32")
    return ops.cast(ops.round(ops.matmul(y_true, class_ids[:, None])[:, 0]), "int32")


def hard_labels(y_true):
    """int32 labels `(batch,)`: integer labels as they are, label rows (one-hot, or mixup's soft rows) by their class
    of largest weight, as the original reads its labels with `argmax`.  Usage: labels = losses.hard_labels(y_true)
    """
    if not is_one_hot(y_true):
        return ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.cast(ops.argmax(y_true, axis=-1), "int32")


def _target_indices(y_true):
    """(batch, 2) indices `[row, label]` of the targets, from integer labels or one-hot rows."""
    labels = class_labels(y_true)
    rows = ops.arange(ops.shape(labels)[0], dtype="int32")
    return ops.stack([rows, labels], axis=-1)


def _target_values(values, indices):
    """`values[row, label]` for each `[row, label]` of `indices`: the target column of each sample."""
    return ops.take_along_axis(values, indices[:, 1:], axis=-1)[:, 0]


def _num_columns(values):
    """The width of `values`: static when known, else a float tensor (a Partial FC sample's width varies by step)."""
    width = values.shape[-1]
    return width if width is not None else ops.cast(ops.shape(values)[-1], values.dtype)


def _softmax_cross_entropy(indices, logits, label_smoothing=0.0, from_logits=True):
    """Per-sample categorical cross-entropy of `logits` against the targets at `indices`, as Keras defines it.

    With label smoothing `ls` the targets are `one_hot * (1 - ls) + ls / classes`, so the loss is
    `logsumexp(z) - (1 - ls) * z_target - ls / classes * sum(z)`. `from_logits=False` (probabilities) goes through
    Keras' `categorical_crossentropy` on a one-hot made here.
    """
    classes = _num_columns(logits)
    if not from_logits:
        one_hot = ops.one_hot(indices[:, 1], ops.shape(logits)[-1], dtype=logits.dtype)
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=False, label_smoothing=label_smoothing)
    loss = ops.logsumexp(logits, axis=-1) - (1.0 - label_smoothing) * _target_values(logits, indices)
    if label_smoothing:
        loss = loss - label_smoothing / classes * ops.sum(logits, axis=-1)
    return loss


def _split_feature_norm(y_true, y_pred):
    """Labels, cosines and feature norm from a `NormDense(append_norm=True)` output.

    One-hot `y_true` has one column fewer than `y_pred` (the original's width) or the same width. The norm is read
    as the absolute value of the last column: our NormDense appends `+norm`, the original Keras_insightface NormDense
    appends `-norm` (and its losses negate it back), so both layouts give the same loss.
    """
    width = y_pred.shape[-1]
    if is_one_hot(y_true):
        classes = y_true.shape[-1]
        if classes == width:
            y_true = y_true[:, :-1]
        elif classes != width - 1:
            raise ValueError(
                "feature-norm loss expects y_pred = NormDense(append_norm=True) output, one column wider than the "
                "one-hot y_true; got y_true width {} and y_pred width {}".format(classes, width)
            )
    return y_true, y_pred[:, :-1], ops.abs(y_pred[:, -1])



def _l2_normalize(embeddings):
    """Rows divided by their L2 norm, floored at 1e-6 (a zero row stays zero, as `tf.nn.l2_normalize`)."""
    return embeddings / ops.sqrt(ops.maximum(ops.sum(ops.square(embeddings), axis=-1, keepdims=True), _TINY))


def _theta(cos):
    """Angle `arccos(cos)` with a finite gradient at cos == +/-1.  Usage: theta = _theta(target_cos)"""
    return ops.arctan2(ops.sqrt(ops.maximum(1.0 - ops.square(cos), _TINY)), cos)


def _cosine_similarity_matrix(embeddings):
    norm_emb = _l2_normalize(embeddings)
    return ops.matmul(norm_emb, ops.transpose(norm_emb))


def _same_label_matrix(y_true):
    labels = class_labels(y_true)
    return ops.equal(labels[:, None], labels[None, :])



class _MarginSoftmaxLoss(keras.losses.Loss):
    """Base of the margin losses: margined target cosine, `scale`, softmax cross-entropy.

    Subclasses define `_target_logit(target_cos, side_input)` (element-wise, `side_input` broadcast against
    `target_cos`) and may override `_regularizer(feature_norm)` and `_split_outputs` (what of `y_pred` is cosines, and
    the per-sample value handed to `_target_logit`).
    `y_true`: integer labels. The target cosine is gathered at the label and the margin is added at the target index
    (`scatter_update(..., reduction="add")`), the cross-entropy is `logsumexp` minus the target logit: no one-hot of
    the logits' size is made. Label rows `(batch, classes)` (one-hot, or the soft rows of `mixup_alpha`) take the
    original's formula: every class of non-zero weight gets the margin, and the cross-entropy is taken against the
    weights (`_label_rows_loss`).
    """

    loss_type = "arcface"
    reads_integer_labels = True
    reads_soft_labels = True
    uses_feature_norm = False
    reads_embedding_and_cosines = False

    def __init__(self, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true, y_pred, side_input = self._split_outputs(y_true, y_pred)
        y_pred = self._cosines(y_pred)
        if is_one_hot(y_true):
            loss = self._label_rows_loss(y_true, y_pred, side_input)
        else:
            indices = _target_indices(y_true)
            target_cos = _target_values(y_pred, indices)
            target_logit = ops.cast(self._target_logit(target_cos, side_input), y_pred.dtype)
            logits = ops.scatter_update(y_pred, indices, target_logit - target_cos, reduction="add")
            loss = _softmax_cross_entropy(indices, logits * self._scale(y_true, y_pred), self.label_smoothing, self.from_logits)
        if self.uses_feature_norm:
            loss = loss + self._regularizer(side_input)
        return loss

    def _split_outputs(self, y_true, y_pred):
        """(labels, cosines, the per-sample value `_target_logit` reads): the feature norm when `uses_feature_norm`."""
        if self.uses_feature_norm:
            return _split_feature_norm(y_true, y_pred)
        return y_true, y_pred, None

    def _label_rows_loss(self, y_true, y_pred, side_input):
        """The original's loss on label rows: margined cosine where `y_true != 0`, `scale`, then Keras' categorical
        cross-entropy against `y_true` (exact for one-hot and for soft rows; builds logits-size buffers)."""
        y_true = ops.cast(y_true, y_pred.dtype)
        norm = None if side_input is None else ops.expand_dims(side_input, -1)
        margined = ops.cast(self._target_logit(y_pred, norm), y_pred.dtype)
        logits = ops.where(ops.not_equal(y_true, 0), margined, y_pred) * self._scale(y_true, y_pred)
        return keras.losses.categorical_crossentropy(y_true, logits, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def _cosines(self, y_pred):
        """The cosines the margin and the softmax work on; subclasses may clip them."""
        return y_pred

    def _target_logit(self, target_cos, feature_norm):
        raise NotImplementedError

    def _regularizer(self, feature_norm):
        return 0.0

    def _scale(self, y_true, y_pred):
        """The factor on every logit; subclasses may adapt it per batch."""
        return self.scale

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "from_logits": self.from_logits, "label_smoothing": self.label_smoothing})
        return config



@_register
class OneHotLabels(keras.losses.Loss):
    """A loss that wants one-hot targets (e.g. `keras.losses.CategoricalCrossentropy`), fed integer labels.

    Integer labels become one-hot rows of width `num_classes` inside the step, on the device; one-hot `y_true`
    passes through. `Train` wraps every loss that does not read integer labels itself (see `takes_integer_labels`).
    Usage: loss = OneHotLabels(keras.losses.CategoricalCrossentropy(label_smoothing=0.1), num_classes=85742)
    """

    reads_integer_labels = True
    reads_soft_labels = True

    def __init__(self, loss, num_classes, **kwargs):
        loss = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
        kwargs.setdefault("name", getattr(loss, "name", getattr(loss, "__name__", "one_hot_labels")))
        super().__init__(**kwargs)
        self.loss, self.num_classes = loss, int(num_classes)

    def call(self, y_true, y_pred):
        if not is_one_hot(y_true):
            y_true = ops.one_hot(class_labels(y_true), self.num_classes, dtype=y_pred.dtype)
        return self.loss.call(y_true, y_pred) if isinstance(self.loss, keras.losses.Loss) else self.loss(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update({"loss": keras.saving.serialize_keras_object(self.loss), "num_classes": self.num_classes})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, loss=keras.saving.deserialize_keras_object(config["loss"]))
        return cls(**config)
