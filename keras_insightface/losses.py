"""Losses for face recognition: margin softmax losses on cosine logits, center, triplet and distillation.

The margin losses take integer class labels `y_true` (int [batch], or [batch, 1]; label rows [batch, classes], one-hot
or the soft rows of mixup, are accepted too, told apart by rank and width) and the cosine output of `models.NormDense`
as `y_pred`. Each replaces the target cosine of every sample by its margined value, multiplies all logits by
`scale` and applies softmax cross-entropy. With integer labels only the target column is computed apart and the
margin is added in place, so an ArcFace / CosFace step keeps one logits-size buffer live beside
its inputs, like plain softmax: see docs/losses.md for the measurement.

Usage:
    from keras_insightface import losses
    model.compile(optimizer="sgd", loss=losses.ArcfaceLoss(scale=64.0))
"""
import math
import os

import numpy as np
import keras
from keras import ops

from .io_utils import atomic_path

_PACKAGE = "keras_insightface"
_TINY = 1e-12  # floor of sin^2(theta); keeps gradients finite at cosine == +/-1
_DISTILL_EPSILON = 1e-5  # added to the embedding norms in distiller_loss_cosine, as the original


def _register(obj):
    return keras.saving.register_keras_serializable(package=_PACKAGE)(obj)


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


