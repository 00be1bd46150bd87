"""Training callbacks: learning-rate and weight-decay schedules, history, checkpoints, stopping.

Usage:
    lr_scheduler = build_lr_scheduler(lr_base=0.001, lr_decay=0.5, lr_decay_steps=24, lr_min=1e-7)
    callbacks = [
        lr_scheduler,                                   # sets the lr at each epoch (or batch) begin
        OptimizerWeightDecay(0.001, 5e-5),              # after the lr scheduler: wd follows the lr
        ExitOnNaN(),
        ModelCheckpointAtomic("checkpoints/model.h5"),
        My_history("checkpoints/model_hist.json"),      # after the lr scheduler and the eval callbacks
        Gently_stop_callback(),
    ]

Callback order matters where one reads what another writes: `OptimizerWeightDecay` reads the learning
rate the scheduler has just set, and `My_history` reads `logs["lr"]` and the evals' `cur_acc`.
"""
import json
import math
import os
import select
import sys

import keras

from . import checkpoints
from .io_utils import atomic_path, atomic_write_text


def _optimizer_of(model):
    """The optimizer that holds the variables (unwraps a LossScaleOptimizer)."""
    optimizer = model.optimizer
    return getattr(optimizer, "inner_optimizer", optimizer)


def _current_lr(model):
    return float(keras.ops.convert_to_numpy(_optimizer_of(model).learning_rate))


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _is_finite_number(value):
    return _is_number(value) and math.isfinite(float(value))


# ---------------------------------------------------------------- learning rate


def linear_warmup(step, warmup_steps, lr_base, lr_min=0.0):
    """Learning rate at `step` < `warmup_steps` of a linear warmup from lr_min towards lr_base.

    lr = lr_min + (lr_base - lr_min) * (step + 1) / (warmup_steps + 1), so the first step already
    trains and the step after the warmup starts the decay at lr_base.
    Usage: linear_warmup(0, 4, 0.1)  # 0.02
    """
    return lr_min + (lr_base - lr_min) * (step + 1) / (warmup_steps + 1)


def exp_scheduler(epoch, lr_base=0.001, decay_rate=0.05, lr_min=0, warmup_steps=0):
    """Exponential decay on epochs, after a linear warmup of `warmup_steps` epochs.

    epoch < warmup_steps:  lr = linear_warmup(epoch, warmup_steps, lr_base, lr_min)
    otherwise:             lr = max(lr_base * exp(-decay_rate * (epoch - warmup_steps)), lr_min)
    Usage: [exp_scheduler(ii, 0.001, 0.05) for ii in range(120)]
    """
    if epoch < warmup_steps:
        return linear_warmup(epoch, warmup_steps, lr_base, lr_min)
    return max(lr_base * math.exp(-decay_rate * (epoch - warmup_steps)), lr_min)


class LearningRateCallback(keras.callbacks.Callback):
    """Base of the schedulers: `lr_at(iteration)` gives the learning rate, this class applies it.

    Per epoch (steps_per_epoch <= 0): the lr is set at each epoch begin, iteration = epoch.
    Per batch (steps_per_epoch > 0): the lr is set at each batch begin,
    iteration = epoch * steps_per_epoch + batch.
    Without a model (plotting a curve) `on_epoch_begin(ii)` / `on_train_batch_begin(ii)` just return
    the learning rate at iteration ii. At epoch end the current lr is put into `logs["lr"]`.
    """

    def __init__(self, steps_per_epoch=-1):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.is_on_batch = steps_per_epoch > 0
        self.cur_epoch = 0

    def lr_at(self, iteration):
        raise NotImplementedError

    def _apply(self, iteration):
        lr = keras.ops.convert_to_tensor(self.lr_at(iteration), dtype="float32")
        if self.model is not None:
            _optimizer_of(self.model).learning_rate = lr
        return lr

    def on_epoch_begin(self, epoch, logs=None):
        self.cur_epoch = epoch
        return self._apply(epoch * self.steps_per_epoch if self.is_on_batch else epoch)

    def on_train_batch_begin(self, iteration, logs=None):
        if self.model is not None and not self.is_on_batch:
            return None  # a per-epoch schedule inside fit: batches keep the epoch's lr
        return self._apply(self.cur_epoch * max(self.steps_per_epoch, 0) + iteration)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.model is not None:
            logs["lr"] = _current_lr(self.model)


