"""Tests for batchnorm.py: the fused BatchNormalization against NumPy formulas and the stock Keras layer,
its fallbacks, mixed precision, saving, and the swap of a model's BatchNorm layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import batchnorm, models
from keras_insightface.batchnorm import BatchNormalization

MOMENTUM, EPSILON = 0.9, 1e-3
SHAPE = (4, 5, 6, 3)  # n = 4 * 5 * 6 = 120 values per channel


def random_inputs(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).normal(2.0, 3.0, shape).astype("float32")


def random_weights(channels=3, seed=1, count=4):
    """gamma, beta, moving_mean, moving_variance (then renorm's) away from their initial values."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 2.0, channels).astype("float32") for _ in range(count)]


def layer_pair(shape=SHAPE, **kwargs):
    """(stock Keras layer, fused layer), built for `shape` with the same random weights."""
    stock = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    fused = BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
    for layer in (stock, fused):
        layer.build(shape)
        layer.set_weights(random_weights(shape[layer.axis], count=len(layer.weights)))
    return stock, fused


def reference_bn(x, mean, variance, gamma, beta):
    return (x - mean) / np.sqrt(variance + EPSILON) * gamma + beta


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of TensorFlow's fused kernel wrapper."""
    calls = []
    original = tf.compat.v1.nn.fused_batch_norm

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_training"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tf.compat.v1.nn, "fused_batch_norm", counting)
    return calls


# ---------------------------------------------------------------- numbers
def test_inference_matches_formula_and_stock_layer(fused_calls):
    stock, fused = layer_pair()
    x = random_inputs()
    gamma, beta, mean, variance = random_weights()
    out = fused(x, training=False).numpy()
    np.testing.assert_allclose(out, reference_bn(x, mean, variance, gamma, beta), atol=1e-5)
    np.testing.assert_allclose(out, stock(x, training=False).numpy(), atol=1e-5)
    assert fused_calls == [False]


def test_training_matches_formula_and_stock_layer(fused_calls):
    stock, fused = layer_pair()
    x = random_inputs()
    gamma, beta, _, _ = random_weights()
    out = fused(x, training=True).numpy()
    batch_reference = reference_bn(x, x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)), gamma, beta)
    np.testing.assert_allclose(out, batch_reference, atol=1e-5)
    np.testing.assert_allclose(out, stock(x, training=True).numpy(), atol=1e-5)
    assert fused_calls == [True]


def test_moving_statistics_use_keras_momentum_and_biased_variance():
    stock, fused = layer_pair()
    x = random_inputs()
    _, _, mean, variance = random_weights()
    fused(x, training=True)
    stock(x, training=True)
    expected_mean = mean * MOMENTUM + x.mean(axis=(0, 1, 2)) * (1 - MOMENTUM)
    expected_variance = variance * MOMENTUM + x.var(axis=(0, 1, 2), ddof=0) * (1 - MOMENTUM)
    np.testing.assert_allclose(fused.moving_mean.numpy(), expected_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), expected_variance, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-6)
    unbiased = variance * MOMENTUM + x.var(axis=(0, 1, 2), ddof=1) * (1 - MOMENTUM)
    assert not np.allclose(fused.moving_variance.numpy(), unbiased, rtol=1e-6, atol=1e-6)


def test_single_value_per_channel_gives_zero_batch_variance():
    _, fused = layer_pair(shape=(1, 1, 1, 3))
    _, _, _, variance = random_weights()
    fused(random_inputs((1, 1, 1, 3)), training=True)
    np.testing.assert_allclose(fused.moving_variance.numpy(), variance * MOMENTUM, rtol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_stock_layer(training):
    stock, fused = layer_pair()
    x = tf.constant(random_inputs())
    upstream = tf.constant(random_inputs(seed=2))
    grads = []
    for layer in (stock, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=training) * upstream)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for stock_grad, fused_grad in zip(*grads):
        np.testing.assert_allclose(fused_grad.numpy(), stock_grad.numpy(), rtol=1e-4, atol=1e-4)


