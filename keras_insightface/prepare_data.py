#!/usr/bin/env python3
"""Prepare insightface datasets: MXNet RecordIO -> image folders, eval `.bin` files -> plain JPEG bytes.

Usage:
    # Convert `/datasets/faces_emore` to `/datasets/faces_emore_112x112_folders`
    ./prepare_data.py -D /datasets/faces_emore
    # Convert evaluating bin files
    ./prepare_data.py -D /datasets/faces_emore -T lfw.bin cfp_fp.bin agedb_30.bin

    from keras_insightface.prepare_data import extract_recordio, convert_bin
    save_dir = extract_recordio("/datasets/faces_emore")
    convert_bin("/datasets/faces_emore/cfp_fp.bin")
"""
import argparse
import itertools
import json
import os
import sys
import pickle

import numpy as np
from tqdm import tqdm

from . import cli, data, face_io, io_utils
from . import recordio

COMPLETION_MARKER = ".extraction_complete.json"
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_QUALITY = 95
DEFAULT_SHARD_IMAGES = 100000


def default_save_dir(dataset_dir):
    """`/datasets/faces_emore/` -> `/datasets/faces_emore_112x112_folders`."""
    return os.fspath(dataset_dir).rstrip("/\\") + "_112x112_folders"


def read_property(dataset_dir):
    """{"num_classes", "height", "width"} from `<dataset_dir>/property`, or None when there is none."""
    path = os.path.join(dataset_dir, "property")
    if not os.path.exists(path):
        return None
    with open(path) as ff:
        text = ff.read().strip()
    try:
        num_classes, height, width = (int(value) for value in text.split(","))
    except ValueError:
        raise ValueError("{}: expected 'num_classes,height,width', got {!r}".format(path, text)) from None
    return {"num_classes": num_classes, "height": height, "width": width}


def remove_leftovers(save_dir):
    """Delete the temporary files an interrupted extraction left in `<save_dir>/<class>/`; returns how many.

    Usage: remove_leftovers("/datasets/faces_emore_112x112_folders")
    """
    removed = 0
    if not os.path.isdir(save_dir):
        return removed
    for folder in [entry.path for entry in os.scandir(save_dir) if entry.is_dir()]:
        for entry in os.scandir(folder):
            if entry.is_file() and entry.name.startswith(".") and face_io.TEMPORARY_MARK in entry.name:
                os.remove(entry.path)
                removed += 1
    return removed


def check_image_record(reader, key, offset, header, image):
    """Refuse a record that is not an image stored under its key: the class as an int >= 0.

    With an `.idx`, the header `id` must equal the key (a wrong or duplicated offset reads another record);
    the bytes must be a whole JPEG (signature ... end marker) or start with the PNG signature.
    Usage: label = check_image_record(reader, key, offset, *recordio.read_image(reader, offset))
    """
    if reader.offsets is not None and header.id != key:
        raise reader.error(offset, "{} lists key {} here, but the record's header id is {}".format(reader.idx_path, key, header.id))
    is_jpeg = image.startswith(JPEG_MAGIC) and image.rstrip(b"\0").endswith(JPEG_END)
    if not (is_jpeg or image.startswith(PNG_MAGIC)):
        raise reader.error(offset, "key {}: {} image bytes are not a whole JPEG (FF D8 FF ... FF D9) nor a PNG, starting {}".format(
            key, len(image), image[:8].hex(" ")))
    label = header.label[0] if isinstance(header.label, tuple) else header.label
    if label < 0 or label != int(label):
        raise reader.error(offset, "key {}: class label {} is not an integer >= 0".format(key, label))
    return int(label)


def check_counts(dataset_dir, reader, classes):
    """The classes found must agree with `property` and the header record's identity count, else ValueError.

    (The image count is checked against the header by `recordio.index_images`.)
    Usage: check_counts("/datasets/faces_emore", reader, {0, 1, 2})
    """
    properties = read_property(dataset_dir)
    if properties is not None and properties["num_classes"] != len(classes):
        raise ValueError("{}: property says num_classes={}, but the records hold {} classes".format(
            os.path.join(dataset_dir, "property"), properties["num_classes"], len(classes)))
    if reader.offsets is not None and 0 in reader.offsets:
        header, image = recordio.read_image(reader, reader.offsets[0])
        if header.flag > 0 and not image:
            num_ids = recordio.header_counts(reader, header, reader.offsets[0])[1]
            if num_ids and num_ids != len(classes):
                raise reader.error(0, "header record announces {} identities, but the images hold {} classes".format(num_ids, len(classes)))


