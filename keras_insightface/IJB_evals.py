#!/usr/bin/env python3
"""IJB-B / IJB-C evaluation: 1:1 verification (TAR@FAR) and 1:N identification, on the insightface `IJB_release` layout.

Pipeline: `loose_crop` images + 5 landmarks -> similarity-aligned 112x112 faces -> embeddings (and of
the flipped faces) -> image features by scenario N{0,1}D{0,1}F{0,1} -> media means -> template sums,
L2-normalized -> cosine of template pairs -> TAR at FAR 1e-6 .. 1e-1; 1:N top-k and TPIR@FPIR.

Usage:
    python IJB_evals.py -m checkpoints/basic_model.h5 -d /media/SD/IJB_release -L
    python IJB_evals.py -R IJB_result/basic_model_h5_IJBB.npz -d /media/SD/IJB_release -B
    python IJB_evals.py --plot_only IJB_result/*.npy IJB_result/IJBB_label.npz
"""
import argparse
import dataclasses
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import cli, face_io
from .face_align import align_face
from .io_utils import atomic_path, atomic_write_text

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (0.01, 0.1)
TOP_K = (1, 5, 10)
DEFAULT_SCENARIO = "N0D1F1"
ALL_SCENARIOS = tuple("N{}D{}F{}".format(n, d, f) for n in (1, 0) for d in (1, 0) for f in (1, 0))
SUBSET_FILES = {
    "IJBB": {"prefix": "ijbb", "galleries": ("S1", "S2")},
    "IJBC": {"prefix": "ijbc", "galleries": ("G1", "G2")},
}
_TEXT, _INT, _FLOAT = "text", "int", "float"
_LANDMARK_COLUMNS = tuple("{}{}".format(axis, point) for point in range(1, 6) for axis in "xy")


# ------------------------------------------------------------------------------------------------ meta files
def meta_paths(data_path, subset):
    """Paths of one subset's meta files and image folder.  Usage: meta_paths("/data/IJB_release", "IJBC")["pairs"]"""
    if subset not in SUBSET_FILES:
        raise ValueError("subset must be one of {}, got {!r}".format(sorted(SUBSET_FILES), subset))
    prefix, (gallery_1, gallery_2) = SUBSET_FILES[subset]["prefix"], SUBSET_FILES[subset]["galleries"]
    meta_dir = os.path.join(data_path, subset, "meta")
    return {
        "images": os.path.join(data_path, subset, "loose_crop"),
        "template_media": os.path.join(meta_dir, prefix + "_face_tid_mid.txt"),
        "pairs": os.path.join(meta_dir, prefix + "_template_pair_label.txt"),
        "landmarks": os.path.join(meta_dir, prefix + "_name_5pts_score.txt"),
        gallery_1: os.path.join(meta_dir, "{}_1N_gallery_{}.csv".format(prefix, gallery_1)),
        gallery_2: os.path.join(meta_dir, "{}_1N_gallery_{}.csv".format(prefix, gallery_2)),
        "probe": os.path.join(meta_dir, prefix + "_1N_probe_mixed.csv"),
    }


def _require_file(path):
    if not os.path.isfile(path):
        raise FileNotFoundError("IJB meta file not found: {}".format(path))


def _first_line_with_field_count_not(path, n_fields, skip_lines=0, sep=None):
    """(line number, field count) of the first line that does not have `n_fields` fields, or None."""
    with open(path, encoding="utf-8") as ff:
        for line_number, line in enumerate(ff, 1):
            fields = line.split(sep)
            if line_number > skip_lines and len(fields) != n_fields:
                return line_number, len(fields)
    return None


def _convert_columns(frame, path, columns, first_line):
    """Cast each column to its kind, failing at the first line whose value does not parse."""
    import pandas as pd

    for name, kind in columns.items():
        if kind == _TEXT:
            frame[name] = frame[name].astype(str)
            continue
        values = frame[name] if pd.api.types.is_numeric_dtype(frame[name]) else pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna().to_numpy().copy()
        if kind == _INT and not pd.api.types.is_integer_dtype(values):
            bad |= values.fillna(0).to_numpy() % 1 != 0
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                "{}: line {}: column '{}' should be {}, got {!r}".format(path, row + first_line, name, kind, frame[name].iloc[row])
            )
        frame[name] = values.astype("int64" if kind == _INT else "float32")
    return frame


