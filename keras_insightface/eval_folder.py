#!/usr/bin/env python3
"""Verification and 1:N accuracy of a model on a folder of identities `<root>/<class>/<image>`, as the original eval_folder.py.

Each class registers one image: the one whose summed cosine similarity to its classmates is largest. Positive
scores are that image's similarities to its classmates, negative scores its similarities to every other-class
image. Top-1 accuracy: each image is assigned the class whose registered image is most similar. Also printed:
ROC AUC and TPR at FPR 1e-6 .. 1e-1 (the ROC point nearest each FPR).

`-D scrfd_10g_bnkps.onnx` (Python: `detection=` a path or a callable) first aligns the best face of every image to
the ArcFace 112x112 template into `<data_path>_aligned_112_112` and evaluates that folder (face_align.py). That folder
appears only when complete; an earlier complete one of the same images is reused. `-S` reloads an existing file.
`--overwrite` embeds (and aligns) again and replaces them; nothing existing is replaced without it.

Usage:
    keras-insightface-eval-folder -m basic_model.h5 -d faces_test/ -S faces_test_embs.npz
    keras-insightface-eval-folder -m basic_model.h5 -d faces_raw/ -D ~/models/scrfd_10g_bnkps.onnx
    from keras_insightface.eval_folder import eval_folder; eval_folder("basic_model.h5", "faces_test/")
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from . import cli
from . import data
from . import face_align
from . import face_io
from . import io_utils
from . import model_interf

FPR_SHOW = [10.0 ** (-ii) for ii in range(6, 0, -1)]
SAVED_KEYS = ("embs", "imm_classes", "filenames")
ALIGNED_MARKER = ".eval_folder_aligned.json"  # in an aligned folder made complete by `aligned_folder`


def register_scores(embs, classes):
    """Positive / negative scores and the [image, class] similarity to each class's registered image.

    `embs` are L2-normalized. Usage: pos, neg, register_sims, register_ids = register_scores(embs, classes)
    """
    register_ids = np.unique(classes)
    pos_dists, neg_dists, register_sims = [], [], []
    for register_id in register_ids:
        members = classes == register_id
        sims = embs[members] @ embs[members].T
        base = sims.sum(axis=0).argmax()
        pos_dists.append(np.delete(sims[base], base))
        base_sims = embs @ embs[members][base]
        neg_dists.append(base_sims[~members])
        register_sims.append(base_sims)
    return np.concatenate(pos_dists), np.concatenate(neg_dists), np.stack(register_sims, axis=1), register_ids


def check_scores(pos_dists, neg_dists, source):
    """Refuse a folder without same-class or other-class pairs: its TPR, AUC and top-1 would mean nothing.

    Usage: check_scores(pos_dists, neg_dists, "faces_test/")
    """
    if not len(pos_dists) or not len(neg_dists):
        raise ValueError("{}: no {} pairs (a class needs 2+ images, and 2+ classes are needed); nothing to evaluate".format(
            source, "same-class" if not len(pos_dists) else "other-class"))


def tpr_at_fpr(pos_dists, neg_dists, fpr_show=FPR_SHOW):
    """ROC AUC and the TPR at each of `fpr_show` (nearest ROC point).  Usage: auc, tprs = tpr_at_fpr(pos, neg)"""
    from sklearn.metrics import auc, roc_curve

    labels = np.concatenate([np.ones_like(pos_dists), np.zeros_like(neg_dists)])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([pos_dists, neg_dists]))
    fpr_reverse, tpr_reverse = fpr[::-1], tpr[::-1]
    return auc(fpr, tpr), [float(tpr_reverse[np.argmin(np.abs(fpr_reverse - ii))]) for ii in fpr_show]


def folder_embeddings(model_file, data_path, batch_size=64):
    """L2-normalized embeddings, class ids and file names of an image folder.  Usage: embs, classes, names = folder_embeddings(m, d)"""
    image_names, image_classes, _, _ = data.pre_process_folder(data_path)
    model = model_interf.load_model_interf(model_file, batch_size=batch_size)
    images = np.stack([face_io.read_image(name, (112, 112)) for name in image_names])
    return face_io.l2_normalize(model(images), dtype="float32"), np.asarray(image_classes, "int64"), np.asarray(image_names)


def load_saved_embeddings(path):
    """`-S`'s (embs, classes, filenames), checked: the keys eval_folder saves, one class and name per embedding row.

    Usage: embs, classes, names = load_saved_embeddings("faces_test_embs.npz")
    """
    if os.path.isdir(path):
        raise IsADirectoryError("-S {}: is a directory; the embeddings .npz file was expected".format(path))
    try:
        saved = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as error:  # numpy's messages do not name the file
        raise ValueError("{}: not an .npz file of embeddings saved by eval_folder -S ({})".format(path, error)) from None
    if not isinstance(saved, np.lib.npyio.NpzFile):
        raise ValueError("{}: a single array, not an .npz file of embeddings saved by eval_folder -S".format(path))
    with saved:
        missing = [key for key in SAVED_KEYS if key not in saved.files]
        if missing:
            raise ValueError("{}: lacks {}; expected a file saved by eval_folder -S".format(path, missing))
        embs, classes, names = (saved[key] for key in SAVED_KEYS)
    face_io.check_embedding_rows(embs, path, "embs")
    if classes.ndim != 1 or len(classes) != len(embs) or classes.dtype.kind not in "iu" or len(names) != len(embs):
        raise ValueError("{}: {} embeddings, but imm_classes of shape {} ({}) and {} filenames; expected one integer class and "
                         "one name per embedding".format(path, len(embs), classes.shape, classes.dtype, len(names)))
    return face_io.l2_normalize(embs, dtype="float32"), classes.astype("int64"), names


def aligned_folder(detection, data_path, overwrite=False):
    """-D: `<data_path>_aligned_112_112`, the best face of every image aligned (face_align.detect_and_align_folder).

    It is made in a hidden temporary folder renamed when complete, with a marker naming its source images (names and
    sizes). An existing complete one of the same images is reused (said); any other existing folder is kept unless
    `overwrite`.
    Usage: aligned = aligned_folder("scrfd_10g_bnkps.onnx", "faces_raw/")
    """
    data_path = os.path.normpath(os.fspath(data_path))
    dest = data_path + face_align.ALIGNED_SUFFIX
    if os.path.exists(dest) and not overwrite:
        if _is_complete_alignment(dest, data_path):
            print(">>>> Reusing the aligned faces of an earlier -D run: {} (pass --overwrite to detect and align again)".format(dest))
            return dest
        raise FileExistsError("{}: exists, but is not a complete alignment of {} by eval_folder -D; it is kept (pass --overwrite "
                              "to replace it, or evaluate it as it is with -d {})".format(dest, data_path, dest))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise NotADirectoryError("{}: is a file; the aligned faces folder goes there".format(dest))
    work = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".", suffix=".tmp", dir=os.path.dirname(os.path.abspath(dest)))
    try:
        face_align.detect_and_align_folder(detection, data_path, work)
        io_utils.atomic_write_text(os.path.join(work, ALIGNED_MARKER), json.dumps(_source_images(data_path)))
        _replace_folder(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(">>>> Aligned faces:", dest)
    return dest


def _source_images(data_path):
    """What an aligned folder was made from: the source folder, its image count and a digest of their names and sizes."""
    import hashlib

    image_names = data.pre_process_folder(data_path)[0]
    listing = "\n".join("{}:{}".format(os.path.relpath(name, data_path), os.path.getsize(name)) for name in image_names)
    return {"source": os.path.abspath(data_path), "images": len(image_names), "digest": hashlib.sha1(listing.encode("utf-8")).hexdigest()}


def _is_complete_alignment(dest, data_path):
    try:
        with open(os.path.join(dest, ALIGNED_MARKER), encoding="utf-8") as ff:
            return json.load(ff) == _source_images(data_path)
    except (OSError, ValueError):
        return False


def _replace_folder(new, dest):
    """Put folder `new` at `dest`; an earlier `dest` is moved aside first and removed only once `new` is in place."""
    if not os.path.exists(dest):
        os.replace(new, dest)
        return
    old = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".old.", suffix=".tmp", dir=os.path.dirname(os.path.abspath(dest)))
    os.replace(dest, os.path.join(old, "replaced"))
    os.replace(new, dest)
    shutil.rmtree(old)


def _load_or_embed(model_file, data_path, batch_size, save_embeddings, detection=None, overwrite=False):
    if save_embeddings and os.path.exists(save_embeddings) and not overwrite:
        print(">>>> Reloading from backup:", save_embeddings)
        return load_saved_embeddings(save_embeddings)
    if not model_file or not data_path:
        raise ValueError("give --model_file and --data_path (or an existing --save_embeddings file)")
    if save_embeddings:
        cli.check_output_file(save_embeddings, overwrite=True, what="-S embeddings file")  # a folder or a file as folder: refused now
    if detection is not None:
        data_path = aligned_folder(detection, data_path, overwrite)
    embs, classes, names = folder_embeddings(model_file, data_path, batch_size)
    face_io.check_embedding_rows(embs, model_file, "embs")
    if save_embeddings:
        print(">>>> Saving embeddings to:", save_embeddings)
        with io_utils.atomic_path(save_embeddings) as tmp:
            with open(tmp, "wb") as ff:
                np.savez(ff, embs=embs, imm_classes=classes, filenames=names)
    return embs, classes, names


def eval_folder(model_file, data_path, batch_size=128, save_embeddings=None, detection=None, overwrite=False):
    """Print and return {"top1", "auc", "tpr_at_fpr"} of a model on an identity folder; `save_embeddings` (.npz) caches.

    detection: a SCRFD `.onnx` path or a callable `image -> landmarks [N, 5, 2]` (face_align.load_detector): the faces
    are detected and aligned into `<data_path>_aligned_112_112` first, and that folder is evaluated.

    overwrite: embed (and align) again and replace an existing `save_embeddings` file (and aligned folder).
    Usage: results = eval_folder("basic_model.h5", "faces_test/", batch_size=64)
    """
    embs, classes, _ = _load_or_embed(model_file, data_path, batch_size, save_embeddings, detection, overwrite)
    pos_dists, neg_dists, register_sims, register_ids = register_scores(embs, classes)
    check_scores(pos_dists, neg_dists, data_path or save_embeddings)
    print(">>>> pos_dists:", pos_dists.shape, "neg_dists:", neg_dists.shape, "register_base_dists:", register_sims.shape)
    top1 = float(np.mean(register_ids[register_sims.argmax(axis=1)] == classes))
    print(">>>> top1 accuracy:", top1)
    roc_auc, tprs = tpr_at_fpr(pos_dists, neg_dists)
    print("| FPR | " + " | ".join("{:g}".format(ii) for ii in FPR_SHOW) + " |")
    print("| TPR | " + " | ".join("{:.6f}".format(ii) for ii in tprs) + " |")
    print(">>>> AUC:", roc_auc)
    return {"top1": top1, "auc": float(roc_auc), "tpr_at_fpr": dict(zip(FPR_SHOW, tprs))}


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog=cli.prog_name("eval_folder.py"), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-d", "--data_path", type=str, default=None, help="Data path, containing images in class folders")
    parser.add_argument("-m", "--model_file", type=str, default=None, help="Model file: keras .h5 / .keras, or .onnx / .pth ...")
    parser.add_argument("-b", "--batch_size", type=cli.positive_int, default=64, help="Batch size")
    parser.add_argument("-D", "--detection", nargs="?", const="", default=None, metavar="DETECTOR",
                        help="Detect and align faces first, with this insightface SCRFD .onnx model (with keypoints); nothing is downloaded")
    parser.add_argument("-S", "--save_embeddings", type=str, default=None, help="Save / Reload embeddings data (.npz)")
    parser.add_argument("--overwrite", action="store_true", help="Embed (and align) again, replacing an existing -S file and aligned folder")
    args = parser.parse_args(argv)
    if args.detection == "":
        parser.error("-D/--detection needs the detector model: -D path/to/scrfd_10g_bnkps.onnx (insightface SCRFD with "
                     "keypoints); no detector is bundled or downloaded")
    return args


def main(argv=None):
    """The command line of eval_folder.py (console script keras-insightface-eval-folder)."""
    args = parse_arguments(argv)
    return cli.run("eval_folder.py", eval_folder, args.model_file, args.data_path, args.batch_size, args.save_embeddings, args.detection,
                   args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