def _softmax_cross_entropy(indices, logits, label_smoothing=0.0, from_logits=True):
    """Per-sample categorical cross-entropy of `logits` against the targets at `indices`, as Keras defines it.

    With label smoothing `ls` the targets are `one_hot * (1 - ls) + ls / classes`, so the loss is
    `logsumexp(z) - (1 - ls) * z_target - ls / classes * sum(z)`. `from_logits=False` (probabilities) goes through
    Keras' `categorical_crossentropy` on a one-hot made here.
    """
    classes = logits.shape[-1]
    if not from_logits:
        one_hot = ops.one_hot(indices[:, 1], classes, dtype=logits.dtype)
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

    uses_feature_norm = False

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
class ArcfaceLoss(_MarginSoftmaxLoss):
    """ArcFace / combined margin (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019).

    Target logit `cos(margin1 * theta + margin2) - margin3`, other logits `cos(theta)`, all times
    `scale`, then categorical cross-entropy (`label_smoothing` as Keras defines it:
    `y_true * (1 - ls) + ls / num_classes`). Where `margin1 * theta + margin2` would pass pi the
    non-easy-margin rule of insightface applies: see `combined_margin`
    (for margin1 = 1: `cos_t <= cos(pi - margin2)` gives `cos_t - margin2 * sin(margin2) - margin3`).
    `from_logits` is passed to the cross-entropy.

    Usage:
        model.compile(optimizer="sgd", loss=ArcfaceLoss(scale=64.0, label_smoothing=0.1))
    """

    def __init__(self, margin1=1.0, margin2=0.5, margin3=0.0, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin1, self.margin2, self.margin3 = float(margin1), float(margin2), float(margin3)

    def _target_logit(self, target_cos, feature_norm):
        return combined_margin(target_cos, self.margin1, self.margin2, self.margin3)

    def get_config(self):
        config = super().get_config()
        config.update({"margin1": self.margin1, "margin2": self.margin2, "margin3": self.margin3})
        return config


@_register
class ArcfaceLossSimple(ArcfaceLoss):
    """ArcFace with the additive angular margin only: target logit `cos(theta + margin)` (Deng et al., CVPR 2019).

    Same boundary rule as `ArcfaceLoss`: `cos_t <= cos(pi - margin)` gives `cos_t - margin * sin(margin)`.
    Usage: loss = ArcfaceLossSimple(margin=0.5, scale=64.0)
    """

    def __init__(self, margin=0.5, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(1.0, margin, 0.0, scale, from_logits, label_smoothing, **kwargs)
        self.margin = float(margin)

    def get_config(self):
        config = super().get_config()
        for key in ("margin1", "margin2", "margin3"):
            config.pop(key)
        config["margin"] = self.margin
        return config


@_register
class AcrTripLoss(ArcfaceLossSimple):
    """ArcFace and batch-hard triplet on one output `concat([embeddings, cosines])`, as the original Keras_insightface.

    The first `emb_shape` columns of `y_pred` are the embeddings (the original: 512, fixed), the rest the NormDense
    cosines. With `s` the cosine similarity of the L2-normalized embeddings, per anchor `p = min_{same label} s`
    (the anchor included) and `n = max_{other label} s` (-1 when the batch has none), the triplet term
    `max(0, n - p)` is subtracted from the ArcFace target logit `cos(theta + margin)` (`ArcfaceLossSimple`'s,
    boundary rule included); then `scale` and softmax cross-entropy.
    Usage: loss = AcrTripLoss(margin=0.5, scale=64.0, emb_shape=512)   # y_pred = concat([embedding, NormDense output])
    """

    def __init__(self, margin=0.5, scale=64.0, from_logits=True, label_smoothing=0, emb_shape=512, **kwargs):
        super().__init__(margin, scale, from_logits, label_smoothing, **kwargs)
        self.emb_shape = int(emb_shape)

    def _split_outputs(self, y_true, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] <= self.emb_shape:
            raise ValueError(
                "AcrTripLoss: y_pred has {} columns; expected concat([embedding of emb_shape={}, cosines])".format(
                    y_pred.shape[-1], self.emb_shape
                )
            )
        embeddings, cosines = y_pred[:, : self.emb_shape], y_pred[:, self.emb_shape :]
        same, sim = _same_label_matrix(y_true), _cosine_similarity_matrix(ops.cast(embeddings, "float32"))
        hardest_pos = ops.min(ops.where(same, sim, 1.0), axis=-1)
        hardest_neg = ops.max(ops.where(same, -1.0, sim), axis=-1)
        return y_true, cosines, ops.maximum(hardest_neg - hardest_pos, 0.0)

    def _target_logit(self, target_cos, triplet_term):
        return super()._target_logit(target_cos, None) - ops.cast(triplet_term, target_cos.dtype)

    def get_config(self):
        config = super().get_config()
        config["emb_shape"] = self.emb_shape
        return config


@_register
class CosFaceLoss(_MarginSoftmaxLoss):
    """CosFace / large margin cosine loss: target logit `cos(theta) - margin` (Wang et al., "CosFace", CVPR 2018).

    Usage: loss = CosFaceLoss(margin=0.35, scale=64.0)
    """

    def __init__(self, margin=0.35, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin = float(margin)

    def _target_logit(self, target_cos, feature_norm):
        return target_cos - self.margin

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config


def _curricular_cross_entropy(indices, cos, target_logit, hard_threshold, t, scale, label_smoothing):
    """Softmax cross-entropy of CurricularFace logits, with a hand-written gradient.

    Non-target cosines `c > hard_threshold` become `c * (t + c)`, the target column becomes
    `target_logit`, everything is multiplied by `scale`. The backward pass recomputes the logits
    from `cos` instead of keeping forward buffers, and writes `dL/dc = scale * (p - ls / C) *
    (t + 2c or 1)` directly. Measured at 100k classes, the step's peak is 2.2-2.5 logits-size
    buffers against 3.5 with autodiff of the same formula (docs/losses.md). `hard_threshold`
    (batch, 1) and `t` get no gradient.
    Usage: per_sample = _curricular_cross_entropy(_target_indices(y_true), cos, target_logit, threshold, t, 64.0, 0.0)
    """
    smooth = label_smoothing / cos.shape[-1]

    def scaled_logits(cos, target_logit):
        modulated = cos * ops.where(cos > hard_threshold, t + cos, 1.0)
        return ops.scatter_update(modulated, indices, target_logit) * scale

    @ops.custom_gradient
    def cross_entropy(cos, target_logit):
        logits = scaled_logits(cos, target_logit)
        log_norm = ops.logsumexp(logits, axis=-1)
        loss = log_norm - (1.0 - label_smoothing) * scale * target_logit
        if label_smoothing:
            loss = loss - smooth * ops.sum(logits, axis=-1)

        def grad(upstream):
            prob = ops.exp(scaled_logits(cos, target_logit) - ops.expand_dims(log_norm, -1))
            target_prob = ops.take_along_axis(prob, indices[:, 1:], axis=-1)[:, 0]
            if label_smoothing:
                prob = prob - smooth
            grad_cos = prob * ops.where(cos > hard_threshold, t + 2.0 * cos, 1.0)
            grad_cos = ops.scatter_update(grad_cos, indices, ops.zeros_like(target_logit))
            upstream_scale = upstream * scale
            grad_target = (target_prob - (1.0 - label_smoothing) - smooth) * upstream_scale
            return grad_cos * ops.expand_dims(upstream_scale, -1), grad_target

        return loss, grad

    return cross_entropy(cos, target_logit)


@_register
class CurricularFaceLoss(_MarginSoftmaxLoss):
    """CurricularFace (Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition", CVPR 2020).

    Target logit: ArcFace `cos(theta + margin)` with the non-easy-margin rule. A non-target cosine
    `c` above the sample's `cos(theta_y + margin)` is a hard negative and becomes `c * (t + c)`.
    `t` is a non-trainable running value, updated on every call before use:
    `t = alpha * t + (1 - alpha) * mean(target cosines of the batch)`, starting at 0.
    The cross-entropy always works from logits (`from_logits=False` is refused) and carries its
    own gradient, which keeps the step's memory near ArcFace's: see `_curricular_cross_entropy`.
    Usage: loss = CurricularFaceLoss(margin=0.5, scale=64.0, alpha=0.99)
    """

    def __init__(self, margin=0.5, scale=64.0, alpha=0.99, from_logits=True, label_smoothing=0, **kwargs):
        if not from_logits:
            raise ValueError("CurricularFaceLoss computes softmax cross-entropy on its own logits; from_logits must be True")
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin, self.alpha = float(margin), float(alpha)
        self.t = keras.Variable(0.0, trainable=False, dtype="float32", name="curricular_t", aggregation="mean")

    def call(self, y_true, y_pred):
        indices = _target_indices(y_true)
        target_cos = _target_values(y_pred, indices)
        target_logit = ops.cast(combined_margin(target_cos, 1.0, self.margin, 0.0), y_pred.dtype)
        constant_cos = ops.stop_gradient(target_cos)
        t = self.alpha * self.t + (1.0 - self.alpha) * ops.mean(ops.cast(constant_cos, "float32"))
        self.t.assign(t)
        hard_threshold = ops.cos(ops.arccos(ops.clip(constant_cos, -1.0, 1.0)) + self.margin)
        return _curricular_cross_entropy(
            indices, y_pred, target_logit, ops.expand_dims(hard_threshold, -1), ops.cast(t, y_pred.dtype), self.scale, self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "alpha": self.alpha})
        return config


@_register
class MagFaceLoss(_MarginSoftmaxLoss):
    """MagFace (Meng et al., "MagFace: A Universal Representation for Face Recognition and Quality Assessment", CVPR 2021).

    Needs `NormDense(append_norm=True)`: the last column of `y_pred` is the feature norm `a`
    (`y_true` has one column fewer). With `a` clipped to `[min_feature_norm, max_feature_norm]`,
    margin `m(a) = min_margin + (max_margin - min_margin) * (a - min_feature_norm) / (max_feature_norm
    - min_feature_norm)`, target logit `cos(theta + m(a))` with the non-easy-margin rule, and the loss
    adds `regularizer_loss_lambda * (a / max_feature_norm**2 + 1 / a)`. This is the official MagFace
    (IrvingMeng/MagFace, `easy_margin=False`). The original Keras_insightface instead clips every cosine to
    `[-1 + 1e-3, 1 - 1e-3]` and takes `min(cos(theta + m), cos)` past the boundary; for cosines within
    `+/-(1 - 1e-3)` and `theta + m < pi` both give the same loss (docs/losses.md).
    Usage: loss = MagFaceLoss(scale=64.0)
    """

    uses_feature_norm = True

    def __init__(
        self,
        min_feature_norm=10.0,
        max_feature_norm=110.0,
        min_margin=0.45,
        max_margin=0.8,
        scale=64.0,
        regularizer_loss_lambda=35.0,
        from_logits=True,
        label_smoothing=0,
        **kwargs,
    ):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.min_feature_norm, self.max_feature_norm = float(min_feature_norm), float(max_feature_norm)
        self.min_margin, self.max_margin = float(min_margin), float(max_margin)
        self.regularizer_loss_lambda = float(regularizer_loss_lambda)

    def _clipped_norm(self, feature_norm):
        return ops.clip(feature_norm, self.min_feature_norm, self.max_feature_norm)

    def _target_logit(self, target_cos, feature_norm):
        slope = (self.max_margin - self.min_margin) / (self.max_feature_norm - self.min_feature_norm)
        margin = self.min_margin + slope * (self._clipped_norm(feature_norm) - self.min_feature_norm)
        return combined_margin(target_cos, 1.0, margin, 0.0)

    def _regularizer(self, feature_norm):
        norm = self._clipped_norm(feature_norm)
        return self.regularizer_loss_lambda * (norm / self.max_feature_norm**2 + 1.0 / norm)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "min_feature_norm": self.min_feature_norm,
                "max_feature_norm": self.max_feature_norm,
                "min_margin": self.min_margin,
                "max_margin": self.max_margin,
                "regularizer_loss_lambda": self.regularizer_loss_lambda,
            }
        )
        return config


