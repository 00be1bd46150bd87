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

The output head of each plan is asked of `heads` (which kind, its refusals, its loss, metrics and optimizer needs),
a plan's keys and extra losses of `plans`, the resume of `checkpoints.Resume`. The command line
(`python train.py --demo`) is `demo.main`.
"""
import dataclasses
import os
import warnings

import keras
import tensorflow as tf

from . import checkpoints, data, evals, face_io, heads, io_utils, losses, models, multi_worker, myCallbacks, plans, triplet_mining
from .losses import guess_loss_type  # noqa: F401  (train.guess_loss_type, the seed's name)
from .model_interf import load_teacher


def _embedding_sub_model(model, embedding_layer):
    """The basic model inside a full model: input -> the layer named / indexed by `embedding_layer`."""
    if embedding_layer is None:
        embedding_layer = "embedding"
    layer = model.layers[embedding_layer] if isinstance(embedding_layer, int) else model.get_layer(embedding_layer)
    return keras.Model(model.inputs[0], layer.output, name=model.name + "_basic")


def _in_policy(policy, model, embedding_layer):
    """A full model whose basic-model layers (up to `embedding`) compute in `policy`; heads stay (None: unchanged)."""
    if not policy:
        return model
    basic_layers = {layer.name for layer in _embedding_sub_model(model, embedding_layer).layers}
    return models.mixed_precision_model(model, policy, layer_names=basic_layers)


def _global_mixed_policy():
    """The global Keras dtype policy name when it is a mixed one (set by the user), else None."""
    name = keras.mixed_precision.global_policy().name
    return name if name.startswith("mixed_") else None


def _loss_scaled(optimizer, policy):
    """`optimizer` wrapped in Keras' dynamic loss scaling when computing in float16 (unchanged otherwise)."""
    if policy != "mixed_float16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


