"""Model building: built-in backbones, embedding heads, the NormDense output head and model surgery.

Usage:
    import models
    models.print_buildin_models()
    basic_model = models.buildin_models("mobilenet", dropout=0, emb_shape=256, output_layer="GDC")
    basic_model = models.add_l2_regularizer_2_model(basic_model, 1e-3, apply_to_batch_normal=True)
"""
import importlib

import keras
from keras import ops



@keras.saving.register_keras_serializable(package="keras_insightface")
class NormDense(keras.layers.Layer):
    """Cosine head: L2-normalized inputs times L2-normalized class weights, values in [-1, 1].

    `loss_top_k=K` keeps K sub-centers per class (kernel shape `(emb, units * K)`, sub-center
    `k` of class `c` in column `c * K + k`) and returns the max over each class's K columns.
    `append_norm=True` appends the L2 norm of the input feature as one extra last column,
    for MagFace / AdaFace style losses.

    Usage:
        out = NormDense(num_classes, name="NormDense")(basic_model.output)
    """

    def __init__(self, units=1000, kernel_regularizer=None, loss_top_k=1, append_norm=False, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.loss_top_k = int(loss_top_k)
        self.append_norm = bool(append_norm)
        self.epsilon = float(epsilon)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        self.w = self.add_weight(
            name="norm_dense_w",
            shape=(input_shape[-1], self.units * self.loss_top_k),
            initializer="glorot_normal",
            regularizer=self.kernel_regularizer,
            trainable=True,
        )

    def call(self, inputs):
        norm_w = self.w / ops.sqrt(ops.maximum(ops.sum(ops.square(self.w), axis=0, keepdims=True), self.epsilon))
        feature_norm = ops.sqrt(ops.maximum(ops.sum(ops.square(inputs), axis=-1, keepdims=True), self.epsilon))
        output = ops.matmul(inputs / feature_norm, ops.cast(norm_w, inputs.dtype))
        if self.loss_top_k > 1:
            output = ops.max(ops.reshape(output, (-1, self.units, self.loss_top_k)), axis=-1)
        if self.append_norm:
            output = ops.concatenate([output, ops.cast(feature_norm, output.dtype)], axis=-1)
        return output

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units + int(self.append_norm))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "loss_top_k": self.loss_top_k,
                "append_norm": self.append_norm,
                "epsilon": self.epsilon,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


# ---------------------------------------------------------------- backbone registry
def _from_module(module_name, builder_name, **fixed_kwargs):
    """A registry builder that imports `backbones.<module_name>` only when the backbone is built."""

    def builder(input_shape=(112, 112, 3), weights=None, **kwargs):
        backbone_builder = getattr(importlib.import_module("backbones." + module_name), builder_name)
        return backbone_builder(input_shape=input_shape, include_top=False, weights=weights, **fixed_kwargs, **kwargs)

    builder.__name__ = f"{module_name}.{builder_name}"
    return builder


def _from_keras_applications(application_name):
    """A registry builder for `keras.applications.<application_name>` without its classifier."""

    def builder(input_shape=(112, 112, 3), weights=None, **kwargs):
        application = getattr(keras.applications, application_name)
        return application(include_top=False, weights=weights, input_shape=input_shape, **kwargs)

    builder.__name__ = "keras.applications." + application_name
    return builder


