"""IJB_evals: a miniature IJB tree end to end, hand-made embeddings with known TAR@FAR / top-1, hand-worked aggregation."""
import errno
import glob
import os
import tempfile

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from keras_insightface import IJB_evals, face_io

TEMPLATE_5PTS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


# ------------------------------------------------------------------------------------------------ tree writers
def write_meta(root, subset, rows, pairs, one_n=None, landmarks=None):
    """rows: (image, template, media, score); pairs: (t1, t2, label); one_n: {name: [(template, subject)]}."""
    prefix = subset.lower()
    meta_dir = os.path.join(root, subset, "meta")
    os.makedirs(meta_dir, exist_ok=True)
    with open(os.path.join(meta_dir, prefix + "_face_tid_mid.txt"), "w") as ff:
        ff.writelines("{} {} {}\n".format(image, template, media) for image, template, media, _ in rows)
    with open(os.path.join(meta_dir, prefix + "_name_5pts_score.txt"), "w") as ff:
        for index, (image, _, _, score) in enumerate(rows):
            points = TEMPLATE_5PTS if landmarks is None else landmarks[index]
            ff.write("{} {} {}\n".format(image, " ".join("{:.4f}".format(v) for v in points.ravel()), score))
    with open(os.path.join(meta_dir, prefix + "_template_pair_label.txt"), "w") as ff:
        ff.writelines("{} {} {}\n".format(*pair) for pair in pairs)
    for name, members in (one_n or {}).items():
        file_name = "{}_1N_{}.csv".format(prefix, "probe_mixed" if name == "probe" else "gallery_" + name)
        with open(os.path.join(meta_dir, file_name), "w") as ff:
            ff.write("TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n")
            ff.writelines("{},{},img/{}.jpg,1,0,0,10,10\n".format(template, subject, template) for template, subject in members)
    return meta_dir


def smooth_face(seed, size=112):
    """Low-frequency colour pattern: resampling it changes pixels only slightly."""
    coarse = np.random.default_rng(seed).integers(0, 256, [7, 7, 3]).astype("uint8")
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


# Mini IJB-C: 8 templates (subjects 1..4 twice), 24 images, several medias with more than one image.
TEMPLATE_SUBJECT = {1: 1, 2: 2, 3: 3, 4: 4, 5: 1, 6: 2, 7: 3, 8: 4}
GALLERIES = {"G1": [(1, 1), (2, 2)], "G2": [(3, 3), (4, 4)], "probe": [(5, 1), (6, 2), (7, 3), (8, 4)]}


def mini_rows():
    rows, count = [], 0
    for template in TEMPLATE_SUBJECT:
        for image in range(3):
            count += 1
            media = template * 10 + (image if template % 2 else 0)  # odd templates: 3 medias; even: one media of 3 frames
            rows.append(("{}.jpg".format(count), template, media, round(0.5 + 0.02 * count, 2)))
    return rows


def mini_pairs():
    return [(g, p, int(TEMPLATE_SUBJECT[g] == TEMPLATE_SUBJECT[p])) for g in (1, 2, 3, 4) for p in (5, 6, 7, 8)]


@pytest.fixture(scope="module")
def mini_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("IJB_release"))
    rows = mini_rows()
    image_dir = os.path.join(root, "IJBC", "loose_crop")
    os.makedirs(image_dir)
    for index, (image, template, _, _) in enumerate(rows):
        face = np.clip(smooth_face(TEMPLATE_SUBJECT[template]).astype(int) + (index * 7) % 40 - 20, 0, 255).astype("uint8")
        cv2.imwrite(os.path.join(image_dir, image), face[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    write_meta(root, "IJBC", rows, mini_pairs(), GALLERIES)
    return root


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input([112, 112, 3]), keras.layers.AveragePooling2D(16), keras.layers.Flatten(), keras.layers.Dense(8, use_bias=False, name="embedding")]
    )
    path = str(tmp_path_factory.mktemp("model") / "tiny_model.h5")
    model.save(path)
    return path, model.get_layer("embedding").get_weights()[0]


# ------------------------------------------------------------------------------------------------ references in plain NumPy
def reference_embedding(rgb, weights):
    pooled = ((rgb.astype("float64") - 127.5) / 128).reshape(7, 16, 7, 16, 3).mean(axis=(1, 3))
    return pooled.reshape(-1) @ weights


def reference_template_scores(embs, embs_f, face_scores, templates, medias, pairs, norm, detector, flip):
    """The usual loops: per image, per media mean, per template sum, cosine per pair."""
    feats = {}
    for index in range(len(embs)):
        feat = embs[index] + (embs_f[index] if flip else 0)
        feat = feat if norm else feat / np.linalg.norm(feat)
        feats[index] = feat * (face_scores[index] if detector else 1)
    template_feats = {}
    for template in set(templates):
        media_means = []
        for media in sorted(set(medias[i] for i in range(len(embs)) if templates[i] == template)):
            members = [feats[i] for i in range(len(embs)) if templates[i] == template and medias[i] == media]
            media_means.append(np.mean(members, axis=0))
        total = np.sum(media_means, axis=0)
        template_feats[template] = total / np.linalg.norm(total)
    return np.array([template_feats[t1] @ template_feats[t2] for t1, t2, _ in pairs]), template_feats


