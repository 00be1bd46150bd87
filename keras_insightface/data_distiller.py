#!/usr/bin/env python3
"""Teacher embeddings for knowledge distillation: images + teacher model -> TFRecord or npz dataset.

The teacher may be a Keras `.h5` / `.keras` basic model, an ONNX model, a TorchScript `.pt` / `.pth`
(needs torch) or an MXNet `prefix,epoch` checkpoint (needs the optional mxnet package, which requires
numpy < 1.24 and so cannot share an environment with TensorFlow >= 2.20: run it in its own environment).
Embeddings are L2-normalized.  Training on the output makes `train.Train` a distillation run.
Outputs are written beside the dataset and named by it and the teacher, `<dataset>_<teacher>_shuffle_label_embs_normed_
<emb>[_fp16].tfrecord` (`.npz` with --save_npz); an npz converts to `<npz>.tfrecord` beside it. An existing output is
kept unless `overwrite` / `--overwrite`.

Usage:
    ./data_distiller.py -M teacher.onnx -D /datasets/faces_casia_112x112_folders/ -b 32 --use_fp16
    # >>>> Output: /datasets/faces_casia_112x112_folders_teacher_shuffle_label_embs_normed_512_fp16.tfrecord
    ./data_distiller.py -D /datasets/faces_casia_112x112_folders_teacher_shuffle_label_embs_normed_512.npz   # npz -> tfrecord
"""
import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from . import cli, io_utils

SCRIPT = "data_distiller.py"
TFRECORD_FEATURES = ("image_names", "image_classes", "embeddings")
IMAGE_SHAPE = (112, 112)


def default_dest_file(data_path, teacher_name, emb_shape, use_fp16, save_npz):
    """`<dataset>_<teacher>_shuffle_label_embs_normed_<emb>[_fp16].<tfrecord|npz>` beside the dataset folder or npz.

    Usage: default_dest_file("/datasets/casia/", "r100", 512, True, False)
        -> "/datasets/casia_r100_shuffle_label_embs_normed_512_fp16.tfrecord"
    """
    content = "shuffle_label_embs_normed_{}{}".format(emb_shape, "_fp16" if use_fp16 else "")
    return io_utils.name_beside(data_path, [teacher_name, content], ".npz" if save_npz else ".tfrecord")


def _check_finite(outputs, image_names, teacher):
    """Refuse teacher rows that are NaN / inf or all zero: they have no direction to distil."""
    bad = ~np.isfinite(outputs).all(axis=1) | ~np.any(outputs != 0, axis=1)
    if bad.any():
        raise ValueError("teacher {}: {} of {} embeddings are NaN, inf or all zero (first: {})".format(
            teacher, int(bad.sum()), len(outputs), image_names[int(np.argmax(bad))]))


def extract_embeddings(teacher, image_names, batch_size=256, img_shape=IMAGE_SHAPE, use_fp16=False):
    """Normalized teacher embeddings of every image, in order, as float16 or float32; a NaN / inf / all-zero row of
    the teacher is refused (ValueError naming the image)."""
    from . import data, face_io

    dtype = np.float16 if use_fp16 else np.float32
    batches = data.image_batches_uint8(image_names, img_shape=img_shape, batch_size=batch_size)
    total = (len(image_names) + batch_size - 1) // batch_size
    outputs, start = [], 0
    for batch in tqdm(batches, total=total, desc="Embedding"):
        embeddings = np.asarray(teacher(batch), dtype="float64")
        _check_finite(embeddings, image_names[start : start + len(batch)], getattr(teacher, "name", teacher))
        outputs.append(face_io.l2_normalize(embeddings).astype(dtype))
        start += len(batch)
    return np.concatenate(outputs)


def _bytes_feature(value):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def save_tfrecord(dest_file, image_names, image_classes, embeddings, num_classes):
    """Write one Example per image plus the `<dest_file>.json` sidecar describing it, atomically.

    Both are written under temporary names first; an earlier pair stays whole when writing fails. Replacing one, its
    old sidecar is removed just before the renames, so the new tfrecord never pairs with the earlier description.
    """
    import tensorflow as tf

    embeddings = np.ascontiguousarray(embeddings.astype(embeddings.dtype.newbyteorder("<")))
    sidecar = dest_file + ".json"
    info = {"num_classes": int(num_classes), "total_images": len(image_names), "emb_shape": int(embeddings.shape[1]), "dtype": embeddings.dtype.name}
    with io_utils.atomic_path(sidecar) as sidecar_tmp, io_utils.atomic_path(dest_file) as tmp:
        try:
            _write_examples(tmp, image_names, image_classes, embeddings)
        except tf.errors.OpError as error:  # TensorFlow's file errors (full disk: OutOfRangeError) are no OSError
            raise OSError("{}: could not be written ({})".format(dest_file, error.message.replace(tmp, dest_file))) from error
        with open(sidecar_tmp, "w") as ff:
            ff.write(json.dumps(info, indent=1))
        if os.path.exists(sidecar):
            os.remove(sidecar)


