#!/usr/bin/env python3
"""IJB-B / IJB-C evaluation: 1:1 verification (TAR@FAR) and 1:N identification, on the insightface `IJB_release` layout.

Pipeline: `loose_crop` images + 5 landmarks -> similarity-aligned 112x112 faces -> embeddings (and of
the flipped faces) -> image features by scenario N{0,1}D{0,1}F{0,1} -> media means -> template sums,
L2-normalized -> cosine of template pairs -> TAR at FAR 1e-6 .. 1e-1; 1:N top-k and TPIR@FPIR.

Usage:
    python IJB_evals.py -m checkpoints/basic_model.h5 -d /media/SD/IJB_release -L
    python IJB_evals.py -R IJB_result/basic_model_h5_IJBB.npz -d /media/SD/IJB_release -B
    python IJB_evals.py --plot_only IJB_result/*.npy IJB_result/IJBB_label.npz

The meta files are read by `ijb_meta.py`, the scoring is `ijb_metrics.py`; their names are reachable here too
(`IJB_evals.read_ijb_meta`, `IJB_evals.tar_at_far`, ...). This module is the command line, the embedding of the
aligned faces, result files and plots.
"""
import argparse
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import cli, face_io
from .face_align import align_face
from .ijb_meta import (  # noqa: F401  (IJB_evals.<name> as before ijb_meta.py held them: the same objects)
    _INT, SUBSET_FILES, IJBMeta, meta_paths, read_1n_meta, read_csv_columns, read_ijb_meta, read_meta_table,
)
from .ijb_metrics import (  # noqa: F401  (IJB_evals.<name> as before ijb_metrics.py held them: the same objects)
    ALL_SCENARIOS, DEFAULT_SCENARIO, FARS, FPIRS, TAR_RULES, TOP_K, aggregation_matrix, evaluate_1n, evaluate_scenarios, image_features,
    image_scales, one_n_table, pair_cosine, parse_scenario, positions, roc_curve_points, roc_upper_points, scenario_template_features,
    score_pairs, tar_at_far, tar_far_table, template_features,
)
from .io_utils import atomic_path, atomic_write_text


# ------------------------------------------------------------------------------------------------ alignment and embeddings
def load_aligned_face(path, landmark):
    """Read an image file as RGB and align it.  Usage: face = load_aligned_face("loose_crop/1.jpg", lmk)"""
    image = face_io.read_image(path)
    try:
        return align_face(image, landmark)
    except ValueError as error:
        raise ValueError("{}: {}".format(path, error)) from None


def embed_images(model_interf, image_paths, landmarks, batch_size=64, flip=True, workers=4):
    """Embed aligned faces in batches (tqdm), reading the next batch while the model runs.

    Returns (embs, embs_f) float32 [N, D]; embs_f is an empty [0, D] array when `flip` is False.
    Usage: embs, embs_f = embed_images(load_model_interf("model.h5"), paths, meta.landmarks)
    """
    from tqdm import tqdm

    starts = range(0, len(image_paths), batch_size)
    embs, embs_f = None, None
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(start):
            return pool.map(load_aligned_face, image_paths[start : start + batch_size], landmarks[start : start + batch_size])

        pending = submit(0)
        for start in tqdm(starts, "Embedding", unit="batch"):
            faces = np.stack(list(pending))
            if start + batch_size < len(image_paths):
                pending = submit(start + batch_size)
            batch_embs = model_interf(faces)
            if embs is None:
                embs = np.empty([len(image_paths), batch_embs.shape[1]], dtype="float32")
                embs_f = np.empty([len(image_paths) if flip else 0, batch_embs.shape[1]], dtype="float32")
            embs[start : start + len(faces)] = batch_embs
            if flip:
                embs_f[start : start + len(faces)] = model_interf(faces[:, :, ::-1])
    return embs, embs_f


# ------------------------------------------------------------------------------------------------ files and plots
def read_label_file(path):
    """Pair labels from `-L`'s `<subset>_label.npz`, an older `.npy`, or a pair-label text file (t1 t2 label).

    Usage: label = read_label_file("IJB_result/IJBB_label.npz")
    """
    if path.endswith(".npz"):
        with _open_npz(path, "label") as data:
            return data["label"]
    if path.endswith(".npy"):
        return np.load(path)
    return read_meta_table(path, {"t1": _INT, "t2": _INT, "label": _INT})["label"].to_numpy()


