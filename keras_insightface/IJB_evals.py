#!/usr/bin/env python3
"""IJB-B / IJB-C evaluation: 1:1 verification (TAR@FAR) and 1:N identification, on the insightface `IJB_release` layout.

Pipeline: `loose_crop` images + 5 landmarks -> similarity-aligned 112x112 faces -> embeddings (and of
the flipped faces) -> image features by scenario N{0,1}D{0,1}F{0,1} -> media means -> template sums,
L2-normalized -> cosine of template pairs -> TAR at FAR 1e-6 .. 1e-1; 1:N top-k and TPIR@FPIR.

Usage:
    python IJB_evals.py -m checkpoints/basic_model.h5 -d /media/SD/IJB_release -L
    python IJB_evals.py -R IJB_result/basic_model_h5_IJBB.npz -d /media/SD/IJB_release -B
    python IJB_evals.py --plot_only IJB_result/*.npy IJB_result/IJBB_label.npz

Result names carry the model and its format, the subset and the scenario set; an existing result is kept unless
`--overwrite` is given (a file that would get exactly the content it holds is left as it is).

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
    _INT, SUBSET_FILES, IJBMeta, check_meta, meta_paths, read_1n_meta, read_csv_columns, read_ijb_meta, read_meta_table,
)
from .ijb_metrics import (  # noqa: F401  (IJB_evals.<name> as before ijb_metrics.py held them: the same objects)
    ALL_SCENARIOS, DEFAULT_SCENARIO, FARS, FPIRS, TAR_RULES, TOP_K, aggregation_matrix, check_embeddings, evaluate_1n, evaluate_scenarios,
    image_features, image_scales, one_n_table, pair_cosine, parse_scenario, positions, roc_curve_points, roc_upper_points,
    scenario_template_features, score_pairs, tar_at_far, tar_far_table, template_features,
)
from .io_utils import atomic_path, name_of_several


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
    """Pair labels (0 / 1, both present) from `-L`'s `<subset>_label.npz`, an older `.npy`, or the pair label text
    file (t1 t2 label).  Usage: label = read_label_file("IJB_result/IJBB_label.npz")
    """
    if path.endswith(".npz"):
        with _open_npz(path, "label") as data:
            label = data["label"]
    elif path.endswith(".npy"):
        label = _load_npy(path, "labels")
    else:
        label = read_meta_table(path, {"t1": _INT, "t2": _INT, "label": _INT})["label"].to_numpy()
    if label.ndim != 1 or not np.isin(label, (0, 1)).all() or label.all() or not label.any():
        raise ValueError("{}: expected pair labels, 0 and 1 both present, one per pair; got {} of shape {}".format(
            path, ", ".join(str(value) for value in np.unique(label)[:5]), label.shape))
    return label


def _load_npy(path, what):
    """A 1-D numeric array from a `.npy` file; another file or shape is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no such {} file".format(path, what))
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError("{}: not a .npy file of {} ({})".format(path, what, str(error).split("\n")[0])) from None
    if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype.kind not in "biuf":
        raise ValueError("{}: expected a 1-D array of {}, got {}".format(path, what, getattr(array, "shape", type(array).__name__)))
    return array


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


def roc_plot_path(score_files):
    """`--plot_only`'s default figure: beside the first score file, named after the score files it draws.

    Usage: roc_plot_path(["r/a_IJBB_N0D1F1.npy"]) -> "r/a_IJBB_N0D1F1_roc.png"; several: "r/a_..._vs_b_..._roc.png"
    """
    stems = [os.path.splitext(os.path.basename(path))[0] for path in score_files]
    return os.path.join(os.path.dirname(os.path.abspath(score_files[0])), name_of_several(stems) + "_roc.png")


