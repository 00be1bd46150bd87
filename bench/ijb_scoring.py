"""Benchmark: IJB-C scale scoring, from image embeddings to the TAR@FAR table.

Synthetic data at IJB-C size (469,375 images of dim 512 plus their flipped embeddings, 23,124 templates,
15,658,489 gallery x probe pairs, 19,557 of them genuine). Two methods, each in a fresh process so the
peak resident memory (getrusage maxrss, input arrays included) is its own:
  vectorized: IJB_evals (sparse media / template aggregation, blocked matmul pair scoring);
  loop:       the usual way, a Python loop over templates, then pairs in batches of 100k gathering both
              template features.
Both end in the same TAR@FAR computation; the parent compares their scores and TAR values.
Prints one JSON object per measurement.

Usage:
    python bench/ijb_scoring.py                      # both methods, full IJB-C size
    python bench/ijb_scoring.py --scale 0.05         # a quick smaller run
    python bench/ijb_scoring.py --method vectorized  # one method, in this process
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from keras_insightface import IJB_evals  # noqa: E402

IJBC_SIZE = {"images": 469_375, "templates": 23_124, "gallery": 3_531, "pairs": 15_658_489, "genuine": 19_557}
DIM = 512
SCENARIO = "N0D1F1"


def make_data(scale=1.0, dim=DIM, seed=0):
    """Synthetic IJB-C-like embeddings and meta; images grouped by template, pairs sorted by gallery template."""
    rng = np.random.default_rng(seed)
    n_images, n_templates, n_gallery = (max(int(IJBC_SIZE[key] * scale), 10) for key in ("images", "templates", "gallery"))
    n_genuine = min(int(IJBC_SIZE["genuine"] * scale), n_templates - n_gallery)
    n_pairs = int(IJBC_SIZE["pairs"] * scale)
    n_probe = n_templates - n_gallery

    template_subject = np.concatenate([np.arange(n_gallery), rng.integers(0, n_gallery, n_probe)])
    templates = np.sort(rng.integers(0, n_templates, n_images))
    templates[:n_templates] = np.arange(n_templates)  # every template has an image
    templates.sort()
    medias = templates * 8 + rng.integers(0, 8, n_images)

    centers = rng.standard_normal([n_gallery, dim], dtype="float32")
    offsets = rng.standard_normal([n_templates, dim], dtype="float32") * rng.uniform(0.5, 2.0, [n_templates, 1]).astype("float32")
    embs = np.empty([n_images, dim], dtype="float32")
    embs_f = np.empty([n_images, dim], dtype="float32")
    for start in range(0, n_images, 65536):
        part = slice(start, start + 65536)
        rows = templates[part]
        embs[part] = centers[template_subject[rows]] + offsets[rows] + 2.0 * rng.standard_normal([len(rows), dim], dtype="float32")
        embs_f[part] = embs[part] + 0.5 * rng.standard_normal([len(rows), dim], dtype="float32")
    face_scores = rng.uniform(0.5, 1.0, n_images).astype("float32")

    probe_genuine = n_gallery + np.arange(n_genuine)
    genuine = np.stack([template_subject[probe_genuine], probe_genuine], axis=1)
    keep = rng.random(n_gallery * n_probe, dtype="float32") < 1.02 * (n_pairs - n_genuine) / (n_gallery * n_probe)
    flat = np.flatnonzero(keep)
    impostor = np.stack([flat // n_probe, n_gallery + flat % n_probe], axis=1)
    impostor = impostor[template_subject[impostor[:, 0]] != template_subject[impostor[:, 1]]][: n_pairs - n_genuine]
    pairs = np.concatenate([genuine, impostor])
    order = np.argsort(pairs[:, 0], kind="stable")
    label = np.concatenate([np.ones(len(genuine), "int64"), np.zeros(len(impostor), "int64")])[order]
    return {
        "embs": embs, "embs_f": embs_f, "face_scores": face_scores, "templates": templates, "medias": medias,
        "p1": pairs[order, 0], "p2": pairs[order, 1], "label": label,
    }


def vectorized_scores(data):
    """The IJB_evals path."""
    template_ids, matrix = IJB_evals.aggregation_matrix(data["templates"], data["medias"])
    feats = IJB_evals.scenario_template_features(matrix, data["embs"], data["embs_f"], data["face_scores"], SCENARIO)
    return IJB_evals.score_pairs(template_ids, feats, data["p1"], data["p2"])


def loop_scores(data, batch=100_000):
    """The usual way: a Python loop over templates and media, then gathered pair features per 100k batch."""
    embs = data["embs"] + data["embs_f"]
    embs = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    embs = embs * data["face_scores"][:, None]
    templates, medias = data["templates"], data["medias"]
    unique_templates = np.unique(templates)
    template_feats = np.zeros([len(unique_templates), embs.shape[1]], dtype="float32")
    for count, template in enumerate(unique_templates):
        (rows,) = np.where(templates == template)
        template_medias = medias[rows]
        media_feats = [embs[rows[template_medias == media]].mean(axis=0) for media in np.unique(template_medias)]
        template_feats[count] = np.sum(media_feats, axis=0)
    template_feats /= np.linalg.norm(template_feats, axis=1, keepdims=True)
    template_index = np.zeros(unique_templates.max() + 1, dtype="int64")
    template_index[unique_templates] = np.arange(len(unique_templates))
    p1, p2 = data["p1"], data["p2"]
    scores = np.zeros(len(p1), dtype="float32")
    for start in range(0, len(p1), batch):
        feat1 = template_feats[template_index[p1[start : start + batch]]]
        feat2 = template_feats[template_index[p2[start : start + batch]]]
        scores[start : start + batch] = np.sum(feat1 * feat2, axis=-1)
    return scores


METHODS = {"vectorized": vectorized_scores, "loop": loop_scores}


def emit(name, metric, value, unit, machine):
    print(json.dumps({"name": name, "metric": metric, "value": value, "unit": unit, "machine": machine}), flush=True)


def run_method(method, scale, machine, scores_out=None):
    data = make_data(scale)
    name = "ijb_scoring_{}".format(method)
    input_bytes = sum(data[key].nbytes for key in ("embs", "embs_f"))
    start, cpu_start = time.perf_counter(), time.process_time()
    scores = METHODS[method](data)
    tars = IJB_evals.tar_at_far(data["label"], scores)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    emit(name, "seconds_embeddings_to_table", round(seconds, 2), "s", machine)
    emit(name, "cpu_seconds_embeddings_to_table", round(cpu_seconds, 2), "s", machine)
    emit(name, "peak_rss", round(peak_gib, 2), "GiB", machine)
    emit(name, "input_embeddings", round(input_bytes / 2**30, 2), "GiB", machine)
    emit(name, "pairs", int(len(scores)), "count", machine)
    for far, tar in zip(IJB_evals.FARS, tars):
        emit(name, "TAR@FAR={:.0e}".format(far), round(float(tar) * 100, 4), "%", machine)
    if scores_out:
        np.save(scores_out, scores)
        np.save(scores_out + ".tars.npy", tars)


def run_all(scale, machine):
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            out = os.path.join(tmp, method + ".npy")
            command = [sys.executable, os.path.abspath(__file__), "--method", method, "--scale", str(scale), "--machine", machine, "--scores_out", out]
            subprocess.run(command, check=True)
        scores = {method: np.load(os.path.join(tmp, method + ".npy")) for method in METHODS}
        tars = {method: np.load(os.path.join(tmp, method + ".npy.tars.npy")) for method in METHODS}
    emit("ijb_scoring_compare", "max_abs_score_difference", float(np.abs(scores["vectorized"] - scores["loop"]).max()), "cosine", machine)
    emit("ijb_scoring_compare", "max_abs_TAR_difference", float(np.abs(tars["vectorized"] - tars["loop"]).max() * 100), "%", machine)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(METHODS), default=None, help="run one method here (default: both, in subprocesses)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the IJB-C sizes (default 1.0)")
    parser.add_argument("--machine", default="2-core x86_64 CPU sandbox")
    parser.add_argument("--scores_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.method:
        run_method(args.method, args.scale, args.machine, args.scores_out)
    else:
        run_all(args.scale, args.machine)


if __name__ == "__main__":
    main()
