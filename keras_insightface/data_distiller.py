#!/usr/bin/env python3
"""Teacher embeddings for knowledge distillation: images + teacher model -> TFRecord or npz dataset.

The teacher may be a Keras `.h5` / `.keras` basic model, an ONNX model, a TorchScript `.pt` / `.pth`
(needs torch) or an MXNet `prefix,epoch` checkpoint (needs the optional mxnet package, which requires
numpy < 1.24 and so cannot share an environment with TensorFlow >= 2.20: run it in its own environment).
Embeddings are L2-normalized.  Training on the output makes `train.Train` a distillation run.

Usage:
    ./data_distiller.py -M teacher.onnx -D /datasets/faces_casia_112x112_folders/ -b 32 --use_fp16
    # >>>> Output: faces_casia_112x112_folders_shuffle_label_embs_normed_512_fp16.tfrecord
    ./data_distiller.py -D faces_casia_112x112_folders_shuffle_label_embs_normed_512.npz   # npz -> tfrecord
"""
import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from . import cli, io_utils

TFRECORD_FEATURES = ("image_names", "image_classes", "embeddings")


def default_dest_file(data_path, emb_shape, use_fp16, save_npz):
    base = os.path.splitext(os.path.basename(os.path.normpath(data_path)))[0]
    suffix = "_fp16" if use_fp16 else ""
    return "{}_shuffle_label_embs_normed_{}{}.{}".format(base, emb_shape, suffix, "npz" if save_npz else "tfrecord")


def extract_embeddings(teacher, image_names, batch_size=256, img_shape=(112, 112), use_fp16=False):
    """Normalized teacher embeddings of every image, in order, as float16 or float32."""
    from . import data, face_io

    dtype = np.float16 if use_fp16 else np.float32
    batches = data.image_batches_uint8(image_names, img_shape=img_shape, batch_size=batch_size)
    total = (len(image_names) + batch_size - 1) // batch_size
    outputs = [face_io.l2_normalize(teacher(batch)).astype(dtype) for batch in tqdm(batches, total=total, desc="Embedding")]
    return np.concatenate(outputs)


def _bytes_feature(value):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def save_tfrecord(dest_file, image_names, image_classes, embeddings, num_classes):
    """Write one Example per image plus the `<dest_file>.json` sidecar describing it, atomically."""
    import tensorflow as tf

    embeddings = np.ascontiguousarray(embeddings.astype(embeddings.dtype.newbyteorder("<")))
    with io_utils.atomic_path(dest_file) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for name, label, embedding in tqdm(zip(image_names, image_classes, embeddings), total=len(image_names), desc="Writing"):
            features = {
                "image_names": _bytes_feature(str(name).encode("utf-8")),
                "image_classes": _int64_feature(label),
                "embeddings": _bytes_feature(embedding.tobytes()),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    info = {"num_classes": int(num_classes), "total_images": len(image_names), "emb_shape": int(embeddings.shape[1]), "dtype": embeddings.dtype.name}
    io_utils.atomic_write_text(dest_file + ".json", json.dumps(info, indent=1))


def save_npz(dest_file, image_names, image_classes, embeddings):
    with io_utils.atomic_path(dest_file) as tmp:
        np.savez(tmp, image_names=image_names, image_classes=image_classes, embeddings=embeddings)


def npz_to_tfrecord(npz_file, dest_file=None):
    """Convert a distiller `.npz` (image_names, image_classes, embeddings) to `.tfrecord`.  Returns its path."""
    with np.load(npz_file) as loaded:
        missing = [key for key in TFRECORD_FEATURES if key not in loaded.files]
        if missing:
            raise ValueError("{}: missing keys {}, expected {}".format(npz_file, missing, TFRECORD_FEATURES))
        image_names, image_classes, embeddings = (loaded[key] for key in TFRECORD_FEATURES)
    dest_file = dest_file or os.path.splitext(os.path.basename(npz_file))[0] + ".tfrecord"
    save_tfrecord(dest_file, image_names, image_classes, embeddings, int(image_classes.max()) + 1)
    print(">>>> Output:", dest_file)
    return dest_file


def data_distiller(data_path, model_file, dest_file=None, batch_size=256, limit=-1, use_fp16=False, save_npz_file=False, seed=0, **interf_kwargs):
    """Embed every image of `data_path` with the teacher `model_file` and save the distillation dataset."""
    from . import data
    from . import model_interf

    teacher = model_interf.load_model_interf(model_file, **interf_kwargs)
    image_names, image_classes, _, num_classes = data.pre_process_folder(data_path)
    order = np.random.default_rng(seed).permutation(len(image_names))
    image_names, image_classes = image_names[order], image_classes[order]
    if limit > 0:
        image_names, image_classes = image_names[:limit], image_classes[:limit]

    embeddings = extract_embeddings(teacher, image_names, batch_size=batch_size, use_fp16=use_fp16)
    dest_file = dest_file or default_dest_file(data_path, embeddings.shape[1], use_fp16, save_npz_file)
    if save_npz_file:
        save_npz(dest_file, image_names, image_classes, embeddings)
    else:
        save_tfrecord(dest_file, image_names, image_classes, embeddings, num_classes)
    print(">>>> Output:", dest_file)
    return dest_file


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-D", "--data_path", type=str, required=True, help="Data path, or npz file converting to tfrecord")
    parser.add_argument("-M", "--model_file", type=str, default=None, help="Model file, keras h5 / onnx / pytorch pth / mxnet")
    parser.add_argument("-d", "--dest_file", type=str, default=None, help="Dest file path to save the processed dataset")
    parser.add_argument("-b", "--batch_size", type=int, default=256, help="Batch size")
    parser.add_argument("-L", "--limit", type=int, default=-1, help="Test parameter, limit converting only the first [NUM]")
    parser.add_argument("--use_fp16", action="store_true", help="Save using float16")
    parser.add_argument("--save_npz", action="store_true", help="Save as npz file, default is tfrecord")
    parser.add_argument("--input_layout", choices=["NHWC", "NCHW"], default=None, help="Teacher input layout, guessed from the model when not set")
    parser.add_argument("--mean", type=float, default=None, help="Teacher input normalization (x - mean) / std; default by model type")
    parser.add_argument("--std", type=float, default=None, help="Teacher input normalization (x - mean) / std; default by model type")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if args.model_file is None and not args.data_path.endswith(".npz"):
        parser.error("-M MODEL_FILE is required unless -D is an npz file to convert")
    return args


def main(argv=None):
    """The command line of data_distiller.py (console script keras-insightface-distiller)."""
    args = parse_arguments(argv)
    if args.model_file is None:
        return cli.run("data_distiller.py", npz_to_tfrecord, args.data_path, args.dest_file)
    interf_kwargs = {"input_layout": args.input_layout, "mean": args.mean, "std": args.std}
    return cli.run(
        "data_distiller.py", data_distiller, args.data_path, args.model_file, args.dest_file, args.batch_size, args.limit,
        args.use_fp16, args.save_npz, **interf_kwargs,
    )


if __name__ == "__main__":
    sys.exit(main())