def plot_only(files, save_path=None, rule="nearest", overwrite=False):
    """`--plot_only score.npy ... label`: print the TAR table and plot the curves; the label file is the `.npz` saved by
    `-L` (or an older `.npy`), or the pair label `.txt`.  Usage: plot_only(["a.npy", "IJBB_label.npz"])
    """
    if len(files) < 2:
        raise ValueError("--plot_only needs one or more score .npy files followed by a label file (the .npz saved by -L, "
                         "or the pair label .txt)")
    *score_files, label_file = files
    save_path = cli.check_output_file(save_path or roc_plot_path(score_files), overwrite, "ROC plot")
    label = read_label_file(label_file)
    named_scores = {}
    for path in score_files:
        scores = _load_npy(path, "pair scores")
        if len(scores) != len(label):
            raise ValueError("{}: {} scores, but {} has {} labels".format(path, len(scores), label_file, len(label)))
        if not np.isfinite(scores).all():
            raise ValueError("{}: {} of {} scores are NaN or inf".format(path, int((~np.isfinite(scores)).sum()), len(scores)))
        named_scores[os.path.splitext(os.path.basename(path))[0]] = scores
    table = tar_far_table(named_scores, label, rule=rule)
    print(table.to_string(float_format="{:.4f}".format))
    plot_roc_curves(named_scores, label, save_path)
    return table


# ------------------------------------------------------------------------------------------------ result files
_EMBEDDING_META_KEYS = ("templates", "medias", "face_scores", "p1", "p2", "label")


def embeddings_content(embs, embs_f, meta, subset):
    """-E's arrays: embeddings with the meta needed to rescore without the dataset, and their subset.

    Usage: np.savez("m_h5_IJBB.npz", **embeddings_content(embs, embs_f, meta, "IJBB"))
    """
    return dict(embs=embs, embs_f=embs_f, img_names=meta.img_names, subset=np.array(subset),
                **{key: getattr(meta, key) for key in _EMBEDDING_META_KEYS})


def save_embeddings(path, embs, embs_f, meta, subset, overwrite=False):
    """-E: save embeddings and meta (`embeddings_content`).  Usage: save_embeddings("IJB_result/m_h5_IJBB.npz", embs, embs_f, meta, "IJBB")"""
    save_results([(path, embeddings_content(embs, embs_f, meta, subset), "embeddings")], overwrite)


def scenario_set_name(scenarios):
    """A table's name part for the scenarios it holds: the scenario, `bunch` (all 8), `bunch_F0` (the 4 without flip).

    Usage: scenario_set_name(("N0D1F1",)) -> "N0D1F1"; scenario_set_name(ALL_SCENARIOS) -> "bunch"
    """
    if len(scenarios) == 1:
        return scenarios[0]
    if set(scenarios) == set(ALL_SCENARIOS):
        return "bunch"
    if set(scenarios) == {name for name in ALL_SCENARIOS if name.endswith("F0")}:
        return "bunch_F0"
    return "-".join(scenarios)


def result_paths(save_dir, base, scenarios, args):
    """Every file a run writes, named by model and format, subset (`base`), scenario set and TAR rule; None: not asked.

    Usage: paths = result_paths("IJB_result", "m_h5_IJBB", ("N0D1F1",), args); paths["table"] -> "IJB_result/m_h5_IJBB_N0D1F1.csv"
    """
    table = "{}_{}{}".format(base, scenario_set_name(scenarios), "_interpolated" if args.tar_rule == "interpolate" else "")
    return {
        "embeddings": os.path.join(save_dir, base + ".npz") if args.save_embeddings else None,
        "scores": {scenario: os.path.join(save_dir, "{}_{}.npy".format(base, scenario)) for scenario in scenarios},
        "labels": os.path.join(save_dir, args.subset + "_label.npz") if args.save_label else None,
        "table": os.path.join(save_dir, table + ".csv"),
        "1:N table": os.path.join(save_dir, "{}_{}_1N.csv".format(base, scenario_set_name(scenarios))) if args.is_one_2_N else None,
    }


def _all_paths(paths):
    for value in paths.values():
        yield from (value.values() if isinstance(value, dict) else [value] if value else [])


def check_result_paths(paths, overwrite, refuse_existing):
    """Before any work: no result path may be a folder; with `refuse_existing` (a run embedding with the model, whose
    results differ from an earlier run's) none of the model's results may exist unless `overwrite`. The labels, and
    every result of a `-R` run, are compared with the existing file when written (`save_results`).
    Usage: check_result_paths(result_paths(save_dir, base, scenarios, args), args.overwrite, refuse_existing=True)
    """
    for path in _all_paths(paths):
        if os.path.isdir(path):
            raise IsADirectoryError("{}: is a directory, a result file was expected".format(path))
        if refuse_existing and path != paths["labels"] and os.path.exists(path) and not overwrite:
            raise FileExistsError("{}: already exists; it is kept (pass --overwrite to replace it, or -R with the embeddings "
                                  "saved by -E to rescore them)".format(path))


