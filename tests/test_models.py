"""Tests for models.py and backbones/: registry, heads, IResNet sizes, NormDense, surgery, save/load.

The largest backbones (same code paths as their smaller siblings) only build when
KERAS_INSIGHTFACE_FULL_TESTS=1 is set; otherwise they are reported as skipped with that reason.
"""
import os

import keras
import numpy as np
import pytest

from keras_insightface import models

FULL_TESTS = os.environ.get("KERAS_INSIGHTFACE_FULL_TESTS") == "1"
SMALL_INPUT = (32, 32, 3)
BN_EPS = 0.001


def count_weights(model):
    """Every weight except BatchNorm moving statistics, as PyTorch's `parameters()` counts them."""
    return sum(int(np.prod(ww.shape)) for ww in model.weights if "moving_" not in ww.path)


def tiny_backbone(height=3, channels=8, name="tiny"):
    inputs = keras.Input((height, height, 3))
    nn = keras.layers.Conv2D(channels, 1, use_bias=False, name="tiny_conv")(inputs)
    return keras.Model(inputs, nn, name=name)


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("name", sorted(models.BUILDIN_MODELS))
def test_every_buildin_model_builds_and_runs(name):
    if name in LARGE_BACKBONE_TARGETS and not FULL_TESTS:
        pytest.skip("large backbone, wiring checked without building: set KERAS_INSIGHTFACE_FULL_TESTS=1 to build it")
    basic_model = models.buildin_models(name, input_shape=SMALL_INPUT, emb_shape=16, output_layer="GDC")
    assert basic_model.layers[-1].name == "embedding"
    assert basic_model.output.shape == (None, 16)
    out = basic_model(np.random.uniform(-1, 1, (2, *SMALL_INPUT)).astype("float32"), training=False)
    assert out.shape == (2, 16) and np.all(np.isfinite(out))


def fake_backbone(calls, with_preprocessing=False):
    """A stand-in for a large backbone builder that records how it was called."""

    def builder(*args, **kwargs):
        calls.append(kwargs)
        inputs = keras.Input(kwargs["input_shape"])
        nn = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs) if with_preprocessing else inputs
        nn = keras.layers.ZeroPadding2D(0, name="stem_conv_pad")(nn)
        return keras.Model(inputs, keras.layers.Conv2D(4, 1, name="top_conv")(nn))

    return builder


LARGE_BACKBONE_TARGETS = {
    "r200": ("keras_insightface.backbones.resnet", "ResNet200"),
    "se_resnext": ("keras_insightface.backbones.se_resnext", "SEResNext50"),
    "se_resnext101": ("keras_insightface.backbones.se_resnext", "SEResNext101"),
    "resnest101": ("keras_insightface.backbones.resnest", "ResNest101"),
    **{name.lower(): ("keras.applications", name) for name in ("ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2")},
    **{f"efficientnetb{ii}": ("keras.applications", f"EfficientNetB{ii}") for ii in range(1, 8)},
    **{f"efficientnetv2{ii}": ("keras.applications", f"EfficientNetV2{ii.upper()}") for ii in ("b1", "b2", "b3", "s", "m", "l")},
}


@pytest.mark.parametrize("name", sorted(LARGE_BACKBONE_TARGETS))
def test_large_backbones_are_wired_to_their_builders(name, monkeypatch):
    """Without building them: each large name calls the right builder with the right arguments."""
    import importlib

    module_name, attribute = LARGE_BACKBONE_TARGETS[name]
    calls = []
    is_efficientnet_v1 = name.startswith("efficientnetb")
    if module_name.startswith("keras_insightface."):  # registered where defined: swap the registered family builder
        registered = models.BUILDIN_MODELS[name]
        assert registered.__wrapped__ is getattr(importlib.import_module(module_name), attribute)
        monkeypatch.setattr(registered, "__wrapped__", fake_backbone(calls, is_efficientnet_v1))
    else:
        monkeypatch.setattr(importlib.import_module(module_name), attribute, fake_backbone(calls, is_efficientnet_v1))
    basic_model = models.buildin_models(name, input_shape=(4, 4, 3), emb_shape=8)
    expected = {"include_top": False, "weights": None, "input_shape": (4, 4, 3)}
    if name.startswith("efficientnetv2"):
        expected["include_preprocessing"] = False
    assert calls == [expected]
    assert basic_model.output.shape == (None, 8)
    assert not any(isinstance(ly, keras.layers.Rescaling) for ly in basic_model.layers)


