"""The sharded cosine head: 2 logical CPU replicas against the single-device dense NormDense head, checkpoints across
replica counts, per-device memory, refused losses and optimizers."""
import json
import os
import subprocess
import sys

import keras
import pytest

from keras_insightface import losses, sharded_head

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


@pytest.mark.parametrize("loss", [losses.AdaFaceLoss(), losses.CurricularFaceLoss(), losses.AdaCosLoss(), keras.losses.CategoricalCrossentropy()])
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