def roc_points(label, scores, num=400, far_range=(1e-6, 1.0)):
    """(far grid, tar) on a log-spaced FAR grid, few enough points to plot 15M pairs.  Usage: far, tar = roc_points(l, s)"""
    fars = np.logspace(np.log10(far_range[0]), np.log10(far_range[1]), num)
    return fars, tar_at_far(label, scores, fars, rule="interpolate")


def plot_roc_curves(named_scores, label, save_path):
    """Draw the ROC curves of several runs into one PNG with a log FAR axis.  Usage: plot_roc_curves({"a": s}, label, "roc.png")"""
    backend_agg = cli.require("matplotlib.backends.backend_agg", "plot", "ROC plots ({})".format(save_path))
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6))
    backend_agg.FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    for name, scores in named_scores.items():
        fars, tars = roc_points(label, scores)
        tar_1e4 = tar_at_far(label, scores, [1e-4])[0]
        axis.plot(fars, tars, label="{} (TAR@FAR=1e-4: {:.2f}%)".format(name, tar_1e4 * 100))
    axis.set(xscale="log", xlim=(1e-6, 1.0), xlabel="False Acceptance Rate", ylabel="True Acceptance Rate", title="ROC")
    axis.grid(True, which="both", linestyle=":")
    axis.legend(loc="lower right")
    with atomic_path(save_path) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight")
    print(">>>> Saved ROC plot: {}".format(save_path))
    return save_path


def plot_only(files, save_path=None, rule="nearest"):
    """`--plot_only score.npy ... label.(npy|txt)`: print the TAR table and plot the curves.  Usage: plot_only(["a.npy", "label.npy"])"""
    if len(files) < 2:
        raise ValueError("--plot_only needs one or more score .npy files followed by a label .npy / .txt file")
    *score_files, label_file = files
    label = read_label_file(label_file)
    named_scores = {}
    for path in score_files:
        scores = np.load(path)
        if len(scores) != len(label):
            raise ValueError("{}: {} scores, but {} has {} labels".format(path, len(scores), label_file, len(label)))
        named_scores[os.path.splitext(os.path.basename(path))[0]] = scores
    table = tar_far_table(named_scores, label, rule=rule)
    print(table.to_string(float_format="{:.4f}".format))
    save_path = save_path or os.path.join(os.path.dirname(os.path.abspath(score_files[0])), "roc.png")
    plot_roc_curves(named_scores, label, save_path)
    return table


def save_npy(path, array):
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def save_labels(path, label):
    """-L: the pair labels as `<subset>_label.npz`, which a `*.npy` glob of score files leaves out."""
    with atomic_path(path) as tmp:
        np.savez(tmp, label=label)
    print(">>>> Saved labels: {}".format(path))


def save_table(path, table):
    atomic_write_text(path, table.to_csv())
    print(">>>> Saved table: {}".format(path))


_EMBEDDING_META_KEYS = ("templates", "medias", "face_scores", "p1", "p2", "label")


def save_embeddings(path, embs, embs_f, meta, subset):
    """-E: embeddings with the meta needed to rescore without the dataset, and the subset they belong to.

    Usage: save_embeddings("IJB_result/model_h5_IJBB.npz", embs, embs_f, meta, "IJBB")
    """
    with atomic_path(path) as tmp:
        np.savez(tmp, embs=embs, embs_f=embs_f, img_names=meta.img_names, subset=np.array(subset),
                 **{key: getattr(meta, key) for key in _EMBEDDING_META_KEYS})
    print(">>>> Saved embeddings: {}".format(path))


def _open_npz(path, expected_key):
    """np.load of an `.npz` holding `expected_key`; a missing file, another format or key is a named error."""
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no such file".format(path))
    if not zipfile.is_zipfile(path):
        raise ValueError("{}: not an .npz file (expected one saved by IJB_evals.py)".format(path))
    data = np.load(path, allow_pickle=False)
    if expected_key not in data:
        data.close()
        raise ValueError("{}: no '{}' array; expected a file saved by IJB_evals.py".format(path, expected_key))
    return data


def saved_subset(path):
    """The subset a `-E` file was saved from, or None for files that do not record it.  Usage: saved_subset(p) -> "IJBC" """
    with _open_npz(path, "embs") as data:
        return str(data["subset"]) if "subset" in data else None


def check_finite(embs, embs_f, source):
    """Refuse NaN / inf embeddings, which would make every TAR 0 without a word.  Usage: check_finite(embs, embs_f, "model.h5")"""
    for name, array in (("embs", embs), ("flipped embs", embs_f)):
        bad = ~np.isfinite(array).all(axis=1) if len(array) else np.zeros(0, bool)
        if bad.any():
            raise ValueError("{}: {} of {} {} rows hold NaN or inf (first: row {})".format(source, int(bad.sum()), len(array), name, int(np.argmax(bad))))