def read_meta_table(path, columns):
    """Read a whitespace-separated meta file without header; `columns` maps name -> "text" | "int" | "float".

    Fails on the first line with a wrong field count or a value that does not parse, naming file and line.
    Usage: pairs = read_meta_table("ijbc_template_pair_label.txt", {"t1": "int", "t2": "int", "label": "int"})
    """
    import pandas as pd

    _require_file(path)
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, skip_blank_lines=False, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ValueError("{}: empty file, expected {} columns: {}".format(path, len(columns), " ".join(columns))) from None
    except pd.errors.ParserError:
        frame = None
    if frame is None or frame.shape[1] != len(columns) or frame.isna().to_numpy().any():
        bad = _first_line_with_field_count_not(path, len(columns))
        if bad is not None:
            raise ValueError(
                "{}: line {}: expected {} columns ({}), got {}".format(path, bad[0], len(columns), " ".join(columns), bad[1])
            )
        if frame is None:
            raise ValueError("{}: could not be parsed as {} whitespace-separated columns".format(path, len(columns)))
    frame.columns = list(columns)
    return _convert_columns(frame, path, columns, first_line=1)


def read_csv_columns(path, columns):
    """Read the `columns` (name -> kind) of a CSV file with a header line, failing early with file and line named.

    Usage: gallery = read_csv_columns("ijbc_1N_gallery_G1.csv", {"TEMPLATE_ID": "int", "SUBJECT_ID": "int"})
    """
    import pandas as pd

    _require_file(path)
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError("{}: empty file, expected a header with columns {}".format(path, ",".join(columns))) from None
    except pd.errors.ParserError as error:
        raise ValueError("{}: {}".format(path, error)) from None
    frame.columns = [str(name).strip() for name in frame.columns]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError("{}: line 1: missing columns {}; the header has {}".format(path, missing, list(frame.columns)))
    if frame.empty:
        raise ValueError("{}: only a header line, no rows".format(path))
    return _convert_columns(frame[list(columns)].copy(), path, columns, first_line=2)


@dataclasses.dataclass
class IJBMeta:
    """One subset's images, landmarks, detector scores, template / media ids and labelled template pairs."""

    img_names: np.ndarray  # [N] file names inside loose_crop
    landmarks: np.ndarray  # [N, 5, 2] float32, (x, y) in loose_crop pixels
    face_scores: np.ndarray  # [N] float32 detector scores
    templates: np.ndarray  # [N] int64
    medias: np.ndarray  # [N] int64
    p1: np.ndarray  # [P] int64 template ids
    p2: np.ndarray  # [P] int64
    label: np.ndarray  # [P] int64, 1 same identity


def _check_known_templates(path, template_columns, known_templates, first_line=1):
    """Fail at the first line of `path` whose template id (any column of [rows, k]) is not a known template."""
    template_columns = np.asarray(template_columns).reshape(len(template_columns), -1)
    unknown = ~np.isin(template_columns, known_templates)
    if unknown.any():
        row = int(np.argmax(unknown.any(axis=1)))
        value = template_columns[row][unknown[row]][0]
        raise ValueError("{}: line {}: template id {} is not in the template / media list".format(path, row + first_line, value))


def _check_image_names(img_names, listing_path):
    """Image names are paths inside loose_crop: relative, without `..` components."""
    escapes = np.array([os.path.isabs(name) or ".." in name.replace("\\", "/").split("/") for name in img_names], dtype=bool)
    if escapes.any():
        row = int(np.argmax(escapes))
        raise ValueError("{}: line {}: image name {!r} leaves the image folder; expected a relative name inside loose_crop".format(
            listing_path, row + 1, str(img_names[row])))