EFFICIENTNET_V2_SIZES = ("B0", "B1", "B2", "B3", "S", "M", "L")
BUILDIN_MODEL_GROUPS = {
    "MXNet version resnet": {
        "r18": _from_module("resnet", "ResNet18"),
        "r34": _from_module("resnet", "ResNet34"),
        "r50": _from_module("resnet", "ResNet50"),
        "r100": _from_module("resnet", "ResNet100"),
        "r101": _from_module("resnet", "ResNet101"),
        "r200": _from_module("resnet", "ResNet200"),
    },
    "Keras application": {
        name.lower(): _from_keras_applications(name)
        for name in ("MobileNet", "MobileNetV2", "ResNet50", "ResNet50V2", "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2")
    },
    "EfficientNet": {
        name.lower(): _from_module("efficientnet", name)
        for name in [f"EfficientNetB{ii}" for ii in range(8)] + [f"EfficientNetV2{ii}" for ii in EFFICIENTNET_V2_SIZES]
    },
    "Custom": {
        "se_resnext": _from_module("se_resnext", "SEResNext50"),
        "se_resnext50": _from_module("se_resnext", "SEResNext50"),
        "se_resnext101": _from_module("se_resnext", "SEResNext101"),
        "resnest50": _from_module("resnest", "ResNest50"),
        "resnest101": _from_module("resnest", "ResNest101"),
        "ghostnet": _from_module("ghostnet", "GhostNet"),
        "mobilefacenet": _from_module("mobile_facenet", "MobileFaceNet", name="mobilefacenet"),
        "se_mobilefacenet": _from_module("mobile_facenet", "MobileFaceNet", use_se=True, name="se_mobilefacenet"),
        "mobilenetv3_small": _from_module("mobilenet_v3", "MobileNetV3Small"),
        "mobilenetv3_large": _from_module("mobilenet_v3", "MobileNetV3Large"),
    },
}
BUILDIN_MODELS = {name: builder for group in BUILDIN_MODEL_GROUPS.values() for name, builder in group.items()}
KERAS_APPLICATIONS = {name.lower(): name for name in dir(keras.applications) if name[:1].isupper()}


def get_backbone_builder(name):
    """Registry builder for `name` (case-insensitive), falling back to any keras.applications model.

    Usage: backbone = get_backbone_builder("r50")(input_shape=(112, 112, 3))
    """
    key = name.lower()
    if key in BUILDIN_MODELS:
        return BUILDIN_MODELS[key]
    if key in KERAS_APPLICATIONS:
        return _from_keras_applications(KERAS_APPLICATIONS[key])
    known = ", ".join(sorted(BUILDIN_MODELS))
    raise ValueError(f"buildin_models: unknown stem_model {name!r}; expected one of {known}, or a keras.applications name")


def print_buildin_models():
    """Print the registered backbone names, grouped.  Usage: models.print_buildin_models()"""
    print(">>>> buildin_models")
    for group, names in BUILDIN_MODEL_GROUPS.items():
        print(f"{group}: {', '.join(names)},")
    print("Or other names from keras.applications like DenseNet121 / InceptionV3 / NASNetMobile / VGG19.")


# ---------------------------------------------------------------- embedding heads
def _dropout(inputs, dropout, name):
    return keras.layers.Dropout(dropout, name=name)(inputs) if 0 < dropout < 1 else inputs


def _head_E(nn, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """BatchNorm, Dropout, Flatten, Dense: insightface "E" (and the iresnet head)."""
    nn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="E_batchnorm")(nn)
    nn = _dropout(nn, dropout, "E_dropout")
    nn = keras.layers.Flatten(name="E_flatten")(nn)
    return keras.layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="E_dense")(nn)


def _head_F(nn, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """Dropout, Flatten, Dense: "E" without the BatchNorm on the feature map."""
    nn = _dropout(nn, dropout, "F_dropout")
    nn = keras.layers.Flatten(name="F_flatten")(nn)
    return keras.layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="F_dense")(nn)


def _head_GDC(nn, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """Global depthwise conv over the whole feature map, BatchNorm, Dropout, Conv1x1(emb_shape), Flatten."""
    nn = keras.layers.DepthwiseConv2D(tuple(nn.shape[1:3]), use_bias=False, name="GDC_dw")(nn)
    nn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="GDC_batchnorm")(nn)
    nn = _dropout(nn, dropout, "GDC_dropout")
    nn = keras.layers.Conv2D(emb_shape, 1, use_bias=use_bias, kernel_initializer="glorot_normal", name="GDC_conv")(nn)
    return keras.layers.Flatten(name="GDC_flatten")(nn)


def _head_GAP(nn, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """BatchNorm, GlobalAveragePooling, Dropout, Dense."""
    nn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="GAP_batchnorm")(nn)
    nn = keras.layers.GlobalAveragePooling2D(name="GAP_pool")(nn)
    nn = _dropout(nn, dropout, "GAP_dropout")
    return keras.layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="GAP_dense")(nn)


EMBEDDING_HEADS = {"E": _head_E, "F": _head_F, "GDC": _head_GDC, "GAP": _head_GAP}


