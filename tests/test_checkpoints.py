"""Crash-consistent checkpoints and the seed's resume: kill at every commit point, resume as the seed does, compare."""
import errno
import json
import os
import shutil

import keras
import numpy as np
import pytest

from keras_insightface import checkpoints, losses, train
from tests.helpers import tiny_basic_model

LFW_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "faces_rec", "lfw.bin")
EPOCHS = 2


class SimulatedKill(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the library catches it."""


def plan(epochs):
    return {"loss": losses.ArcfaceLoss(scale=16), "centerloss": 0.1, "epoch": epochs}


def run_from_scratch(data_path):
    keras.utils.set_random_seed(0)
    tt = train.Train(data_path, "run.h5", eval_paths=[LFW_BIN], basic_model=tiny_basic_model(), batch_size=8, lr_base=0.01,
                     lr_decay=0.5, lr_decay_steps=[1], seed=0)
    tt.train([{**plan(EPOCHS), "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}], 0)
    return tt


def resume_the_seed_way(data_path):
    """Epochs done from <stem>_hist.json, then Train(model=checkpoint) and the remaining epochs of the plan."""
    history_path = os.path.join("checkpoints", "run_hist.json")
    done = len(json.load(open(history_path))["epoch"]) if os.path.exists(history_path) else 0
    if done == 0:
        return run_from_scratch(data_path)
    keras.utils.set_random_seed(0)
    tt = train.Train(data_path, "run.h5", eval_paths=[LFW_BIN], model=os.path.join("checkpoints", "run.h5"), batch_size=8,
                     lr_base=0.01, lr_decay=0.5, lr_decay_steps=[1], seed=0)
    if done < EPOCHS:
        tt.train([plan(EPOCHS - done)], done)
    return tt


def final_weights(tt):
    return np.concatenate([ww.ravel() for ww in tt.model.get_weights()])


def count_file_commits(monkeypatch, kill_at=None):
    """Count os.replace calls into checkpoints/ (every atomic write and the commit rename); raise SimulatedKill right
    after call `kill_at`, leaving the files exactly as a SIGKILL at that instant would (temporary files included)."""
    calls = {"count": 0}
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        real_replace(source, target, *args, **kwargs)
        if os.path.abspath(target).startswith(os.path.abspath("checkpoints")):
            calls["count"] += 1
            if calls["count"] == kill_at:
                raise SimulatedKill()

    monkeypatch.setattr(os, "replace", replace)
    return calls


def published_epochs_done():
    history_path = os.path.join("checkpoints", "run_hist.json")
    return len(json.load(open(history_path))["epoch"]) if os.path.exists(history_path) else 0


def assert_best_basic_not_newer_than_history(kill_at):
    epochs_done = published_epochs_done()
    for name in os.listdir("checkpoints"):
        if name.startswith("run_basic_lfw_epoch_"):
            assert int(name.split("_epoch_")[1].split("_")[0]) <= epochs_done, (kill_at, name, epochs_done)


def kill_points(total):
    """Every write of the last epoch (each position of the commit protocol, resuming from a committed epoch), and the
    first and last write of the first epoch (resuming from nothing, and from the first commit)."""
    per_epoch = total // EPOCHS
    assert per_epoch * EPOCHS == total, "every epoch commits the same files"
    return [1, per_epoch, *range(total - per_epoch + 1, total + 1)]


def test_kill_after_each_atomic_write_of_an_epoch_then_resume_equals_an_uninterrupted_run(dataset, workdir):
    # Own MonkeyPatch contexts: undoing the fixture's monkeypatch would also undo workdir's chdir into tmp_path.
    with pytest.MonkeyPatch.context() as patch:
        calls = count_file_commits(patch)
        reference = final_weights(run_from_scratch(dataset))
    total = calls["count"]
    assert total >= 2 * 6  # each epoch: optimizer, centers, the commit rename and the published links
    assert len([name for name in os.listdir("checkpoints") if name.startswith("run_basic_lfw_epoch_")]) == 1

    for kill_at in kill_points(total):
        shutil.rmtree("checkpoints", ignore_errors=True)
        with pytest.MonkeyPatch.context() as patch:
            count_file_commits(patch, kill_at=kill_at)
            with pytest.raises(SimulatedKill):
                run_from_scratch(dataset)
        assert_best_basic_not_newer_than_history(kill_at)
        resumed = final_weights(resume_the_seed_way(dataset))
        np.testing.assert_allclose(resumed, reference, rtol=1e-5, atol=1e-6, err_msg="killed after atomic write {}".format(kill_at))
        assert checkpoints.load_history(os.path.join("checkpoints", "run_hist.json"))["epoch"] == list(range(EPOCHS))
        assert len([name for name in os.listdir("checkpoints") if name.startswith("run_basic_lfw_epoch_")]) == 1


def test_seed_continue_training_trims_the_schedule_and_trains_the_rest(dataset, workdir):
    tt = train.Train(dataset, "seed.h5", basic_model=tiny_basic_model(), batch_size=8)
    assert tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": "sgd"}], 0) == 2
    resumed = train.Train(dataset, "seed.h5", model=os.path.join("checkpoints", "seed.h5"), batch_size=8)
    # the seed's example: the plans left, from the epoch reached
    assert resumed.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 2) == 3
    history = checkpoints.load_history(os.path.join("checkpoints", "seed_hist.json"))
    assert history["epoch"] == [0, 1, 2]


def test_bottleneck_only_plans_do_not_advance_the_epoch(dataset, workdir):
    tt = train.Train(dataset, "bn_only.h5", basic_model=tiny_basic_model(), batch_size=8)
    schedule = [
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "sgd", "bottleneckOnly": True},
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 2},
    ]
    assert tt.train(schedule, 0) == 2
    assert checkpoints.load_history(os.path.join("checkpoints", "bn_only_hist.json"))["epoch"] == [0, 1]


@pytest.mark.parametrize("schedule, initial_epoch, message", [([], 0, "empty"), ([{"loss": "mse", "epoch": 1}], -1, "initial_epoch")])
def test_a_call_that_would_train_nothing_is_an_error(dataset, workdir, schedule, initial_epoch, message):
    tt = train.Train(dataset, "nothing.h5", basic_model=tiny_basic_model(), batch_size=8)
    with pytest.raises(ValueError, match=message):
        tt.train(schedule, initial_epoch)


def two_epoch_run(dataset, save_name="pair.h5"):
    tt = train.Train(dataset, save_name, basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}], 0)
    return checkpoints.RunCheckpoint(save_name)


def test_truncated_optimizer_state_is_named_not_used(dataset, workdir):
    run = two_epoch_run(dataset)
    state = run.generation_file(2, "optimizer")
    with open(state, "r+b") as ff:
        ff.truncate(os.path.getsize(state) // 2)
    with pytest.raises(checkpoints.CheckpointError, match="optimizer.npz: unreadable optimizer state"):
        train.Train(dataset, "pair.h5", model=run.model_path, batch_size=8)


def test_optimizer_state_of_another_epoch_is_named_not_used(dataset, workdir):
    run = two_epoch_run(dataset)
    shutil.copyfile(run.generation_file(1, "optimizer"), run.generation_file(2, "optimizer") + ".copy")
    os.replace(run.generation_file(2, "optimizer") + ".copy", run.generation_file(2, "optimizer"))
    with pytest.raises(checkpoints.CheckpointError, match="saved with other model weights"):
        train.Train(dataset, "pair.h5", model=run.model_path, batch_size=8)


def published_bytes(run):
    paths = [run.model_path, run.optimizer_path, run.history_path]
    return {path: open(path, "rb").read() for path in paths}


def test_disk_full_is_a_clear_error_and_the_previous_state_stays(dataset, workdir, monkeypatch):
    run = two_epoch_run(dataset)
    before = published_bytes(run)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "write_history", full_disk)
    tt = train.Train(dataset, "pair.h5", model=run.model_path, batch_size=8)
    with pytest.raises(checkpoints.CheckpointError, match="the disk is full.*checkpoint of the previous epoch is kept"):
        tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 2)
    assert published_bytes(run) == before
    assert run.generations() == [1, 2]
    assert not [name for name in os.listdir(run.state_dir) if name.endswith(".partial")]


def test_loading_a_checkpoint_in_a_fresh_process_needs_only_the_package(dataset, workdir):
    """keras.models.load_model after `import keras_insightface`; Train(model=...) with AdamW importing only train, losses."""
    import subprocess
    import sys
    import textwrap

    from keras_insightface import optimizers

    tt = train.Train(dataset, "fresh.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": optimizers.AdamW(weight_decay=5e-5)}], 0)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = textwrap.dedent("""
        import sys
        import keras, keras_insightface
        keras.models.load_model("checkpoints/fresh.h5")
        sys.path.insert(0, {repo!r})
        import train, losses
        tt = train.Train({dataset!r}, "fresh.h5", model="checkpoints/fresh.h5", batch_size=8)
        print("OPTIMIZER", type(tt.optimizer).__module__, type(tt.optimizer).__name__, int(tt.optimizer.iterations.numpy()))
    """).format(repo=repo, dataset=dataset)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    iterations = int(tt.optimizer.iterations.numpy())
    assert iterations > 0 and "OPTIMIZER keras_insightface.optimizers AdamW {}".format(iterations) in result.stdout