def _write_examples(path, image_names, image_classes, embeddings):
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for name, label, embedding in tqdm(zip(image_names, image_classes, embeddings), total=len(image_names), desc="Writing"):
            features = {
                "image_names": _bytes_feature(str(name).encode("utf-8")),
                "image_classes": _int64_feature(label),
                "embeddings": _bytes_feature(embedding.tobytes()),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def save_npz(dest_file, image_names, image_classes, embeddings):
    with io_utils.atomic_path(dest_file) as tmp:
        np.savez(tmp, image_names=image_names, image_classes=image_classes, embeddings=embeddings)


def npz_to_tfrecord(npz_file, dest_file=None, overwrite=False):
    """Convert a distiller `.npz` (image_names, image_classes, embeddings) to `.tfrecord`, by default `<npz>.tfrecord`
    beside it; an existing output is kept unless `overwrite`. The npz is read and checked by data.pre_process_folder.
    Returns the output path.  Usage: npz_to_tfrecord("casia_r100_shuffle_label_embs_normed_512.npz")
    """
    from . import data

    npz_file = os.fspath(npz_file)
    dest_file = cli.check_output_file(dest_file or os.path.splitext(npz_file)[0] + ".tfrecord", overwrite)
    image_names, image_classes, embeddings, num_classes = data.pre_process_folder(npz_file)
    if embeddings is None:
        raise ValueError("{}: no 'embeddings' key, expected {}".format(npz_file, ", ".join(TFRECORD_FEATURES)))
    save_tfrecord(dest_file, image_names, image_classes, embeddings, num_classes)
    print(">>>> Output:", dest_file)
    return dest_file


def _teacher_name(model_file):
    from . import model_interf

    return model_interf.model_name(model_file) if isinstance(model_file, (str, os.PathLike)) else model_file.name


def _check_arguments(batch_size, limit):
    cli.check_number("batch_size", batch_size, minimum=1)
    if limit < -1:
        raise ValueError("limit={}: expected a number of images, or -1 / 0 for all of them".format(limit))


def data_distiller(data_path, model_file, dest_file=None, batch_size=256, limit=-1, use_fp16=False, save_npz_file=False, seed=0,
                   overwrite=False, **interf_kwargs):
    """Embed every image of `data_path` with the teacher `model_file` and save the distillation dataset.

    dest_file: default `default_dest_file(...)` beside the dataset; an existing file is kept (FileExistsError) unless
    `overwrite`, checked before any image is embedded. limit: only that many images (-1 or 0: all).
    Usage: data_distiller("/datasets/casia/", "r100.onnx", batch_size=32, use_fp16=True)
    """
    from . import data
    from . import model_interf

    _check_arguments(batch_size, limit)
    teacher = model_interf.load_model_interf(model_file, **interf_kwargs)
    emb_shape = teacher(np.zeros((1, *IMAGE_SHAPE, 3), np.uint8)).shape[-1]  # the output name carries it
    dest_file = dest_file or default_dest_file(data_path, _teacher_name(model_file), emb_shape, use_fp16, save_npz_file)
    cli.check_output_file(dest_file, overwrite)
    image_names, image_classes, _, num_classes = data.pre_process_folder(data_path)
    order = np.random.default_rng(seed).permutation(len(image_names))
    image_names, image_classes = image_names[order], image_classes[order]
    if limit > 0:
        image_names, image_classes = image_names[:limit], image_classes[:limit]

    embeddings = extract_embeddings(teacher, image_names, batch_size=batch_size, use_fp16=use_fp16)
    if save_npz_file:
        save_npz(dest_file, image_names, image_classes, embeddings)
    else:
        save_tfrecord(dest_file, image_names, image_classes, embeddings, num_classes)
    print(">>>> Output:", dest_file)
    return dest_file


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog=cli.prog_name(SCRIPT), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-D", "--data_path", type=str, required=True, help="Data path, or npz file converting to tfrecord")
    parser.add_argument("-M", "--model_file", type=str, default=None, help="Model file, keras h5 / onnx / pytorch pth / mxnet")
    parser.add_argument("-d", "--dest_file", type=str, default=None,
                        help="Dest file path to save the processed dataset, default beside the dataset: <dataset>_<model>_shuffle_label_embs_normed_<emb>...")
    parser.add_argument("-b", "--batch_size", type=int, default=256, help="Batch size")
    parser.add_argument("-L", "--limit", type=int, default=-1, help="Test parameter, limit converting only the first [NUM]")
    parser.add_argument("--use_fp16", action="store_true", help="Save using float16")
    parser.add_argument("--save_npz", action="store_true", help="Save as npz file, default is tfrecord")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dest file (else it is kept and nothing is done)")
    parser.add_argument("--input_layout", choices=["NHWC", "NCHW"], default=None, help="Teacher input layout, guessed from the model when not set")
    parser.add_argument("--mean", type=float, default=None, help="Teacher input normalization (x - mean) / std; default by model type")
    parser.add_argument("--std", type=float, default=None, help="Teacher input normalization (x - mean) / std; default by model type")
    args = parser.parse_args(argv)
    if args.model_file is None and not args.data_path.endswith(".npz"):
        parser.error("-M MODEL_FILE is required unless -D is an npz file to convert")
    return args


def main(argv=None):
    """The command line of data_distiller.py (console script keras-insightface-distiller)."""
    args = parse_arguments(argv)
    if args.model_file is None:
        return cli.run(SCRIPT, npz_to_tfrecord, args.data_path, args.dest_file, overwrite=args.overwrite)
    interf_kwargs = {"input_layout": args.input_layout, "mean": args.mean, "std": args.std}
    return cli.run(
        SCRIPT, data_distiller, args.data_path, args.model_file, args.dest_file, args.batch_size, args.limit,
        args.use_fp16, args.save_npz, overwrite=args.overwrite, **interf_kwargs,
    )


if __name__ == "__main__":
    sys.exit(main())
