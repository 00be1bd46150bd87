import hashlib
import json
import math
import os

import keras
import numpy as np
import pytest

from keras_insightface import checkpoints, myCallbacks
from keras_insightface import optimizers
from keras_insightface.myCallbacks import (
    CenterlossCallback,
    ConstantDecayScheduler,
    CosineLrScheduler,
    ExitOnNaN,
    ExponentialDecayScheduler,
    Gently_stop_callback,
    ModelCheckpointAtomic,
    My_history,
    OptimizerWeightDecay,
    build_lr_scheduler,
    exp_scheduler,
)


# ---------------------------------------------------------------- helpers


def tiny_model(optimizer=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01), loss=keras.losses.MeanSquaredError())
    return model


def tiny_data(num=16, nan=False):
    rng = np.random.default_rng(0)
    xx = rng.normal(size=(num, 4)).astype("float32")
    yy = xx.sum(axis=1, keepdims=True)
    if nan:
        yy[:] = np.nan
    return xx, yy


class Recorder(keras.callbacks.Callback):
    """Records (epoch, batch, lr, decoupled wd) at every batch begin."""

    def __init__(self):
        super().__init__()
        self.rows, self.epoch = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        wd = getattr(optimizer, "decoupled_weight_decay", None)
        wd = None if wd is None else float(wd.numpy())
        self.rows.append((self.epoch, batch, float(optimizer.learning_rate.numpy()), wd))


def cosine_reference(iteration, lr_base, first, m_mul, lr_min, warmup, t_mul=2.0):
    """SGDR written out independently: find the restart the iteration falls after by its start."""
    if iteration < warmup:
        return lr_min + (lr_base - lr_min) * (iteration + 1) / (warmup + 1)
    starts = [warmup + first * (t_mul**kk - 1) / (t_mul - 1) for kk in range(30)]
    kk = max(ii for ii, start in enumerate(starts) if start <= iteration)
    period = first * t_mul**kk
    peak = max(lr_base * m_mul**kk, lr_min)
    return lr_min + (peak - lr_min) * (1 + np.cos(np.pi * (iteration - starts[kk]) / period)) / 2


# ---------------------------------------------------------------- curves


def test_exp_scheduler_formula_warmup_and_floor():
    for epoch in [0, 1, 7, 40, 119]:
        assert exp_scheduler(epoch, 0.001, 0.05) == pytest.approx(0.001 * np.exp(-0.05 * epoch), rel=1e-12)
    # linear warmup of 3 epochs: 1/4, 2/4, 3/4 of lr_base, then the decay starts from lr_base
    assert [exp_scheduler(ee, 0.1, 0.1, warmup_steps=3) for ee in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert exp_scheduler(5, 0.1, 0.1, warmup_steps=3) == pytest.approx(0.1 * np.exp(-0.2))
    assert exp_scheduler(200, 0.001, 0.1, lr_min=1e-6) == 1e-6


def test_cosine_restarts_at_25_73_169_with_m_mul_peaks():
    bb = CosineLrScheduler(0.001, first_restart_step=24, lr_min=1e-7, warmup_iters=1, m_mul=0.4)
    lrs = np.array([bb.on_epoch_begin(ee).numpy() for ee in range(361)])
    expected = [cosine_reference(ee, 0.001, 24, 0.4, 1e-7, 1) for ee in range(361)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5)
    assert lrs[0] == pytest.approx(1e-7 + (0.001 - 1e-7) / 2, rel=1e-6)  # warmup
    assert lrs[1] == pytest.approx(0.001, rel=1e-6)
    assert lrs[13] == pytest.approx(1e-7 + (0.001 - 1e-7) / 2, rel=1e-5)  # half way through the first period
    restarts = [ee for ee in range(2, 361) if lrs[ee] > lrs[ee - 1]]
    assert restarts == [25, 73, 169]
    assert lrs[[25, 73, 169]] == pytest.approx([0.4e-3, 0.16e-3, 0.064e-3], rel=1e-5)
    assert lrs.min() >= 1e-7 * (1 - 1e-6)


def test_cosine_seed_plot_values_and_per_batch():
    aa = CosineLrScheduler(0.001, first_restart_step=100, lr_min=1e-6, warmup_iters=0, m_mul=1e-3)
    assert aa.on_epoch_begin(120).numpy() == pytest.approx(1e-6, rel=1e-5)  # peak after restart == lr_min
    assert aa.on_epoch_begin(50).numpy() == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2, rel=1e-5)
    cc = CosineLrScheduler(0.001, first_restart_step=21000, lr_min=1e-7, warmup_iters=4000, m_mul=0.5)
    assert cc.on_train_batch_begin(25 * 1000).numpy() == pytest.approx(5e-4, rel=1e-5)
    assert cc.on_train_batch_begin(1999).numpy() == pytest.approx(1e-7 + (0.001 - 1e-7) * 2000 / 4001, rel=1e-5)
    for it in [4000, 9000, 24999, 30000, 70000]:
        assert cc.on_train_batch_begin(it).numpy() == pytest.approx(cosine_reference(it, 0.001, 21000, 0.5, 1e-7, 4000), rel=1e-5)
    # per batch inside fit: iteration = epoch * steps_per_epoch + batch
    dd = CosineLrScheduler(0.001, first_restart_step=21000, steps_per_epoch=1000, lr_min=1e-7, warmup_iters=4000)
    assert dd.on_epoch_begin(25).numpy() == pytest.approx(5e-4, rel=1e-5)
    assert dd.on_train_batch_begin(500).numpy() == pytest.approx(cosine_reference(25500, 0.001, 21000, 0.5, 1e-7, 4000), rel=1e-5)


