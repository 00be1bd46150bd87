"""Face verification on insightface `.bin` pair files: loading, embeddings, metrics, eval_callback.

Usage:
    from keras_insightface import evals
    basic_model = keras.models.load_model("checkpoints/keras_mobilefacenet_256_basic_agedb_30_epoch_39_0.942500.h5")
    ee = evals.eval_callback(basic_model, "/datasets/faces_emore/lfw.bin")
    ee.on_epoch_end(0)
    # >>>> lfw evaluation max accuracy: 0.993167, thresh: 0.316535, previous max accuracy: 0.000000
    # >>>> Improved = 0.993167
"""
import os

import keras
import numpy as np

from . import checkpoints, face_io, io_utils
from .face_io import l2_normalize

VAL_FAR_TARGET = 1e-3


# ---------------------------------------------------------------- metrics


def best_threshold_accuracy(similarities, actual_issame):
    """Best accuracy over all pairs when a pair is called "same" for similarity > threshold.

    Thresholds tried: every distinct similarity and one below them all; the lowest best one is returned.
    Usage: accuracy, threshold = best_threshold_accuracy(cosine_similarities, issame)
    """
    similarities = np.asarray(similarities, dtype="float64")
    actual_issame = np.asarray(actual_issame, dtype=bool)
    thresholds = np.unique(similarities)
    thresholds = np.concatenate([[thresholds[0] - 1.0], thresholds])
    positives = np.sort(similarities[actual_issame])
    negatives = np.sort(similarities[~actual_issame])
    true_accepts = len(positives) - np.searchsorted(positives, thresholds, side="right")
    true_rejects = np.searchsorted(negatives, thresholds, side="right")
    correct = true_accepts + true_rejects
    best = int(np.argmax(correct))
    return correct[best] / len(similarities), float(thresholds[best])


def check_both_pair_kinds(actual_issame, source):
    """Refuse pairs that are all same-person or all different-person (ValueError naming `source` and the counts): a
    verification accuracy there only says which way the threshold went (1.0 for any model).
    Usage: check_both_pair_kinds(issame, "lfw.bin")
    """
    same = int(np.count_nonzero(actual_issame))
    different = len(actual_issame) - same
    if not same or not different:
        raise ValueError("{}: {} same-person and {} different-person pairs; a verification score needs both kinds".format(source, same, different))


def _rate(count, total):
    return count / total if total else np.zeros(np.shape(count))


def _roc_accuracy(distances, actual_issame, thresholds):
    """tpr, fpr and accuracy for each threshold, a pair being called "same" for distance < threshold."""
    positives = np.sort(distances[actual_issame])
    negatives = np.sort(distances[~actual_issame])
    true_accepts = np.searchsorted(positives, thresholds, side="left")
    false_accepts = np.searchsorted(negatives, thresholds, side="left")
    true_rejects = len(negatives) - false_accepts
    accuracy = (true_accepts + true_rejects) / len(distances)
    return _rate(true_accepts, len(positives)), _rate(false_accepts, len(negatives)), accuracy


def _threshold_at_far(distances, actual_issame, thresholds, far_target):
    """Distance threshold where the false accept rate reaches `far_target`, linearly interpolated.

    The interpolation runs between the last threshold below the target FAR and the first one at or
    above it; 0.0 (accept nothing) when the FAR never reaches the target.
    """
    far = _roc_accuracy(distances, actual_issame, thresholds)[1]
    if far.max() < far_target:
        return 0.0
    upper = int(np.searchsorted(far, far_target, side="left"))
    if far[upper] == far_target or upper == 0:
        return float(thresholds[upper])
    lower = upper - 1
    step = (far_target - far[lower]) / (far[upper] - far[lower])
    return float(thresholds[lower] + step * (thresholds[upper] - thresholds[lower]))


def _pair_distances(embeddings_a, embeddings_b):
    return np.sum(np.square(l2_normalize(embeddings_a) - l2_normalize(embeddings_b)), axis=1)


