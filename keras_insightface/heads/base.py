"""The output head of a training model: the layer after the embedding, and everything training with it needs.

`Train` asks the head of each plan, and never tests head types:

| question                                   | answer                                                   |
| ------------------------------------------ | -------------------------------------------------------- |
| which kind does this plan get?             | `registry.plan_head` (each kind's `applies`, by `priority`) |
| can the current head serve it?             | equal `signature()`s: the head, its layer and weights, are reused |
| carry the class weights of the last head   | `carry_from(previous, embedding_shape)`                  |
| build the training model                   | `training_model(basic_model, extra_outputs, loss, sam_rho, name)` |
| does it take the labels as an input?       | `takes_label_input`                                      |
| the loss and metrics its output needs      | `wrap_loss(loss)`, `metrics(loss)`                       |
| what it needs from the optimizer           | `prepare_optimizer(optimizer)`                           |
| which options it refuses                   | `refuses` (option -> why), checked by `registry.check_refusals` |
| what a loaded model's head is              | `from_layer(layer)` (the kind that recognizes the layer) |

A kind is one class in one file of heads/, registered with `registry.register`.

Usage:
    head = registry.plan_head(HeadRequest("arcface", classes=85742), HeadOptions(), current=None, embedding_shape=(None, 512))
    model = head.training_model(basic_model, [], loss, sam_rho=0, name="train")
"""
import dataclasses

import keras

from .. import losses
from ..sam import SAMModel


@dataclasses.dataclass(frozen=True)
class HeadRequest:
    """What a plan asks of its head: the loss type, classes, sub-centers, feature norm, extra outputs and its loss.

    Usage: HeadRequest("arcface", 85742, loss_top_k=3, extra_outputs=("triplet",), loss=losses.ArcfaceLoss())
    """

    loss_type: str
    classes: int
    loss_top_k: int = 1
    append_norm: bool = False
    extra_outputs: tuple = ()  # of "centerloss", "triplet", "distill"
    loss: object = None
    steps_per_epoch: int = 1


@dataclasses.dataclass(frozen=True)
class HeadOptions:
    """The run-wide `Train` options that choose or constrain the head.  Usage: HeadOptions(partial_fc_sample_rate=0.1)"""

    partial_fc_sample_rate: float = None
    vpl_start_iters: int = -1
    vpl_allowed_delta: int = 200
    shard_centers: bool = False
    num_replicas: int = 1
    seed: int = None
    kernel_regularizer: object = None
    mixup_alpha: float = 0.0
    sam_rho: float = 0.0
    jit_compile: object = "auto"