def test_cosine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="first_restart_step"):
        CosineLrScheduler(0.001, first_restart_step=0)
    with pytest.raises(ValueError, match="t_mul"):
        CosineLrScheduler(0.001, first_restart_step=10, t_mul=0.5)


def test_constant_decay():
    dd = ConstantDecayScheduler(0.001, lr_decay_steps=[10, 20, 30, 40], decay_rate=0.1)
    got = [float(dd.on_epoch_begin(ee)) for ee in [0, 9, 10, 19, 20, 35, 45]]
    assert got == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6, 1e-7], rel=1e-5)
    warm = ConstantDecayScheduler(0.1, lr_decay_steps=[3], decay_rate=0.1, warmup_steps=2)
    assert [float(warm.on_epoch_begin(ee)) for ee in range(4)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.01], rel=1e-5)


def test_build_lr_scheduler_table():
    exp = build_lr_scheduler(0.001, 0.05, 0, lr_min=1e-6)
    assert isinstance(exp, ExponentialDecayScheduler) and not exp.is_on_batch
    assert float(exp.on_epoch_begin(10)) == pytest.approx(0.001 * np.exp(-0.5), rel=1e-5)
    assert isinstance(build_lr_scheduler(0.001, 0.05, 1), ExponentialDecayScheduler)
    assert float(build_lr_scheduler(0.001, 0.1, 0, lr_min=1e-5).on_epoch_begin(100)) == pytest.approx(1e-5)

    epoch_cos = build_lr_scheduler(0.001, 0.5, 24, lr_min=1e-7, lr_warmup_steps=1)
    assert isinstance(epoch_cos, CosineLrScheduler) and not epoch_cos.is_on_batch
    assert float(epoch_cos.on_epoch_begin(25)) == pytest.approx(0.5e-3, rel=1e-5)
    assert float(epoch_cos.on_epoch_begin(73)) == pytest.approx(0.25e-3, rel=1e-5)
    # no restart: m_mul * lr_base == lr_min keeps the lr at lr_min after the first period
    flat = build_lr_scheduler(0.001, 1e-4, 24, lr_min=1e-7)
    assert float(flat.on_epoch_begin(30)) == pytest.approx(1e-7, rel=1e-5)
    assert build_lr_scheduler(0.001, 0.5, 499).first_restart_step == 499

    batch_cos = build_lr_scheduler(0.001, 0.5, 24 * 1000, lr_min=1e-7, lr_warmup_steps=1, steps_per_epoch=1000)
    assert isinstance(batch_cos, CosineLrScheduler) and batch_cos.is_on_batch and batch_cos.warmup_iters == 1000
    assert float(batch_cos.on_epoch_begin(25)) == pytest.approx(0.5e-3, rel=1e-5)  # restart on batch 25000
    assert float(batch_cos.on_epoch_begin(73)) == pytest.approx(0.25e-3, rel=1e-5)  # and on 73000
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_lr_scheduler(0.001, 0.5, 500)

    constant = build_lr_scheduler(0.1, 0.1, [3, 5, 7, 16, 20, 24])
    assert isinstance(constant, ConstantDecayScheduler)
    assert float(constant.on_epoch_begin(5)) == pytest.approx(1e-3, rel=1e-5)


# ---------------------------------------------------------------- inside fit