def test_fit_step_matches_stock_layer():
    """One compiled SGD step (graph mode) moves every weight as the stock layer's model does."""
    x, y = random_inputs((8, 4, 4, 3)), random_inputs((8, 2), seed=3)
    trained = []
    for layer_class in (keras.layers.BatchNormalization, BatchNormalization):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4, 4, 3))
        nn = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        nn = layer_class(momentum=MOMENTUM, name="bn")(nn)
        outputs = keras.layers.Dense(2, name="dense")(keras.layers.Flatten()(nn))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        trained.append(model.get_weights())
    for stock_weight, fused_weight in zip(*trained):
        np.testing.assert_allclose(fused_weight, stock_weight, rtol=1e-4, atol=1e-5)


def test_without_scale_and_center_matches_stock_layer():
    stock, fused = layer_pair(scale=False, center=False)
    x = random_inputs()
    for training in (True, False):
        np.testing.assert_allclose(fused(x, training=training).numpy(), stock(x, training=training).numpy(), atol=1e-5)


def test_frozen_layer_uses_moving_statistics_in_training(fused_calls):
    stock, fused = layer_pair()
    fused.trainable = stock.trainable = False
    x = random_inputs()
    np.testing.assert_allclose(fused(x, training=True).numpy(), stock(x, training=True).numpy(), atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), random_weights()[2])
    assert fused_calls == [False]


# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-2), ("bfloat16", 1e-1)])
def test_half_inputs_keep_float32_weights(dtype, tolerance, fused_calls):
    x = random_inputs()
    gamma, beta, mean, variance = random_weights()
    fused = BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, dtype=keras.DTypePolicy("mixed_" + dtype))
    fused.build(SHAPE)
    fused.set_weights(random_weights())
    assert {weight.dtype for weight in fused.weights} == {"float32"}
    inference = fused(tf.cast(x, dtype), training=False)
    assert keras.backend.standardize_dtype(inference.dtype) == dtype
    np.testing.assert_allclose(tf.cast(inference, "float32").numpy(), reference_bn(x, mean, variance, gamma, beta), atol=tolerance)
    training = fused(tf.cast(x, dtype), training=True)
    batch_reference = reference_bn(x, x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)), gamma, beta)
    np.testing.assert_allclose(tf.cast(training, "float32").numpy(), batch_reference, atol=tolerance)
    expected_mean = mean * MOMENTUM + x.mean(axis=(0, 1, 2)) * (1 - MOMENTUM)
    np.testing.assert_allclose(fused.moving_mean.numpy(), expected_mean, atol=tolerance)
    assert fused_calls == [False, True]


# ---------------------------------------------------------------- fallbacks
@pytest.mark.parametrize(
    "shape, kwargs",
    [((6, 5), {}), ((4, 5, 3), {}), ((4, 3, 5, 6), {"axis": 1}), ((2, 3, 4, 5, 3), {}), (SHAPE, {"renorm": True})],
    ids=["2D", "3D", "channels_first", "5D", "renorm"],
)
def test_other_inputs_run_the_stock_computation(shape, kwargs, fused_calls):
    stock, fused = layer_pair(shape, **kwargs)
    x = random_inputs(shape)
    for training in (True, False):
        np.testing.assert_allclose(fused(x, training=training).numpy(), stock(x, training=training).numpy(), atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-6)
    assert fused_calls == []


def test_float64_inputs_run_the_stock_computation(fused_calls):
    stock, fused = layer_pair(dtype="float64")
    x = random_inputs().astype("float64")
    np.testing.assert_allclose(fused(x, training=True).numpy(), stock(x, training=True).numpy(), atol=1e-10)
    assert fused_calls == []


# ---------------------------------------------------------------- synchronized (the global batch of all replicas)
def test_synchronized_layer_on_one_device_matches_formula(fused_calls):
    """One replica: the global batch is the batch; the two-pass moments give the NumPy numbers."""
    _, fused = layer_pair(synchronized=True)
    x = random_inputs()
    gamma, beta, mean, variance = random_weights()
    out = fused(x, training=True).numpy()
    np.testing.assert_allclose(out, reference_bn(x, x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)), gamma, beta), atol=1e-5)
    expected_variance = variance * MOMENTUM + x.var(axis=(0, 1, 2)) * (1 - MOMENTUM)
    np.testing.assert_allclose(fused.moving_variance.numpy(), expected_variance, rtol=1e-6, atol=1e-6)
    assert fused_calls == []  # the fused kernel cannot all-reduce