def load_embeddings(path, meta=None):
    """-R: (embs, embs_f, meta); meta comes from the npz when not given.  Usage: embs, embs_f, meta = load_embeddings(p)"""
    with _open_npz(path, "embs") as data:
        embs = data["embs"].astype("float32", copy=False)
        embs_f = data["embs_f"].astype("float32", copy=False) if "embs_f" in data else np.zeros([0, embs.shape[1]], "float32")
        if meta is None:
            missing = [key for key in _EMBEDDING_META_KEYS if key not in data]
            if missing:
                raise ValueError("{}: lacks {}; pass -d IJB_RELEASE_DIR to read the meta files".format(path, missing))
            names = data["img_names"] if "img_names" in data else np.arange(len(embs)).astype(str)
            meta = IJBMeta(img_names=names, landmarks=np.zeros([len(embs), 5, 2], "float32"), **{key: data[key] for key in _EMBEDDING_META_KEYS})
    for name, array in (("embs", embs), ("embs_f", embs_f)):
        if len(array) not in ((len(meta.templates),) if name == "embs" else (0, len(meta.templates))):
            raise ValueError("{}: '{}' has {} rows but the meta lists {} images".format(path, name, len(array), len(meta.templates)))
    check_finite(embs, embs_f, path)
    return embs, embs_f, meta


# ------------------------------------------------------------------------------------------------ evaluation run
def model_result_name(model_file):
    """Result files' model part: the model name and its format, so that `model.h5` and `model.onnx` differ.

    Usage: model_result_name("checkpoints/basic_model.h5") -> "basic_model_h5"; "r100/model,0" -> "r100_mxnet"
    """
    from .model_interf import model_name

    model_file = os.fspath(model_file)
    extension = os.path.splitext(model_file)[1]
    is_mxnet = "," in os.path.basename(model_file) and not os.path.exists(model_file)
    kind = "mxnet" if is_mxnet or not extension else extension[1:].lower()
    return "{}_{}".format(model_name(model_file), kind)


def _result_base(args):
    if args.restore_embs:
        stem = os.path.splitext(os.path.basename(args.restore_embs))[0]
        return stem[: -len(args.subset) - 1] if stem.endswith("_" + args.subset) else stem
    return model_result_name(args.model_file)


def resolve_subset(args):
    """The subset to score: `-s`, else the one a `-R` file was saved from, else IJBB; a `-R` file of another
    subset than `-s` is an error.  Usage: args.subset = resolve_subset(args)"""
    saved = saved_subset(args.restore_embs) if args.restore_embs else None
    if saved and args.subset and saved != args.subset:
        raise ValueError("{}: embeddings of {}, but -s {} was asked; pass -s {} or embed {} with -m".format(
            args.restore_embs, saved, args.subset, saved, args.subset))
    return args.subset or saved or "IJBB"


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description="IJB-B / IJB-C 1:1 verification and 1:N identification of a face model.",
        epilog="Scenarios: N1 keeps each image embedding's norm as a weight (N0 normalizes first), D1 multiplies by the "
        "detector score, F1 adds the embedding of the flipped face.",
    )
    parser.add_argument("-m", "--model_file", help="model: Keras .h5 / .keras, ONNX .onnx, TorchScript .pt, or MXNet 'prefix,epoch'")
    parser.add_argument("-d", "--data_path", help="IJB_release folder holding IJBB/ and IJBC/ (meta/ and loose_crop/)")
    parser.add_argument("-s", "--subset", default=None, choices=sorted(SUBSET_FILES), help="dataset subset (default IJBB, or the -R file's)")
    parser.add_argument("-b", "--batch_size", type=int, default=64, help="images per model call (default 64)")
    parser.add_argument("-o", "--save_result", default=None, help="result folder; default IJB_result, or the -R file's folder")
    parser.add_argument("-L", "--save_label", action="store_true", help="save the pair labels as <subset>_label.npz for --plot_only")
    parser.add_argument("-B", "--is_bunch", action="store_true", help="run all 8 scenarios N{0,1}D{0,1}F{0,1}, not only N0D1F1")
    parser.add_argument("-N", "--is_one_2_N", action="store_true", help="also run 1:N identification (top-1/5/10, TPIR@FPIR)")
    parser.add_argument("-E", "--save_embeddings", action="store_true", help="save embeddings and meta as <model>_<format>_<subset>.npz")
    parser.add_argument("-R", "--restore_embs", default=None, help="restore embeddings saved by -E (skips the model)")
    parser.add_argument("-F", "--no_flip", action="store_true", help="do not embed flipped faces (halves the time; F0 scenarios only)")
    parser.add_argument("--mean", type=float, default=None, help="input normalization (x - mean) / std; default by model type")
    parser.add_argument("--std", type=float, default=None, help="input normalization (x - mean) / std; default by model type")
    parser.add_argument("--workers", type=int, default=4, help="threads reading and aligning images (default 4)")
    parser.add_argument(
        "--plot_only", nargs="+", default=None, metavar="FILE",
        help="score .npy files then a label file (.npz from -L, or the pair label .txt): print TARs, plot ROC curves",
    )
    parser.add_argument(
        "--interpolate_far", dest="tar_rule", action="store_const", const="interpolate", default="nearest",
        help="read TAR@FAR by linear interpolation of the ROC curve; default: the ROC point nearest each FAR, as insightface",
    )
    parser.add_argument("--plot_save", default=None, help="PNG path for --plot_only; default roc.png beside the first score file")
    args = parser.parse_args(argv)
    if args.plot_only is None and not (args.model_file or args.restore_embs):
        parser.error("one of -m MODEL, -R EMBS.npz or --plot_only is required")
    if args.plot_only is None and args.data_path is None and (args.model_file and not args.restore_embs or args.is_one_2_N):
        parser.error("-d IJB_RELEASE_DIR is required to embed images and for 1:N")
    return args