class ExponentialDecayScheduler(LearningRateCallback):
    """`exp_scheduler` as a callback, per epoch.

    Usage: ExponentialDecayScheduler(0.001, decay_rate=0.05, lr_min=1e-6)
    """

    def __init__(self, lr_base, decay_rate=0.05, lr_min=0, warmup_steps=0):
        super().__init__()
        self.lr_base, self.decay_rate, self.lr_min, self.warmup_steps = lr_base, decay_rate, lr_min, warmup_steps

    def lr_at(self, iteration):
        return exp_scheduler(iteration, self.lr_base, self.decay_rate, self.lr_min, self.warmup_steps)


class CosineLrScheduler(LearningRateCallback):
    """Cosine decay with warm restarts (SGDR), on epochs or on batches, after a linear warmup.

    After `warmup_iters` iterations of `linear_warmup`, period k (k = 0, 1, ...) lasts
    first_restart_step * t_mul**k iterations and starts at peak_k = max(lr_base * m_mul**k, lr_min);
    at step t of the period: lr = lr_min + (peak_k - lr_min) * (1 + cos(pi * t / period_k)) / 2.
    With first_restart_step=24, warmup_iters=1, t_mul=2 the restarts fall at 25, 73, 169.
    Per batch when steps_per_epoch > 0 (then first_restart_step and warmup_iters count batches).
    Usage:
        CosineLrScheduler(0.001, first_restart_step=24, lr_min=1e-7, warmup_iters=1, m_mul=0.4)
        CosineLrScheduler(0.001, first_restart_step=21000, steps_per_epoch=1000, lr_min=1e-7, warmup_iters=4000)
    """

    def __init__(self, lr_base, first_restart_step, steps_per_epoch=-1, m_mul=0.5, t_mul=2.0, lr_min=0.0, warmup_iters=0):
        super().__init__(steps_per_epoch)
        if first_restart_step <= 0:
            raise ValueError("CosineLrScheduler: first_restart_step must be > 0, got {}".format(first_restart_step))
        if t_mul < 1:
            raise ValueError("CosineLrScheduler: t_mul must be >= 1 (periods never shrink), got {}".format(t_mul))
        self.lr_base, self.first_restart_step, self.m_mul, self.t_mul = lr_base, first_restart_step, m_mul, t_mul
        self.lr_min, self.warmup_iters = lr_min, warmup_iters

    def lr_at(self, iteration):
        if iteration < self.warmup_iters:
            return linear_warmup(iteration, self.warmup_iters, self.lr_base, self.lr_min)
        step, period, peak = iteration - self.warmup_iters, self.first_restart_step, self.lr_base
        while step >= period:
            step, period, peak = step - period, period * self.t_mul, peak * self.m_mul
        peak = max(peak, self.lr_min)
        return self.lr_min + (peak - self.lr_min) * 0.5 * (1 + math.cos(math.pi * step / period))


class ConstantDecayScheduler(LearningRateCallback):
    """Step decay: lr = lr_base * decay_rate ** (number of lr_decay_steps <= epoch), per epoch.

    `lr_decay_steps` are absolute epochs; epochs before `warmup_steps` use `linear_warmup` from 0.
    Usage: ConstantDecayScheduler(0.1, lr_decay_steps=[3, 5, 7, 16, 20, 24], decay_rate=0.1)
    """

    def __init__(self, lr_base, lr_decay_steps, decay_rate=0.1, warmup_steps=0):
        super().__init__()
        self.lr_base, self.lr_decay_steps = lr_base, sorted(lr_decay_steps)
        self.decay_rate, self.warmup_steps = decay_rate, warmup_steps

    def lr_at(self, iteration):
        if iteration < self.warmup_steps:
            return linear_warmup(iteration, self.warmup_steps, self.lr_base)
        return self.lr_base * self.decay_rate ** sum(step <= iteration for step in self.lr_decay_steps)


def lr_decay_type(lr_decay_steps):
    """The decay type `lr_decay_steps` selects: list -> constant, <= 1 exponential,
    (1, 500) cosine on epoch, >= 500 cosine on batch.  Usage: lr_decay_type(24)  # "cosine_epoch"
    """
    if isinstance(lr_decay_steps, (list, tuple)):
        return "constant"
    if lr_decay_steps <= 1:
        return "exponential"
    return "cosine_epoch" if lr_decay_steps < 500 else "cosine_batch"


def _cosine_on_batch(lr_base, lr_decay, lr_decay_steps, lr_min, lr_warmup_steps, steps_per_epoch):
    if steps_per_epoch <= 0:
        raise ValueError(
            "build_lr_scheduler: lr_decay_steps={} (>= 500) selects cosine decay on batch, which needs "
            "steps_per_epoch > 0, got {}".format(lr_decay_steps, steps_per_epoch)
        )
    warmup_iters = lr_warmup_steps * steps_per_epoch
    return CosineLrScheduler(lr_base, lr_decay_steps, steps_per_epoch, m_mul=lr_decay, lr_min=lr_min, warmup_iters=warmup_iters)