def reference_tar(label, scores, far):
    """Highest TAR with at most floor(far * negatives) accepted negatives, when that count is a whole number."""
    negatives = np.sort(scores[label == 0])[::-1]
    allowed = int(round(far * len(negatives)))
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return np.mean(scores[label == 1] > threshold)


def insightface_tar(label, scores, far):
    """insightface evaluation/IJB (and arcface_torch eval_ijbc.py, the original Keras_insightface): roc_curve,
    both arrays flipped ("select largest tpr at same fpr"), TAR = tpr at the first argmin of |fpr - far|."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return tpr[np.argmin(abs(fpr - far))]


# ------------------------------------------------------------------------------------------------ tests
def test_alignment_is_identity_on_the_template_and_undoes_a_similarity(tmp_path):
    face = smooth_face(3)
    np.testing.assert_array_equal(IJB_evals.align_face(face, TEMPLATE_5PTS), face)

    angle, scale, shift = np.deg2rad(12), 1.7, np.array([30.0, 14.0])
    forward = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.hstack([forward, shift[:, None]])
    big = cv2.warpAffine(face, matrix, (240, 240), flags=cv2.INTER_CUBIC)
    moved_points = TEMPLATE_5PTS @ forward.T + shift
    aligned = IJB_evals.align_face(big, moved_points)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(aligned[inner].astype(int) - face[inner].astype(int)).mean() < 2.0


def test_end_to_end_cli_on_mini_tree(mini_tree, tiny_model_file, tmp_path):
    model_path, weights = tiny_model_file
    out = str(tmp_path / "result")
    table, table_1n = IJB_evals.run(IJB_evals.parse_arguments(["-m", model_path, "-d", mini_tree, "-s", "IJBC", "-b", "5", "-o", out, "-E", "-L", "-N", "--workers", "2"]))

    rows, pairs = mini_rows(), mini_pairs()
    images = [cv2.imread(os.path.join(mini_tree, "IJBC", "loose_crop", row[0]))[:, :, ::-1] for row in rows]
    embs = np.array([reference_embedding(image, weights) for image in images])
    embs_f = np.array([reference_embedding(image[:, ::-1], weights) for image in images])
    templates, medias = [row[1] for row in rows], [row[2] for row in rows]
    face_scores = np.array([row[3] for row in rows])
    expected, template_feats = reference_template_scores(embs, embs_f, face_scores, templates, medias, pairs, norm=False, detector=True, flip=True)

    saved = np.load(os.path.join(out, "tiny_model_h5_IJBC_N0D1F1.npy"))
    np.testing.assert_allclose(saved, expected, atol=1e-4)
    label = np.load(os.path.join(out, "IJBC_label.npz"))["label"]
    np.testing.assert_array_equal(label, [pair[2] for pair in pairs])
    with np.load(os.path.join(out, "tiny_model_h5_IJBC.npz")) as data:
        np.testing.assert_allclose(data["embs"], embs, atol=1e-4)
        np.testing.assert_allclose(data["embs_f"], embs_f, atol=1e-4)
        np.testing.assert_array_equal(data["templates"], templates)

    csv = pd.read_csv(os.path.join(out, "tiny_model_h5_IJBC_N0D1F1.csv"), index_col=0)
    assert list(csv.columns) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    label = np.array([pair[2] for pair in pairs])
    # the default rule is insightface's: the ROC point nearest each FAR
    for far in IJB_evals.FARS:
        column = "{:.0e}".format(far)
        assert csv.loc["tiny_model_h5_IJBC_N0D1F1", column] == pytest.approx(insightface_tar(label, expected, far) * 100, abs=1e-6)
    # 12 negatives: FAR 1e-1 lies between 1/12 and 2/12 false accepts; the nearest point is 1/12
    assert csv.loc["tiny_model_h5_IJBC_N0D1F1", "1e-01"] == pytest.approx(reference_tar(label, expected, 1 / 12) * 100, abs=1e-6)

    one_n = pd.read_csv(os.path.join(out, "tiny_model_h5_IJBC_N0D1F1_1N.csv"), index_col=[0, 1])
    for gallery, members in (("G1", GALLERIES["G1"]), ("G2", GALLERIES["G2"])):
        hits = []
        for probe, subject in GALLERIES["probe"]:
            if subject in dict((s, t) for t, s in members):
                best = max(members, key=lambda member: template_feats[probe] @ template_feats[member[0]])
                hits.append(best[1] == subject)
        assert one_n.loc[("N0D1F1", gallery), "top1"] == pytest.approx(np.mean(hits) * 100)
        assert one_n.loc[("N0D1F1", gallery), "top5"] == pytest.approx(100.0)

    restored, _ = IJB_evals.run(IJB_evals.parse_arguments(["-R", os.path.join(out, "tiny_model_h5_IJBC.npz"), "-d", mini_tree, "-s", "IJBC", "-B", "-o", out]))
    assert len(restored) == 8 and set(restored.index) == {"tiny_model_h5_IJBC_" + s for s in IJB_evals.ALL_SCENARIOS}
    np.testing.assert_allclose(np.load(os.path.join(out, "tiny_model_h5_IJBC_N0D1F1.npy")), expected, atol=1e-4)
    for scenario in ("N1D0F0", "N1D1F0", "N0D0F1"):
        flags = IJB_evals.parse_scenario(scenario)
        scenario_expected, _ = reference_template_scores(
            embs, embs_f, face_scores, templates, medias, pairs,
            norm=flags["use_norm_score"], detector=flags["use_detector_score"], flip=flags["use_flip_test"],
        )
        np.testing.assert_allclose(np.load(os.path.join(out, "tiny_model_h5_IJBC_{}.npy".format(scenario))), scenario_expected, atol=1e-4)

    alone = str(tmp_path / "alone")
    IJB_evals.run(IJB_evals.parse_arguments(["-R", os.path.join(out, "tiny_model_h5_IJBC.npz"), "-s", "IJBC", "-o", alone]))  # meta from the npz
    np.testing.assert_allclose(np.load(os.path.join(alone, "tiny_model_h5_IJBC_N0D1F1.npy")), expected, atol=1e-4)

    png = str(tmp_path / "roc.png")
    plot_table, _ = IJB_evals.run(IJB_evals.parse_arguments(["--plot_only", os.path.join(out, "tiny_model_h5_IJBC_N0D1F1.npy"), os.path.join(out, "tiny_model_h5_IJBC_N1D1F1.npy"), os.path.join(out, "IJBC_label.npz"), "--plot_save", png]))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(plot_table) == 2
    assert sorted(os.path.basename(path) for path in glob.glob(os.path.join(out, "*.npy"))) == sorted(
        "tiny_model_h5_IJBC_{}.npy".format(s) for s in IJB_evals.ALL_SCENARIOS)  # README's score glob: no label file

    with pytest.raises(ValueError, match="tiny_model_h5_IJBC.npz: embeddings of IJBC, but -s IJBB was asked"):
        IJB_evals.run(IJB_evals.parse_arguments(["-R", os.path.join(out, "tiny_model_h5_IJBC.npz"), "-s", "IJBB", "-o", alone]))
    IJB_evals.run(IJB_evals.parse_arguments(["-R", os.path.join(out, "tiny_model_h5_IJBC.npz"), "-o", alone]))  # -s from the file
    assert os.path.exists(os.path.join(alone, "tiny_model_h5_IJBC_N0D1F1.csv"))


def hand_made_release(root):
    """Meta for -R with hand-made 8-d embeddings: 110 one-image template pairs and a 1:N part.

    Pair k compares template 1000+k, embedding e6, with 2000+k, embedding cos(a) e6 + sin(a) e7, so its
    score is cos(a): 10 genuine scores (8 x 0.9, 2 x 0.2) and 100 impostor scores (0.95, 0.5, then 98 <= 0.1).
    """
    genuine = [0.9] * 8 + [0.2] * 2
    impostor = [0.95, 0.5] + list(np.linspace(-0.9, 0.1, 98))
    rows, embs, pairs = [], [], []

    def add_template(template, emb):
        rows.append(("{}.jpg".format(len(rows) + 1), template, template, 1.0))
        embs.append(emb)

    for k, (score, label) in enumerate([(s, 1) for s in genuine] + [(s, 0) for s in impostor]):
        add_template(1000 + k, np.eye(8)[6])
        add_template(2000 + k, score * np.eye(8)[6] + np.sqrt(1 - score**2) * np.eye(8)[7])
        pairs.append((1000 + k, 2000 + k, label))
    basis = np.eye(8)
    gallery = {1: basis[1], 2: basis[2], 3: basis[3], 4: basis[4], 5: basis[5]}
    probes = {  # template: (subject, embedding)
        11: (1, basis[1] + 0.1 * basis[2]),  # right
        12: (2, basis[3] + 0.5 * basis[2]),  # nearest is subject 3: wrong at rank 1, right at rank 2
        13: (3, basis[3]),  # right
        14: (4, basis[4]),  # right
        15: (5, 0.6 * basis[4] + 0.5 * basis[5]),  # nearest is subject 4: wrong
    }
    for template, emb in gallery.items():
        add_template(template, emb)
    for template, (_, emb) in probes.items():
        add_template(template, emb)
    one_n = {"G1": [(1, 1), (2, 2), (3, 3)], "G2": [(4, 4), (5, 5)], "probe": [(t, s) for t, (s, _) in probes.items()]}
    write_meta(root, "IJBC", rows, pairs, one_n)
    return np.array(embs, dtype="float32")


def test_restore_hand_made_embeddings_gives_known_tar_and_top1(tmp_path, capsys):
    root = str(tmp_path / "IJB_release")
    embs = hand_made_release(root)
    npz = str(tmp_path / "emb" / "hand_IJBC.npz")
    os.makedirs(os.path.dirname(npz))
    np.savez(npz, embs=embs)
    table, table_1n = IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-d", root, "-s", "IJBC", "-N"]))

    # no flipped embeddings: the default scenario runs as N0D1F0; scores in percent
    assert list(table.index) == ["hand_IJBC_N0D1F0"]
    # FAR 1e-2 = one false accept (0.95): the 0.9 genuines pass, TAR 80%; from 2 false accepts every genuine
    # passes; below 1e-2 the nearest ROC point is FAR 0, where no genuine passes (insightface's rule)
    expected = {"1e-06": 0.0, "1e-05": 0.0, "1e-04": 0.0, "1e-03": 0.0, "1e-02": 80.0, "1e-01": 100.0}
    for far, tar in expected.items():
        assert table.loc["hand_IJBC_N0D1F0", far] == pytest.approx(tar, abs=1e-6), far
    # --interpolate_far: below 1e-2 the curve is interpolated from (0, 0) to (1e-2, 80%)
    interpolated, _ = IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-d", root, "-s", "IJBC", "--interpolate_far"]))
    expected = {"1e-06": 0.008, "1e-05": 0.08, "1e-04": 0.8, "1e-03": 8.0, "1e-02": 80.0, "1e-01": 100.0}
    for far, tar in expected.items():
        assert interpolated.loc["hand_IJBC_N0D1F0", far] == pytest.approx(tar, abs=1e-6), far
    assert os.path.exists(str(tmp_path / "emb" / "hand_IJBC_N0D1F0.npy"))
    assert ">>>> Saved scores: {}\n".format(tmp_path / "emb" / "hand_IJBC_N0D1F0.npy") in capsys.readouterr().out
    saved = pd.read_csv(str(tmp_path / "emb" / "hand_IJBC_N0D1F0.csv"), index_col=0)
    assert saved.loc["hand_IJBC_N0D1F0", "1e-02"] == pytest.approx(80.0)

    g1, g2 = table_1n.loc[("N0D1F0", "G1")], table_1n.loc[("N0D1F0", "G2")]
    assert (g1["mated"], g1["non_mated"], g2["mated"], g2["non_mated"]) == (3, 2, 2, 3)
    assert g1["top1"] == pytest.approx(200 / 3) and g1["top5"] == pytest.approx(100)
    assert g2["top1"] == pytest.approx(50) and g2["top5"] == pytest.approx(100)
    # non-mated probes score 0 against the other gallery; FPIR 1% allows none above 0: the right rank-1 hits pass
    assert g1["TPIR@FPIR=1e-02"] == pytest.approx(200 / 3) and g2["TPIR@FPIR=1e-02"] == pytest.approx(50)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_embeddings_are_an_error_with_their_count(tmp_path, value):
    root = str(tmp_path / "IJB_release")
    embs = hand_made_release(root)
    embs[[3, 40]] = value
    npz = str(tmp_path / "bad_IJBC.npz")
    np.savez(npz, embs=embs)
    with pytest.raises(ValueError, match=r"bad_IJBC.npz: 2 of \d+ embs rows hold NaN or inf \(first: row 3\)"):
        IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-d", root, "-s", "IJBC", "-B"]))


def test_result_names_carry_the_model_format():
    names = {IJB_evals.model_result_name(path) for path in ("m/model.h5", "m/model.onnx", "m/model.keras", "m/model.pt")}
    assert names == {"model_h5", "model_onnx", "model_keras", "model_pt"}
    assert IJB_evals.model_result_name("models/r100/model,0") == "r100_mxnet"


def test_restore_of_a_file_that_is_not_an_npz_is_an_error(tmp_path):
    npz = tmp_path / "scores_IJBB.npz"
    npz.write_text("not numpy")
    with pytest.raises(ValueError, match=r"scores_IJBB.npz: not an .npz file"):
        IJB_evals.run(IJB_evals.parse_arguments(["-R", str(npz)]))
    np.save(tmp_path / "scores.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"scores.npy: not an .npz file"):
        IJB_evals.run(IJB_evals.parse_arguments(["-R", str(tmp_path / "scores.npy")]))


def two_template_meta():
    """Template 7: media 1 = images a1, a2; media 2 = image a3.  Template 9: image b1."""
    return IJB_evals.IJBMeta(
        img_names=np.array(["a1", "a2", "a3", "b1"]),
        landmarks=np.zeros([4, 5, 2], "float32"),
        face_scores=np.array([0.5, 1.0, 0.25, 0.8], "float32"),
        templates=np.array([7, 7, 7, 9]),
        medias=np.array([1, 1, 2, 3]),
        p1=np.array([7]),
        p2=np.array([9]),
        label=np.array([1]),
    )


EMBS = np.array([[3, 4], [0, 2], [1, 0], [0, 5]], "float32")
EMBS_F = np.array([[3, 4], [0, 0], [1, 0], [0, -1]], "float32")


@pytest.mark.parametrize(
    "scenario, template_7, score",
    [
        # flip sums: (6,8) (0,2) (2,0) (0,4); N0 -> (.6,.8) (0,1) (1,0); D1 x (.5, 1, .25): (.3,.4) (0,1) (.25,0)
        # media 1 mean (.15,.7) + media 2 (.25,0) = (.4,.7); template 9 -> (0,1)
        ("N0D1F1", [0.4, 0.7], 0.7 / np.sqrt(0.65)),
        # raw: media 1 mean (1.5,3) + (1,0) = (2.5,3)
        ("N1D0F0", [2.5, 3.0], 3 / np.sqrt(15.25)),
        # normalized: (.6,.8) (0,1) -> mean (.3,.9) + (1,0) = (1.3,.9)
        ("N0D0F0", [1.3, 0.9], 0.9 / np.sqrt(2.5)),
        # flip sums x score: (3,4) (0,2) (.5,0) -> mean (1.5,3) + (.5,0) = (2,3)
        ("N1D1F1", [2.0, 3.0], 3 / np.sqrt(13)),
    ],
)
def test_aggregation_rules_match_hand_worked_two_template_case(scenario, template_7, score):
    meta = two_template_meta()
    flags = IJB_evals.parse_scenario(scenario)
    feats = IJB_evals.image_features(EMBS, EMBS_F, meta.face_scores, **flags)
    template_ids, template_feats = IJB_evals.template_features(feats, meta.templates, meta.medias)
    np.testing.assert_array_equal(template_ids, [7, 9])
    np.testing.assert_allclose(template_feats[0], np.array(template_7) / np.linalg.norm(template_7), rtol=1e-6)
    np.testing.assert_allclose(template_feats[1], [0, 1], atol=1e-7)
    all_scores, _ = IJB_evals.evaluate_scenarios(EMBS, EMBS_F, meta, [scenario])
    np.testing.assert_allclose(all_scores[scenario], [score], rtol=1e-6)


def test_pair_scoring_paths_and_tar_agree_with_plain_numpy():
    rng = np.random.default_rng(0)
    feats = face_io.l2_normalize(rng.normal(size=[300, 16]).astype("float32"), dtype="float32")
    index1, index2 = rng.integers(0, 40, 5000), rng.integers(40, 300, 5000)
    expected = np.sum(feats[index1] * feats[index2], axis=1)
    np.testing.assert_allclose(IJB_evals.pair_cosine(feats, index1, index2, block_entries=1000), expected, atol=1e-6)
    np.testing.assert_allclose(IJB_evals.pair_cosine(feats, index1, index2, dense_ratio=0), expected, atol=1e-6)

    from sklearn.metrics import roc_curve

    label = rng.random(5000) < 0.2
    scores = np.round(expected + label, 2)  # with ties
    fpr, tpr, _ = roc_curve(label, scores, drop_intermediate=False)
    highest = np.append(fpr[1:] != fpr[:-1], True)
    fars = np.logspace(-6, 0, 40)
    interpolated = IJB_evals.tar_at_far(label, scores, fars, rule="interpolate")
    np.testing.assert_allclose(interpolated, np.interp(fars, fpr[highest], tpr[highest]), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_default_is_insightface_nearest_roc_point(seed):
    """Against sklearn's roc_curve + flipud + argmin (insightface IJB_11.py / arcface_torch eval_ijbc.py), with ties."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    label = rng.random(3000) < 0.3
    scores = np.round(rng.normal(size=3000) + 1.5 * label, 1 + seed)  # many ties, horizontal and vertical runs
    fpr, tpr, _ = roc_curve(label, scores)
    points = IJB_evals.roc_curve_points(label, scores)
    np.testing.assert_allclose(points[0], fpr, atol=0)
    np.testing.assert_allclose(points[1], tpr, atol=0)
    fars = list(IJB_evals.FARS) + list(np.linspace(0, 1, 101)) + [1.5 / label.sum()]
    expected = [insightface_tar(label, scores, far) for far in fars]
    np.testing.assert_array_equal(IJB_evals.tar_at_far(label, scores, fars), expected)
    with pytest.raises(ValueError, match="rule"):
        IJB_evals.tar_at_far(label, scores, fars, rule="spline")


