"""Class centers sharded across the replicas of a tf.distribute strategy (model-parallel Partial FC, every class).

With N replicas, replica r holds the cosine head's columns of classes `[r * s, (r + 1) * s)`, `s = ceil(classes / N)`,
and their optimizer state: a `SyncOnRead` variable of shape `(emb, s)` whose component on each device is that
device's shard. A training step (arcface_torch's model-parallel Partial FC): each replica all-gathers the embeddings
and labels of the global batch, scores them against its own classes, the replica owning a sample's class supplies its
target cosine (an all-sum), every replica applies the margin to it, and the softmax max and normalizer are reduced
across replicas. TensorFlow differentiates the collectives (the gradient of an all-sum is an all-sum, of an all-gather
an all-sum and the replica's slice), so each backbone replica receives the gradient of its own embeddings from every
shard. The backbone is updated by the compiled Keras optimizer; each shard by the same rule, run here on the shard
(`row_updates.ROW_RULES`). Checkpoints hold the dense form: `dense_model()` is the basic model + `NormDense` with the full
kernel, `dense_optimizer()` the compiled optimizer with the head's full slot matrices (the layout a dense run saves);
`load_checkpoint` splits them again for any number of replicas. `ShardedHead` is the output-head kind
`Train(shard_centers=True)` builds under more than one replica. See docs/distributed.md, "Sharded class centers".

Usage:
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = sharded.ShardedHeadModel(basic_model, classes=1_000_000)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss())
    model.fit(images_and_integer_labels)
    model.dense_model().save("model.keras")  # basic model + NormDense holding every class center
"""
import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

from .. import checkpoints, losses
from . import registry, row_updates
from .base import OutputHead
from .cosine import NormDense

_EPSILON = 1e-12  # NormDense's floor of squared norms
_GLOROT_TRUNCATION = 0.87962566103423978  # stddev of a unit normal truncated at +/-2, as keras.initializers.GlorotNormal


def shard_units(classes, num_shards):
    """Columns per shard: `ceil(classes / num_shards)`; the last shard's extra columns are padding, never scored."""
    return -(-int(classes) // int(num_shards))


def check_margin_loss(loss):
    """`loss` if the sharded head can compute it: a margin loss built on `_MarginSoftmaxLoss.call` with a fixed scale,
    from logits and without the feature norm (ArcFace, CosFace, combined margins, AirFace). Raises ValueError otherwise.

    Usage: margin_loss = sharded.check_margin_loss(losses.ArcfaceLoss())
    """
    base = losses._MarginSoftmaxLoss
    supported = (
        isinstance(loss, base) and all(getattr(type(loss), hook) is getattr(base, hook) for hook in ("call", "_scale", "_split_outputs"))
        and not loss.uses_feature_norm and loss.from_logits
    )
    if not supported:
        raise ValueError(
            "ShardedHeadModel: loss must be a margin loss with a fixed scale, from logits and without the feature norm "
            "(ArcfaceLoss, CosFaceLoss, AirFaceLoss, ...), got {!r}".format(loss)
        )
    return loss


# ---------------------------------------------------------------- the optimizer rule run on each shard
_USER = "ShardedHeadModel"


def shard_rule(optimizer):
    """The `row_updates.RowRule` run on each shard for `optimizer`; ValueError for optimizers or options it does not
    cover.  Usage: rule = sharded.shard_rule(keras.optimizers.SGD(0.1, momentum=0.9))
    """
    return row_updates.row_rule(optimizer, _USER, "shard", in_place=True)


def shard_step(optimizer, rule, kernel, slots, gradient):
    """One step of `optimizer` on `kernel` (with its `slots`) by `rule`, as `optimizer.apply_gradients` would take it
    at its current `iterations`: weight decay, then the update, at the current learning rate, in place.

    Usage: shard_step(optimizer, shard_rule(optimizer), kernel, {"momentum": momentum}, gradient)
    """
    row_updates.apply_in_place(optimizer, rule, kernel, slots, gradient)


# ---------------------------------------------------------------- the sharded matrices
def local_replica_ids(strategy):
    """The replica ids (`replica_id_in_sync_group`) of this process's devices under `strategy`, in device order: all of
    them on one machine, this worker's under a multi-worker strategy.  Usage: ids = local_replica_ids(strategy)"""
    ids = strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group)
    return [int(tf.get_static_value(replica_id)) for replica_id in strategy.experimental_local_results(ids)]


