#!/usr/bin/env python3
"""Start from insightface's trained weights: arcface_torch `backbone.pth` state dicts and insightface ONNX
recognition models (e.g. `w600k_r50.onnx`) become Keras basic models that embed a face to the same vector.

Sources and the networks they convert into (`models.buildin_models` names):
| source                                   | network                         | Keras basic model                                   |
| ---------------------------------------- | ------------------------------- | --------------------------------------------------- |
| arcface_torch r18/r34/r50/r100/r200 .pth | IResNet (iresnet.py)            | `r18` ... `r200` (built with PReLU, = `iresnet18` ...), output_layer="E", use_bias=True |
| arcface_torch mbf / mbf_large .pth       | MobileFaceNet (mobilefacenet.py)| `mbf` / `mbf_large`, output_layer="GDC", use_bias=False |
| insightface ONNX of either (model zoo)   | the same, read from the graph   | the same                                            |

The converted model takes the source's normalized input, `(x - 127.5) / 127.5` of RGB pixels for arcface_torch
(or what the ONNX graph's leading Sub / Mul nodes do), in NHWC; that normalization is stored in the model as a
`face_io.InputNormalization` layer after the input, so evals, IJB_evals, the distiller and export use it.
BatchNorm epsilon comes from the source (1e-5 in arcface_torch). ONNX exports fold each Conv's BatchNorm into
the Conv: the Keras BatchNorm after such a conv becomes the identity plus the conv's bias.

The reading and loading are library modules, whose names are reachable here too: `insightface_pth.py` and
`insightface_onnx.py` read the two sources, `insightface_weights.py` pairs and assigns the tensors (what
`models.buildin_models(weights=...)` uses), `insightface_models.py` builds the network a file holds
(`build_from_insightface`). This module is the command line and the parity check against the ONNX source.

Usage:
    from keras_insightface import models, convert_insightface
    basic_model = models.buildin_models("r100", dropout=0, emb_shape=512, output_layer="E", use_bias=True, weights="backbone.pth")
    basic_model = convert_insightface.build_from_insightface("w600k_r50.onnx")  # network read from the file
CLI:
    python convert_insightface.py -i backbone.pth -o r100_glint360k.keras   # an existing output is kept unless --overwrite
"""
import argparse
import os
import sys

import numpy as np

from . import cli, io_utils
from .insightface_models import build_from_insightface
from .insightface_onnx import (  # noqa: F401  (convert_insightface.<name> as before the split: the same objects)
    INPUT_AFFINE_OPS, ONNX_EXTENSIONS, PASSTHROUGH_OPS, describe_units, read_onnx,
)
from .insightface_pth import PTH_EXTENSIONS, STATE_DICT_KEYS, describe_state_dict, read_state_dict, state_dict_units  # noqa: F401
from .insightface_units import ARCFACE_TORCH_BN_EPSILON, Unit, UnsupportedOpError, WeightsMismatchError, canonical_order  # noqa: F401
from .insightface_weights import (  # noqa: F401
    HEAD_HINT, HEAD_LAYER_PREFIXES, SOURCE_EXTENSIONS, assign_units, is_insightface_weights, keras_units, load_insightface_weights,
    read_source,
)

SCRIPT = "convert_insightface.py"
OUTPUT_EXTENSIONS = (".keras", ".h5")


# ---------------------------------------------------------------- parity and the CLI
def compare_with_onnx(model, onnx_path, num_images=8, seed=0):
    """(max abs difference, min cosine) of the Keras and the ONNX model's embeddings on random uint8 faces.

    The ONNX model gets NCHW input normalized as the Keras model's InputNormalization says (raw pixels when
    the graph normalizes itself). Usage: max_diff, min_cos = compare_with_onnx(basic_model, "w600k_r50.onnx")
    """
    import onnxruntime as ort

    from . import face_io, parity

    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    images = parity.synthetic_images(num_images, tuple(model.inputs[0].shape[1:3]), seed=seed)
    _, _, graph_norm, _ = read_onnx(onnx_path)
    feed = face_io.normalize(images, (0.0, 1.0) if graph_norm else face_io.model_normalization(model)).transpose(0, 3, 1, 2)
    theirs = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(feed)})[0].reshape(num_images, -1)
    ours = parity.keras_embeddings(model, images)
    return float(np.abs(ours - theirs).max()), float(parity.cosine_similarities(ours, theirs).min())


