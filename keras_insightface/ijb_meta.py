"""IJB-B / IJB-C meta files (insightface `IJB_release` layout): paths, checked reading, the image / template / pair
lists (`IJBMeta`) and the 1:N gallery and probe sets; every malformed line is an error naming its file and line.

Usage:
    from keras_insightface import ijb_meta
    meta = ijb_meta.read_ijb_meta("/media/SD/IJB_release", "IJBC")
    one_n_sets = ijb_meta.read_1n_meta("/media/SD/IJB_release", "IJBC", meta.templates)
"""
import dataclasses
import os

import numpy as np

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


def _check_known_templates(path, template_columns, known_templates, first_line=1, row_name="line"):
    """Fail at the first row of `path` whose template id (any column of [rows, k]) is not a known template."""
    template_columns = np.asarray(template_columns).reshape(len(template_columns), -1)
    unknown = ~np.isin(template_columns, known_templates)
    if unknown.any():
        row = int(np.argmax(unknown.any(axis=1)))
        value = template_columns[row][unknown[row]][0]
        raise ValueError("{}: {} {}: template id {} is not in the template / media list".format(path, row_name, row + first_line, value))


def check_meta(meta, pairs_source, images_source, first_line=1, row_name="line"):
    """Refuse meta that would be scored wrongly without a word: a pair naming a template with no image (it would be
    scored against another template), labels other than 0 / 1 or all of one kind, negative or non-finite detector scores
    (weights of the D1 scenarios). Errors name the source and the row (`row_name first_line + index`).

    Usage: check_meta(meta, "ijbc_template_pair_label.txt", "ijbc_name_5pts_score.txt")
    """
    label = np.asarray(meta.label)
    bad_label = ~np.isin(label, (0, 1))
    if bad_label.any():
        row = int(np.argmax(bad_label))
        raise ValueError("{}: {} {}: label should be 0 or 1, got {}".format(pairs_source, row_name, row + first_line, label[row]))
    pairs = np.stack([np.asarray(meta.p1), np.asarray(meta.p2)], axis=1)
    _check_known_templates(pairs_source, pairs, np.unique(meta.templates), first_line, row_name)
    scores = np.asarray(meta.face_scores, dtype="float64")
    bad_score = ~np.isfinite(scores) | (scores < 0)
    if bad_score.any():
        row = int(np.argmax(bad_score))
        raise ValueError("{}: {} {}: detector score {} ({} of {} scores are negative or not finite); the D1 scenarios weight "
                         "each image by its score, which must be >= 0".format(
                             images_source, row_name, row + first_line, scores[row], int(bad_score.sum()), len(scores)))
    if label.all() or not label.any():
        raise ValueError("{}: all {} pairs are labelled {}; TAR@FAR needs pairs of the same and of different identities".format(
            pairs_source, len(label), int(label[0]) if len(label) else "(none)"))


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
    meta = IJBMeta(
        img_names=img_names,
        landmarks=landmarks[list(_LANDMARK_COLUMNS)].to_numpy("float32").reshape(-1, 5, 2),
        face_scores=landmarks["score"].to_numpy("float32"),
        templates=template_media["template"].to_numpy(),
        medias=template_media["media"].to_numpy(),
        p1=pairs["t1"].to_numpy(),
        p2=pairs["t2"].to_numpy(),
        label=pairs["label"].to_numpy(),
    )
    check_meta(meta, paths["pairs"], paths["landmarks"])
    if check_images:
        _check_images_exist(paths["images"], img_names, paths["landmarks"])
    return meta


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