def _check_images_exist(image_dir, img_names, listing_path):
    if not os.path.isdir(image_dir):
        raise FileNotFoundError("IJB image folder not found: {}".format(image_dir))
    present = set(os.listdir(image_dir))
    missing = np.array([name not in present and not os.path.isfile(os.path.join(image_dir, name)) for name in img_names])
    if missing.any():
        row = int(np.argmax(missing))
        raise FileNotFoundError(
            "{}: line {}: image not found: {} ({} of {} images missing)".format(
                listing_path, row + 1, os.path.join(image_dir, img_names[row]), int(missing.sum()), len(img_names)
            )
        )


def read_ijb_meta(data_path, subset="IJBB", check_images=True):
    """Read and cross-check one subset's meta files.  Usage: meta = read_ijb_meta("/data/IJB_release", "IJBC")"""
    paths = meta_paths(data_path, subset)
    print(">>>> Loading {} meta from {}".format(subset, os.path.dirname(paths["pairs"])))
    template_media = read_meta_table(paths["template_media"], {"image": _TEXT, "template": _INT, "media": _INT})
    landmark_columns = {"image": _TEXT, **{name: _FLOAT for name in _LANDMARK_COLUMNS}, "score": _FLOAT}
    landmarks = read_meta_table(paths["landmarks"], landmark_columns)
    pairs = read_meta_table(paths["pairs"], {"t1": _INT, "t2": _INT, "label": _INT})

    img_names = landmarks["image"].to_numpy(dtype=str)
    _check_image_names(img_names, paths["landmarks"])
    if len(template_media) != len(landmarks):
        raise ValueError(
            "{} lists {} images but {} lists {}".format(paths["template_media"], len(template_media), paths["landmarks"], len(landmarks))
        )
    mismatch = template_media["image"].to_numpy(dtype=str) != img_names
    if mismatch.any():
        row = int(np.argmax(mismatch))
        raise ValueError(
            "{}: line {}: image {} differs from {} in {}".format(
                paths["template_media"], row + 1, template_media["image"].iloc[row], img_names[row], paths["landmarks"]
            )
        )
    bad_label = ~np.isin(pairs["label"].to_numpy(), (0, 1))
    if bad_label.any():
        raise ValueError("{}: line {}: label should be 0 or 1".format(paths["pairs"], int(np.argmax(bad_label)) + 1))
    templates = template_media["template"].to_numpy()
    _check_known_templates(paths["pairs"], pairs[["t1", "t2"]].to_numpy(), np.unique(templates))
    if check_images:
        _check_images_exist(paths["images"], img_names, paths["landmarks"])
    return IJBMeta(
        img_names=img_names,
        landmarks=landmarks[list(_LANDMARK_COLUMNS)].to_numpy("float32").reshape(-1, 5, 2),
        face_scores=landmarks["score"].to_numpy("float32"),
        templates=templates,
        medias=template_media["media"].to_numpy(),
        p1=pairs["t1"].to_numpy(),
        p2=pairs["t2"].to_numpy(),
        label=pairs["label"].to_numpy(),
    )


def _unique_templates_with_subjects(path, frame):
    """Templates listed once per image -> (unique template ids, their subject ids); one subject per template."""
    templates, subjects = frame["TEMPLATE_ID"].to_numpy(), frame["SUBJECT_ID"].to_numpy()
    unique_templates, first_row, inverse = np.unique(templates, return_index=True, return_inverse=True)
    conflict = subjects != subjects[first_row][inverse]
    if conflict.any():
        row = int(np.argmax(conflict))
        raise ValueError("{}: line {}: template {} listed with two subject ids".format(path, row + 2, templates[row]))
    return unique_templates, subjects[first_row]


