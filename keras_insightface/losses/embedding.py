"""Losses on embeddings: center loss, the triplet losses (batch-hard, batch-all, offline `[a, p, n]` batches) and the
distillation losses between teacher and student embeddings.

Usage:
    from keras_insightface import losses
    model.compile(optimizer="adam", loss=losses.BatchHardTripletLoss(alpha=0.35))
"""
import math
import os

import keras
import numpy as np
from keras import ops

from ..io_utils import atomic_path
from .base import _cosine_similarity_matrix, _l2_normalize, _register, _same_label_matrix, _theta, class_labels

_DISTILL_EPSILON = 1e-5  # added to the embedding norms in distiller_loss_cosine, as the original


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

    loss_type = "center"
    reads_integer_labels = True
    reads_soft_labels = False

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




class _TripletLoss(keras.losses.Loss):
    """Base of the triplet losses: the margin `alpha`, and the same-label / cosine-distance matrices."""

    loss_type = "triplet"
    reads_integer_labels = True
    reads_soft_labels = False

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