class ShardedCenters:
    """The `(emb, classes)` class-center matrix split by columns over the replicas of `strategy`, plus slot matrices.

    Each matrix is a `SyncOnRead` variable of shape `(emb, shard_units)`: in a replica it reads and updates that
    replica's own shard (shard r holds the columns of replica r); this process holds the shards of its own devices
    (`shard_ids`). `set` splits a whole matrix from the host into them; `get` gathers it: under a multi-worker strategy
    an all-gather across the workers, so every worker calls it at the same point.
    Usage: centers = ShardedCenters(512, 1_000_000, tf.distribute.get_strategy()); full = centers.get()
    """

    def __init__(self, emb_shape, classes, strategy, seed=None):
        self.emb_shape, self.classes, self.strategy = int(emb_shape), int(classes), strategy
        self.num_shards = strategy.num_replicas_in_sync
        self.shard_units = shard_units(classes, self.num_shards)
        self.shard_ids = local_replica_ids(strategy)
        self._gather = tf.function(self._all_gather)
        self.kernel = self._new_matrix("sharded_norm_dense_w")
        self.slots = {}
        self._initialize_kernel(seed)

    def _new_matrix(self, name):
        with self.strategy.scope():
            return tf.Variable(
                tf.zeros((self.emb_shape, self.shard_units)), name=name, trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

    def _initialize_kernel(self, seed):
        """Glorot normal of the full `(emb, classes)` shape, drawn shard by shard on the shard's device: shard r from
        the seed pair (seed, r), the same on any worker (without a seed, from fresh random state)."""
        stddev = math.sqrt(2.0 / (self.emb_shape + self.classes)) / _GLOROT_TRUNCATION
        generator = tf.random.Generator.from_non_deterministic_state() if seed is None else None
        for shard_id, shard in self.local_shards(self.kernel):
            with tf.device(shard.device):
                if generator is None:
                    shard.assign(tf.random.stateless_truncated_normal(shard.shape, [int(seed), shard_id], stddev=stddev))
                else:
                    shard.assign(generator.truncated_normal(shard.shape, stddev=stddev))
                padding_from = max(self.classes - shard_id * self.shard_units, 0)
                if padding_from < self.shard_units:
                    shard[:, padding_from:].assign(tf.zeros((self.emb_shape, self.shard_units - padding_from)))

    def shards(self, matrix):
        """The components of `matrix` on this process's devices, in device order."""
        return self.strategy.experimental_local_results(matrix)

    def local_shards(self, matrix):
        """(shard id, component) of `matrix` for each of this process's devices."""
        return list(zip(self.shard_ids, self.shards(matrix)))

    def build_slots(self, names):
        """Zero slot matrices (optimizer state) named `names`, created once."""
        for name in names:
            if name not in self.slots:
                self.slots[name] = self._new_matrix("sharded_norm_dense_" + name)

    def get(self, matrix=None):
        """The full `(emb, classes)` numpy matrix of `matrix` (default: the kernel); across workers an all-gather."""
        matrix = self.kernel if matrix is None else matrix
        if len(self.shard_ids) == self.num_shards:
            full = np.concatenate([shard.numpy() for shard in self.shards(matrix)], axis=1)
        else:
            full = self.strategy.experimental_local_results(self._gather(matrix))[0].numpy()
        return full[:, : self.classes]

    def _all_gather(self, matrix):
        """Every replica's shard of `matrix`, concatenated in replica order, on every replica."""
        return self.strategy.run(lambda: tf.distribute.get_replica_context().all_gather(tf.identity(matrix), axis=1))

    def set(self, values, matrix=None):
        """Split the full `(emb, classes)` `values` over this process's shards of `matrix` (default: the kernel)."""
        matrix = self.kernel if matrix is None else matrix
        values = np.asarray(values, dtype="float32")
        if values.shape != (self.emb_shape, self.classes):
            raise ValueError("ShardedCenters.set: expected a matrix of shape {}, got {}".format((self.emb_shape, self.classes), values.shape))
        for shard_id, shard in self.local_shards(matrix):
            columns = values[:, shard_id * self.shard_units : (shard_id + 1) * self.shard_units]
            shard.assign(np.pad(columns, ((0, 0), (0, self.shard_units - columns.shape[1]))))

    def bytes_per_device(self):
        """{device: bytes of the kernel and slot shards it holds}."""
        held = {}
        for matrix in [self.kernel, *self.slots.values()]:
            for shard in self.shards(matrix):
                held[shard.device] = held.get(shard.device, 0) + int(np.prod(shard.shape)) * shard.dtype.size
        return held


def _normalize(values, axis):
    """`values / max(||values||, sqrt(eps))` along `axis`, as NormDense."""
    return values / tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(values), axis=axis, keepdims=True), _EPSILON))


