"""The original's later Train options: mixup_alpha, sam_rho, vpl_start_iters / vpl_allowed_delta, teacher_model_interf.

Each is checked against a NumPy computation of the original's definition (Keras_insightface data.mixup,
models.SAMModel.train_step, models.NormDenseVPL + myCallbacks.VPLUpdateQueue, data.prepare_dataset's teacher map).
"""
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import data, losses, models, sam, train
from tests.helpers import NUM_CLASSES, tiny_basic_model

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- mixup
def numpy_mixup_weights(alpha, size, rng):
    """The original's draws: Beta(alpha, alpha), folded to max(w, 1 - w), 1 above 0.9."""
    weights = rng.beta(alpha, alpha, size)
    weights = np.maximum(weights, 1 - weights)
    return np.where(weights > 0.9, 1.0, weights)


@pytest.mark.parametrize("alpha", [0.2, 0.4, 1.0])
def test_mixup_draws_follow_the_original_beta_rule(alpha):
    weights, partners = data.mixup_weights_and_partners(20000, alpha, tf.constant([3, 4]))
    weights, partners = weights.numpy(), partners.numpy()
    assert sorted(partners) == list(range(20000))  # a permutation of the batch
    mixed = weights[weights < 1]
    assert mixed.min() >= 0.5 and mixed.max() <= 0.9
    expected = numpy_mixup_weights(alpha, 400000, np.random.default_rng(0))
    assert abs(np.mean(weights == 1) - np.mean(expected == 1)) < 0.015  # e.g. 0.479 for alpha 0.4, the original's note
    assert abs(mixed.mean() - expected[expected < 1].mean()) < 0.005


def test_mixup_mixes_images_and_label_rows_with_one_partner():
    images = RNG.uniform(-1, 1, (6, 4, 4, 3)).astype("float32")
    labels = np.eye(5, dtype="float32")[[0, 1, 2, 3, 4, 0]]
    seed = tf.constant([1, 9])
    weights, partners = (tt.numpy() for tt in data.mixup_weights_and_partners(6, 0.8, seed))
    mixed_images, mixed_labels = data.mixup(tf.constant(images), tf.constant(labels), 0.8, seed)
    w4 = weights[:, None, None, None]
    np.testing.assert_allclose(mixed_images, images * w4 + images[partners] * (1 - w4), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed_labels, labels * weights[:, None] + labels[partners] * (1 - weights[:, None]), rtol=1e-6)


def test_pipeline_mixup_batches_are_mixtures_of_the_plain_batch(dataset):
    """Same seed, with and without mixup: every mixed image and label row is `w * own + (1 - w) * another's`."""
    plain_ds, _, classes = data.prepare_dataset_and_classes(dataset, batch_size=16, random_status=1, seed=5)
    mixed_ds, _, _ = data.prepare_dataset_and_classes(dataset, batch_size=16, random_status=1, seed=5, mixup_alpha=1.0)
    images, labels = (tt.numpy() for tt in next(iter(plain_ds)))
    mixed_images, rows = (tt.numpy() for tt in next(iter(mixed_ds)))
    assert rows.shape == (16, classes) and rows.dtype == np.float32
    np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=1e-6)
    flat, mixed_flat, one_hot = images.reshape(16, -1), mixed_images.reshape(16, -1), np.eye(classes)[labels]
    mixed_count = 0
    for row in range(16):
        fits = []
        for partner in range(16):
            diff = flat[row] - flat[partner]
            weight = 1.0 if partner == row else float(np.dot(mixed_flat[row] - flat[partner], diff) / np.dot(diff, diff))
            image_ok = np.allclose(weight * flat[row] + (1 - weight) * flat[partner], mixed_flat[row], atol=1e-4)
            label_ok = np.allclose(weight * one_hot[row] + (1 - weight) * one_hot[partner], rows[row], atol=1e-5)
            fits.append(image_ok and label_ok and (weight == 1 or 0.5 - 1e-4 <= weight <= 0.9 + 1e-4))
        assert any(fits), row
        mixed_count += rows[row].max() < 1
    assert mixed_count > 0


def test_mixup_refuses_prepared_embeddings_and_triplet_groups(dataset):
    image_names, image_classes, _, _ = data.pre_process_folder(dataset)
    np.savez("distill.npz", image_names=image_names, image_classes=image_classes, embeddings=np.ones((len(image_names), 8), "float32"))
    with pytest.raises(ValueError, match="distill.npz: mixup_alpha=0.4 with prepared teacher embeddings"):
        data.prepare_dataset_and_classes("distill.npz", batch_size=8, mixup_alpha=0.4)
    with pytest.raises(ValueError, match="image_per_class=4"):
        data.prepare_dataset_and_classes(dataset, batch_size=8, mixup_alpha=0.4, image_per_class=4)


def numpy_soft_margin_loss(rows, cos, target_logit, scale, label_smoothing=0.0):
    """The original ArcfaceLoss / CosFaceLoss on label rows: margin where y != 0, categorical CE against the rows."""
    logits = np.where(rows != 0, target_logit(cos), cos) * scale
    targets = rows * (1 - label_smoothing) + label_smoothing / rows.shape[-1]
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax = log_softmax - np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    return -(targets * log_softmax).sum(-1)


def soft_rows(batch, classes):
    first, second = RNG.integers(0, classes, batch), RNG.integers(0, classes, batch)
    weight = RNG.uniform(0.5, 0.9, batch)[:, None]
    return np.eye(classes)[first] * weight + np.eye(classes)[second] * (1 - weight)


@pytest.mark.parametrize(
    "loss, target_logit",
    [
        (losses.ArcfaceLoss(scale=32.0, label_smoothing=0.1), lambda cos: np.cos(np.arccos(cos) + 0.5)),
        (losses.CosFaceLoss(margin=0.35, scale=16.0), lambda cos: cos - 0.35),
        (losses.AirFaceLoss(margin=0.4, scale=16.0), lambda cos: 1 - 2 * (np.arccos(cos) + 0.4) / math.pi),
        (losses.scale_softmax, lambda cos: cos),
    ],
)
def test_margin_losses_on_mixed_label_rows_match_the_original_formula(loss, target_logit):
    rows = soft_rows(8, 6)
    cos = RNG.uniform(-0.8, 0.95, (8, 6))  # above cos(pi - 0.5): the margined branch
    scale = getattr(loss, "scale", 64.0)
    got = keras.ops.convert_to_numpy((loss.call if hasattr(loss, "call") else loss)(rows.astype("float32"), cos.astype("float32")))
    expected = numpy_soft_margin_loss(rows, cos, target_logit, scale, getattr(loss, "label_smoothing", 0.0))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def test_magface_on_mixed_label_rows_matches_the_original_formula():
    rows, cos, norms = soft_rows(8, 6), RNG.uniform(-0.6, 0.95, (8, 6)), RNG.uniform(10, 110, 8)
    margin = (0.45 + 0.35 * (norms - 10) / 100)[:, None]  # per sample, on every class of non-zero weight
    expected = numpy_soft_margin_loss(rows, cos, lambda c: np.cos(np.arccos(c) + margin), 16.0)
    expected += 35.0 * (norms / 110**2 + 1 / norms)
    y_pred = np.concatenate([cos, norms[:, None]], axis=-1).astype("float32")
    got = keras.ops.convert_to_numpy(losses.MagFaceLoss(scale=16.0).call(rows.astype("float32"), y_pred))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def test_train_with_mixup_trains_and_refuses_plans_needing_whole_labels(dataset):
    tt = train.Train(dataset, "mixup.h5", basic_model=tiny_basic_model(), batch_size=8, mixup_alpha=0.4, seed=0)
    images, rows = next(iter(tt.train_ds))
    assert rows.shape == (8, NUM_CLASSES)
    history = tt.train_single_scheduler(losses.ArcfaceLoss(scale=16), epoch=1, optimizer="adam")
    assert np.isfinite(history.history["loss"]).all() and "accuracy" in history.history
    for plan in ({"loss": losses.CurricularFaceLoss()}, {"loss": losses.ArcfaceLoss(), "centerloss": 0.1},
                 {"loss": losses.BatchHardTripletLoss()}):
        with pytest.raises(ValueError, match="mixup_alpha=0.4"):
            tt.train_single_scheduler(epoch=1, **plan)
    with pytest.raises(ValueError, match="mixup_alpha"):
        train.Train(dataset, "bad.h5", basic_model=tiny_basic_model(), batch_size=8, mixup_alpha=1.5)


# ---------------------------------------------------------------- SAM
def test_sam_step_equals_the_hand_computed_update():
    x, y = RNG.normal(size=(6, 3)).astype("float32"), RNG.normal(size=(6, 2)).astype("float32")
    kernel, rho, lr = RNG.normal(size=(3, 2)).astype("float32"), 0.1, 0.5
    inputs = keras.Input((3,))
    model = sam.SAMModel(inputs, keras.layers.Dense(2, use_bias=False, name="dense")(inputs), rho=rho)
    model.get_layer("dense").set_weights([kernel])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=6, epochs=1, verbose=0, shuffle=False)

    def gradient(w):  # of mean((x @ w - y) ** 2) over batch and outputs
        return 2 * x.T.astype("float64") @ (x @ w - y) / y.size

    g = gradient(kernel.astype("float64"))
    expected = kernel - lr * gradient(kernel + rho * g / (np.linalg.norm(g) + 1e-12))
    got = model.get_layer("dense").get_weights()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(got - (kernel - lr * g)).max() > 1e-3  # differs from a plain SGD step


def test_train_sam_rho_trains_saves_and_resumes(dataset):
    tt = train.Train(dataset, "sam.h5", basic_model=tiny_basic_model(), batch_size=8, sam_rho=0.05)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}])
    assert isinstance(tt.model, sam.SAMModel) and tt.model.rho == 0.05
    saved = os.path.join("checkpoints", "sam.h5")
    loaded = keras.models.load_model(saved, compile=False)  # no custom_objects
    assert isinstance(loaded, sam.SAMModel) and loaded.rho == 0.05
    resumed = train.Train(dataset, "sam.h5", model=saved, batch_size=8, sam_rho=0.05)
    assert resumed.optimizer is not None
    resumed.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 1)
    with pytest.raises(ValueError, match="sam_rho"):
        train.Train(dataset, "bad.h5", basic_model=tiny_basic_model(), batch_size=8, sam_rho=-1)


def test_sam_does_not_perturb_on_non_finite_gradients(dataset):
    inputs = keras.Input((2,))
    model = sam.SAMModel(inputs, keras.layers.Dense(1)(inputs), rho=0.1)
    perturbations = model.perturbations([tf.constant([np.nan, 1.0]), tf.constant([np.inf])])
    assert all(np.array_equal(pp.numpy(), np.zeros_like(pp.numpy())) for pp in perturbations)
    np.testing.assert_allclose(model.perturbations([tf.constant([3.0, 0.0]), tf.constant([4.0])])[0], [0.06, 0.0], rtol=1e-6)
    # float16 loss scaling overflows at first: those steps are skipped, the weights stay finite
    tt = train.Train(dataset, "sam16.h5", basic_model=tiny_basic_model(), batch_size=8, sam_rho=0.05, mixed_precision="mixed_float16")
    history = tt.train_single_scheduler(losses.ArcfaceLoss(scale=16), epoch=1, optimizer="sgd")
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.isfinite(weight).all() for weight in tt.model.get_weights())


# ---------------------------------------------------------------- VPL
def normalize(values, axis):
    return values / np.sqrt(np.maximum((values**2).sum(axis, keepdims=True), 1e-12))


class NumpyVPL:
    """The original NormDenseVPL + VPLUpdateQueue: step t uses queue rows of classes queued within allowed_delta."""

    def __init__(self, kernel, queue, start_iters, allowed_delta, vpl_lambda=0.15):
        self.kernel, self.queue, self.queue_iters, self.iters = kernel, queue.copy(), np.zeros(kernel.shape[1], "int64"), 0
        self.start_iters, self.allowed_delta, self.vpl_lambda = start_iters, allowed_delta, vpl_lambda

    def step(self, features, labels):
        self.iters += 1
        fresh = (self.iters > self.start_iters) & (self.iters - self.queue_iters <= self.allowed_delta)
        lam = np.where(fresh, self.vpl_lambda, 0.0)
        prototypes = normalize(normalize(self.kernel, 0) * (1 - lam) + self.queue.T * lam, 0)
        norm_features = normalize(features, 1)
        for row, label in enumerate(labels):  # in batch order: the last sample of a class wins
            self.queue[label], self.queue_iters[label] = norm_features[row], self.iters
        return norm_features @ prototypes


def test_vpl_head_queue_and_prototypes_match_numpy():
    units, emb = 5, 4
    head = models.NormDenseVPL(units, start_iters=2, allowed_delta=2)
    head.build((None, emb))
    reference = NumpyVPL(keras.ops.convert_to_numpy(head.w), keras.ops.convert_to_numpy(head.queue_features), 2, 2)
    batches = [[0, 1, 1], [2, 0, 3], [4, 4, 1], [0, 2, 2], [3, 3, 3], [1, 0, 4]]
    for step, labels in enumerate(batches, start=1):
        features = RNG.normal(size=(len(labels), emb)).astype("float32")
        output = keras.ops.convert_to_numpy(head(features))
        head.update_queue(np.array(labels, "int32"))
        expected = reference.step(features, labels)
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6, err_msg="step {}".format(step))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(head.queue_features), reference.queue, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.queue_iters), reference.queue_iters)
        assert int(head.iters.numpy()) == step
    with pytest.raises(ValueError, match="loss_top_k"):
        models.NormDenseVPL(units, loss_top_k=3)


