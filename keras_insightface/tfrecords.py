"""TFRecord sources of training data: a distiller `.tfrecord` with its JSON sidecar, and `prepare_data.py --tfrecord`
shard sets (`train-00000-of-000NN.tfrecord` ... described by `tfrecord_shards.json`): descriptions, records, order.

Usage:
    from keras_insightface import tfrecords
    info, paths = tfrecords.read_shard_description(tfrecords.shard_description_path("/datasets/faces_emore_112x112_tfrecord"))
"""
import json
import os

import numpy as np
import tensorflow as tf

TFRECORD_DTYPES = {"float16": tf.float16, "float32": tf.float32}
SHARDS_DESCRIPTION = "tfrecord_shards.json"
SHARDS_FORMAT = "keras_insightface-image-shards-v1"
SHARD_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
DEFAULT_SHARD_SHUFFLE_BUFFER = 20000
SHARD_CYCLE_LENGTH = 16  # shards read at once, interleaved record by record


# ---------------------------------------------------------------- a distiller .tfrecord and its sidecar
def _read_sidecar(data_path):
    """The checked description `<data_path>.json` of a distiller tfrecord: num_classes, total_images, emb_shape (positive
    integers) and dtype float16|float32; `check_distiller_records` then checks the records against it."""
    sidecar = data_path + ".json"
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(
            "{}: the tfrecord description is missing; expected {} with num_classes, total_images, emb_shape, dtype".format(data_path, sidecar)
        )
    with open(sidecar) as ff:
        try:
            info = json.load(ff)
        except ValueError as error:
            raise ValueError("{}: not a readable JSON description ({})".format(sidecar, error)) from None
    keys = ("num_classes", "total_images", "emb_shape")
    if not isinstance(info, dict) or any(key not in info for key in keys + ("dtype",)) or info["dtype"] not in TFRECORD_DTYPES or not all(
            isinstance(info[key], int) and not isinstance(info[key], bool) and info[key] > 0 for key in keys):
        raise ValueError("{}: expected positive integers num_classes, total_images, emb_shape and dtype float16|float32, got {}".format(sidecar, info))
    return info


DISTILLER_FEATURES = {
    "image_names": tf.io.FixedLenFeature([], tf.string),
    "image_classes": tf.io.FixedLenFeature([], tf.int64),
    "embeddings": tf.io.FixedLenFeature([], tf.string),
}
CHECK_BATCH = 4096
_CHECKED = set()  # (path, size, mtime) of distiller tfrecords whose records were checked in this process


def check_distiller_records(data_path, info):
    """Read every record of a distiller tfrecord once, before training, against its sidecar `info`: each embedding holds
    emb_shape values of dtype, all finite (NaN / inf rows are refused, as in an npz); each label is in [0, num_classes);
    the records are total_images. ValueError naming the file, the sidecar and the first faulty record.
    Usage: check_distiller_records("embs.tfrecord", _read_sidecar("embs.tfrecord"))
    """
    stat = os.stat(data_path)
    if (os.path.abspath(data_path), stat.st_size, stat.st_mtime_ns) in _CHECKED:
        return
    sidecar, emb_shape = data_path + ".json", int(info["emb_shape"])
    dtype = np.dtype(info["dtype"]).newbyteorder("<")
    batches = tf.data.TFRecordDataset(data_path).batch(CHECK_BATCH).map(lambda records: tf.io.parse_example(records, DISTILLER_FEATURES))
    count = 0
    try:
        for batch in batches:
            _check_record_batch(data_path, sidecar, count, batch["image_classes"].numpy(), batch["embeddings"].numpy(), emb_shape, dtype, info)
            count += len(batch["embeddings"])
    except tf.errors.OpError as error:
        raise ValueError("{}: not a readable distiller tfrecord near record {} ({})".format(data_path, count, error.message.splitlines()[0])) from None
    if count != info["total_images"]:
        raise ValueError("{}: holds {} records, but {} says total_images {}".format(data_path, count, sidecar, info["total_images"]))
    _CHECKED.add((os.path.abspath(data_path), stat.st_size, stat.st_mtime_ns))


def _check_record_batch(data_path, sidecar, first, labels, embeddings, emb_shape, dtype, info):
    sizes = np.array([len(embedding) for embedding in embeddings])
    wrong = np.flatnonzero(sizes != emb_shape * dtype.itemsize)
    if wrong.size:
        raise ValueError("{}: record {} holds an embedding of {} bytes, but {} says emb_shape {} of {}: {} bytes".format(
            data_path, first + wrong[0], sizes[wrong[0]], sidecar, emb_shape, dtype.name, emb_shape * dtype.itemsize))
    values = np.frombuffer(b"".join(embeddings), dtype).reshape(len(embeddings), emb_shape)
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad_rows.size:
        raise ValueError("{}: the teacher embedding of record {} holds NaN or inf ({} such record(s) in this batch); extract them "
                         "again (data_distiller) or leave those images out".format(data_path, first + bad_rows[0], bad_rows.size))
    out_of_range = np.flatnonzero((labels < 0) | (labels >= info["num_classes"]))
    if out_of_range.size:
        raise ValueError("{}: record {} has class {}, outside the num_classes {} that {} states".format(
            data_path, first + out_of_range[0], labels[out_of_range[0]], info["num_classes"], sidecar))


