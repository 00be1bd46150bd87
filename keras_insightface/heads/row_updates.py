"""Optimizer steps on a subset of the class rows: the one rule table of the Partial FC head (the sampled rows of its
kernel) and of the sharded head (a replica's shard of the class centers).

Keras' optimizers update every row of a variable; these rules update only the rows a head names, with the formula
of the Keras optimizer they stand for, so that the rows they touch end exactly where `optimizer.apply_gradients`
would put them and every other row (and its optimizer state) stays bit-identical.

| optimizer (and subclasses)           | slots (Keras attribute)                                  | rule        |
| ------------------------------------ | -------------------------------------------------------- | ----------- |
| `keras.optimizers.SGD` (SGDW)        | momentum (`momentums`) when momentum > 0                  | `SGDRows`   |
| `keras.optimizers.Adam` (AdamW)      | m (`_momentums`), v (`_velocities`), vhat (`_velocity_hats`, amsgrad) | `AdamRows` |

Weight decay comes first, as Keras applies it: the decoupled `wd` of `optimizers.SGDW / AdamW` (absolute), else
Keras' `weight_decay * lr`. Each rule runs two ways: `step` on gathered rows (Partial FC: `tf.gather`, the formula,
`scatter_update`), and `step_in_place` on a whole shard variable with TensorFlow's fused kernels, which allocate no
shard-sized temporaries (the sharded head).

Usage:
    rule = row_updates.row_rule(optimizer, user="Partial FC", what="sampled-row")
    rows, slot_rows = rule.step(optimizer, rows, gradient, slot_rows, learning_rate)
"""
import keras
import tensorflow as tf
from keras import ops

UNSUPPORTED_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm", "gradient_accumulation_steps", "use_ema")


def decay_fraction(optimizer, dtype, variable=None):
    """The fraction of a row weight decay removes at this step: the decoupled `wd` (SGDW / AdamW of optimizers.py),
    else Keras' `weight_decay * lr`; 0 when there is none or `variable` is excluded from it."""
    if variable is not None and not optimizer._use_weight_decay(variable):
        return 0.0
    decoupled = getattr(optimizer, "decoupled_weight_decay", None)
    if decoupled is not None:
        return ops.cast(decoupled, dtype)
    if not optimizer.weight_decay:
        return 0.0
    return ops.cast(optimizer.weight_decay, dtype) * ops.cast(optimizer.learning_rate, dtype)


class RowRule:
    """How an optimizer family updates rows: its slots, and one step on rows or in place on a whole variable."""

    slots = {}  # slot name -> the optimizer's list attribute holding that slot for Keras variables

    def check(self, optimizer, user, in_place):
        """Raise ValueError for options of `optimizer` this rule does not follow."""

    def slot_names(self, optimizer):
        """The slots kept for `optimizer`."""
        return tuple(self.slots)

    def optimizer_slots(self, optimizer, variable):
        """{slot name: the optimizer's own slot variable of `variable`} (the optimizer is built for it)."""
        position = optimizer._get_variable_index(variable)
        return {name: getattr(optimizer, self.slots[name])[position] for name in self.slot_names(optimizer)}

    def step(self, optimizer, rows, gradient, slot_rows, learning_rate):
        """(new rows, new slot rows) after one step on decayed `rows` with `gradient` (both gathered)."""
        raise NotImplementedError

    def step_in_place(self, optimizer, variable, slots, gradient, learning_rate):
        """One step on the whole decayed `variable` and its `slots` (tf.Variables), in place."""
        raise NotImplementedError


class SGDRows(RowRule):
    """keras.optimizers.SGD: `m = momentum * m - lr * g`; `w += m` (nesterov: `w += momentum * m - lr * g`);
    without momentum `w -= lr * g`."""

    slots = {"momentum": "momentums"}

    def slot_names(self, optimizer):
        return tuple(self.slots) if optimizer.momentum else ()

    def step(self, optimizer, rows, gradient, slot_rows, learning_rate):
        if optimizer.momentum == 0:
            return rows - gradient * learning_rate, {}
        momentum = ops.cast(optimizer.momentum, rows.dtype)
        velocity = slot_rows["momentum"] * momentum - gradient * learning_rate
        if optimizer.nesterov:
            return rows + velocity * momentum - gradient * learning_rate, {"momentum": velocity}
        return rows + velocity, {"momentum": velocity}

    def step_in_place(self, optimizer, variable, slots, gradient, learning_rate):
        if not optimizer.momentum:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=learning_rate, delta=gradient)
            return
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=slots["momentum"].handle, lr=learning_rate, grad=gradient,
            momentum=tf.cast(optimizer.momentum, variable.dtype), use_nesterov=bool(optimizer.nesterov),
        )


