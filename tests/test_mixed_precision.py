"""Mixed precision training: compute dtypes, float32 head and losses, loss scaling, checkpoints and resume."""
import os

import keras
import numpy as np
import pytest

from keras_insightface import export
from keras_insightface import losses
from keras_insightface import models
from keras_insightface import train
from tests.helpers import tiny_basic_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW_BIN = os.path.join(REPO, "tests", "data", "faces_rec", "lfw.bin")

IMAGES = np.random.default_rng(3).uniform(-1, 1, (2, 112, 112, 3)).astype("float32")


def compute_dtypes(model):
    """Compute dtype of each weighted layer, by class name (the embedding layer as "embedding")."""
    return {"embedding" if layer.name == "embedding" else type(layer).__name__: layer.compute_dtype for layer in model.layers if layer.weights}


def test_mixed_precision_model_keeps_weights_and_float32_embedding():
    basic = tiny_basic_model()
    mixed = models.mixed_precision_model(basic, "mixed_bfloat16")
    assert compute_dtypes(mixed) == {"Conv2D": "bfloat16", "Dense": "bfloat16", "embedding": "float32"}
    for got, want in zip(mixed.get_weights(), basic.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert all(weight.dtype == "float32" for weight in mixed.weights)  # variables stay float32
    output = mixed(IMAGES, training=False)
    assert keras.backend.standardize_dtype(output.dtype) == "float32"
    np.testing.assert_allclose(output, basic(IMAGES, training=False), atol=0.05)  # bfloat16 keeps ~3 digits
    assert models.mixed_precision_model(mixed, "mixed_bfloat16") is mixed
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        models.mixed_precision_model(basic, "mixed_float64")


def test_bfloat16_train_eval_resume_saved_basic_model_and_export(dataset):
    tt = train.Train(dataset, "bf16.h5", eval_paths=[LFW_BIN], basic_model=tiny_basic_model(), batch_size=8, mixed_precision="mixed_bfloat16")
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "centerloss": 0.1, "triplet": 1, "epoch": 1, "optimizer": "adam"}])
    assert compute_dtypes(tt.basic_model)["Conv2D"] == "bfloat16"
    assert tt.output_layer.compute_dtype == "float32"
    assert [keras.backend.standardize_dtype(out.dtype) for out in tt.model.outputs] == ["float32"] * 3  # head, center, triplet
    history_loss = tt.my_hist.history["loss"]
    assert np.isfinite(history_loss).all()

    assert 0.4 <= tt.my_evals[0].cur_acc <= 1  # the eval callback embedded the pairs

    # The best basic model saved by the run takes float32 input and embeds in float32; it exports in float32.
    basic_path = os.path.join("checkpoints", [name for name in os.listdir("checkpoints") if name.startswith("bf16_basic_lfw_epoch_1_")][0])
    saved_basic = keras.models.load_model(basic_path)
    assert saved_basic.inputs[0].dtype == "float32"
    embedding = saved_basic(IMAGES, training=False)
    assert keras.backend.standardize_dtype(embedding.dtype) == "float32"
    np.testing.assert_allclose(embedding, tt.basic_model(IMAGES, training=False), atol=1e-6)
    assert compute_dtypes(export.load_basic_model(basic_path))["Conv2D"] == "float32"
    assert os.path.exists(export.convert_tflite(basic_path, "bf16_basic.tflite", num_parity_images=4))

    # Resume: the checkpoint keeps its policy, the optimizer state comes back.
    iterations = int(tt.optimizer.iterations.numpy())
    resumed = train.Train(dataset, "bf16.h5", model=os.path.join("checkpoints", "bf16.h5"), batch_size=8)
    assert resumed.mixed_precision == "mixed_bfloat16" and compute_dtypes(resumed.basic_model)["Conv2D"] == "bfloat16"
    assert int(resumed.optimizer.iterations.numpy()) == iterations
    resumed.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 1)
    assert len(resumed.my_hist.history["loss"]) == 2 and np.isfinite(resumed.my_hist.history["loss"]).all()


def test_float16_uses_loss_scaling_and_resumes_its_state(dataset):
    tt = train.Train(dataset, "fp16.h5", basic_model=tiny_basic_model(), batch_size=8, mixed_precision="mixed_float16")
    tt.train([{"loss": keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "epoch": 1, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}])
    assert isinstance(tt.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert tt.output_layer.compute_dtype == "float32" and compute_dtypes(tt.basic_model)["Dense"] == "float16"
    scale, iterations = float(tt.optimizer.dynamic_scale.numpy()), int(tt.optimizer.iterations.numpy())
    assert tt.my_hist.history["lr"] == [pytest.approx(0.001)]  # lr set through the inner optimizer

    resumed = train.Train(dataset, "fp16.h5", model=os.path.join("checkpoints", "fp16.h5"), batch_size=8)
    assert isinstance(resumed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(resumed.optimizer.dynamic_scale.numpy()) == scale
    assert int(resumed.optimizer.iterations.numpy()) == iterations
    resumed.train([{"loss": keras.losses.CategoricalCrossentropy(label_smoothing=0.1), "epoch": 1}], 1)
    assert np.isfinite(resumed.my_hist.history["loss"]).all()


def test_global_policy_is_honoured(dataset):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        tt = train.Train(dataset, "global.h5", basic_model=tiny_basic_model(), batch_size=8)
        assert tt.mixed_precision == "mixed_bfloat16"
        assert compute_dtypes(tt.basic_model)["Conv2D"] == "bfloat16"
        tt._build_model("arcface", 1, False, True, False, False)
        assert [keras.backend.standardize_dtype(out.dtype) for out in tt.model.outputs] == ["float32", "float32"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
