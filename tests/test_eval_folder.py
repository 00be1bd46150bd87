"""eval_folder.py: registration, top-1 and TPR@FPR against brute-force NumPy on known embeddings; -D alignment; the CLI."""
import errno
import os
import tempfile

import cv2
import numpy as np
import pytest

from keras_insightface import eval_folder, face_align
from tests.helpers import tiny_basic_model, write_image

RNG = np.random.default_rng(3)


def known_embeddings():
    classes = np.repeat(np.arange(4), 5)
    embs = np.eye(8)[classes] + RNG.normal(0, 0.6, (20, 8))
    return embs / np.linalg.norm(embs, axis=1, keepdims=True), classes


def brute_force(embs, classes):
    """Register per class the image with the largest summed similarity to its classmates; top-1 by argmax."""
    pos, neg, bases = [], [], []
    for cc in np.unique(classes):
        idx = np.where(classes == cc)[0]
        base = idx[np.argmax([sum(embs[ii] @ embs[jj] for jj in idx) for ii in idx])]
        bases.append(base)
        pos += [embs[base] @ embs[jj] for jj in idx if jj != base]
        neg += [embs[base] @ embs[jj] for jj in range(len(embs)) if classes[jj] != cc]
    predicted = [np.unique(classes)[np.argmax([embs[ii] @ embs[bb] for bb in bases])] for ii in range(len(embs))]
    return np.array(pos), np.array(neg), np.mean(np.array(predicted) == classes)


def tpr_at(pos, neg, fpr_target):
    """TPR of the threshold whose FPR is nearest `fpr_target`, thresholds at every score (sklearn's ROC points)."""
    points = [(0.0, 0.0)] + [(np.mean(neg >= tt), np.mean(pos >= tt)) for tt in np.sort(np.concatenate([pos, neg]))[::-1]]
    fprs = np.array([pp[0] for pp in points])
    best = np.abs(fprs - fpr_target).min()
    return max(tt for ff, tt in points if abs(ff - fpr_target) == best)


def test_scores_and_top1_against_brute_force():
    embs, classes = known_embeddings()
    pos, neg, register_sims, register_ids = eval_folder.register_scores(embs, classes)
    ref_pos, ref_neg, ref_top1 = brute_force(embs, classes)
    np.testing.assert_allclose(np.sort(pos), np.sort(ref_pos), rtol=1e-9)
    np.testing.assert_allclose(np.sort(neg), np.sort(ref_neg), rtol=1e-9)
    assert np.mean(register_ids[register_sims.argmax(1)] == classes) == ref_top1
    auc, tprs = eval_folder.tpr_at_fpr(pos, neg, [0.1])
    assert tprs[0] == tpr_at(pos, neg, 0.1)
    assert auc == np.mean([(pp > nn) + 0.5 * (pp == nn) for pp in pos for nn in neg])


def test_cli_reloads_saved_embeddings(tmp_path, capsys):
    embs, classes = known_embeddings()
    saved = tmp_path / "embs.npz"
    np.savez(saved, embs=embs, imm_classes=classes, filenames=np.array(["x"] * len(embs)))
    assert eval_folder.main(["-S", str(saved)]) == 0
    assert ">>>> top1 accuracy: {}".format(brute_force(embs, classes)[2]) in capsys.readouterr().out


def test_model_on_image_folder_saves_embeddings(dataset, tmp_path, capsys):
    model_file = str(tmp_path / "tiny.keras")
    tiny_basic_model().save(model_file)
    saved = str(tmp_path / "folder_embs.npz")
    results = eval_folder.eval_folder(model_file, dataset, batch_size=8, save_embeddings=saved)
    stored = np.load(saved)
    np.testing.assert_allclose(np.linalg.norm(stored["embs"], axis=1), 1.0, rtol=1e-5)
    assert results["top1"] == brute_force(stored["embs"].astype("float64"), stored["imm_classes"])[2]
    assert eval_folder.main(["-d", dataset]) == 2 and "eval_folder.py: error:" in capsys.readouterr().err