def _equal_arrays(first, second):
    first, second = np.asarray(first), np.asarray(second)
    return first.dtype == second.dtype and first.shape == second.shape and np.array_equal(first, second)


def _holds(path, content):
    """True when the file at `path` holds `content`: a text, an array (.npy) or a dict of arrays (.npz)."""
    try:
        if isinstance(content, str):
            with open(path, encoding="utf-8") as ff:
                return ff.read() == content
        if isinstance(content, dict):
            with np.load(path, allow_pickle=False) as data:
                return sorted(data.files) == sorted(content) and all(_equal_arrays(data[key], content[key]) for key in content)
        return _equal_arrays(np.load(path, allow_pickle=False), content)
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile):  # unreadable, or another kind of file
        return False


def _write_result(path, content):
    with atomic_path(path) as tmp:
        if isinstance(content, str):
            with open(tmp, "w", encoding="utf-8") as ff:
                ff.write(content)
        elif isinstance(content, dict):
            np.savez(tmp, **content)
        else:
            np.save(tmp, content)


def save_results(results, overwrite=False):
    """Write (path, content, kind) results atomically. An existing file is replaced only with `overwrite`; one that already
    holds the content is kept; any other existing file stops the run before anything is written.

    Usage: save_results([("r/m_IJBB_N0D1F1.npy", scores, "scores"), ("r/m_IJBB_N0D1F1.csv", table.to_csv(), "table")])
    """
    to_write, kept = [], []
    for path, content, kind in results:
        if not os.path.exists(path) or overwrite:
            to_write.append((path, content, kind))
        elif _holds(path, content):
            kept.append(path)
        else:
            raise FileExistsError("{}: already exists with other {}; it is kept (pass --overwrite to replace it)".format(path, kind))
    for path, content, _ in to_write:
        _write_result(path, content)
    for kind in dict.fromkeys(kind for _, _, kind in to_write):
        print(">>>> Saved {}: {}".format(kind, ", ".join(path for path, _, each in to_write if each == kind)))
    if kept:
        print(">>>> Kept, already holding these results: {}".format(", ".join(kept)))


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


def load_embeddings(path, meta=None):
    """-R: (embs, embs_f, meta); meta comes from the npz when not given, and is checked (`check_meta`) as the meta
    files are.  Usage: embs, embs_f, meta = load_embeddings(p)
    """
    with _open_npz(path, "embs") as data:
        embs = _numeric_array(path, data, "embs")
        embs_f = _numeric_array(path, data, "embs_f") if "embs_f" in data else np.zeros([0, *embs.shape[1:2]], "float32")
        check_embeddings(embs, embs_f, path)
        if meta is None:
            meta = _meta_from_npz(path, data, len(embs))
    for name, array in (("embs", embs), ("embs_f", embs_f)):
        if len(array) not in ((len(meta.templates),) if name == "embs" else (0, len(meta.templates))):
            raise ValueError("{}: '{}' has {} rows but the meta lists {} images".format(path, name, len(array), len(meta.templates)))
    if len(embs_f) and embs_f.shape[1] != embs.shape[1]:
        raise ValueError("{}: 'embs_f' rows have {} values, 'embs' rows {}".format(path, embs_f.shape[1], embs.shape[1]))
    return embs, embs_f, meta


def _numeric_array(path, data, key):
    array = data[key]
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        raise ValueError("{}: '{}' holds {} of shape {}; expected rows of numbers".format(path, key, array.dtype, array.shape))
    return array.astype("float32", copy=False)


