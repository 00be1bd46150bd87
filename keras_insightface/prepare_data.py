#!/usr/bin/env python3
"""Prepare insightface datasets: MXNet RecordIO -> image folders or TFRecord shards, eval `.bin` files -> plain image bytes.

Every record is checked before it is written (`record_checks`); an output folder holds one dataset only
(`extraction_output`); every file goes through `io_utils.checked_write` (atomic, errors naming the file).

Usage:
    # Convert `/datasets/faces_emore` to `/datasets/faces_emore_112x112_folders`
    ./prepare_data.py -D /datasets/faces_emore
    # Convert evaluating bin files (each original kept as <name>.orig.bin)
    ./prepare_data.py -D /datasets/faces_emore -T lfw.bin cfp_fp.bin agedb_30.bin

    from keras_insightface.prepare_data import extract_recordio, convert_bin
    save_dir = extract_recordio("/datasets/faces_emore")
    convert_bin("/datasets/faces_emore/cfp_fp.bin")
"""
import argparse
import errno
import itertools
import json
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from . import cli, data, extraction_output, face_io, io_utils, record_checks, recordio
from .record_checks import read_property

COMPLETION_MARKER = ".extraction_complete.json"
ORIGINAL_MARK = ".orig"  # cfp_fp.bin -> cfp_fp.orig.bin
DEFAULT_SHARD_IMAGES = 100000


def default_save_dir(dataset_dir):
    """`/datasets/faces_emore/` -> `/datasets/faces_emore_112x112_folders`."""
    return os.fspath(dataset_dir).rstrip("/\\") + "_112x112_folders"


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


