#!/usr/bin/env python3
"""Train: a scheduler that walks a list of training plans through compile / fit.

Usage:
    import keras, losses, train, models
    basic_model = models.buildin_models("MobileNet", dropout=0, emb_shape=256, output_layer="GDC")
    tt = train.Train("/datasets/faces_emore_112x112_folders", save_path="keras_mobilenet_emore.h5",
                     eval_paths=["/datasets/faces_emore/lfw.bin"], basic_model=basic_model, lr_base=0.001, batch_size=512)
    sch = [
        {"loss": keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "centerloss": 0.01, "optimizer": "adam", "epoch": 2},
        {"loss": losses.ArcfaceLoss(), "epoch": 2, "triplet": 64, "alpha": 0.3},
    ]
    tt.train(sch, 0)

Command line: `python train.py --demo` (or `keras-insightface-train --demo`) trains a small model on a generated
identity dataset (see `run_demo`).
"""
import argparse
import os
import sys
import warnings

import keras
import tensorflow as tf

from . import checkpoints
from . import data
from . import demo
from . import evals
from . import face_io
from . import io_utils
from . import losses
from . import models
from . import model_interf
from . import multi_worker
from . import myCallbacks
from . import partial_fc
from . import sam
from . import sharded_head
from . import triplet_mining

SCHEDULE_KEYS = ("loss", "epoch", "optimizer", "bottleneckOnly", "centerloss", "triplet", "alpha", "lossTopK", "distill", "type")

# Loss classes whose type is known from the class; any other loss on cosine logits is "arcface",
# any other Keras loss is "softmax".
LOSS_TYPES = {
    losses.CenterLoss: "center",
    losses.BatchHardTripletLoss: "triplet",
    losses.BatchAllTripletLoss: "triplet",
    losses.BatchAllTripletLossHermans: "triplet",
    losses.ArcBatchHardTripletLoss: "triplet",
    losses.BatchHardTripletLossEuclidean: "triplet",  # and its AutoAlpha subclass
    losses.OfflineTripletLoss: "triplet",
    losses.OfflineArcTripletLoss: "triplet",
}
EMBEDDING_TYPES = ("center", "triplet")  # the model is the basic model itself: no classification head


def guess_loss_type(loss):
    """'softmax' / 'arcface' / 'triplet' / 'center' from a loss object or function."""
    for loss_class, loss_type in LOSS_TYPES.items():
        if isinstance(loss, loss_class):
            return loss_type
    if losses.is_margin_loss(loss):
        return "arcface"
    return "softmax"


def _load_model(path, custom_objects):
    """Load a saved `.h5` / `.keras` model, without its compile state (losses are set by each plan)."""
    if not os.path.exists(path):
        raise FileNotFoundError("Model file not found: {}".format(path))
    return keras.models.load_model(path, custom_objects=custom_objects, compile=False)


def _load_optimizer(state_path, model_path, model, custom_objects):
    """The optimizer of a checkpoint: with its state from `state_path` (checked against the model's weights), else
    freshly from the config saved in the model file. A truncated or mismatched state raises CheckpointError."""
    if os.path.exists(state_path):
        return checkpoints.restore_optimizer_state(state_path, model.trainable_variables, model.weights)
    try:
        optimizer = keras.models.load_model(model_path, custom_objects=custom_objects, compile=True).optimizer
    except (ValueError, TypeError, KeyError):
        return None
    if optimizer is None:
        return None
    print(">>>> No optimizer state beside {}: restarting {} with its saved config".format(model_path, type(optimizer).__name__))
    return optimizer.__class__.from_config(optimizer.get_config())


def _embedding_sub_model(model, embedding_layer):
    """The basic model inside a full model: input -> the layer named / indexed by `embedding_layer`."""
    if embedding_layer is None:
        embedding_layer = "embedding"
    layer = model.layers[embedding_layer] if isinstance(embedding_layer, int) else model.get_layer(embedding_layer)
    return keras.Model(model.inputs[0], layer.output, name=model.name + "_basic")


def _global_mixed_policy():
    """The global Keras dtype policy name when it is a mixed one (set by the user), else None."""
    name = keras.mixed_precision.global_policy().name
    return name if name.startswith("mixed_") else None


