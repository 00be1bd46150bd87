"""Grouped Conv2D that runs as one dense convolution with a block-diagonal kernel on TensorFlow without a GPU.

TensorFlow's CPU kernels for a grouped `Conv2D` (`groups > 1`) are very slow in training: forward + backward of
mbf's `Conv2D(128, 3, groups=64)` on a batch of 32 at 56x56 took about 90 s on a 2-core CPU, against 0.2 s for the
dense `Conv2D(128, 3)` with 64 times the multiply-adds (docs/speed.md). `Conv2D` here is the Keras layer (same
arguments, the same `kernel` of shape (kh, kw, in / groups, out), the same saved format) that, on the TensorFlow
backend with no GPU visible, convolves with the kernel spread into a block-diagonal (kh, kw, in, out) one: the
off-block weights are exact zeros, so outputs and gradients equal the grouped convolution's to float32 rounding.

Usage:
    from keras_insightface import grouped_conv
    nn = grouped_conv.Conv2D(128, 3, padding="same", groups=64, use_bias=False, name="stem_grouped_conv")(nn)
"""
import keras
import numpy as np
import tensorflow as tf

_PACKAGE = "keras_insightface"


def block_diagonal_kernel(kernel, groups):
    """A grouped conv kernel (kh, kw, in / groups, out) as the dense (kh, kw, in, out) kernel computing the same.

    Usage: dense = block_diagonal_kernel(layer.kernel, groups=64)
    """
    group_inputs, outputs = kernel.shape[-2], kernel.shape[-1]
    in_group = np.arange(group_inputs * groups) // group_inputs
    out_group = np.arange(outputs) // (outputs // groups)
    mask = tf.constant(in_group[:, None] == out_group[None, :], dtype=kernel.dtype)
    return tf.tile(kernel, [1, 1, groups, 1]) * mask


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose grouped convolution runs densely (block-diagonal kernel) on TensorFlow without a GPU.

    Usage: nn = Conv2D(128, 3, padding="same", groups=64, name="grouped_conv")(nn)
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1 or keras.backend.backend() != "tensorflow" or tf.config.list_logical_devices("GPU"):
            return super().convolution_op(inputs, kernel)
        return super().convolution_op(inputs, block_diagonal_kernel(kernel, self.groups))