# ------------------------------------------------------------------------------------------------ malformed meta
@pytest.fixture()
def small_release(tmp_path):
    root = str(tmp_path / "IJB_release")
    rows = [("{}.jpg".format(i + 1), 1 + i // 2, 10 + i, 0.9) for i in range(4)]
    meta_dir = write_meta(root, "IJBB", rows, [(1, 2, 0), (2, 2, 1)], {"S1": [(1, 1)], "S2": [(2, 2)], "probe": [(1, 1)]})
    image_dir = os.path.join(root, "IJBB", "loose_crop")
    os.makedirs(image_dir)
    for row in rows:
        cv2.imwrite(os.path.join(image_dir, row[0]), smooth_face(0))
    return root, meta_dir


def _rewrite_line(path, line_number, text):
    lines = open(path).read().splitlines()
    lines[line_number - 1] = text
    open(path, "w").write("\n".join(lines) + "\n")


def test_well_formed_small_release_reads(small_release):
    meta = IJB_evals.read_ijb_meta(small_release[0], "IJBB")
    np.testing.assert_array_equal(meta.templates, [1, 1, 2, 2])
    np.testing.assert_allclose(meta.landmarks[0], TEMPLATE_5PTS, atol=1e-4)


@pytest.mark.parametrize(
    "file_name, line, text, error, message",
    [
        ("ijbb_template_pair_label.txt", 2, "2 1", ValueError, r"ijbb_template_pair_label\.txt: line 2: expected 3 columns"),
        ("ijbb_template_pair_label.txt", 2, "2 99 0", ValueError, r"ijbb_template_pair_label\.txt: line 2: template id 99"),
        ("ijbb_template_pair_label.txt", 1, "1 x 0", ValueError, r"ijbb_template_pair_label\.txt: line 1: column 't2' should be int"),
        ("ijbb_face_tid_mid.txt", 3, "3.jpg 2 12 7", ValueError, r"ijbb_face_tid_mid\.txt: line 3: expected 3 columns"),
        ("ijbb_name_5pts_score.txt", 4, "4.jpg 1 2 3", ValueError, r"ijbb_name_5pts_score\.txt: line 4: expected 12 columns"),
        ("ijbb_1N_gallery_S1.csv", 1, "TEMPLATE_ID,FILENAME", ValueError, r"ijbb_1N_gallery_S1\.csv: line 1: missing columns \['SUBJECT_ID'\]"),
        ("ijbb_1N_probe_mixed.csv", 2, "77,1,x.jpg,1,0,0,1,1", ValueError, r"ijbb_1N_probe_mixed\.csv: line 2: template id 77"),
    ],
)
def test_malformed_meta_fails_before_the_model_naming_file_and_line(small_release, file_name, line, text, error, message):
    root, meta_dir = small_release
    _rewrite_line(os.path.join(meta_dir, file_name), line, text)
    with pytest.raises(error, match=message):
        IJB_evals.run(IJB_evals.parse_arguments(["-m", "not_loaded_yet.h5", "-d", root, "-s", "IJBB", "-N"]))


def test_probe_csv_with_only_a_header_is_an_error(small_release):
    root, meta_dir = small_release
    open(os.path.join(meta_dir, "ijbb_1N_probe_mixed.csv"), "w").write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
    with pytest.raises(ValueError, match=r"ijbb_1N_probe_mixed\.csv: only a header line, no rows"):
        IJB_evals.run(IJB_evals.parse_arguments(["-m", "not_loaded_yet.h5", "-d", root, "-s", "IJBB", "-N"]))


def test_image_names_leaving_the_release_folder_are_an_error(small_release):
    root, meta_dir = small_release
    open(os.path.join(root, "IJBB", "outside.jpg"), "wb").write(open(os.path.join(root, "IJBB", "loose_crop", "1.jpg"), "rb").read())
    for file_name in ("ijbb_face_tid_mid.txt", "ijbb_name_5pts_score.txt"):
        path = os.path.join(meta_dir, file_name)
        _rewrite_line(path, 2, open(path).read().splitlines()[1].replace("2.jpg", "../outside.jpg"))
    with pytest.raises(ValueError, match=r"ijbb_name_5pts_score\.txt: line 2: image name '\.\./outside\.jpg' leaves the image folder"):
        IJB_evals.run(IJB_evals.parse_arguments(["-m", "not_loaded_yet.h5", "-d", root, "-s", "IJBB"]))


def test_missing_image_is_named_with_its_line(small_release):
    root, _ = small_release
    os.remove(os.path.join(root, "IJBB", "loose_crop", "3.jpg"))
    with pytest.raises(FileNotFoundError, match=r"ijbb_name_5pts_score\.txt: line 3: image not found: .*3\.jpg"):
        IJB_evals.run(IJB_evals.parse_arguments(["-m", "not_loaded_yet.h5", "-d", root, "-s", "IJBB"]))


# ------------------------------------------------------------------------------------------------ hostile -R files and meta
def restore_npz(folder, name="m_IJBC.npz", **changes):
    """A -R file with its own meta: 6 images of templates 1, 2, 5 (two images each), pairs (1,2) same, (1,5) (2,5) not."""
    arrays = dict(
        embs=np.random.default_rng(5).normal(size=[6, 4]).astype("float32"), templates=np.array([1, 1, 2, 2, 5, 5]),
        medias=np.array([1, 2, 3, 3, 4, 5]), face_scores=np.array([0.9, 0.8, 0.7, 0.9, 0.6, 1.0], "float32"),
        p1=np.array([1, 1, 2]), p2=np.array([2, 5, 5]), label=np.array([1, 0, 0]), subset=np.array("IJBC"),
    )
    arrays.update(changes)
    path = os.path.join(str(folder), name)
    np.savez(path, **arrays)
    return path


def assert_one_line_error(argv, capsys, *parts):
    status = IJB_evals.main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("IJB_evals.py: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


ROWS = np.random.default_rng(5).normal(size=[6, 4]).astype("float32")


@pytest.mark.parametrize("changes, message", [
    ({"embs": np.zeros([6, 4], "float32")}, "6 of 6 embs rows are all zero (first: row 0): degenerate embeddings"),
    ({"embs": np.where(np.arange(6)[:, None] == 2, 0, ROWS).astype("float32")}, "1 of 6 embs rows are all zero (first: row 2)"),
    ({"embs": np.tile(ROWS[:1], [6, 1])}, "all 6 embs rows are the same vector: degenerate embeddings"),
    ({"embs": ROWS[:, 0]}, "embs of shape (6,)"),
    ({"embs": np.array(["a"] * 6)}, "'embs' holds <U1 of shape (6,); expected rows of numbers"),
    ({"embs_f": np.zeros([6, 4], "float32")}, "6 of 6 flipped embs rows are all zero"),
    ({"p1": np.array([1, 1, 3])}, "(p1, p2, label): row 2: template id 3 is not in the template / media list"),  # between the ids
    ({"p2": np.array([2, 5, 9])}, "(p1, p2, label): row 2: template id 9 is not in the template / media list"),  # above every id
    ({"face_scores": np.array([0.9, 0.8, 0.7, 0.9, -0.5, 1.0], "float32")}, "(templates, face_scores): row 4: detector score -0.5"),
    ({"face_scores": np.array([0.9, 0.8, np.nan, 0.9, 0.5, 1.0], "float32")}, "row 2: detector score nan"),
    ({"label": np.array([0, 0, 0])}, "all 3 pairs are labelled 0; TAR@FAR needs pairs of the same and of different identities"),
    ({"label": np.array([1, 2, 0])}, "row 1: label should be 0 or 1, got 2"),
    ({"medias": np.array([1, 2, 3, 3, 4])}, "'medias' of shape (5,); expected one value per image (6 images)"),
])
def test_hostile_restore_files_are_one_line_errors(tmp_path, capsys, changes, message):
    npz = restore_npz(tmp_path, **changes)
    assert_one_line_error(["-R", npz, "-o", str(tmp_path / "out")], capsys, npz, message)
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_negative_detector_score_in_the_meta_is_named_with_its_line(small_release):
    root, meta_dir = small_release
    path = os.path.join(meta_dir, "ijbb_name_5pts_score.txt")
    _rewrite_line(path, 3, open(path).read().splitlines()[2].rsplit(" ", 1)[0] + " -0.25")
    with pytest.raises(ValueError, match=r"ijbb_name_5pts_score\.txt: line 3: detector score -0\.25 \(1 of 4 scores"):
        IJB_evals.run(IJB_evals.parse_arguments(["-m", "not_loaded_yet.h5", "-d", root, "-s", "IJBB"]))


def test_a_template_whose_images_all_score_zero_is_refused_in_d1_scenarios():
    meta = two_template_meta()
    meta.face_scores[3] = 0  # template 9's only image
    with pytest.raises(ValueError, match=r"scenario N0D1F1: 1 of 2 templates have a zero feature \(first: template 9\)"):
        IJB_evals.evaluate_scenarios(EMBS, EMBS_F, meta, ["N0D1F1"])
    scores, _ = IJB_evals.evaluate_scenarios(EMBS, EMBS_F, meta, ["N0D0F1"])  # D0 does not use the scores
    assert np.isfinite(scores["N0D0F1"]).all()


def test_positions_refuse_ids_that_are_not_there():
    np.testing.assert_array_equal(IJB_evals.positions(np.array([3, 5, 9]), np.array([9, 3, 5, 5])), [2, 0, 1, 1])
    np.testing.assert_array_equal(IJB_evals.positions(np.array([3, 5, 10**9]), np.array([10**9, 5])), [2, 1])  # sparse ids
    for values in ([4], [10], [-1], [10**12]):
        with pytest.raises(ValueError, match="id {} is not among the 3 ids".format(values[0])):
            IJB_evals.positions(np.array([3, 5, 9]), np.array(values))
    with pytest.raises(ValueError, match="id 7 is not among"):
        IJB_evals.positions(np.array([3, 5, 10**9]), np.array([7]))


@pytest.mark.parametrize("flag, value", [("-b", "-1"), ("-b", "0"), ("--workers", "0")])
def test_counts_below_one_are_refused_by_the_parser(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        IJB_evals.parse_arguments(["-m", "m.h5", "-d", "IJB_release", flag, value])
    assert exit_info.value.code == 2
    assert "error: argument {}".format(flag) in capsys.readouterr().err


def test_output_folder_that_is_a_file_or_a_result_that_is_a_folder(tmp_path, capsys):
    npz = restore_npz(tmp_path)
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    assert_one_line_error(["-R", npz, "-o", str(a_file)], capsys, "-o {}: is a file; the result folder was expected".format(a_file))
    assert a_file.read_text() == "mine"
    (tmp_path / "out" / "m_IJBC_N0D1F0.npy").mkdir(parents=True)
    assert_one_line_error(["-R", npz, "-o", str(tmp_path / "out")], capsys, "m_IJBC_N0D1F0.npy: is a directory, a result file was expected")


def test_random_bytes_onnx_model_is_one_line(small_release, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "random.onnx"
    model.write_bytes(np.random.default_rng(0).bytes(3000))
    assert_one_line_error(["-m", str(model), "-d", small_release[0], "-s", "IJBB", "-o", str(tmp_path / "out")], capsys,
                          str(model) + ": not a readable ONNX model")


def test_a_training_model_is_cut_at_its_embedding_layer(mini_tree, tiny_model_file, tmp_path, capsys):
    from keras_insightface import models

    model_path, weights = tiny_model_file
    basic = keras.models.load_model(model_path, compile=False)
    full_path = str(tmp_path / "full_model.h5")
    keras.Model(basic.inputs[0], models.NormDense(3, name="NormDense")(basic.outputs[0])).save(full_path)
    IJB_evals.run(IJB_evals.parse_arguments(["-m", full_path, "-d", mini_tree, "-s", "IJBC", "-o", str(tmp_path / "out"), "-E", "-F"]))
    assert "a training model (outputs (None, 3)): cut at its 'embedding' layer, whose 8-d output is used" in capsys.readouterr().out
    images = [cv2.imread(os.path.join(mini_tree, "IJBC", "loose_crop", row[0]))[:, :, ::-1] for row in mini_rows()]
    with np.load(str(tmp_path / "out" / "full_model_h5_IJBC.npz")) as data:
        np.testing.assert_allclose(data["embs"], [reference_embedding(image, weights) for image in images], atol=1e-4)


# ------------------------------------------------------------------------------------------------ earlier results are kept
def read_bytes(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_a_default_run_after_a_bunch_run_keeps_the_bunch_table(tmp_path, capsys):
    npz, out = restore_npz(tmp_path), str(tmp_path / "out")
    IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-o", out, "-B", "-L"]))
    bunch = read_bytes(out)
    assert "m_IJBC_bunch_F0.csv" in bunch and len(pd.read_csv(os.path.join(out, "m_IJBC_bunch_F0.csv"))) == 4
    capsys.readouterr()
    IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-o", out, "-L"]))
    after = read_bytes(out)
    assert {name: after[name] for name in bunch} == bunch  # the 4-scenario table, scores and labels untouched
    assert set(after) - set(bunch) == {"m_IJBC_N0D1F0.csv"}
    out_text = capsys.readouterr().out
    assert ">>>> Kept, already holding these results: {}, {}\n".format(
        os.path.join(out, "m_IJBC_N0D1F0.npy"), os.path.join(out, "IJBC_label.npz")) in out_text


def test_other_results_under_the_same_name_are_kept_unless_overwrite(tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(tmp_path / "a")
    first = restore_npz(tmp_path / "a")
    IJB_evals.run(IJB_evals.parse_arguments(["-R", first, "-o", out]))
    earlier = read_bytes(out)
    os.makedirs(tmp_path / "b")
    embs = np.random.default_rng(9).normal(size=[6, 4]).astype("float32")
    second = restore_npz(tmp_path / "b", embs=embs)
    assert_one_line_error(["-R", second, "-o", out], capsys, os.path.join(out, "m_IJBC_N0D1F0.npy"),
                          "already exists with other scores; it is kept (pass --overwrite to replace it)")
    assert read_bytes(out) == earlier

    IJB_evals.run(IJB_evals.parse_arguments(["-R", second, "-o", out, "--overwrite"]))
    templates, medias = [1, 1, 2, 2, 5, 5], [1, 2, 3, 3, 4, 5]
    pairs = [(1, 2, 1), (1, 5, 0), (2, 5, 0)]
    scores = [0.9, 0.8, 0.7, 0.9, 0.6, 1.0]
    expected, _ = reference_template_scores(embs, None, scores, templates, medias, pairs, norm=False, detector=True, flip=False)
    np.testing.assert_allclose(np.load(os.path.join(out, "m_IJBC_N0D1F0.npy")), expected, atol=1e-6)


def test_a_model_run_refuses_existing_results_before_loading_the_model(small_release, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "basic_model_h5_IJBB_N0D1F1.npy").write_bytes(b"earlier")
    missing_model = str(tmp_path / "basic_model.h5")  # never loaded: the check comes first
    assert_one_line_error(["-m", missing_model, "-d", small_release[0], "-s", "IJBB", "-o", str(out)], capsys,
                          "basic_model_h5_IJBB_N0D1F1.npy: already exists; it is kept (pass --overwrite")
    assert (out / "basic_model_h5_IJBB_N0D1F1.npy").read_bytes() == b"earlier"


@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS])
def test_full_disk_or_read_only_results_are_one_line_and_keep_earlier_files(tmp_path, capsys, monkeypatch, failure):
    npz, out = restore_npz(tmp_path), str(tmp_path / "out")
    IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-o", out]))
    earlier = read_bytes(out)

    def fail(*args, **kwargs):
        raise OSError(failure, os.strerror(failure), out)

    monkeypatch.setattr(tempfile, "mkstemp", fail)
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only"}[failure]
    assert_one_line_error(["-R", npz, "-o", out, "-B"], capsys, "{}: {}".format(out, reason))
    assert read_bytes(out) == earlier  # no temporary file left, nothing replaced


def test_plot_only_names_its_figure_after_the_scores_and_keeps_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    npz, out = restore_npz(tmp_path), str(tmp_path / "out")
    IJB_evals.run(IJB_evals.parse_arguments(["-R", npz, "-o", out, "-L"]))
    scores, labels = os.path.join(out, "m_IJBC_N0D1F0.npy"), os.path.join(out, "IJBC_label.npz")
    assert IJB_evals.main(["--plot_only", scores, labels]) == 0
    png = os.path.join(out, "m_IJBC_N0D1F0_roc.png")
    figure = open(png, "rb").read()
    assert figure[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(["--plot_only", scores, labels], capsys, "ROC plot {}: already exists; it is kept".format(png))
    assert open(png, "rb").read() == figure
    assert IJB_evals.main(["--plot_only", scores, labels, "--overwrite"]) == 0

    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"\x00" * 100)
    assert_one_line_error(["--plot_only", str(junk), labels], capsys, str(junk) + ": not a .npy file of pair scores")
    np.save(tmp_path / "ones.npy", np.ones(3, "int64"))
    assert_one_line_error(["--plot_only", scores, str(tmp_path / "ones.npy"), "--plot_save", str(tmp_path / "x.png")], capsys,
                          "ones.npy: expected pair labels, 0 and 1 both present")
    assert_one_line_error(["--plot_only", labels], capsys, "followed by a label file (the .npz saved by -L, or the pair label .txt)")