def test_global_moments_keep_the_variance_of_a_large_mean():
    """Values 4096 + N(0, 1): E[x^2] - E[x]^2 in float32 loses the variance (x^2 ~ 1.7e7, float32 steps of 2 there);
    the mean first, then the squared deviations from it, keep it."""
    x = (4096.0 + np.random.default_rng(0).normal(0, 1, (8, 4, 4, 3))).astype("float32")
    mean, variance = batchnorm.global_moments(tf.constant(x), [0, 1, 2])
    np.testing.assert_allclose(mean.numpy(), x.astype("float64").mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), x.astype("float64").var(axis=(0, 1, 2)), rtol=1e-4)


# ---------------------------------------------------------------- saving
def small_model(layer_class, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    nn = keras.layers.Conv2D(4, 1, name="conv")(inputs)
    nn = layer_class(name="bn")(nn)
    return keras.Model(inputs, nn)


def set_distinct_weights(model):
    model.set_weights([np.random.default_rng(ii).uniform(0.5, 2.0, ww.shape).astype("float32") for ii, ww in enumerate(model.weights)])
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_model_round_trips(tmp_path, suffix):
    model = set_distinct_weights(small_model(BatchNormalization))
    path = str(tmp_path / ("model" + suffix))
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert type(loaded.get_layer("bn")) is BatchNormalization
    x = random_inputs((2, 4, 4, 3))
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_stock_layer_weights_load_into_fused_model(tmp_path, suffix):
    stock_model = set_distinct_weights(small_model(keras.layers.BatchNormalization))
    path = str(tmp_path / ("stock" + suffix))
    stock_model.save_weights(path) if suffix == ".weights.h5" else stock_model.save(path)
    fused_model = small_model(BatchNormalization, seed=1)
    fused_model.load_weights(path)
    x = random_inputs((2, 4, 4, 3))
    np.testing.assert_allclose(fused_model(x, training=False).numpy(), stock_model(x, training=False).numpy(), atol=1e-5)


# ---------------------------------------------------------------- conversion
def test_convert_batchnorm_swaps_keras_applications_layers_keeping_names_and_weights():
    stock_model = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.25)
    stock_model = set_distinct_weights(stock_model)
    fused_model = batchnorm.convert_batchnorm(stock_model)
    stock_bns = [ly for ly in stock_model.layers if isinstance(ly, keras.layers.BatchNormalization)]
    fused_bns = [ly for ly in fused_model.layers if isinstance(ly, keras.layers.BatchNormalization)]
    assert stock_bns and {type(ly) for ly in fused_bns} == {BatchNormalization}
    assert [ly.name for ly in fused_model.layers] == [ly.name for ly in stock_model.layers]
    x = random_inputs((2, 32, 32, 3))
    np.testing.assert_allclose(fused_model(x, training=False).numpy(), stock_model(x, training=False).numpy(), rtol=1e-4, atol=1e-5)

    back = batchnorm.convert_batchnorm(fused_model, fused=False)
    assert {type(ly) for ly in back.layers if isinstance(ly, keras.layers.BatchNormalization)} == {keras.layers.BatchNormalization}
    assert batchnorm.convert_batchnorm(fused_model) is fused_model


def bn_types(model):
    return {type(ly) for ly in models.iter_layers(model) if isinstance(ly, keras.layers.BatchNormalization)}


@pytest.mark.parametrize("name", ["mobilenet", "r18"])
def test_buildin_models_use_fused_batchnorm_unless_switched_off(name):
    fused = models.buildin_models(name, dropout=0, emb_shape=16, output_layer="GDC", input_shape=(32, 32, 3))
    assert bn_types(fused) == {BatchNormalization}
    stock = models.buildin_models(name, dropout=0, emb_shape=16, output_layer="GDC", input_shape=(32, 32, 3), fused_batchnorm=False)
    assert bn_types(stock) == {keras.layers.BatchNormalization}
    layer_names = [[ly.name for ly in models.iter_layers(mm) if ly.weights] for mm in (stock, fused)]
    assert layer_names[0] == layer_names[1]