_LR_SCHEDULER_BUILDERS = {
    "constant": lambda lr_base, lr_decay, steps, lr_min, warmup, spe: ConstantDecayScheduler(
        lr_base, steps, decay_rate=lr_decay, warmup_steps=warmup
    ),
    "exponential": lambda lr_base, lr_decay, steps, lr_min, warmup, spe: ExponentialDecayScheduler(
        lr_base, decay_rate=lr_decay, lr_min=lr_min, warmup_steps=warmup
    ),
    "cosine_epoch": lambda lr_base, lr_decay, steps, lr_min, warmup, spe: CosineLrScheduler(
        lr_base, steps, m_mul=lr_decay, lr_min=lr_min, warmup_iters=warmup
    ),
    "cosine_batch": _cosine_on_batch,
}


def build_lr_scheduler(lr_base, lr_decay, lr_decay_steps, lr_min=1e-6, lr_warmup_steps=0, steps_per_epoch=-1):
    """The learning-rate callback of `train.Train`'s lr_base / lr_decay / lr_decay_steps / lr_min.

    | lr_decay_steps | decay type          | lr_decay_steps means | lr_decay means |
    | <= 1           | exponential         |                      | decay_rate     |
    | > 1, < 500     | cosine, on epoch    | first_restart_step   | m_mul          |
    | >= 500         | cosine, on batch    | first_restart_step   | m_mul          |
    | list           | constant            | decay epochs         | decay_rate     |
    `lr_warmup_steps` counts epochs (converted to batches for the per-batch cosine, which needs
    `steps_per_epoch`).
    Usage: build_lr_scheduler(0.001, 0.5, 24, lr_min=1e-7, lr_warmup_steps=1)  # restarts at 25, 73, 169
    """
    builder = _LR_SCHEDULER_BUILDERS[lr_decay_type(lr_decay_steps)]
    return builder(lr_base, lr_decay, lr_decay_steps, lr_min, lr_warmup_steps, steps_per_epoch)


# ---------------------------------------------------------------- weight decay


class OptimizerWeightDecay(keras.callbacks.Callback):
    """Makes the decoupled weight decay follow the learning rate: wd = wd_base * lr / lr_base.

    Works on optimizers with a `decoupled_weight_decay` variable (`optimizers.SGDW` / `AdamW`);
    place it after the lr scheduler. `is_lr_on_batch=True` also updates at every batch begin.
    Usage: OptimizerWeightDecay(lr_base=0.1, wd_base=5e-4)
    """

    def __init__(self, lr_base, wd_base, is_lr_on_batch=False):
        super().__init__()
        if not lr_base > 0:
            raise ValueError("OptimizerWeightDecay: lr_base must be > 0, got {}".format(lr_base))
        self.lr_base, self.wd_base, self.is_lr_on_batch = lr_base, wd_base, is_lr_on_batch

    def _has_decoupled_weight_decay(self):
        return hasattr(_optimizer_of(self.model), "decoupled_weight_decay")

    def _update(self):
        if not self._has_decoupled_weight_decay():
            return None
        weight_decay = self.wd_base * _current_lr(self.model) / self.lr_base
        _optimizer_of(self.model).decoupled_weight_decay = weight_decay
        return weight_decay

    def on_train_begin(self, logs=None):
        if not self._has_decoupled_weight_decay():
            name = type(_optimizer_of(self.model)).__name__
            print(">>>> OptimizerWeightDecay: {} has no decoupled weight decay, nothing to schedule".format(name))

    def on_epoch_begin(self, epoch, logs=None):
        self._update()

    def on_train_batch_begin(self, batch, logs=None):
        if self.is_lr_on_batch:
            self._update()


# ---------------------------------------------------------------- stopping and saving

_NAN_STOP_FLAG = "_stopped_on_nan_loss"


def stopped_on_nan(model):
    """True when `ExitOnNaN` stopped the current fit of `model` on a NaN / inf loss."""
    return bool(getattr(model, _NAN_STOP_FLAG, False))


class ExitOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or inf, and marks the model so that
    `ModelCheckpointAtomic` and `CenterlossCallback` keep the last good files.

    Usage: model.fit(..., callbacks=[ExitOnNaN(), ModelCheckpointAtomic("checkpoints/model.h5")])
    """

    def on_train_begin(self, logs=None):
        setattr(self.model, _NAN_STOP_FLAG, False)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _is_finite_number(loss):
            print(">>>> NaN loss, stop training")
            setattr(self.model, _NAN_STOP_FLAG, True)
            self.model.stop_training = True


def _skip_saving(model, epoch, logs, what):
    """True (with a `>>>>` line) when the epoch's loss is not finite: the last good file is kept."""
    loss = (logs or {}).get("loss")
    if stopped_on_nan(model) or (loss is not None and not _is_finite_number(loss)):
        print(">>>> Loss is not finite at epoch {}, {} not saved, keeping the last good one".format(epoch + 1, what))
        return True
    return False


class ModelCheckpointAtomic(keras.callbacks.Callback):
    """Saves `self.model` to `filepath` at each epoch end, atomically, skipping epochs with a
    non-finite loss. `.keras` or `.h5` for whole models; `.weights.h5` with save_weights_only.
    Whole-model checkpoints also save the optimizer state to `optimizer_state_path(filepath)`.

    Usage: ModelCheckpointAtomic("checkpoints/keras_mobilenet_emore.h5")
    """

    def __init__(self, filepath, save_weights_only=False):
        super().__init__()
        filepath = os.fspath(filepath)
        expected = (".weights.h5",) if save_weights_only else (".keras", ".h5")
        if not filepath.endswith(expected):
            raise ValueError(
                "ModelCheckpointAtomic: filepath '{}' must end with {} (save_weights_only={})".format(
                    filepath, " or ".join(expected), save_weights_only
                )
            )
        self.filepath, self.save_weights_only = filepath, save_weights_only

    def on_epoch_end(self, epoch, logs=None):
        if _skip_saving(self.model, epoch, logs, self.filepath):
            return
        suffix = ".weights.h5" if self.save_weights_only else None
        with atomic_path(self.filepath, suffix=suffix) as tmp:
            if self.save_weights_only:
                self.model.save_weights(tmp)
            else:
                self.model.save(tmp)
        optimizer = getattr(self.model, "optimizer", None)
        if not self.save_weights_only and optimizer is not None and optimizer.built:
            checkpoints.save_optimizer_state(optimizer, checkpoints.optimizer_state_path(self.filepath), self.model.weights)


class CheckpointCommit(keras.callbacks.Callback):
    """At each epoch end, commits the whole run state as one (see `checkpoints.RunCheckpoint.commit`): the full
    model, its optimizer state, the center-loss centers, the history and, when the last eval set improved,
    the best basic model. Skipped when the epoch's loss is not finite, so the last good state stays.

    Place it after the eval callbacks and `My_history`, whose results it saves.
    Usage: CheckpointCommit(checkpoints.RunCheckpoint("model.h5"), history=my_hist, best_eval=my_evals[-1])
    """

    def __init__(self, run, history, best_eval=None, center_loss=None):
        super().__init__()
        self.run, self.history, self.best_eval, self.center_loss = run, history, best_eval, center_loss

    def on_epoch_end(self, epoch, logs=None):
        if _skip_saving(self.model, epoch, logs, self.run.model_path):
            return
        model, optimizer = _checkpointed_model_and_optimizer(self.model)
        writers = {"model": model.save, "history": lambda path: checkpoints.write_history(path, self.history.history)}
        if optimizer is not None and optimizer.built:
            writers["optimizer"] = lambda path: checkpoints.save_optimizer_state(optimizer, path, model.weights)
        if self.center_loss is not None:
            writers["centers"] = self.center_loss.save_centers
        best_basic_name = None
        best = getattr(self.best_eval, "best_snapshot", None)
        if best is not None:
            step_name, accuracy, weights = best
            best_basic_name = os.path.basename(self.run.best_basic_path(self.best_eval.test_names, step_name, accuracy))
            writers["best_basic"] = lambda path: _save_with_weights(self.best_eval.basic_model, weights, path)
        self.run.commit(epoch + 1, writers, best_basic_name)
        if best is not None:
            print(">>>> Saved best basic model: {}".format(os.path.join(self.run.folder, best_basic_name)))
            self.best_eval.best_snapshot = None


def _checkpointed_model_and_optimizer(model):
    """The model and optimizer a checkpoint holds: a model with `checkpoint_state()` (the sharded head) gives its dense
    form, any other model itself."""
    if hasattr(model, "checkpoint_state"):
        return model.checkpoint_state()
    return model, getattr(model, "optimizer", None)


