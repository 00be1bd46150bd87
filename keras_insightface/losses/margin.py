"""The margin losses on NormDense cosines (ArcFace, CosFace, CurricularFace, MagFace, AdaFace, AirFace, AdaCos,
AcrTrip), softmax on cosines or probabilities, and the accuracy metrics of cosine outputs.

Usage:
    from keras_insightface import losses
    model.compile(optimizer="sgd", loss=losses.ArcfaceLoss(scale=64.0))
"""
import math

import keras
from keras import ops

from .base import (
    _MarginSoftmaxLoss, _theta, _cosine_similarity_matrix, _register, _same_label_matrix, _softmax_cross_entropy, _target_indices,
    _target_values, class_labels, combined_margin, hard_labels, is_one_hot, with_traits, _num_columns,
)


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

    reads_embedding_and_cosines = True

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
    smooth = label_smoothing / _num_columns(cos)

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

    reads_soft_labels = False  # the original reads CurricularFace labels as integers

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
@with_traits(loss_type="arcface", reads_integer_labels=True, reads_soft_labels=True)
def scale_softmax(y_true, y_pred, scale=64.0):
    """Softmax cross-entropy on `scale * cosine` (NormDense output), no margin; integer labels or label rows (one-hot
    or soft).  Usage: model.compile(optimizer="adam", loss=losses.scale_softmax)
    """
    if is_one_hot(y_true):
        return keras.losses.categorical_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred * scale, from_logits=True)
    return _softmax_cross_entropy(_target_indices(y_true), y_pred * scale)




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

    reads_soft_labels = True

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

    loss_type = "arcface"  # reads the teacher's and the student's cosine outputs
    reads_integer_labels = True
    reads_soft_labels = False

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
