"""The common ground of insightface weight conversion: the `Unit` record (one weight-carrying step of a network),
the canonical order both a source network and a Keras model are walked in, and the converter's errors.

Usage:
    from keras_insightface.insightface_units import Unit, canonical_order
    order = canonical_order({"input": [], "conv": ["input"]}, "conv")  # ["input", "conv"]
"""

ARCFACE_TORCH_BN_EPSILON = 1e-5  # every BatchNorm of arcface_torch's IResNet and MobileFaceNet


class WeightsMismatchError(ValueError):
    """A source tensor does not fit the Keras model (another depth, embedding size or network); the message names it."""


class UnsupportedOpError(WeightsMismatchError):
    """The ONNX graph holds an op that none of the converter's Keras layers computes; the message names the node."""


# ---------------------------------------------------------------- source units
class Unit:
    """One weight-carrying (or residual Add) step of a network, in canonical order.

    kind: "conv", "bn", "prelu", "linear" or "add"; name: the tensor / layer name for messages;
    arrays: weight / bias (PyTorch layouts: conv (out, in / groups, kh, kw), linear (out, in)), or
    gamma / beta / mean / var; attrs: strides, pads, group, epsilon where the source says;
    parent: index of the unit whose output this one reads directly (None: another one).
    """

    def __init__(self, kind, name, arrays=None, attrs=None, layer=None):
        self.kind, self.name, self.arrays, self.attrs, self.layer = kind, name, arrays or {}, attrs or {}, layer
        self.parent = None

    def __repr__(self):
        return "Unit({}, {})".format(self.kind, self.name)


def _post_order(parents, output, push_order=None):
    """Nodes reachable from `output`, parents first, iteratively (deep networks exceed the recursion limit);
    `push_order(node)` gives the order a node's parents are pushed on the stack (the last pushed is visited first)."""
    push_order = push_order or (lambda node: parents[node])
    order, done, stack = [], set(), [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if expanded:
            done.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((parent, False) for parent in push_order(node) if parent not in done)
    return order


def canonical_order(parents, output):
    """Nodes in post-order from `output`, visiting the inputs of a merge longest-path-from-the-input first.

    At a residual Add that puts the main branch before the shortcut in any graph of the same network,
    whatever order its builder wrote them in.
    """
    topological = _post_order(parents, output)
    position = {node: index for index, node in enumerate(topological)}
    length = {}
    for node in topological:
        length[node] = 1 + max((length[parent] for parent in parents[node]), default=0)
    return _post_order(parents, output, lambda node: reversed(sorted(parents[node], key=lambda parent: (-length[parent], position[parent]))))


def _link_units(units, unit_of_node, parents, passthrough):
    """Set each unit's `parent`: the unit whose output it reads, through pass-through nodes only."""
    for index, unit in enumerate(units):
        node = unit.node
        data_parents = parents[node]
        if not data_parents:
            continue
        parent = data_parents[0]
        while parent not in unit_of_node and parent in passthrough and parents[parent]:
            parent = parents[parent][0]
        unit.parent = unit_of_node.get(parent)


# ---------------------------------------------------------------- network descriptions
def _mbf_description(scale, block_counts, emb_size, emb_tensor):
    """The description of an arcface_torch MobileFaceNet, as both readers give it: its `mbf.VARIANTS` name or None."""
    from .backbones import mbf

    arch = next((name for name, value in mbf.VARIANTS.items() if value == {"scale": scale, "blocks": block_counts}), None)
    return {"arch": arch, "family": "mbf", "scale": scale, "blocks": block_counts, "emb_size": emb_size, "emb_tensor": emb_tensor}