@pytest.mark.parametrize(
    "scheduler, expected",
    [
        (ExponentialDecayScheduler(0.1, decay_rate=0.5, warmup_steps=1), lambda ee, bb: [0.05, 0.1, 0.1 * math.exp(-0.5)][ee]),
        (ConstantDecayScheduler(0.1, [1, 2], decay_rate=0.1), lambda ee, bb: 0.1 * 0.1**ee),
        (
            CosineLrScheduler(0.1, first_restart_step=2, m_mul=0.5, lr_min=0.01),
            lambda ee, bb: cosine_reference(ee, 0.1, 2, 0.5, 0.01, 0),
        ),
        (
            CosineLrScheduler(0.1, first_restart_step=3, steps_per_epoch=4, m_mul=0.5, lr_min=0.01, warmup_iters=2),
            lambda ee, bb: cosine_reference(ee * 4 + bb, 0.1, 3, 0.5, 0.01, 2),
        ),
    ],
    ids=["exponential", "constant", "cosine_epoch", "cosine_batch"],
)
def test_scheduler_sets_optimizer_lr_in_fit(scheduler, expected):
    model, recorder = tiny_model(), Recorder()
    xx, yy = tiny_data()
    history = model.fit(xx, yy, batch_size=4, epochs=3, verbose=0, callbacks=[scheduler, recorder])
    assert len(recorder.rows) == 12
    for epoch, batch, lr, _ in recorder.rows:
        assert lr == pytest.approx(expected(epoch, batch), rel=1e-5), (epoch, batch)
    last_lr_of_epoch = [expected(ee, 3) for ee in range(3)]
    assert history.history["lr"] == pytest.approx(last_lr_of_epoch, rel=1e-5)


def test_per_batch_cosine_resumes_with_global_iteration():
    scheduler = CosineLrScheduler(0.1, first_restart_step=3, steps_per_epoch=4, m_mul=0.5, lr_min=0.01)
    model, recorder = tiny_model(), Recorder()
    model.fit(*tiny_data(), batch_size=4, epochs=3, initial_epoch=2, verbose=0, callbacks=[scheduler, recorder])
    got = [lr for _, _, lr, _ in recorder.rows]
    assert got == pytest.approx([cosine_reference(8 + bb, 0.1, 3, 0.5, 0.01, 0) for bb in range(4)], rel=1e-5)


@pytest.mark.parametrize("on_batch", [False, True])
def test_optimizer_weight_decay_follows_lr(on_batch):
    lr_base, wd_base = 0.1, 5e-4
    model, recorder = tiny_model(optimizers.SGDW(lr_base, weight_decay=wd_base)), Recorder()
    if on_batch:
        scheduler = CosineLrScheduler(lr_base, first_restart_step=6, steps_per_epoch=4, lr_min=0.001)
    else:
        scheduler = ConstantDecayScheduler(lr_base, [1, 2], decay_rate=0.1)
    callbacks = [scheduler, OptimizerWeightDecay(lr_base, wd_base, is_lr_on_batch=on_batch), recorder]
    model.fit(*tiny_data(), batch_size=4, epochs=3, verbose=0, callbacks=callbacks)
    for _, _, lr, wd in recorder.rows:
        assert wd == pytest.approx(wd_base * lr / lr_base, rel=1e-5)
    assert len({round(wd, 12) for *_, wd in recorder.rows}) == (12 if on_batch else 3)


def test_optimizer_weight_decay_tells_when_optimizer_has_none(capsys):
    model = tiny_model(keras.optimizers.Adam(0.01))
    model.fit(*tiny_data(), batch_size=8, epochs=1, verbose=0, callbacks=[OptimizerWeightDecay(0.01, 5e-4)])
    assert ">>>> OptimizerWeightDecay: Adam has no decoupled weight decay" in capsys.readouterr().out


# ---------------------------------------------------------------- history


class FakeEval(keras.callbacks.Callback):
    """Stands for evals.eval_callback: sets cur_acc at each epoch end."""

    def __init__(self, name, accs):
        super().__init__()
        self.test_names, self.accs, self.cur_acc = name, accs, 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.cur_acc = self.accs[epoch]