def _loss_scaled(optimizer, policy):
    """`optimizer` wrapped in Keras' dynamic loss scaling when computing in float16 (unchanged otherwise)."""
    if policy != "mixed_float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def _inner_optimizer(optimizer):
    """The optimizer holding the learning rate and weight decay (unwraps a LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _load_teacher(teacher_model_interf):
    """The teacher of online distillation: None, a keras.Model, or a Keras model file loaded without compile."""
    if teacher_model_interf is None or isinstance(teacher_model_interf, keras.Model):
        return teacher_model_interf
    if isinstance(teacher_model_interf, (str, os.PathLike)):
        print(">>>> Load teacher model from:", teacher_model_interf)
        return model_interf.load_keras_model(os.fspath(teacher_model_interf))
    raise ValueError("teacher_model_interf must be a keras.Model or a Keras model file (.h5 / .keras), got {!r}; other teachers "
                     "(ONNX, TorchScript, MXNet) give their embeddings through data_distiller.py".format(teacher_model_interf))


def _check_later_options(sam_rho, vpl_start_iters, vpl_allowed_delta):
    if not isinstance(sam_rho, (int, float)) or sam_rho < 0:
        raise ValueError("sam_rho is the SAM neighbourhood radius, >= 0 (0: off), got {!r}".format(sam_rho))
    if not isinstance(vpl_start_iters, int):
        raise ValueError("vpl_start_iters must be an integer (<= 0: off, < 50: epochs, else steps), got {!r}".format(vpl_start_iters))
    if not isinstance(vpl_allowed_delta, int) or vpl_allowed_delta < 0:
        raise ValueError("vpl_allowed_delta must be an integer >= 0 (steps), got {!r}".format(vpl_allowed_delta))
    return float(sam_rho), vpl_start_iters, vpl_allowed_delta


def _soft_label_or_own_step_options(mixup_alpha, sam_rho, vpl_start_iters):
    """Names of the enabled options that need soft labels (mixup) or their own training step (SAM, VPL)."""
    enabled = {"mixup_alpha": mixup_alpha > 0, "sam_rho": sam_rho > 0, "vpl_start_iters": vpl_start_iters > 0}
    return [name for name, on in enabled.items() if on]


def _check_partial_fc_combination(partial_fc_sample_rate, mixup_alpha, sam_rho, vpl_start_iters):
    """Partial FC samples classes from integer labels, with its own rows-only optimizer step: refuse what breaks that."""
    in_use = _soft_label_or_own_step_options(mixup_alpha, sam_rho, vpl_start_iters) if partial_fc_sample_rate else []
    if in_use:
        raise ValueError("partial_fc_sample_rate does not combine with {} (the sampled head needs integer labels and "
                         "its rows-only optimizer step); use one of them".format(in_use[0]))


class Train:
    """Scheduler connecting basic model, output head, datasets, callbacks, losses and optimizers.

    Initialising from different sources:
        basic_model=model structure, model=None               -> scratch train
        basic_model=saved basic model file, model=None        -> continue from a saved basic model
        basic_model=None / "embedding" layer name or index,
            model=saved model file                            -> continue from the last saved model
        basic_model=None / layer name or index,
            model=model structure                             -> continue from a modified model

    mixed_precision: "mixed_float16" / "mixed_bfloat16" (default: the global Keras policy when it is a mixed one): the
        basic model computes in that policy, its `embedding` layer, the head and the losses in float32; float16
        training wraps the optimizer in `keras.optimizers.LossScaleOptimizer`. A resumed model keeps the policy it
        was saved with unless one is given.
    samples_per_mining: N > 0 trains on mined triplets, the original's offline dataset: every epoch a pool of N images
        (0 < N <= 1: that share) is embedded by the current basic model and each image is yielded as an anchor with its
        hardest positive and negative, `[a, p, n, ...]`, for losses.OfflineTripletLoss (triplet_mining.py).
    mixup_alpha: in (0, 1], mixup of each training batch with itself (`data.mixup`); the labels become soft rows, read
        by the losses as the original (`losses.takes_soft_labels`). 0: off.
    teacher_model_interf: a teacher keras.Model or Keras model file: online distillation, its embeddings of each
        augmented batch are the targets of the `distill` output (`data.with_teacher_embeddings`).
    sam_rho: > 0 trains with sharpness-aware minimization of that radius (`sam.SAMModel`).
    vpl_start_iters, vpl_allowed_delta: vpl_start_iters > 0 makes the arcface head a `models.NormDenseVPL` whose
        prototypes mix in the queued features from that step on (a value < 50 counts epochs), of classes seen at most
        vpl_allowed_delta steps ago.
    steps_per_execution, jit_compile: passed to `model.compile` (Keras' meaning). With steps_per_execution=N the
        batch-level callbacks (eval_freq, the per-batch cosine lr, the NaN guard) run every N batches; jit_compile=True
        compiles the training step with XLA ("auto", Keras' default, leaves XLA off on a CPU-only machine).
    partial_fc_sample_rate: r in (0, 1): the cosine head is `partial_fc.NormDensePartialFC`, which scores every class of
        the batch plus sampled negatives, `int(r * classes)` in all (None / 1.0: the dense NormDense). The original's
        `partial_fc_split=K` is accepted and means r = 1 / K. See docs/partial_fc.md.
    shard_centers: True: when the strategy has more than one replica, the NormDense class centers of margin-loss plans
        are sharded across the replicas (`sharded_head.ShardedHeadModel`, docs/distributed.md); checkpoints stay dense.

    Usage: tt = Train(data_path, "save.h5", eval_paths, basic_model=basic_model); tt.train([{"loss": ..., "epoch": 1}])
    """

    def __init__(
        self,
        data_path,
        save_path,
        eval_paths=[],
        basic_model=None,
        model=None,
        compile=True,
        output_weight_decay=1,
        custom_objects={},
        pretrained=None,
        batch_size=128,
        lr_base=0.001,
        lr_decay=0.05,
        lr_decay_steps=0,
        lr_min=1e-6,
        lr_warmup_steps=0,
        eval_freq=1,
        random_status=0,
        random_crop=data.DEFAULT_RANDOM_CROP,
        random_cutout_mask_area=0.0,
        image_per_class=0,
        samples_per_mining=0,
        img_shape=None,
        seed=None,
        output_wd_multiply=None,
        mixed_precision=None,
        steps_per_execution=1,
        jit_compile="auto",
        mixup_alpha=0,
        teacher_model_interf=None,
        sam_rho=0,
        vpl_start_iters=-1,
        vpl_allowed_delta=200,
        partial_fc_sample_rate=None,
        partial_fc_split=0,
        shard_centers=False,
    ):
        if output_wd_multiply is not None:
            output_weight_decay = output_wd_multiply
        self._check_arguments(batch_size, output_weight_decay, lr_base, steps_per_execution, jit_compile)
        self.steps_per_execution, self.jit_compile = steps_per_execution, jit_compile
        self.partial_fc_sample_rate = partial_fc.sample_rate_of(partial_fc_sample_rate, partial_fc_split)
        if self.partial_fc_sample_rate and jit_compile is True:
            raise ValueError("partial_fc_sample_rate: the sampled head has a data-dependent width, which XLA (jit_compile=True) cannot compile")
        self.shard_centers = bool(shard_centers)
        self.strategy = tf.distribute.get_strategy()
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.worker = multi_worker.worker_place(self.strategy)
        if self.worker.is_multi_worker and seed is None:
            raise ValueError("seed: multi-worker training needs the same integer seed on every worker (the data order), got None")
        self.batch_size = batch_size * self.num_replicas
        if self.num_replicas > 1:
            print(">>>> num_replicas_in_sync: {}, global batch_size: {}".format(self.num_replicas, self.batch_size))

        self.run = checkpoints.RunCheckpoint(save_path)
        self.save_path, self.save_stem = self.run.model_path, self.run.stem
        self.resume_run, self.resume_epoch = None, None  # the run and committed epoch a loaded checkpoint came from
        self.centers_file = None  # a checkpoint's centers when resuming; a new run starts from zero centers
        self.output_weight_decay = output_weight_decay
        self.lr_base, self.lr_decay, self.lr_decay_steps = lr_base, lr_decay, lr_decay_steps
        self.lr_min, self.lr_warmup_steps = lr_min, lr_warmup_steps
        self.eval_freq, self.random_status, self.random_crop = eval_freq, random_status, random_crop
        self.random_cutout_mask_area = random_cutout_mask_area
        self.image_per_class, self.seed = image_per_class, seed
        self.samples_per_mining = samples_per_mining
        self.mixup_alpha, self.teacher = data.check_mixup_alpha(mixup_alpha), _load_teacher(teacher_model_interf)
        self.sam_rho, self.vpl_start_iters, self.vpl_allowed_delta = _check_later_options(sam_rho, vpl_start_iters, vpl_allowed_delta)
        _check_partial_fc_combination(self.partial_fc_sample_rate, self.mixup_alpha, self.sam_rho, self.vpl_start_iters)

        self.model, self.output_layer, self.distill_map_layer, self.optimizer = None, None, None, None
        self.mixed_precision = mixed_precision or _global_mixed_policy()
        self.basic_model = self._init_models(basic_model, model, compile, custom_objects)
        self.mixed_precision = models.model_compute_policy(self.basic_model)
        if self.partial_fc_sample_rate is None and isinstance(self.output_layer, partial_fc.NormDensePartialFC):
            self.partial_fc_sample_rate = self.output_layer.sample_rate  # a resumed Partial FC head keeps its rate
        if pretrained:
            print(">>>> Loading pretrained weights:", pretrained)
            self.basic_model.load_weights(pretrained)
        self.img_shape = tuple(img_shape or self.basic_model.input_shape[1:3])

        self.data_path, self.train_ds = None, None
        self.reset_dataset(data_path)

        self._optimizer_variable_ids = {id(var) for var in self.model.trainable_variables} if self.optimizer else set()
        self._dataset_fast_forwarded = False
        self.center_loss = None
        self.head_signature = self._current_head_signature()

        self.my_evals = self._build_eval_callbacks(eval_paths)
        self.my_hist = myCallbacks.My_history(None, evals=self.my_evals, initial_file=self._initial_history_file())
        self.gently_stop = myCallbacks.Gently_stop_callback()
        self.nan_guard = myCallbacks.ExitOnNaN()

    @staticmethod
    def _check_arguments(batch_size, output_weight_decay, lr_base, steps_per_execution, jit_compile):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive integer, got {!r}".format(batch_size))
        if output_weight_decay < 0:
            raise ValueError("output_weight_decay must be >= 0, got {!r}".format(output_weight_decay))
        if lr_base <= 0:
            raise ValueError("lr_base must be > 0, got {!r}".format(lr_base))
        if not isinstance(steps_per_execution, int) or steps_per_execution < 1:
            raise ValueError("steps_per_execution must be a positive integer, got {!r}".format(steps_per_execution))
        if jit_compile not in (True, False, "auto"):
            raise ValueError("jit_compile must be True, False or 'auto', got {!r}".format(jit_compile))

    # ---------------------------------------------------------------- models
    def _init_models(self, basic_model, model, compile, custom_objects):
        """Resolve the four initialisation rows of the basic_model / model table; returns the basic model."""
        if isinstance(model, str):
            print(">>>> Load model from:", model)
            model_path, model = model, self._load_checkpoint_model(model, custom_objects)
            model = self._in_mixed_precision(model, basic_model)
            if compile:
                self.optimizer = _load_optimizer(self._resume_file("optimizer"), model_path, model, custom_objects)
        elif model is not None:
            self.optimizer = getattr(model, "optimizer", None) if compile else None
            model = self._in_mixed_precision(model, basic_model)
        if model is not None:
            self.model = model
            self._adopt_heads_of(model)
            if isinstance(basic_model, keras.Model):
                return basic_model
            return _embedding_sub_model(model, basic_model)
        if isinstance(basic_model, str):
            print(">>>> Load basic_model from:", basic_model)
            basic_model = _load_model(basic_model, custom_objects)
        if not isinstance(basic_model, keras.Model):
            raise ValueError(
                "basic_model must be a keras.Model or a saved model path when model is None, got {!r}".format(basic_model)
            )
        return models.mixed_precision_model(basic_model, self.mixed_precision) if self.mixed_precision else basic_model

    def _in_mixed_precision(self, model, embedding_layer):
        """A full model whose basic-model layers (up to `embedding`) compute in `self.mixed_precision`; heads stay."""
        if not self.mixed_precision:
            return model
        basic_layers = {layer.name for layer in _embedding_sub_model(model, embedding_layer).layers}
        return models.mixed_precision_model(model, self.mixed_precision, layer_names=basic_layers)

    def _load_checkpoint_model(self, model_path, custom_objects):
        """Load a run's saved full model after `recover()` republished its last committed epoch."""
        if os.path.exists(model_path):
            self.resume_run = checkpoints.RunCheckpoint.of_model_file(model_path)
            if self.worker.is_chief:
                self.resume_run.recover()
            elif self.resume_run.generations():  # other workers read, as it is, the last committed epoch the chief publishes
                model_path = self.resume_run.generation_file(self.resume_run.generations()[-1], "model")
            self.resume_epoch = self.resume_run.generation_of(model_path)
            self.centers_file = self._resume_file("centers")
        return _load_model(model_path, custom_objects)

    def _resume_file(self, role):
        """The loaded checkpoint's file of `role`: from its committed epoch folder, else beside the model file."""
        if self.resume_epoch is not None:
            return self.resume_run.generation_file(self.resume_epoch, role)
        return self.resume_run.published_path(role)

    def _initial_history_file(self):
        if os.path.exists(self.run.history_path) or self.resume_run is None:
            return self.run.history_path
        return self._resume_file("history")

    def _adopt_heads_of(self, model):
        """Keep the output head and distill map layer of a loaded full model so their weights carry on."""
        for layer in model.layers:
            if isinstance(layer, (models.NormDense, partial_fc.NormDensePartialFC)) or layer.name == "softmax":
                self.output_layer = layer
            elif layer.name == "distill_emb_map_layer":
                self.distill_map_layer = layer

    def _output_regularizer(self):
        if self.output_weight_decay == 0:
            return None
        if self.output_weight_decay < 1:
            return keras.regularizers.L2(self.output_weight_decay / 2)
        basic_l2 = models.get_l2_regularizer_value(self.basic_model)
        return keras.regularizers.L2(basic_l2 * self.output_weight_decay) if basic_l2 > 0 else None

    def _current_head_signature(self):
        layer = self.output_layer
        if layer is None:
            return None
        if isinstance(layer, partial_fc.NormDensePartialFC):
            return ("arcface", layer.units, layer.loss_top_k, layer.append_norm, False, layer.sample_rate)
        if isinstance(layer, models.NormDense):
            return ("arcface", layer.units, layer.loss_top_k, layer.append_norm, isinstance(layer, models.NormDenseVPL), None)
        return ("softmax", layer.units, 1, False, False, None)

    def _output_head(self, loss_type, loss_top_k, append_norm):
        """The classification layer for this plan: reused when unchanged, else built anew."""
        vpl = loss_type == "arcface" and self.vpl_start_iters > 0
        signature = (loss_type, self.classes, loss_top_k, append_norm, vpl, self.partial_fc_sample_rate)
        if signature == self.head_signature and self.output_layer is not None:
            return self.output_layer
        print(">>>> Build output layer: type={}, classes={}, loss_top_k={}, append_norm={}, vpl={}, partial_fc_sample_rate={}".format(*signature))
        regularizer = self._output_regularizer()
        if loss_type == "softmax" and self.partial_fc_sample_rate:
            raise ValueError("partial_fc_sample_rate needs a cosine head (a margin loss or 'type': 'arcface'); this plan's loss is a softmax one")
        if self.partial_fc_sample_rate:
            layer = partial_fc.NormDensePartialFC(
                self.classes, self.partial_fc_sample_rate, regularizer, loss_top_k, append_norm, seed=self.seed, name="NormDense", dtype="float32"
            )
        elif loss_type == "softmax":
            layer = keras.layers.Dense(self.classes, name="softmax", activation="softmax", kernel_regularizer=regularizer, dtype="float32")
        elif vpl:
            layer = models.NormDenseVPL(
                self.classes, kernel_regularizer=regularizer, append_norm=append_norm, loss_top_k=loss_top_k, name="NormDense", dtype="float32",
                start_iters=self._vpl_start_step(), allowed_delta=self.vpl_allowed_delta,
            )
        else:
            layer = models.NormDense(
                self.classes, kernel_regularizer=regularizer, loss_top_k=loss_top_k, append_norm=append_norm, name="NormDense", dtype="float32"
            )
        self._carry_class_weights(self.output_layer, layer)
        self.output_layer, self.head_signature = layer, signature
        return layer

    def _carry_class_weights(self, previous, layer):
        """A new cosine head takes the previous one's class weights when their shapes agree (e.g. NormDense <->
        NormDenseVPL, or append_norm changed), as the original reloads the previous head's weight."""
        if not (isinstance(previous, models.NormDense) and isinstance(layer, models.NormDense)):
            return
        layer.build(self.basic_model.outputs[0].shape)
        if tuple(layer.w.shape) == tuple(previous.w.shape):
            print(">>>> Reload previous NormDense weight")
            layer.w.assign(previous.w)

    def _distill_output(self, embedding):
        teacher_emb = self.teacher_emb_shape
        if embedding.shape[-1] == teacher_emb:
            return keras.layers.Identity(name="distill", dtype="float32")(embedding)
        if self.distill_map_layer is None or self.distill_map_layer.units != teacher_emb:
            self.distill_map_layer = keras.layers.Dense(teacher_emb, use_bias=False, name="distill_emb_map_layer", dtype="float32")
        return self.distill_map_layer(embedding)

    def _build_model(self, loss_type, loss_top_k, append_norm, with_center, with_triplet, with_distill):
        """Full model: basic model + head; extra embedding outputs for center / triplet / distill losses."""
        if self._uses_sharded_head(loss_type, loss_top_k, append_norm, with_center or with_triplet or with_distill):
            self.model, self.output_kinds = self._sharded_model(), ["label"]
            return
        if isinstance(self.model, sharded_head.ShardedHeadModel):
            self.output_layer = self.model.dense_head()  # a dense plan continues from the sharded centers
            self.head_signature = self._current_head_signature()
        embedding = self.basic_model.outputs[0]
        if loss_type in EMBEDDING_TYPES:
            head = keras.layers.Identity(name=loss_type, dtype="float32")
        else:
            head = self._output_head(loss_type, loss_top_k, append_norm)
        inputs = [self.basic_model.inputs[0]]
        if isinstance(head, partial_fc.NormDensePartialFC):
            inputs.append(keras.Input((), dtype="int32", name="label"))
            outputs, kinds = [head([embedding, inputs[1]])], ["label"]
        else:
            outputs, kinds = [head(embedding)], ["label"]
        for name, enabled in (("center", with_center), ("triplet", with_triplet)):
            if enabled and loss_type != name:
                outputs.append(keras.layers.Identity(name=name + "_embedding", dtype="float32")(embedding))
                kinds.append("label")
        if with_distill:
            outputs.append(self._distill_output(embedding))
            kinds.append("embedding")
        self.model = self._training_model(inputs if len(inputs) > 1 else inputs[0], outputs, self.basic_model.name + "_train")
        self.output_kinds = kinds

    def _training_model(self, inputs, outputs, name):
        """keras.Model, or sam.SAMModel for sam_rho > 0 or a VPL head (its train step updates the VPL queue)."""
        outputs = outputs if len(outputs) > 1 else outputs[0]
        if self.sam_rho > 0 or isinstance(self.output_layer, models.NormDenseVPL):
            return sam.SAMModel(inputs, outputs, rho=self.sam_rho, name=name)
        return keras.Model(inputs, outputs, name=name)

    def _with_embedding_and_cosines(self, loss):
        """AcrTripLoss reads `concat([embedding, cosines])`: the model's first output becomes that concatenation."""
        if not isinstance(loss, losses.AcrTripLoss):
            return
        if self._is_partial_fc():
            raise ValueError("AcrTripLoss reads the embedding beside every class's cosine: it does not run on the Partial FC head (partial_fc_sample_rate)")
        embedding = self.basic_model.outputs[0]
        if loss.emb_shape != embedding.shape[-1]:
            raise ValueError("AcrTripLoss(emb_shape={}): the basic model's embedding has {} features; pass emb_shape={}".format(
                loss.emb_shape, embedding.shape[-1], embedding.shape[-1]))
        outputs = self.model.outputs
        first = keras.layers.Concatenate(name="embedding_and_cosines", dtype="float32")([embedding, outputs[0]])
        self.model = self._training_model(self.model.inputs[0], [first, *outputs[1:]], self.model.name)

    def _vpl_start_step(self):
        """The original's rule: vpl_start_iters < 50 counts epochs, else steps."""
        return self.vpl_start_iters * self.steps_per_epoch if self.vpl_start_iters < 50 else self.vpl_start_iters

    def _uses_sharded_head(self, loss_type, loss_top_k, append_norm, with_extra_outputs):
        """True for a margin-loss plan under `shard_centers` and more than one replica; refuses what it cannot shard."""
        if not self.shard_centers or self.num_replicas < 2 or loss_type in EMBEDDING_TYPES:
            return False
        if loss_type != "arcface" or loss_top_k != 1 or append_norm or with_extra_outputs:
            raise ValueError(
                "shard_centers: only margin-loss plans without lossTopK, feature-norm losses, centerloss, triplet or distill "
                "shard their class centers; got type={}, lossTopK={}".format(loss_type, loss_top_k)
            )
        if _soft_label_or_own_step_options(self.mixup_alpha, self.sam_rho, self.vpl_start_iters):
            raise ValueError("shard_centers does not combine with mixup_alpha, sam_rho or vpl_start_iters")
        return True

    def _sharded_model(self):
        """The ShardedHeadModel of this run: kept across plans, starting from the dense head's centers when there is one."""
        if isinstance(self.model, sharded_head.ShardedHeadModel) and self.model.classes == self.classes:
            return self.model
        dense_head = self.output_layer if sharded_head.is_dense_head_of(self.output_layer, self.classes) else None
        print(">>>> Build output layer: class centers sharded across {} replicas, classes={}{}".format(
            self.num_replicas, self.classes, ", from the loaded NormDense" if dense_head is not None else ""))
        return sharded_head.ShardedHeadModel(self.basic_model, self.classes, kernel_regularizer=self._output_regularizer(), dense_head=dense_head)

    # ---------------------------------------------------------------- data
    def reset_dataset(self, data_path, image_per_class=None):
        """(Re)build the training dataset, e.g. after sub-center cleaning.  Usage: tt.reset_dataset(new_npz)"""
        if self.samples_per_mining:
            return self._reset_offline_triplet_dataset(data_path)
        image_per_class = self.image_per_class if image_per_class is None else image_per_class
        self.data_path, self.dataset_image_per_class = data_path, image_per_class
        self._dataset_fast_forwarded, self.triplet_miner = False, None
        self.train_ds, self.steps_per_epoch, self.classes = data.prepare_dataset_and_classes(
            data_path,
            batch_size=self.batch_size,
            img_shape=self.img_shape,
            random_status=self.random_status,
            random_crop=self.random_crop,
            random_cutout_mask_area=self.random_cutout_mask_area,
            image_per_class=image_per_class,
            seed=self.seed,
            norm=face_io.model_normalization(self.basic_model),
            mixup_alpha=self.mixup_alpha,
            input_shard=self.worker.input_shard,
        )
        if self.teacher is not None:
            self.train_ds = data.with_teacher_embeddings(self.train_ds, self.teacher, face_io.model_normalization(self.basic_model))
        label_spec = self.train_ds.element_spec[1]
        self.has_embeddings = isinstance(label_spec, tuple)
        emb_spec = label_spec[1] if self.has_embeddings else None
        self.teacher_emb_shape = int(emb_spec.shape[-1]) if emb_spec is not None else None
        print(">>>> Dataset: {}, classes: {}, steps_per_epoch: {}".format(data_path, self.classes, self.steps_per_epoch))

    def _reset_offline_triplet_dataset(self, data_path):
        """samples_per_mining > 0: every epoch mines [anchor, positive, negative] triplets of a pool (triplet_mining)."""
        self.data_path, self.has_embeddings, self.teacher_emb_shape = data_path, False, None
        self.dataset_image_per_class = max(triplet_mining.MIN_IMAGE_PER_CLASS, self.image_per_class)
        self.train_ds, self.steps_per_epoch, self.classes, self.triplet_miner = triplet_mining.offline_triplet_dataset(
            data_path, self.basic_model, self.samples_per_mining, batch_size=self.batch_size,
            image_per_class=self.dataset_image_per_class, img_shape=self.img_shape, random_status=self.random_status,
            random_crop=self.random_crop, random_cutout_mask_area=self.random_cutout_mask_area, seed=self.seed,
        )
        self._dataset_fast_forwarded = True  # creating an iterator would mine a pool; _continue_from_epoch sets its epoch
        print(">>>> Dataset: {}, classes: {}, steps_per_epoch: {}".format(data_path, self.classes, self.steps_per_epoch))

    def _ensure_triplet_dataset(self):
        if self.dataset_image_per_class <= 0:
            self.reset_dataset(self.data_path, image_per_class=self.image_per_class or 4)

    def _training_dataset(self):
        """Map dataset labels onto the model outputs: (x, y) or (x, (y, emb)) -> (x, targets)."""
        kinds, has_embeddings, label_input = tuple(self.output_kinds), self.has_embeddings, self._is_partial_fc()

        def to_targets(images, labels):
            label, embedding = labels if has_embeddings else (labels, None)
            targets = tuple(embedding if kind == "embedding" else label for kind in kinds)
            return (images, label) if label_input else images, targets if len(targets) > 1 else targets[0]

        dataset = self.train_ds.map(to_targets, num_parallel_calls=tf.data.AUTOTUNE)
        if self.worker.is_multi_worker:
            multi_worker.prepare_model(self.model, dataset.element_spec)
        return multi_worker.distribute_dataset(self.strategy, dataset, self.worker)

    # ---------------------------------------------------------------- compile
    def _resolve_optimizer(self, optimizer):
        if optimizer is None:
            if self.optimizer is None:
                raise ValueError("The first training plan needs an 'optimizer' (a name like 'adam' or a keras optimizer)")
            return self.optimizer
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
            optimizer.learning_rate = self.lr_base
        return optimizer

    def _optimizer_for_current_model(self, optimizer):
        """A built Keras optimizer only updates the variables it was built with: renew it when they grew."""
        variable_ids = {id(var) for var in self.model.trainable_variables}
        if getattr(optimizer, "built", False) and not variable_ids <= self._optimizer_variable_ids:
            print(">>>> Trainable variables changed, renewing the optimizer state")
            optimizer = optimizer.__class__.from_config(optimizer.get_config())
        if not getattr(optimizer, "built", False):
            self._optimizer_variable_ids = variable_ids
        return optimizer

    def _center_loss(self):
        if self.center_loss is None:
            emb_shape = int(self.basic_model.outputs[0].shape[-1])
            self.center_loss = losses.CenterLoss(self.classes, emb_shape=emb_shape, initial_file=self.centers_file)
        return self.center_loss

    def _compile(self, loss, loss_type, centerloss, triplet, alpha, distill):
        """Compile the model with the plan's losses; labels reach each loss as integers, one-hot where it wants them."""
        losses_list, weights = [self._main_loss(loss)], [1.0]
        if loss_type == "center":
            self.center_loss = loss
        if centerloss and loss_type != "center":
            losses_list.append(self._center_loss())
            weights.append(float(centerloss))
        if triplet and loss_type != "triplet":
            losses_list.append(losses.BatchHardTripletLoss(alpha=alpha))
            weights.append(float(triplet))
        if distill:
            losses_list.append(losses.distiller_loss_cosine)
            weights.append(float(distill))
        metrics = self._metrics(loss_type, len(losses_list))
        if isinstance(loss, losses.AcrTripLoss):
            metrics[0] = [keras.metrics.MeanMetricWrapper(losses.accuracy_after_embedding, name="accuracy", emb_shape=loss.emb_shape)]
        self.optimizer = _loss_scaled(self._optimizer_for_current_model(self.optimizer), self.mixed_precision)
        if self._is_partial_fc():
            partial_fc.rows_only(self.optimizer)
        execution = {"steps_per_execution": self.steps_per_execution, "jit_compile": self.jit_compile}
        if len(losses_list) == 1:
            self.model.compile(optimizer=self.optimizer, loss=losses_list[0], metrics=metrics[0], **execution)
        else:
            self.model.compile(optimizer=self.optimizer, loss=losses_list, loss_weights=weights, metrics=metrics, **execution)
        self.optimizer = self.model.optimizer  # a sharded head compiles a copy of an optimizer built for a dense head

    def _is_partial_fc(self):
        return isinstance(self.output_layer, partial_fc.NormDensePartialFC) and self.output_layer in self.model.layers

    def _main_loss(self, loss):
        """The plan's loss as the head's output needs it: on a Partial FC output, integer labels, or one-hot."""
        if self._is_partial_fc():
            return partial_fc.PartialFCLoss(loss)
        return loss if losses.takes_integer_labels(loss) else losses.OneHotLabels(loss, self.classes)

    def _metrics(self, loss_type, num_outputs):
        if loss_type in EMBEDDING_TYPES:
            main = []
        elif self._is_partial_fc():
            main = [keras.metrics.MeanMetricWrapper(partial_fc.sampled_accuracy, name="accuracy", append_norm=self.output_layer.append_norm)]
        elif isinstance(self.output_layer, models.NormDense) and self.output_layer.append_norm:
            main = [keras.metrics.MeanMetricWrapper(losses.accuracy_without_norm, name="accuracy")]
        else:
            main = ["accuracy"]  # Keras picks the sparse accuracy for integer labels
        return [main] + [[] for _ in range(num_outputs - 1)]

    # ---------------------------------------------------------------- callbacks
    def _build_eval_callbacks(self, eval_paths):
        callbacks = []
        for id, eval_path in enumerate(eval_paths):
            keep_best = id == len(eval_paths) - 1  # its best basic model is saved with the epoch's checkpoint
            callbacks.append(evals.eval_callback(self.basic_model, eval_path, batch_size=self.batch_size, eval_freq=self.eval_freq, keep_best=keep_best))
        return callbacks

    def _callbacks(self):
        lr_scheduler = myCallbacks.build_lr_scheduler(
            self.lr_base, self.lr_decay, self.lr_decay_steps, self.lr_min, self.lr_warmup_steps, self.steps_per_epoch
        )
        uses_centers = self.center_loss is not None and any(loss is self.center_loss for loss in self._compiled_losses())
        commit = myCallbacks.CheckpointCommit(
            self.run, self.my_hist, best_eval=self.my_evals[-1] if self.my_evals else None, center_loss=self.center_loss if uses_centers else None
        )
        callbacks = [lr_scheduler, *self.my_evals, self.my_hist, self.nan_guard, commit, self.gently_stop]
        optimizer = _inner_optimizer(self.optimizer)
        if hasattr(optimizer, "decoupled_weight_decay"):
            is_lr_on_batch = myCallbacks.lr_decay_type(self.lr_decay_steps) == "cosine_batch"
            callbacks.insert(1, myCallbacks.OptimizerWeightDecay(self.lr_base, optimizer.weight_decay, is_lr_on_batch=is_lr_on_batch))
        return multi_worker.arrange_callbacks(callbacks, self.strategy, self.worker, self.my_evals, [commit], self.gently_stop, self.my_hist)

    def _compiled_losses(self):
        loss = self.model.loss
        return loss if isinstance(loss, (list, tuple)) else [loss]

    # ---------------------------------------------------------------- training
    def train_single_scheduler(
        self,
        loss=None,
        epoch=0,
        initial_epoch=0,
        optimizer=None,
        bottleneckOnly=False,
        centerloss=0,
        triplet=0,
        alpha=0.35,
        lossTopK=1,
        distill=None,
        type=None,
    ):
        """Train one plan for `epoch` epochs starting at `initial_epoch`.  Usage: tt.train_single_scheduler(losses.ArcfaceLoss(), 2)"""
        if loss is None:
            raise ValueError("A training plan needs a 'loss'")
        if not isinstance(epoch, int) or epoch < 1:
            raise ValueError("A training plan needs 'epoch' as a positive integer, got {!r}".format(epoch))
        loss_type = type or guess_loss_type(loss)
        self._check_mixup_plan(loss, loss_type, centerloss, triplet)
        if distill is not None and not self.has_embeddings:
            raise ValueError("'distill' needs a dataset carrying teacher embeddings (data_distiller.py output), got {}".format(self.data_path))
        distill = (7 if distill is None else distill) if self.has_embeddings else 0
        if triplet or loss_type == "triplet":
            self._ensure_triplet_dataset()

        self.optimizer = self._resolve_optimizer(optimizer)
        append_norm = losses.needs_feature_norm(loss)
        self._build_model(loss_type, lossTopK, append_norm, bool(centerloss), bool(triplet), bool(distill))
        self._with_embedding_and_cosines(loss)
        self.basic_model.trainable = not bottleneckOnly
        self._compile(loss, loss_type, centerloss, triplet, alpha, distill)
        print(
            ">>>> Train {}, loss: {}, epochs {} -> {}{}".format(
                loss_type, getattr(loss, "name", getattr(loss, "__name__", loss)), initial_epoch, initial_epoch + epoch,
                ", bottleneckOnly" if bottleneckOnly else "",
            )
        )
        self._continue_from_epoch(initial_epoch)
        with warnings.catch_warnings():
            # The dataset is finite and shuffled by data.py; its length may shrink by skipped corrupt images.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = self._fit(epochs=initial_epoch + epoch, initial_epoch=initial_epoch)
        self.basic_model.trainable = True
        return history

    def _check_mixup_plan(self, loss, loss_type, centerloss, triplet):
        if not self.mixup_alpha:
            return
        if loss_type in EMBEDDING_TYPES or centerloss or triplet or not losses.takes_soft_labels(loss):
            raise ValueError("mixup_alpha={} trains on mixed label rows: a plan's loss must read them (losses.takes_soft_labels: the "
                             "margin losses but CurricularFace, scale_softmax, MarginSoftmax, Keras categorical losses) and take no "
                             "'centerloss' / 'triplet'; got loss {} ({}), centerloss={}, triplet={}".format(
                                 self.mixup_alpha, getattr(loss, "name", loss), loss_type, centerloss, triplet))

    def _fit(self, epochs, initial_epoch):
        """model.fit of one plan; on several workers, a collective that lost its peer raises PeerLostError."""
        try:
            return self.model.fit(self._training_dataset(), epochs=epochs, initial_epoch=initial_epoch, callbacks=self._callbacks(), shuffle=False, verbose=1)
        except multi_worker.PEER_LOST_ERRORS as error:
            peer_lost = multi_worker.peer_lost_error(error, self.worker)
            if peer_lost is None:
                raise
            raise peer_lost from error

    def _continue_from_epoch(self, initial_epoch):
        """Align history, best eval accuracies and the data order with a run that reached `initial_epoch`."""
        self.my_hist.set_initial_epoch(initial_epoch)
        for eval_callback in self.my_evals:
            previous = [acc for acc in self.my_hist.history.get(eval_callback.test_names, []) if acc is not None]
            eval_callback.max_accuracy = max([eval_callback.max_accuracy, *previous])
        if self.triplet_miner is not None:
            self.triplet_miner.epoch = initial_epoch
        if not self._dataset_fast_forwarded:
            # Each new iterator of the dataset draws the next epoch's shuffle and augmentation seeds.
            for _ in range(initial_epoch):
                iter(self.train_ds)
            self._dataset_fast_forwarded = True

    def train(self, train_schedule, initial_epoch=0):
        """Walk the list of plans starting at `initial_epoch`, the epoch reached so far; returns the epoch reached.

        Each plan trains its own `epoch` epochs; a `bottleneckOnly` plan does not advance the epoch counter. To
        continue a run, pass the plans not yet done (the current one with its remaining epochs) and the epochs
        done, e.g. `tt.train(sch[2:], 45)`; history, learning rate, data order and best accuracy continue from there.
        Usage: tt.train(sch, 0)
        """
        train_schedule = [train_schedule] if isinstance(train_schedule, dict) else list(train_schedule)
        if not train_schedule:
            raise ValueError("tt.train: the training schedule is empty, there is nothing to train")
        for plan in train_schedule:
            self._check_plan(plan)
        if not isinstance(initial_epoch, int) or initial_epoch < 0:
            raise ValueError("tt.train: initial_epoch must be an integer >= 0 (the epochs already trained), got {!r}".format(initial_epoch))
        self._resume_at(initial_epoch)
        for plan in train_schedule:
            kwargs = {key: value for key, value in plan.items() if key != "epoch"}
            self.train_single_scheduler(epoch=plan["epoch"], initial_epoch=initial_epoch, **kwargs)
            initial_epoch += 0 if plan.get("bottleneckOnly", False) else plan["epoch"]
            if self.model.stop_training:
                print(">>>> Training stopped before the schedule ended")
                break
        if not self.my_evals and self.worker.is_chief:
            self._save_latest_basic_model()
        return initial_epoch

    def _resume_at(self, initial_epoch):
        """Make the loaded checkpoint's state the one of `initial_epoch`, from its committed epoch folder when kept."""
        if self.resume_epoch is None or self.resume_epoch == initial_epoch:
            return
        kept = self.resume_run.generations()
        if initial_epoch not in kept:
            print(">>>> Warning: {} holds epoch {} (kept states: {}); training continues from it as epoch {}".format(
                self.resume_run.model_path, self.resume_epoch, kept, initial_epoch))
            return
        print(">>>> {} holds epoch {}: resuming from the state committed at epoch {}".format(self.resume_run.model_path, self.resume_epoch, initial_epoch))
        self.resume_epoch = initial_epoch
        saved = _load_model(self._resume_file("model"), {})
        self.model.set_weights(saved.get_weights())
        if self.optimizer is not None and os.path.exists(self._resume_file("optimizer")):
            self.optimizer = checkpoints.restore_optimizer_state(self._resume_file("optimizer"), self.model.trainable_variables, self.model.weights)
            self._optimizer_variable_ids = {id(var) for var in self.model.trainable_variables}
        self.centers_file, self.center_loss = self._resume_file("centers"), None
        self.my_hist.history = checkpoints.load_history(self._resume_file("history"))

    @staticmethod
    def _check_plan(plan):
        if not isinstance(plan, dict):
            raise ValueError("Each training plan must be a dict, got {!r}".format(plan))
        unknown = set(plan) - set(SCHEDULE_KEYS)
        if unknown:
            raise ValueError("Unknown training plan keys {}; known keys: {}".format(sorted(unknown), SCHEDULE_KEYS))
        for key in ("loss", "epoch"):
            if key not in plan:
                raise ValueError("Training plan {} is missing the required key '{}'".format(plan, key))

    def _save_latest_basic_model(self):
        path = self.run.basic_latest_path
        with io_utils.atomic_path(path) as tmp:
            self.basic_model.save(tmp)
        print(">>>> Saved basic model:", path)


def run_demo(data_dir="demo_data", epochs=6, batch_size=32, seed=0, partial_fc_sample_rate=None):
    """The built-in demo: generated identities (demo.py), a tiny backbone, an ArcFace schedule through `Train`.

    partial_fc_sample_rate: train with the Partial FC head at that rate (None: the dense NormDense).
    Returns the best verification accuracy on pairs of held-out identities.
    Usage: python train.py --demo   (or run_demo("demo_data", epochs=6))
    """
    keras.utils.set_random_seed(seed)
    train_dir, bin_path = demo.make_demo_dataset(data_dir, seed=seed)
    basic_model = models.buildin_models(demo.tiny_backbone(), dropout=0, emb_shape=64, output_layer="GDC")
    tt = Train(
        train_dir, save_path="demo_tiny_arcface.h5", eval_paths=[bin_path], basic_model=basic_model,
        batch_size=batch_size, lr_base=0.01, lr_decay=0.5, lr_decay_steps=[epochs // 2 + 1], random_status=0, seed=seed,
        partial_fc_sample_rate=partial_fc_sample_rate,
    )
    schedule = [
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)},
        {"loss": losses.ArcfaceLoss(scale=32), "epoch": epochs - 1},
    ]
    tt.train(schedule, 0)
    best = tt.my_evals[-1].max_accuracy
    print(">>>> Demo done: held-out identities verification max accuracy {:.4f} (chance is 0.5)".format(best))
    return best


def main(argv=None):
    """The training command line: `python train.py --demo` (console script keras-insightface-train)."""
    parser = argparse.ArgumentParser(description="Keras InsightFace training entry point", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="Train a small model on a generated identity dataset and print evaluation accuracy")
    parser.add_argument("--data_dir", default="demo_data", help="Where the demo dataset is generated")
    parser.add_argument("--epochs", type=int, default=6, help="Demo training epochs (>= 2)")
    parser.add_argument("--batch_size", type=int, default=32, help="Demo batch size")
    parser.add_argument("--partial_fc_sample_rate", type=float, default=None, help="Demo with the Partial FC head at this sample rate")
    args = parser.parse_args(argv)
    if not args.demo:
        parser.print_help()
        return 0
    if args.epochs < 2:
        parser.error("--epochs must be >= 2")
    run_demo(args.data_dir, epochs=args.epochs, batch_size=args.batch_size, partial_fc_sample_rate=args.partial_fc_sample_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