@_register
class AdaFaceLoss(_MarginSoftmaxLoss):
    """AdaFace (Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022).

    Needs `NormDense(append_norm=True)`: the last column of `y_pred` is the feature norm (`y_true`
    has one column fewer). Norms are clipped to [0.001, 100] and taken without gradient. Running
    batch statistics (non-trainable, start at mean 20, std 100) are updated before use:
    `mean = t_alpha * batch_mean + (1 - t_alpha) * mean`, same for the unbiased std. Per sample
    `s = clip(h * (norm - mean) / (std + 1e-3), -1, 1)`; the target logit is
    `cos(clip(theta - margin * s, 1e-3, pi - 1e-3)) - (margin + margin * s)` with
    `theta = arccos(cos_t)`. Every cosine (target and non-target) is first clipped to
    `[-1 + 1e-3, 1 - 1e-3]`, as the official AdaFace (`cosine.clamp(-1 + eps, 1 - eps)`) and the original
    Keras_insightface do.
    Usage: loss = AdaFaceLoss(margin=0.4, h=0.333, scale=64.0)
    """

    uses_feature_norm = True
    _EPS = 1e-3

    def __init__(self, margin=0.4, h=0.333, scale=64.0, t_alpha=0.01, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin, self.h, self.t_alpha = float(margin), float(h), float(t_alpha)
        self.batch_mean = keras.Variable(20.0, trainable=False, dtype="float32", name="adaface_mean", aggregation="mean")
        self.batch_std = keras.Variable(100.0, trainable=False, dtype="float32", name="adaface_std", aggregation="mean")

    def _margin_scaler(self, feature_norm):
        norms = ops.stop_gradient(ops.clip(ops.cast(feature_norm, "float32"), 0.001, 100.0))
        count = ops.cast(ops.shape(norms)[0], "float32")
        centered = norms - ops.mean(norms)
        std = ops.sqrt(ops.sum(ops.square(centered)) / ops.maximum(count - 1.0, 1.0))
        mean = self.t_alpha * ops.mean(norms) + (1.0 - self.t_alpha) * self.batch_mean
        std = self.t_alpha * std + (1.0 - self.t_alpha) * self.batch_std
        self.batch_mean.assign(mean)
        self.batch_std.assign(std)
        return ops.clip(self.h * (norms - mean) / (std + self._EPS), -1.0, 1.0)

    def _cosines(self, y_pred):
        return ops.clip(y_pred, -1.0 + self._EPS, 1.0 - self._EPS)

    def _target_logit(self, target_cos, feature_norm):
        scaler = ops.cast(self._margin_scaler(feature_norm), target_cos.dtype)
        theta = ops.arccos(target_cos)
        theta_m = ops.clip(theta - self.margin * scaler, self._EPS, math.pi - self._EPS)
        return ops.cos(theta_m) - (self.margin + self.margin * scaler)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "h": self.h, "t_alpha": self.t_alpha})
        return config