def _save_with_weights(model, weights, path):
    """Save `model` as it was with `weights` (a snapshot taken at an eval), its current weights untouched."""
    current = model.get_weights()
    model.set_weights(weights)
    try:
        model.save(path, include_optimizer=False)
    finally:
        model.set_weights(current)


class CenterlossCallback(keras.callbacks.Callback):
    """Saves the center-loss centers at each epoch end: `center_loss.save_centers(save_file)`.

    Usage: CenterlossCallback(center_loss, "checkpoints/keras_mobilenet_emore_centers.npy")
    """

    def __init__(self, center_loss, save_file):
        super().__init__()
        self.center_loss, self.save_file = center_loss, save_file

    def on_epoch_end(self, epoch, logs=None):
        if not _skip_saving(self.model, epoch, logs, self.save_file):
            self.center_loss.save_centers(self.save_file)


def _typed_words(stream):
    """Words typed on `stream` so far, read without blocking; [] when nothing is waiting."""
    fd, data = stream.fileno(), b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="ignore").split()


class Gently_stop_callback(keras.callbacks.Callback):
    """Typing `n` + <Enter> any time during training stops it at the end of the current epoch.

    stdin is checked without blocking at each epoch end; when stdin is not a terminal
    (notebooks, nohup, pipes) the callback does nothing.
    Usage: model.fit(..., callbacks=[Gently_stop_callback()])
    """

    prompt = ">>>> Type n + <Enter> any time to stop training at the end of the current epoch"

    def _stdin(self):
        stream = sys.stdin
        return stream if stream is not None and stream.isatty() else None

    def on_train_begin(self, logs=None):
        if self._stdin() is not None:
            print(self.prompt)

    def on_epoch_end(self, epoch, logs=None):
        stream = self._stdin()
        if stream is None:
            return
        if "n" in [word.lower() for word in _typed_words(stream)]:
            print(">>>> Got n, stop training after epoch {}".format(epoch + 1))
            self.model.stop_training = True


# ---------------------------------------------------------------- history


class My_history(keras.callbacks.Callback):
    """Collects every epoch's logs (loss, accuracy, lr, per-output losses) and eval accuracies
    into `self.history` (a dict of lists, one entry per epoch, None where a value was missing, the
    0-based epoch numbers under "epoch") and writes it to `save_file` as JSON at each epoch end.

    An existing `save_file` (else `initial_file`) is reloaded; each fit drops the entries of epochs
    >= its initial epoch, so a resumed run continues the same history. With `save_file=None` nothing is
    written (`train.Train` commits the history with the rest of the checkpoint).
    `evals` are objects with `test_names` and `cur_acc` (evals.eval_callback), placed before this
    callback in the callback list.
    Usage: My_history("checkpoints/keras_mobilenet_emore_hist.json", evals=[lfw_eval])
    """

    def __init__(self, save_file, evals=[], initial_file=None):
        super().__init__()
        self.save_file, self.evals = save_file, list(evals)
        source = next((ff for ff in (save_file, initial_file) if ff and os.path.exists(ff)), None)
        self.history = checkpoints.load_history(source) if source else {}
        self._truncate_at_first_epoch = False

    def set_initial_epoch(self, initial_epoch):
        """Drops the entries of epochs >= initial_epoch.  Usage: hist.set_initial_epoch(45)"""
        epochs = self.history.get("epoch", [])
        keep = [ii for ii, epoch in enumerate(epochs) if epoch < initial_epoch]
        self.history = {kk: [vv[ii] for ii in keep] for kk, vv in self.history.items()}

    def on_train_begin(self, logs=None):
        self._truncate_at_first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._truncate_at_first_epoch:
            self.set_initial_epoch(epoch)
            self._truncate_at_first_epoch = False

    def _epoch_record(self, epoch, logs):
        record = {kk: float(vv) for kk, vv in (logs or {}).items() if _is_number(vv)}
        if "lr" not in record and self.model is not None and getattr(self.model, "optimizer", None) is not None:
            record["lr"] = _current_lr(self.model)
        for ee in self.evals:
            record[ee.test_names] = float(ee.cur_acc)
        record["epoch"] = int(epoch)
        return record

    def on_epoch_end(self, epoch, logs=None):
        record = self._epoch_record(epoch, logs)
        recorded = len(self.history.get("epoch", []))
        for key in list(self.history) + [kk for kk in record if kk not in self.history]:
            self.history.setdefault(key, [None] * recorded).append(record.get(key))
        if self.save_file:
            atomic_write_text(self.save_file, json.dumps(self.history))
