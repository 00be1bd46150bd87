#!/usr/bin/env python3
"""Sub-center ArcFace data cleaning: drop images far from their class's dominant sub-center.

A model trained with `lossTopK = K` holds K sub-centers per class in its `NormDense` head.  For each
class the dominant sub-center is the one most of the class's images are closest to; an image whose
angle to it exceeds `deg_thresh` degrees is taken as noise (often a mislabelled face) and dropped.
The cleaned list of image paths and classes is written as an `.npz` that `train.Train` reads, by default beside
the dataset: `<dataset>_<model>_topK<K>_deg<deg_thresh>.npz` (two datasets named `train` in different folders get
different files). An existing output is kept unless `overwrite` / `--overwrite`.

Usage:
    from keras_insightface import data_drop_top_k
    new_data_path = data_drop_top_k.data_drop_top_k(tt.model, tt.data_path)
    tt.reset_dataset(new_data_path)

    ./data_drop_top_k.py -M checkpoints/TT_mobilenet_topk_bs256.h5 -D /datasets/faces_casia_112x112_folders/ -L 20
    # >>>> Saved: /datasets/faces_casia_112x112_folders_TT_mobilenet_topk_bs256_topK3_deg75.npz
"""
import argparse
import os
import sys

import numpy as np

from . import cli, io_utils

SCRIPT = "data_drop_top_k.py"


def _sub_center_head(model, source):
    """The NormDense layer of a full model; refuses a head without sub-centers, naming `source` (its file)."""
    from . import models

    heads = [layer for layer in model.layers if isinstance(layer, models.NormDense)]
    if not heads:
        raise ValueError("{}: the model has no NormDense head: pass the full trained model, NOT basic_model".format(source))
    head = heads[-1]
    if head.loss_top_k < 2:
        raise ValueError(
            "{}: the model has no sub-centers (NormDense loss_top_k={}): train with 'lossTopK' > 1 first".format(source, head.loss_top_k)
        )
    return head


def _check_head_covers_classes(head, num_classes, source, data_path):
    """A head with fewer classes than the data cannot score its images (their labels are beyond its centers)."""
    if head.units < num_classes:
        raise ValueError("{}: its NormDense head has {} classes, but the dataset {} has {}; clean the dataset the model "
                         "was trained on".format(source, head.units, data_path, num_classes))


def _embedding_model(model):
    import keras

    return keras.Model(model.inputs[0], model.get_layer("embedding").output)


def sub_center_cosines(embeddings, kernel, classes, loss_top_k):
    """Cosine of each image to each of its own class's K sub-centers, shape (N, K).

    `kernel` is the NormDense weight of shape (emb, num_classes * K); sub-center k of class c is column c * K + k.
    """
    embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    kernel = kernel / np.maximum(np.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)
    centers = kernel.T.reshape(-1, loss_top_k, kernel.shape[0])  # (num_classes, K, emb)
    return np.einsum("ne,nke->nk", embeddings, centers[classes])


def select_kept_images(cosines, classes, num_classes, deg_thresh):
    """Boolean mask of images within `deg_thresh` degrees of their class's dominant sub-center."""
    nearest = np.argmax(cosines, axis=1)
    loss_top_k = cosines.shape[1]
    votes = np.zeros((num_classes, loss_top_k), np.int64)
    np.add.at(votes, (classes, nearest), 1)
    dominant = np.argmax(votes, axis=1)[classes]
    angles = np.degrees(np.arccos(np.clip(cosines[np.arange(len(classes)), dominant], -1.0, 1.0)))
    return angles <= deg_thresh


def default_dest_file(data_path, model_name, loss_top_k, deg_thresh):
    """`<dataset>_<model>_topK<K>_deg<deg>.npz` beside the dataset folder or npz, so that it names both.

    Usage: default_dest_file("/datasets/train/", "TT_topk", 3, 75) -> "/datasets/train_TT_topk_topK3_deg75.npz"
    """
    degrees = int(deg_thresh) if float(deg_thresh).is_integer() else deg_thresh
    return io_utils.name_beside(data_path, [model_name, "topK{}".format(loss_top_k), "deg{}".format(degrees)], ".npz")


