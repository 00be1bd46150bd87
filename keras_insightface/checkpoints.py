"""The checkpoint folder of a training run: file names, optimizer state, and crash-consistent saving and resume.

A run saved as `save_path="name.h5"` owns, in `checkpoints/`:

| file                                     | what                                                        |
| ---------------------------------------- | ----------------------------------------------------------- |
| `name.h5` (or `.keras`)                  | the full model of the last finished epoch                   |
| `name_optimizer.npz`                     | its optimizer config and variables (Keras 3 `.h5` keeps none) |
| `name_centers.npy`                       | center-loss centers, when a plan used them                  |
| `name_hist.json`                         | the history; the number of epochs done is its length        |
| `name_basic_<eval>_epoch_<n>_<acc>.h5`   | the best basic model on the last eval set                   |
| `name_state/epoch_<n>/`                  | the same files of epoch n (and of epoch n - 1): the commit log |
| `name_earlier_<k>/`                      | an earlier run's files, kept when a new run restarts below its epochs |

Every epoch end is one commit: the files are first written completely into `name_state/.epoch_<n>.partial/`,
which is then renamed to `name_state/epoch_<n>` (the commit point: one atomic rename), and only then
published under the names above (hard links, each renamed into place; the history, then the best basic model, last). A crash at any
instant leaves the last committed epoch complete in `name_state/`, and `recover()` (run by `Train` when it
loads a checkpoint) republishes it. The previous epoch is kept too, so a resume at the epoch the published
history named just before a crash finds its exact state (`generation_of` / `generation_dir`).

A best basic model is only ever removed for a better or equal one. A run that starts below the epochs its folder
already holds (a new `Train` on an existing `save_path`, or a second `tt.train(sch, 0)`) first keeps the earlier
run's files, hard-linked under `name_earlier_<k>/` (`keep_earlier_run`), so its history and best models survive.

Resume reads a commit back (`Resume`): the saved full model, its optimizer state (checked against the model's
weights), its centers and history, and the committed epoch the model file is; `state_at(epoch)` moves to the
committed state of another kept epoch.

Usage:
    run = RunCheckpoint("keras_mobilenet_emore.h5")
    run.commit(epoch=3, writers={"model": model.save, "history": lambda path: write_json(path, history)})
    run.recover()                 # after a crash: publish the last committed epoch again
    resume = Resume("checkpoints/keras_mobilenet_emore.h5"); model = resume.load_model()
"""
import errno
import glob
import hashlib
import json
import os
import re
import shutil

import keras
import numpy as np

from .io_utils import atomic_path, link_or_copy