def _tfrecord_source(data_path, info, is_train, shuffle_buffer_size, seed):
    """Enumerated records of a distiller tfrecord and the parser `record -> (path, label, embedding)`."""
    features = DISTILLER_FEATURES
    emb_shape, emb_dtype = int(info["emb_shape"]), TFRECORD_DTYPES[info["dtype"]]

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        embedding = tf.reshape(tf.io.decode_raw(example["embeddings"], emb_dtype, little_endian=True), [emb_shape])
        return example["image_names"], example["image_classes"], tf.cast(embedding, tf.float32)

    ds = tf.data.TFRecordDataset(data_path)
    if is_train:
        buffer_size = shuffle_buffer_size or min(int(info["total_images"]), 100000)
        ds = ds.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
    return ds.enumerate(), parse


# ---------------------------------------------------------------- prepare_data.py --tfrecord shard sets
def shard_file_name(index, num_shards):
    """`train-00003-of-00012.tfrecord` for shard 3 of 12.  Usage: shard_file_name(0, 1)"""
    return "train-{:05d}-of-{:05d}.tfrecord".format(index, num_shards)


def shard_description_path(data_path):
    """The description file of a TFRecord shard set given as its folder or as the file itself, else None.

    A folder holding `train-*-of-*.tfrecord` shards without the description is an interrupted conversion: an error.
    Usage: shard_description_path("/datasets/faces_emore_112x112_tfrecord")
    """
    if os.path.basename(data_path) == SHARDS_DESCRIPTION:
        return data_path
    if not os.path.isdir(data_path):
        return None
    description = os.path.join(data_path, SHARDS_DESCRIPTION)
    if os.path.isfile(description):
        return description
    with os.scandir(data_path) as entries:
        if any(entry.name.startswith("train-") and entry.name.endswith(".tfrecord") for entry in entries):
            raise FileNotFoundError("{}: TFRecord shards without their description {}: the conversion did not finish; "
                                    "run prepare_data.py --tfrecord again".format(data_path, SHARDS_DESCRIPTION))
    return None


def read_shard_description(description_path):
    """The checked description of a shard set and the shard paths: every shard listed is there with the size recorded.

    Usage: info, paths = read_shard_description("/datasets/faces_emore_112x112_tfrecord/tfrecord_shards.json")
    """
    if not os.path.isfile(description_path):
        raise FileNotFoundError("{}: the TFRecord shard description is missing; write the shards with prepare_data.py --tfrecord".format(description_path))
    with open(description_path) as ff:
        info = json.load(ff)
    missing = [key for key in ("format", "num_classes", "total_images", "shards") if key not in info]
    if missing or info["format"] != SHARDS_FORMAT:
        raise ValueError("{}: not a {} description (missing {})".format(description_path, SHARDS_FORMAT, missing or "the format"))
    folder, paths = os.path.dirname(os.path.abspath(description_path)), []
    for shard in info["shards"]:
        path = os.path.join(folder, shard["file"])
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size != shard["bytes"]:
            raise ValueError("{}: {} where the description {} records {} bytes: the shard is missing, truncated or changed; "
                             "run prepare_data.py --tfrecord again".format(path, "absent" if size is None else "{} bytes".format(size),
                                                                          description_path, shard["bytes"]))
        paths.append(path)
    if sum(shard["images"] for shard in info["shards"]) != info["total_images"]:
        raise ValueError("{}: the shards hold {} images, total_images says {}".format(
            description_path, sum(shard["images"] for shard in info["shards"]), info["total_images"]))
    return info, paths


def _parse_shard_record(record):
    """A serialized shard example -> (encoded image bytes, int64 label)."""
    example = tf.io.parse_single_example(record, SHARD_FEATURES)
    return example["image"], example["label"]


def _block_shuffle(records, block_size, seed):
    """`records` permuted within consecutive blocks of `block_size`, each block by its own stateless seed drawn from
    the seed pair `seed`: a reproducible stand-in for a shuffle buffer that TensorFlow's global seed does not touch
    (`Dataset.shuffle` with a tensor seed fails once `keras.utils.set_random_seed(0)` has run)."""

    def shuffle_block(index, block):
        block_seed = tf.random.experimental.stateless_fold_in(seed, index)
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(block)[0]), block_seed)
        return tf.data.Dataset.from_tensor_slices(tf.gather(block, order))

    return records.batch(block_size).prefetch(1).enumerate().flat_map(shuffle_block)  # the next block reads meanwhile


def _shard_records(paths, shuffled, shuffle_buffer_size, seed_ds):
    """The records of a shard set: in file order, or per epoch (seed pairs from `seed_ds`) in a shuffled shard
    order, interleaved record by record from SHARD_CYCLE_LENGTH shards, shuffled in blocks of `shuffle_buffer_size`."""
    files = tf.constant(paths)
    if not shuffled:
        return tf.data.TFRecordDataset(files)

    def epoch(seed):
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        order = tf.gather(files, tf.random.experimental.stateless_shuffle(tf.range(len(paths)), seeds[0]))
        records = tf.data.Dataset.from_tensor_slices(order).interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(paths), SHARD_CYCLE_LENGTH), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _block_shuffle(records, shuffle_buffer_size, seeds[1])

    return seed_ds.take(1).flat_map(epoch)



def _worker_shard_files(info, paths, index, count, batch_size, description_path):
    """The shard files of worker `index` (shard i goes to worker i % count) and the images of the smallest share,
    so every worker runs as many steps."""
    if len(paths) < count:
        raise ValueError("{}: {} TFRecord shards cannot be split over {} workers; write at least one shard per worker "
                         "(prepare_data.py --tfrecord with a smaller --shard_images)".format(description_path, len(paths), count))
    shares = [sum(shard["images"] for shard in info["shards"][worker::count]) for worker in range(count)]
    if min(shares) * count < batch_size:
        raise ValueError("{}: the smallest worker share holds {} images, fewer than one batch of {} per worker".format(
            description_path, min(shares), batch_size // count))
    return paths[index::count], min(shares) * count