def place_faces(faces_root, raw_root, matrix):
    """Every 112x112 face of `faces_root` warped by `matrix` onto a bigger dark canvas, as a detector would get it."""
    for class_name in sorted(os.listdir(faces_root)):
        if not os.path.isdir(os.path.join(faces_root, class_name)):
            continue
        for name in sorted(os.listdir(os.path.join(faces_root, class_name))):
            face = cv2.imread(os.path.join(faces_root, class_name, name))
            write_image(os.path.join(raw_root, class_name, name.replace(".jpg", ".png")), cv2.warpAffine(face, matrix, (260, 230)), rgb=False)
    return str(raw_root)


def test_detection_aligns_faces_before_embedding(dataset, tmp_path):
    """-D: a detector's landmarks bring each face back from a larger, tilted picture onto the 112x112 template."""
    angle, scale, shift = np.radians(12), 1.6, np.array([40.0, 20.0])
    matrix = np.hstack([scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]), shift[:, None]])
    raw = place_faces(dataset, tmp_path / "raw", matrix)
    landmarks = face_align.ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2]
    calls = []

    def detector(image):
        calls.append(image.shape)
        return landmarks[None]  # one face

    model_file = str(tmp_path / "tiny.keras")
    tiny_basic_model().save(model_file)
    results = eval_folder.eval_folder(model_file, raw, batch_size=8, detection=detector)
    assert calls == [(230, 260, 3)] * 32  # RGB images at their own size
    aligned_root = raw + face_align.ALIGNED_SUFFIX
    original = cv2.imread(dataset + "/2/3.jpg").astype(float)
    aligned = cv2.imread(aligned_root + "/2/3.png").astype(float)
    assert np.abs(aligned - original)[8:-8, 8:-8].mean() < 4  # two bilinear warps of the same face
    plain = eval_folder.eval_folder(model_file, aligned_root, batch_size=8)
    assert results == plain


def test_detection_leaves_out_images_without_a_face_and_errors_name_the_cause(dataset, tmp_path, capsys):
    found = iter([np.zeros((0, 5, 2))] * 3 + [face_align.ARCFACE_TEMPLATE[None]] * 29)
    aligned_root = face_align.detect_and_align_folder(lambda image: next(found), dataset, tmp_path / "aligned")
    assert "No face detected in 3 of 32 images" in capsys.readouterr().out
    assert sum(len(files) for _, _, files in os.walk(aligned_root)) == 29
    with pytest.raises(ValueError, match="no face detected in any of the 32 images"):
        face_align.detect_and_align_folder(lambda image: [], dataset, tmp_path / "none")
    with pytest.raises(ValueError, match="0.jpg: the detector gave landmarks of shape \\(7,\\)"):
        face_align.detect_and_align_folder(lambda image: np.zeros(7), dataset, tmp_path / "bad")
    with pytest.raises(SystemExit):
        eval_folder.main(["-d", dataset, "-m", "model.h5", "-D"])
    assert "-D/--detection needs the detector model" in capsys.readouterr().err
    assert eval_folder.main(["-d", dataset, "-m", "model.h5", "-D", str(tmp_path / "missing.onnx")]) == 2
    assert "eval_folder.py: error: face detector model not found" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input, kept outputs