def test_registry_lookup_is_case_insensitive_and_falls_back_to_keras_applications():
    assert models.get_backbone_builder("MobileFaceNet") is models.BUILDIN_MODELS["mobilefacenet"]
    assert models.get_backbone_builder("R34") is models.BUILDIN_MODELS["r34"]
    basic_model = models.buildin_models("VGG16", input_shape=SMALL_INPUT, emb_shape=8, output_layer="E")
    assert basic_model.output.shape == (None, 8)
    assert basic_model.get_layer("block5_conv3").output.shape == (None, 2, 2, 512)
    with pytest.raises(ValueError, match="not_a_model"):
        models.buildin_models("not_a_model")


def test_aliases_point_to_the_same_backbone():
    assert models.BUILDIN_MODELS["se_resnext"].__name__ == models.BUILDIN_MODELS["se_resnext50"].__name__


def test_weights_are_passed_through_to_keras_applications(monkeypatch):
    seen = {}

    def fake_mobilenet(include_top, weights, input_shape, **kwargs):
        seen.update(include_top=include_top, weights=weights, input_shape=input_shape)
        return tiny_backbone()

    monkeypatch.setattr(keras.applications, "MobileNet", fake_mobilenet)
    models.buildin_models("mobilenet", input_shape=(3, 3, 3), weights="imagenet", emb_shape=4)
    assert seen == {"include_top": False, "weights": "imagenet", "input_shape": (3, 3, 3)}


def test_print_buildin_models(capsys):
    models.print_buildin_models()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ">>>> buildin_models"
    assert lines[1].startswith("MXNet version resnet: r18, r34, r50, r100, r101, r200, se_r18, se_r34, se_r50, se_r100")
    assert lines[2].startswith("Keras application: mobilenet, mobilenetv2, resnet50, resnet50v2")
    assert "efficientnetb7" in lines[3] and "efficientnetv2l" in lines[3]
    assert "iresnet18, iresnet34, iresnet50, iresnet100" in lines[1]  # arcface_torch's PReLU iresnets
    names = lines[4].split(": ")[1].rstrip(",").split(", ")
    for name in ("resnest50", "ghostnet", "ghostnet_paper", "mobilefacenet", "se_mobilefacenet", "fmobilefacenet", "se_fmobilefacenet", "mbf", "vargface"):
        assert name in names
    assert lines[5].startswith("Or other names from keras.applications")


# ---------------------------------------------------------------- IResNet
@pytest.mark.parametrize(
    "name, expected", [("iresnet18", 24_025_600), ("iresnet34", 34_139_328), ("iresnet50", 43_590_848), ("iresnet100", 65_156_160)]
)
def test_iresnet_parameter_counts_match_insightface(name, expected):
    """arcface_torch's iresnets (PReLU): "iresnetNN", or "rNN" with activation="prelu"."""
    basic_model = models.buildin_models(name, output_layer="E", emb_shape=512, use_bias=True, dropout=0.4)
    assert count_weights(basic_model) == expected
    if name == "iresnet18":
        same = models.buildin_models("r18", activation="prelu", output_layer="E", emb_shape=512, use_bias=True, dropout=0.4)
        assert count_weights(same) == expected
    assert basic_model.get_layer("E_dense").input.shape == (None, 7 * 7 * 512)


