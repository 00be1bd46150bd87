"""The backbone registry: each backbone file registers its names where it defines its builders.

A registered builder is called as `builder(input_shape=(112, 112, 3), weights=None, **kwargs)` and
returns a headless keras.Model whose output is a 4D feature map. Names are case-insensitive.
`models.buildin_models` and `models.print_buildin_models` read this registry.

Usage:
    from keras_insightface.backbones import registry
    registry.register("r18", "MXNet version resnet", ResNet18)
    backbone = registry.get_backbone_builder("r18")(input_shape=(112, 112, 3))
    registry.list_models()  # ["efficientnetb0", ..., "r18", ...]
"""
import functools

BUILDIN_MODEL_GROUPS = {}  # group title -> {name: builder}, in registration order
_FALLBACKS = []  # lookups tried, in order, for names that are not registered


def register(registered_name, group, builder, **fixed_kwargs):
    """Register `builder` (a headless-backbone function taking include_top / weights) as `registered_name` in `group`."""

    def headless_builder(input_shape=(112, 112, 3), weights=None, **kwargs):
        family_builder = headless_builder.__wrapped__
        return family_builder(input_shape=input_shape, include_top=False, weights=weights, **fixed_kwargs, **kwargs)

    functools.update_wrapper(headless_builder, builder)  # name, doc and `__wrapped__` of the family's builder
    BUILDIN_MODEL_GROUPS.setdefault(group, {})[registered_name.lower()] = headless_builder
    return builder


def register_fallback(lookup):
    """`lookup(lower_case_name)` returns a builder or None for names no file registered (e.g. keras.applications)."""
    _FALLBACKS.append(lookup)
    return lookup


def list_models():
    """Every registered backbone name, sorted.  Usage: registry.list_models()"""
    return sorted(name for group in BUILDIN_MODEL_GROUPS.values() for name in group)


def get_backbone_builder(name):
    """The builder registered as `name` (case-insensitive), else the first fallback that knows it.

    Usage: backbone = get_backbone_builder("r50")(input_shape=(112, 112, 3))
    """
    key = name.lower()
    for group in BUILDIN_MODEL_GROUPS.values():
        if key in group:
            return group[key]
    for lookup in _FALLBACKS:
        builder = lookup(key)
        if builder is not None:
            return builder
    raise ValueError(
        f"buildin_models: unknown stem_model {name!r}; expected one of {', '.join(list_models())}, or a keras.applications name"
    )
