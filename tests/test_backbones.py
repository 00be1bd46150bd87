"""Tests of the custom backbones: GhostNet, MobileNetV3, ResNeSt, SE-ResNeXt; the original's networks under the seed's names.

Parameter counts are derived by hand from the papers' layer tables (trainable weights: conv kernels
and biases, BatchNorm gamma and beta) and compared with the published totals once the ImageNet
classifier is added back.
"""
import numpy as np
import pytest

import keras
from keras_insightface.backbones import ghostnet, mobilenet_v3, resnest, se_resnext

SMALL_INPUT = (64, 64, 3)


def conv(kernel, cin, cout, bias=False):
    return kernel * kernel * cin * cout + (cout if bias else 0)


def grouped_conv(kernel, cin, cout, groups):
    return kernel * kernel * (cin // groups) * cout


def depthwise(kernel, channels):
    return kernel * kernel * channels


def bn(channels):
    return 2 * channels


def squeeze_excite(channels, reduced):
    return conv(1, channels, reduced, bias=True) + conv(1, reduced, channels, bias=True)


# GhostNet 1.0x blocks: kernel, expanded, output, SE width (expanded / 4 rounded to a multiple of 4; 0: none), stride.
GHOSTNET_BLOCKS = [
    (3, 16, 16, 0, 1), (3, 48, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 20, 2), (5, 120, 40, 32, 1),
    (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 120, 1),
    (3, 672, 112, 168, 1), (5, 672, 160, 168, 2), (5, 960, 160, 0, 1), (5, 960, 160, 240, 1), (5, 960, 160, 0, 1),
    (5, 960, 160, 240, 1),
]


def ghost_module_params(cin, cout):
    half = cout // 2
    return conv(1, cin, half) + bn(half) + depthwise(3, half) + bn(half)


def ghostnet_params():
    total, cin = conv(3, 3, 16) + bn(16), 16
    for kernel, expand, cout, se, stride in GHOSTNET_BLOCKS:
        total += ghost_module_params(cin, expand) + ghost_module_params(expand, cout)
        total += depthwise(kernel, expand) + bn(expand) if stride > 1 else 0
        total += squeeze_excite(expand, se) if se else 0
        if stride > 1 or cin != cout:
            total += depthwise(kernel, cin) + bn(cin) + conv(1, cin, cout) + bn(cout)
        cin = cout
    return total + conv(1, 160, 960) + bn(960)


# MobileNetV3 blocks: kernel, expanded, output, SE width (expanded / 4 rounded to a multiple of 8; 0: none), stride.
MOBILENETV3_SMALL_BLOCKS = [
    (3, 16, 16, 8, 2), (3, 72, 24, 0, 2), (3, 88, 24, 0, 1), (5, 96, 40, 24, 2), (5, 240, 40, 64, 1),
    (5, 240, 40, 64, 1), (5, 120, 48, 32, 1), (5, 144, 48, 40, 1), (5, 288, 96, 72, 2), (5, 576, 96, 144, 1),
    (5, 576, 96, 144, 1),
]
MOBILENETV3_LARGE_BLOCKS = [
    (3, 16, 16, 0, 1), (3, 64, 24, 0, 2), (3, 72, 24, 0, 1), (5, 72, 40, 24, 2), (5, 120, 40, 32, 1),
    (5, 120, 40, 32, 1), (3, 240, 80, 0, 2), (3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1),
    (3, 480, 112, 120, 1), (3, 672, 112, 168, 1), (5, 672, 160, 168, 2), (5, 960, 160, 240, 1), (5, 960, 160, 240, 1),
]


def mobilenet_v3_params(blocks, last_channels):
    total, cin = conv(3, 3, 16) + bn(16), 16
    for kernel, expand, cout, se, _ in blocks:
        total += conv(1, cin, expand) + bn(expand) if expand != cin else 0
        total += depthwise(kernel, expand) + bn(expand) + conv(1, expand, cout) + bn(cout)
        total += squeeze_excite(expand, se) if se else 0
        cin = cout
    return total + conv(1, cin, last_channels) + bn(last_channels)


def resnet_stages_params(depths, stem_channels, block_params):
    total, cin = 0, stem_channels
    for depth, planes in zip(depths, (64, 128, 256, 512)):
        for block in range(depth):
            total += block_params(cin, planes, block == 0)
            cin = planes * 4
    return total


def resnest_block_params(cin, planes, first):
    attention = max(planes * 2 // 4, 32)
    total = conv(1, cin, planes) + bn(planes)
    total += grouped_conv(3, planes, 2 * planes, groups=2) + bn(2 * planes)
    total += conv(1, planes, attention, bias=True) + bn(attention) + conv(1, attention, 2 * planes, bias=True)
    total += conv(1, planes, 4 * planes) + bn(4 * planes)
    return total + (conv(1, cin, 4 * planes) + bn(4 * planes) if first else 0)


def resnest_params(depths, stem_width):
    stem = conv(3, 3, stem_width) + conv(3, stem_width, stem_width) + conv(3, stem_width, 2 * stem_width)
    stem += bn(stem_width) * 2 + bn(2 * stem_width)
    return stem + resnet_stages_params(depths, 2 * stem_width, resnest_block_params)


def se_resnext_block_params(cin, planes, first):
    width, out = planes * 2, planes * 4
    total = conv(1, cin, width) + bn(width) + grouped_conv(3, width, width, groups=32) + bn(width)
    total += conv(1, width, out) + bn(out) + squeeze_excite(out, out // 16)
    return total + (conv(1, cin, out) + bn(out) if first else 0)


def se_resnext_params(depths):
    return conv(7, 3, 64) + bn(64) + resnet_stages_params(depths, 64, se_resnext_block_params)


IMAGENET_FC_2048 = conv(1, 2048, 1000, bias=True)
# name: (builder, output channels, hand-derived headless count, ImageNet classifier params, published total).
BACKBONES = {
    "ghostnet": (ghostnet.GhostNet, 960, ghostnet_params(), conv(1, 960, 1280, True) + conv(1, 1280, 1000, True), 5.2e6),
    "mobilenetv3_small": (
        mobilenet_v3.MobileNetV3Small, 576, mobilenet_v3_params(MOBILENETV3_SMALL_BLOCKS, 576),
        conv(1, 576, 1024, True) + conv(1, 1024, 1000, True), 2.5e6,
    ),
    "mobilenetv3_large": (
        mobilenet_v3.MobileNetV3Large, 960, mobilenet_v3_params(MOBILENETV3_LARGE_BLOCKS, 960),
        conv(1, 960, 1280, True) + conv(1, 1280, 1000, True), 5.4e6,
    ),
    "resnest50": (resnest.ResNest50, 2048, resnest_params((3, 4, 6, 3), 32), IMAGENET_FC_2048, 27.5e6),
    "resnest101": (resnest.ResNest101, 2048, resnest_params((3, 4, 23, 3), 64), IMAGENET_FC_2048, 48.3e6),
    "se_resnext50": (se_resnext.SEResNext50, 2048, se_resnext_params((3, 4, 6, 3)), IMAGENET_FC_2048, 27.56e6),
    "se_resnext101": (se_resnext.SEResNext101, 2048, se_resnext_params((3, 4, 23, 3)), IMAGENET_FC_2048, 48.96e6),
}


def trainable_count(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


@pytest.fixture(scope="module")
def small_models():
    """Each backbone built once at 64x64, shared by the shape and parameter tests."""
    return {name: spec[0](input_shape=SMALL_INPUT) for name, spec in BACKBONES.items()}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_small_input_output_shape_and_forward(small_models, name):
    model, channels = small_models[name], BACKBONES[name][1]
    assert model.output.shape == (None, 2, 2, channels)  # 64 / 32, rounded up
    images = np.random.default_rng(0).uniform(-1, 1, (2, *SMALL_INPUT)).astype("float32")
    features = keras.ops.convert_to_numpy(model(images, training=False))
    assert features.shape == (2, 2, 2, channels)
    assert np.all(np.isfinite(features))
    assert np.abs(features[0] - features[1]).max() > 1e-3 * np.abs(features).max()  # depends on the image


@pytest.mark.parametrize("name", list(BACKBONES))
def test_parameter_counts(small_models, name):
    _, _, headless, classifier, published = BACKBONES[name]
    assert trainable_count(small_models[name]) == headless
    assert abs(headless + classifier - published) / published < 0.02


@pytest.mark.parametrize(
    "builder, kwargs, expected_shape",
    [
        (ghostnet.GhostNet, {}, (4, 4, 960)),
        (ghostnet.GhostNet, {"strides": 1}, (7, 7, 960)),
        (mobilenet_v3.MobileNetV3Small, {}, (4, 4, 576)),
    ],
)
def test_face_size_input(builder, kwargs, expected_shape):
    model = builder(input_shape=(112, 112, 3), **kwargs)
    features = model(np.zeros((1, 112, 112, 3), "float32"), training=False)
    assert tuple(features.shape) == (1, *expected_shape)


@pytest.mark.parametrize("builder", [ghostnet.GhostNet, mobilenet_v3.MobileNetV3Small, resnest.ResNest50, se_resnext.SEResNext50])
def test_no_pretrained_weights_and_headless_only(builder):
    with pytest.raises(ValueError, match="weights"):
        builder(input_shape=SMALL_INPUT, weights="imagenet")
    with pytest.raises(ValueError, match="include_top"):
        builder(input_shape=SMALL_INPUT, include_top=True)


def test_ghostnet_width_scales_channels():
    assert ghostnet.GhostNet(input_shape=SMALL_INPUT, width=1.3, strides=1).output.shape == (None, 4, 4, 1248)  # 960 * 1.3
    original = ghostnet.GhostNet(input_shape=SMALL_INPUT, width=1.3, last_expand=512)
    assert original.output.shape == (None, 2, 2, 664)  # make_divisible(512 * 1.3, 4)


def test_resnest_needs_fixed_input_size():
    with pytest.raises(ValueError, match="input_shape"):
        resnest.ResNest50(input_shape=(None, None, 3))


def numpy_split_attention(inputs, kernel, fc1, fc2, epsilon):
    """Radix-2 split attention from the paper, with fresh BatchNorm layers (inference: x / sqrt(1 + eps))."""
    height, width, cin = inputs.shape[1:]
    branches_channels = kernel.shape[-1] // 2
    padded = np.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv_out = np.zeros((inputs.shape[0], height, width, 2 * branches_channels))
    for group in range(2):
        group_in = padded[..., group * cin // 2 : (group + 1) * cin // 2]
        group_kernel = kernel[..., group * branches_channels : (group + 1) * branches_channels]
        for dy in range(3):
            for dx in range(3):
                patch = group_in[:, dy : dy + height, dx : dx + width]
                conv_out[..., group * branches_channels : (group + 1) * branches_channels] += patch @ group_kernel[dy, dx]
    conv_out = np.maximum(conv_out / np.sqrt(1 + epsilon), 0)
    branches = [conv_out[..., :branches_channels], conv_out[..., branches_channels:]]
    pooled = (branches[0] + branches[1]).mean(axis=(1, 2))
    hidden = np.maximum((pooled @ fc1[0][0, 0] + fc1[1]) / np.sqrt(1 + epsilon), 0)
    logits = (hidden @ fc2[0][0, 0] + fc2[1]).reshape(-1, 2, branches_channels)
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return weights[:, None, None, 0] * branches[0] + weights[:, None, None, 1] * branches[1]


def split_attention_model(epsilon=0.001):
    """ResNeSt's split-attention conv alone: 8 input channels, 2 branches of 4 channels, random weights."""
    rng = np.random.default_rng(1)
    inputs = keras.layers.Input((5, 6, 8))
    model = keras.Model(inputs, resnest._Builder(0.99, epsilon).split_attention(inputs, 4, "sa"))
    for layer_name in ("sa_conv", "sa_fc1", "sa_fc2"):
        layer = model.get_layer(layer_name)
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def test_resnest_split_attention_matches_paper_formula():
    epsilon = 0.001
    model = split_attention_model(epsilon)
    images = np.random.default_rng(2).normal(size=(2, 5, 6, 8)).astype("float32")
    expected = numpy_split_attention(
        images.astype("float64"),
        model.get_layer("sa_conv").get_weights()[0],
        model.get_layer("sa_fc1").get_weights(),
        model.get_layer("sa_fc2").get_weights(),
        epsilon,
    )
    assert model.get_layer("sa_fc1").filters == 32  # max(8 * 2 // 4, 32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images, training=False)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_and_reload_without_custom_objects(tmp_path, suffix):
    """Whole small models, and ResNeSt's split attention, whose grouped conv SE-ResNeXt also uses."""
    models = {
        "ghostnet": ghostnet.GhostNet(input_shape=(32, 32, 3), width=0.5),
        "mobilenetv3_small": mobilenet_v3.MobileNetV3Small(input_shape=(32, 32, 3)),
        "split_attention": split_attention_model(),
    }
    for name, model in models.items():
        images = np.random.default_rng(3).uniform(-1, 1, (2, *model.input_shape[1:])).astype("float32")
        path = str(tmp_path / (name + suffix))
        model.save(path)
        reloaded = keras.models.load_model(path)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(reloaded(images, training=False)),
            keras.ops.convert_to_numpy(model(images, training=False)),
            rtol=1e-6,
            atol=1e-7,
        )


# ---------------------------------------------------------------- the original Keras_insightface's networks
# (count_params, trainable params, output shape) of the headless backbones at 112x112x3, weights=None, read by
# running the original's own builders (leondgarse/Keras_insightface@520a9da, backbones/mobile_facenet.py
# MobileFaceNet(include_top=False, use_se=...), ghost_model.py GhostNet(include_top=False, width=1.3) as its
# models.py calls it, resnet.py ResNetNN(classes=0, ...), vargface.py VargFace(...)) under TF 2.21 / Keras 3;
# their SE's tf.reduce_mean was replaced by the parameter-free GlobalAveragePooling2D(keepdims=True) to build
# under Keras 3. The trainable counts are the ones quoted from the side-by-side run (e.g. mobilefacenet 848,256).
ORIGINAL_BACKBONES = {
    ("mobilefacenet", ()): (865_536, 848_256, (7, 7, 128)),
    ("se_mobilefacenet", ()): (890_376, 873_096, (7, 7, 128)),
    ("ghostnet", ()): (3_701_016, 3_674_816, (4, 4, 664)),
    ("vargface", ()): (3_022_560, 2_989_984, (1, 1, 1024)),
    ("vargface", (("se_ratio", 0.25),)): (3_176_744, 3_144_168, (1, 1, 1024)),
    ("r18", ()): (11_188_672, 11_176_000, (7, 7, 512)),
    ("r18", (("use_max_pool", True),)): (11_184_320, 11_171_776, (7, 7, 512)),
    ("r18", (("activation", "prelu"),)): (11_190_656, 11_177_984, (7, 7, 512)),
    ("se_r18", ()): (11_275_712, 11_263_040, (7, 7, 512)),
    ("r34", ()): (21_311_680, 21_287_872, (7, 7, 512)),
    ("se_r34", ()): (21_468_864, 21_445_056, (7, 7, 512)),
    ("r50", ()): (30_773_440, 30_737_344, (7, 7, 512)),
    ("r50", (("use_max_pool", True),)): (30_769_088, 30_733_120, (7, 7, 512)),
    ("se_r50", ()): (30_996_160, 30_960_064, (7, 7, 512)),
    ("r100", ()): (52_364_992, 52_297_408, (7, 7, 512)),
    ("r101", ()): (41_417_920, 41_368_000, (7, 7, 512)),
}


@pytest.mark.parametrize("name, kwargs", list(ORIGINAL_BACKBONES), ids=lambda value: str(value))
def test_seed_names_build_the_original_networks(name, kwargs):
    from keras_insightface.backbones import registry

    total, trainable, output_shape = ORIGINAL_BACKBONES[(name, kwargs)]
    model = registry.get_backbone_builder(name)(input_shape=(112, 112, 3), **dict(kwargs))
    assert (model.count_params(), trainable_count(model), model.output.shape[1:]) == (total, trainable, output_shape)


def test_original_resnet_layout_relu_se_and_max_pool_shortcut():
    from keras_insightface.backbones import resnet

    relu = resnet.ResNet18(input_shape=SMALL_INPUT)
    assert not any(isinstance(layer, keras.layers.PReLU) for layer in relu.layers)
    assert relu.get_layer("stem_bn").epsilon == 1e-5 and relu.get_layer("stem_bn").momentum == 0.9
    pooled = resnet.ResNet18(input_shape=SMALL_INPUT, use_max_pool=True, use_se=True)
    assert "stack1_block1_shortcut_pool" in [layer.name for layer in pooled.layers]  # 64 -> 64: 1x1 max pool, stride 2
    assert "stack2_block1_shortcut_conv" in [layer.name for layer in pooled.layers]
    reduce = pooled.get_layer("stack4_block2_se_reduce")
    assert reduce.filters == 512 // 16 and not reduce.use_bias


# insightface's own variants and the paper's GhostNet, kept under names that say so: (count_params, output shape) at 112x112.
OTHER_VARIANTS = {
    "fmobilefacenet": (929_536, (7, 7, 512)),  # insightface fmobilefacenet, the previous "mobilefacenet" of this project
    "se_fmobilefacenet": (1_024_096, (7, 7, 512)),  # with SE reduction 4
    "ghostnet_paper": (2_693_396, (4, 4, 960)),  # GhostNet 1.0x of the paper; trainable part checked by hand above
}


@pytest.mark.parametrize("name", list(OTHER_VARIANTS))
def test_insightface_and_paper_variants_stay_reachable(name):
    from keras_insightface.backbones import registry

    model = registry.get_backbone_builder(name)(input_shape=(112, 112, 3))
    assert (model.count_params(), model.output.shape[1:]) == OTHER_VARIANTS[name]
