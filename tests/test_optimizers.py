import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_insightface.optimizers import SGDW, AdamW

VAR0 = np.array([[1.0, -2.0], [0.5, 3.0]], dtype="float32")
GRADS = [np.array([[0.3, -0.1], [0.2, 0.4]], dtype="float32"), np.array([[-0.5, 0.2], [0.1, -0.3]], dtype="float32")]


def run_steps(optimizer, grads=GRADS, var0=VAR0):
    variable = keras.Variable(var0.copy())
    for grad in grads:
        optimizer.apply([grad], [variable])
    return variable.numpy()


def sgdw_reference(lr, wd, momentum, nesterov):
    """var <- var - wd * var, then Keras SGD: m = momentum * m - lr * g; var += m (nesterov: momentum * m - lr * g)."""
    var, moment = VAR0.astype("float64"), np.zeros_like(VAR0, dtype="float64")
    for grad in GRADS:
        var = var - wd * var
        moment = momentum * moment - lr * grad
        var = var + (momentum * moment - lr * grad if nesterov else moment)
    return var


def adamw_reference(lr, wd, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """var <- var - wd * var, then Adam: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); var -= alpha * m / (sqrt(v) + eps)."""
    var = VAR0.astype("float64")
    mm, vv = np.zeros_like(var), np.zeros_like(var)
    for step, grad in enumerate(GRADS, start=1):
        var = var - wd * var
        mm = beta_1 * mm + (1 - beta_1) * grad
        vv = beta_2 * vv + (1 - beta_2) * grad**2
        alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        var = var - alpha * mm / (np.sqrt(vv) + epsilon)
    return var


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdw_matches_numpy(nesterov):
    got = run_steps(SGDW(learning_rate=0.1, weight_decay=0.01, momentum=0.9, nesterov=nesterov))
    np.testing.assert_allclose(got, sgdw_reference(0.1, 0.01, 0.9, nesterov), rtol=1e-6, atol=1e-7)


def test_adamw_matches_numpy():
    got = run_steps(AdamW(learning_rate=0.01, weight_decay=0.02))
    np.testing.assert_allclose(got, adamw_reference(0.01, 0.02), rtol=1e-5, atol=1e-7)


def test_weight_decay_is_absolute_not_scaled_by_lr():
    # lr = 0: only the decay acts, var * (1 - wd) per step
    got = run_steps(SGDW(learning_rate=0.0, weight_decay=0.1, momentum=0.9))
    np.testing.assert_allclose(got, VAR0 * 0.9**2, rtol=1e-6)
    got = run_steps(AdamW(learning_rate=0.0, weight_decay=0.1))
    np.testing.assert_allclose(got, VAR0 * 0.9**2, rtol=1e-6)


def test_decoupled_weight_decay_variable_is_settable_and_used():
    optimizer = SGDW(learning_rate=0.0, weight_decay=5e-4)
    assert optimizer.weight_decay == 5e-4
    assert float(optimizer.decoupled_weight_decay.numpy()) == pytest.approx(5e-4)
    assert not optimizer.decoupled_weight_decay.trainable
    optimizer.decoupled_weight_decay = 0.5
    np.testing.assert_allclose(run_steps(optimizer, grads=GRADS[:1]), VAR0 * 0.5, rtol=1e-6)
    assert optimizer.get_config()["weight_decay"] == 5e-4  # the base value is what the config keeps


def test_exclude_from_weight_decay():
    optimizer = SGDW(learning_rate=0.0, weight_decay=0.1)
    kernel, bias = keras.Variable(VAR0.copy(), name="kernel"), keras.Variable(np.ones(2, "float32"), name="bias")
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.apply([GRADS[0], np.zeros(2, "float32")], [kernel, bias])
    np.testing.assert_allclose(kernel.numpy(), VAR0 * 0.9, rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), np.ones(2))


def test_bad_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        SGDW(weight_decay=-1.0)


@pytest.mark.parametrize("cls", [SGDW, AdamW])
def test_config_round_trip(cls):
    optimizer = cls(learning_rate=0.05, weight_decay=1e-3)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is cls
    assert restored.weight_decay == 1e-3
    assert float(restored.learning_rate.numpy()) == pytest.approx(0.05)
    assert float(restored.decoupled_weight_decay.numpy()) == pytest.approx(1e-3)


@pytest.mark.parametrize("cls, suffix", [(SGDW, ".keras"), (SGDW, ".h5"), (AdamW, ".keras"), (AdamW, ".h5")])
def test_save_and_load_with_model(tmp_path, cls, suffix):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=cls(learning_rate=0.01, weight_decay=1e-3), loss=keras.losses.MeanSquaredError())
    xx = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(xx, xx[:, :2], batch_size=4, epochs=1, verbose=0)
    model.optimizer.decoupled_weight_decay = 2e-4
    path = str(tmp_path / ("model" + suffix))
    model.save(path)

    loaded = keras.models.load_model(path, compile=True)
    assert type(loaded.optimizer) is cls
    assert loaded.optimizer.weight_decay == 1e-3
    assert float(loaded.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    if suffix == ".h5":
        # Keras 3.15's legacy .h5 loader rebuilds the optimizer from its config but builds it on no
        # variables and restores no slot (momentum, Adam moments), for its own optimizers too
        return
    assert float(loaded.optimizer.decoupled_weight_decay.numpy()) == pytest.approx(2e-4)
    saved_state = {vv.path: vv.numpy() for vv in model.optimizer.variables}
    loaded_state = {vv.path: vv.numpy() for vv in loaded.optimizer.variables}
    assert len(saved_state) == len(loaded_state) > 3
    for (key, value), loaded_value in zip(saved_state.items(), loaded_state.values()):
        np.testing.assert_allclose(loaded_value, value, err_msg=key)
    # one more identical step on both keeps them identical
    model.fit(xx, xx[:, :2], batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(xx, xx[:, :2], batch_size=8, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_insightface.myCallbacks import ConstantDecayScheduler, OptimizerWeightDecay
    from keras_insightface.optimizers import SGDW
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(inputs))
        model.compile(optimizer=SGDW(learning_rate=1.0, weight_decay=0.1), loss=keras.losses.MeanSquaredError())
    callbacks = [ConstantDecayScheduler(1.0, [1], decay_rate=0.5), OptimizerWeightDecay(1.0, 0.1)]
    # zero inputs: zero gradients, only the weight decay moves the kernel
    model.fit(np.zeros((4, 3), "float32"), np.zeros((4, 1), "float32"), batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    print("KERNEL", json.dumps(model.get_weights()[0].ravel().tolist()))
    """
)


def test_decay_applied_once_per_step_under_mirrored_strategy(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=root)
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    kernel = [line for line in result.stdout.splitlines() if line.startswith("KERNEL")][0]
    # epoch 0: wd 0.1, epoch 1: lr halved so wd 0.05; one step per epoch, two replicas, applied once
    np.testing.assert_allclose(json.loads(kernel.split(" ", 1)[1]), [0.9 * 0.95] * 3, rtol=1e-6)
