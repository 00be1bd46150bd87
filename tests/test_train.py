"""Train: scheduler walking, head rebuilds, initialisation rows, checkpoints, resume and multi-replica runs."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_insightface import losses
from keras_insightface import models
from keras_insightface import train
from tests.helpers import EMB, NUM_CLASSES, tiny_basic_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW_BIN = os.path.join(REPO, "tests", "data", "faces_rec", "lfw.bin")


def seed_schedule(num_classes=NUM_CLASSES, emb=EMB):
    """Every combination from the scheduler examples of the seed README, one epoch each."""
    return [
        {"loss": losses.scale_softmax, "optimizer": "adam", "epoch": 1},
        {"loss": keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "centerloss": 0.01, "epoch": 1},
        {"loss": losses.ArcfaceLoss(scale=32.0, label_smoothing=0.1), "optimizer": keras.optimizers.SGD(0.1, momentum=0.9), "epoch": 1},
        {"loss": losses.BatchAllTripletLoss(0.3), "epoch": 1},
        {"loss": losses.BatchHardTripletLoss(0.25), "epoch": 1},
        {"loss": losses.CenterLoss(num_classes=num_classes, emb_shape=emb), "epoch": 1},
        {"loss": keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "triplet": 1, "alpha": 0.3, "epoch": 1},
        {"loss": losses.BatchHardTripletLoss(0.25), "centerloss": 0.01, "epoch": 1},
        {"loss": losses.CenterLoss(num_classes=num_classes, emb_shape=emb), "triplet": 10, "alpha": 0.25, "epoch": 1},
        {"loss": losses.ArcfaceLoss(), "centerloss": 1, "triplet": 32, "alpha": 0.2, "epoch": 1},
    ]


def test_every_seed_scheduler_combination_trains(dataset):
    tt = train.Train(dataset, "combo.h5", basic_model=tiny_basic_model(), batch_size=8, lr_base=0.001)
    schedule = seed_schedule()
    tt.train(schedule, 0)
    history = json.load(open(os.path.join("checkpoints", "combo_hist.json")))
    assert len(history["loss"]) == len(schedule)
    assert all(np.isfinite(history["loss"]))
    assert os.path.exists(os.path.join("checkpoints", "combo.h5"))
    # The last plan: arcface head plus center and triplet outputs on the embedding.
    assert [layer.name for layer in tt.model.layers if isinstance(layer, models.NormDense)] == ["NormDense"]
    assert len(tt.model.outputs) == 3
    assert os.path.exists(os.path.join("checkpoints", "combo_centers.npy"))


def test_weights_and_head_carry_over_between_plans(dataset):
    tt = train.Train(dataset, "carry.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train_single_scheduler(losses.ArcfaceLoss(scale=16), epoch=1, optimizer="adam")
    head, kernel = tt.output_layer, keras.ops.convert_to_numpy(tt.output_layer.w).copy()
    basic_weights = [w.copy() for w in tt.basic_model.get_weights()]
    tt.train_single_scheduler(losses.ArcfaceLoss(scale=32), epoch=1, initial_epoch=1, bottleneckOnly=True)
    assert tt.output_layer is head
    assert not np.allclose(keras.ops.convert_to_numpy(head.w), kernel)  # the head kept training from where it was
    conv_kernel_after = tt.basic_model.get_weights()[0]
    np.testing.assert_array_equal(conv_kernel_after, basic_weights[0])  # bottleneckOnly froze the basic model
    tt.train_single_scheduler(losses.ArcfaceLoss(scale=32), epoch=1, initial_epoch=2, lossTopK=3)
    assert tt.output_layer is not head
    assert tuple(tt.output_layer.w.shape) == (EMB, NUM_CLASSES * 3)


def test_plan_validation_errors(dataset):
    tt = train.Train(dataset, "bad.h5", basic_model=tiny_basic_model(), batch_size=8)
    with pytest.raises(ValueError, match="missing the required key 'epoch'"):
        tt.train([{"loss": losses.ArcfaceLoss(), "optimizer": "adam"}])
    with pytest.raises(ValueError, match="Unknown training plan keys"):
        tt.train([{"loss": losses.ArcfaceLoss(), "epoch": 1, "optimizer": "adam", "epochs": 2}])
    with pytest.raises(ValueError, match="needs an 'optimizer'"):
        tt.train([{"loss": losses.ArcfaceLoss(), "epoch": 1}])
    with pytest.raises(ValueError, match="batch_size"):
        train.Train(dataset, "bad.h5", basic_model=tiny_basic_model(), batch_size=0)
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        train.Train(dataset, "bad.h5", model="nowhere.h5")


@pytest.mark.parametrize("extension", [".h5", ".keras"])
def test_initialisation_rows_continue_from_saved_files(dataset, extension):
    save_name = "rows" + extension
    tt = train.Train(dataset, save_name, basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "adam"}])
    saved_model = os.path.join("checkpoints", save_name)
    expected_basic = tt.basic_model.get_weights()
    images = np.random.default_rng(1).uniform(-1, 1, (2, 112, 112, 3)).astype("float32")
    expected_embedding = tt.basic_model(images, training=False)

    for basic_model in (None, "embedding", -2):  # row 3: continue from the last saved model
        resumed = train.Train(dataset, save_name, model=saved_model, basic_model=basic_model, batch_size=8)
        np.testing.assert_allclose(resumed.basic_model(images, training=False), expected_embedding, atol=1e-5)
        assert resumed.output_layer is not None and resumed.optimizer is not None

    basic_path = os.path.join("checkpoints", "basic" + extension)
    tt.basic_model.save(basic_path)
    from_basic = train.Train(dataset, "rows2.h5", basic_model=basic_path, batch_size=8)  # row 2
    for got, want in zip(from_basic.basic_model.get_weights(), expected_basic):
        np.testing.assert_array_equal(got, want)

    modified = keras.models.load_model(saved_model, compile=False)  # row 4: a model structure
    from_structure = train.Train(dataset, "rows3.h5", model=modified, basic_model="embedding", batch_size=8)
    from_structure.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "adam"}])


def test_output_weight_decay_rules(dataset):
    head_l2 = lambda tt: tt.output_layer.kernel_regularizer  # noqa: E731
    for value, basic_l2, expected in ((0, 0, None), (5e-4, 0, 2.5e-4), (2, 1e-3, 2e-3), (1, 0, None)):
        tt = train.Train(dataset, "wd.h5", basic_model=tiny_basic_model(l2=basic_l2), batch_size=8, output_weight_decay=value)
        tt._build_model("arcface", 1, False, False, False, False)
        regularizer = head_l2(tt)
        if expected is None:
            assert regularizer is None
        else:
            assert regularizer.l2 == pytest.approx(expected)
    tt = train.Train(dataset, "wd.h5", basic_model=tiny_basic_model(), batch_size=8, output_wd_multiply=5e-4)
    assert tt.output_weight_decay == 5e-4


def test_eval_and_best_basic_model_checkpoint(dataset):
    tt = train.Train(dataset, "evalrun.h5", eval_paths=[LFW_BIN], basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "adam"}])
    saved = [name for name in os.listdir("checkpoints") if name.startswith("evalrun_basic_lfw_epoch_1_")]
    assert len(saved) == 1 and saved[0].endswith(".h5")
    history = json.load(open(os.path.join("checkpoints", "evalrun_hist.json")))
    assert history["lfw"] == [pytest.approx(tt.my_evals[0].cur_acc)]


def run_python(code, cwd, env=None):
    full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_mirrored_strategy_two_logical_cpus(dataset, workdir):
    code = f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, losses, train
        from tests.helpers import tiny_basic_model
        with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
            tt = train.Train({dataset!r}, "mirrored.h5", basic_model=tiny_basic_model(), batch_size=4)
            print("GLOBAL_BATCH", tt.batch_size)
            tt.train([{{"loss": losses.ArcfaceLoss(scale=16), "centerloss": 0.1, "epoch": 1, "optimizer": "adam"}}])
        print("DONE")
    """
    result = run_python(code, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_BATCH 8" in result.stdout
    assert "DONE" in result.stdout


RESUME_SCRIPT = """
    import os, signal, sys, json
    import keras, numpy as np
    keras.utils.set_random_seed(0)
    from keras_insightface import losses, train
    from tests.helpers import tiny_basic_model
    data_path, save_name, kill_epoch, initial_epoch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class KillDuringEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    model = os.path.join("checkpoints", save_name) if initial_epoch else None
    basic = None if initial_epoch else tiny_basic_model()
    tt = train.Train(data_path, save_name, basic_model=basic, model=model, batch_size=8, lr_base=0.01,
                     lr_decay=0.5, lr_decay_steps=[2], seed=0, random_status=0)
    original_callbacks = tt._callbacks
    tt._callbacks = lambda: original_callbacks() + [KillDuringEpoch()]
    sch = [{"loss": losses.ArcfaceLoss(scale=16), "centerloss": 0.1, "epoch": 3, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}]
    if initial_epoch:  # the seed's way: the remaining epochs of the plan, from the epoch reached
        sch[0].pop("optimizer")
        sch[0]["epoch"] -= initial_epoch
    tt.train(sch, initial_epoch)
    np.save("final_weights.npy", np.concatenate([w.ravel() for w in tt.model.get_weights()]))
"""


def test_resume_after_sigkill_matches_uninterrupted_run(dataset, workdir):
    script = os.path.join(workdir, "resume_run.py")
    with open(script, "w") as ff:
        ff.write(textwrap.dedent(RESUME_SCRIPT))
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", TF_DETERMINISTIC_OPS="1")
    run = lambda cwd, *args: subprocess.run([sys.executable, script, dataset, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)  # noqa: E731

    straight_dir = workdir / "straight"
    straight_dir.mkdir()
    straight = run(straight_dir, "straight.h5", "-1", "0")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = run(workdir, "resumed.h5", "1", "0")
    assert killed.returncode == -9
    history = json.load(open(os.path.join("checkpoints", "resumed_hist.json")))
    assert len(history["loss"]) == 1  # epoch 0 finished and was recorded, epoch 1 was killed
    keras.models.load_model(os.path.join("checkpoints", "resumed.h5"))  # the checkpoint is complete
    assert not [name for name in os.listdir("checkpoints") if name.endswith(".tmp.h5") or ".tmp" in name]

    resumed = run(workdir, "resumed.h5", "-1", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.load(open(os.path.join("checkpoints", "resumed_hist.json")))
    straight_history = json.load(open(os.path.join(straight_dir, "checkpoints", "straight_hist.json")))
    assert len(history["loss"]) == 3
    assert history["lr"] == pytest.approx(straight_history["lr"])
    # Same data order, same optimizer state and same centers: the weights agree up to float round-off.
    np.testing.assert_allclose(np.load("final_weights.npy"), np.load(straight_dir / "final_weights.npy"), rtol=1e-4, atol=1e-5)


def test_sgdw_weight_decay_follows_the_learning_rate(dataset):
    from keras_insightface import optimizers

    tt = train.Train(dataset, "sgdw.h5", basic_model=tiny_basic_model(), batch_size=8, lr_base=0.1, lr_decay=0.1, lr_decay_steps=[1])
    optimizer = optimizers.SGDW(learning_rate=0.1, weight_decay=5e-4, momentum=0.9)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": optimizer}])
    # epoch 1 runs at lr 0.1 * 0.1, so the absolute decay is 5e-4 * 0.01 / 0.1
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert float(optimizer.decoupled_weight_decay.numpy()) == pytest.approx(5e-5)


def test_cosine_decay_on_batch_schedule(dataset):
    tt = train.Train(dataset, "cos.h5", basic_model=tiny_basic_model(), batch_size=8, lr_base=0.01, lr_decay=0.5, lr_decay_steps=500, lr_min=1e-5)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "sgd"}])
    steps = tt.steps_per_epoch  # 32 images / batch 8 = 4 steps; the lr was last set at iteration steps - 1
    expected = 1e-5 + (0.01 - 1e-5) * (1 + np.cos(np.pi * (steps - 1) / 500)) / 2
    assert float(tt.optimizer.learning_rate.numpy()) == pytest.approx(expected, rel=1e-4)


def test_steps_per_execution_and_jit_compile_reach_compile_and_train_the_same(dataset):
    """Two steps per execution run the same steps as one: the weights after an epoch agree."""
    weights = {}
    for steps_per_execution, jit_compile in ((1, False), (2, False), (2, True)):
        keras.utils.set_random_seed(0)
        tt = train.Train(dataset, "spe.h5", basic_model=tiny_basic_model(), batch_size=8, seed=0,
                         steps_per_execution=steps_per_execution, jit_compile=jit_compile)
        tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}])
        assert tt.model.steps_per_execution == steps_per_execution and tt.model.jit_compile == jit_compile
        weights[(steps_per_execution, jit_compile)] = np.concatenate([ww.ravel() for ww in tt.basic_model.get_weights()])
    np.testing.assert_allclose(weights[(2, False)], weights[(1, False)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights[(2, True)], weights[(1, False)], rtol=1e-3, atol=1e-4)  # XLA reorders float math


@pytest.mark.parametrize("kwargs", [{"steps_per_execution": 0}, {"jit_compile": "yes"}])
def test_bad_execution_options_are_named(dataset, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        train.Train(dataset, "bad.h5", basic_model=tiny_basic_model(), batch_size=8, **kwargs)