CHECKPOINTS_DIR = "checkpoints"
STATE_SUFFIX = "_state"
GENERATION_PREFIX = "epoch_"
PARTIAL_SUFFIX = ".partial"
GENERATIONS_KEPT = 2
# role -> file name inside a generation folder; "model" keeps the run's extension
ROLE_FILES = {"optimizer": "optimizer.npz", "centers": "centers.npy", "history": "hist.json", "best_basic": "best_basic.h5"}
# the history names the epochs done; a best basic model is published after it, so it is never newer than the history
PUBLISH_ORDER = ("optimizer", "centers", "model", "history", "best_basic")
EARLIER_RUN_INFIX = "_earlier_"
BEST_BASIC_ACCURACY = re.compile(r"_([0-9.]+)\.h5$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or does not fit the model; the previous state is intact."""


# ---------------------------------------------------------------- optimizer state
def optimizer_state_path(model_path):
    """Where the optimizer state of a checkpoint lives: `<model path stem>_optimizer.npz`."""
    return os.path.splitext(os.fspath(model_path))[0] + "_optimizer.npz"


def weights_fingerprint(variables):
    """A digest of the values of `variables` (model weights): which weights an optimizer state belongs to.

    Usage: weights_fingerprint(model.trainable_variables)
    """
    digest = hashlib.blake2b(digest_size=16)
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def save_optimizer_state(optimizer, path, model_variables=None):
    """Save an optimizer's config and every variable (iterations, slots) to `path` (.npz), atomically.

    With `model_variables` the file also records their fingerprint, so that restoring it next to other
    weights is detected. Usage: save_optimizer_state(model.optimizer, "checkpoints/model_optimizer.npz")
    """
    config = json.dumps(keras.saving.serialize_keras_object(optimizer))
    values = {"variable_{}".format(ii): keras.ops.convert_to_numpy(vv) for ii, vv in enumerate(optimizer.variables)}
    fingerprint = weights_fingerprint(model_variables) if model_variables is not None else ""
    with atomic_path(path) as tmp:
        np.savez(tmp, config=np.array(config), weights_fingerprint=np.array(fingerprint), **values)


def restore_optimizer_state(path, trainable_variables, model_variables=None):
    """Rebuild the optimizer saved by `save_optimizer_state` for `trainable_variables`, state included.

    Raises CheckpointError naming `path` when the file is truncated or unreadable, when its state does not fit
    the variables (another model or trainable set), or when it was saved with other weights than
    `model_variables` (a model and an optimizer state of different epochs).
    Usage: optimizer = restore_optimizer_state("checkpoints/model_optimizer.npz", model.trainable_variables)
    """
    try:
        with np.load(path) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except Exception as error:
        raise CheckpointError("{}: unreadable optimizer state ({}: {})".format(path, type(error).__name__, error)) from error
    saved_fingerprint = str(arrays.pop("weights_fingerprint", ""))
    if model_variables is not None and saved_fingerprint and saved_fingerprint != weights_fingerprint(model_variables):
        raise CheckpointError("{}: the optimizer state was saved with other model weights (another epoch's checkpoint)".format(path))
    optimizer = keras.saving.deserialize_keras_object(json.loads(str(arrays.pop("config"))))
    optimizer.build(trainable_variables)
    names = ["variable_{}".format(ii) for ii in range(len(optimizer.variables))]
    if sorted(names) != sorted(arrays) or any(arrays[nn].shape != tuple(vv.shape) for nn, vv in zip(names, optimizer.variables)):
        raise CheckpointError("{}: the saved optimizer state does not match the model's trainable variables".format(path))
    for name, variable in zip(names, optimizer.variables):
        variable.assign(arrays[name])
    return optimizer


# ---------------------------------------------------------------- history
def load_history(path):
    """The history dict of lists saved by a run (with its "epoch" list).  Usage: load_history("checkpoints/m_hist.json")"""
    with open(path, "r", encoding="utf-8") as ff:
        try:
            history = json.load(ff)
        except json.JSONDecodeError as error:
            raise ValueError("{}: not a JSON history file ({})".format(path, error)) from error
    if not isinstance(history, dict) or not all(isinstance(vv, list) for vv in history.values()):
        raise ValueError("{}: expected a JSON object of lists, like {{\"loss\": [...], \"lr\": [...]}}".format(path))
    return _with_epoch_list(history)


def _with_epoch_list(history):
    """Gives a history without an "epoch" list (older files) one: lists are taken to end together."""
    if "epoch" in history or not history:
        return history
    length = max(len(vv) for vv in history.values())
    aligned = {kk: [None] * (length - len(vv)) + vv for kk, vv in history.items()}
    aligned["epoch"] = list(range(length))
    return aligned


def write_history(path, history):
    """Write a history dict as JSON.  Usage: write_history("hist.json", {"loss": [1.0], "epoch": [0]})"""
    with open(path, "w", encoding="utf-8") as ff:
        json.dump(history, ff)


# ---------------------------------------------------------------- one run's files
class RunCheckpoint:
    """Names and commit protocol of one run's checkpoint files (see the module docstring).

    Usage:
        run = RunCheckpoint("keras_mobilenet_emore.h5")
        run.model_path, run.history_path, run.centers_path   # checkpoints/keras_mobilenet_emore{.h5,_hist.json,_centers.npy}
    """

    def __init__(self, save_path, folder=CHECKPOINTS_DIR):
        self.folder = folder
        self.model_path = os.path.join(folder, save_path)
        self.stem = os.path.splitext(os.path.basename(save_path))[0]
        self.model_extension = os.path.splitext(save_path)[1] or ".h5"
        self.state_dir = os.path.join(folder, self.stem + STATE_SUFFIX)

    @classmethod
    def of_model_file(cls, model_path):
        """The run a saved full model belongs to.  Usage: RunCheckpoint.of_model_file("checkpoints/m.h5")"""
        return cls(os.path.basename(model_path), folder=os.path.dirname(model_path) or ".")

    def _beside(self, suffix):
        return os.path.join(self.folder, self.stem + suffix)

    @property
    def optimizer_path(self):
        return optimizer_state_path(self.model_path)

    @property
    def centers_path(self):
        return self._beside("_centers.npy")

    @property
    def history_path(self):
        return self._beside("_hist.json")

    @property
    def basic_latest_path(self):
        return self._beside("_basic_model_latest.h5")

    def best_basic_path(self, test_name, step_name, accuracy):
        """`<stem>_basic_<eval>_epoch_<step>_<accuracy>.h5`, the seed's name of the best basic model."""
        return self._beside("_basic_{}_epoch_{}_{:f}.h5".format(test_name, step_name, accuracy))

    def best_basic_files(self, test_name):
        """The best basic model files of `test_name` in the folder (normally one)."""
        base = self.stem + "_basic_{}_epoch_".format(test_name)
        pattern = re.compile(re.escape(base) + r"\d+(_batch_\d+)?_[0-9.]+\.h5$")
        return [path for path in glob.glob(os.path.join(glob.escape(self.folder), glob.escape(base) + "*.h5")) if pattern.match(os.path.basename(path))]

    def all_best_basic_files(self):
        """The best basic model files of every eval set in the folder."""
        pattern = re.compile(re.escape(self.stem) + r"_basic_.+_epoch_\d+(_batch_\d+)?_[0-9.]+\.h5$")
        names = os.listdir(self.folder) if os.path.isdir(self.folder) else []
        return [os.path.join(self.folder, name) for name in sorted(names) if pattern.match(name)]

    def published_path(self, role, best_basic_name=None):
        paths = {"model": self.model_path, "optimizer": self.optimizer_path, "centers": self.centers_path, "history": self.history_path}
        return paths[role] if role in paths else os.path.join(self.folder, best_basic_name)

    # ------------------------------------------------------------ generations
    def generation_dir(self, epoch):
        """The committed state folder of `epoch` (epochs done).  Usage: run.generation_dir(3)"""
        return os.path.join(self.state_dir, GENERATION_PREFIX + str(int(epoch)))

    def generation_file(self, epoch, role):
        name = "model" + self.model_extension if role == "model" else ROLE_FILES[role]
        return os.path.join(self.generation_dir(epoch), name)

    def generations(self):
        """Committed epochs, ascending.  Usage: run.generations()  # [2, 3]"""
        if not os.path.isdir(self.state_dir):
            return []
        names = [name[len(GENERATION_PREFIX):] for name in os.listdir(self.state_dir) if name.startswith(GENERATION_PREFIX)]
        return sorted(int(name) for name in names if name.isdigit())

    def generation_of(self, model_path):
        """The committed epoch whose model file `model_path` is (same file), else None."""
        for epoch in self.generations():
            candidate = self.generation_file(epoch, "model")
            if os.path.exists(candidate) and os.path.exists(model_path) and os.path.samefile(candidate, model_path):
                return epoch
        return None

    # ------------------------------------------------------------ commit
    def commit(self, epoch, writers, best_basic_name=None):
        """Write one epoch's files and make them the run's state, all or nothing.

        `writers` maps roles ("model", "optimizer", "centers", "history", "best_basic") to functions writing that
        file at the path they are given; `best_basic_name` is the seed's file name of the best basic model.
        A failure (disk full included) raises CheckpointError and leaves the previous epoch's state as it was.
        Usage: run.commit(3, {"model": model.save, "history": lambda path: write_history(path, hist)})
        """
        os.makedirs(self.state_dir, exist_ok=True)
        partial = os.path.join(self.state_dir, "." + GENERATION_PREFIX + str(epoch) + PARTIAL_SUFFIX)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            for role, write in writers.items():
                target = os.path.join(partial, os.path.basename(self.generation_file(epoch, role)))
                write(target)
            if best_basic_name:
                _write_text(os.path.join(partial, "best_basic_name.txt"), best_basic_name)
            final = self.generation_dir(epoch)
            if os.path.exists(final):  # the same epoch again (a resume): the new state replaces it
                shutil.rmtree(final)
            os.replace(partial, final)
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            reason = "the disk is full" if error.errno == errno.ENOSPC else "{}: {}".format(type(error).__name__, error)
            raise CheckpointError(
                "saving epoch {} of {} failed ({}); the checkpoint of the previous epoch is kept".format(epoch, self.model_path, reason)
            ) from error
        self.publish(epoch)
        self._prune(keep_from=epoch - GENERATIONS_KEPT + 1)

    def publish(self, epoch):
        """Link the files of committed `epoch` under the run's published names, the history last."""
        generation = self.generation_dir(epoch)
        name_file = os.path.join(generation, "best_basic_name.txt")
        best_basic_name = open(name_file, encoding="utf-8").read().strip() if os.path.exists(name_file) else None
        for role in PUBLISH_ORDER:
            source = self.generation_file(epoch, role)
            if not os.path.exists(source) or (role == "best_basic" and not best_basic_name):
                continue
            target = self.published_path(role, best_basic_name)
            if not (os.path.exists(target) and os.path.samefile(source, target)):
                _link_into_place(source, target)
            if role == "best_basic":
                remove_worse_best(self.best_basic_files(_best_basic_test_name(best_basic_name, self.stem)), target)

    def recover(self):
        """After a crash: drop unfinished commits and publish the last committed epoch again; returns it (or None).

        Usage: epochs_done = RunCheckpoint.of_model_file("checkpoints/m.h5").recover()
        """
        if os.path.isdir(self.state_dir):
            for name in os.listdir(self.state_dir):
                if name.endswith(PARTIAL_SUFFIX):
                    shutil.rmtree(os.path.join(self.state_dir, name), ignore_errors=True)
        generations = self.generations()
        if not generations:
            return None
        self.publish(generations[-1])
        return generations[-1]

    # ------------------------------------------------------------ an earlier run in the same place
    def epochs_done(self):
        """The epochs the run's files say are done: the last committed epoch, else the history's length, else None."""
        generations = self.generations()
        if generations:
            return generations[-1]
        if os.path.exists(self.history_path):
            return len(load_history(self.history_path).get("epoch", []))
        return None

    def run_files(self):
        """Every file and folder of this run in its folder: published files, best and latest basic models, the state."""
        published = [self.model_path, self.optimizer_path, self.centers_path, self.history_path, self.basic_latest_path, self.state_dir]
        return [path for path in published if os.path.exists(path)] + self.all_best_basic_files()

    def keep_earlier_run_below(self, initial_epoch, resumed_from=None):
        """Before training from `initial_epoch`: when the folder holds more epochs of this run, keep them
        (`keep_earlier_run`) and say so, unless this continues the checkpoint `resumed_from` (a `RunCheckpoint`) at one
        of its kept epochs, the seed's resume. Returns the folder the earlier run is kept in, or None.
        Usage: run.keep_earlier_run_below(0)
        """
        done = self.epochs_done()
        continued = resumed_from is not None and os.path.abspath(resumed_from.model_path) == os.path.abspath(self.model_path)
        if done is None or initial_epoch >= done or (continued and initial_epoch in self.generations()):
            return None
        kept = self.keep_earlier_run()
        print(">>>> {} holds {} epochs of an earlier run and training starts at epoch {}: the earlier run's files are kept in {}".format(
            self.model_path, done, initial_epoch, kept))
        return kept

    def keep_earlier_run(self):
        """Hard-link (copy where links are refused) every file of the run into a new `<stem>_earlier_<k>/` folder and
        return it; the originals stay, so a checkpoint being resumed stays readable.  Usage: run.keep_earlier_run()"""
        number = 1
        while os.path.exists(self._beside(EARLIER_RUN_INFIX + str(number))):
            number += 1
        kept = self._beside(EARLIER_RUN_INFIX + str(number))
        partial = kept + PARTIAL_SUFFIX
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        for path in self.run_files():
            target = os.path.join(partial, os.path.basename(path))
            if os.path.isdir(path):
                shutil.copytree(path, target, copy_function=link_or_copy, ignore=shutil.ignore_patterns("*" + PARTIAL_SUFFIX))
            else:
                link_or_copy(path, target)
        os.replace(partial, kept)
        return kept

    def _prune(self, keep_from):
        for epoch in self.generations():
            if epoch < keep_from:
                shutil.rmtree(self.generation_dir(epoch), ignore_errors=True)


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as ff:
        ff.write(text)


def _best_basic_test_name(file_name, stem):
    """"m_basic_lfw_epoch_3_0.99.h5" -> "lfw"."""
    rest = file_name[len(stem + "_basic_"):]
    return rest[: rest.rindex("_epoch_")]


def remove_worse_best(paths, best_path):
    """Remove the best-model files in `paths` whose accuracy (the name's last number) is not above `best_path`'s;
    a better one is never removed.  Usage: remove_worse_best(run.best_basic_files("lfw"), new_best_path)"""
    best = float(BEST_BASIC_ACCURACY.search(os.path.basename(best_path)).group(1))
    for path in paths:
        if os.path.abspath(path) != os.path.abspath(best_path) and float(BEST_BASIC_ACCURACY.search(path).group(1)) <= best:
            os.remove(path)


def _link_into_place(source, target):
    """Make `target` name the file `source` (a hard link, renamed into place; a copy where links are refused)."""
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


# ---------------------------------------------------------------- resume
def load_model(path, custom_objects=None):
    """Load a saved `.h5` / `.keras` model without its compile state (each plan sets the losses).

    Usage: model = checkpoints.load_model("checkpoints/m.h5")
    """
    if not os.path.exists(path):
        raise FileNotFoundError("Model file not found: {}".format(path))
    return keras.models.load_model(path, custom_objects=custom_objects or {}, compile=False)


def _optimizer_of_model_file(model_path, custom_objects):
    """A fresh optimizer from the config saved in a model file, or None when it has none."""
    try:
        optimizer = keras.models.load_model(model_path, custom_objects=custom_objects or {}, compile=True).optimizer
    except (ValueError, TypeError, KeyError):
        return None
    if optimizer is None:
        return None
    print(">>>> No optimizer state beside {}: restarting {} with its saved config".format(model_path, type(optimizer).__name__))
    return optimizer.__class__.from_config(optimizer.get_config())


class ResumedState:
    """The committed state of one epoch read back: the model weights are already set; its optimizer (or None) and
    history are here."""

    def __init__(self, optimizer, history):
        self.optimizer, self.history = optimizer, history


class Resume:
    """A run continued from a saved full model (`Train(model="checkpoints/name.h5")`): the committed epoch that file is,
    and the files of that commit by role.

    The chief first lets `recover()` republish the last committed epoch; other workers of a multi-worker run read the
    last committed epoch as it is (the chief may be republishing it).
    Usage:
        resume = Resume("checkpoints/m.h5"); model = resume.load_model()
        optimizer = resume.load_optimizer(model); history_path = resume.file("history")
    """

    def __init__(self, model_path, is_chief=True):
        self.run = RunCheckpoint.of_model_file(model_path)
        if is_chief:
            self.run.recover()
        elif self.run.generations():
            model_path = self.run.generation_file(self.run.generations()[-1], "model")
        self.model_path = model_path
        self.epoch = self.run.generation_of(model_path)

    def file(self, role):
        """The checkpoint's file of `role`: from its committed epoch folder, else beside the model file."""
        if self.epoch is not None:
            return self.run.generation_file(self.epoch, role)
        return self.run.published_path(role)

    def load_model(self, custom_objects=None):
        return load_model(self.model_path, custom_objects)

    def load_optimizer(self, model, custom_objects=None):
        """The checkpoint's optimizer: with its state (checked against `model`'s weights), else fresh from the config
        saved in the model file, else None. A truncated or mismatched state raises CheckpointError."""
        if os.path.exists(self.file("optimizer")):
            return restore_optimizer_state(self.file("optimizer"), model.trainable_variables, model.weights)
        return _optimizer_of_model_file(self.model_path, custom_objects)

    def state_at(self, epoch, model, with_optimizer):
        """Make `model` the committed state of `epoch` when that commit is kept; returns its `ResumedState`, or None
        when the loaded epoch already is `epoch` or `epoch` is not kept (a warning: training continues from the
        loaded state).  Usage: state = resume.state_at(3, tt.model, with_optimizer=True)
        """
        if self.epoch is None or self.epoch == epoch:
            return None
        kept = self.run.generations()
        if epoch not in kept:
            print(">>>> Warning: {} holds epoch {} (kept states: {}); training continues from it as epoch {}".format(
                self.run.model_path, self.epoch, kept, epoch))
            return None
        print(">>>> {} holds epoch {}: resuming from the state committed at epoch {}".format(self.run.model_path, self.epoch, epoch))
        self.epoch = epoch
        model.set_weights(load_model(self.file("model")).get_weights())
        optimizer = None
        if with_optimizer and os.path.exists(self.file("optimizer")):
            optimizer = restore_optimizer_state(self.file("optimizer"), model.trainable_variables, model.weights)
        return ResumedState(optimizer, load_history(self.file("history")))