def test_iresnet_block_layout():
    from keras_insightface.backbones import resnet

    backbone = resnet.ResNet18(input_shape=(112, 112, 3), activation="prelu")
    sizes = [backbone.get_layer(f"stack{ii}_block1_add").output.shape[1:] for ii in range(1, 5)]
    assert sizes == [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]
    assert not any(getattr(layer, "use_bias", False) for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    assert backbone.get_layer("stem_prelu").get_weights()[0].shape == (1, 1, 64)
    assert [ly for ly in backbone.layers if ly.name.startswith("stack4_block2")][0].name == "stack4_block2_1_bn"


def test_full_size_forward_r18_and_mobilefacenet():
    images = np.random.uniform(-1, 1, (2, 112, 112, 3)).astype("float32")
    r18 = models.buildin_models("r18", output_layer="E", dropout=0.4, emb_shape=512)
    assert r18(images, training=False).shape == (2, 512)
    mobilefacenet = models.buildin_models("mobilefacenet", emb_shape=256, dropout=0)
    assert mobilefacenet.get_layer("GDC_dw").input.shape == (None, 7, 7, 128)  # the original's MobileFaceNet
    assert mobilefacenet(images, training=False).shape == (2, 256)
    mbf = models.buildin_models("fmobilefacenet", emb_shape=256, dropout=0)
    assert mbf.get_layer("GDC_dw").input.shape == (None, 7, 7, 512)  # insightface's


def test_mobile_facenet_function_as_the_seed_calls_it():
    from keras_insightface.backbones import mobile_facenet

    basic_model = mobile_facenet.mobile_facenet(256, dropout=0, name="mobile_facenet_256")
    assert basic_model.name == "mobile_facenet_256" and basic_model.output.shape == (None, 256)
    assert basic_model.layers[-1].name == "embedding"
    assert basic_model.get_layer("GDC_dw").input.shape == (None, 7, 7, 512)  # the original's pointwise Conv1x1(512) before GDC
    se_model = mobile_facenet.mobile_facenet(64, name="se_mobile_facenet_64", use_se=True, weight_decay=1e-3, input_shape=SMALL_INPUT)
    assert any(layer.name.endswith("_se_scale") for layer in se_model.layers)
    assert models.get_l2_regularizer_value(se_model) == pytest.approx(5e-4)


def test_bn_momentum_and_epsilon_reach_named_backbones():
    basic_model = models.buildin_models("r18", input_shape=SMALL_INPUT, bn_momentum=0.9, bn_epsilon=2e-5)
    batchnorms = [ly for ly in basic_model.layers if isinstance(ly, keras.layers.BatchNormalization)]
    assert len(batchnorms) > 20
    assert all(ly.momentum == 0.9 and ly.epsilon == 2e-5 for ly in batchnorms)


def test_efficientnet_has_no_preprocessing_layers():
    from keras_insightface.backbones import efficientnet

    b0 = efficientnet.EfficientNetB0(input_shape=SMALL_INPUT)
    assert [ly.name for ly in b0.layers[1:3]] == ["stem_conv_pad", "stem_conv"]
    v2 = efficientnet.EfficientNetV2B0(input_shape=SMALL_INPUT)
    for model in (b0, v2):
        assert not any(isinstance(ly, (keras.layers.Rescaling, keras.layers.Normalization)) for ly in model.layers)


# ---------------------------------------------------------------- heads
def bn_inference(xx):
    """A freshly built BatchNorm in inference mode: mean 0, variance 1, gamma 1, beta 0."""
    return xx / np.sqrt(1 + BN_EPS)


def test_head_E_computes_bn_flatten_dense_bn():
    features = np.random.normal(size=(2, 3, 3, 3)).astype("float32")
    basic_model = models.buildin_models(tiny_backbone(), emb_shape=5, output_layer="E", use_bias=True, dropout=0.5)
    conv_kernel = basic_model.get_layer("tiny_conv").get_weights()[0][0, 0]
    dense_kernel, dense_bias = basic_model.get_layer("E_dense").get_weights()
    feature_map = features @ conv_kernel
    expected = bn_inference(bn_inference(feature_map).reshape(2, -1) @ dense_kernel + dense_bias)
    np.testing.assert_allclose(basic_model(features, training=False), expected, rtol=1e-4, atol=1e-5)
    # backbone conv 24, BN 16, dense 72 * 5 + 5, final BN 10
    assert count_weights(basic_model) == 24 + 16 + 72 * 5 + 5 + 10
    assert "E_dropout" in [ly.name for ly in basic_model.layers]


def test_head_GDC_computes_depthwise_over_the_whole_map():
    features = np.random.normal(size=(2, 3, 3, 3)).astype("float32")
    basic_model = models.buildin_models(tiny_backbone(), emb_shape=5, output_layer="GDC", scale=False, dropout=1)
    conv_kernel = basic_model.get_layer("tiny_conv").get_weights()[0][0, 0]
    depthwise = basic_model.get_layer("GDC_dw").get_weights()[0][..., 0]  # (3, 3, 8)
    pointwise = basic_model.get_layer("GDC_conv").get_weights()[0][0, 0]  # (8, 5)
    pooled = np.sum((features @ conv_kernel) * depthwise, axis=(1, 2))
    expected = bn_inference(bn_inference(pooled) @ pointwise)
    np.testing.assert_allclose(basic_model(features, training=False), expected, rtol=1e-4, atol=1e-5)
    # backbone 24, depthwise 72, BN 16, conv 40, final BN without scale 5
    assert count_weights(basic_model) == 24 + 72 + 16 + 40 + 5
    assert not any(isinstance(ly, keras.layers.Dropout) for ly in basic_model.layers)


def test_head_F_has_no_batchnorm_on_the_feature_map():
    basic_model = models.buildin_models(tiny_backbone(), emb_shape=5, output_layer="F")
    assert count_weights(basic_model) == 24 + 72 * 5 + 10
    assert [ly.name for ly in basic_model.layers[2:]] == ["F_flatten", "F_dense", "pre_embedding", "embedding"]


def test_pointwise_conv_and_prelu_options():
    basic_model = models.buildin_models(tiny_backbone(), emb_shape=5, output_layer="GDC", add_pointwise_conv=True, use_prelu=True)
    assert basic_model.get_layer("pw_conv").output.shape == (None, 3, 3, 512)
    assert isinstance(basic_model.get_layer("pw_prelu"), keras.layers.PReLU)
    half = models.buildin_models(tiny_backbone(), emb_shape=5, add_pointwise_conv=-1)
    assert half.get_layer("pw_conv").output.shape == (None, 3, 3, 4)
    with pytest.raises(ValueError, match="output_layer"):
        models.buildin_models(tiny_backbone(), output_layer="X")


# ---------------------------------------------------------------- NormDense
def test_norm_dense_cosine_top_k_and_norm():
    features = np.random.normal(size=(4, 6)).astype("float32")
    layer = models.NormDense(3, loss_top_k=2, append_norm=True)
    out = np.asarray(layer(features))
    kernel = layer.get_weights()[0]
    cosine = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0))
    expected = np.max(cosine.reshape(4, 3, 2), axis=-1)
    np.testing.assert_allclose(out[:, :3], expected, atol=1e-5)
    np.testing.assert_allclose(out[:, 3], np.linalg.norm(features, axis=1), rtol=1e-5)
    assert kernel.shape == (6, 6)


