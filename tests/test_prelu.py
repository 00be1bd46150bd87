"""Tests for prelu.py: the fused PReLU against a NumPy formula and the stock Keras layer (outputs, gradients,
training steps), saving, the swap of a model's PReLU layers, and the backbones building it."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import models, prelu, surgery
from keras_insightface.prelu import PReLU

SHAPE = (4, 5, 6, 3)


def random_inputs(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).normal(0.0, 2.0, shape).astype("float32")


def layer_pair(shape=SHAPE, shared_axes=(1, 2)):
    """(stock Keras layer, fused layer), built for `shape` with the same random alpha."""
    shared_axes = list(shared_axes) if shared_axes else None
    stock, fused = keras.layers.PReLU(shared_axes=shared_axes), PReLU(shared_axes=shared_axes)
    for layer in (stock, fused):
        layer.build(shape)
        layer.set_weights([np.random.default_rng(1).uniform(-0.5, 0.8, layer.alpha.shape).astype("float32")])
    return stock, fused


def reference_prelu(x, alpha):
    return np.where(x > 0, x, alpha * x)


def reference_gradients(x, alpha, upstream, reduce_axes):
    """NumPy gradients of sum(prelu(x) * upstream): dx and dalpha (alpha's shape)."""
    dx = np.where(x > 0, upstream, alpha * upstream)
    dalpha = np.where(x > 0, 0.0, x * upstream).sum(axis=reduce_axes, keepdims=True)[0]
    return dx, dalpha


def gradients(layer, x, upstream, training=True):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=training) * upstream)
    return [grad.numpy() for grad in tape.gradient(loss, [x, layer.alpha])]


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of the fused forward / backward."""
    calls = []
    original = prelu.fused_prelu

    def counting(*args, **kwargs):
        calls.append(kwargs.get("reduce_axes", args[-1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(prelu, "fused_prelu", counting)
    return calls


CASES = [(SHAPE, (1, 2), (0, 1, 2)), (SHAPE, None, (0,)), (SHAPE, (1,), (0, 1)), ((6, 5), None, (0,))]
CASE_IDS = ["shared_hw", "unshared", "shared_h", "2D"]


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("shape, shared_axes, _", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("training", [True, False])
def test_outputs_equal_formula_and_stock_layer(shape, shared_axes, _, training):
    stock, fused = layer_pair(shape, shared_axes)
    x = random_inputs(shape)
    out = fused(x, training=training).numpy()
    np.testing.assert_array_equal(out, reference_prelu(x, stock.alpha.numpy()))
    np.testing.assert_array_equal(out, stock(x).numpy())


@pytest.mark.parametrize("shape, shared_axes, reduce_axes", CASES, ids=CASE_IDS)
def test_gradients_equal_formula_and_stock_layer(shape, shared_axes, reduce_axes, fused_calls):
    stock, fused = layer_pair(shape, shared_axes)
    x, upstream = random_inputs(shape), random_inputs(shape, seed=2)
    fused_grads = gradients(fused, x, upstream)
    assert fused_calls == [list(reduce_axes)]
    for expected in (reference_gradients(x, stock.alpha.numpy(), upstream, reduce_axes), gradients(stock, x, upstream)):
        for fused_grad, expected_grad in zip(fused_grads, expected):
            assert fused_grad.shape == expected_grad.shape
            np.testing.assert_allclose(fused_grad, expected_grad, rtol=1e-6, atol=1e-6)


def test_inference_gradients_equal_stock_layer():
    stock, fused = layer_pair()
    x, upstream = random_inputs(), random_inputs(seed=2)
    for fused_grad, stock_grad in zip(gradients(fused, x, upstream, training=False), gradients(stock, x, upstream)):
        np.testing.assert_allclose(fused_grad, stock_grad, rtol=1e-6, atol=1e-6)


def test_gradient_at_zero_takes_the_left_slope():
    """The one documented difference from the stock layer: dx at x == 0 is alpha * g (PyTorch's convention)."""
    _, fused = layer_pair()
    x = np.zeros(SHAPE, "float32")
    upstream = random_inputs(seed=2)
    dx, dalpha = gradients(fused, x, upstream)
    np.testing.assert_allclose(dx, fused.alpha.numpy() * upstream, rtol=1e-6)
    np.testing.assert_array_equal(dalpha, np.zeros_like(dalpha))


def small_model(prelu_class, shared_axes=(1, 2)):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    nn = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    nn = prelu_class(shared_axes=list(shared_axes), alpha_initializer=keras.initializers.Constant(0.25), name="prelu")(nn)
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(nn))
    return keras.Model(inputs, outputs)


