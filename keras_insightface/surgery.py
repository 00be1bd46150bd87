"""Model surgery: walk nested layers, add L2 regularizers, swap activations, copy weights by layer name, change the
dtype policy (mixed precision).

Usage:
    from keras_insightface import surgery
    basic_model = surgery.add_l2_regularizer_2_model(basic_model, 1e-3, apply_to_batch_normal=True)
    basic_model = surgery.replace_ReLU_with_PReLU(basic_model)
    basic_model = surgery.convert_prelu(basic_model)  # stock Keras PReLU layers -> prelu.PReLU
    basic_model = surgery.mixed_precision_model(basic_model, "mixed_bfloat16")
"""
import keras

from . import prelu


def iter_layers(model):
    """Every layer of `model`, descending into nested models (which are yielded too)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
        yield layer


def _copy_weights_by_name(source, target):
    """Copy the weights of each `source` layer onto the `target` layer of the same name."""
    source_layers = {layer.name: layer for layer in iter_layers(source)}
    for layer in iter_layers(target):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        source_layer = source_layers.get(layer.name)
        if source_layer is not None and len(source_layer.weights) == len(layer.weights):
            layer.set_weights(source_layer.get_weights())
    return target


def _named_input(tensor):
    """A new input tensor like a functional model's `tensor`, its input layer named as the one that made `tensor`."""
    return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor._keras_history.operation.name)


def rebuild(model, convert_layer, custom_objects=None):
    """A copy of `model` with every layer replaced by `convert_layer(layer)`, weights copied by layer name.

    Input layers keep their names too.
    Usage: new_model = rebuild(model, lambda layer: layer.__class__.from_config(layer.get_config()))
    """
    input_tensors = keras.tree.map_structure(_named_input, model.input)
    with keras.saving.custom_object_scope(custom_objects or {}):
        new_model = keras.models.clone_model(model, input_tensors=input_tensors, clone_function=convert_layer, recursive=True)
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

    return rebuild(model, convert_layer, custom_objects)


def get_l2_regularizer_value(model):
    """The L2 factor of the first L2-regularized kernel in `model`, or 0.  Usage: l2 = get_l2_regularizer_value(basic_model)"""
    for layer in iter_layers(model):
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

    "PReLU" gives a `prelu.PReLU` (the stock Keras layer, cheaper to train) sharing its slopes over the spatial
    axes (`shared_axes=[1, 2]` on 4D maps) with slopes starting at 0, so the new model computes what the old
    one did until trained (ReLU6 caps are dropped). Any other value is a Keras activation name (e.g. "swish").
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
            return prelu.PReLU(name=name, **prelu_kwargs)
        return keras.layers.Activation(target_activation, name=name)

    return rebuild(model, convert_layer)


def _swappable_prelu(layer, target):
    """A stock or fused PReLU that is not already `target` (other subclasses are left alone)."""
    return type(layer) in (prelu.PReLU, keras.layers.PReLU) and type(layer) is not target


def convert_prelu(model, fused=True):
    """`model` with each stock Keras PReLU swapped for `prelu.PReLU` (or back, `fused=False`), weights kept.

    The result computes what `model` did and loads the same weight files. A model with nothing to swap is
    returned as is; otherwise it is a copy.

    Usage: basic_model = convert_prelu(keras.models.load_model("old_basic_model.h5"))
    """
    target = prelu.prelu_class(fused)
    if not any(_swappable_prelu(layer, target) for layer in iter_layers(model)):
        return model

    def convert_layer(layer):
        layer_class = target if _swappable_prelu(layer, target) else layer.__class__
        return layer_class.from_config(layer.get_config())

    return rebuild(model, convert_layer)


def set_batchnorm(model, bn_momentum, bn_epsilon):
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum, layer.epsilon = bn_momentum, bn_epsilon


def add_input_normalization(model, mean, std):
    """`model` with a `face_io.InputNormalization(mean, std)` layer right after its input, weights kept.

    The layer is an identity that records the `(x - mean) / std` the model expects, so evals, IJB_evals,
    the distiller and export feed it that normalization without flags. A model that has one gets its
    values updated in place.
    Usage: basic_model = add_input_normalization(basic_model, *face_io.INSIGHTFACE_NORM)
    """
    from .face_io import InputNormalization

    for layer in iter_layers(model):
        if isinstance(layer, InputNormalization):
            layer.mean, layer.std = float(mean), float(std)
            return model
    if len(model.inputs) != 1:
        raise ValueError(f"add_input_normalization: {model.name!r} has {len(model.inputs)} inputs, expected one")
    normalized = {}

    def call_function(layer, *args, **kwargs):
        def swap(value):
            history = getattr(value, "_keras_history", None)
            if history is not None and isinstance(history.operation, keras.layers.InputLayer):
                if id(value) not in normalized:
                    normalized[id(value)] = InputNormalization(mean, std)(value)
                return normalized[id(value)]
            return value

        args, kwargs = keras.tree.map_structure(swap, (args, kwargs))
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(model, call_function=call_function)
    return _copy_weights_by_name(model, new_model)


MIXED_PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def model_compute_policy(model):
    """The dtype policy name most weighted layers of `model` compute in ("float32", "mixed_bfloat16", ...).

    Usage: surgery.model_compute_policy(basic_model)  # "mixed_bfloat16" for a basic model built under that policy
    """
    names = [layer.dtype_policy.name for layer in iter_layers(model) if layer.weights and not isinstance(layer, keras.Model)]
    return max(set(names), key=names.count) if names else "float32"


def mixed_precision_model(model, policy, layer_names=None):
    """A copy of `model` (weights kept) whose layers in `layer_names` compute in `policy`; others keep theirs.

    `layer_names` defaults to every layer but `embedding`, which stays float32 so a basic model takes float32 input
    and gives float32 embeddings; heads (NormDense, softmax) are left out by the caller. Returns `model` itself when
    those layers already use `policy`.
    Usage: basic_model = surgery.mixed_precision_model(basic_model, "mixed_bfloat16")
    """
    if policy not in MIXED_PRECISION_POLICIES:
        raise ValueError("mixed_precision must be one of {}, got {!r}".format(MIXED_PRECISION_POLICIES, policy))
    if layer_names is None:
        layer_names = {layer.name for layer in iter_layers(model) if layer.name != "embedding"}
    layer_names = {name for name in layer_names if name != "embedding"}
    converted = [layer for layer in iter_layers(model) if layer.name in layer_names and not isinstance(layer, (keras.Model, keras.layers.InputLayer))]
    if all(layer.dtype_policy.name == policy for layer in converted):
        return model

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in layer_names:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone
