"""The sharded cosine head: 2 logical CPU replicas against the single-device dense NormDense head, checkpoints across
replica counts, per-device memory, refused losses and optimizers."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import losses, optimizers, sharded_head

# The module's processes start once: its tests all run in one pytest-xdist worker (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sharded_head")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """tests/sharded_head_run.py in a fresh interpreter (logical devices are set before TensorFlow starts)."""
    workdir = tmp_path_factory.mktemp("sharded")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    script = os.path.join(REPO, "tests", "sharded_head_run.py")
    run = subprocess.run([sys.executable, script, str(workdir)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_two_replicas_equal_dense_head_sgd_momentum_arcface(two_replicas):
    assert two_replicas["replicas"] == 2
    result = two_replicas["sgd_arcface"]
    assert result["steps"] == 3
    assert result["kernel_moved"] > 1e-2  # the head did train
    for key in ("loss", "kernel", "basic"):
        assert result[key] < TOLERANCE, (key, result)


def test_two_replicas_equal_dense_head_adam_cosface_label_smoothing_l2(two_replicas):
    result = two_replicas["adam_cosface_smoothing"]
    assert result["kernel_moved"] > 1e-3
    for key in ("loss", "kernel", "basic"):
        assert result[key] < TOLERANCE, (key, result)


def test_checkpoint_of_two_replicas_resumes_on_one_replica_and_on_the_dense_head(two_replicas):
    for key, difference in two_replicas["resume"].items():
        assert difference < TOLERANCE, (key, difference)


def test_each_device_holds_half_of_the_head(two_replicas):
    memory = two_replicas["memory"]
    assert len(memory["per_device"]) == 2
    for held in memory["per_device"].values():
        assert held == memory["dense"] // 2


def test_shard_units_cover_every_class():
    assert [sharded_head.shard_units(classes, 4) for classes in (1, 4, 7, 8, 1_000_001)] == [1, 1, 2, 2, 250_001]


@pytest.mark.parametrize(
    "loss", [losses.AdaFaceLoss(), losses.CurricularFaceLoss(), losses.AdaCosLoss(), losses.AcrTripLoss(emb_shape=4), keras.losses.CategoricalCrossentropy()]
)
def test_unsupported_losses_are_refused(loss):
    with pytest.raises(ValueError, match="ShardedHeadModel: loss"):
        sharded_head.check_margin_loss(loss)


@pytest.mark.parametrize(
    "optimizer, message",
    [
        (keras.optimizers.RMSprop(), "no shard update rule"),
        (keras.optimizers.SGD(0.1, clipnorm=1.0), "clipnorm"),
        (keras.optimizers.Adam(amsgrad=True), "amsgrad"),
        (keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), "LossScaleOptimizer"),
    ],
)
def test_unsupported_optimizers_are_refused(optimizer, message):
    with pytest.raises(ValueError, match=message):
        sharded_head.shard_rule(optimizer)


def test_train_shard_centers_checkpoints_dense_and_resumes_equal_to_the_dense_head(two_replicas):
    result = two_replicas["train"]
    assert result["first_model"] == result["resumed_model"] == "ShardedHeadModel"
    assert result["checkpoint_head"] == 4  # the checkpoint holds NormDense over every class
    assert result["kernel_moved"] > 1e-2
    for key in ("kernel", "checkpoint_kernel", "basic"):
        assert result[key] < TOLERANCE, (key, result)


def test_two_replicas_with_synchronized_batchnorm_equal_one_device_at_the_global_batch(two_replicas):
    """Train(shard_centers=True, sync_batchnorm=True), 2 replicas x 8 against one device x 16 (tests/sharded_head_run.py):
    equal to TOLERANCE, or to twice what reversing the batch rows does to the one-device run (float32 rounding)."""
    result = two_replicas["batchnorm"]
    assert result["models"] == ["ShardedHeadModel", "Functional"]
    assert result["sharded"] <= max(TOLERANCE, 2 * result["reordered"]), result


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.SGD(0.1),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.01),
        lambda: optimizers.SGDW(0.1, weight_decay=1e-3, momentum=0.9),
        lambda: keras.optimizers.Adam(0.01),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
        lambda: optimizers.AdamW(0.01, weight_decay=1e-3),
    ],
)
def test_shard_step_follows_the_keras_optimizer(make_optimizer):
    rng = np.random.default_rng(0)
    start, gradients = rng.normal(size=(3, 5)).astype("float32"), rng.normal(size=(3, 3, 5)).astype("float32")
    reference, keras_optimizer = keras.Variable(start), make_optimizer()
    for gradient in gradients:
        keras_optimizer.apply_gradients([(gradient, reference)])

    optimizer = make_optimizer()
    optimizer.build([])
    rule = sharded_head.shard_rule(optimizer)
    kernel = tf.Variable(start)
    slots = {name: tf.Variable(np.zeros_like(start)) for name in rule.slot_names(optimizer)}
    for gradient in gradients:
        sharded_head.shard_step(optimizer, rule, kernel, slots, tf.constant(gradient))
        optimizer.iterations.assign_add(1)
    np.testing.assert_allclose(kernel.numpy(), reference.numpy(), atol=1e-6)
    assert np.abs(kernel.numpy() - start).max() > 1e-3


def tiny_basic_model(emb=4):
    inputs = keras.Input((4, 4, 3))
    nn = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(emb, name="embedding")(nn), name="tiny")


def test_one_replica_config_round_trip_and_dense_form():
    model = sharded_head.ShardedHeadModel(tiny_basic_model(), 5, kernel_regularizer=keras.regularizers.L2(0.1), seed=0)
    copy = sharded_head.ShardedHeadModel.from_config(model.get_config())
    assert (copy.classes, copy.centers.shard_units, type(copy.kernel_regularizer)) == (5, 5, keras.regularizers.L2)
    dense = model.dense_model()
    assert dense.output_shape == (None, 5)
    np.testing.assert_array_equal(dense.get_layer("NormDense").w.numpy(), model.centers.get())
    copy.load_dense_model(dense)
    np.testing.assert_array_equal(copy.centers.get(), model.centers.get())


def test_dense_model_of_other_classes_is_refused():
    model = sharded_head.ShardedHeadModel(tiny_basic_model(), 5)
    other = sharded_head.ShardedHeadModel(tiny_basic_model(), 6).dense_model()
    with pytest.raises(ValueError, match=r"NormDense\(5\)"):
        model.load_dense_model(other)
    with pytest.raises(ValueError, match="shape"):
        model.centers.set(np.zeros((4, 6)))


def test_labels_outside_the_classes_are_refused():
    model = sharded_head.ShardedHeadModel(tiny_basic_model(), 5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.ArcfaceLoss())
    images, labels = np.zeros((2, 4, 4, 3), "float32"), np.array([0, 5])
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be < classes"):
        model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