def _source_of(dataset_dir):
    """`<dataset_dir>/train.rec`, refused early when it is missing or not a file, or `property` is malformed."""
    rec_path = os.path.join(dataset_dir, "train.rec")
    if not os.path.exists(rec_path):
        raise FileNotFoundError("{}: no such file, expected an MXNet RecordIO dataset folder holding train.rec / train.idx".format(rec_path))
    if not os.path.isfile(rec_path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected the RecordIO file", rec_path)
    read_property(dataset_dir)  # a malformed property fails before the long work
    return rec_path


def _counted(items, bar):
    """Yield `items`, counting each on the progress bar `bar`."""
    for item in items:
        yield item
        bar.update()


def _indexed_entries(reader, limit=0):
    """(key, offset) of the image records, the first `limit` only when `limit > 0`."""
    if reader.idx_path is None:
        print(">>>> No train.idx beside it: scanning {} sequentially".format(reader.rec_path))
    entries = recordio.index_images(reader)
    return entries[:limit] if limit > 0 else entries


# ---------------------------------------------------------------- RecordIO -> image folders
def image_tree_size(save_dir):
    """(number of image files, their total bytes) in the class folders of `save_dir`."""
    count = total = 0
    for folder in (entry for entry in os.scandir(save_dir) if entry.is_dir()):
        for entry in os.scandir(folder.path):
            if entry.is_file() and face_io.is_image_file(entry.name):
                count, total = count + 1, total + entry.stat().st_size
    return count, total


def _extraction_done(save_dir, identity):
    """True when `save_dir` holds the finished extraction of `identity`, its images as many and as large as its
    completion marker records. Another dataset's is refused; a changed one loses its marker and is checked again."""
    marker_path = os.path.join(save_dir, COMPLETION_MARKER)
    record = extraction_output.read_completion(marker_path, identity, "folders")
    if record is None:
        return False
    count, total = image_tree_size(save_dir)
    if count == record.get("num_images") and total == record.get("image_bytes", total):
        return True
    print(">>>> {} changed since its extraction ({} image files of {} bytes, {} of {} when completed): checking every image again".format(
        save_dir, count, total, record.get("num_images"), record.get("image_bytes")))
    os.remove(marker_path)
    return False


def _image_path(save_dir, label, key):
    return os.path.join(save_dir, str(label), "{}.jpg".format(key))


def _holds(path, image):
    """True when the file `path` holds exactly the bytes `image`."""
    if not os.path.isfile(path) or os.path.getsize(path) != len(image):
        return False
    with open(path, "rb") as ff:
        return ff.read() == image


def write_images(save_dir, images, total):
    """Write each (key, label, image bytes) of `images` to `<save_dir>/<label>/<key>.jpg`, atomically; a file already
    holding those bytes is kept, any other (half-written by an interrupted copy, stale) is replaced.
    Returns {"written", "replaced", "kept", "classes", "image_bytes"}.
    Usage: counts = write_images(save_dir, verified_images(reader, entries, limits), len(entries))
    """
    counts = {"written": 0, "replaced": 0, "kept": 0, "classes": set(), "image_bytes": 0}
    with tqdm(total=total, desc="Extracting", unit="image") as bar:
        for key, label, image in images:
            path = _image_path(save_dir, label, key)
            state = "kept" if _holds(path, image) else "replaced" if os.path.lexists(path) else "written"
            if state != "kept":
                io_utils.atomic_write_bytes(path, image, "image")
            counts[state] += 1
            counts["classes"].add(label)
            counts["image_bytes"] += len(image)
            bar.update()
    return counts


def _refuse_other_images(save_dir, reader, entries, counts):
    """`save_dir` must hold the records' images and nothing else: an image file that is no record is named."""
    count, total = image_tree_size(save_dir)
    if count == len(entries) and total == counts["image_bytes"]:
        return
    labels = (recordio.class_of(recordio.read_image(reader, offset)[0]) for _, offset in entries)
    expected = {os.path.relpath(_image_path(save_dir, label, key), save_dir) for (key, _), label in zip(entries, labels)}
    others = sorted(os.path.relpath(os.path.join(folder.path, entry.name), save_dir)
                    for folder in os.scandir(save_dir) if folder.is_dir()
                    for entry in os.scandir(folder.path) if entry.is_file() and face_io.is_image_file(entry.name))
    others = [path for path in others if path not in expected]
    raise ValueError("{}: holds {} image file(s) that are no record of {} (e.g. {}); the folder must hold the dataset alone: "
                     "move them away and run again".format(save_dir, len(others), reader.rec_path, others[0] if others else "?"))


def extract_recordio(dataset_dir, save_dir=None, limit=0):
    """Write each image of `<dataset_dir>/train.rec` to `<save_dir>/<class>/<key>.jpg`, bytes unchanged.

    `save_dir` defaults to `<dataset_dir>_112x112_folders`; it must be empty, new, or this dataset's own
    (`extraction_output.claim`). Every record is checked (`record_checks.verified_images`: decodable, label in range,
    `.idx` and header agreeing) before it is written; images already on disk with the record's bytes are kept, others
    replaced, temporary files of an interrupted run removed; the completion marker is written last, once the counts
    agree and the folder holds no other image: a second run returns at once. `limit > 0` extracts only the first
    `limit` images (a quick look; no completion marker). Returns `save_dir`.
    Usage: save_dir = extract_recordio("/datasets/faces_emore")
    """
    dataset_dir = os.fspath(dataset_dir).rstrip("/\\") or "/"
    save_dir = default_save_dir(dataset_dir) if save_dir is None else os.fspath(save_dir)
    rec_path = _source_of(dataset_dir)
    identity = extraction_output.source_identity(rec_path)
    if _extraction_done(save_dir, identity):
        print(">>>> {} already extracted to {}, skipping dataset conversion".format(rec_path, save_dir))
        return save_dir
    with recordio.RecordReader(rec_path) as reader:
        entries = _indexed_entries(reader, limit)  # the file's structure is checked before anything is written
        limits = record_checks.dataset_limits(dataset_dir, reader)
        extraction_output.claim(save_dir, identity, "folders")
        removed = remove_leftovers(save_dir)
        if removed:
            print(">>>> Removed {} temporary file(s) of an interrupted extraction in {}".format(removed, save_dir))
        print(">>>> Extracting {} -> {}".format(rec_path, save_dir))
        counts = write_images(save_dir, record_checks.verified_images(reader, entries, limits), len(entries))
        if limit <= 0:
            record_checks.check_counts(reader, limits, counts["classes"])
            _refuse_other_images(save_dir, reader, entries, counts)

    replaced = ", {} replaced (they differed from the records)".format(counts["replaced"]) if counts["replaced"] else ""
    print(">>>> {} images of {} classes in {} ({} written, {} already there{})".format(
        len(entries), len(counts["classes"]), save_dir, counts["written"], counts["kept"], replaced))
    if limit > 0:
        return save_dir
    summary = dict(identity, num_images=len(entries), num_classes=len(counts["classes"]), image_bytes=counts["image_bytes"])
    io_utils.atomic_write_text(os.path.join(save_dir, COMPLETION_MARKER), json.dumps(summary, indent=1))
    return save_dir


# ---------------------------------------------------------------- RecordIO -> TFRecord shards
def default_tfrecord_dir(dataset_dir):
    """`/datasets/faces_emore/` -> `/datasets/faces_emore_112x112_tfrecord`."""
    return os.fspath(dataset_dir).rstrip("/\\") + "_112x112_tfrecord"


def _write_shard(path, records):
    """Write (label, image bytes) pairs as tf.train.Examples to the TFRecord file `path` through `io_utils.checked_write`
    (a TensorFlow write error becomes an OSError naming `path`); returns {"file", "images", "bytes"} for the description.
    Usage: _write_shard("train-00000-of-00001.tfrecord", pairs)"""
    import tensorflow as tf

    def write(tmp):
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for label, image in records:
                    feature = {
                        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    }
                    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        except tf.errors.OpError as error:
            raise OSError("{}: cannot write the TFRecord shard ({})".format(path, error.message.splitlines()[0])) from None

    io_utils.checked_write(path, write, "TFRecord shard")
    return {"file": os.path.basename(path), "images": len(records), "bytes": os.path.getsize(path)}


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


def _shards_done(save_dir, identity):
    """True when `save_dir` holds the complete shard set of `identity` (every shard of the size its description
    records). Another dataset's is refused; an incomplete or changed one loses its description and is written again."""
    description_path = os.path.join(save_dir, data.SHARDS_DESCRIPTION)
    if extraction_output.read_completion(description_path, identity, "shards") is None:
        return False
    try:
        data.read_shard_description(description_path)
        return True
    except (ValueError, OSError) as error:
        print(">>>> {}: {}; converting again".format(save_dir, error))
    os.remove(description_path)
    return False


def _remove_stale_shards(save_dir, description):
    """Delete the shard files of an earlier, interrupted conversion of the same dataset that `description` does not
    list (another shard count); returns how many."""
    listed = {shard["file"] for shard in description["shards"]}
    stale = [name for name in os.listdir(save_dir) if name.startswith("train-") and name.endswith(".tfrecord") and name not in listed]
    for name in stale:
        os.remove(os.path.join(save_dir, name))
    return len(stale)


def write_tfrecord_shards(dataset_dir, save_dir=None, shard_images=DEFAULT_SHARD_IMAGES):
    """Write the images of `<dataset_dir>/train.rec` as (image bytes, label) TFRecord shards (`write_shards`, `write_description`),
    each record checked as `extract_recordio` checks it. `save_dir` defaults to `<dataset_dir>_112x112_tfrecord` and is
    claimed as `extract_recordio` claims its folder; a set whose description exists (and whose shards are whole) is
    complete and skipped; the description is written last, once every record was checked and the counts agree
    (`record_checks.check_counts`); shard files of an interrupted earlier conversion that it does not list are removed.
    Returns `save_dir`.
    Usage: save_dir = write_tfrecord_shards("/datasets/faces_emore", shard_images=50000)
    """
    dataset_dir = os.fspath(dataset_dir).rstrip("/\\") or "/"
    save_dir = default_tfrecord_dir(dataset_dir) if save_dir is None else os.fspath(save_dir)
    if shard_images <= 0:
        raise ValueError("--shard_images: expected a number of images per shard > 0, got {}".format(shard_images))
    rec_path = _source_of(dataset_dir)
    identity = extraction_output.source_identity(rec_path)
    if _shards_done(save_dir, identity):
        print(">>>> {} already converted to {}, skipping dataset conversion".format(rec_path, save_dir))
        return save_dir
    with recordio.RecordReader(rec_path) as reader:
        entries = _indexed_entries(reader)  # the file's structure is checked before anything is written
        limits = record_checks.dataset_limits(dataset_dir, reader)
        extraction_output.claim(save_dir, identity, "shards")
        print(">>>> Converting {} -> TFRecord shards in {}".format(rec_path, save_dir))
        with tqdm(total=len(entries), desc="Converting", unit="image") as bar:
            images = ((label, image) for _, label, image in _counted(record_checks.verified_images(reader, entries, limits), bar))
            description, classes = write_shards(save_dir, images, len(entries), shard_images)
        record_checks.check_counts(reader, limits, classes)
    removed = _remove_stale_shards(save_dir, description)
    if removed:
        print(">>>> Removed {} shard file(s) of an interrupted earlier conversion in {}".format(removed, save_dir))
    description.update(identity)
    write_description(save_dir, description)
    print(">>>> {} images of {} classes in {} shard(s) in {}".format(len(entries), len(classes), len(description["shards"]), save_dir))
    return save_dir


# ---------------------------------------------------------------- eval .bin files -> plain image bytes
def _is_plain_image_bytes(image):
    return isinstance(image, bytes) and image.startswith((record_checks.JPEG_MAGIC, record_checks.PNG_MAGIC))


def plain_image_bytes(image, where="image"):
    """One `.bin` image (bytes, or a 1-D uint8 array of an encoded image) as bytes, losslessly: JPEG and PNG data are
    kept as they are, any other encoding (BMP, ...) is re-encoded as PNG with the same decoded pixels. An image that
    does not decode is refused, ValueError naming `where`.  Usage: data = plain_image_bytes(np_array_of_png)
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1:
        image = image.tobytes()
    if not isinstance(image, (bytes, bytearray)):
        raise ValueError("{} is a {}, expected encoded image bytes or a 1-D uint8 array of them".format(
            where, "{} array of shape {}".format(image.dtype, image.shape) if isinstance(image, np.ndarray) else type(image).__name__))
    image = bytes(image)
    pixels = face_io.decode_image(image, where)
    if image.startswith((record_checks.JPEG_MAGIC, record_checks.PNG_MAGIC)):
        return image
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    if not ok or not np.array_equal(face_io.decode_image(encoded.tobytes(), where), pixels):
        raise ValueError("{}: re-encoding as PNG did not keep its pixels".format(where))
    return encoded.tobytes()


def original_copy_path(path):
    """Where `-T` keeps the original of a converted `.bin`: `cfp_fp.bin` -> `cfp_fp.orig.bin`."""
    stem, ext = os.path.splitext(os.fspath(path))
    return stem + ORIGINAL_MARK + ext


def _same_content(path_a, path_b):
    if not (os.path.isfile(path_a) and os.path.isfile(path_b)) or os.path.getsize(path_a) != os.path.getsize(path_b):
        return False
    with open(path_a, "rb") as aa, open(path_b, "rb") as bb:
        return aa.read() == bb.read()


def _plain_images(path, bins):
    """Every image of a `.bin` through `plain_image_bytes`, in parallel threads; errors name the pair and image."""
    def convert(index):
        where = "{}: pair {}, image {} of 2 (index {})".format(path, index // 2, index % 2 + 1, index)
        return plain_image_bytes(bins[index], where)

    with ThreadPoolExecutor() as pool, tqdm(total=len(bins), desc="Converting", unit="image") as bar:
        return list(_counted(pool.map(convert, range(len(bins))), bar))


def convert_bin(path, overwrite=False):
    """Make an eval `.bin` hold plain image bytes (pickle protocol 4), losslessly (`plain_image_bytes`), keeping the
    original as `<name>.orig.bin` (`original_copy_path`).

    A file already made of JPEG / PNG bytes is left untouched (returns False). An existing `<name>.orig.bin` of other
    content is kept unless `overwrite`. Every image is checked to decode before anything is written; the converted file
    replaces the original atomically once its copy is in place. Returns True when the file was converted.
    Usage: convert_bin("/datasets/faces_emore/cfp_fp.bin")
    """
    path = os.fspath(path)
    bins, issame_list = face_io.read_bin_pairs(path)
    if all(_is_plain_image_bytes(image) for image in bins):
        print(">>>> {} already holds plain JPEG / PNG bytes, nothing to do".format(path))
        return False
    original = original_copy_path(path)
    copied = _same_content(original, path)  # a conversion interrupted after the copy
    if not copied:
        cli.check_output_file(original, overwrite, "copy of the original .bin")
    images = _plain_images(path, bins)
    if not copied:
        io_utils.checked_write(original, lambda tmp: io_utils.link_or_copy(path, tmp), "copy of the original .bin")
    converted = (images, [bool(issame) for issame in issame_list])
    io_utils.checked_write(path, lambda tmp: _write_pickle(tmp, converted), ".bin file")
    print(">>>> Converted {}: {} images, {} pairs, now plain JPEG / PNG bytes; the original is kept as {}".format(
        path, len(images), len(issame_list), original))
    return True


def _write_pickle(path, content):
    with open(path, "wb") as ff:
        pickle.dump(content, ff, protocol=4)


def resolve_bin_paths(dataset_dir, names):
    """Paths of the `-T` files: relative to `dataset_dir` unless absolute; all must exist."""
    paths = [name if os.path.isabs(name) else os.path.join(dataset_dir, name) for name in names]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError("-T: no such .bin file: {}".format(", ".join(missing)))
    return paths


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description="Extract an MXNet RecordIO face dataset to image folders, and make eval .bin files plain JPEG / PNG bytes.",
        epilog="Running it again skips the images already extracted and the .bin files already converted.",
    )
    parser.add_argument("-D", "--dataset_dir", type=str, required=True, help="MXNet record dataset folder, holding train.rec / train.idx / property")
    parser.add_argument("-S", "--save_dir", type=str, default=None, help="Output folder (default: <DATASET_DIR>_112x112_folders)")
    parser.add_argument("-T", "--test_bins", nargs="*", default=[],
                        help="Eval .bin files to convert, relative to DATASET_DIR unless absolute; each original is kept as <name>.orig.bin")
    parser.add_argument("-L", "--limit", type=int, default=0, help="Extract only the first LIMIT images, for a quick look (default: 0, all)")
    parser.add_argument("--tfrecord", action="store_true",
                        help="Write sharded TFRecord files (image bytes, label) + tfrecord_shards.json instead of image folders "
                        "(SAVE_DIR default: <DATASET_DIR>_112x112_tfrecord)")
    parser.add_argument("--shard_images", type=int, default=DEFAULT_SHARD_IMAGES,
                        help="Images per TFRecord shard with --tfrecord (default: {})".format(DEFAULT_SHARD_IMAGES))
    parser.add_argument("--overwrite", action="store_true", help="With -T: replace an existing <name>.orig.bin of other content")
    return parser.parse_args(argv)


def prepare(dataset_dir, save_dir=None, test_bins=(), limit=0, tfrecord=False, shard_images=DEFAULT_SHARD_IMAGES, overwrite=False):
    """What the command line does: convert the `test_bins` (names relative to `dataset_dir` unless
    absolute; `overwrite` as `convert_bin`'s), then extract the dataset to folders, or to TFRecord shards with `tfrecord` (skipped when already
    done, or when `test_bins` are given and there is no train.rec).
    Usage: prepare("/datasets/faces_emore", test_bins=["cfp_fp.bin"], tfrecord=True)
    """
    if limit < 0:
        raise ValueError("-L/--limit: expected a number of images >= 0 (0: all), got {}".format(limit))
    if tfrecord and limit:
        raise ValueError("-L/--limit is a quick look at image folders; it does not combine with --tfrecord")
    for path in resolve_bin_paths(dataset_dir, test_bins):
        convert_bin(path, overwrite)
    if test_bins and not os.path.exists(os.path.join(dataset_dir, "train.rec")):
        print(">>>> No train.rec in {}, only the .bin files were converted".format(dataset_dir))
        return None
    if tfrecord:
        return write_tfrecord_shards(dataset_dir, save_dir, shard_images)
    return extract_recordio(dataset_dir, save_dir, limit)


def main(argv=None):
    """The command line; bad input ends it with a one-line error naming the file."""
    args = parse_arguments(argv)
    return cli.run("prepare_data.py", prepare, args.dataset_dir, args.save_dir, args.test_bins, args.limit, args.tfrecord, args.shard_images,
                   args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