# ---------------------------------------------------------------- surgery
def small_mixed_model():
    inputs = keras.Input((6, 6, 3))
    nn = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    nn = keras.layers.BatchNormalization(name="bn")(nn)
    nn = keras.layers.ReLU(name="conv_relu")(nn)
    nn = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(nn)
    nn = keras.layers.SeparableConv2D(5, 3, padding="same", name="sep")(nn)
    nn = keras.layers.Activation("relu", name="act")(nn)
    nn = keras.layers.Flatten(name="flatten")(nn)
    nn = keras.layers.Dense(6, name="dense")(nn)
    nn = keras.layers.ReLU(name="dense_relu")(nn)
    nn = models.NormDense(3, name="norm_dense")(nn)
    return keras.Model(inputs, nn)


@pytest.mark.parametrize("apply_to_batch_normal, apply_to_bias", [(False, False), (True, True)])
def test_add_l2_regularizer_sum_matches_hand_computed(apply_to_batch_normal, apply_to_bias):
    model = small_mixed_model()
    images = np.random.uniform(size=(2, 6, 6, 3)).astype("float32")
    weight_decay = 1e-3
    new_model = models.add_l2_regularizer_2_model(
        model, weight_decay, apply_to_batch_normal=apply_to_batch_normal, apply_to_bias=apply_to_bias
    )

    def weight(layer, index):
        return model.get_layer(layer).get_weights()[index]

    tensors = [weight("conv", 0), weight("dw", 0), weight("sep", 0), weight("sep", 1), weight("dense", 0), weight("norm_dense", 0)]
    if apply_to_bias:
        tensors += [weight("conv", 1), weight("sep", 2), weight("dense", 1)]
    if apply_to_batch_normal:
        tensors += [weight("bn", 0), weight("bn", 1)]
    expected = weight_decay / 2 * sum(float(np.sum(np.square(tt))) for tt in tensors)
    assert len(new_model.losses) == len(tensors)
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in new_model.losses)) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(new_model(images), model(images), atol=1e-6)
    assert models.get_l2_regularizer_value(new_model) == pytest.approx(weight_decay / 2)
    assert models.get_l2_regularizer_value(model) == 0
    assert not model.losses  # the original is untouched