def _pointwise_conv(nn, add_pointwise_conv, bn_momentum, bn_epsilon):
    """Conv1x1 + BN + ReLU before the head: 512 filters, or half the channels for add_pointwise_conv=-1."""
    filters = nn.shape[-1] // 2 if add_pointwise_conv == -1 else 512
    nn = keras.layers.Conv2D(filters, 1, use_bias=False, name="pw_conv")(nn)
    nn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="pw_bn")(nn)
    return keras.layers.ReLU(name="pw_relu")(nn)


def _set_batchnorm(model, bn_momentum, bn_epsilon):
    for layer in _iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum, layer.epsilon = bn_momentum, bn_epsilon


def buildin_models(
    stem_model,
    dropout=1,
    emb_shape=512,
    input_shape=(112, 112, 3),
    output_layer="GDC",
    bn_momentum=0.99,
    bn_epsilon=0.001,
    add_pointwise_conv=False,
    use_bias=False,
    scale=True,
    weights=None,
    use_prelu=False,
    **kwargs,
):
    """Backbone + embedding head: the basic model, whose last layer is named `embedding`.

    stem_model: a registered name (see `print_buildin_models`, case-insensitive), any
        keras.applications name, or a headless keras.Model whose output is a 4D feature map.
    dropout: rate in (0, 1) applied in the head; 0 or >= 1 means none.
    output_layer: "E" (BN, Dropout, Flatten, Dense), "GDC" (global depthwise conv, BN, Dropout,
        Conv1x1), "F" (Dropout, Flatten, Dense) or "GAP" (BN, GlobalAveragePooling, Dropout, Dense);
        all end with BatchNorm(scale=scale) named `pre_embedding` and a float32 `embedding` layer.
    bn_momentum, bn_epsilon: for the head's BatchNorms; applied to a named backbone's BatchNorms too
        when they differ from the Keras defaults (0.99, 0.001).
    add_pointwise_conv: Conv1x1(512) + BN + ReLU before the head (-1: half the channels).
    use_prelu: every ReLU of the result (backbone and head) becomes a PReLU, see `replace_ReLU_with_PReLU`.
    weights: passed to the backbone builder ("imagenet" where keras.applications offers it).
    kwargs: passed to the backbone builder.

    Usage:
        basic_model = buildin_models("r34", dropout=0.4, emb_shape=512, output_layer="E", bn_momentum=0.9, bn_epsilon=2e-5)
    """
    output_layer = output_layer.upper()
    if output_layer not in EMBEDDING_HEADS:
        raise ValueError(f"buildin_models: output_layer must be one of {sorted(EMBEDDING_HEADS)}, got {output_layer!r}")
    if isinstance(stem_model, str):
        backbone = get_backbone_builder(stem_model)(input_shape=input_shape, weights=weights, **kwargs)
        if (bn_momentum, bn_epsilon) != (0.99, 0.001):
            print(f">>>> Change BatchNormalization momentum and epsilon default value: {bn_momentum}, {bn_epsilon}")
            _set_batchnorm(backbone, bn_momentum, bn_epsilon)
    elif isinstance(stem_model, keras.Model):
        backbone = stem_model
    else:
        raise TypeError(f"buildin_models: stem_model must be a name or a keras.Model, got {type(stem_model).__name__}")
    inputs, nn = backbone.inputs[0], backbone.outputs[0]
    if len(nn.shape) != 4:
        raise ValueError(f"buildin_models: backbone {backbone.name!r} must output a 4D feature map, got shape {nn.shape}")

    if add_pointwise_conv:
        nn = _pointwise_conv(nn, add_pointwise_conv, bn_momentum, bn_epsilon)
    nn = EMBEDDING_HEADS[output_layer](nn, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon)
    # `fix_gamma=True` of MXNet / a frozen gamma of PyTorch is `scale=False` here
    nn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, scale=scale, name="pre_embedding")(nn)
    embedding = keras.layers.Activation("linear", dtype="float32", name="embedding")(nn)
    basic_model = keras.Model(inputs, embedding, name=backbone.name)
    return replace_ReLU_with_PReLU(basic_model) if use_prelu else basic_model