def assert_one_line_error(argv, capsys, *parts):
    status = eval_folder.main(argv)
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]  # progress bars may come before
    assert status == 2 and last.startswith("eval_folder.py: error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in last, err


def test_batch_size_below_one_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_folder.main(["-m", "m.h5", "-d", "faces", "-b", "-1"])
    assert exit_info.value.code == 2 and "argument -b/--batch_size: expected a whole number >= 1, got -1" in capsys.readouterr().err


def _saved(path, **changes):
    embs, classes = known_embeddings()
    arrays = dict(embs=embs, imm_classes=classes, filenames=np.array(["x"] * len(embs)))
    arrays.update(changes)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return str(path)


@pytest.mark.parametrize("changes, message", [
    ({"imm_classes": None}, "lacks ['imm_classes']; expected a file saved by eval_folder -S"),
    ({"embs": np.zeros(20)}, "embs of shape (20,)"),
    ({"embs": np.zeros([20, 8])}, "20 of 20 embs rows are all zero"),
    ({"embs": np.ones([20, 8])}, "all 20 embs rows are the same vector"),
    ({"imm_classes": np.zeros(19, "int64")}, "20 embeddings, but imm_classes of shape (19,)"),
    ({"imm_classes": np.zeros(20, "int64")}, "no other-class pairs"),
    ({"imm_classes": np.arange(20)}, "no same-class pairs"),
])
def test_bad_saved_embeddings_are_one_line_errors(tmp_path, capsys, changes, message):
    path = _saved(tmp_path / "embs.npz", **changes)
    assert_one_line_error(["-S", path], capsys, path, message)


def test_saved_embeddings_that_are_no_npz_or_a_folder(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(500))
    assert_one_line_error(["-S", str(junk)], capsys, str(junk) + ": not an .npz file of embeddings saved by eval_folder -S")
    np.save(tmp_path / "single.npy", np.zeros(3))
    assert_one_line_error(["-S", str(tmp_path / "single.npy")], capsys, "single.npy: a single array, not an .npz file")
    assert_one_line_error(["-S", str(tmp_path)], capsys, "-S {}: is a directory".format(tmp_path))


def test_saved_embeddings_are_replaced_only_with_overwrite(dataset, tmp_path, monkeypatch, capsys):
    model_file = str(tmp_path / "tiny.keras")
    tiny_basic_model().save(model_file)
    saved = _saved(tmp_path / "embs.npz")
    earlier = open(saved, "rb").read()
    assert eval_folder.main(["-m", model_file, "-d", dataset, "-S", saved]) == 0
    assert ">>>> Reloading from backup" in capsys.readouterr().out and open(saved, "rb").read() == earlier

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    assert_one_line_error(["-m", model_file, "-d", dataset, "-S", saved, "--overwrite"], capsys, "no space left on the device")
    assert open(saved, "rb").read() == earlier and sorted(os.listdir(tmp_path)) == ["embs.npz", "faces", "tiny.keras"]
    monkeypatch.undo()
    assert eval_folder.main(["-m", model_file, "-d", dataset, "-S", saved, "--overwrite", "-b", "8"]) == 0
    with np.load(saved) as stored:
        assert stored["embs"].shape == (32, 16) and sorted(set(stored["imm_classes"])) == [0, 1, 2, 3]


def test_an_aligned_folder_is_reused_when_complete_and_otherwise_kept(dataset, tmp_path, capsys):
    model_file = str(tmp_path / "tiny.keras")
    tiny_basic_model().save(model_file)
    raw = os.path.join(str(tmp_path), "raw")
    os.makedirs(os.path.join(raw, "0"))
    os.makedirs(os.path.join(raw, "1"))
    for index in range(4):
        face = cv2.imread(os.path.join(dataset, str(index % 2), "{}.jpg".format(index)))
        cv2.imwrite(os.path.join(raw, str(index % 2), "{}.jpg".format(index)), face)
    calls = []

    def detector(image):
        calls.append(1)
        return face_align.ARCFACE_TEMPLATE[None]

    aligned = raw + face_align.ALIGNED_SUFFIX
    os.makedirs(os.path.join(aligned, "0"))
    cv2.imwrite(os.path.join(aligned, "0", "mine.jpg"), np.zeros((112, 112, 3), "uint8"))
    with pytest.raises(FileExistsError, match="exists, but is not a complete alignment of .*; it is kept"):
        eval_folder.eval_folder(model_file, raw, batch_size=4, detection=detector)
    assert os.listdir(os.path.join(aligned, "0")) == ["mine.jpg"] and calls == []

    eval_folder.eval_folder(model_file, raw, batch_size=4, detection=detector, overwrite=True)
    assert calls == [1] * 4
    assert sorted(os.listdir(os.path.join(aligned, "0"))) == ["0.jpg", "2.jpg"]  # the stale image is gone, nothing mixed
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    capsys.readouterr()
    eval_folder.eval_folder(model_file, raw, batch_size=4, detection=detector)
    assert calls == [1] * 4 and ">>>> Reusing the aligned faces of an earlier -D run" in capsys.readouterr().out
    cv2.imwrite(os.path.join(raw, "0", "0.jpg"), np.full((120, 120, 3), 90, "uint8"))  # the source changed since
    with pytest.raises(FileExistsError, match="is not a complete alignment"):
        eval_folder.eval_folder(model_file, raw, batch_size=4, detection=detector)
