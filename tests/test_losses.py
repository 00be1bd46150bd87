"""Tests of losses.py against NumPy references written here from the papers' formulas."""
import math
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import keras
import tensorflow as tf

from keras_insightface import losses
from keras_insightface.models import NormDense

RNG = np.random.default_rng(42)
NUM_CLASSES = 7


# ---------- NumPy references ----------
def softmax_ce(y_true, logits, label_smoothing=0.0):
    """Keras categorical cross-entropy from logits, with Keras' label smoothing."""
    y_true = y_true * (1 - label_smoothing) + label_smoothing / y_true.shape[-1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(y_true * log_prob).sum(axis=-1)


def arcface_target(cos_t, margin):
    """insightface ArcFace, easy_margin=False: cos(theta + m) when cos_t > cos(pi - m), else cos_t - m * sin(m)."""
    theta = np.arccos(np.clip(cos_t, -1, 1))
    return np.where(cos_t > math.cos(math.pi - margin), np.cos(theta + margin), cos_t - margin * math.sin(margin))


def margin_softmax(y_true, cos, target_logit, scale, label_smoothing=0.0, other=None):
    logits = (cos if other is None else other).copy()
    rows = np.arange(len(cos))
    logits[rows, y_true.argmax(-1)] = target_logit
    return softmax_ce(y_true, logits * scale, label_smoothing)


def target_of(y_true, cos):
    return cos[np.arange(len(cos)), y_true.argmax(-1)]


def make_batch(batch=24, num_classes=NUM_CLASSES, extreme_targets=()):
    """Random cosines in [-1, 1] whose first targets are the given extreme values; exact +/-1 and 0 elsewhere too."""
    labels = RNG.integers(0, num_classes, size=batch)
    cos = RNG.uniform(-1, 1, size=(batch, num_classes))
    cos[0, :] = 1.0
    cos[1, :] = -1.0
    cos[2, (labels[2] + 1) % num_classes] = 0.0
    rows = np.arange(len(extreme_targets)) + 3
    cos[rows, labels[rows]] = extreme_targets
    return np.eye(num_classes)[labels], cos


ARC_BOUNDARY = math.cos(math.pi - 0.5)
EXTREMES = (1.0, -1.0, 0.0, ARC_BOUNDARY + 1e-3, ARC_BOUNDARY - 1e-3, 0.999999, -0.999999)


def run_loss(loss, y_true, y_pred):
    """Per-sample loss values (reduction off, float64 math)."""
    return keras.ops.convert_to_numpy(loss.call(keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(y_pred)))


# ---------- margin losses ----------
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_arcface_matches_insightface(label_smoothing):
    y_true, cos = make_batch(extreme_targets=EXTREMES)
    loss = losses.ArcfaceLoss(scale=64.0, label_smoothing=label_smoothing, dtype="float64")
    expected = margin_softmax(y_true, cos, arcface_target(target_of(y_true, cos), 0.5), 64.0, label_smoothing)
    np.testing.assert_allclose(run_loss(loss, y_true, cos), expected, rtol=1e-5, atol=1e-5)
    simple = losses.ArcfaceLossSimple(margin=0.5, scale=64.0, label_smoothing=label_smoothing, dtype="float64")
    np.testing.assert_allclose(run_loss(simple, y_true, cos), expected, rtol=1e-5, atol=1e-5)


def test_arcface_boundary_both_sides():
    margin = 0.5
    above, below = ARC_BOUNDARY + 1e-4, ARC_BOUNDARY - 1e-4
    got = keras.ops.convert_to_numpy(losses.combined_margin(np.array([above, below]), 1.0, margin, 0.0))
    # above: theta + m just under pi, so cos(theta + m) is close to -1
    np.testing.assert_allclose(got[0], math.cos(math.acos(above) + margin), atol=1e-6)
    assert got[0] > -1.0
    # below: insightface's fallback cos_t - m * sin(m), not cos(theta + m) which would wrap back up
    np.testing.assert_allclose(got[1], below - margin * math.sin(margin), atol=1e-6)
    assert math.cos(math.acos(below) + margin) > -1.0 > got[1]
    grid = np.linspace(-1, 1, 4001)
    curve = keras.ops.convert_to_numpy(losses.combined_margin(grid, 1.0, margin, 0.0))
    assert np.all(np.diff(curve) > 0), "target logit must rise with the cosine (fall with theta)"


def test_combined_margin_general_rule():
    """margin1 != 1: boundary cos((pi - m2) / m1), fallback as stated in the docstring; m3 shifts both."""
    m1, m2, m3 = 1.2, 0.3, 0.2
    boundary = math.cos((math.pi - m2) / m1)
    y_true, cos = make_batch(extreme_targets=(1.0, -1.0, boundary + 1e-3, boundary - 1e-3))
    cos_t = target_of(y_true, cos)
    theta = np.arccos(np.clip(cos_t, -1, 1))
    fallback = cos_t - boundary - math.cos(m2) - m2 * math.sin(m2) - m3
    target = np.where(cos_t > boundary, np.cos(m1 * theta + m2) - m3, fallback)
    loss = losses.ArcfaceLoss(m1, m2, m3, scale=32.0, dtype="float64")
    np.testing.assert_allclose(run_loss(loss, y_true, cos), margin_softmax(y_true, cos, target, 32.0), rtol=1e-5, atol=1e-5)
    grid = np.linspace(-1, 1, 4001)
    assert np.all(np.diff(keras.ops.convert_to_numpy(losses.combined_margin(grid, m1, m2, m3))) > 0)


def test_cosface_and_scale_softmax():
    y_true, cos = make_batch(extreme_targets=EXTREMES)
    expected = margin_softmax(y_true, cos, target_of(y_true, cos) - 0.35, 64.0)
    loss = losses.CosFaceLoss(margin=0.35, scale=64.0, dtype="float64")
    np.testing.assert_allclose(run_loss(loss, y_true, cos), expected, rtol=1e-5, atol=1e-5)
    got = keras.ops.convert_to_numpy(losses.scale_softmax(y_true, cos, scale=16.0))
    np.testing.assert_allclose(got, softmax_ce(y_true, cos * 16.0), rtol=1e-5, atol=1e-5)


def curricular_reference(y_true, cos, t, margin, scale, label_smoothing=0.0):
    """CurricularFace per-sample loss: hard negatives c > cos(theta_y + m) become c * (t + c)."""
    cos_t = target_of(y_true, cos)
    cos_theta_m = np.cos(np.arccos(cos_t) + margin)
    other = np.where(cos > cos_theta_m[:, None], cos * (t + cos), cos)
    return margin_softmax(y_true, cos, arcface_target(cos_t, margin), scale, label_smoothing, other=other)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_curricular_face_with_running_t(label_smoothing):
    loss = losses.CurricularFaceLoss(margin=0.5, scale=64.0, alpha=0.99, label_smoothing=label_smoothing, dtype="float64")
    t = 0.0
    for _ in range(2):
        y_true, cos = make_batch(extreme_targets=EXTREMES)
        t = 0.99 * t + 0.01 * target_of(y_true, cos).mean()
        expected = curricular_reference(y_true, cos, t, 0.5, 64.0, label_smoothing)
        np.testing.assert_allclose(run_loss(loss, y_true, cos), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(loss.t.numpy()), t, rtol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_curricular_face_gradient_matches_finite_differences(label_smoothing):
    """The hand-written backward pass equals central differences of the NumPy formula (t, threshold held)."""
    labels = RNG.integers(0, 6, size=5)
    y_true = np.eye(6)[labels]
    cos = RNG.uniform(-0.8, 0.95, size=(5, 6))
    loss = losses.CurricularFaceLoss(margin=0.5, scale=16.0, alpha=1.0, label_smoothing=label_smoothing, dtype="float64")
    loss.t.assign(0.3)
    cos_tensor = tf.constant(cos)
    with tf.GradientTape() as tape:
        tape.watch(cos_tensor)
        total = tf.reduce_sum(loss.call(tf.constant(y_true), cos_tensor))
    got = tape.gradient(total, cos_tensor).numpy()
    expected = np.zeros_like(cos)
    eps = 1e-6
    for index in np.ndindex(*cos.shape):
        step = np.zeros_like(cos)
        step[index] = eps
        plus = curricular_reference(y_true, cos + step, 0.3, 0.5, 16.0, label_smoothing).sum()
        minus = curricular_reference(y_true, cos - step, 0.3, 0.5, 16.0, label_smoothing).sum()
        expected[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_curricular_face_refuses_probabilities():
    with pytest.raises(ValueError, match="from_logits"):
        losses.CurricularFaceLoss(from_logits=False)


def with_norm(cos, norms):
    return np.concatenate([cos, norms[:, None]], axis=-1)


def test_magface():
    y_true, cos = make_batch(extreme_targets=EXTREMES)
    norms = RNG.uniform(1, 150, size=len(cos))
    a = np.clip(norms, 10, 110)
    margin = (0.8 - 0.45) / (110 - 10) * (a - 10) + 0.45
    cos_t = target_of(y_true, cos)
    theta = np.arccos(np.clip(cos_t, -1, 1))
    target = np.where(cos_t > np.cos(np.pi - margin), np.cos(theta + margin), cos_t - margin * np.sin(margin))
    expected = margin_softmax(y_true, cos, target, 64.0) + 35.0 * (a / 110**2 + 1 / a)
    loss = losses.MagFaceLoss(scale=64.0, dtype="float64")
    np.testing.assert_allclose(run_loss(loss, y_true, with_norm(cos, norms)), expected, rtol=1e-5, atol=1e-5)


def magface_original_keras(y_true, cos_with_negative_norm, scale=64.0):
    """The original Keras_insightface MagFaceLoss: its NormDense appends -norm; every cosine is clipped to
    +/-(1 - 1e-3); target logit min(cos(theta + m), cos); regularizer lambda * (a / u_a**2 + 1 / a)."""
    cos, norm = cos_with_negative_norm[:, :-1], -cos_with_negative_norm[:, -1]
    cos = np.clip(cos, -1 + 1e-3, 1 - 1e-3)
    a = np.clip(norm, 10, 110)
    margin = ((0.8 - 0.45) / (110 - 10) * (a - 10) + 0.45)[:, None]
    margined = cos * np.cos(margin) - np.sqrt(np.maximum(1 - cos**2, 0)) * np.sin(margin)
    logits = np.minimum(np.where(y_true > 0, margined, cos), cos) * scale
    return softmax_ce(y_true, logits) + 35.0 * (a / 110**2 + 1 / a)


def test_magface_equals_the_original_keras_on_regular_cosines_and_either_norm_sign():
    """Cosines within +/-0.99 and margins below pi - theta: the original's clip and min() change nothing."""
    labels = RNG.integers(0, NUM_CLASSES, size=16)
    y_true = np.eye(NUM_CLASSES)[labels]
    cos = RNG.uniform(-0.99, 0.99, size=(16, NUM_CLASSES))
    cos[np.arange(16), labels] = RNG.uniform(-0.3, 0.99, size=16)  # theta + m(a) < pi for m <= 0.8
    norms = RNG.uniform(1, 150, size=16)
    loss = losses.MagFaceLoss(scale=64.0, dtype="float64")
    expected = magface_original_keras(y_true, with_norm(cos, -norms))
    np.testing.assert_allclose(run_loss(loss, y_true, with_norm(cos, -norms)), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run_loss(loss, y_true, with_norm(cos, norms)), expected, rtol=1e-6, atol=1e-6)


def test_adaface_with_running_norm_statistics():
    loss = losses.AdaFaceLoss(margin=0.4, h=0.333, scale=64.0, t_alpha=0.01, dtype="float64")
    mean, std = 20.0, 100.0
    for _ in range(2):
        y_true, cos = make_batch(extreme_targets=EXTREMES)
        norms = RNG.uniform(5, 40, size=len(cos))
        safe = np.clip(norms, 0.001, 100)
        mean = 0.01 * safe.mean() + 0.99 * mean
        std = 0.01 * safe.std(ddof=1) + 0.99 * std
        scaler = np.clip(0.333 * (safe - mean) / (std + 1e-3), -1, 1)
        clipped = np.clip(cos, -1 + 1e-3, 1 - 1e-3)  # official AdaFace and the original clip every cosine
        theta = np.arccos(target_of(y_true, clipped))
        target = np.cos(np.clip(theta - 0.4 * scaler, 1e-3, np.pi - 1e-3)) - (0.4 + 0.4 * scaler)
        expected = margin_softmax(y_true, clipped, target, 64.0)
        np.testing.assert_allclose(run_loss(loss, y_true, with_norm(cos, norms)), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose([float(loss.batch_mean.numpy()), float(loss.batch_std.numpy())], [mean, std], rtol=1e-5)


MARGIN_LOSS_FACTORIES = {
    "arcface": lambda: losses.ArcfaceLoss(),
    "arcface_combined": lambda: losses.ArcfaceLoss(0.9, 0.4, 0.15),
    "arcface_simple": lambda: losses.ArcfaceLossSimple(),
    "cosface": lambda: losses.CosFaceLoss(),
    "curricular": lambda: losses.CurricularFaceLoss(),
    "magface": lambda: losses.MagFaceLoss(),
    "adaface": lambda: losses.AdaFaceLoss(),
    "airface": lambda: losses.AirFaceLoss(),
    "adacos": lambda: losses.AdaCosLoss(num_classes=7),
    "distill_kl": lambda: losses.DistillKLDivergenceLoss(),
}


@pytest.mark.parametrize("name", sorted(MARGIN_LOSS_FACTORIES))
def test_gradients_finite_at_unit_cosines(name):
    loss = MARGIN_LOSS_FACTORIES[name]()
    y_true = np.eye(4, dtype="float32")[[0, 1, 2, 3]]
    cos = np.array([[1, -1, 0, 1], [-1, -1, 1, 0.5], [1, 1, -1, -1], [0.3, -1, 1, 1]], dtype="float32")
    if losses.needs_feature_norm(loss):
        cos = with_norm(cos, np.array([0.0, 1.0, 20.0, 200.0])).astype("float32")
    cos = tf.constant(cos)
    with tf.GradientTape() as tape:
        tape.watch(cos)
        value = loss(y_true, cos)
    grad = tape.gradient(value, cos).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", sorted(MARGIN_LOSS_FACTORIES))
def test_gradients_finite_for_zero_embedding_through_norm_dense(name):
    loss = MARGIN_LOSS_FACTORIES[name]()
    head = NormDense(5, append_norm=losses.needs_feature_norm(loss))
    embedding = tf.zeros((3, 8))
    y_true = np.eye(5, dtype="float32")[[0, 3, 4]]
    with tf.GradientTape() as tape:
        tape.watch(embedding)
        value = loss(y_true, head(embedding))
    grad_embedding, grad_kernel = tape.gradient(value, [embedding, head.trainable_weights[0]])
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad_embedding.numpy())) and np.all(np.isfinite(grad_kernel.numpy()))


@pytest.mark.parametrize("name", sorted(MARGIN_LOSS_FACTORIES))
def test_margin_losses_train_in_compiled_fit(name):
    loss = MARGIN_LOSS_FACTORIES[name]()
    inputs = keras.Input((8,))
    model = keras.Model(inputs, NormDense(4, append_norm=losses.needs_feature_norm(loss))(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    x = RNG.normal(size=(16, 8)).astype("float32")
    y = np.eye(4, dtype="float32")[RNG.integers(0, 4, 16)]
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_sub_center_norm_dense_with_arcface():
    inputs = keras.Input((8,))
    head = NormDense(5, loss_top_k=3, name="NormDense")
    model = keras.Model(inputs, head(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.ArcfaceLoss(scale=16.0))
    x = RNG.normal(size=(20, 8)).astype("float32")
    y = np.eye(5, dtype="float32")[RNG.integers(0, 5, 20)]
    history = model.fit(x, y, batch_size=10, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    kernel = keras.ops.convert_to_numpy(head.trainable_weights[0])
    assert kernel.shape == (8, 15)
    cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True))
    expected = np.stack([cosine[:, c * 3 : c * 3 + 3].max(axis=1) for c in range(5)], axis=1)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


# ---------- center loss ----------
def center_update(centers, labels, embeddings, alpha):
    """Wen et al. 2016: c_j -= alpha * sum_{i: y_i=j} (c_j - x_i) / (1 + n_j)."""
    new = centers.copy()
    for j in np.unique(labels):
        members = labels == j
        new[j] -= alpha * (centers[j] - embeddings[members]).sum(axis=0) / (1 + members.sum())
    return new


def test_center_loss_value_and_update_rule():
    centers = RNG.normal(size=(6, 4)).astype("float32")
    labels = np.array([0, 2, 2, 5, 0, 2])
    embeddings = RNG.normal(size=(6, 4)).astype("float32")
    loss = losses.CenterLoss(6, 4, alpha=0.5, factor=0.3)
    loss.centers.assign(centers)
    value = float(loss(np.eye(6, dtype="float32")[labels], embeddings))
    # the original Keras_insightface: reduce_sum(square(x - c), -1) / 2 per sample (Wen et al.'s 1/2 ||x - c||^2)
    expected = 0.3 * ((embeddings - centers[labels]) ** 2).sum(axis=1).mean() / 2
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(loss.centers.numpy(), center_update(centers, labels, embeddings, 0.5), rtol=1e-5, atol=1e-6)
    loss(labels[:, None].astype("float32"), embeddings)  # integer labels work too


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_center_loss_updates_inside_compiled_fit():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, trainable=False)(inputs))
    loss = losses.CenterLoss(5, 3, alpha=0.5)
    model.compile(optimizer="sgd", loss=loss)
    x = RNG.normal(size=(12, 4)).astype("float32")
    labels = RNG.integers(0, 5, size=12)
    model.fit(x, np.eye(5, dtype="float32")[labels], batch_size=6, epochs=1, shuffle=False, verbose=0)
    embeddings = x @ keras.ops.convert_to_numpy(model.layers[-1].kernel)
    expected = np.zeros((5, 3), dtype="float32")
    for start in (0, 6):
        expected = center_update(expected, labels[start : start + 6], embeddings[start : start + 6], 0.5)
    np.testing.assert_allclose(loss.centers.numpy(), expected, rtol=1e-5, atol=1e-6)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    sys.path.insert(0, sys.argv[1])
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, losses
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False, trainable=False)(inputs))
        loss = losses.CenterLoss(6, 3, alpha=0.5)
        model.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    labels = np.array([0, 1, 1, 2, 3, 4, 4, 5])
    model.fit(x, np.eye(6, dtype="float32")[labels], batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.save(sys.argv[2], np.concatenate([x @ model.layers[-1].kernel.numpy(), loss.centers.numpy()]))
    """
)


def test_center_loss_under_mirrored_strategy(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "result.npy"
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    run = subprocess.run([sys.executable, str(script), repo, str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = np.load(out)
    embeddings, centers = result[:8], result[8:]
    labels = np.array([0, 1, 1, 2, 3, 4, 4, 5])  # each class on one replica only: the deltas simply add up
    expected = center_update(np.zeros((6, 3), dtype="float32"), labels, embeddings, 0.5)
    np.testing.assert_allclose(centers, expected, rtol=1e-5, atol=1e-6)


def test_center_loss_save_and_reload(tmp_path):
    path = tmp_path / "model_centers.npy"
    loss = losses.CenterLoss(4, 3)
    loss.centers.assign(RNG.normal(size=(4, 3)).astype("float32"))
    loss.save_centers(str(path))
    assert sorted(os.listdir(tmp_path)) == ["model_centers.npy"]
    reloaded = losses.CenterLoss(4, 3, initial_file=str(path))
    np.testing.assert_array_equal(reloaded.centers.numpy(), loss.centers.numpy())
    assert not losses.CenterLoss(4, 3, initial_file=str(tmp_path / "missing.npy")).centers.numpy().any()
    with pytest.raises(ValueError, match="model_centers.npy"):
        losses.CenterLoss(5, 3, initial_file=str(path))


# ---------- triplet ----------
def cosine_distance(emb):
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return 1 - emb @ emb.T


def batch_hard_reference(labels, emb, alpha):
    dist, out = cosine_distance(emb), []
    for a in range(len(labels)):
        negatives = [dist[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        positives = [dist[a, p] for p in range(len(labels)) if labels[p] == labels[a]]  # includes a itself
        out.append(max(max(positives) - min(negatives) + alpha, 0.0) if negatives else 0.0)
    return np.mean(out)


def batch_all_original_reference(labels, emb, alpha):
    """The original Keras_insightface BatchAllTripletLoss, per anchor, on cosine similarity s:
    mean over same-label p (anchor included) of 1 - s(a, p), plus the sum of s(a, n) over other-label n with
    min_p s(a, p) - s(a, n) < alpha, divided by (their count + 1); then the mean over anchors."""
    sim, out = 1 - cosine_distance(emb), []
    for a in range(len(labels)):
        positives = [sim[a, p] for p in range(len(labels)) if labels[p] == labels[a]]
        hardest = min(positives)
        violating = [sim[a, n] for n in range(len(labels)) if labels[n] != labels[a] and hardest - sim[a, n] < alpha]
        out.append(np.mean([1 - v for v in positives]) + sum(violating) / (len(violating) + 1))
    return np.mean(out)


def batch_all_reference(labels, emb, alpha):
    dist, values = cosine_distance(emb), []
    n_samples = len(labels)
    for a in range(n_samples):
        for p in range(n_samples):
            for n in range(n_samples):
                if p != a and labels[p] == labels[a] and labels[n] != labels[a]:
                    values.append(max(dist[a, p] - dist[a, n] + alpha, 0.0))
    positive = [v for v in values if v > 0]
    return np.mean(positive) if positive else 0.0


@pytest.mark.parametrize("one_hot", [True, False])
def test_triplet_losses_against_brute_force(one_hot):
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 0, 2])
    emb = RNG.normal(size=(10, 5)).astype("float32")
    y_true = np.eye(4, dtype="float32")[labels] if one_hot else labels
    for alpha in (0.35, 1.5):
        hard = float(losses.BatchHardTripletLoss(alpha)(y_true, emb))
        np.testing.assert_allclose(hard, batch_hard_reference(labels, emb, alpha), rtol=1e-5, atol=1e-6)
        every = float(losses.BatchAllTripletLossHermans(alpha)(y_true, emb))
        np.testing.assert_allclose(every, batch_all_reference(labels, emb, alpha), rtol=1e-5, atol=1e-6)
    for alpha in (0.1, 0.35, 1.5):
        original = float(losses.BatchAllTripletLoss(alpha)(y_true, emb))
        np.testing.assert_allclose(original, batch_all_original_reference(labels, emb, alpha), rtol=1e-5, atol=1e-6)


# ---------- distillation ----------
def test_distiller_losses():
    teacher, student = RNG.normal(size=(6, 5)), RNG.normal(size=(6, 5))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(losses.distiller_loss_euclidean(teacher, student)), ((teacher - student) ** 2).sum(1), rtol=1e-5
    )
    cosine = (teacher * student).sum(1) / np.linalg.norm(teacher, axis=1) / np.linalg.norm(student, axis=1)
    # the 1e-5 added to each norm (as the original) moves the value by about 1e-5 relative
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.distiller_loss_cosine(teacher, student)), 1 - cosine, rtol=1e-4)


def distiller_cosine_original(teacher, student):
    """The original Keras_insightface: non-finite teacher values -> sqrt(1 / dim); norms + 1e-5."""
    teacher = np.where(np.isfinite(teacher), teacher, np.sqrt(1.0 / teacher.shape[-1]))
    unit_t = teacher / (np.linalg.norm(teacher, axis=-1, keepdims=True) + 1e-5)
    unit_s = student / (np.linalg.norm(student, axis=-1, keepdims=True) + 1e-5)
    return 1 - (unit_t * unit_s).sum(-1)


def test_distiller_loss_cosine_matches_the_original_on_small_and_non_finite_embeddings():
    teacher, student = RNG.normal(size=(5, 4)) * 1e-4, RNG.normal(size=(5, 4)) * 1e-4  # epsilon visible
    teacher[1, 2], teacher[2, :] = np.nan, np.inf
    student[3] = 0.0
    value = keras.ops.convert_to_numpy(losses.distiller_loss_cosine(teacher, student))
    np.testing.assert_allclose(value, distiller_cosine_original(teacher, student), rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(value)) and value[3] == pytest.approx(1.0)


# ---------- serialization and registry ----------
SERIALIZABLE = {
    **MARGIN_LOSS_FACTORIES,
    "arcface_ls": lambda: losses.ArcfaceLoss(margin2=0.45, scale=32.0, label_smoothing=0.1),
    "center": lambda: losses.CenterLoss(7, 3, alpha=0.3, factor=0.5),
    "batch_hard": lambda: losses.BatchHardTripletLoss(0.25),
    "batch_all": lambda: losses.BatchAllTripletLoss(0.3),
    "batch_all_hermans": lambda: losses.BatchAllTripletLossHermans(0.3),
    "center_cosine": lambda: losses.CenterLossCosine(7, 3, alpha=0.3),
    "arc_batch_hard": lambda: losses.ArcBatchHardTripletLoss(0.3),
    "batch_hard_euclidean": lambda: losses.BatchHardTripletLossEuclidean(0.3),
    "batch_hard_euclidean_auto": lambda: losses.BatchHardTripletLossEuclideanAutoAlpha(0.1, 2.0),
    "margin_softmax": lambda: losses.MarginSoftmax(power=2, scale=0.3),
}


@pytest.mark.parametrize("name", sorted(SERIALIZABLE))
def test_serialize_round_trip(name):
    loss = SERIALIZABLE[name]()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    y_true, y_pred = make_batch(num_classes=7)
    if losses.needs_feature_norm(loss):
        y_pred = with_norm(y_pred, np.full(len(y_pred), 30.0))
    elif isinstance(loss, losses.MarginSoftmax):
        y_pred = np.exp(y_pred) / np.exp(y_pred).sum(axis=-1, keepdims=True)  # probabilities
    elif not losses.is_margin_loss(loss):
        y_pred = RNG.normal(size=(len(y_true), 3))  # embeddings
    np.testing.assert_allclose(float(restored(y_true, y_pred)), float(SERIALIZABLE[name]()(y_true, y_pred)), rtol=1e-6)


@pytest.mark.parametrize("function", [losses.scale_softmax, losses.distiller_loss_cosine, losses.distiller_loss_euclidean])
def test_functions_are_registered(function):
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(function)) is function


def test_registry_helpers():
    assert all(losses.is_margin_loss(make()) for make in MARGIN_LOSS_FACTORIES.values())
    assert losses.is_margin_loss(losses.scale_softmax)
    assert not losses.is_margin_loss(keras.losses.CategoricalCrossentropy())
    assert not losses.is_margin_loss(losses.CenterLoss(3, 2))
    assert [name for name, make in sorted(MARGIN_LOSS_FACTORIES.items()) if losses.needs_feature_norm(make())] == ["adaface", "magface"]


# ---------- integer labels ----------
LABEL_EQUIVALENCE_LOSSES = {
    **{name: make for name, make in MARGIN_LOSS_FACTORIES.items() if name != "distill_kl"},  # its y_true is a teacher output
    "arcface_ls": lambda: losses.ArcfaceLoss(scale=32.0, label_smoothing=0.1),
    "curricular_ls": lambda: losses.CurricularFaceLoss(label_smoothing=0.1),
    "scale_softmax": lambda: types.SimpleNamespace(call=losses.scale_softmax),  # run_loss calls .call
    "batch_hard": lambda: losses.BatchHardTripletLoss(0.25),
    "batch_all": lambda: losses.BatchAllTripletLoss(0.3),
    "batch_all_hermans": lambda: losses.BatchAllTripletLossHermans(0.3),
}


@pytest.mark.parametrize("name", sorted(LABEL_EQUIVALENCE_LOSSES))
def test_integer_and_one_hot_labels_give_the_same_loss(name):
    one_hot, y_pred = make_batch(num_classes=7, extreme_targets=EXTREMES)
    labels = one_hot.argmax(-1)
    probe = LABEL_EQUIVALENCE_LOSSES[name]()
    if losses.needs_feature_norm(probe):
        y_pred = with_norm(y_pred, RNG.uniform(5, 120, len(y_pred)))
    elif name.startswith("batch_"):
        y_pred = RNG.normal(size=(len(labels), 5))  # embeddings
    expected = run_loss(LABEL_EQUIVALENCE_LOSSES[name](), one_hot.astype("float32"), y_pred.astype("float32"))
    for y_true in (labels.astype("int32"), labels[:, None].astype("int32")):
        got = run_loss(LABEL_EQUIVALENCE_LOSSES[name](), y_true, y_pred.astype("float32"))  # fresh running statistics
        # one-hot rows go through Keras' cross-entropy, integer labels through logsumexp - target: float32 rounding
        # of logits up to 64 * 1 leaves ~1e-6 absolute
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_center_loss_integer_and_one_hot_labels_agree():
    centers = RNG.normal(size=(6, 4)).astype("float32")
    labels = np.array([0, 2, 2, 5, 0, 2], dtype="int32")
    embeddings = RNG.normal(size=(6, 4)).astype("float32")
    results = []
    for y_true in (np.eye(6, dtype="float32")[labels], labels, labels[:, None]):
        loss = losses.CenterLoss(6, 4, alpha=0.5, factor=0.3)
        loss.centers.assign(centers)
        results.append((run_loss(loss, y_true, embeddings), loss.centers.numpy()))
    for values, new_centers in results[1:]:
        np.testing.assert_allclose(values, results[0][0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(new_centers, results[0][1], rtol=1e-6, atol=1e-6)


def test_one_hot_labels_wrapper_feeds_keras_losses():
    one_hot, cos = make_batch(num_classes=7)
    keras_loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1, from_logits=True)
    wrapped = losses.OneHotLabels(keras_loss, num_classes=7)
    expected = softmax_ce(one_hot, cos, 0.1)  # NumPy
    np.testing.assert_allclose(run_loss(wrapped, one_hot.argmax(-1).astype("int32"), cos), expected, rtol=1e-5)
    np.testing.assert_allclose(run_loss(wrapped, one_hot, cos), expected, rtol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapped))
    assert restored.num_classes == 7 and restored.loss.get_config() == keras_loss.get_config()
    assert losses.takes_integer_labels(losses.ArcfaceLoss()) and losses.takes_integer_labels(losses.scale_softmax)
    assert not losses.takes_integer_labels(keras_loss)


def test_margin_loss_trains_on_integer_labels_in_compiled_fit():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, NormDense(4, append_norm=True)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.MagFaceLoss())
    x = RNG.normal(size=(16, 8)).astype("float32")
    history = model.fit(x, RNG.integers(0, 4, 16).astype("int32"), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_accuracy_without_norm_reads_integer_and_one_hot_labels():
    y_pred = np.array([[0.9, 0.1, 0.0, 30.0], [0.1, 0.2, 0.7, 10.0], [0.5, 0.4, 0.1, 99.0]], dtype="float32")
    labels = np.array([0, 1, 0], dtype="int32")
    for y_true in (labels, np.eye(3, dtype="float32")[labels]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(losses.accuracy_without_norm(y_true, y_pred)), [1, 0, 1])