def read_1n_meta(data_path, subset, known_templates):
    """1:N galleries and mixed probe: {name: (template ids, subject ids)}, names e.g. ("G1", "G2", "probe").

    Usage: galleries = read_1n_meta("/data/IJB_release", "IJBC", meta.templates)
    """
    paths = meta_paths(data_path, subset)
    sets = {}
    for name in (*SUBSET_FILES[subset]["galleries"], "probe"):
        frame = read_csv_columns(paths[name], {"TEMPLATE_ID": _INT, "SUBJECT_ID": _INT})
        _check_known_templates(paths[name], frame["TEMPLATE_ID"].to_numpy(), np.unique(known_templates), first_line=2)
        sets[name] = _unique_templates_with_subjects(paths[name], frame)
    return sets


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


# ------------------------------------------------------------------------------------------------ aggregation and scoring
def parse_scenario(name):
    """"N0D1F1" -> dict(use_norm_score=False, use_detector_score=True, use_flip_test=True)."""
    if name not in ALL_SCENARIOS:
        raise ValueError("scenario must be one of {}, got {!r}".format(ALL_SCENARIOS, name))
    return {"use_norm_score": name[1] == "1", "use_detector_score": name[3] == "1", "use_flip_test": name[5] == "1"}


def _row_norms(embs, embs_f=None, chunk=1 << 16):
    """L2 norm of each row of embs (+ embs_f), chunk by chunk so no full-size sum is held."""
    norms = np.empty(len(embs), dtype="float32")
    for start in range(0, len(embs), chunk):
        rows = embs[start : start + chunk] if embs_f is None else np.add(embs[start : start + chunk], embs_f[start : start + chunk])
        norms[start : start + chunk] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return norms


def image_scales(embs, embs_f=None, face_scores=None, use_norm_score=False, use_detector_score=True, use_flip_test=True, epsilon=1e-12):
    """Per-image factor s of a scenario: image feature = s * (emb + flipped emb if F1), s = score if D1 / norm if N0.

    Usage: scales = image_scales(embs, embs_f, meta.face_scores, **parse_scenario("N0D1F1"))
    """
    if use_flip_test and (embs_f is None or len(embs_f) != len(embs)):
        raise ValueError("flip test (F1) needs the flipped-image embeddings, which were not computed")
    scales = np.ones(len(embs), dtype="float32")
    if not use_norm_score:
        scales /= np.maximum(_row_norms(embs, embs_f if use_flip_test else None), epsilon)
    if use_detector_score:
        scales *= np.asarray(face_scores, dtype="float32")
    return scales


def image_features(embs, embs_f=None, face_scores=None, use_norm_score=False, use_detector_score=True, use_flip_test=True):
    """Per-image features of one scenario: F1 adds the flipped embedding, N0 normalizes, D1 multiplies by the score.

    Usage: feats = image_features(embs, embs_f, meta.face_scores, **parse_scenario("N0D1F1"))
    """
    scales = image_scales(embs, embs_f, face_scores, use_norm_score, use_detector_score, use_flip_test)
    feats = np.add(embs, embs_f, dtype="float32") if use_flip_test else np.array(embs, dtype="float32")
    feats *= scales[:, None]
    return feats


def aggregation_matrix(templates, medias):
    """Sparse [templates, images] matrix W with W @ image_feats = sum over a template's medias of the media mean.

    Returns (sorted unique template ids, W).  Usage: template_ids, matrix = aggregation_matrix(meta.templates, meta.medias)
    """
    from scipy import sparse

    templates, medias = np.asarray(templates), np.asarray(medias)
    template_ids, template_index = np.unique(templates, return_inverse=True)
    media_offset = medias.astype("int64") - medias.min(initial=0)
    media_key = template_index.astype("int64") * (int(media_offset.max(initial=0)) + 1) + media_offset
    _, media_index, media_counts = np.unique(media_key, return_inverse=True, return_counts=True)
    weights = (1.0 / media_counts[media_index]).astype("float32")
    matrix = sparse.csr_matrix((weights, (template_index, np.arange(len(templates)))), shape=(len(template_ids), len(templates)))
    return template_ids, matrix


def template_features(img_feats, templates, medias):
    """L2-normalized template features: (sorted template ids, feats [T, D]).

    Usage: template_ids, feats = template_features(image_features(embs, ...), meta.templates, meta.medias)
    """
    template_ids, matrix = aggregation_matrix(templates, medias)
    return template_ids, face_io.l2_normalize(matrix @ np.asarray(img_feats, dtype="float32"), dtype="float32")