def _all_max(context, values):
    """Element-wise max of `values` over the replicas (no gradient: used as the softmax shift)."""
    gathered = context.all_gather(tf.stop_gradient(values)[None], axis=0)
    return tf.stop_gradient(tf.reduce_max(gathered, axis=0))


def replica_margin_loss(margin_loss, embedding, labels, kernel, classes):
    """Per-sample loss and accuracy hits of this replica's samples, its kernel shard `kernel` scoring every sample.

    Equal to `margin_loss(labels, NormDense(classes)(embedding))` over the global batch, sliced to this replica's rows.
    Runs in replica context. Usage: loss, hits = replica_margin_loss(losses.ArcfaceLoss(), emb, labels, shard, classes)
    """
    context = tf.distribute.get_replica_context()
    shard_size = kernel.shape[-1]
    labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
    sizes = context.all_gather(tf.shape(labels)[:1], axis=0)
    begin = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    embeddings = context.all_gather(embedding, axis=0)
    all_labels = context.all_gather(labels, axis=0)
    tf.debugging.assert_non_negative(all_labels, message="ShardedHeadModel: labels must be class indices >= 0")
    tf.debugging.assert_less(all_labels, classes, message="ShardedHeadModel: labels must be < classes")

    first_class = tf.cast(context.replica_id_in_sync_group, tf.int32) * shard_size
    valid = first_class + tf.range(shard_size) < classes
    cosines = margin_loss._cosines(tf.matmul(_normalize(embeddings, -1), _normalize(kernel, 0)))
    local_labels = all_labels - first_class
    owned = (local_labels >= 0) & (local_labels < shard_size)
    owned_indices = tf.stack([tf.range(tf.shape(all_labels)[0]), tf.clip_by_value(local_labels, 0, shard_size - 1)], axis=-1)
    target_cos = context.all_reduce("sum", tf.where(owned, tf.gather_nd(cosines, owned_indices), 0.0))
    target_logit = tf.cast(margin_loss._target_logit(target_cos, None), cosines.dtype)

    margin_update = tf.where(owned, target_logit - target_cos, 0.0)
    logits = margin_loss.scale * tf.tensor_scatter_nd_add(cosines, owned_indices, margin_update)
    logits = tf.where(valid, logits, 0.0)
    shift = _all_max(context, tf.reduce_max(tf.where(valid, logits, logits.dtype.min), axis=-1))
    normalizer = context.all_reduce("sum", tf.reduce_sum(tf.where(valid, tf.exp(logits - shift[:, None]), 0.0), axis=-1))
    smoothing = margin_loss.label_smoothing
    loss = tf.math.log(normalizer) + shift - (1.0 - smoothing) * margin_loss.scale * target_logit
    if smoothing:
        loss -= smoothing / classes * context.all_reduce("sum", tf.reduce_sum(logits, axis=-1))

    best_other = _all_max(context, tf.reduce_max(tf.where(valid & ~tf.one_hot(local_labels, shard_size, on_value=True, off_value=False),
                                                           cosines, cosines.dtype.min), axis=-1))
    hits = tf.cast(tf.stop_gradient(target_cos) >= best_other, tf.float32)
    rows = tf.range(begin, begin + tf.shape(labels)[0])
    return tf.gather(loss, rows), tf.gather(hits, rows)


# ---------------------------------------------------------------- the model
def _other_variables(optimizer, head_slots):
    """`optimizer.variables` without the head's slots, in order: the layout of the basic model's optimizer."""
    head_ids = {id(variable) for variable in head_slots.values()}
    return [variable for variable in optimizer.variables if id(variable) not in head_ids]


def _built_for_more_than(optimizer, variables):
    """True when `optimizer` is built and holds state for more variables than `variables` (a dense model's)."""
    built_for = getattr(optimizer, "_trainable_variables", None) if getattr(optimizer, "built", False) else None
    return built_for is not None and len(built_for) > len(variables)


def is_dense_head_of(layer, classes):
    """True when `layer` is a plain `NormDense(classes)` (no sub-centers, feature norm or VPL): a head the sharded
    model can start from.  Usage: sharded.is_dense_head_of(model.get_layer("NormDense"), classes)"""
    return type(layer) is NormDense and layer.units == classes and layer.loss_top_k == 1 and not layer.append_norm