def test_history_json_and_resume(tmp_path, capsys):
    save_file = str(tmp_path / "checkpoints" / "demo_hist.json")
    lfw = FakeEval("lfw", [0.5, 0.6, 0.7, 0.8])
    scheduler = ConstantDecayScheduler(0.1, [1, 2, 3], decay_rate=0.5)
    model = tiny_model()
    hist = My_history(save_file, evals=[lfw])
    first = model.fit(*tiny_data(), batch_size=8, epochs=3, verbose=0, callbacks=[scheduler, lfw, hist])
    assert capsys.readouterr().out == ""
    with open(save_file) as ff:
        saved = json.load(ff)
    assert saved["epoch"] == [0, 1, 2]
    assert saved["loss"] == pytest.approx(first.history["loss"], rel=1e-6)
    assert saved["lr"] == pytest.approx([0.1, 0.05, 0.025], rel=1e-6)
    assert saved["lfw"] == pytest.approx([0.5, 0.6, 0.7])
    assert os.listdir(tmp_path / "checkpoints") == ["demo_hist.json"]

    # resumed from epoch 1 (as after a crash during epoch 1): epochs 1, 2 are replaced, 3 is added
    resumed = My_history(save_file, evals=[lfw])
    assert resumed.history == saved
    lfw.accs = [0.0, 0.65, 0.75, 0.85]
    second = model.fit(*tiny_data(), batch_size=8, epochs=4, initial_epoch=1, verbose=0, callbacks=[scheduler, lfw, resumed])
    with open(save_file) as ff:
        saved2 = json.load(ff)
    assert saved2["epoch"] == [0, 1, 2, 3]
    assert saved2["loss"][0] == saved["loss"][0]
    assert saved2["loss"][1:] == pytest.approx(second.history["loss"], rel=1e-6)
    assert saved2["lfw"] == pytest.approx([0.5, 0.65, 0.75, 0.85])
    assert saved2["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125], rel=1e-6)


def test_history_initial_file_set_initial_epoch_and_new_keys(tmp_path):
    initial = tmp_path / "old_hist.json"
    initial.write_text(json.dumps({"loss": [3.0, 2.0, 1.0], "lfw": [0.8, 0.9]}))  # an older file, no "epoch"
    hist = My_history(str(tmp_path / "new_hist.json"), initial_file=str(initial))
    assert hist.history == {"loss": [3.0, 2.0, 1.0], "lfw": [None, 0.8, 0.9], "epoch": [0, 1, 2]}
    hist.set_initial_epoch(2)
    assert hist.history == {"loss": [3.0, 2.0], "lfw": [None, 0.8], "epoch": [0, 1]}
    hist.on_epoch_end(2, {"loss": 0.5, "center_loss": 0.1, "lr": 0.01})
    assert hist.history == {
        "loss": [3.0, 2.0, 0.5],
        "lfw": [None, 0.8, None],
        "epoch": [0, 1, 2],
        "center_loss": [None, None, 0.1],
        "lr": [None, None, 0.01],
    }
    assert json.loads((tmp_path / "new_hist.json").read_text()) == hist.history


def test_history_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad_hist.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="bad_hist.json"):
        My_history(str(bad))


# ---------------------------------------------------------------- checkpoints and NaN


def file_digest(path):
    with open(path, "rb") as ff:
        return hashlib.sha256(ff.read()).hexdigest()


@pytest.mark.parametrize("name, weights_only", [("model.h5", False), ("model.keras", False), ("model.weights.h5", True)])
def test_checkpoint_saved_each_epoch_and_kept_on_nan(tmp_path, capsys, name, weights_only):
    path = str(tmp_path / name)
    model = tiny_model()
    checkpoint = ModelCheckpointAtomic(path, save_weights_only=weights_only)
    model.fit(*tiny_data(), batch_size=8, epochs=2, verbose=0, callbacks=[ExitOnNaN(), checkpoint])
    good_weights = [ww.copy() for ww in model.get_weights()]
    digest = file_digest(path)
    if weights_only:
        restored = tiny_model()
        restored.load_weights(path)
    else:
        restored = keras.models.load_model(path)
    for got, want in zip(restored.get_weights(), good_weights):
        np.testing.assert_array_equal(got, want)

    recorder = Recorder()
    capsys.readouterr()
    model.fit(*tiny_data(nan=True), batch_size=4, epochs=3, verbose=0, callbacks=[recorder, ExitOnNaN(), checkpoint])
    out = capsys.readouterr().out
    assert ">>>> NaN loss, stop training" in out
    assert "not saved" in out
    assert len(recorder.rows) == 1  # stopped after the first NaN batch
    assert file_digest(path) == digest
    optimizer_state = [] if weights_only else [os.path.basename(checkpoints.optimizer_state_path(path))]
    assert sorted(os.listdir(tmp_path)) == sorted([name] + optimizer_state)