def _check_arguments(deg_thresh, limit, batch_size):
    cli.check_number("deg_thresh", deg_thresh, minimum=0, maximum=180)
    cli.check_number("limit", limit, minimum=0)
    cli.check_number("batch_size", batch_size, minimum=1)


def _load_model(model):
    """(model, its name for messages, its name for the output file) of a full model or its file."""
    from . import model_interf

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        return model_interf.load_keras_model(path), path, model_interf.model_name(path)
    return model, "model '{}'".format(model.name), model.name


def data_drop_top_k(model, data_path, dest_file=None, deg_thresh=75, limit=0, batch_size=128, overwrite=False):
    """Clean `data_path` with the sub-centers of `model` (a full model or its file); returns the new `.npz` path.

    dest_file: default `default_dest_file(...)`, beside the dataset; an existing file is kept (FileExistsError)
    unless `overwrite`. limit: only the first `limit` images (0: all).
    """
    import keras

    from . import data, face_io

    _check_arguments(deg_thresh, limit, batch_size)
    model, source, model_name = _load_model(model)
    head = _sub_center_head(model, source)
    dest_file = cli.check_output_file(dest_file or default_dest_file(data_path, model_name, head.loss_top_k, deg_thresh), overwrite)
    image_names, image_classes, _, num_classes = data.pre_process_folder(data_path)
    _check_head_covers_classes(head, num_classes, source, data_path)
    if limit > 0:
        image_names, image_classes = image_names[:limit], image_classes[:limit]

    basic_model = _embedding_model(model)
    image_batches = data.image_batches_uint8(image_names, img_shape=basic_model.input_shape[1:3], batch_size=batch_size)
    embeddings = np.concatenate([face_io.embed_images(basic_model, batch, batch_size=batch_size, flip=False) for batch in image_batches])
    kernel = keras.ops.convert_to_numpy(head.w)
    cosines = sub_center_cosines(embeddings, kernel, image_classes, head.loss_top_k)
    keep = select_kept_images(cosines, image_classes, num_classes, deg_thresh)

    with io_utils.atomic_path(dest_file) as tmp:
        np.savez(tmp, image_names=image_names[keep], image_classes=image_classes[keep])
    print(">>>> Total images: {}, kept: {}, dropped: {}".format(len(keep), int(keep.sum()), int((~keep).sum())))
    emptied = len(np.unique(image_classes)) - len(np.unique(image_classes[keep]))
    if emptied:
        print(">>>> Warning: {} classes have no image left".format(emptied))
    print(">>>> Saved:", dest_file)
    return dest_file


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog=cli.prog_name(SCRIPT), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-M", "--model_file", type=str, required=True, help="Saved model file path, NOT basic_model")
    parser.add_argument("-D", "--data_path", type=str, required=True, help="Original dataset path")
    parser.add_argument("-d", "--dest_file", type=str, default=None,
                        help="Dest file path to save the processed dataset npz, default beside the dataset: <dataset>_<model>_topK<K>_deg<deg>.npz")
    parser.add_argument("-t", "--deg_thresh", type=float, default=75, help="Thresh value in degree, [0, 180]")
    parser.add_argument("-L", "--limit", type=int, default=0, help="Test parameter, limit converting only the first [NUM] ones")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dest file (else it is kept and nothing is done)")
    return parser.parse_args(argv)


def main(argv=None):
    """The command line of data_drop_top_k.py (console script keras-insightface-drop-top-k)."""
    args = parse_arguments(argv)
    return cli.run(SCRIPT, data_drop_top_k, args.model_file, args.data_path, args.dest_file, args.deg_thresh, args.limit,
                   overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