def run(args):
    """Run the evaluation described by parsed arguments; returns (TAR table, 1:N table or None)."""
    if args.plot_only is not None:
        return plot_only(args.plot_only, args.plot_save, args.tar_rule), None
    args.subset = resolve_subset(args)
    meta = read_ijb_meta(args.data_path, args.subset, check_images=not args.restore_embs) if args.data_path else None
    one_n_sets = read_1n_meta(args.data_path, args.subset, meta.templates) if args.is_one_2_N else None
    save_dir = args.save_result or (os.path.dirname(os.path.abspath(args.restore_embs)) if args.restore_embs else "IJB_result")
    base = "{}_{}".format(_result_base(args), args.subset)

    if args.restore_embs:
        embs, embs_f, meta = load_embeddings(args.restore_embs, meta)
    else:
        from .model_interf import load_model_interf

        interf = load_model_interf(args.model_file, mean=args.mean, std=args.std, batch_size=args.batch_size)
        print(">>>> Embedding {} images with {}".format(len(meta.img_names), interf))
        image_paths = [os.path.join(meta_paths(args.data_path, args.subset)["images"], name) for name in meta.img_names]
        embs, embs_f = embed_images(interf, image_paths, meta.landmarks, args.batch_size, flip=not args.no_flip, workers=args.workers)
        check_finite(embs, embs_f, args.model_file)
    if args.save_embeddings:
        save_embeddings(os.path.join(save_dir, base + ".npz"), embs, embs_f, meta, args.subset)

    scenarios = ALL_SCENARIOS if args.is_bunch else (DEFAULT_SCENARIO,)
    if len(embs_f) == 0:
        scenarios = tuple(dict.fromkeys(name[:-1] + "0" for name in scenarios))
        print(">>>> No flipped embeddings: running {}".format(", ".join(scenarios)))
    all_scores, all_1n = evaluate_scenarios(embs, embs_f, meta, scenarios, one_n_sets)
    score_paths = [os.path.join(save_dir, "{}_{}.npy".format(base, scenario)) for scenario in all_scores]
    for path, scores in zip(score_paths, all_scores.values()):
        save_npy(path, scores)
    print(">>>> Saved scores: {}".format(", ".join(score_paths)))
    if args.save_label:
        save_labels(os.path.join(save_dir, args.subset + "_label.npz"), meta.label)

    named_scores = {"{}_{}".format(base, scenario): scores for scenario, scores in all_scores.items()}
    table = tar_far_table(named_scores, meta.label, rule=args.tar_rule)
    print(table.to_string(float_format="{:.4f}".format))
    save_table(os.path.join(save_dir, base + ".csv"), table)
    table_1n = None
    if one_n_sets:
        table_1n = one_n_table(all_1n)
        print(table_1n.to_string(float_format="{:.4f}".format))
        save_table(os.path.join(save_dir, base + "_1N.csv"), table_1n)
    return table, table_1n


def main(argv=None):
    """CLI entry point.  Usage: main(["-m", "model.h5", "-d", "/data/IJB_release", "-s", "IJBC"])"""
    return cli.run("IJB_evals.py", run, parse_arguments(argv))


if __name__ == "__main__":
    sys.exit(main())
