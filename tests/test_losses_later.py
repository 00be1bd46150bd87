"""The original Keras_insightface's later losses (issue 15) against NumPy references written from its definitions."""
import math

import keras
import numpy as np
import pytest

from keras_insightface import losses, train
from tests.helpers import tiny_basic_model
from tests.test_losses import make_batch, run_loss, softmax_ce

RNG = np.random.default_rng(7)
EPS = 1e-7  # keras.config.epsilon()


def l2n(xx):
    return xx / np.maximum(np.linalg.norm(xx, axis=-1, keepdims=True), 1e-6)


def with_target(y_true, cos, target):
    logits = cos.copy()
    logits[y_true.astype(bool)] = target
    return logits


def test_airface_target_is_linear_in_the_angle():
    y_true, cos = make_batch()
    target = cos[y_true.astype(bool)]
    expected = softmax_ce(y_true, with_target(y_true, cos, 1 - 2 * (np.arccos(target) + 0.4) / np.pi) * 64)
    np.testing.assert_allclose(run_loss(losses.AirFaceLoss(dtype="float64"), y_true, cos), expected, rtol=1e-5, atol=1e-5)


def adacos_reference(y_true, cos, scale, max_median=np.pi / 4):
    """One AdaCos step of the original: new scale from B_avg and the (batch // 2 - 1)-th target angle, then softmax CE."""
    theta = np.sort(np.arccos(cos[y_true.astype(bool)]))
    b_avg = np.mean(np.sum(np.where(y_true == 1, 0, np.exp(scale * cos)), axis=1))
    new_scale = np.log(b_avg) / np.cos(min(max_median, theta[len(cos) // 2 - 1]))
    return softmax_ce(y_true, cos * new_scale), new_scale


def test_adacos_adapts_its_scale_each_batch():
    loss = losses.AdaCosLoss(num_classes=7, dtype="float64")
    scale = math.sqrt(2) * math.log(6)
    assert loss.scale == pytest.approx(scale)
    for _ in range(2):
        y_true, cos = make_batch(batch=10)
        cos = np.clip(cos, -0.999, 0.999)
        expected, scale = adacos_reference(y_true, cos, scale)
        np.testing.assert_allclose(run_loss(loss, y_true, cos), expected, rtol=1e-5)
        assert float(loss.adaptive_scale.numpy()) == pytest.approx(scale, rel=1e-5)
    assert losses.AdaCosLoss.from_config(loss.get_config()).scale == pytest.approx(scale, rel=1e-5)


@pytest.mark.parametrize("power, scale", [(2, 0.4), (2, 0.0), (1, 0.5)])
def test_margin_softmax_on_probabilities(power, scale):
    y_true, cos = make_batch(batch=6)
    prob = np.exp(cos) / np.exp(cos).sum(-1, keepdims=True)
    target = prob[y_true.astype(bool)]
    margined = {(2, 0.4): (target**2 + 0.4 * target) / 2, (2, 0.0): target**2, (1, 0.5): target * 0.5}[(power, scale)]
    out = with_target(y_true, prob, margined) * 1.5
    out = np.clip(out / out.sum(-1, keepdims=True), EPS, 1 - EPS)
    expected = -np.sum(y_true * np.log(out), axis=-1)
    loss = losses.MarginSoftmax(power=power, scale=scale, scale_all=1.5, dtype="float64")
    np.testing.assert_allclose(run_loss(loss, y_true, prob), expected, rtol=1e-6)
    assert train.guess_loss_type(loss) == "softmax"


def test_distill_kl_divergence():
    teacher, student = RNG.uniform(-1, 1, (5, 7)), RNG.uniform(-1, 1, (5, 7))
    soft = lambda xx: np.exp(10 * xx) / np.exp(10 * xx).sum(-1, keepdims=True)  # noqa: E731
    pp, qq = np.clip(soft(teacher), EPS, 1), np.clip(soft(student), EPS, 1)
    expected = np.sum(pp * np.log(pp / qq), axis=-1)
    loss = losses.DistillKLDivergenceLoss(scale=10, dtype="float64")
    np.testing.assert_allclose(run_loss(loss, teacher, student), expected, rtol=1e-6)


def test_center_loss_cosine_value_and_update():
    loss = losses.CenterLossCosine(num_classes=3, emb_shape=4, alpha=0.5, dtype="float64")
    labels = np.array([0, 1, 0, 2, 1])
    emb = RNG.normal(size=(5, 4))
    centers = RNG.normal(size=(3, 4)).astype("float32")
    loss.centers.assign(centers)
    expected = 1 - np.sum(l2n(emb) * l2n(centers[labels]), axis=-1)
    np.testing.assert_allclose(run_loss(loss, np.eye(3)[labels], emb), expected, rtol=1e-5)
    counts = np.bincount(labels, minlength=3)[labels]
    new_centers = centers.astype("float64").copy()
    np.subtract.at(new_centers, labels, 0.5 * (centers[labels] - emb) / (1 + counts)[:, None])
    np.testing.assert_allclose(loss.centers.numpy(), new_centers, rtol=1e-5, atol=1e-6)
    zero = losses.CenterLossCosine(num_classes=3, emb_shape=4, dtype="float64")
    np.testing.assert_allclose(run_loss(zero, np.eye(3)[labels], emb), np.ones(5))


def arc_positive(pos, alpha, test_margined=False):
    margined = np.cos(np.arccos(np.clip(pos, -1, 1)) + alpha)
    return np.where((margined if test_margined else pos) > np.cos(np.pi - alpha), margined, -2 - margined)


def test_arc_batch_hard_triplet_brute_force():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3])  # class 3 has a single sample
    emb = RNG.normal(size=(8, 5))
    sim, expected = l2n(emb) @ l2n(emb).T, []
    for a in range(8):
        pos = min(sim[a, p] for p in range(8) if labels[p] == labels[a])
        neg = max([sim[a, n] for n in range(8) if labels[n] != labels[a]] or [-1.0])
        expected.append(max(neg - arc_positive(pos, 0.3), 0.0))
    np.testing.assert_allclose(run_loss(losses.ArcBatchHardTripletLoss(0.3), np.eye(4)[labels], emb), expected, rtol=1e-5, atol=1e-6)
    one_class = run_loss(losses.ArcBatchHardTripletLoss(0.3), np.zeros(4, "int32"), emb[:4])
    np.testing.assert_allclose(one_class, 0.0, atol=1e-6)


def euclidean_reference(labels, emb, alpha):
    dist = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    out = []
    for a in range(len(labels)):
        pos = max(dist[a, p] for p in range(len(labels)) if labels[p] == labels[a])
        neg = min([dist[a, n] for n in range(len(labels)) if labels[n] != labels[a]] or [dist.max()])
        out.append(max(pos + alpha - neg, 0.0))
    return np.array(out), dist.mean()


def test_batch_hard_triplet_euclidean_and_auto_alpha():
    labels = np.array([0, 1, 0, 2, 1, 2])
    emb = RNG.normal(size=(6, 4)) * 0.5
    expected, mean_dist = euclidean_reference(labels, emb, 0.35)
    np.testing.assert_allclose(run_loss(losses.BatchHardTripletLossEuclidean(), labels, emb), expected, rtol=1e-5, atol=1e-5)
    auto = losses.BatchHardTripletLossEuclideanAutoAlpha(alpha=0.1, init_auto_alpha=1.0)
    np.testing.assert_allclose(run_loss(auto, labels, emb), euclidean_reference(labels, emb, 1.0)[0], rtol=1e-5, atol=1e-5)
    assert float(auto.auto_alpha.numpy()) == pytest.approx(0.1 * mean_dist, rel=1e-5)
    second, _ = euclidean_reference(labels, emb * 2, 0.1 * mean_dist)
    np.testing.assert_allclose(run_loss(auto, labels, emb * 2), second, rtol=1e-5, atol=1e-5)


def test_offline_triplet_losses_on_anchor_positive_negative_batches():
    emb = RNG.normal(size=(9, 4))  # three triplets [a, p, n]
    anchor, pos, neg = l2n(emb[0::3]), l2n(emb[1::3]), l2n(emb[2::3])
    pos_sim, neg_sim = (anchor * pos).sum(-1), (anchor * neg).sum(-1)
    np.testing.assert_allclose(run_loss(losses.OfflineTripletLoss(0.35), np.zeros(9), emb), np.maximum(neg_sim - pos_sim + 0.35, 0), rtol=1e-5)
    expected = np.maximum(neg_sim - arc_positive(pos_sim, 0.35, test_margined=True), 0)
    np.testing.assert_allclose(run_loss(losses.OfflineArcTripletLoss(0.35), np.zeros(9), emb), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, loss_type",
    [
        (lambda: losses.AirFaceLoss(scale=16), "arcface"),
        (lambda: losses.AdaCosLoss(num_classes=4), "arcface"),
        (lambda: losses.ArcBatchHardTripletLoss(), "triplet"),
        (lambda: losses.BatchHardTripletLossEuclideanAutoAlpha(), "triplet"),
        (lambda: losses.CenterLossCosine(4, 16), "center"),
    ],
)
def test_new_losses_train_a_plan(dataset, make, loss_type):
    loss = make()
    assert train.guess_loss_type(loss) == loss_type
    tt = train.Train(dataset, "later.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": loss, "epoch": 1, "optimizer": "adam"}])
    assert np.isfinite(tt.model.history.history["loss"]).all()