class AdamRows(RowRule):
    """keras.optimizers.Adam: `m += (g - m) * (1 - b1)`, `v += (g^2 - v) * (1 - b2)` (amsgrad: `vhat = max(vhat, v)`
    is used for v), then `w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)`."""

    slots = {"m": "_momentums", "v": "_velocities", "vhat": "_velocity_hats"}

    def check(self, optimizer, user, in_place):
        if in_place and optimizer.amsgrad:
            raise ValueError("{}: Adam(amsgrad=True) is not supported on the sharded head".format(user))

    def slot_names(self, optimizer):
        return ("m", "v", "vhat") if optimizer.amsgrad else ("m", "v")

    def step(self, optimizer, rows, gradient, slot_rows, learning_rate):
        step = ops.cast(optimizer.iterations + 1, rows.dtype)
        beta_1, beta_2 = ops.cast(optimizer.beta_1, rows.dtype), ops.cast(optimizer.beta_2, rows.dtype)
        alpha = learning_rate * ops.sqrt(1 - ops.power(beta_2, step)) / (1 - ops.power(beta_1, step))
        first = slot_rows["m"] + (gradient - slot_rows["m"]) * (1 - beta_1)
        second = slot_rows["v"] + (ops.square(gradient) - slot_rows["v"]) * (1 - beta_2)
        new_slots = {"m": first, "v": second}
        if optimizer.amsgrad:
            second = new_slots["vhat"] = ops.maximum(slot_rows["vhat"], second)
        return rows - first * alpha / (ops.sqrt(second) + optimizer.epsilon), new_slots

    def step_in_place(self, optimizer, variable, slots, gradient, learning_rate):
        step = tf.cast(optimizer.iterations + 1, variable.dtype)
        beta_1, beta_2 = tf.cast(optimizer.beta_1, variable.dtype), tf.cast(optimizer.beta_2, variable.dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=slots["m"].handle, v=slots["v"].handle, beta1_power=beta_1 ** step, beta2_power=beta_2 ** step,
            lr=learning_rate, beta1=beta_1, beta2=beta_2, epsilon=tf.cast(optimizer.epsilon, variable.dtype), grad=gradient,
        )


# optimizer class -> its rule; the first class in the optimizer's MRO found here applies (SGDW, AdamW included)
ROW_RULES = {keras.optimizers.SGD: SGDRows(), keras.optimizers.Adam: AdamRows()}


def row_rule(optimizer, user, what, in_place=False):
    """The `RowRule` of `optimizer`; ValueError naming `user` (the head) for optimizers or options it cannot follow.

    what: the rows updated ("sampled-row", "shard"), for the message. in_place: the rule runs `step_in_place`.
    Usage: rule = row_rule(keras.optimizers.SGD(0.1, momentum=0.9), "ShardedHeadModel", "shard", in_place=True)
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError("{}: LossScaleOptimizer (mixed_float16) is not supported with {} updates (loss scaling makes the "
                         "gradient dense); use mixed_bfloat16 or float32".format(user, what))
    used = ["{}={!r}".format(option, getattr(optimizer, option)) for option in UNSUPPORTED_OPTIONS if getattr(optimizer, option, None)]
    if used:
        raise ValueError("{}: the optimizer options {} are not supported with {} updates".format(user, used, what))
    for klass in type(optimizer).__mro__:
        if klass in ROW_RULES:
            ROW_RULES[klass].check(optimizer, user, in_place)
            return ROW_RULES[klass]
    raise ValueError("{}: optimizer {} has no {} update rule; supported: {} and their subclasses (SGDW, AdamW)".format(
        user, type(optimizer).__name__, what, ", ".join(klass.__name__ for klass in ROW_RULES)))


def apply_to_rows(optimizer, rule, variable, gradient):
    """Decay, then update, the rows of `variable` named by the `tf.IndexedSlices` `gradient`, and their slots in the
    optimizer; no other row is written.  Usage: apply_to_rows(optimizer, rule, head.w, gradient)"""
    indices, position = tf.unique(gradient.indices)
    values = ops.cast(tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(indices)[0]), variable.dtype)
    learning_rate = ops.cast(optimizer.learning_rate, variable.dtype)
    rows = tf.gather(variable.value, indices)
    rows = rows - rows * decay_fraction(optimizer, variable.dtype, variable)
    slots = rule.optimizer_slots(optimizer, variable)
    slot_rows = {name: tf.gather(slot.value, indices) for name, slot in slots.items()}
    rows, slot_rows = rule.step(optimizer, rows, values, slot_rows, learning_rate)
    for name, new_rows in slot_rows.items():
        slots[name].value.scatter_update(tf.IndexedSlices(new_rows, indices))
    variable.value.scatter_update(tf.IndexedSlices(rows, indices))


def apply_in_place(optimizer, rule, variable, slots, gradient):
    """One step of `optimizer` on the whole `variable` with its `slots`, as `apply_gradients` would take it at its
    current `iterations`: weight decay, then the update, at the current learning rate.
    Usage: apply_in_place(optimizer, rule, shard, {"momentum": momentum}, gradient)"""
    learning_rate = tf.cast(optimizer.learning_rate, variable.dtype)
    fraction = decay_fraction(optimizer, variable.dtype)
    if not isinstance(fraction, float) or fraction:
        variable.assign_sub(variable * fraction)
    rule.step_in_place(optimizer, variable, slots, gradient, learning_rate)