def _check_output(input_path, output_path, overwrite):
    """The output path (default `<input>.keras` beside the input): a `.keras` / `.h5` file name, not a directory, and
    not an existing file unless `overwrite`."""
    output_path = os.fspath(output_path or os.path.splitext(input_path)[0] + ".keras")
    cli.check_output_file(output_path, overwrite)
    if not output_path.endswith(OUTPUT_EXTENSIONS):
        raise ValueError("{}: expected an output ending with .keras or .h5".format(output_path))
    return output_path


def convert(input_path, output_path=None, name=None, emb_shape=None, bn_momentum=0.9, num_parity_images=8, overwrite=False):
    """Convert an arcface_torch `.pth` / insightface `.onnx` into a saved Keras basic model (`.keras` / `.h5`).

    ONNX sources are compared with onnxruntime (when installed) on `num_parity_images` random faces before anything
    is written: min cosine >= 0.9999 or nothing is written. An existing output is kept (FileExistsError, checked before
    the source is read) unless `overwrite`. Returns the output path.
    Usage: convert("backbone.pth", "r100.keras")
    """
    from . import face_io, parity

    input_path = os.fspath(input_path)
    cli.check_number("bn_momentum", bn_momentum, minimum=0, maximum=1)
    cli.check_number("num_parity_images", num_parity_images, minimum=0)
    output_path = _check_output(input_path, output_path, overwrite)
    model = build_from_insightface(input_path, name=name, emb_shape=emb_shape, bn_momentum=bn_momentum)
    print(">>>> Converted {} into {} ({} parameters), input normalization (x - {}) / {}".format(
        input_path, model.name, model.count_params(), *face_io.model_normalization(model)))
    if input_path.lower().endswith(ONNX_EXTENSIONS) and num_parity_images:
        try:
            max_diff, min_cos = compare_with_onnx(model, input_path, num_parity_images)
        except ImportError:
            print(">>>> onnxruntime is not installed: parity with the ONNX model not checked")
        else:
            print(">>>> Parity with {} on {} random faces: max abs difference {:.3g}, cosine min {:.7f}".format(
                os.path.basename(input_path), num_parity_images, max_diff, min_cos))
            if not min_cos >= parity.PARITY_THRESHOLDS["onnx"]:
                raise parity.ParityError("{}: min cosine {:.6f} against the ONNX model; nothing was written".format(input_path, min_cos))
    with io_utils.atomic_path(output_path) as tmp:
        model.save(tmp)
    print(">>>> Saved:", output_path)
    return output_path


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog=cli.prog_name(SCRIPT),
        description="Convert insightface weights (arcface_torch backbone.pth, insightface ONNX recognition model) into a Keras basic model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-i", "--input", required=True, help="arcface_torch state dict (.pth / .pt) or insightface ONNX model (.onnx)")
    parser.add_argument("-o", "--output", default=None, help="Keras basic model to write (.keras / .h5), default beside the input: <input>.keras")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file (else it is kept and nothing is done)")
    parser.add_argument("-n", "--name", default=None, help="network name (r18 ... r200, mbf, mbf_large), default read from the file")
    parser.add_argument("--bn_momentum", type=float, default=0.9, help="BatchNorm momentum for fine-tuning (arcface_torch: 0.9)")
    parser.add_argument("--num_parity_images", type=int, default=8, help="random faces for the ONNX parity check (0: none)")
    return parser.parse_args(argv)


def main(argv=None):
    """The command line of convert_insightface.py (console script keras-insightface-convert-insightface)."""
    args = parse_arguments(argv)
    return cli.run(SCRIPT, convert, args.input, args.output, args.name, None, args.bn_momentum, args.num_parity_images, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