def _pca_distances(embeddings_a, embeddings_b, train_set, pca):
    """Squared L2 distances of the normalized pairs after a `pca`-component PCA fit on the training folds."""
    from sklearn.decomposition import PCA

    pca_model = PCA(n_components=pca).fit(np.concatenate([embeddings_a[train_set], embeddings_b[train_set]], axis=0))
    return _pair_distances(pca_model.transform(embeddings_a), pca_model.transform(embeddings_b))


def evaluate(embeddings, actual_issame, nrof_folds=10, pca=0):
    """The standard LFW 10-fold verification protocol.

    `embeddings` rows are interleaved pairs (0-1, 2-3, ...). Distance: squared L2 of normalized embeddings,
    a pair is "same" for distance < threshold. Accuracy: per fold, the best of np.arange(0, 4, 0.01) on the
    training folds applied to the test fold. VAL@FAR=1e-3: per fold, the threshold of np.arange(0, 4, 0.001)
    interpolated to FAR 1e-3 on the training folds, VAL / FAR measured on the test fold. `pca` > 0 projects
    the embeddings on that many principal components fit on the training folds.
    Returns (tpr, fpr, accuracy, val, val_std, far): tpr / fpr per threshold averaged over folds,
    accuracy per fold, val mean, val std, far mean.
    Usage: tpr, fpr, accuracy, val, val_std, far = evaluate(embs, issame); print(accuracy.mean(), accuracy.std())
    """
    from sklearn.model_selection import KFold

    embeddings = np.asarray(embeddings, dtype="float64")
    actual_issame = np.asarray(actual_issame, dtype=bool)
    embeddings_a, embeddings_b = embeddings[0::2], embeddings[1::2]
    nrof_pairs = min(len(actual_issame), len(embeddings_a))
    if nrof_pairs < nrof_folds:
        raise ValueError("evaluate: {} pairs cannot be split into nrof_folds={}".format(nrof_pairs, nrof_folds))
    embeddings_a, embeddings_b, actual_issame = embeddings_a[:nrof_pairs], embeddings_b[:nrof_pairs], actual_issame[:nrof_pairs]
    check_both_pair_kinds(actual_issame, "evaluate")
    roc_thresholds, val_thresholds = np.arange(0, 4, 0.01), np.arange(0, 4, 0.001)

    distances = _pair_distances(embeddings_a, embeddings_b)
    tprs, fprs, accuracy, val, far = [], [], [], [], []
    for train_set, test_set in KFold(n_splits=nrof_folds, shuffle=False).split(np.arange(nrof_pairs)):
        if pca:
            distances = _pca_distances(embeddings_a, embeddings_b, train_set, pca)
        train_dist, train_same = distances[train_set], actual_issame[train_set]
        test_dist, test_same = distances[test_set], actual_issame[test_set]

        best_threshold = roc_thresholds[np.argmax(_roc_accuracy(train_dist, train_same, roc_thresholds)[2])]
        fold_tpr, fold_fpr, _ = _roc_accuracy(test_dist, test_same, roc_thresholds)
        tprs.append(fold_tpr)
        fprs.append(fold_fpr)
        accuracy.append(_roc_accuracy(test_dist, test_same, np.array([best_threshold]))[2][0])

        far_threshold = _threshold_at_far(train_dist, train_same, val_thresholds, VAL_FAR_TARGET)
        fold_val, fold_far, _ = _roc_accuracy(test_dist, test_same, np.array([far_threshold]))
        val.append(fold_val[0])
        far.append(fold_far[0])
    val = np.array(val)
    return np.mean(tprs, axis=0), np.mean(fprs, axis=0), np.array(accuracy), val.mean(), val.std(), np.mean(far)


# ---------------------------------------------------------------- callback