def test_optimizer_state_round_trip(tmp_path):
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.fit(*tiny_data(), batch_size=8, epochs=2, verbose=0)
    path = str(tmp_path / "model_optimizer.npz")
    checkpoints.save_optimizer_state(model.optimizer, path)
    restored = checkpoints.restore_optimizer_state(path, model.trainable_variables)
    assert type(restored) is keras.optimizers.SGD and restored.momentum == pytest.approx(0.9)
    assert int(restored.iterations.numpy()) == int(model.optimizer.iterations.numpy()) > 0
    for got, want in zip(restored.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    with pytest.raises(checkpoints.CheckpointError, match="does not match"):
        checkpoints.restore_optimizer_state(path, model.trainable_variables[:1])


def test_checkpoint_skips_non_finite_epoch_loss_and_checks_extension(tmp_path, capsys):
    path = tmp_path / "model.keras"
    checkpoint = ModelCheckpointAtomic(str(path))
    checkpoint.set_model(tiny_model())
    checkpoint.on_epoch_end(0, {"loss": float("inf")})
    assert not path.exists() and "Loss is not finite at epoch 1" in capsys.readouterr().out
    checkpoint.on_epoch_end(1, {"loss": 0.5})
    assert path.exists()
    with pytest.raises(ValueError, match=r"model\.weights"):
        ModelCheckpointAtomic(str(tmp_path / "model.weights"))
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        ModelCheckpointAtomic(str(tmp_path / "model.h5"), save_weights_only=True)


class FakeCenterLoss:
    def __init__(self):
        self.saved = []

    def save_centers(self, path):
        self.saved.append(path)


def test_centerloss_callback_saves_each_epoch_not_after_nan(tmp_path):
    center_loss, path = FakeCenterLoss(), str(tmp_path / "demo_centers.npy")
    model = tiny_model()
    model.fit(*tiny_data(), batch_size=8, epochs=2, verbose=0, callbacks=[CenterlossCallback(center_loss, path)])
    assert center_loss.saved == [path, path]
    model.fit(*tiny_data(nan=True), batch_size=8, epochs=2, verbose=0, callbacks=[ExitOnNaN(), CenterlossCallback(center_loss, path)])
    assert center_loss.saved == [path, path]


# ---------------------------------------------------------------- gentle stop


class FakeStdin:
    def __init__(self, fd, tty):
        self.fd, self.tty = fd, tty

    def fileno(self):
        return self.fd

    def isatty(self):
        return self.tty


@pytest.fixture
def stdin_pipe(monkeypatch):
    read_fd, write_fd = os.pipe()
    yield lambda tty: monkeypatch.setattr(myCallbacks.sys, "stdin", FakeStdin(read_fd, tty)), write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_gently_stop_on_n(stdin_pipe, capsys):
    use_stdin, write_fd = stdin_pipe
    use_stdin(tty=True)
    stopper = Gently_stop_callback()
    model = tiny_model()

    class TypeN(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.params and batch == 0:
                os.write(write_fd, b"n\n")

    history = model.fit(*tiny_data(), batch_size=8, epochs=5, verbose=0, callbacks=[TypeN(), stopper])
    assert len(history.history["loss"]) == 1
    out = capsys.readouterr().out
    assert "Type n + <Enter>" in out and "stop training after epoch 1" in out


def test_gently_stop_ignores_other_input_and_does_not_block(stdin_pipe):
    use_stdin, write_fd = stdin_pipe
    use_stdin(tty=True)
    history = tiny_model().fit(*tiny_data(), batch_size=8, epochs=3, verbose=0, callbacks=[Gently_stop_callback()])
    assert len(history.history["loss"]) == 3  # nothing typed: never waits, never stops
    os.write(write_fd, b"y\nno\n")
    history = tiny_model().fit(*tiny_data(), batch_size=8, epochs=2, verbose=0, callbacks=[Gently_stop_callback()])
    assert len(history.history["loss"]) == 2


def test_gently_stop_inert_without_terminal(stdin_pipe, capsys):
    use_stdin, write_fd = stdin_pipe
    use_stdin(tty=False)
    os.write(write_fd, b"n\n")
    history = tiny_model().fit(*tiny_data(), batch_size=8, epochs=2, verbose=0, callbacks=[Gently_stop_callback()])
    assert len(history.history["loss"]) == 2
    assert capsys.readouterr().out == ""