def scenario_template_features(matrix, embs, embs_f=None, face_scores=None, scenario=DEFAULT_SCENARIO):
    """Normalized template features of a scenario straight from the embeddings, with no per-image copy.

    The per-image factors are folded into the aggregation matrix: W diag(s) @ embs (+ W diag(s) @ embs_f).
    Usage: feats = scenario_template_features(aggregation_matrix(t, m)[1], embs, embs_f, scores, "N0D1F1")
    """
    flags = parse_scenario(scenario)
    scaled = matrix.copy()
    scaled.data = scaled.data * image_scales(embs, embs_f, face_scores, **flags)[scaled.indices]
    feats = np.asarray(scaled @ embs, dtype="float32")
    if flags["use_flip_test"]:
        feats += scaled @ embs_f
    return face_io.l2_normalize(feats, dtype="float32")


def _compact(index, size):
    """Distinct values of `index` (sorted) and each entry's position among them, via a presence mask."""
    present = np.zeros(size, dtype=bool)
    present[index] = True
    position = (np.cumsum(present) - 1).astype("int32")
    return np.flatnonzero(present), position[index]


def _gathered_dot(feats, index1, index2, chunk=1 << 16):
    scores = np.empty(len(index1), dtype="float32")
    for start in range(0, len(index1), chunk):
        stop = start + chunk
        scores[start:stop] = np.einsum("ij,ij->i", feats[index1[start:stop]], feats[index2[start:stop]])
    return scores