class OutputHead:
    """One kind of output head (see the module docstring). Subclasses set `kind`, `priority`, `refuses`, and define
    `applies`, `new_layer` and `from_layer`; the rest has defaults for a head that is one layer on the embedding.

    Usage: head = CosineHead(request, options); head.training_model(basic_model, [], loss, 0, "train")
    """

    kind = None
    priority = 100  # lower is asked first by registry.plan_head
    enabled_by = None  # the Train option that turns this kind on, named in refusals
    refuses = {}  # option -> why this kind does not combine with it
    scores_classes = True  # False: the model's first output is the embedding itself (center / triplet plans)
    takes_label_input = False  # True: the model's inputs are (images, labels)
    own_train_step = False  # True: the training model is sam.SAMModel, whose step ends with `after_train_step` hooks

    def __init__(self, request, options, layer=None):
        self.request, self.options = request, options
        self._layer = layer

    @classmethod
    def applies(cls, request, options):
        """True when a plan asking `request` under `options` gets this kind."""
        raise NotImplementedError

    @classmethod
    def from_layer(cls, layer):
        """The head of a loaded model whose output layer is `layer`, or None when `layer` is not of this kind."""
        return None

    def new_layer(self):
        """A new, unbuilt head layer for `self.request` and `self.options`."""
        raise NotImplementedError

    def signature(self):
        """What makes two heads interchangeable: equal signatures reuse the current head and its weights."""
        return (self.kind,)

    @property
    def layer(self):
        """The head layer (created on first use)."""
        if self._layer is None:
            self._layer = self.new_layer()
        return self._layer

    def describe(self):
        """The `>>>> Build output layer: ...` line of a new head."""
        return "type={}, classes={}".format(self.kind, self.request.classes)

    # ------------------------------------------------------------ class centers
    def class_centers(self):
        """The class centers in NormDense layout `(emb, classes * K)`, or None for a head without them."""
        return None

    def set_class_centers(self, centers):
        """Take `centers` (NormDense layout) as this head's class centers."""

    def carry_from(self, previous, embedding_shape):
        """Take the class centers of `previous` when their shape is this head's (e.g. NormDense <-> NormDenseVPL, or
        append_norm changed), as the original reloads the previous head's weight."""
        centers = previous.class_centers() if previous is not None else None
        if centers is None:
            return
        mine = self._built(embedding_shape).class_centers()
        if mine is not None and tuple(centers.shape) == tuple(mine.shape):
            print(">>>> Reload previous NormDense weight")
            self.set_class_centers(centers)

    def _built(self, embedding_shape):
        if not self.layer.built:
            self.layer.build(embedding_shape)
        return self

    # ------------------------------------------------------------ the training model
    def attach(self, basic_model):
        """(model inputs, first output): this head on the basic model's embedding."""
        return basic_model.inputs[0], self.layer(basic_model.outputs[0])

    def training_model(self, basic_model, extra_outputs, loss, sam_rho, name):
        """The model a plan trains: basic model + this head, then `extra_outputs` (tensors on the embedding).

        A loss reading `concat([embedding, cosines])` (`reads_embedding_and_cosines`: AcrTripLoss) gets that as the
        first output. The model is `sam.SAMModel` for `sam_rho > 0` or a head with its own step, else keras.Model.
        """
        inputs, output = self.attach(basic_model)
        if losses.trait(loss, "reads_embedding_and_cosines"):
            output = _embedding_and_cosines(basic_model.outputs[0], output, loss)
        outputs = [output, *extra_outputs]
        outputs = outputs if len(outputs) > 1 else outputs[0]
        if sam_rho > 0 or self.own_train_step:
            return SAMModel(inputs, outputs, rho=sam_rho, name=name)
        return keras.Model(inputs, outputs, name=name)

    def wrap_loss(self, loss):
        """The plan's loss as this head's output needs it: integer labels, or one-hot rows for losses that want them."""
        return loss if losses.takes_integer_labels(loss) else losses.OneHotLabels(loss, self.request.classes)

    def metrics(self, loss):
        """The metrics of the first output."""
        if losses.trait(loss, "reads_embedding_and_cosines"):
            return [keras.metrics.MeanMetricWrapper(losses.accuracy_after_embedding, name="accuracy", emb_shape=loss.emb_shape)]
        return ["accuracy"]  # Keras picks the sparse accuracy for integer labels

    def prepare_optimizer(self, optimizer):
        """The optimizer as this head needs it (changed in place where needed)."""
        return optimizer

    def options_on_resume(self, options):
        """The run's options once this head was loaded from a checkpoint (a head may keep what it was built with)."""
        return options


def _embedding_and_cosines(embedding, cosines, loss):
    """`concat([embedding, cosines])`, the one output of a loss reading both (AcrTripLoss), its emb_shape checked."""
    if loss.emb_shape != embedding.shape[-1]:
        raise ValueError("{}(emb_shape={}): the basic model's embedding has {} features; pass emb_shape={}".format(
            type(loss).__name__, loss.emb_shape, embedding.shape[-1], embedding.shape[-1]))
    return keras.layers.Concatenate(name="embedding_and_cosines", dtype="float32")([embedding, cosines])