def _theta(cos):
    """Angle `arccos(cos)` with a finite gradient at cos == +/-1.  Usage: theta = _theta(target_cos)"""
    return ops.arctan2(ops.sqrt(ops.maximum(1.0 - ops.square(cos), _TINY)), cos)


@_register
class AirFaceLoss(_MarginSoftmaxLoss):
    """AirFace / Li-ArcFace as the original Keras_insightface (Li et al., "AirFace", arXiv 1907.12256).

    Target logit linear in the angle: `1 - 2 * (theta + margin) / pi`; the other logits stay `cos(theta)`
    (the paper also maps them to `1 - 2 * theta / pi`; the original does not). All times `scale`.
    Usage: loss = AirFaceLoss(margin=0.4, scale=64.0)
    """

    def __init__(self, margin=0.4, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin = float(margin)

    def _target_logit(self, target_cos, feature_norm):
        return 1.0 - 2.0 * (_theta(target_cos) + self.margin) / math.pi

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config


@_register
class AdaCosLoss(_MarginSoftmaxLoss):
    """AdaCos, adaptive scale and no margin (Zhang et al., "AdaCos", CVPR 2019), as the original Keras_insightface.

    The scale starts at `sqrt(2) * log(num_classes - 1)` (when `scale=0`) and is updated on every call before use:
    `s = log(B) / cos(min(max_median, theta_med))`, with `B` the batch mean of `sum over non-target classes of
    exp(s_old * cos)` and `theta_med` the `(batch // 2 - 1)`-th smallest target angle (index 0 for a batch of
    one or two). The scale carries no gradient; `get_config` saves its current value.
    Usage: loss = AdaCosLoss(num_classes=85742)
    """

    def __init__(self, num_classes=1000, scale=0, max_median=math.pi / 4, from_logits=True, label_smoothing=0, **kwargs):
        scale = float(scale) or math.sqrt(2.0) * math.log(float(num_classes) - 1)
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.num_classes, self.max_median = int(num_classes), float(max_median)
        self.adaptive_scale = keras.Variable(self.scale, trainable=False, dtype="float32", name="adacos_scale", aggregation="mean")

    def _target_logit(self, target_cos, feature_norm):
        return target_cos

    def _scale(self, y_true, y_pred):
        cos = ops.stop_gradient(ops.cast(y_pred, "float32"))
        labels = hard_labels(y_true)  # integer labels, or the class of largest weight of a label row
        target_cos = ops.take_along_axis(cos, labels[:, None], axis=-1)[:, 0]
        theta = ops.sort(_theta(target_cos))
        theta_med = ops.take(theta, ops.maximum(ops.shape(theta)[0] // 2 - 1, 0))
        others = ops.sum(ops.exp(self.adaptive_scale * cos), axis=-1) - ops.exp(self.adaptive_scale * target_cos)
        scale = ops.log(ops.mean(others)) / ops.cos(ops.minimum(self.max_median, theta_med))
        self.adaptive_scale.assign(scale)
        return ops.cast(scale, y_pred.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "scale": float(self.adaptive_scale.numpy()), "max_median": self.max_median})
        return config


@_register
def scale_softmax(y_true, y_pred, scale=64.0):
    """Softmax cross-entropy on `scale * cosine` (NormDense output), no margin; integer labels or label rows (one-hot
    or soft).  Usage: model.compile(optimizer="adam", loss=losses.scale_softmax)
    """
    if is_one_hot(y_true):
        return keras.losses.categorical_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred * scale, from_logits=True)
    return _softmax_cross_entropy(_target_indices(y_true), y_pred * scale)


@_register
class OneHotLabels(keras.losses.Loss):
    """A loss that wants one-hot targets (e.g. `keras.losses.CategoricalCrossentropy`), fed integer labels.

    Integer labels become one-hot rows of width `num_classes` inside the step, on the device; one-hot `y_true`
    passes through. `Train` wraps every loss that does not read integer labels itself (see `takes_integer_labels`).
    Usage: loss = OneHotLabels(keras.losses.CategoricalCrossentropy(label_smoothing=0.1), num_classes=85742)
    """

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


@_register
def accuracy_without_norm(y_true, y_pred):
    """Accuracy of a `NormDense(append_norm=True)` output (its last column is the feature norm), integer or one-hot
    labels.  Usage: keras.metrics.MeanMetricWrapper(losses.accuracy_without_norm, name="accuracy")
    """
    predicted = ops.cast(ops.argmax(y_pred[:, :-1], axis=-1), "int32")
    return ops.cast(ops.equal(predicted, hard_labels(y_true)), "float32")


@_register
def accuracy_after_embedding(y_true, y_pred, emb_shape=512):
    """Accuracy of an `AcrTripLoss` output `concat([embedding, cosines])`: argmax over the columns after `emb_shape`.

    Usage: keras.metrics.MeanMetricWrapper(losses.accuracy_after_embedding, name="accuracy", emb_shape=512)
    """
    predicted = ops.cast(ops.argmax(y_pred[:, emb_shape:], axis=-1), "int32")
    return ops.cast(ops.equal(predicted, class_labels(y_true)), "float32")


@_register
class MarginSoftmax(keras.losses.Loss):
    """The original Keras_insightface MarginSoftmax, on softmax probabilities (a "softmax" plan).

    The target probability `p` becomes `p**power` (`scale == 0`), `p * scale` (`power == 1`) or
    `(p**power + p * scale) / 2` (otherwise); every value is then multiplied by `scale_all` and Keras'
    categorical cross-entropy applies (with `from_logits=False` it renormalizes each row to sum 1 and clips
    to `[1e-7, 1 - 1e-7]`).
    Usage: model.compile(loss=MarginSoftmax(power=2, scale=0.4), ...)   # model ends in a softmax Dense
    """

    def __init__(self, power=2, scale=0.4, scale_all=1.0, from_logits=False, label_smoothing=0, **kwargs):
        super().__init__(**kwargs)
        self.power, self.scale, self.scale_all = float(power), float(scale), float(scale_all)
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def _margined(self, prob):
        if self.power != 1 and self.scale == 0:
            return ops.power(prob, self.power)
        if self.power == 1 and self.scale != 0:
            return prob * self.scale
        return (ops.power(prob, self.power) + prob * self.scale) / 2

    def call(self, y_true, y_pred):
        margined = ops.where(ops.cast(y_true, "bool"), self._margined(y_pred), y_pred) * self.scale_all
        return keras.losses.categorical_crossentropy(
            y_true, margined, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "power": self.power,
                "scale": self.scale,
                "scale_all": self.scale_all,
                "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing,
            }
        )
        return config


