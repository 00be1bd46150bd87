"""The training schedule: a list of plans (dicts), checked before anything trains, and what a plan adds to the main loss.

| key              | meaning                                                                 | default |
| ---------------- | ----------------------------------------------------------------------- | ------- |
| `loss`           | the main loss (required); its traits give the plan type                 |         |
| `epoch`          | epochs to train (required, >= 1)                                        |         |
| `optimizer`      | a keras optimizer or a name; None keeps the last one                    | None    |
| `bottleneckOnly` | train the head only; the epoch counter does not advance                 | False   |
| `centerloss`     | weight of a center loss on an extra embedding output                    | 0       |
| `triplet`        | weight of a batch-hard triplet loss on an extra embedding output        | 0       |
| `alpha`          | that triplet loss's margin                                              | 0.35    |
| `lossTopK`       | sub-centers per class of the cosine head                                | 1       |
| `distill`        | weight of the distillation loss on teacher embeddings                   | 7 on distillation data |
| `type`           | "softmax" / "arcface" / "triplet" / "center", else the loss's `loss_type` | None  |

Usage:
    schedule = plans.check_schedule([{"loss": losses.ArcfaceLoss(), "epoch": 2}], initial_epoch=0)
"""
import keras

from . import losses, models

SCHEDULE_KEYS = ("loss", "epoch", "optimizer", "bottleneckOnly", "centerloss", "triplet", "alpha", "lossTopK", "distill", "type")
EMBEDDING_TYPES = ("center", "triplet")  # plan types training the embedding itself, without a class head
EMBEDDING_OUTPUT_NAMES = {"centerloss": "center_embedding", "triplet": "triplet_embedding"}
DEFAULT_DISTILL_WEIGHT = 7


def check_plan(plan):
    """Refuse a plan that is not a dict, has unknown keys or misses `loss` / `epoch`.  Usage: check_plan({"loss": l, "epoch": 1})"""
    if not isinstance(plan, dict):
        raise ValueError("Each training plan must be a dict, got {!r}".format(plan))
    unknown = set(plan) - set(SCHEDULE_KEYS)
    if unknown:
        raise ValueError("Unknown training plan keys {}; known keys: {}".format(sorted(unknown), SCHEDULE_KEYS))
    for key in ("loss", "epoch"):
        if key not in plan:
            raise ValueError("Training plan {} is missing the required key '{}'".format(plan, key))


def check_schedule(train_schedule, initial_epoch):
    """The schedule as a list of checked plans (one dict is a schedule of one); refuses an empty one or a bad epoch."""
    train_schedule = [train_schedule] if isinstance(train_schedule, dict) else list(train_schedule)
    if not train_schedule:
        raise ValueError("tt.train: the training schedule is empty, there is nothing to train")
    for plan in train_schedule:
        check_plan(plan)
    if not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError("tt.train: initial_epoch must be an integer >= 0 (the epochs already trained), got {!r}".format(initial_epoch))
    return train_schedule


def check_loss_and_epoch(loss, epoch):
    if loss is None:
        raise ValueError("A training plan needs a 'loss'")
    if not isinstance(epoch, int) or epoch < 1:
        raise ValueError("A training plan needs 'epoch' as a positive integer, got {!r}".format(epoch))


def check_mixup_plan(mixup_alpha, loss, loss_type, centerloss, triplet):
    """Under mixup, a plan's loss must read soft label rows, and no center / triplet loss may take them."""
    if not mixup_alpha:
        return
    if loss_type in EMBEDDING_TYPES or centerloss or triplet or not losses.takes_soft_labels(loss):
        raise ValueError("mixup_alpha={} trains on mixed label rows: a plan's loss must read them (losses.takes_soft_labels: the "
                         "margin losses but CurricularFace, scale_softmax, MarginSoftmax, Keras categorical losses) and take no "
                         "'centerloss' / 'triplet'; got loss {} ({}), centerloss={}, triplet={}".format(
                             mixup_alpha, getattr(loss, "name", loss), loss_type, centerloss, triplet))


def check_train_arguments(batch_size, output_weight_decay, lr_base, steps_per_execution, jit_compile, sam_rho, vpl_start_iters, vpl_allowed_delta):
    """Refuse `Train` arguments of the wrong type or range, naming the argument."""
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
    if not isinstance(sam_rho, (int, float)) or sam_rho < 0:
        raise ValueError("sam_rho is the SAM neighbourhood radius, >= 0 (0: off), got {!r}".format(sam_rho))
    if not isinstance(vpl_start_iters, int):
        raise ValueError("vpl_start_iters must be an integer (<= 0: off, < 50: epochs, else steps), got {!r}".format(vpl_start_iters))
    if not isinstance(vpl_allowed_delta, int) or vpl_allowed_delta < 0:
        raise ValueError("vpl_allowed_delta must be an integer >= 0 (steps), got {!r}".format(vpl_allowed_delta))


def output_regularizer(output_weight_decay, basic_model):
    """The output head's kernel regularizer: 0 none; (0, 1) that L2 value divided by 2; >= 1 the basic model's own L2
    value times it (None when the basic model has none).  Usage: output_regularizer(1, basic_model)"""
    if output_weight_decay == 0:
        return None
    if output_weight_decay < 1:
        return keras.regularizers.L2(output_weight_decay / 2)
    basic_l2 = models.get_l2_regularizer_value(basic_model)
    return keras.regularizers.L2(basic_l2 * output_weight_decay) if basic_l2 > 0 else None


def extra_outputs(loss_type, with_center, with_triplet, with_distill):
    """The extra outputs of a plan, in model order: "centerloss" / "triplet" embeddings (unless the main loss already
    is that), "distill"."""
    wanted = {"centerloss": with_center and loss_type != "center", "triplet": with_triplet and loss_type != "triplet", "distill": with_distill}
    return [name for name, on in wanted.items() if on]


def extra_losses(loss_type, centerloss, triplet, alpha, distill, center_loss):
    """[(loss, weight)] of the extra outputs, in model order; `center_loss()` gives the run's stateful center loss."""
    extra = []
    if centerloss and loss_type != "center":
        extra.append((center_loss(), float(centerloss)))
    if triplet and loss_type != "triplet":
        extra.append((losses.BatchHardTripletLoss(alpha=alpha), float(triplet)))
    if distill:
        extra.append((losses.distiller_loss_cosine, float(distill)))
    return extra


def distill_output(embedding, teacher_emb_shape, map_layer=None):
    """(the `distill` output, its map layer): the embedding itself when it has the teacher's width, else a bias-free
    Dense to that width (`map_layer` reused when it has it).  Usage: output, layer = distill_output(embedding, 512)"""
    if embedding.shape[-1] == teacher_emb_shape:
        return keras.layers.Identity(name="distill", dtype="float32")(embedding), map_layer
    if map_layer is None or map_layer.units != teacher_emb_shape:
        map_layer = keras.layers.Dense(teacher_emb_shape, use_bias=False, name="distill_emb_map_layer", dtype="float32")
    return map_layer(embedding), map_layer
