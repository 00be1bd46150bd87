"""Multi-worker training: the same script on every machine, `TF_CONFIG` naming the cluster, one
`tf.distribute.MultiWorkerMirroredStrategy` (see docs/distributed.md, "Multi-worker").

`Train` adapts itself when it is built under such a strategy: each worker reads its share of every global batch
(`data.prepare_dataset_and_classes(input_shard=...)`), only the chief evaluates and writes checkpoints, history
and best models, and an all-reduce at each epoch end brings every worker the chief's eval accuracies and a common
stop decision (gentle stop). A dead peer ends the run with `PeerLostError` instead of a hang.

Usage (on every worker, TF_CONFIG set to that worker's task):
    strategy = multi_worker.cluster_strategy(timeout_seconds=600)
    with strategy.scope():
        basic_model = models.buildin_models("r50", dropout=0.4, emb_shape=512)
        tt = train.Train(data_path, "r50.h5", eval_paths, basic_model=basic_model, batch_size=128, seed=0)
        tt.train(sch, 0)
"""
import collections
import json
import os

import keras
import numpy as np
import tensorflow as tf

DEFAULT_COLLECTIVE_TIMEOUT = 1800  # seconds a worker waits for the others at an epoch end (a slow chief eval included)
IMPLEMENTATIONS = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}
PEER_LOST_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.InternalError)


class PeerLostError(RuntimeError):
    """A worker of the cluster stopped answering (crashed, killed, or later than the epoch-end timeout)."""


