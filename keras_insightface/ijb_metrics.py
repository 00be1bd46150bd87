"""IJB-B / IJB-C scoring: image features per scenario N{0,1}D{0,1}F{0,1}, media / template aggregation, template pair
cosine, the ROC and TAR@FAR, 1:N top-k and TPIR@FPIR; vectorized, no Python loop per template or pair.

Usage:
    from keras_insightface import ijb_metrics
    all_scores, all_1n = ijb_metrics.evaluate_scenarios(embs, embs_f, meta, ("N0D1F1",), one_n_sets)
    print(ijb_metrics.tar_far_table({"N0D1F1": all_scores["N0D1F1"]}, meta.label))
"""
import numpy as np

from . import face_io

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FPIRS = (0.01, 0.1)
TOP_K = (1, 5, 10)
DEFAULT_SCENARIO = "N0D1F1"
ALL_SCENARIOS = tuple("N{}D{}F{}".format(n, d, f) for n in (1, 0) for d in (1, 0) for f in (1, 0))


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


def scenario_template_sums(matrix, embs, embs_f=None, face_scores=None, scenario=DEFAULT_SCENARIO):
    """Template features of a scenario before normalization, straight from the embeddings, with no per-image copy.

    The per-image factors are folded into the aggregation matrix: W diag(s) @ embs (+ W diag(s) @ embs_f).
    Usage: sums = scenario_template_sums(aggregation_matrix(t, m)[1], embs, embs_f, scores, "N0D1F1")
    """
    flags = parse_scenario(scenario)
    scaled = matrix.copy()
    scaled.data = scaled.data * image_scales(embs, embs_f, face_scores, **flags)[scaled.indices]
    sums = np.asarray(scaled @ embs, dtype="float32")
    if flags["use_flip_test"]:
        sums += scaled @ embs_f
    return sums


def scenario_template_features(matrix, embs, embs_f=None, face_scores=None, scenario=DEFAULT_SCENARIO):
    """L2-normalized template features of a scenario (`scenario_template_sums`, normalized).

    Usage: feats = scenario_template_features(aggregation_matrix(t, m)[1], embs, embs_f, scores, "N0D1F1")
    """
    return face_io.l2_normalize(scenario_template_sums(matrix, embs, embs_f, face_scores, scenario), dtype="float32")


def check_template_sums(sums, template_ids, scenario):
    """Refuse templates whose feature is zero (every image weighted 0): their pairs would score 0 without a word.

    Usage: check_template_sums(scenario_template_sums(matrix, embs, embs_f, scores, "N0D1F1"), template_ids, "N0D1F1")
    """
    empty = ~(np.abs(sums) > 0).any(axis=1)
    if empty.any():
        raise ValueError("scenario {}: {} of {} templates have a zero feature (first: template {}): their images' detector "
                         "scores are all 0 (D1) or their embeddings cancel out".format(
                             scenario, int(empty.sum()), len(empty), template_ids[int(np.argmax(empty))]))


def check_embeddings(embs, embs_f, source):
    """Refuse embeddings (and flipped ones, when computed) that would give a TAR table of noise or zeros without a word:
    `face_io.check_embedding_rows`.  Usage: check_embeddings(embs, embs_f, "model.h5")
    """
    face_io.check_embedding_rows(embs, source, "embs")
    if len(embs_f):
        face_io.check_embedding_rows(embs_f, source, "flipped embs")


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
    """Index of each value in `sorted_ids`, by lookup table for int ids; a value not among them is a ValueError.

    Usage: rows = positions(ids, p1)
    """
    sorted_ids, values = np.asarray(sorted_ids), np.asarray(values)
    if len(sorted_ids) and sorted_ids.dtype.kind in "iu" and 0 <= sorted_ids[0] and sorted_ids[-1] <= 8 * len(values) + (1 << 20):
        table = np.full(int(sorted_ids[-1]) + 2, -1, dtype="int64")  # the last entry stands for every value out of range
        table[sorted_ids] = np.arange(len(sorted_ids))
        in_range = (values >= 0) & (values <= sorted_ids[-1])
        found = table[np.where(in_range, values, len(table) - 1)]
    elif len(sorted_ids):
        index = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
        found = np.where(sorted_ids[index] == values, index, -1)
    else:
        found = np.full(len(values), -1)
    if (found < 0).any():
        raise ValueError("id {} is not among the {} ids (templates) it is looked up in".format(values[int(np.argmax(found < 0))], len(sorted_ids)))
    return found


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


# ------------------------------------------------------------------------------------------------ every scenario of a run
def evaluate_scenarios(embs, embs_f, meta, scenarios=(DEFAULT_SCENARIO,), one_n_sets=None):
    """Score every scenario: ({scenario: pair scores}, {scenario: {gallery: 1:N result}})."""
    template_ids, matrix = aggregation_matrix(meta.templates, meta.medias)
    index1, index2 = positions(template_ids, meta.p1), positions(template_ids, meta.p2)
    all_scores, all_1n = {}, {}
    for scenario in scenarios:
        print(">>>> Scenario {}".format(scenario))
        sums = scenario_template_sums(matrix, embs, embs_f, meta.face_scores, scenario)
        check_template_sums(sums, template_ids, scenario)
        feats = face_io.l2_normalize(sums, dtype="float32")
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
