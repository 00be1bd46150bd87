"""Tests for grouped_conv.py: the grouped Conv2D run densely equals the stock grouped Conv2D (outputs, gradients)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import grouped_conv, models, surgery


def test_block_diagonal_kernel_places_each_group_on_its_block():
    kernel = np.arange(1, 1 + 1 * 1 * 2 * 4, dtype="float32").reshape(1, 1, 2, 4)  # 2 groups: 2 inputs -> 2 outputs each
    dense = grouped_conv.block_diagonal_kernel(tf.constant(kernel), groups=2).numpy()[0, 0]
    expected = np.zeros((4, 4), "float32")
    expected[0:2, 0:2] = kernel[0, 0, :, 0:2]
    expected[2:4, 2:4] = kernel[0, 0, :, 2:4]
    np.testing.assert_array_equal(dense, expected)


@pytest.mark.parametrize("groups, strides", [(2, 1), (4, 2)])
def test_outputs_and_gradients_equal_stock_grouped_conv(groups, strides):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 6, 6, 8)).astype("float32"))
    results = []
    for layer_class in (keras.layers.Conv2D, grouped_conv.Conv2D):
        layer = layer_class(8, 3, strides, padding="same", groups=groups, use_bias=True)
        layer.build(x.shape)
        layer.set_weights([np.random.default_rng(ii + 1).normal(size=ww.shape).astype("float32") for ii, ww in enumerate(layer.weights)])
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.reshape(tf.range(1.0, 1.0 + float(np.prod(y.shape[1:]))), y.shape[1:]) / 100.0)
        results.append([y.numpy(), *[grad.numpy() for grad in tape.gradient(loss, [x, layer.kernel, layer.bias])]])
    for stock, dense in zip(*results):
        np.testing.assert_allclose(dense, stock, rtol=1e-5, atol=1e-5)


def test_mbf_builds_it_for_its_grouped_conv():
    basic_model = models.buildin_models("mbf", dropout=0, emb_shape=32, output_layer="GDC", input_shape=(32, 32, 3))
    grouped = [layer for layer in surgery.iter_layers(basic_model) if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert grouped and all(type(layer) is grouped_conv.Conv2D for layer in grouped)
