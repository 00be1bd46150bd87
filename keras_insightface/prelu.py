"""PReLU with a shorter forward and a hand-written backward on the TensorFlow backend.

Keras 3's `PReLU` (like tf_keras's) computes `relu(x) - alpha * relu(-x)`: five elementwise ops on the whole map
forward and about a dozen in its gradient. `PReLU` here is the Keras layer (it subclasses it: same arguments,
the same `alpha` weight, the same saved format) whose TensorFlow forward in training is `max(x, 0) + alpha * min(x, 0)`
with a hand-written gradient:

    dx     = g            where x > 0, else alpha * g
    dalpha = sum(g * min(x, 0)) over the batch axis and the shared axes

The forward values are bit-identical to the stock layer's; the gradients equal it to float32 rounding, except
the gradient of x at exactly x == 0, where this layer takes the left slope (`alpha * g`, as PyTorch's PReLU)
and the stock layer 0. Every backbone of this package builds it; `surgery.convert_prelu` swaps a model's
layers either way.

Usage:
    from keras_insightface import prelu
    nn = prelu.PReLU(shared_axes=[1, 2], name="stem_prelu")(nn)
"""
import keras
import tensorflow as tf

_PACKAGE = "keras_insightface"


def _prelu_gradients(inputs, alpha, negative, upstream, reduce_axes):
    """(gradient of inputs, gradient of alpha) of `max(x, 0) + alpha * min(x, 0)` for the upstream gradient."""
    input_gradient = tf.where(inputs > 0, upstream, alpha * upstream)
    alpha_gradient = tf.reduce_sum(negative * upstream, axis=reduce_axes, keepdims=True)
    return input_gradient, tf.reshape(alpha_gradient, tf.shape(alpha))


def fused_prelu(inputs, alpha, reduce_axes):
    """`max(x, 0) + alpha * min(x, 0)` with the fused gradient; `reduce_axes`: the batch axis and the shared ones.

    Usage: outputs = fused_prelu(x, alpha, reduce_axes=[0, 1, 2])
    """

    @tf.custom_gradient
    def forward(inputs, alpha):
        negative = tf.minimum(inputs, 0)
        outputs = tf.maximum(inputs, 0) + alpha * negative
        return outputs, lambda upstream: _prelu_gradients(inputs, alpha, negative, upstream, reduce_axes)

    return forward(inputs, alpha)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PReLU(keras.layers.PReLU):
    """`keras.layers.PReLU` computed by `fused_prelu` in training on the TensorFlow backend (the stock computation elsewhere).

    Same arguments, weight and outputs as the stock layer (see the module docstring for the one gradient
    convention that differs, at x == 0). Outside training (inference, export) it runs the stock computation, so
    exported graphs are the stock layer's (the TFLite converter still finds its PRELU pattern).

    Usage: nn = PReLU(shared_axes=[1, 2], name="stem_prelu")(nn)
    """

    def call(self, inputs, training=None):
        if not training or keras.backend.backend() != "tensorflow":
            return super().call(inputs)
        alpha = tf.cast(self.alpha, inputs.dtype)
        return fused_prelu(inputs, alpha, self._reduce_axes(len(inputs.shape)))

    def _reduce_axes(self, rank):
        """The axes along which one alpha value is shared: the batch axis and `shared_axes`."""
        return [0] + sorted(axis % rank for axis in (self.shared_axes or []))


def prelu_class(fused=True):
    """This module's PReLU for `fused`, else the stock Keras one.  Usage: layer = prelu_class(True)(shared_axes=[1, 2])"""
    return PReLU if fused else keras.layers.PReLU