def _dense_kernel(head, classes):
    """The kernel of a `NormDense(classes)` head, refused for other widths or sub-centers."""
    if not is_dense_head_of(head, classes):
        raise ValueError("ShardedHeadModel: expected a NormDense({}) head without sub-centers or feature norm, got {!r}".format(classes, head))
    return keras.ops.convert_to_numpy(head.w)


def _copy_values(sources, targets):
    if len(sources) != len(targets) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(sources, targets)):
        raise ValueError("ShardedHeadModel: optimizer states do not match ({} and {} variables)".format(len(sources), len(targets)))
    for source, target in zip(sources, targets):
        target.assign(keras.ops.convert_to_numpy(source))


@dataclasses.dataclass
class _GatheredState:
    """The checkpoint state (dense model, optimizer) gathered at optimizer step `step` (a plain object: Keras does not
    track the models inside it as the sharded model's own state)."""

    step: int
    state: tuple


@keras.saving.register_keras_serializable(package="keras_insightface")
class ShardedHeadModel(keras.Model):
    """Basic model + a cosine head whose class centers are sharded over the replicas (see the module docstring).

    `compile(optimizer, loss)` takes a margin loss (`check_margin_loss`) and an optimizer with a shard rule
    (`row_updates.ROW_RULES`: SGD, SGDW, Adam, AdamW). `fit` takes images and integer labels (or one-hot rows). Calling the
    model returns embeddings. `kernel_regularizer` (L2 / L1: a sum over elements, so over shards) applies to the
    centers, as `NormDense(kernel_regularizer=...)`.
    Usage: with strategy.scope(): model = ShardedHeadModel(basic_model, classes); model.compile("sgd", ArcfaceLoss())
    """

    def __init__(self, basic_model, classes, kernel_regularizer=None, seed=None, dense_head=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classes, (int, np.integer)) or classes < 1:
            raise ValueError("ShardedHeadModel: classes must be a positive integer, got {!r}".format(classes))
        self.basic_model = basic_model
        self.classes = int(classes)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.centers = ShardedCenters(basic_model.outputs[0].shape[-1], classes, tf.distribute.get_strategy(), seed=seed)
        if dense_head is not None:
            self.centers.set(_dense_kernel(dense_head, self.classes))
        self.margin_loss, self.shard_rule = None, None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    def call(self, inputs, training=False):
        return self.basic_model(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Keras' compile; `loss` is the margin loss the head computes itself, `metrics` are loss and accuracy.

        An `optimizer` already built for the dense model (basic model's variables, then the head's kernel: a resumed
        dense checkpoint) passes its state on: the shards take the head's slots, the model a copy of the rest.
        """
        self.margin_loss = check_margin_loss(loss)
        dense_state = optimizer if _built_for_more_than(optimizer, self.basic_model.trainable_variables) else None
        if dense_state is not None:
            optimizer = type(optimizer).from_config(optimizer.get_config())
        super().compile(optimizer=optimizer, **kwargs)
        self.shard_rule = shard_rule(self.optimizer)
        self.optimizer.build(self.basic_model.trainable_variables)
        self.centers.build_slots(self.shard_rule.slot_names(self.optimizer))
        if dense_state is not None:
            self.load_dense_optimizer(dense_state)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def train_step(self, data):
        if len(data) > 2 and data[2] is not None:
            raise ValueError("ShardedHeadModel: sample weights are not supported")
        images, labels = data[:2]
        labels = losses.class_labels(labels)
        context = tf.distribute.get_replica_context()
        global_batch = tf.cast(context.all_reduce("sum", tf.shape(labels)[0]), tf.float32)
        with tf.GradientTape() as tape:
            kernel = tf.identity(self.centers.kernel)
            tape.watch(kernel)
            embedding = self.basic_model(images, training=True)
            sample_loss, hits = replica_margin_loss(self.margin_loss, embedding, labels, kernel, self.classes)
            basic_term, shard_term = self._regularization(kernel)
            replicas = context.num_replicas_in_sync
            loss = tf.reduce_sum(sample_loss) / global_batch + basic_term / replicas + shard_term
        variables = self.basic_model.trainable_variables
        *gradients, kernel_gradient = tape.gradient(loss, [*variables, kernel])
        self._update_shard(kernel_gradient)
        self.optimizer.apply_gradients(zip(gradients, variables))
        # as Keras logs a dense model's loss: the batch mean plus every regularization term
        reported = tf.reduce_mean(sample_loss) + basic_term + context.all_reduce("sum", shard_term)
        self.loss_tracker.update_state(reported, sample_weight=tf.cast(tf.shape(labels)[0], tf.float32))
        self.accuracy_tracker.update_state(hits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}

    def _regularization(self, kernel):
        """(the basic model's regularization, the same on every replica; this shard's kernel regularization)."""
        basic_term = tf.add_n([tf.cast(term, tf.float32) for term in self.basic_model.losses]) if self.basic_model.losses else tf.constant(0.0)
        shard_term = tf.cast(self.kernel_regularizer(kernel), tf.float32) if self.kernel_regularizer else tf.constant(0.0)
        return basic_term, shard_term

    def _update_shard(self, gradient):
        """The compiled optimizer's step on this replica's shard, before the backbone's step advances `iterations`."""
        shard_step(self.optimizer, self.shard_rule, self.centers.kernel, self.centers.slots, gradient)

    # ------------------------------------------------------------ the dense form, for checkpoints
    def dense_head(self):
        """A built `NormDense(classes)` holding the full kernel.  Usage: head = model.dense_head()"""
        head = NormDense(self.classes, kernel_regularizer=self.kernel_regularizer, name="NormDense", dtype="float32")
        head.build((None, self.centers.emb_shape))
        head.w.assign(self.centers.get())
        return head

    def dense_model(self):
        """basic model + `dense_head()`: what checkpoints save.  Usage: model.dense_model().save(path)"""
        output = self.dense_head()(self.basic_model.outputs[0])
        return keras.Model(self.basic_model.inputs[0], output, name=self.basic_model.name + "_train")

    def load_dense_model(self, dense_model):
        """Take the class centers (and basic-model weights) of a dense model saved by `dense_model()` (any replicas).

        Usage: model.load_dense_model(keras.models.load_model("model.keras"))
        """
        heads = [layer for layer in dense_model.layers if isinstance(layer, NormDense)]
        if len(heads) != 1:
            raise ValueError("ShardedHeadModel.load_dense_model: expected one NormDense head in {}, got {}".format(dense_model.name, len(heads)))
        kernel = _dense_kernel(heads[0], self.classes)
        basic = keras.Model(dense_model.inputs[0], dense_model.get_layer("embedding").output)
        self.basic_model.set_weights(basic.get_weights())
        self.centers.set(kernel)

    def dense_optimizer(self, dense_model):
        """A copy of the compiled optimizer built for `dense_model.trainable_variables` (the basic model's, then the
        head's), the shards' state gathered into the head's slots: the optimizer state a checkpoint saves."""
        optimizer = type(self.optimizer).from_config(self.optimizer.get_config())
        optimizer.build(dense_model.trainable_variables)
        head_slots = self._head_slots(optimizer)
        for name, variable in head_slots.items():
            variable.assign(self.centers.get(self.centers.slots[name]))
        _copy_values(self.optimizer.variables, _other_variables(optimizer, head_slots))
        return optimizer

    def load_dense_optimizer(self, optimizer):
        """Take the state of `optimizer`, built for a dense model (as `dense_optimizer` or a dense run's checkpoint
        makes it), into the compiled optimizer and the shards.  Usage: model.load_dense_optimizer(optimizer)"""
        if type(optimizer) is not type(self.optimizer):
            raise ValueError("ShardedHeadModel.load_dense_optimizer: the model is compiled with {}, the state is of {}".format(
                type(self.optimizer).__name__, type(optimizer).__name__))
        head_slots = self._head_slots(optimizer)
        for name, slot in self.centers.slots.items():
            self.centers.set(keras.ops.convert_to_numpy(head_slots[name]), slot)
        _copy_values(_other_variables(optimizer, head_slots), self.optimizer.variables)

    def _head_slots(self, optimizer):
        """{shard slot name: `optimizer`'s slot variable of the dense head, its last trainable variable}."""
        return {name: getattr(optimizer, self.shard_rule.slots[name])[-1] for name in self.centers.slots}

    def save(self, filepath, *args, **kwargs):
        """Save the dense form (`dense_model()`): a full model file any number of replicas, or a dense run, loads."""
        self.dense_model().save(filepath, *args, **kwargs)

    def checkpoint_state(self):
        """(dense model, its optimizer) holding the whole state: what `myCallbacks.CheckpointCommit` writes. The state
        `gather_checkpoint_state` kept at this step when there is one (handed over once), else gathered now."""
        gathered, self._gathered_state = getattr(self, "_gathered_state", None), None
        if gathered is not None and gathered.step == int(self.optimizer.iterations.numpy()):
            return gathered.state
        dense_model = self.dense_model()
        return dense_model, self.dense_optimizer(dense_model)

    def gather_checkpoint_state(self, keep=True):
        """Gather `checkpoint_state()` now, kept for this step when `keep` (a full dense copy in host memory). Under a
        multi-worker strategy every worker calls it at the same point (all-gathers of the shards;
        `multi_worker.GatherCheckpointState`), the chief keeping it, so that it alone then writes the checkpoint.
        Usage: model.gather_checkpoint_state(keep=is_chief)"""
        self._gathered_state = None
        state = self.checkpoint_state()
        self._gathered_state = _GatheredState(int(self.optimizer.iterations.numpy()), state) if keep else None

    def load_checkpoint(self, model_path, optimizer_path=None):
        """Continue from a checkpoint written under any number of replicas: the full model file and, when given and
        present, its optimizer state (`checkpoints.save_optimizer_state` layout).  Call after `compile`.
        Usage: model.load_checkpoint("checkpoints/m.keras", "checkpoints/m_optimizer.npz")
        """
        dense_model = keras.models.load_model(model_path, compile=False)
        self.load_dense_model(dense_model)
        if optimizer_path is not None and os.path.exists(optimizer_path):
            optimizer = checkpoints.restore_optimizer_state(optimizer_path, dense_model.trainable_variables, dense_model.weights)
            self.load_dense_optimizer(optimizer)

    def get_config(self):
        config = super().get_config()
        config.update({
            "basic_model": keras.saving.serialize_keras_object(self.basic_model),
            "classes": self.classes,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config["basic_model"] = keras.saving.deserialize_keras_object(config["basic_model"])
        return cls(**config)


# ---------------------------------------------------------------- the output head
_MARGIN_PLANS_ONLY = "only margin-loss plans without lossTopK, feature-norm losses, centerloss, triplet or distill shard their class centers"


@registry.register
class ShardedHead(OutputHead):
    """The cosine head of margin-loss plans under `Train(shard_centers=True)` and more than one replica: the whole
    training model is a `ShardedHeadModel`, kept across plans; it starts from the class centers of a plain dense
    head, and a later dense plan starts from its centers.
    Usage: head = ShardedHead(HeadRequest("arcface", classes), HeadOptions(shard_centers=True, num_replicas=2))"""

    kind = "sharded"
    priority = 20
    enabled_by = "shard_centers"
    refuses = {
        "mixup_alpha": "the sharded head needs integer labels",
        "sam_rho": "the sharded head has its own training step",
        "vpl_start_iters": "the sharded head has its own training step",
        "partial_fc_sample_rate": "the sharded head scores every class; Partial FC sampling inside the shards is not built",
        "a softmax loss": _MARGIN_PLANS_ONLY,
        "lossTopK": _MARGIN_PLANS_ONLY,
        "a feature-norm loss": _MARGIN_PLANS_ONLY,
        "centerloss": _MARGIN_PLANS_ONLY,
        "triplet": _MARGIN_PLANS_ONLY,
        "distill": _MARGIN_PLANS_ONLY,
        "AcrTripLoss": _MARGIN_PLANS_ONLY,
    }

    def __init__(self, request, options, layer=None):
        super().__init__(request, options, layer)
        self.model, self._start_head = None, None

    @classmethod
    def applies(cls, request, options):
        return options.shard_centers and options.num_replicas > 1

    def new_layer(self):
        return None  # the whole training model is the head

    def signature(self):
        return (self.kind, self.request.classes)

    def describe(self):
        return "class centers sharded across {} replicas, classes={}".format(self.options.num_replicas, self.request.classes)

    def carry_from(self, previous, embedding_shape):
        """Start from `previous`'s centers when it is a plain dense cosine head of the same classes."""
        plain = previous is not None and previous.signature() == ("arcface", self.request.classes, 1, False)
        if plain and is_dense_head_of(previous.layer, self.request.classes):
            print(">>>> Reload previous NormDense weight")
            self._start_head = previous.layer

    def class_centers(self):
        return self.model.centers.get() if self.model is not None else None

    def training_model(self, basic_model, extra_outputs, loss, sam_rho, name):
        if self.model is None:
            self.model = ShardedHeadModel(basic_model, self.request.classes, kernel_regularizer=self.options.kernel_regularizer,
                                          seed=self.options.seed, dense_head=self._start_head)
        return self.model

    def wrap_loss(self, loss):
        return loss

    def metrics(self, loss):
        return []