def _meta_from_npz(path, data, images):
    """The IJBMeta saved by -E, its arrays' lengths and contents checked."""
    missing = [key for key in _EMBEDDING_META_KEYS if key not in data]
    if missing:
        raise ValueError("{}: lacks {}; pass -d IJB_RELEASE_DIR to read the meta files".format(path, missing))
    arrays = {key: data[key] for key in _EMBEDDING_META_KEYS}
    arrays["img_names"] = data["img_names"] if "img_names" in data else np.arange(images).astype(str)
    pairs = len(arrays["p1"]) if arrays["p1"].ndim == 1 else -1
    for keys, count, per in ((("templates", "medias", "face_scores", "img_names"), images, "image"), (("p1", "p2", "label"), pairs, "pair")):
        for key in keys:
            if arrays[key].ndim != 1 or len(arrays[key]) != count:
                raise ValueError("{}: '{}' of shape {}; expected one value per {} ({} {}s)".format(
                    path, key, arrays[key].shape, per, max(count, 0), per))
    meta = IJBMeta(landmarks=np.zeros([images, 5, 2], "float32"), **arrays)
    check_meta(meta, "{} (p1, p2, label)".format(path), "{} (templates, face_scores)".format(path), first_line=0, row_name="row")
    return meta


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


def result_folder(args):
    """`-o`, else the `-R` file's folder, else IJB_result; an existing path that is not a folder is an error.

    Usage: save_dir = result_folder(args)
    """
    save_dir = args.save_result or (os.path.dirname(os.path.abspath(args.restore_embs)) if args.restore_embs else "IJB_result")
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise NotADirectoryError("-o {}: is a file; the result folder was expected".format(save_dir))
    return save_dir


def run_scenarios(args, has_flips):
    """-B: all 8 scenarios, else N0D1F1; without flipped embeddings only their F0 variants.

    Usage: run_scenarios(args, has_flips=len(embs_f) > 0) -> ("N0D1F1",)
    """
    scenarios = ALL_SCENARIOS if args.is_bunch else (DEFAULT_SCENARIO,)
    if not has_flips:
        scenarios = tuple(dict.fromkeys(name[:-1] + "0" for name in scenarios))
        print(">>>> No flipped embeddings: running {}".format(", ".join(scenarios)))
    return scenarios


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog=cli.prog_name("IJB_evals.py"),
        description="IJB-B / IJB-C 1:1 verification and 1:N identification of a face model.",
        epilog="Scenarios: N1 keeps each image embedding's norm as a weight (N0 normalizes first), D1 multiplies by the "
        "detector score, F1 adds the embedding of the flipped face. Results are named <model>_<format>_<subset>_<scenarios>; "
        "an existing result is kept unless --overwrite.",
    )
    parser.add_argument("-m", "--model_file", help="model: Keras .h5 / .keras, ONNX .onnx, TorchScript .pt, or MXNet 'prefix,epoch'")
    parser.add_argument("-d", "--data_path", help="IJB_release folder holding IJBB/ and IJBC/ (meta/ and loose_crop/)")
    parser.add_argument("-s", "--subset", default=None, choices=sorted(SUBSET_FILES), help="dataset subset (default IJBB, or the -R file's)")
    parser.add_argument("-b", "--batch_size", type=cli.positive_int, default=64, help="images per model call (default 64)")
    parser.add_argument("-o", "--save_result", default=None, help="result folder; default IJB_result, or the -R file's folder")
    parser.add_argument("-L", "--save_label", action="store_true", help="save the pair labels as <subset>_label.npz for --plot_only")
    parser.add_argument("-B", "--is_bunch", action="store_true", help="run all 8 scenarios N{0,1}D{0,1}F{0,1}, not only N0D1F1")
    parser.add_argument("-N", "--is_one_2_N", action="store_true", help="also run 1:N identification (top-1/5/10, TPIR@FPIR)")
    parser.add_argument("-E", "--save_embeddings", action="store_true", help="save embeddings and meta as <model>_<format>_<subset>.npz")
    parser.add_argument("-R", "--restore_embs", default=None, help="restore embeddings saved by -E (skips the model)")
    parser.add_argument("-F", "--no_flip", action="store_true", help="do not embed flipped faces (halves the time; F0 scenarios only)")
    parser.add_argument("--mean", type=float, default=None, help="input normalization (x - mean) / std; default by model type")
    parser.add_argument("--std", type=float, default=None, help="input normalization (x - mean) / std; default by model type")
    parser.add_argument("--workers", type=cli.positive_int, default=4, help="threads reading and aligning images (default 4)")
    parser.add_argument(
        "--plot_only", nargs="+", default=None, metavar="FILE",
        help="score .npy files then a label file (the .npz saved by -L, or the pair label .txt): print TARs, plot ROC curves",
    )
    parser.add_argument(
        "--interpolate_far", dest="tar_rule", action="store_const", const="interpolate", default="nearest",
        help="read TAR@FAR by linear interpolation of the ROC curve; default: the ROC point nearest each FAR, as insightface",
    )
    parser.add_argument("--plot_save", default=None, help="PNG path for --plot_only; default <score file names>_roc.png beside the first")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files (default: keep them and stop)")
    args = parser.parse_args(argv)
    if args.plot_only is None and not (args.model_file or args.restore_embs):
        parser.error("one of -m MODEL, -R EMBS.npz or --plot_only is required")
    if args.plot_only is None and args.data_path is None and (args.model_file and not args.restore_embs or args.is_one_2_N):
        parser.error("-d IJB_RELEASE_DIR is required to embed images and for 1:N")
    return args