def _indexed_entries(reader, limit=0):
    """(key, offset) of the image records, the first `limit` only when `limit > 0`."""
    if reader.idx_path is None:
        print(">>>> No train.idx beside it: scanning {} sequentially".format(reader.rec_path))
    entries = recordio.index_images(reader)
    return entries[:limit] if limit > 0 else entries


def verified_images(reader, entries):
    """Yield (key, class label, image bytes) of each `(key, offset)` entry, every record checked by
    `check_image_record` (a faulty one raises an error naming the file and byte offset).

    Usage: for key, label, image in verified_images(reader, recordio.index_images(reader)): ...
    """
    for key, offset in entries:
        header, image = recordio.read_image(reader, offset)
        yield key, check_image_record(reader, key, offset, header, image), image


def extract_recordio(dataset_dir, save_dir=None, limit=0):
    """Write each image of `<dataset_dir>/train.rec` to `<save_dir>/<class>/<key>.jpg`, bytes unchanged.

    `save_dir` defaults to `<dataset_dir>_112x112_folders`. Images already on disk are kept, temporary files
    of an interrupted run removed, and a completion marker is written last, once every record was checked
    (`check_image_record`) and the counts agree (`check_counts`): a second run returns at once. `limit > 0`
    extracts only the first `limit` images (a quick look; no completion marker). Returns `save_dir`.
    Usage: save_dir = extract_recordio("/datasets/faces_emore")
    """
    dataset_dir = os.fspath(dataset_dir).rstrip("/\\") or "/"
    save_dir = default_save_dir(dataset_dir) if save_dir is None else os.fspath(save_dir)
    rec_path = os.path.join(dataset_dir, "train.rec")
    marker_path = os.path.join(save_dir, COMPLETION_MARKER)
    if os.path.exists(marker_path):
        print(">>>> {} already extracted to {}, skipping dataset conversion".format(rec_path, save_dir))
        return save_dir
    if not os.path.exists(rec_path):
        raise FileNotFoundError("{}: no such file, expected an MXNet RecordIO dataset folder holding train.rec / train.idx".format(rec_path))
    read_property(dataset_dir)  # a malformed property fails before the long work
    removed = remove_leftovers(save_dir)
    if removed:
        print(">>>> Removed {} temporary file(s) of an interrupted extraction in {}".format(removed, save_dir))

    with recordio.RecordReader(rec_path) as reader:
        print(">>>> Extracting {} -> {}".format(rec_path, save_dir))
        entries = _indexed_entries(reader, limit)
        classes, written = set(), 0
        for key, label, image in tqdm(verified_images(reader, entries), total=len(entries), desc="Extracting", unit="image"):
            classes.add(label)
            image_path = os.path.join(save_dir, str(label), "{}.jpg".format(key))
            if not os.path.exists(image_path):
                io_utils.atomic_write_bytes(image_path, image)
                written += 1
        if limit <= 0:
            check_counts(dataset_dir, reader, classes)

    print(">>>> {} images of {} classes in {} ({} written, {} already there)".format(
        len(entries), len(classes), save_dir, written, len(entries) - written))
    if limit > 0:
        return save_dir
    summary = {"source": os.path.abspath(rec_path), "num_images": len(entries), "num_classes": len(classes)}
    io_utils.atomic_write_text(marker_path, json.dumps(summary, indent=1))
    return save_dir


def default_tfrecord_dir(dataset_dir):
    """`/datasets/faces_emore/` -> `/datasets/faces_emore_112x112_tfrecord`."""
    return os.fspath(dataset_dir).rstrip("/\\") + "_112x112_tfrecord"


def _write_shard(path, records):
    """Write (label, image bytes) pairs as tf.train.Examples to the TFRecord file `path` atomically;
    returns {"file", "images", "bytes"} for the description.  Usage: _write_shard("train-00000-of-00001.tfrecord", pairs)"""
    import tensorflow as tf

    count = 0
    with io_utils.atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for label, image in records:
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                count += 1
    return {"file": os.path.basename(path), "images": count, "bytes": os.path.getsize(path)}