def test_replace_relu_with_prelu_keeps_outputs():
    model = small_mixed_model()
    images = np.random.uniform(-1, 1, size=(2, 6, 6, 3)).astype("float32")
    new_model = models.replace_ReLU_with_PReLU(model)
    prelus = [ly for ly in new_model.layers if isinstance(ly, keras.layers.PReLU)]
    assert sorted(ly.name for ly in prelus) == ["act_prelu", "conv_prelu", "dense_prelu"]
    assert not any(isinstance(ly, keras.layers.ReLU) for ly in new_model.layers)
    assert new_model.get_layer("conv_prelu").get_weights()[0].shape == (1, 1, 4)
    assert new_model.get_layer("dense_prelu").get_weights()[0].shape == (6,)
    assert all(np.all(ly.get_weights()[0] == 0) for ly in prelus)
    np.testing.assert_allclose(new_model(images), model(images), atol=1e-6)
    swish_model = models.replace_ReLU_with_PReLU(model, target_activation="swish")
    assert swish_model.get_layer("conv_swish").get_config()["activation"] in ("swish", "silu")


# ---------------------------------------------------------------- save / load
def build_for_save(name):
    if name == "regularized_norm_dense":
        basic_model = models.buildin_models("r18", input_shape=SMALL_INPUT, output_layer="E", emb_shape=8, use_bias=True)
        basic_model = models.add_l2_regularizer_2_model(basic_model, 1e-3, apply_to_batch_normal=True)
        output = models.NormDense(5, loss_top_k=2, append_norm=True, name="NormDense")(basic_model.output)
        return keras.Model(basic_model.input, output)
    if name == "mobilenet_pw_prelu":
        return models.buildin_models("mobilenet", input_shape=SMALL_INPUT, emb_shape=8, add_pointwise_conv=True, use_prelu=True)
    return models.buildin_models(name, input_shape=SMALL_INPUT, emb_shape=8)


@pytest.mark.parametrize(
    "name", ["regularized_norm_dense", "se_mobilefacenet", "efficientnetb0", "ghostnet", "mobilenetv3_small", "mobilenet_pw_prelu"]
)
def test_save_and_load_without_custom_objects(name, tmp_path):
    if name in ("ghostnet", "mobilenetv3_small") and not FULL_TESTS:
        pytest.skip("slow round trip of a plain-Keras-layer backbone: set KERAS_INSIGHTFACE_FULL_TESTS=1 to run it")
    model = build_for_save(name)
    images = np.random.uniform(-1, 1, (2, *SMALL_INPUT)).astype("float32")
    expected = model(images, training=False)
    for suffix in (".h5", ".keras"):
        path = str(tmp_path / (name + suffix))
        model.save(path)
        loaded = keras.models.load_model(path, compile=False)
        np.testing.assert_allclose(loaded(images, training=False), expected, atol=1e-5)
        assert len(loaded.losses) == len(model.losses)
