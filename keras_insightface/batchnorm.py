"""BatchNormalization on TensorFlow's fused kernel, and the swap of a model's BatchNorm layers.

Keras 3's `BatchNormalization` computes the batch moments and the normalization with separate ops;
tf_keras (and so the original Keras_insightface) called TensorFlow's fused kernel (`FusedBatchNormV3`),
one op forward and one backward. On a 2-core CPU that is most of the gap between a Keras 3 training step
and a tf_keras one (docs/benchmarks.md). `BatchNormalization` here is the Keras 3 layer with the same
arguments, weights (gamma, beta, moving_mean, moving_variance) and saved format, running the fused kernel
where it applies and the stock computation elsewhere. Every backbone and head of this package uses it;
`buildin_models(..., fused_batchnorm=False)` or `convert_batchnorm(model, fused=False)` opt out.

Usage:
    from keras_insightface import batchnorm
    nn = batchnorm.BatchNormalization(momentum=0.9, epsilon=2e-5, name="stem_bn")(nn)
    backbone = batchnorm.convert_batchnorm(keras.applications.MobileNet(include_top=False, weights=None))
"""
import keras
import tensorflow as tf

from . import surgery

_PACKAGE = "keras_insightface"
_FUSED_DTYPES = ("float16", "bfloat16", "float32")  # input types FusedBatchNormV3 takes, with float32 params


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel on 4D NHWC inputs.

    The fused path runs on the TensorFlow backend for 4D inputs normalized over the last axis, of type
    float32, float16 or bfloat16 (half inputs keep float32 gamma / beta / moving statistics, as the stock
    layer does), in training and inference, without a mask, `synchronized` or `renorm`. Anything else
    runs the stock Keras computation; `synchronized` with the global batch's two-pass moments
    (`global_moments`). Outputs match the stock layer to float32 rounding.

    Moving statistics follow Keras: `moving = moving * momentum + batch * (1 - momentum)`, with the
    biased batch variance (sum of squares / n) as Keras 3 uses. The fused kernel returns the unbiased one
    (/ (n - 1)) that tf_keras accumulates, so it is scaled back by (n - 1) / n: a model trains to the same
    moving_variance here as with the stock Keras 3 layer (see docs/batchnorm.md).

    Usage: nn = BatchNormalization(momentum=0.9, epsilon=2e-5, name="stem_bn")(nn)
    """

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            outputs = self._fused_training(inputs)
        else:
            outputs = self._fused_inference(inputs)
        return keras.ops.cast(outputs, self.compute_dtype)

    def _moments(self, inputs, mask):
        """Batch mean and biased variance; `synchronized` ones over the global batch in two passes (`global_moments`)."""
        if self.synchronized and mask is None and keras.backend.backend() == "tensorflow":
            return global_moments(inputs, self._reduction_axes)
        return super()._moments(inputs, mask)

    def _can_fuse(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis % 4 == 3
            and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
        )

    def _scale_and_offset(self, inputs):
        """gamma and beta in float32, ones / zeros where the layer has no scale / center."""
        channels = tf.shape(inputs)[-1:]
        gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones(channels, "float32")
        beta = tf.cast(self.beta, "float32") if self.center else tf.zeros(channels, "float32")
        return gamma, beta

    def _fused_training(self, inputs):
        """Normalize by the batch moments and move the moving averages toward them."""
        gamma, beta = self._scale_and_offset(inputs)
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        variance = unbiased_variance * _biased_variance_factor(inputs)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1.0 - momentum))
        self.moving_variance.assign(
            self.moving_variance * momentum + tf.cast(variance, self.moving_variance.dtype) * (1.0 - momentum)
        )
        return outputs

    def _fused_inference(self, inputs):
        """Normalize by the moving statistics."""
        gamma, beta = self._scale_and_offset(inputs)
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            gamma,
            beta,
            mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=False,
        )
        return outputs


def global_moments(inputs, axes):
    """Mean and biased variance of `inputs` over `axes` and over every replica of the current tf.distribute strategy,
    as one device computes them from the global batch: an all-reduce of the sums and counts gives the mean, then one
    of the squared deviations from it gives the variance. (Keras' `synchronized=True` takes E[x^2] - E[x]^2 in one
    all-reduce, which loses the variance's digits where |mean| >> std.) Outside a replica context: the local moments.

    Usage: mean, variance = global_moments(inputs, axes=[0, 1, 2])
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.nn.moments(inputs, axes)
    sums = tf.reduce_sum(inputs, axis=axes)
    count = tf.cast(tf.size(inputs) // tf.size(sums), sums.dtype)
    totals = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([sums, count[None]], axis=0))
    mean = totals[:-1] / totals[-1]
    centered = inputs - tf.stop_gradient(tf.reshape(mean, _kept_shape(inputs, axes)))
    squares = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(centered), axis=axes))
    return mean, squares / totals[-1]


def _kept_shape(inputs, axes):
    """The shape of a per-channel vector broadcast against `inputs` reduced over `axes` (1 on those axes)."""
    return [1 if axis in axes else -1 for axis in range(len(inputs.shape))]


def _biased_variance_factor(inputs):
    """(n - 1) / n for the n values per channel of a 4D NHWC batch (1 when n == 1, where both variances are 0)."""
    shape = tf.shape(inputs)
    count = tf.cast(shape[0] * shape[1] * shape[2], "float32")
    return tf.maximum(count - 1.0, 1.0) / count


def batchnorm_class(fused=True):
    """This module's BatchNormalization for `fused`, else the stock Keras one.  Usage: bn = batchnorm_class(True)(name="bn")"""
    return BatchNormalization if fused else keras.layers.BatchNormalization


def _swappable(layer, target):
    """A stock or fused BatchNormalization that is not already `target` (other subclasses are left alone)."""
    return type(layer) in (BatchNormalization, keras.layers.BatchNormalization) and type(layer) is not target


def convert_batchnorm(model, fused=True):
    """`model` with each stock Keras BatchNormalization swapped for the fused one (or back, `fused=False`).

    Layer names, configs and weights are kept, so the result computes what `model` did and loads the same
    weight files. A model with nothing to swap is returned as is; otherwise it is a copy.

    Usage: backbone = convert_batchnorm(keras.applications.MobileNet(include_top=False, weights=None))
    """
    target = batchnorm_class(fused)
    if not any(_swappable(layer, target) for layer in surgery.iter_layers(model)):
        return model

    def convert_layer(layer):
        layer_class = target if _swappable(layer, target) else layer.__class__
        return layer_class.from_config(layer.get_config())

    return surgery.rebuild(model, convert_layer)