def test_fit_steps_equal_stock_layer(fused_calls):
    """Three compiled SGD steps (graph mode) move every weight, alpha included, as with the stock layer."""
    x, y = random_inputs((8, 6, 6, 3)), random_inputs((8, 2), seed=3)
    trained = []
    for prelu_class in (keras.layers.PReLU, PReLU):
        model = small_model(prelu_class)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
        trained.append(model.get_weights())
    assert not np.allclose(trained[0][2], 0.25)  # alpha moved
    assert fused_calls  # traced through the fused path
    for stock_weight, fused_weight in zip(*trained):
        np.testing.assert_allclose(fused_weight, stock_weight, rtol=1e-6, atol=1e-6)


def test_mixed_bfloat16_outputs_in_compute_dtype():
    fused = PReLU(shared_axes=[1, 2], dtype=keras.DTypePolicy("mixed_bfloat16"))
    fused.build(SHAPE)
    x = random_inputs()
    assert fused.alpha.dtype == "float32"
    for training in (True, False):
        out = fused(tf.cast(x, "bfloat16"), training=training)
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        np.testing.assert_allclose(tf.cast(out, "float32").numpy(), reference_prelu(x, 0.0), atol=5e-2)


# ---------------------------------------------------------------- saving and swapping
def test_saved_model_keeps_the_layer_and_its_outputs(tmp_path):
    model = small_model(PReLU)
    path = str(tmp_path / "fused.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("prelu")) is PReLU
    x = random_inputs((2, 6, 6, 3))
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_convert_prelu_swaps_old_models_both_ways(tmp_path):
    old = small_model(keras.layers.PReLU)
    old.get_layer("prelu").set_weights([np.array([[[0.1, -0.2, 0.3, 0.4]]], "float32")])
    path = str(tmp_path / "old.h5")
    old.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("prelu")) is keras.layers.PReLU  # a saved stock layer loads as it was
    fused = surgery.convert_prelu(loaded)
    assert type(fused.get_layer("prelu")) is PReLU
    x = random_inputs((2, 6, 6, 3))
    np.testing.assert_array_equal(fused(x).numpy(), old(x).numpy())
    assert surgery.convert_prelu(fused) is fused
    back = surgery.convert_prelu(fused, fused=False)
    assert type(back.get_layer("prelu")) is keras.layers.PReLU
    np.testing.assert_array_equal(back.get_layer("prelu").get_weights()[0], old.get_layer("prelu").get_weights()[0])
    fused.save_weights(str(tmp_path / "fused.weights.h5"))
    reloaded = small_model(keras.layers.PReLU)
    reloaded.load_weights(str(tmp_path / "fused.weights.h5"))
    np.testing.assert_array_equal(reloaded(x).numpy(), old(x).numpy())


def test_backbones_and_relu_surgery_build_the_fused_layer():
    basic_model = models.buildin_models("mobilefacenet", dropout=0, emb_shape=32, output_layer="GDC", input_shape=(32, 32, 3))
    prelus = [layer for layer in surgery.iter_layers(basic_model) if isinstance(layer, keras.layers.PReLU)]
    assert prelus and all(type(layer) is PReLU for layer in prelus)
    inputs = keras.Input((8, 8, 3))
    relu_model = keras.Model(inputs, keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, name="conv")(inputs)))
    assert type(surgery.replace_ReLU_with_PReLU(relu_model).get_layer("prelu")) is PReLU