def embed_with_model(args, meta):
    """The embeddings (and flipped) of every image of the subset by `-m`, checked (`check_embeddings`).

    Usage: embs, embs_f = embed_with_model(args, read_ijb_meta(args.data_path, args.subset))
    """
    from .model_interf import load_model_interf

    interf = load_model_interf(args.model_file, mean=args.mean, std=args.std, batch_size=args.batch_size)
    print(">>>> Embedding {} images with {}".format(len(meta.img_names), interf))
    image_paths = [os.path.join(meta_paths(args.data_path, args.subset)["images"], name) for name in meta.img_names]
    embs, embs_f = embed_images(interf, image_paths, meta.landmarks, args.batch_size, flip=not args.no_flip, workers=args.workers)
    check_embeddings(embs, embs_f, args.model_file)
    return embs, embs_f


def run(args):
    """Run the evaluation described by parsed arguments; returns (TAR table, 1:N table or None)."""
    if args.plot_only is not None:
        return plot_only(args.plot_only, args.plot_save, args.tar_rule, args.overwrite), None
    args.subset = resolve_subset(args)
    save_dir = result_folder(args)
    meta = read_ijb_meta(args.data_path, args.subset, check_images=not args.restore_embs) if args.data_path else None
    one_n_sets = read_1n_meta(args.data_path, args.subset, meta.templates) if args.is_one_2_N else None
    base = "{}_{}".format(_result_base(args), args.subset)

    if args.restore_embs:
        embs, embs_f, meta = load_embeddings(args.restore_embs, meta)
        paths = result_paths(save_dir, base, run_scenarios(args, len(embs_f) > 0), args)
        check_result_paths(paths, args.overwrite, refuse_existing=False)
    else:
        paths = result_paths(save_dir, base, run_scenarios(args, not args.no_flip), args)
        check_result_paths(paths, args.overwrite, refuse_existing=True)
        embs, embs_f = embed_with_model(args, meta)
    if args.save_embeddings:
        save_embeddings(paths["embeddings"], embs, embs_f, meta, args.subset, args.overwrite)

    all_scores, all_1n = evaluate_scenarios(embs, embs_f, meta, tuple(paths["scores"]), one_n_sets)
    results = [(paths["scores"][scenario], scores, "scores") for scenario, scores in all_scores.items()]
    if args.save_label:
        results.append((paths["labels"], {"label": meta.label}, "labels"))
    table = tar_far_table({"{}_{}".format(base, scenario): scores for scenario, scores in all_scores.items()}, meta.label, rule=args.tar_rule)
    print(table.to_string(float_format="{:.4f}".format))
    results.append((paths["table"], table.to_csv(), "table"))
    table_1n = None
    if one_n_sets:
        table_1n = one_n_table(all_1n)
        print(table_1n.to_string(float_format="{:.4f}".format))
        results.append((paths["1:N table"], table_1n.to_csv(), "1:N table"))
    save_results(results, args.overwrite)
    return table, table_1n


def main(argv=None):
    """CLI entry point.  Usage: main(["-m", "model.h5", "-d", "/data/IJB_release", "-s", "IJBC"])"""
    return cli.run("IJB_evals.py", run, parse_arguments(argv))


if __name__ == "__main__":
    sys.exit(main())