def write_shards(save_dir, records, total_images, shard_images=DEFAULT_SHARD_IMAGES):
    """Write `total_images` (label, image bytes) pairs from the iterator `records` to
    `<save_dir>/train-00000-of-000NN.tfrecord` ..., `shard_images` per shard in order. Returns the description
    (num_classes, total_images, height, width of the first image, shards) for `write_description`, and the set
    of labels.  Usage: description, classes = write_shards("/d/shards", iter([(0, jpeg), (1, jpeg)]), 2, 1)
    """
    if total_images <= 0 or shard_images <= 0:
        raise ValueError("need images and shard_images > 0, got {} images, shard_images={}".format(total_images, shard_images))
    records, classes, shards = iter(records), set(), []
    num_shards = -(-total_images // shard_images)
    first_label, first_image = next(records)
    height, width = face_io.decode_image(first_image, "the first image").shape[:2]
    records = itertools.chain([(first_label, first_image)], records)
    for index in range(num_shards):
        chunk = [next(records) for _ in range(min(shard_images, total_images - index * shard_images))]
        classes.update(label for label, _ in chunk)
        shards.append(_write_shard(os.path.join(save_dir, data.shard_file_name(index, num_shards)), chunk))
    description = {
        "format": data.SHARDS_FORMAT, "num_classes": max(classes) + 1, "total_images": total_images,
        "height": int(height), "width": int(width), "shards": shards,
    }
    return description, classes


def write_description(save_dir, description):
    """Write `<save_dir>/tfrecord_shards.json` atomically: the last step, which marks a shard set complete.

    Usage: write_description("/d/shards", description)
    """
    io_utils.atomic_write_text(os.path.join(save_dir, data.SHARDS_DESCRIPTION), json.dumps(description, indent=1))


def write_tfrecord_shards(dataset_dir, save_dir=None, shard_images=DEFAULT_SHARD_IMAGES):
    """Write the images of `<dataset_dir>/train.rec` as (image bytes, label) TFRecord shards (`write_shards`, `write_description`),
    each record checked as `extract_recordio` checks it. `save_dir` defaults to `<dataset_dir>_112x112_tfrecord`;
    a set whose description exists is complete and skipped; the description is written once every record was
    checked and the counts agree (`check_counts`). Returns `save_dir`.
    Usage: save_dir = write_tfrecord_shards("/datasets/faces_emore", shard_images=50000)
    """
    dataset_dir = os.fspath(dataset_dir).rstrip("/\\") or "/"
    save_dir = default_tfrecord_dir(dataset_dir) if save_dir is None else os.fspath(save_dir)
    rec_path = os.path.join(dataset_dir, "train.rec")
    if os.path.exists(os.path.join(save_dir, data.SHARDS_DESCRIPTION)):
        print(">>>> {} already converted to {}, skipping dataset conversion".format(rec_path, save_dir))
        return save_dir
    if not os.path.exists(rec_path):
        raise FileNotFoundError("{}: no such file, expected an MXNet RecordIO dataset folder holding train.rec / train.idx".format(rec_path))
    read_property(dataset_dir)  # a malformed property fails before the long work
    with recordio.RecordReader(rec_path) as reader:
        print(">>>> Converting {} -> TFRecord shards in {}".format(rec_path, save_dir))
        entries = _indexed_entries(reader)
        with tqdm(verified_images(reader, entries), total=len(entries), desc="Converting", unit="image") as images:
            description, classes = write_shards(save_dir, ((label, image) for _, label, image in images), len(entries), shard_images)
        check_counts(dataset_dir, reader, classes)
    description["source"] = os.path.abspath(rec_path)
    write_description(save_dir, description)
    print(">>>> {} images of {} classes in {} shard(s) in {}".format(len(entries), len(classes), len(description["shards"]), save_dir))
    return save_dir


def _is_jpeg_bytes(image):
    return isinstance(image, bytes) and image.startswith(JPEG_MAGIC)


def to_jpeg_bytes(image, where="image"):
    """One `.bin` image (bytes, or a uint8 array of an encoded image) as JPEG bytes.

    JPEG data is kept as is; any other encoding (PNG, BMP, ...) is decoded and re-encoded as JPEG.
    `where` names the image in error messages.  Usage: data = to_jpeg_bytes(np_array_of_png)
    """
    data = image.tobytes() if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1 else image
    if isinstance(data, (bytes, bytearray)) and bytes(data).startswith(JPEG_MAGIC):
        return bytes(data)
    import cv2

    decoded = face_io.decode_image(data, where)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(decoded, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("{}: JPEG encoding failed".format(where))
    return encoded.tobytes()


def convert_bin(path):
    """Rewrite an eval `.bin` in place so that every image is plain JPEG bytes (pickle protocol 4).

    A file already made of JPEG bytes is left untouched. Returns True when the file was rewritten.
    Usage: convert_bin("/datasets/faces_emore/cfp_fp.bin")
    """
    bins, issame_list = face_io.read_bin_pairs(path)
    if all(_is_jpeg_bytes(image) for image in bins):
        print(">>>> {} already holds plain JPEG bytes, nothing to do".format(path))
        return False
    images = [to_jpeg_bytes(image, "{}, image {}".format(path, index)) for index, image in enumerate(tqdm(bins, desc="Converting", unit="image"))]
    issame_list = [bool(issame) for issame in issame_list]
    with io_utils.atomic_path(path) as tmp:
        with open(tmp, "wb") as ff:
            pickle.dump((images, issame_list), ff, protocol=4)
    print(">>>> Converted {}: {} images, {} pairs, now plain JPEG bytes".format(path, len(images), len(issame_list)))
    return True


def resolve_bin_paths(dataset_dir, names):
    """Paths of the `-T` files: relative to `dataset_dir` unless absolute; all must exist."""
    paths = [name if os.path.isabs(name) else os.path.join(dataset_dir, name) for name in names]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError("-T: no such .bin file: {}".format(", ".join(missing)))
    return paths


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description="Extract an MXNet RecordIO face dataset to image folders, and make eval .bin files plain JPEG bytes.",
        epilog="Running it again skips the images already extracted and the .bin files already converted.",
    )
    parser.add_argument("-D", "--dataset_dir", type=str, required=True, help="MXNet record dataset folder, holding train.rec / train.idx / property")
    parser.add_argument("-S", "--save_dir", type=str, default=None, help="Output folder (default: <DATASET_DIR>_112x112_folders)")
    parser.add_argument("-T", "--test_bins", nargs="*", default=[], help="Eval .bin files to convert, relative to DATASET_DIR unless absolute")
    parser.add_argument("-L", "--limit", type=int, default=0, help="Extract only the first LIMIT images, for a quick look (default: 0, all)")
    parser.add_argument("--tfrecord", action="store_true",
                        help="Write sharded TFRecord files (image bytes, label) + tfrecord_shards.json instead of image folders "
                        "(SAVE_DIR default: <DATASET_DIR>_112x112_tfrecord)")
    parser.add_argument("--shard_images", type=int, default=DEFAULT_SHARD_IMAGES,
                        help="Images per TFRecord shard with --tfrecord (default: {})".format(DEFAULT_SHARD_IMAGES))
    return parser.parse_args(argv)


def prepare(dataset_dir, save_dir=None, test_bins=(), limit=0, tfrecord=False, shard_images=DEFAULT_SHARD_IMAGES):
    """What the command line does: convert the `test_bins` (names relative to `dataset_dir` unless
    absolute), then extract the dataset to folders, or to TFRecord shards with `tfrecord` (skipped when already
    done, or when `test_bins` are given and there is no train.rec).
    Usage: prepare("/datasets/faces_emore", test_bins=["cfp_fp.bin"], tfrecord=True)
    """
    if tfrecord and limit:
        raise ValueError("-L/--limit is a quick look at image folders; it does not combine with --tfrecord")
    for path in resolve_bin_paths(dataset_dir, test_bins):
        convert_bin(path)
    if test_bins and not os.path.exists(os.path.join(dataset_dir, "train.rec")):
        print(">>>> No train.rec in {}, only the .bin files were converted".format(dataset_dir))
        return None
    if tfrecord:
        return write_tfrecord_shards(dataset_dir, save_dir, shard_images)
    return extract_recordio(dataset_dir, save_dir, limit)


def main(argv=None):
    """The command line; bad input ends it with a one-line error naming the file."""
    args = parse_arguments(argv)
    return cli.run("prepare_data.py", prepare, args.dataset_dir, args.save_dir, args.test_bins, args.limit, args.tfrecord, args.shard_images)


if __name__ == "__main__":
    sys.exit(main())