def _model_image_size(basic_model, default=(112, 112)):
    shape = getattr(basic_model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[2]:
        return int(shape[1]), int(shape[2])
    return default


class eval_callback(keras.callbacks.Callback):
    """Verification accuracy of `basic_model` on a `.bin` pair file, at every epoch end (and every `eval_freq` batches).

    Images are embedded (plus the flipped copy with `flip`), L2-normalized, and scored by the best cosine
    threshold over all pairs; `PCA_acc` adds the 10-fold protocol's mean ± std. On improvement (>= the
    previous best) with `save_model` set, the basic model is saved as
    `checkpoints/<save_model>_basic_<name>_epoch_<epoch>_<accuracy>.h5`, replacing the previous best of that name;
    with `keep_best` its weights are kept in `best_snapshot` for the run's next checkpoint commit instead.
    Usage:
        ee = eval_callback(basic_model, "/datasets/faces_emore/lfw.bin", batch_size=64)
        ee.on_epoch_end(0)  # or model.fit(..., callbacks=[ee])
    """

    def __init__(self, basic_model, test_bin_file, batch_size=128, save_model=None, eval_freq=1, flip=True, PCA_acc=False, keep_best=False):
        super().__init__()
        self.test_names = os.path.splitext(os.path.basename(test_bin_file))[0]
        self.images, self.test_issame = face_io.load_bin(test_bin_file, image_size=_model_image_size(basic_model))
        check_both_pair_kinds(self.test_issame, test_bin_file)
        self.basic_model = basic_model
        self.batch_size, self.save_model, self.eval_freq = batch_size, save_model, eval_freq
        self.flip, self.PCA_acc = flip, PCA_acc
        self.max_accuracy, self.cur_acc, self.acc_thresh = 0.0, 0.0, 0.0
        self.is_improved, self.embs, self.cur_epoch = False, None, 0
        self.keep_best, self.best_snapshot = keep_best, None

    def on_epoch_begin(self, epoch, logs=None):
        self.cur_epoch = epoch

    def on_epoch_end(self, epoch=0, logs=None):
        self.cur_epoch = epoch
        self.evaluate_and_save(str(epoch + 1))

    def on_train_batch_end(self, batch, logs=None):
        if self.eval_freq > 1 and (batch + 1) % self.eval_freq == 0:
            self.evaluate_and_save("{}_batch_{}".format(self.cur_epoch + 1, batch + 1))

    def predict_embeddings(self):
        """Summed (with flip) but not normalized embeddings of all images."""
        embed = face_io.embedding_function(self.basic_model, self.images.shape[1:], flip=self.flip)
        return face_io.run_batches(embed, self.images, self.batch_size, "Evaluating " + self.test_names)

    def evaluate_and_save(self, step_name):
        """Score the current model, print the `>>>>` lines, save on improvement. `step_name` is e.g. "3" or "3_batch_1000"."""
        self.is_improved = False
        embeddings = self.predict_embeddings()
        if not np.isfinite(embeddings).all():
            print(">>>> NaN / Inf in {} embeddings, not a good one, skip evaluating".format(self.test_names))
            return
        self.embs = l2_normalize(embeddings)
        similarities = np.sum(self.embs[0::2] * self.embs[1::2], axis=1)
        self.cur_acc, self.acc_thresh = best_threshold_accuracy(similarities, self.test_issame)
        message = ">>>> {} evaluation max accuracy: {:f}, thresh: {:f}, previous max accuracy: {:f}".format(
            self.test_names, self.cur_acc, self.acc_thresh, self.max_accuracy
        )
        if self.PCA_acc:
            accuracy = evaluate(self.embs, self.test_issame, nrof_folds=10)[2]
            message += ", PCA accuray = {:f} ± {:f}".format(accuracy.mean(), accuracy.std())
        print(message)
        if self.cur_acc >= self.max_accuracy:
            print(">>>> Improved = {:f}".format(self.cur_acc - self.max_accuracy))
            self.max_accuracy, self.is_improved = self.cur_acc, True
            if self.save_model:
                self._save_best(step_name)
            if self.keep_best:
                self.best_snapshot = (step_name, self.max_accuracy, self.basic_model.get_weights())

    def _save_best(self, step_name):
        """Save the basic model atomically, then remove the previous best of the same name unless it is better."""
        run = checkpoints.RunCheckpoint(self.save_model + ".h5")
        save_path = run.best_basic_path(self.test_names, step_name, self.max_accuracy)
        print(">>>> Saving model to: {}".format(save_path))
        with io_utils.atomic_path(save_path) as tmp:
            self.basic_model.save(tmp, include_optimizer=False)
        checkpoints.remove_worse_best(run.best_basic_files(self.test_names), save_path)