def acr_trip_reference(labels, emb, cos, margin=0.5, scale=16.0, label_smoothing=0.0):
    """The original AcrTripLoss, written per sample: the ArcFace target logit minus max(0, hardest neg - hardest pos)."""
    sim = l2n(emb) @ l2n(emb).T
    y_true = np.eye(cos.shape[1])[labels]
    target = cos[np.arange(len(labels)), labels]
    margined = np.cos(np.arccos(target) + margin)
    margined = np.where(target > np.cos(np.pi - margin), margined, target - margin * np.sin(margin))  # see docs/losses.md
    for a in range(len(labels)):
        pos = min(sim[a, p] for p in range(len(labels)) if labels[p] == labels[a])
        neg = max([sim[a, n] for n in range(len(labels)) if labels[n] != labels[a]] or [-1.0])
        margined[a] -= max(neg - pos, 0.0)
    return softmax_ce(y_true, with_target(y_true, cos, margined) * scale, label_smoothing)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_acr_trip_loss_against_the_originals_formula(label_smoothing):
    labels = np.array([0, 1, 0, 2, 1, 3, 2, 0])  # class 3 has a single sample
    emb, cos = RNG.normal(size=(8, 6)), RNG.uniform(-0.8, 0.95, size=(8, 5))
    cos[1, labels[1]] = -0.95  # past cos(pi - margin): the boundary rule
    loss = losses.AcrTripLoss(margin=0.5, scale=16.0, label_smoothing=label_smoothing, emb_shape=6, dtype="float64")
    expected = acr_trip_reference(labels, emb, cos, label_smoothing=label_smoothing)
    outputs = np.concatenate([emb, cos], axis=1)
    np.testing.assert_allclose(run_loss(loss, labels, outputs), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_loss(loss, np.eye(5)[labels], outputs), expected, rtol=1e-5, atol=1e-6)
    arcface_only = run_loss(losses.ArcfaceLossSimple(0.5, 16.0, label_smoothing=label_smoothing, dtype="float64"), labels, cos)
    assert np.sum(~np.isclose(expected, arcface_only)) >= 4  # the triplet term is active on these embeddings
    restored = losses.AcrTripLoss.from_config(loss.get_config())
    assert (restored.emb_shape, restored.margin, restored.label_smoothing) == (6, 0.5, label_smoothing)
    assert train.guess_loss_type(loss) == "arcface"
    with pytest.raises(ValueError, match="emb_shape=6"):
        run_loss(loss, labels, emb)


def test_acr_trip_loss_trains_on_the_concatenated_output(dataset):
    tt = train.Train(dataset, "acr.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": losses.AcrTripLoss(scale=16, emb_shape=16), "epoch": 1, "optimizer": "adam"}])
    assert tt.model.output_shape == (None, 16 + 4)  # embedding, then the 4 cosines
    history = tt.model.history.history
    assert np.isfinite(history["loss"]).all() and 0 <= history["accuracy"][0] <= 1
    y_pred = np.concatenate([np.full((3, 16), 9.0), np.eye(4)[[2, 0, 3]]], axis=1)  # argmax over all columns would be 0
    accuracy = keras.ops.convert_to_numpy(losses.accuracy_after_embedding(np.array([2, 1, 3]), y_pred, emb_shape=16))
    np.testing.assert_array_equal(accuracy, [1, 0, 1])
    with pytest.raises(ValueError, match="AcrTripLoss\\(emb_shape=512\\): the basic model's embedding has 16 features"):
        tt.train([{"loss": losses.AcrTripLoss(), "epoch": 1}], 1)
