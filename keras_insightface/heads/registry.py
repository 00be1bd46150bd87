"""The output-head kinds, which one a plan gets, which options each refuses, and the head of a loaded model.

Each kind (one `OutputHead` subclass in one file of heads/) registers itself with `@register`; `plan_head` asks the
kinds in `priority` order and takes the first whose `applies(request, options)` holds. Before that, the options and
plan keys in use are checked against the kind's `refuses` table (`check_refusals`); `check_run_options` does the same
for the run-wide options when `Train` is built, so a refused combination fails before any training.

Usage:
    head = registry.plan_head(request, options, current=tt_head, embedding_shape=(None, 512))
    registry.refusal_table()   # {enabling option: {refused option: why}}
"""
from .. import losses

HEAD_KINDS = []

# How an option or plan key in use is named in a refusal; the run-wide ones are Train arguments.
RUN_OPTIONS = {
    "mixup_alpha": lambda options: options.mixup_alpha > 0,
    "sam_rho": lambda options: options.sam_rho > 0,
    "vpl_start_iters": lambda options: options.vpl_start_iters > 0,
    "jit_compile": lambda options: options.jit_compile is True,
    "partial_fc_sample_rate": lambda options: bool(options.partial_fc_sample_rate),
    "shard_centers": lambda options: options.shard_centers and options.num_replicas > 1,
}
PLAN_KEYS = {
    "a softmax loss": lambda request: request.loss_type == "softmax",
    "lossTopK": lambda request: request.loss_top_k > 1,
    "a feature-norm loss": lambda request: request.append_norm,
    "centerloss": lambda request: "centerloss" in request.extra_outputs,
    "triplet": lambda request: "triplet" in request.extra_outputs,
    "distill": lambda request: "distill" in request.extra_outputs,
    "AcrTripLoss": lambda request: _reads_embedding_and_cosines(request.loss),
}


def _reads_embedding_and_cosines(loss):
    return loss is not None and losses.trait(loss, "reads_embedding_and_cosines")


def register(head_class):
    """Class decorator: add an `OutputHead` kind, kept in `priority` order.  Usage: @registry.register"""
    HEAD_KINDS.append(head_class)
    HEAD_KINDS.sort(key=lambda kind: kind.priority)
    return head_class


def _run_options_in_use(options):
    return [name for name, in_use in RUN_OPTIONS.items() if in_use(options)]


def _refuse(kind, in_use):
    for name in in_use:
        if name in kind.refuses:
            raise ValueError("{} does not combine with {} ({}); use one of them".format(kind.enabled_by, name, kind.refuses[name]))


def check_run_options(options):
    """Refuse run-wide options that a kind they turn on cannot take (e.g. Partial FC with mixup_alpha).

    Usage: registry.check_run_options(HeadOptions(partial_fc_sample_rate=0.1, mixup_alpha=0.2))  # ValueError
    """
    in_use = _run_options_in_use(options)
    for kind in HEAD_KINDS:
        if kind.enabled_by in in_use:
            _refuse(kind, in_use)


def check_refusals(kind, request, options):
    """Refuse the options and plan keys in use that `kind` does not combine with (ValueError naming both)."""
    _refuse(kind, _run_options_in_use(options) + [name for name, in_use in PLAN_KEYS.items() if in_use(request)])


def head_kind(request, options):
    """The first registered kind, in priority order, that a plan asking `request` under `options` gets."""
    for kind in HEAD_KINDS:
        if kind.applies(request, options):
            check_refusals(kind, request, options)
            return kind
    raise ValueError("No output head for loss type {!r}; registered kinds: {}".format(request.loss_type, [kind.kind for kind in HEAD_KINDS]))


def plan_head(request, options, current, embedding_shape):
    """The head of a plan: `current` when it has the same signature, else a new head carrying current's centers.

    Usage: head = plan_head(HeadRequest("arcface", 85742), HeadOptions(), current=None, embedding_shape=(None, 512))
    """
    head = head_kind(request, options)(request, options)
    if current is not None and current.signature() == head.signature():
        return current
    if head.scores_classes:
        print(">>>> Build output layer: {}".format(head.describe()))
        head.carry_from(current, embedding_shape)
    return head


def head_of_layer(layer):
    """The head of a loaded model's layer, or None when no kind recognizes it.  Usage: head_of_layer(model.layers[-1])"""
    for kind in HEAD_KINDS:
        head = kind.from_layer(layer)
        if head is not None:
            return head
    return None


def head_of_model(model):
    """The output head of a loaded full model (its last layer some kind recognizes), or None."""
    heads = [head for head in map(head_of_layer, model.layers) if head is not None]
    return heads[-1] if heads else None


def refusal_table():
    """{the option turning a kind on: {refused option or plan key: why}}, from every registered kind."""
    return {kind.enabled_by: dict(kind.refuses) for kind in HEAD_KINDS if kind.refuses}