def _blocked_dot(row_feats, col_feats, row_of, col_of, block_entries):
    """Dot products read out of row-block x all-columns similarity matrices, pairs grouped by row block."""
    n_rows, n_cols = len(row_feats), len(col_feats)
    sort_key = row_of.astype("uint16") if n_rows <= np.iinfo("uint16").max else row_of
    order = np.argsort(sort_key, kind="stable")  # radix sort for 16-bit keys
    bounds = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=n_rows))])
    rows_per_block = max(1, block_entries // max(n_cols, 1))
    scores = np.empty(len(row_of), dtype="float32")
    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        chosen = order[bounds[start] : bounds[stop]]
        block = row_feats[start:stop] @ col_feats.T
        scores[chosen] = block[row_of[chosen] - start, col_of[chosen]]
    return scores


def pair_cosine(feats, index1, index2, dense_ratio=16, block_entries=1 << 25):
    """feats[index1[k]] . feats[index2[k]] for every pair k, vectorized.

    When the distinct first x second templates are at most `dense_ratio` times the pairs (IJB: gallery x
    probe), blocks of the similarity matrix are computed with one matmul each and read at the pairs;
    otherwise both features are gathered per chunk of pairs.  Usage: scores = pair_cosine(feats, i1, i2)
    """
    feats = np.asarray(feats, dtype="float32")
    rows, row_of = _compact(index1, len(feats))
    cols, col_of = _compact(index2, len(feats))
    if len(rows) * len(cols) > dense_ratio * len(index1):
        return _gathered_dot(feats, index1, index2)
    return _blocked_dot(feats[rows], feats[cols], row_of, col_of, block_entries)


def positions(sorted_ids, values):
    """Index of each value in `sorted_ids` (all present), by lookup table for int ids.  Usage: rows = positions(ids, p1)"""
    sorted_ids, values = np.asarray(sorted_ids), np.asarray(values)
    if len(sorted_ids) and sorted_ids.dtype.kind in "iu" and 0 <= sorted_ids[0] and sorted_ids[-1] <= 8 * len(values) + (1 << 20):
        table = np.zeros(int(sorted_ids[-1]) + 1, dtype="int64")
        table[sorted_ids] = np.arange(len(sorted_ids))
        return table[values]
    return np.searchsorted(sorted_ids, values)


def score_pairs(template_ids, template_feats, p1, p2):
    """Cosine similarity of template pairs given by id.  Usage: scores = score_pairs(ids, feats, meta.p1, meta.p2)"""
    return pair_cosine(template_feats, positions(template_ids, p1), positions(template_ids, p2))


def _checked_label_scores(label, scores):
    label, scores = np.asarray(label).astype(bool), np.asarray(scores)
    if len(label) != len(scores):
        raise ValueError("{} labels for {} scores".format(len(label), len(scores)))
    if label.all() or not label.any():
        raise ValueError("an ROC curve needs both positive and negative pairs")
    return label, scores


def roc_upper_points(label, scores):
    """ROC vertices (fpr, tpr) holding the highest TPR at each FPR, the same points as `sklearn.metrics.roc_curve`.

    FPR changes only at negative scores: with distinct negative scores v1 > v2 > ..., FPR j/N (j negatives
    at or above v_j) is reached with every positive above v_{j+1} accepted. Two value sorts replace
    roc_curve's stable argsort of all scores.  Usage: fpr, tpr = roc_upper_points(meta.label, scores)
    """
    label, scores = _checked_label_scores(label, scores)
    negatives, positives = np.sort(scores[~label])[::-1], np.sort(scores[label])
    run_ends = np.flatnonzero(np.append(negatives[1:] != negatives[:-1], True))
    thresholds = np.concatenate([negatives[run_ends], [-np.inf]])  # a positive passes when above the next lower negative
    fpr = np.concatenate([[0], (run_ends + 1) / len(negatives)])
    tpr = (len(positives) - np.searchsorted(positives, thresholds, side="right")) / len(positives)
    return fpr, tpr


def roc_curve_points(label, scores):
    """(fpr, tpr) exactly as `sklearn.metrics.roc_curve(label, scores)` returns them (`drop_intermediate=True`).

    One point per distinct score (descending), counting the pairs at or above it, then the points whose
    second differences of both counts are zero are dropped, and (0, 0) is put first.
    Usage: fpr, tpr = roc_curve_points(meta.label, scores)
    """
    label, scores = _checked_label_scores(label, scores)
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    run_ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    tps = np.cumsum(label[order])[run_ends]
    fps = run_ends + 1 - tps
    if len(fps) > 2:
        keep = np.concatenate([[True], (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), [True]])
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.concatenate([[0], fps]), np.concatenate([[0], tps])
    return fps / fps[-1], tps / tps[-1]


def _tar_nearest(label, scores, fars):
    """insightface's rule: on roc_curve's points, reversed, the TPR at the first argmin of |fpr - far|."""
    fpr, tpr = roc_curve_points(label, scores)
    fpr, tpr = fpr[::-1], tpr[::-1]  # insightface: "select largest tpr at same fpr"
    return np.array([tpr[np.argmin(np.abs(fpr - far))] for far in fars])


def _tar_interpolated(label, scores, fars):
    """Highest TAR at each realizable FAR, linearly interpolated between them."""
    fpr, tpr = roc_upper_points(label, scores)
    return np.interp(fars, fpr, tpr)


TAR_RULES = {"nearest": _tar_nearest, "interpolate": _tar_interpolated}


def tar_at_far(label, scores, fars=FARS, rule="nearest"):
    """TAR at each FAR, read on the ROC curve by `rule`.

    "nearest" (default): insightface's IJB evaluation (evaluation/IJB, arcface_torch eval_ijbc.py) and the
    original Keras_insightface: `fpr, tpr = roc_curve(label, scores)`, both reversed, TAR = tpr at
    `argmin(abs(fpr - far))`. "interpolate": the highest TAR reached at each realizable FAR, linearly
    interpolated between them (smoother at FARs finer than 1 / negatives).
    Usage: tars = tar_at_far(meta.label, scores)  # array aligned with FARS
    """
    if rule not in TAR_RULES:
        raise ValueError("tar_at_far: rule={!r}; expected one of {}".format(rule, ", ".join(TAR_RULES)))
    return TAR_RULES[rule](label, scores, fars)


def tar_far_table(named_scores, label, fars=FARS, rule="nearest"):
    """pandas table of TAR (%) per run name and FAR.  Usage: print(tar_far_table({"N0D1F1": scores}, meta.label))"""
    import pandas as pd

    rows = {name: tar_at_far(label, scores, fars, rule) * 100 for name, scores in named_scores.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["{:.0e}".format(far) for far in fars])


def evaluate_1n(probe_feats, probe_subjects, gallery_feats, gallery_subjects, top_k=TOP_K, fpirs=FPIRS):
    """Open-set 1:N identification of normalized template features against one gallery.

    Mated probes (subject in the gallery) give top-k accuracy: the true subject ranks among the k best
    subject scores (a subject scores its best gallery template). TPIR@FPIR: the share of mated probes
    ranked first with a score above the threshold that lets at most floor(FPIR x n) non-mated probes'
    best scores pass.  Usage: result = evaluate_1n(probe_feats, probe_ids, gallery_feats, gallery_ids)
    """
    subjects, subject_of = np.unique(gallery_subjects, return_inverse=True)
    similarity = np.asarray(probe_feats, "float32") @ np.asarray(gallery_feats, "float32").T
    order = np.argsort(subject_of, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(subject_of[order]) != 0])
    subject_scores = np.maximum.reduceat(similarity[:, order], starts, axis=1)

    mated = np.isin(probe_subjects, subjects)
    mated_scores = subject_scores[mated]
    true_scores = mated_scores[np.arange(len(mated_scores)), np.searchsorted(subjects, np.asarray(probe_subjects)[mated])]
    rank = (mated_scores > true_scores[:, None]).sum(axis=1)
    result = {"mated": int(mated.sum()), "non_mated": int((~mated).sum())}
    result.update({"top{}".format(k): float(np.mean(rank < k)) if len(rank) else np.nan for k in top_k})

    non_mated_best = np.sort(subject_scores[~mated].max(axis=1, initial=-np.inf))[::-1]
    for fpir in fpirs:
        allowed = int(np.floor(fpir * len(non_mated_best) + 1e-9))
        threshold = non_mated_best[allowed] if allowed < len(non_mated_best) else -np.inf
        hits = (rank == 0) & (true_scores > threshold)
        result["TPIR@FPIR={:.0e}".format(fpir)] = float(np.mean(hits)) if len(hits) else np.nan
    return result


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
def evaluate_scenarios(embs, embs_f, meta, scenarios=(DEFAULT_SCENARIO,), one_n_sets=None):
    """Score every scenario: ({scenario: pair scores}, {scenario: {gallery: 1:N result}})."""
    template_ids, matrix = aggregation_matrix(meta.templates, meta.medias)
    index1, index2 = positions(template_ids, meta.p1), positions(template_ids, meta.p2)
    all_scores, all_1n = {}, {}
    for scenario in scenarios:
        print(">>>> Scenario {}".format(scenario))
        feats = scenario_template_features(matrix, embs, embs_f, meta.face_scores, scenario)
        all_scores[scenario] = pair_cosine(feats, index1, index2)
        if one_n_sets:
            all_1n[scenario] = _evaluate_1n_sets(template_ids, feats, one_n_sets)
    return all_scores, all_1n


def _evaluate_1n_sets(template_ids, feats, one_n_sets):
    probe_templates, probe_subjects = one_n_sets["probe"]
    probe_feats = feats[positions(template_ids, probe_templates)]
    results = {}
    for name, (gallery_templates, gallery_subjects) in one_n_sets.items():
        if name != "probe":
            gallery_feats = feats[positions(template_ids, gallery_templates)]
            results[name] = evaluate_1n(probe_feats, probe_subjects, gallery_feats, gallery_subjects)
    return results


def one_n_table(all_1n):
    """pandas table of 1:N results (%), one row per scenario and gallery."""
    import pandas as pd

    rows = {
        (scenario, gallery): {key: value * 100 if key not in ("mated", "non_mated") else value for key, value in result.items()}
        for scenario, per_gallery in all_1n.items()
        for gallery, result in per_gallery.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["scenario", "gallery"])


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