@_register
class DistillKLDivergenceLoss(keras.losses.Loss):
    """KL divergence of softened teacher and student cosine outputs (Beyer et al., "Knowledge distillation: A good
    teacher is patient and consistent", CVPR 2022), as the original Keras_insightface.

    `y_true`: the teacher's NormDense output, `y_pred`: the student's; per sample
    `KL(softmax(scale * y_true) || softmax(scale * y_pred))`, both probabilities clipped to `[1e-7, 1]` as Keras'
    `kl_divergence` does.
    Usage: model.compile(loss=DistillKLDivergenceLoss(scale=10), ...)
    """

    def __init__(self, scale=10, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        teacher = ops.softmax(ops.cast(y_true, y_pred.dtype) * self.scale, axis=-1)
        return keras.losses.kl_divergence(teacher, ops.softmax(y_pred * self.scale, axis=-1))

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config


MARGIN_LOSSES = (
    ArcfaceLoss,
    ArcfaceLossSimple,
    AcrTripLoss,
    CosFaceLoss,
    CurricularFaceLoss,
    MagFaceLoss,
    AdaFaceLoss,
    AirFaceLoss,
    AdaCosLoss,
    DistillKLDivergenceLoss,
)
FEATURE_NORM_LOSSES = (MagFaceLoss, AdaFaceLoss)
COSINE_LOSS_FUNCTIONS = (scale_softmax,)


def is_margin_loss(loss):
    """True when `loss` reads NormDense cosines (a margin loss or `scale_softmax`).

    Usage: head = NormDense(classes) if losses.is_margin_loss(loss) else keras.layers.Dense(classes)
    """
    function = getattr(loss, "func", loss)  # functools.partial(scale_softmax, scale=...)
    return isinstance(loss, MARGIN_LOSSES) or any(function is ff for ff in COSINE_LOSS_FUNCTIONS)


def takes_integer_labels(loss):
    """True when `loss` reads integer class labels itself: the margin losses, `scale_softmax`, center and triplet
    losses, Keras' sparse categorical cross-entropy, `OneHotLabels`. Any other loss gets one-hot rows.

    Usage: loss = loss if losses.takes_integer_labels(loss) else losses.OneHotLabels(loss, num_classes)
    """
    own = (_MarginSoftmaxLoss, CenterLoss, _TripletLoss, OneHotLabels, keras.losses.SparseCategoricalCrossentropy)
    function = getattr(loss, "func", loss)
    return isinstance(loss, own) or is_margin_loss(loss) or function is keras.losses.sparse_categorical_crossentropy


def takes_soft_labels(loss):
    """True when `loss` reads soft label rows (`Train(mixup_alpha=...)`) as the original does: the margin losses but
    CurricularFace, `scale_softmax`, `MarginSoftmax`, and the Keras losses `Train` feeds one-hot rows (e.g.
    `CategoricalCrossentropy`).  Usage: if mixup_alpha and not losses.takes_soft_labels(loss): raise ...
    """
    if isinstance(loss, (CurricularFaceLoss, DistillKLDivergenceLoss)):
        return False
    function = getattr(loss, "func", loss)
    own = (_MarginSoftmaxLoss, MarginSoftmax, OneHotLabels)
    return isinstance(loss, own) or function is scale_softmax or not takes_integer_labels(loss)


def needs_feature_norm(loss):
    """True when `loss` needs `NormDense(append_norm=True)` (MagFace, AdaFace).  Usage: needs_feature_norm(loss)"""
    return isinstance(loss, FEATURE_NORM_LOSSES)


@_register
class CenterLoss(keras.losses.Loss):
    """Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016).

    `y_true`: one-hot (or integer) labels; `y_pred`: embeddings. Loss per sample is
    `factor * sum over feature dims of (x_i - c_{y_i})**2 / 2` (the paper's `1/2 ||x - c||^2`, as the
    original Keras_insightface; Keras then takes the mean over the batch), using the centers before this
    batch's update. Each call then moves the non-trainable
    centers toward the batch features: `c_j -= alpha * sum_{i: y_i = j}(c_j - x_i) / (1 + n_j)`, `n_j`
    the count of class j in the batch. Centers are not part of `get_config`: `save_centers(path)`
    writes them to a `.npy` file, and `initial_file` (when it exists) loads them back.

    Usage:
        center_loss = CenterLoss(num_classes=85742, emb_shape=256, initial_file="checkpoints/model_centers.npy")
        center_loss.save_centers("checkpoints/model_centers.npy")
    """

    def __init__(self, num_classes, emb_shape, alpha=0.5, factor=1.0, initial_file=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.emb_shape = int(num_classes), int(emb_shape)
        self.alpha, self.factor, self.initial_file = float(alpha), float(factor), initial_file
        centers = np.zeros((self.num_classes, self.emb_shape), dtype="float32")
        if initial_file and os.path.exists(initial_file):
            centers = self._load_centers(initial_file)
        self.centers = keras.Variable(centers, trainable=False, dtype="float32", name="centers", aggregation="sum")

    def _load_centers(self, path):
        centers = np.load(path)
        if centers.shape != (self.num_classes, self.emb_shape):
            raise ValueError(
                "CenterLoss initial_file {}: centers have shape {}, expected (num_classes, emb_shape) = {}".format(
                    path, centers.shape, (self.num_classes, self.emb_shape)
                )
            )
        print(">>>> Reload centers from:", path)
        return centers.astype("float32")

    def call(self, y_true, y_pred):
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.emb_shape:
            raise ValueError(
                "CenterLoss: embeddings have {} features, expected emb_shape={}".format(y_pred.shape[-1], self.emb_shape)
            )
        labels = class_labels(y_true)
        embeddings = ops.cast(y_pred, "float32")
        centers_batch = ops.stop_gradient(ops.take(self.centers, labels, axis=0))
        counts = ops.take(ops.bincount(labels, minlength=self.num_classes), labels)
        delta = self.alpha * ops.stop_gradient(centers_batch - embeddings) / (1.0 + ops.cast(counts, "float32"))[:, None]
        _scatter_sub(self.centers, labels, delta)
        return self.factor * self._center_distance(embeddings, centers_batch)

    def _center_distance(self, embeddings, centers_batch):
        """Per-sample distance to the class center: `sum((x - c)**2) / 2`."""
        return 0.5 * ops.sum(ops.square(embeddings - centers_batch), axis=-1)

    def save_centers(self, path):
        """Write the centers to `path` (`.npy`) atomically.  Usage: center_loss.save_centers("m_centers.npy")"""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as ff:
                np.save(ff, ops.convert_to_numpy(self.centers))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "emb_shape": self.emb_shape,
                "alpha": self.alpha,
                "factor": self.factor,
                "initial_file": self.initial_file,
            }
        )
        return config