# ---------------------------------------------------------------- model surgery
def _iter_layers(model):
    """Every layer of `model`, descending into nested models (which are yielded too)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        yield layer


def _copy_weights_by_name(source, target):
    """Copy the weights of each `source` layer onto the `target` layer of the same name."""
    source_layers = {layer.name: layer for layer in _iter_layers(source)}
    for layer in _iter_layers(target):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        source_layer = source_layers.get(layer.name)
        if source_layer is not None and len(source_layer.weights) == len(layer.weights):
            layer.set_weights(source_layer.get_weights())
    return target


def _rebuild(model, convert_layer, custom_objects=None):
    """A copy of `model` with every layer replaced by `convert_layer(layer)`, weights copied by layer name."""
    with keras.saving.custom_object_scope(custom_objects or {}):
        new_model = keras.models.clone_model(model, clone_function=convert_layer, recursive=True)
    return _copy_weights_by_name(model, new_model)


KERNEL_REGULARIZER_KEYS = ("kernel_regularizer", "depthwise_regularizer", "pointwise_regularizer")


def add_l2_regularizer_2_model(model, weight_decay, custom_objects={}, apply_to_batch_normal=False, apply_to_bias=False):
    """A copy of `model` with L2(weight_decay / 2) on every kernel, weights unchanged.

    Kernels: Dense / Conv / NormDense `kernel`, DepthwiseConv `depthwise`, SeparableConv both.
    `apply_to_batch_normal` adds it to BatchNorm gamma and beta, `apply_to_bias` to biases.
    The terms show in `model.losses`: sum == weight_decay / 2 * sum of squares.

    Usage:
        basic_model = add_l2_regularizer_2_model(basic_model, 1e-3, apply_to_batch_normal=True)  # L2(5e-4)
    """
    regularizer = keras.regularizers.L2(weight_decay / 2)

    def convert_layer(layer):
        config = layer.get_config()
        keys = [key for key in KERNEL_REGULARIZER_KEYS if key in config]
        if apply_to_bias and config.get("use_bias") and "bias_regularizer" in config:
            keys.append("bias_regularizer")
        if apply_to_batch_normal and isinstance(layer, keras.layers.BatchNormalization):
            keys += ["gamma_regularizer"] if config["scale"] else []
            keys += ["beta_regularizer"] if config["center"] else []
        config.update({key: regularizer for key in keys})
        return layer.__class__.from_config(config)

    return _rebuild(model, convert_layer, custom_objects)


def get_l2_regularizer_value(model):
    """The L2 factor of the first L2-regularized kernel in `model`, or 0.  Usage: l2 = get_l2_regularizer_value(basic_model)"""
    for layer in _iter_layers(model):
        for key in KERNEL_REGULARIZER_KEYS:
            regularizer = getattr(layer, key, None)
            if isinstance(regularizer, (keras.regularizers.L2, keras.regularizers.L1L2)) and float(regularizer.l2) > 0:
                return float(regularizer.l2)
    return 0


def _is_relu(layer):
    if isinstance(layer, keras.layers.ReLU):
        return True
    return isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] in ("relu", "relu6")


def replace_ReLU_with_PReLU(model, target_activation="PReLU", **kwargs):
    """A copy of `model` where every ReLU / ReLU6 layer becomes `target_activation`, other weights kept.

    "PReLU" gives a PReLU sharing its slopes over the spatial axes (`shared_axes=[1, 2]` on 4D
    maps) with slopes starting at 0, so the new model computes what the old one did until trained
    (ReLU6 caps are dropped). Any other value is a Keras activation name (e.g. "swish").
    `kwargs` go to the PReLU layers.

    Usage:
        basic_model = replace_ReLU_with_PReLU(basic_model)
    """
    target_name = target_activation if isinstance(target_activation, str) else "activation"

    def convert_layer(layer):
        if not _is_relu(layer):
            return layer.__class__.from_config(layer.get_config())
        name = layer.name.replace("relu", target_name.lower()) if "relu" in layer.name else layer.name + "_" + target_name.lower()
        if target_name.lower() == "prelu":
            rank = len(layer.output.shape)
            prelu_kwargs = {"alpha_initializer": "zeros", "shared_axes": list(range(1, rank - 1)) or None, **kwargs}
            return keras.layers.PReLU(name=name, **prelu_kwargs)
        return keras.layers.Activation(target_activation, name=name)

    return _rebuild(model, convert_layer)