# ---------------------------------------------------------------- the cluster
def read_tf_config(environ=None):
    """The checked `TF_CONFIG` of this process: {"cluster": {"worker": [...], ...}, "task": {"type", "index"}}.

    Raises ValueError naming TF_CONFIG when it is missing, not JSON, or names a task outside the cluster.
    Usage: config = read_tf_config()
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        raise ValueError("TF_CONFIG is not set: multi-worker training needs it on every worker, e.g. "
                         '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError("TF_CONFIG is not JSON ({}): {!r}".format(error, text)) from error
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError("TF_CONFIG needs a 'cluster' and a 'task' object, got {!r}".format(text))
    tasks = cluster.get(task.get("type"))
    if not isinstance(tasks, list) or not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(tasks):
        raise ValueError("TF_CONFIG task {!r} is not one of the cluster's tasks {!r}".format(task, cluster))
    return config


def cluster_strategy(timeout_seconds=DEFAULT_COLLECTIVE_TIMEOUT, implementation="auto"):
    """`MultiWorkerMirroredStrategy` for the cluster in TF_CONFIG. At each epoch end a worker waits up to
    `timeout_seconds` for the others (the chief's eval and checkpoint) before giving up (`EpochEndSync`).

    The training step's collectives (gradients, synchronized BatchNorm, sharded centers) have no timeout: TensorFlow
    keeps one thread per collective with a timeout alive for that long (its docs: a debugging aid), thousands a minute
    in training. A dead peer ends them through the coordination service's missed heartbeats (`PeerLostError`).
    Call it first in the program (before any other TensorFlow work), on every worker.
    Usage: strategy = cluster_strategy(timeout_seconds=600)
    """
    read_tf_config()
    if implementation not in IMPLEMENTATIONS:
        raise ValueError("implementation must be one of {}, got {!r}".format(sorted(IMPLEMENTATIONS), implementation))
    if not timeout_seconds or timeout_seconds <= 0:
        raise ValueError("timeout_seconds must be > 0, got {!r}".format(timeout_seconds))
    options = tf.distribute.experimental.CommunicationOptions(implementation=IMPLEMENTATIONS[implementation])
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    strategy.epoch_end_timeout = float(timeout_seconds)  # read by EpochEndSync
    return strategy


class WorkerPlace(collections.namedtuple("WorkerPlace", ["index", "count", "is_chief", "local_replicas"])):
    """Where this process stands: worker `index` of `count`, the chief or not, with `local_replicas` devices.

    Usage: place = worker_place(tf.distribute.get_strategy()); place.is_chief
    """

    @property
    def is_multi_worker(self):
        return self.count > 1

    @property
    def input_shard(self):
        """`data.prepare_dataset_and_classes(input_shard=...)` of this worker: None on a single worker."""
        return (self.index, self.count) if self.is_multi_worker else None


def _is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def worker_place(strategy):
    """The `WorkerPlace` of this process under `strategy` (a single worker, the chief, for any other strategy).

    Worker order: the "chief" task first when the cluster has one, then the "worker" tasks by index.
    Usage: place = worker_place(strategy)
    """
    if not _is_multi_worker(strategy):
        return WorkerPlace(0, 1, True, strategy.num_replicas_in_sync)
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    tasks = [("chief", ii) for ii in range(len(cluster.get("chief", [])))] + [("worker", ii) for ii in range(len(cluster.get("worker", [])))]
    index = tasks.index((resolver.task_type, resolver.task_id))
    return WorkerPlace(index, len(tasks), bool(strategy.extended.should_checkpoint), strategy.num_replicas_in_sync // len(tasks))


# ---------------------------------------------------------------- data and model
def distribute_dataset(strategy, dataset, place):
    """The worker's own batches as the input of `fit` under `strategy`: no further sharding or rebatching by
    tf.distribute; with several local replicas each gets consecutive slices of the worker's batch.

    Usage: ds = distribute_dataset(strategy, worker_ds, worker_place(strategy))
    """
    if not place.is_multi_worker:
        return dataset
    worker_batch = dataset.element_spec[0].shape[0]
    if place.local_replicas > 1:
        if worker_batch is None or worker_batch % place.local_replicas:
            raise ValueError("the worker batch of {} does not split over {} local replicas".format(worker_batch, place.local_replicas))
        dataset = dataset.rebatch(worker_batch // place.local_replicas)
    return strategy.distribute_datasets_from_function(lambda input_context: dataset)


def _as_vector(value):
    return tf.reshape(value, [1]) if value.shape.rank == 0 else value


def prepare_model(model, element_spec, place):
    """Make `model.fit` of Keras 3 (TensorFlow backend, 3.15) under a tf.distribute strategy read the data as one
    device would, and run under a multi-worker strategy at all:

    - a model built under a strategy's scope (any: `MirroredStrategy` on one machine too) is built by `fit` from one
      batch it first pulls from a new iterator of the input: that draws one more epoch of the seeded data order per
      `fit`, so the run trains other batches than one device does (and under MultiWorkerMirroredStrategy, averaging
      the pulled per-replica batches fails). The model is built from the input's `element_spec` instead; without a
      strategy Keras builds it at the first step and nothing changes.
    - on several workers (`place`), Keras averages each logged scalar across workers with `reduce("MEAN", axis=0)`,
      which needs a batch axis; the training step returns its logs as one-element vectors, averaged into scalars.

    Usage: prepare_model(tt.model, dataset.element_spec, worker_place(strategy))
    """
    build = type(model)._maybe_symbolic_build.__get__(model)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(data_batch=element_spec)
    if place.is_multi_worker:
        train_step = type(model).train_step.__get__(model)
        model.train_step = lambda data: {name: _as_vector(value) for name, value in train_step(data).items()}
    return model


def _batchnorm_layers(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def synchronize_batchnorm(model):
    """Compute the batch statistics of every BatchNormalization layer of `model` over the global batch
    (all replicas and workers), as one device would; returns the number of layers switched.

    Usage: synchronize_batchnorm(basic_model)
    """
    layers = _batchnorm_layers(model)
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def arrange_batchnorm(model, num_replicas, replica_batch, sync_batchnorm):
    """`Train(sync_batchnorm=...)` on the BatchNormalization layers of `model` under `num_replicas` replicas of
    `replica_batch` images: True synchronizes them (`synchronize_batchnorm`); False leaves them as built and says which
    normalize each replica's own batch, so differ from one device at the global batch. One replica: nothing to do.

    Usage: arrange_batchnorm(basic_model, strategy.num_replicas_in_sync, 128, sync_batchnorm=True)
    """
    layers = _batchnorm_layers(model)
    if num_replicas == 1 or not layers:
        return
    global_batch = replica_batch * num_replicas
    if sync_batchnorm:
        synchronize_batchnorm(model)
        print(">>>> sync_batchnorm: {} BatchNormalization layers use the statistics of the global batch of {}".format(len(layers), global_batch))
        return
    own = sum(not layer.synchronized for layer in layers)
    if own:
        print(">>>> BatchNormalization: {} of {} layers normalize each replica's own batch of {}, not the global batch of {}: the "
              "model differs from one device's at the global batch; Train(sync_batchnorm=True) makes them equal".format(
                  own, len(layers), replica_batch, global_batch))


# ---------------------------------------------------------------- callbacks
class EpochEndSync(keras.callbacks.Callback):
    """At each epoch end, one all-reduce over the workers of [stop requested, eval accuracies of the chief]:
    every worker stops when any asked to (gentle stop), and takes the chief's accuracies into its `evals`
    (`cur_acc`, `max_accuracy`), which only the chief computes.

    Usage: EpochEndSync(strategy, place, evals=tt.my_evals)  # after the eval callbacks and the gentle stop
    """

    def __init__(self, strategy, place, evals=()):
        super().__init__()
        self.strategy, self.place, self.evals = strategy, place, list(evals)
        timeout = getattr(strategy, "epoch_end_timeout", DEFAULT_COLLECTIVE_TIMEOUT)  # set by cluster_strategy
        self._options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout))
        self._all_reduce = tf.function(self._sum_over_workers)

    def _sum_over_workers(self, values):
        local_replicas, options = self.place.local_replicas, self._options

        def add_share():  # every local replica adds its share, waiting at most the epoch-end timeout
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values / local_replicas, options=options)

        return self.strategy.experimental_local_results(self.strategy.run(add_share))[0]

    def _all_reduce_sum(self, values):
        return self._all_reduce(tf.constant(values, tf.float32)).numpy()

    def on_epoch_end(self, epoch, logs=None):
        chief = self.place.is_chief
        accuracies = [[ee.cur_acc, ee.max_accuracy] if chief else [0.0, 0.0] for ee in self.evals]
        reduced = self._all_reduce_sum([float(bool(self.model.stop_training))] + list(np.ravel(accuracies)))
        if reduced[0] > 0:
            self.model.stop_training = True
        for ee, (cur_acc, max_accuracy) in zip(self.evals, np.reshape(reduced[1:], [-1, 2])):
            ee.cur_acc, ee.max_accuracy = float(cur_acc), float(max_accuracy)


class GatherCheckpointState(keras.callbacks.Callback):
    """At each epoch end, on every worker, `model.gather_checkpoint_state()` for a model whose checkpoint state is
    spread over the workers (the sharded class centers): the all-gathers every worker joins, kept by the chief for
    its commit.

    Usage: GatherCheckpointState(place)  # after EpochEndSync, before the chief's CheckpointCommit
    """

    def __init__(self, place):
        super().__init__()
        self.place = place

    def on_epoch_end(self, epoch, logs=None):
        if hasattr(self.model, "gather_checkpoint_state"):
            self.model.gather_checkpoint_state(keep=self.place.is_chief)


def arrange_callbacks(callbacks, strategy, place, evals, chief_only, gently_stop, history):
    """The fit callbacks of one worker: unchanged on a single worker; else `evals` and `chief_only` run on the chief
    only, and `gently_stop` (on every worker), an `EpochEndSync` and a `GatherCheckpointState` run just before
    `history`, which so records the chief's accuracies and stops with the others.

    Usage: arrange_callbacks(callbacks, strategy, place, tt.my_evals, [commit], tt.gently_stop, tt.my_hist)
    """
    if not place.is_multi_worker:
        return callbacks
    dropped = {id(cc) for cc in [*evals, *chief_only]} if not place.is_chief else set()
    kept = [cc for cc in callbacks if id(cc) not in dropped and cc is not gently_stop]
    at = kept.index(history)
    return kept[:at] + [gently_stop, EpochEndSync(strategy, place, evals), GatherCheckpointState(place)] + kept[at:]


def peer_lost_error(error, place):
    """A `PeerLostError` naming this worker for a collective that failed with `error`, else None."""
    if not place.is_multi_worker or not isinstance(error, PEER_LOST_ERRORS):
        return None
    return PeerLostError(
        "worker {} of {}: a peer stopped answering during a collective ({}: {}). Restart every worker with the "
        "same TF_CONFIG and resume from the chief's last checkpoint: Train(model=checkpoint) and tt.train(remaining_plans, epochs_done)".format(
            place.index, place.count, type(error).__name__, _reason(error)))


def _reason(error):
    """The line of a collective error that says what happened (unhealthy task, timeout, abort)."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines() if line.strip()]
    telling = [line for line in lines if any(word in line.lower() for word in ("unhealthy", "timed out", "deadline", "aborted", "heartbeat"))]
    return (telling or lines or [""])[0][:300]