class Train:
    """Scheduler connecting basic model, output head, datasets, callbacks, losses and optimizers.

    Initialising from different sources:
        basic_model=model structure, model=None               -> scratch train
        basic_model=saved basic model file, model=None        -> continue from a saved basic model
        basic_model=None / "embedding" layer name or index,
            model=saved model file                            -> continue from the last saved model
        basic_model=None / layer name or index,
            model=model structure                             -> continue from a modified model

    The options (docs/train_options.md has each in full):
    mixed_precision: "mixed_float16" / "mixed_bfloat16" (default: the global Keras policy when it is a mixed one): the
        basic model computes in that policy, its `embedding` layer, the head and the losses in float32; float16
        training wraps the optimizer in `keras.optimizers.LossScaleOptimizer`. A resumed model keeps its policy.
    samples_per_mining: N > 0 trains on mined `[a, p, n]` triplets of a pool of N images (0 < N <= 1: that share)
        embedded every epoch, for losses.OfflineTripletLoss (triplet_mining.py).
    mixup_alpha: in (0, 1], mixup of each training batch (`data.mixup`); soft label rows, read as the original.
    teacher_model_interf: a teacher keras.Model or Keras model file: online distillation targets of `distill`.
    sam_rho: > 0 trains with sharpness-aware minimization of that radius (`sam.SAMModel`).
    vpl_start_iters, vpl_allowed_delta: > 0 makes the cosine head a `NormDenseVPL` (heads/vpl.py); < 50 counts epochs.
    steps_per_execution, jit_compile: passed to `model.compile` (Keras' meaning); batch-level callbacks then run
        every N batches; jit_compile=True compiles the step with XLA.
    partial_fc_sample_rate: r in (0, 1): the Partial FC cosine head (heads/partial_fc.py; `partial_fc_split=K` is
        r = 1 / K). shard_centers: True: class centers sharded across replicas (heads/sharded.py).
    sync_batchnorm: True: under more than one replica (devices, workers) every BatchNormalization layer of the basic
        model normalizes by the statistics of the global batch, so the run equals one device at the global batch
        (docs/distributed.md); False (default): each replica's own batch, and a printed line says so.
    Which options combine is each head's `refuses` table (heads/registry.py).

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
        sync_batchnorm=False,
    ):
        output_weight_decay = output_weight_decay if output_wd_multiply is None else output_wd_multiply
        plans.check_train_arguments(batch_size, output_weight_decay, lr_base, steps_per_execution, jit_compile, sam_rho, vpl_start_iters,
                                    vpl_allowed_delta)
        self.steps_per_execution, self.jit_compile = steps_per_execution, jit_compile
        self.partial_fc_sample_rate = heads.partial_fc.sample_rate_of(partial_fc_sample_rate, partial_fc_split)
        self.shard_centers, self.mixup_alpha = bool(shard_centers), data.check_mixup_alpha(mixup_alpha)
        self.sam_rho, self.vpl_start_iters, self.vpl_allowed_delta = float(sam_rho), vpl_start_iters, vpl_allowed_delta
        self.strategy = tf.distribute.get_strategy()
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.worker = multi_worker.worker_place(self.strategy)
        if self.worker.is_multi_worker and seed is None:
            raise ValueError("seed: multi-worker training needs the same integer seed on every worker (the data order), got None")
        self.seed, self.output_weight_decay = seed, output_weight_decay
        heads.check_run_options(self._head_options())
        self.batch_size = batch_size * self.num_replicas
        if self.num_replicas > 1:
            print(">>>> num_replicas_in_sync: {}, global batch_size: {}".format(self.num_replicas, self.batch_size))

        self.run = checkpoints.RunCheckpoint(save_path)
        self.save_path, self.save_stem = self.run.model_path, self.run.stem
        self.resume = None  # the checkpoint a loaded model came from (checkpoints.Resume)
        self.lr_base, self.lr_decay, self.lr_decay_steps = lr_base, lr_decay, lr_decay_steps
        self.lr_min, self.lr_warmup_steps = lr_min, lr_warmup_steps
        self.eval_freq, self.random_status, self.random_crop = eval_freq, random_status, random_crop
        self.random_cutout_mask_area, self.image_per_class = random_cutout_mask_area, image_per_class
        self.samples_per_mining, self.teacher = samples_per_mining, load_teacher(teacher_model_interf)

        self.model, self.head, self.distill_map_layer, self.optimizer = None, None, None, None
        self.mixed_precision = mixed_precision or _global_mixed_policy()
        self.basic_model = self._init_models(basic_model, model, compile, custom_objects)
        self.mixed_precision = models.model_compute_policy(self.basic_model)
        if pretrained:
            print(">>>> Loading pretrained weights:", pretrained)
            self.basic_model.load_weights(pretrained)
        self.img_shape = tuple(img_shape or self.basic_model.input_shape[1:3])
        multi_worker.arrange_batchnorm(self.basic_model, self.num_replicas, batch_size, bool(sync_batchnorm))

        self.data_path, self.train_ds = None, None
        self.reset_dataset(data_path)

        self._optimizer_variable_ids = {id(var) for var in self.model.trainable_variables} if self.optimizer else set()
        self._dataset_fast_forwarded, self.center_loss, self._walking_schedule = False, None, False
        self.my_evals = [evals.eval_callback(self.basic_model, path, batch_size=self.batch_size, eval_freq=self.eval_freq,
                                             keep_best=id == len(eval_paths) - 1)  # the last keeps its best basic model
                         for id, path in enumerate(eval_paths)]
        self.my_hist = myCallbacks.My_history(None, evals=self.my_evals, initial_file=self._initial_history_file())
        self.gently_stop, self.nan_guard = myCallbacks.Gently_stop_callback(), myCallbacks.ExitOnNaN()

    # ---------------------------------------------------------------- models
    def _init_models(self, basic_model, model, compile, custom_objects):
        """Resolve the four initialisation rows of the basic_model / model table; returns the basic model."""
        if isinstance(model, str):
            print(">>>> Load model from:", model)
            model_path = model
            if model_path and os.path.exists(model_path):
                self.resume = checkpoints.Resume(model_path, is_chief=self.worker.is_chief)
                model_path = self.resume.model_path
            model = _in_policy(self.mixed_precision, checkpoints.load_model(model_path, custom_objects), basic_model)
            if compile and self.resume is not None:
                self.optimizer = self.resume.load_optimizer(model, custom_objects)
        elif model is not None:
            self.optimizer = getattr(model, "optimizer", None) if compile else None
            model = _in_policy(self.mixed_precision, model, basic_model)
        if model is not None:
            self.model = model
            self._adopt_heads_of(model)
            return basic_model if isinstance(basic_model, keras.Model) else _embedding_sub_model(model, basic_model)
        if isinstance(basic_model, str):
            print(">>>> Load basic_model from:", basic_model)
            basic_model = checkpoints.load_model(basic_model, custom_objects)
        if not isinstance(basic_model, keras.Model):
            raise ValueError("basic_model must be a keras.Model or a saved model path when model is None, got {!r}".format(basic_model))
        return models.mixed_precision_model(basic_model, self.mixed_precision) if self.mixed_precision else basic_model

    def _adopt_heads_of(self, model):
        """Keep the output head and distill map layer of a loaded full model so their weights carry on."""
        self.head = heads.head_of_model(model)
        if self.head is not None:
            resumed = self.head.options_on_resume(self._head_options())
            self.partial_fc_sample_rate = resumed.partial_fc_sample_rate
        if "distill_emb_map_layer" in [layer.name for layer in model.layers]:
            self.distill_map_layer = model.get_layer("distill_emb_map_layer")

    def _initial_history_file(self):
        if os.path.exists(self.run.history_path) or self.resume is None:
            return self.run.history_path
        return self.resume.file("history")

    @property
    def output_layer(self):
        """The layer of the current class head (None before the first plan that scores classes)."""
        return self.head.layer if self.head is not None and self.head.layer is not None else None

    def _head_options(self):
        return heads.HeadOptions(
            partial_fc_sample_rate=self.partial_fc_sample_rate, vpl_start_iters=self.vpl_start_iters, vpl_allowed_delta=self.vpl_allowed_delta,
            shard_centers=self.shard_centers, num_replicas=self.num_replicas, seed=self.seed, mixup_alpha=self.mixup_alpha,
            sam_rho=self.sam_rho, jit_compile=self.jit_compile,
        )

    def _plan_head(self, loss_type, loss_top_k, append_norm, extra_outputs=(), loss=None):
        """The output head of a plan: the current one when it serves, else a new one; a class head becomes current."""
        request = heads.HeadRequest(loss_type, self.classes, loss_top_k, append_norm, tuple(extra_outputs), loss, self.steps_per_epoch)
        regularizer = plans.output_regularizer(self.output_weight_decay, self.basic_model)
        options = dataclasses.replace(self._head_options(), kernel_regularizer=regularizer)
        head = heads.plan_head(request, options, self.head, self.basic_model.outputs[0].shape)
        if head.scores_classes:
            self.head = head
        return head

    def _output_head(self, loss_type, loss_top_k, append_norm):
        """The classification layer for this plan: reused when unchanged, else built anew."""
        return self._plan_head(loss_type, loss_top_k, append_norm).layer

    def _build_model(self, loss_type, loss_top_k, append_norm, with_center, with_triplet, with_distill, loss=None):
        """Full model: basic model + the plan's head; extra embedding outputs for center / triplet / distill losses."""
        extras = plans.extra_outputs(loss_type, with_center, with_triplet, with_distill)
        self.plan_head = self._plan_head(loss_type, loss_top_k, append_norm, extras, loss)
        embedding, outputs, self.output_kinds = self.basic_model.outputs[0], [], ["label"]
        for name in extras:
            if name == "distill":
                distill, self.distill_map_layer = plans.distill_output(embedding, self.teacher_emb_shape, self.distill_map_layer)
                outputs.append(distill)
                self.output_kinds.append("embedding")
            else:
                outputs.append(keras.layers.Identity(name=plans.EMBEDDING_OUTPUT_NAMES[name], dtype="float32")(embedding))
                self.output_kinds.append("label")
        self.model = self.plan_head.training_model(self.basic_model, outputs, loss, self.sam_rho, self.basic_model.name + "_train")

    # ---------------------------------------------------------------- data
    def reset_dataset(self, data_path, image_per_class=None):
        """(Re)build the training dataset, e.g. after sub-center cleaning.  Usage: tt.reset_dataset(new_npz)"""
        self.data_path, self._dataset_fast_forwarded, self.triplet_miner = data_path, False, None
        common = dict(batch_size=self.batch_size, img_shape=self.img_shape, random_status=self.random_status, random_crop=self.random_crop,
                      random_cutout_mask_area=self.random_cutout_mask_area, seed=self.seed)
        if self.samples_per_mining:  # every epoch mines [anchor, positive, negative] triplets of a pool (triplet_mining)
            self.dataset_image_per_class = max(triplet_mining.MIN_IMAGE_PER_CLASS, self.image_per_class)
            self.train_ds, self.steps_per_epoch, self.classes, self.triplet_miner = triplet_mining.offline_triplet_dataset(
                data_path, self.basic_model, self.samples_per_mining, image_per_class=self.dataset_image_per_class, **common)
            self._dataset_fast_forwarded = True  # creating an iterator would mine a pool; _continue_from_epoch sets its epoch
        else:
            self.dataset_image_per_class = self.image_per_class if image_per_class is None else image_per_class
            norm = face_io.model_normalization(self.basic_model)
            self.train_ds, self.steps_per_epoch, self.classes = data.prepare_dataset_and_classes(
                data_path, image_per_class=self.dataset_image_per_class, norm=norm, mixup_alpha=self.mixup_alpha,
                input_shard=self.worker.input_shard, **common)
            if self.teacher is not None:
                self.train_ds = data.with_teacher_embeddings(self.train_ds, self.teacher, norm)
        label_spec = self.train_ds.element_spec[1]
        self.has_embeddings = isinstance(label_spec, tuple)
        self.teacher_emb_shape = int(label_spec[1].shape[-1]) if self.has_embeddings else None
        print(">>>> Dataset: {}, classes: {}, steps_per_epoch: {}".format(data_path, self.classes, self.steps_per_epoch))

    def _training_dataset(self):
        """Map dataset labels onto the model outputs: (x, y) or (x, (y, emb)) -> (x, targets)."""
        kinds, has_embeddings, label_input = tuple(self.output_kinds), self.has_embeddings, self.plan_head.takes_label_input

        def to_targets(images, labels):
            label, embedding = labels if has_embeddings else (labels, None)
            targets = tuple(embedding if kind == "embedding" else label for kind in kinds)
            return (images, label) if label_input else images, targets if len(targets) > 1 else targets[0]

        dataset = self.train_ds.map(to_targets, num_parallel_calls=tf.data.AUTOTUNE)
        multi_worker.prepare_model(self.model, dataset.element_spec, self.worker)
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
            centers_file = self.resume.file("centers") if self.resume is not None else None
            self.center_loss = losses.CenterLoss(self.classes, emb_shape=int(self.basic_model.outputs[0].shape[-1]), initial_file=centers_file)
        return self.center_loss

    def _compile(self, loss, loss_type, centerloss, triplet, alpha, distill):
        """Compile the model with the plan's losses; labels reach each loss as the head's output needs them."""
        if loss_type == "center":
            self.center_loss = loss
        extra = plans.extra_losses(loss_type, centerloss, triplet, alpha, distill, self._center_loss)
        losses_list, weights = [self.plan_head.wrap_loss(loss)] + [ll for ll, _ in extra], [1.0] + [ww for _, ww in extra]
        metrics = [self.plan_head.metrics(loss)] + [[] for _ in extra]
        self.optimizer = _loss_scaled(self._optimizer_for_current_model(self.optimizer), self.mixed_precision)
        self.optimizer = self.plan_head.prepare_optimizer(self.optimizer)
        execution = {"steps_per_execution": self.steps_per_execution, "jit_compile": self.jit_compile}
        if len(losses_list) == 1:
            self.model.compile(optimizer=self.optimizer, loss=losses_list[0], metrics=metrics[0], **execution)
        else:
            self.model.compile(optimizer=self.optimizer, loss=losses_list, loss_weights=weights, metrics=metrics, **execution)
        self.optimizer = self.model.optimizer  # a sharded head compiles a copy of an optimizer built for a dense head

    # ---------------------------------------------------------------- callbacks
    def _callbacks(self):
        lr_scheduler = myCallbacks.build_lr_scheduler(
            self.lr_base, self.lr_decay, self.lr_decay_steps, self.lr_min, self.lr_warmup_steps, self.steps_per_epoch
        )
        compiled = self.model.loss if isinstance(self.model.loss, (list, tuple)) else [self.model.loss]
        uses_centers = self.center_loss is not None and any(loss is self.center_loss for loss in compiled)
        commit = myCallbacks.CheckpointCommit(
            self.run, self.my_hist, best_eval=self.my_evals[-1] if self.my_evals else None, center_loss=self.center_loss if uses_centers else None
        )
        callbacks = [lr_scheduler, *self.my_evals, self.my_hist, self.nan_guard, commit, self.gently_stop]
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # the one holding lr and weight decay
        if hasattr(optimizer, "decoupled_weight_decay"):
            is_lr_on_batch = myCallbacks.lr_decay_type(self.lr_decay_steps) == "cosine_batch"
            callbacks.insert(1, myCallbacks.OptimizerWeightDecay(self.lr_base, optimizer.weight_decay, is_lr_on_batch=is_lr_on_batch))
        return multi_worker.arrange_callbacks(callbacks, self.strategy, self.worker, self.my_evals, [commit], self.gently_stop, self.my_hist)

    # ---------------------------------------------------------------- training
    def train_single_scheduler(self, loss=None, epoch=0, initial_epoch=0, optimizer=None, bottleneckOnly=False, centerloss=0, triplet=0,
                               alpha=0.35, lossTopK=1, distill=None, type=None):
        """Train one plan for `epoch` epochs starting at `initial_epoch`.  Usage: tt.train_single_scheduler(losses.ArcfaceLoss(), 2)"""
        plans.check_loss_and_epoch(loss, epoch)
        if not self._walking_schedule:
            self._keep_an_earlier_run(initial_epoch)
        loss_type = type or guess_loss_type(loss)
        plans.check_mixup_plan(self.mixup_alpha, loss, loss_type, centerloss, triplet)
        if distill is not None and not self.has_embeddings:
            raise ValueError("'distill' needs a dataset carrying teacher embeddings (data_distiller.py output), got {}".format(self.data_path))
        distill = (plans.DEFAULT_DISTILL_WEIGHT if distill is None else distill) if self.has_embeddings else 0
        if (triplet or loss_type == "triplet") and self.dataset_image_per_class <= 0:
            self.reset_dataset(self.data_path, image_per_class=self.image_per_class or 4)

        self.optimizer = self._resolve_optimizer(optimizer)
        self._build_model(loss_type, lossTopK, losses.needs_feature_norm(loss), bool(centerloss), bool(triplet), bool(distill), loss)
        self.basic_model.trainable = not bottleneckOnly
        self._compile(loss, loss_type, centerloss, triplet, alpha, distill)
        print(">>>> Train {}, loss: {}, epochs {} -> {}{}".format(
            loss_type, getattr(loss, "name", getattr(loss, "__name__", loss)), initial_epoch, initial_epoch + epoch,
            ", bottleneckOnly" if bottleneckOnly else ""))
        self._continue_from_epoch(initial_epoch)
        with warnings.catch_warnings():
            # The dataset is finite and shuffled by data.py; its length may shrink by skipped corrupt images.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = self._fit(epochs=initial_epoch + epoch, initial_epoch=initial_epoch)
        self.basic_model.trainable = True
        return history

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
        train_schedule = plans.check_schedule(train_schedule, initial_epoch)
        self._keep_an_earlier_run(initial_epoch)
        self._resume_at(initial_epoch)
        self._walking_schedule = True
        try:
            for plan in train_schedule:
                kwargs = {key: value for key, value in plan.items() if key != "epoch"}
                self.train_single_scheduler(epoch=plan["epoch"], initial_epoch=initial_epoch, **kwargs)
                initial_epoch += 0 if plan.get("bottleneckOnly", False) else plan["epoch"]
                if self.model.stop_training:
                    print(">>>> Training stopped before the schedule ended")
                    break
        finally:
            self._walking_schedule = False
        if not self.my_evals and self.worker.is_chief:
            self._save_latest_basic_model()
        return initial_epoch

    def _keep_an_earlier_run(self, initial_epoch):
        """Training from below the epochs `save_path`'s folder holds starts a new run: the earlier run's files are kept."""
        if self.worker.is_chief:
            self.run.keep_earlier_run_below(initial_epoch, resumed_from=self.resume.run if self.resume else None)

    def _resume_at(self, initial_epoch):
        """Make the loaded checkpoint's state the one of `initial_epoch`, from its committed epoch folder when kept."""
        state = self.resume.state_at(initial_epoch, self.model, with_optimizer=self.optimizer is not None) if self.resume else None
        if state is None:
            return
        if state.optimizer is not None:
            self.optimizer, self._optimizer_variable_ids = state.optimizer, {id(var) for var in self.model.trainable_variables}
        self.center_loss, self.my_hist.history = None, state.history

    def _save_latest_basic_model(self):
        path = self.run.basic_latest_path
        with io_utils.atomic_path(path) as tmp:
            self.basic_model.save(tmp)
        print(">>>> Saved basic model:", path)