def test_train_vpl_counts_steps_and_keeps_its_queue_across_resume(dataset):
    tt = train.Train(dataset, "vpl.h5", basic_model=tiny_basic_model(), batch_size=8, vpl_start_iters=1, vpl_allowed_delta=3)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": "adam"}])
    head = tt.output_layer
    assert isinstance(head, models.NormDenseVPL) and isinstance(tt.model, sam.SAMModel) and tt.model.rho == 0
    assert head.start_iters == tt.steps_per_epoch  # < 50 counts epochs, as the original
    assert int(head.iters.numpy()) == 2 * tt.steps_per_epoch
    queue_iters = keras.ops.convert_to_numpy(head.queue_iters)
    assert queue_iters.max() == 2 * tt.steps_per_epoch and (queue_iters > 0).all()  # every class was queued
    resumed = train.Train(dataset, "vpl.h5", model=os.path.join("checkpoints", "vpl.h5"), batch_size=8, vpl_start_iters=1, vpl_allowed_delta=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(resumed.output_layer.queue_iters), queue_iters)
    resumed.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 2)
    assert resumed.output_layer is not None and int(resumed.output_layer.iters.numpy()) == 3 * tt.steps_per_epoch
    kernel = keras.ops.convert_to_numpy(resumed.output_layer.w)
    resumed.vpl_start_iters = -1
    plain = resumed._output_head("arcface", 1, False)  # without VPL: a NormDense taking the class weights
    assert type(plain) is models.NormDense
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain.w), kernel)


# ---------------------------------------------------------------- teacher_model_interf
def teacher_model(emb=24):
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 5, strides=8)(inputs))
    return keras.Model(inputs, keras.layers.Dense(emb, name="embedding")(nn), name="teacher")


def test_teacher_embeddings_are_of_the_same_augmented_images(dataset):
    teacher = teacher_model()
    teacher.save("teacher.keras")
    tt = train.Train(dataset, "teach.h5", basic_model=tiny_basic_model(), batch_size=8, random_status=2, mixup_alpha=0.4,
                     teacher_model_interf="teacher.keras", seed=1)
    images, (rows, embeddings) = next(iter(tt.train_ds))
    assert rows.shape == (8, NUM_CLASSES)
    np.testing.assert_allclose(embeddings, teacher(images, training=False), rtol=1e-5, atol=1e-5)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "adam"}])
    assert tt.model.get_layer("distill_emb_map_layer").units == 24  # student 16 -> teacher 24
    assert len(tt.model.outputs) == 2 and tt.output_kinds == ["label", "embedding"]
    with pytest.raises(ValueError, match="teacher_model_interf"):
        train.Train(dataset, "bad.h5", basic_model=tiny_basic_model(), batch_size=8, teacher_model_interf=42)


def test_teacher_gets_the_images_normalized_its_own_way():
    from keras_insightface import face_io

    inputs = keras.Input((8, 8, 3))
    nn = face_io.InputNormalization(*face_io.INSIGHTFACE_NORM)(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(nn)))
    pixels = RNG.uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    student_inputs = (pixels - 127.5) / 128.0  # the student's KERAS_NORM
    ds = tf.data.Dataset.from_tensors((student_inputs, np.arange(4, dtype="int32")))
    images, (labels, embeddings) = next(iter(data.with_teacher_embeddings(ds, teacher, face_io.KERAS_NORM)))
    np.testing.assert_array_equal(images, student_inputs)
    np.testing.assert_allclose(embeddings, teacher((pixels - 127.5) / 127.5), rtol=1e-5, atol=1e-5)


def test_which_losses_take_soft_label_rows():
    soft = [losses.ArcfaceLoss(), losses.MagFaceLoss(), losses.AdaCosLoss(num_classes=4), losses.scale_softmax, losses.MarginSoftmax(),
            keras.losses.CategoricalCrossentropy(), losses.OneHotLabels(keras.losses.CategoricalCrossentropy(), 4)]
    whole = [losses.CurricularFaceLoss(), losses.CenterLoss(4, 2), losses.BatchHardTripletLoss(), losses.DistillKLDivergenceLoss(),
             keras.losses.SparseCategoricalCrossentropy()]
    assert all(losses.takes_soft_labels(loss) for loss in soft)
    assert not any(losses.takes_soft_labels(loss) for loss in whole)