@_register
class CenterLossCosine(CenterLoss):
    """Center loss on cosine distance, as the original Keras_insightface: per sample `factor * (1 - cos(x, c_y))`.

    Embedding and center are L2-normalized (a zero center stays zero, giving 1); the center update is `CenterLoss`'s.
    Usage: loss = CenterLossCosine(num_classes=85742, emb_shape=256)
    """

    def _center_distance(self, embeddings, centers_batch):
        return 1.0 - ops.sum(_l2_normalize(embeddings) * _l2_normalize(centers_batch), axis=-1)


def _scatter_sub(variable, indices, updates):
    """`variable[indices] -= updates`, summing repeated indices.

    TensorFlow: a sparse update of the touched rows only (also across MirroredStrategy replicas,
    whose deltas add up); other backends: a dense scatter.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return variable.value.scatter_sub(tf.IndexedSlices(updates, indices))
    return variable.assign_sub(ops.scatter(indices[:, None], updates, variable.shape))


def _l2_normalize(embeddings):
    """Rows divided by their L2 norm, floored at 1e-6 (a zero row stays zero, as `tf.nn.l2_normalize`)."""
    return embeddings / ops.sqrt(ops.maximum(ops.sum(ops.square(embeddings), axis=-1, keepdims=True), _TINY))


def _cosine_similarity_matrix(embeddings):
    norm_emb = _l2_normalize(embeddings)
    return ops.matmul(norm_emb, ops.transpose(norm_emb))


def _same_label_matrix(y_true):
    labels = class_labels(y_true)
    return ops.equal(labels[:, None], labels[None, :])


class _TripletLoss(keras.losses.Loss):
    """Base of the triplet losses: the margin `alpha`, and the same-label / cosine-distance matrices."""

    def __init__(self, alpha=0.35, **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)

    @staticmethod
    def _same_label_and_distance(y_true, y_pred):
        """Boolean same-label matrix and cosine distance `1 - cos` of the L2-normalized embeddings."""
        return _same_label_matrix(y_true), 1.0 - _cosine_similarity_matrix(y_pred)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


@_register
class BatchHardTripletLoss(_TripletLoss):
    """Batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss", 2017) on cosine distance.

    Embeddings are L2-normalized; distance `d = 1 - cos`. For each anchor:
    `max(0, max_{p: same label} d(a, p) - min_{n: other label} d(a, n) + alpha)`, the positives
    including the anchor itself (distance 0); an anchor with no negative in the batch gives 0.
    `y_true`: one-hot or integer labels.
    Usage: loss = BatchHardTripletLoss(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        same, dist = self._same_label_and_distance(y_true, y_pred)
        hardest_pos = ops.max(ops.where(same, dist, 0.0), axis=-1)
        hardest_neg = ops.min(ops.where(same, 4.0, dist), axis=-1)  # cosine distance is at most 2
        has_negative = ops.any(ops.logical_not(same), axis=-1)
        loss = ops.maximum(hardest_pos - hardest_neg + self.alpha, 0.0)
        return ops.where(has_negative, loss, 0.0)


@_register
class BatchAllTripletLoss(_TripletLoss):
    """Batch-all triplet loss as the original Keras_insightface defines it, on cosine similarity `s`.

    Per anchor `a`, with `P(a)` its same-label samples (the anchor included) and `s_p = min_{p in P(a)} s(a, p)`
    its hardest positive similarity:
    `mean_{p in P(a)} (1 - s(a, p)) + sum_{n in N(a)} s(a, n) / (|N(a)| + 1)`, where `N(a)` holds the
    other-label samples with `s_p - s(a, n) < alpha` (the negatives that violate the margin). Keras then
    takes the mean over anchors. Embeddings are L2-normalized; `y_true`: one-hot or integer labels.
    The textbook batch-all (mean of the non-zero hinge terms) is `BatchAllTripletLossHermans`.
    Usage: loss = BatchAllTripletLoss(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        same = _same_label_matrix(y_true)
        sim = _cosine_similarity_matrix(y_pred)
        same_float = ops.cast(same, sim.dtype)
        positive_loss = ops.sum(same_float * (1.0 - sim), axis=-1) / ops.sum(same_float, axis=-1)
        hardest_positive = ops.min(ops.where(same, sim, 1.0), axis=-1, keepdims=True)
        violating = ops.cast(ops.logical_and(ops.logical_not(same), hardest_positive - sim < self.alpha), sim.dtype)
        negative_loss = ops.sum(violating * sim, axis=-1) / (ops.sum(violating, axis=-1) + 1.0)
        return positive_loss + negative_loss


@_register
class BatchAllTripletLossHermans(_TripletLoss):
    """Batch-all triplet loss (Hermans et al. 2017, "BA != 0") on cosine distance `d = 1 - cos`.

    Over every triplet (a, p, n) of the batch with p != a of a's label and n of another label,
    `l = max(0, d(a, p) - d(a, n) + alpha)`; the loss is the mean of the non-zero `l` (0 when none).
    Memory grows as batch**3. `y_true`: one-hot or integer labels.
    Usage: loss = BatchAllTripletLossHermans(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        same, dist = self._same_label_and_distance(y_true, y_pred)
        not_self = ops.logical_not(ops.eye(ops.shape(dist)[0], dtype="bool"))
        positive = ops.logical_and(same, not_self)
        valid = ops.logical_and(positive[:, :, None], ops.logical_not(same)[:, None, :])
        triplet = ops.maximum(dist[:, :, None] - dist[:, None, :] + self.alpha, 0.0)
        triplet = ops.where(valid, triplet, 0.0)
        active = ops.sum(ops.cast(triplet > 0, triplet.dtype))
        return ops.sum(triplet) / ops.maximum(active, 1.0)


def _arc_positive(cos, alpha, compare_margined=False):
    """The original's margined positive similarity: `cos(theta + alpha)`, or `-2 - cos(theta + alpha)` past the
    threshold `cos(pi - alpha)`, tested on `cos` (or on the margined value when `compare_margined`)."""
    margined = ops.cos(_theta(cos) + alpha)
    tested = margined if compare_margined else cos
    return ops.where(tested > math.cos(math.pi - alpha), margined, -2.0 - margined)


@_register
class ArcBatchHardTripletLoss(_TripletLoss):
    """Batch-hard triplet loss with an ArcFace margin on the hardest positive, as the original Keras_insightface.

    With `s` the cosine similarity of L2-normalized embeddings, `p = min_{same label, anchor included} s` and
    `n = max_{other label} s` (-1 when the batch has none): `max(0, n - P)`, `P = cos(arccos(p) + alpha)` when
    `p > cos(pi - alpha)`, else `-2 - cos(arccos(p) + alpha)`.
    Usage: loss = ArcBatchHardTripletLoss(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        same, sim = _same_label_matrix(y_true), _cosine_similarity_matrix(y_pred)
        hardest_pos = ops.min(ops.where(same, sim, 1.0), axis=-1)
        hardest_neg = ops.max(ops.where(same, -1.0, sim), axis=-1)
        return ops.maximum(hardest_neg - _arc_positive(hardest_pos, self.alpha), 0.0)


@_register
class BatchHardTripletLossEuclidean(_TripletLoss):
    """Batch-hard triplet loss on squared Euclidean distance of the raw (not normalized) embeddings, as the original.

    `d(i, j) = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`; per anchor `max(0, max_{same} d + alpha - min_{other} d)`, where an
    anchor with no other-label sample takes the batch's largest `d` as its negative.
    Usage: loss = BatchHardTripletLossEuclidean(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        same = _same_label_matrix(y_true)
        square = ops.sum(ops.square(y_pred), axis=-1)
        dist = square[:, None] + square[None, :] - 2.0 * ops.matmul(y_pred, ops.transpose(y_pred))
        hardest_pos = ops.max(ops.where(same, dist, 0.0), axis=-1)
        hardest_neg = ops.min(ops.where(same, ops.max(dist), dist), axis=-1)
        return ops.maximum(hardest_pos + self._margin(dist) - hardest_neg, 0.0)

    def _margin(self, dist):
        return self.alpha


@_register
class BatchHardTripletLossEuclideanAutoAlpha(BatchHardTripletLossEuclidean):
    """`BatchHardTripletLossEuclidean` whose margin follows the distances, as the original.

    The margin of a batch is the non-trainable `auto_alpha` (starting at `init_auto_alpha`); after use it becomes
    `alpha * mean(d)` over the batch's whole distance matrix.
    Usage: loss = BatchHardTripletLossEuclideanAutoAlpha(alpha=0.1, init_auto_alpha=1)
    """

    def __init__(self, alpha=0.1, init_auto_alpha=1, **kwargs):
        super().__init__(alpha=alpha, **kwargs)
        self.init_auto_alpha = float(init_auto_alpha)
        self.auto_alpha = keras.Variable(self.init_auto_alpha, trainable=False, dtype="float32", name="auto_alpha", aggregation="mean")

    def _margin(self, dist):
        margin = ops.cast(ops.convert_to_tensor(self.auto_alpha), dist.dtype)
        self.auto_alpha.assign(ops.cast(ops.stop_gradient(ops.mean(dist)), "float32") * self.alpha)
        return margin

    def get_config(self):
        config = super().get_config()
        config["init_auto_alpha"] = self.init_auto_alpha
        return config


def _triplet_similarities(embeddings):
    """Cosine similarities anchor-positive and anchor-negative of a batch ordered `[a, p, n, a, p, n, ...]`."""
    anchor, positive, negative = (_l2_normalize(embeddings[start::3]) for start in range(3))
    return ops.sum(anchor * positive, axis=-1), ops.sum(anchor * negative, axis=-1)


@_register
class OfflineTripletLoss(_TripletLoss):
    """Triplet loss on a batch ordered `[anchor, positive, negative, anchor, ...]` (labels unused), as the original.

    Per triplet, on cosine similarity: `max(0, s(a, n) - s(a, p) + alpha)`; one value per triplet (batch / 3).
    Usage: loss = OfflineTripletLoss(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        pos_sim, neg_sim = _triplet_similarities(y_pred)
        return ops.maximum(neg_sim - pos_sim + self.alpha, 0.0)


@_register
class OfflineArcTripletLoss(_TripletLoss):
    """`OfflineTripletLoss` with an ArcFace margin on the positive, as the original: `max(0, s(a, n) - P)`.

    `P = cos(arccos(s(a, p)) + alpha)` when that value is above `cos(pi - alpha)`, else `-2 - cos(arccos(s(a, p)) + alpha)`.
    Usage: loss = OfflineArcTripletLoss(alpha=0.35)
    """

    def call(self, y_true, y_pred):
        pos_sim, neg_sim = _triplet_similarities(y_pred)
        return ops.maximum(neg_sim - _arc_positive(pos_sim, self.alpha, compare_margined=True), 0.0)


@_register
def distiller_loss_euclidean(true_emb, pred_emb):
    """Squared L2 distance between teacher and student embeddings, per sample.

    Usage: model.compile(loss={"embedding": losses.distiller_loss_euclidean}, ...)
    """
    return ops.sum(ops.square(pred_emb - true_emb), axis=-1)


@_register
def distiller_loss_cosine(true_emb, pred_emb):
    """`1 - cosine similarity` between teacher and student embeddings, per sample, as the original Keras_insightface.

    Non-finite teacher values are replaced by `sqrt(1 / dim)`, and each embedding is divided by its L2 norm
    plus 1e-5 (so an all-zero student gives loss 1, not NaN).
    Usage: model.compile(loss={"embedding": losses.distiller_loss_cosine}, loss_weights={"embedding": 7}, ...)
    """
    true_emb = ops.convert_to_tensor(true_emb)
    pred_emb = ops.cast(pred_emb, true_emb.dtype)
    fill = math.sqrt(1.0 / true_emb.shape[-1])
    true_emb = ops.where(ops.isfinite(true_emb), true_emb, fill)

    def normalize(emb):
        return emb / (ops.sqrt(ops.sum(ops.square(emb), axis=-1, keepdims=True)) + _DISTILL_EPSILON)

    return 1.0 - ops.sum(normalize(true_emb) * normalize(pred_emb), axis=-1)
