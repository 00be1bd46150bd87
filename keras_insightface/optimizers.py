"""SGDW and AdamW: SGD / Adam with decoupled, absolute weight decay.

Each step first shrinks every decayed variable by `var <- var - wd * var`, then applies the
plain SGD (momentum) or Adam update computed from the gradient. Unlike Keras' own
`weight_decay` argument, `wd` is not multiplied by the learning rate: it is an absolute value,
as in "Decoupled Weight Decay Regularization" (Loshchilov & Hutter, 2019) and the SGDW / AdamW
of tensorflow-addons. `wd` lives in a non-trainable variable (`decoupled_weight_decay`) so that
`myCallbacks.OptimizerWeightDecay` can make it follow the learning-rate schedule during `fit`.

Usage:
    optimizer = optimizers.SGDW(learning_rate=0.1, weight_decay=5e-4, momentum=0.9)
    optimizer = optimizers.AdamW(learning_rate=0.001, weight_decay=5e-5)
"""
import keras
import tensorflow as tf


class DecoupledWeightDecayMixin:
    """Adds the absolute decoupled weight decay to a Keras optimizer.

    `weight_decay` keeps the base value given by the user (it is what `get_config` saves);
    `decoupled_weight_decay` is the value applied at the next step.
    """

    def _init_decoupled_weight_decay(self, weight_decay):
        weight_decay = 0.0 if weight_decay is None else float(weight_decay)
        if weight_decay < 0:
            raise ValueError("{}: weight_decay must be >= 0, got {}".format(type(self).__name__, weight_decay))
        with keras.name_scope(self.name, caller=self):
            self._decoupled_weight_decay = keras.Variable(
                weight_decay,
                name="decoupled_weight_decay",
                dtype=keras.backend.floatx(),
                trainable=False,
                aggregation="only_first_replica",
            )
        self.weight_decay = weight_decay

    @property
    def decoupled_weight_decay(self):
        """The weight decay applied at the next step, a non-trainable variable."""
        return self._decoupled_weight_decay

    @decoupled_weight_decay.setter
    def decoupled_weight_decay(self, value):
        self._decoupled_weight_decay.assign(value)

    def _apply_weight_decay(self, variables):
        """`var <- var - wd * var` for every variable not excluded, replica-aware under tf.distribute."""
        decay = self._decoupled_weight_decay

        def decay_variable(variable):
            if self._use_weight_decay(variable):
                variable.assign_sub(variable * tf.cast(decay, variable.dtype))

        def decay_all(distribution, variables):
            for variable in variables:
                variable = variable.value if isinstance(variable, keras.Variable) else variable
                distribution.extended.update(variable, decay_variable, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(decay_all, self._distribution_strategy, variables)


@keras.saving.register_keras_serializable(package="keras_insightface")
class SGDW(DecoupledWeightDecayMixin, keras.optimizers.SGD):
    """SGD with momentum and absolute decoupled weight decay.

    Usage: model.compile(optimizer=SGDW(learning_rate=0.1, weight_decay=5e-4, momentum=0.9), loss=...)
    """

    def __init__(self, learning_rate=0.1, weight_decay=5e-4, momentum=0.9, nesterov=False, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self._init_decoupled_weight_decay(weight_decay)


@keras.saving.register_keras_serializable(package="keras_insightface")
class AdamW(DecoupledWeightDecayMixin, keras.optimizers.Adam):
    """Adam with absolute decoupled weight decay (the AdamW of the paper, wd not scaled by lr).

    Usage: model.compile(optimizer=AdamW(learning_rate=0.001, weight_decay=5e-5), loss=...)
    """

    def __init__(self, learning_rate=0.001, weight_decay=5e-5, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad, **kwargs
        )
        self._init_decoupled_weight_decay(weight_decay)
