"""Training data: a folder / npz / tfrecord dataset becomes a tf.data pipeline of normalized, augmented batches.

Usage:
    from keras_insightface import data
    ds, steps_per_epoch = data.prepare_dataset("/datasets/faces_emore_112x112_folders", batch_size=512, random_status=2)
    images, labels = next(iter(ds))  # float32 [512, 112, 112, 3] in [-1, 1], int32 class indices [512]

Inputs:
    folder    `<root>/<class>/<image>`; the scan is cached beside it as `<root>_shuffle.npz`
    .npz      keys `image_names`, `image_classes` and optionally `embeddings` (teacher embeddings)
    .tfrecord examples with `image_names` (bytes), `image_classes` (int64), `embeddings` (raw bytes),
              described by the sidecar `<file>.tfrecord.json` (num_classes, total_images, emb_shape, dtype)
    shards    `prepare_data.py --tfrecord` output: `train-00000-of-000NN.tfrecord` ... of (image bytes, label)
              examples, described by `tfrecord_shards.json`; give the folder or that file

The augmentation steps and mixup live in `augment.py`, the TFRecord reading in `tfrecords.py`; their names are
reachable here too (`data.make_augment`, `data.mixup`, `data.SHARDS_DESCRIPTION`, ...).
"""
import hashlib
import os
import sys
import warnings

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from . import face_io, npz_lists
from .augment import (  # noqa: F401  (data.<name> as before augment.py held them: the same objects)
    AUGMENT_LEVELS, DEFAULT_RANDOM_CROP, LUMA_WEIGHTS, MIXUP_NO_MIX_ABOVE, RANDAUGMENT_LEVEL, RANDOM_CROP_LEVEL, _random_crop_resize,
    augmentation_steps, check_mixup_alpha, cutout_lower_part, make_augment, mixup, mixup_weights_and_partners,
)
from .io_utils import atomic_path
from .tfrecords import (  # noqa: F401  (data.<name> as before tfrecords.py held them: the same objects)
    DEFAULT_SHARD_SHUFFLE_BUFFER, SHARD_CYCLE_LENGTH, SHARD_FEATURES, SHARDS_DESCRIPTION, SHARDS_FORMAT, TFRECORD_DTYPES, _parse_shard_record,
    _read_sidecar, _shard_records, _tfrecord_source, _worker_shard_files, check_distiller_records, read_shard_description, shard_description_path,
    shard_file_name,
)

CACHE_SUFFIX = "_shuffle.npz"
SIGNATURE_VERSION = "folder-scan-v1"
_CACHE_WARNED = set()


# ---------------------------------------------------------------- folder scanning and its cache
def cache_path_of(data_path):
    """Where the scan of folder `data_path` is cached.  Usage: cache_path_of("/d/faces/") -> "/d/faces_shuffle.npz" """
    return os.path.normpath(os.fspath(data_path)).rstrip(os.sep) + CACHE_SUFFIX


def _class_dirs(root):
    """Sorted sub-folder entries of `root`: the class folders."""
    with os.scandir(root) as entries:
        return sorted((entry for entry in entries if entry.is_dir()), key=lambda entry: entry.name)


def folder_signature(root):
    """A digest of the folder tree's shape: root path and mtime, every class folder's name and mtime.

    Adding, removing or renaming an image changes its class folder's mtime; adding a class changes the root's.
    """
    root = os.path.abspath(root)
    digest = hashlib.sha256("{}\n{}\n{}\n".format(SIGNATURE_VERSION, root, os.stat(root).st_mtime_ns).encode())
    for entry in _class_dirs(root):
        digest.update("{}\t{}\n".format(entry.name, entry.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def _is_plain_integer(name):
    """True for a name of ASCII digits only ("12", "012"; not "5²" or "١٢", which str.isdigit accepts)."""
    return name.isascii() and name.isdigit()


def _class_ids(class_names, root):
    """Integer folder names map to themselves, any other set of names to their indices in sorted order.

    Two folders naming one integer (`1` and `01`) are an error: their images would be merged into one class.
    """
    if not all(_is_plain_integer(name) for name in class_names):
        return list(range(len(class_names)))
    ids = [int(name) for name in class_names]
    first_name = {}
    for name, cid in zip(class_names, ids):
        if cid > npz_lists.MAX_CLASS_ID:
            raise ValueError("{}: class folder '{}' names class {}, beyond the int32 class ids training uses (at most {}); rename the "
                             "folders to class indices, or label them with image_classes_rule".format(root, name, cid, npz_lists.MAX_CLASS_ID))
        if cid in first_name:
            raise ValueError("{}: class folders '{}' and '{}' both name class {}; rename one".format(root, first_name[cid], name, cid))
        first_name[cid] = name
    return ids


def _scan_folder(root):
    """Walk `<root>/<class>/<image>` once: (absolute image paths, int64 class ids)."""
    root = os.path.abspath(root)
    per_class, empty = [], []
    for entry in tqdm(_class_dirs(root), desc="Scanning " + os.path.basename(root), unit="class"):
        with os.scandir(entry.path) as files:
            names = sorted(ff.name for ff in files if ff.is_file() and face_io.is_image_file(ff.name))
        if names:
            per_class.append((entry.name, [os.path.join(entry.path, name) for name in names]))
        else:
            empty.append(entry.name)
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.warn("{}: skipped {} class folder(s) without images: {}".format(root, len(empty), shown), stacklevel=3)
    if not per_class:
        raise ValueError("{}: no class folders with images found; expected <root>/<class>/<image>.jpg".format(root))
    ids = _class_ids([name for name, _ in per_class], root)
    image_names = np.array([path for _, paths in per_class for path in paths])
    image_classes = np.concatenate([np.full(len(paths), cid, dtype="int64") for cid, (_, paths) in zip(ids, per_class)])
    return image_names, image_classes


def _read_cache(cache_path, signature):
    """(image_names, image_classes) from a cache whose signature matches, else None."""
    if not os.path.isfile(cache_path):
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as cached:
            if "signature" not in cached or str(cached["signature"]) != signature:
                return None
            return cached["image_names"], cached["image_classes"].astype("int64")
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(cache_path, signature, image_names, image_classes):
    """Save the scan atomically; an unwritable location only warns (once per path)."""
    try:
        with atomic_path(cache_path) as tmp:
            np.savez(tmp, image_names=image_names, image_classes=image_classes, signature=np.array(signature))
    except OSError as error:
        if cache_path not in _CACHE_WARNED:
            _CACHE_WARNED.add(cache_path)
            warnings.warn("{}: cannot write the folder scan cache ({}); going on without it".format(cache_path, error), stacklevel=3)


def _scan_folder_cached(root):
    cache_path = cache_path_of(root)
    signature = folder_signature(root)
    cached = _read_cache(cache_path, signature)
    if cached is not None:
        print(">>>> Using cached folder scan:", cache_path)
        return cached
    image_names, image_classes = _scan_folder(root)
    _write_cache(cache_path, signature, image_names, image_classes)
    return image_names, image_classes


def _glob_folder(root, image_names_reg, image_classes_rule):
    """Images matched by the glob `image_names_reg` (relative to root), classes from `image_classes_rule(path)`
    or, without a rule, from their folder names as in a plain scan."""
    import glob

    pattern = os.path.join(os.path.abspath(root), image_names_reg or os.path.join("*", "*"))
    image_names = np.array(sorted(path for path in glob.glob(pattern) if face_io.is_image_file(path)))
    if image_names.size == 0:
        raise ValueError("{}: no images match '{}'".format(root, pattern))
    if image_classes_rule is not None:
        return image_names, npz_lists.checked_class_ids([image_classes_rule(path) for path in image_names], root, "image_classes_rule's labels")
    folders = [os.path.basename(os.path.dirname(path)) for path in image_names]
    class_names = sorted(set(folders))
    class_of = dict(zip(class_names, _class_ids(class_names, root)))
    return image_names, np.array([class_of[folder] for folder in folders], dtype="int64")


def pre_process_folder(data_path, image_names_reg=None, image_classes_rule=None):
    """Image paths, int64 class ids, teacher embeddings (or None) and the class count of a folder or npz dataset.

    A folder scan is cached beside the folder (`<root>_shuffle.npz`) and redone when the tree changes; a custom
    `image_names_reg` (glob relative to the folder) or `image_classes_rule` (path -> int) bypasses the cache.
    Usage: image_names, image_classes, embeddings, num_classes = pre_process_folder("/datasets/faces_casia_112x112_folders")
    """
    data_path = os.fspath(data_path)
    if data_path.endswith(".tfrecord"):
        raise ValueError("{}: a tfrecord dataset is read by prepare_dataset directly".format(data_path))
    if data_path.endswith(".npz"):
        if not os.path.isfile(data_path):
            raise FileNotFoundError("Dataset file not found: {}".format(data_path))
        image_names, image_classes, embeddings = npz_lists.load_npz(data_path)
    elif not os.path.isdir(data_path):
        raise FileNotFoundError("Dataset folder not found: {} (expected <root>/<class>/<image>.jpg, a .npz or a .tfrecord)".format(data_path))
    elif image_names_reg or image_classes_rule:
        (image_names, image_classes), embeddings = _glob_folder(data_path, image_names_reg, image_classes_rule), None
    else:
        (image_names, image_classes), embeddings = _scan_folder_cached(data_path), None
    if len(image_names) == 0:
        raise ValueError("{}: no images (no classes) in the dataset".format(data_path))
    num_classes = int(image_classes.max()) + 1
    print(">>>> Image length: {}, num_classes: {}, embeddings: {}".format(len(image_names), num_classes, None if embeddings is None else embeddings.shape))
    return image_names, image_classes, embeddings, num_classes


# ---------------------------------------------------------------- online distillation
def with_teacher_embeddings(ds, teacher, norm=face_io.KERAS_NORM):
    """Batches `(images, labels[, embeddings])` -> `(images, (labels, teacher embeddings))`: the original's
    `teacher_model_interf`, a teacher embedding the very images the student gets (augmented, mixed), inside the
    input pipeline as the original does. Images normalized by `norm` reach the teacher normalized its own way
    (`face_io.model_normalization(teacher)`); the first output of the teacher, as float32, is the embedding. A
    dataset's own teacher embeddings are replaced.
    Usage: ds = with_teacher_embeddings(ds, keras.models.load_model("teacher_basic.h5"), norm=face_io.KERAS_NORM)
    """
    (mean, std), (teacher_mean, teacher_std) = norm, face_io.model_normalization(teacher)

    def embed(images, labels):
        labels = labels[0] if isinstance(labels, tuple) else labels
        teacher_images = images if (mean, std) == (teacher_mean, teacher_std) else (images * std + mean - teacher_mean) / teacher_std
        embeddings = face_io.first_output(teacher(teacher_images, training=False))
        return images, (labels, tf.cast(embeddings, tf.float32))

    return ds.map(embed)


# ---------------------------------------------------------------- decoding
def _load_image(path, img_shape):
    """Read and decode one image file to uint8 [H, W, 3], resized when its size differs from img_shape."""
    return _decode_sized(tf.io.read_file(path), img_shape)


def _decode_sized(contents, img_shape):
    """Decode encoded image bytes to uint8 [H, W, 3], resized when the size differs from img_shape."""
    image = face_io.decode_image_tf(contents)
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], img_shape))
    image = tf.cond(
        same_size,
        lambda: image,
        lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, img_shape)), 0, 255), tf.uint8),
    )
    image.set_shape([img_shape[0], img_shape[1], 3])
    return image


def _load_group(paths, img_shape):
    """Decode the K images of a triplet group: uint8 [K, H, W, 3]."""
    spec = tf.TensorSpec([img_shape[0], img_shape[1], 3], tf.uint8)
    return tf.map_fn(lambda path: _load_image(path, img_shape), paths, fn_output_signature=spec)


def _count_skipped(state, element):
    """tf.data scan step over (positions, ...) elements or batches: print how many positions went missing.

    Positions count up from 0 within an epoch; an image that failed to decode leaves a gap.
    """
    expected_next, total = state
    positions = tf.reshape(element[0], [-1])
    skipped = positions[-1] - expected_next + 1 - tf.size(positions, out_type=tf.int64)
    total += skipped

    def warn():
        tf.print("WARNING: skipped", skipped, "unreadable image(s) / group(s), in this epoch so far:", total, output_stream=sys.stderr)
        return skipped

    tf.cond(skipped > 0, warn, lambda: skipped)
    return (positions[-1] + 1, total), element


def _counting_skipped(ds, num_positions):
    """Pass elements (or batches) through `_count_skipped`; an end marker at `num_positions` reveals a gap at the end."""

    def marker(spec):
        return tf.zeros([1 if dim is None else dim for dim in spec.shape], spec.dtype)

    end_marker = tf.nest.map_structure(marker, ds.element_spec)
    end_marker = (tf.fill(tf.shape(end_marker[0]), tf.constant(num_positions, tf.int64)),) + tuple(end_marker[1:])
    ds = ds.concatenate(tf.data.Dataset.from_tensors(end_marker))
    ds = ds.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), _count_skipped)
    return ds.filter(lambda positions, *rest: tf.reshape(positions, [-1])[-1] < num_positions)


# ---------------------------------------------------------------- element sources
def _seed_pairs(seed, offset):
    """An endless dataset of one stateless-random seed pair per epoch, repeated; reproducible for a given seed."""
    seed = None if seed is None else seed + offset
    epoch_seed = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True).take(1)
    return epoch_seed.flat_map(lambda pair: tf.data.Dataset.from_tensors(pair).repeat())


def _epoch_order(num_items, seed_ds):
    """A dataset of indices 0..num_items-1, permuted anew in every epoch."""
    return seed_ds.take(1).flat_map(
        lambda seed: tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(tf.range(num_items, dtype=tf.int64), seed))
    )


def _triplet_groups(image_classes, image_per_class):
    """Numpy pass: indices sorted by class, class start offsets / sizes, and the number of groups per epoch."""
    order = np.argsort(image_classes, kind="stable")
    classes, starts, counts = np.unique(image_classes[order], return_index=True, return_counts=True)
    num_groups = int(np.sum(counts // image_per_class))
    return order, starts, counts, num_groups


def _epoch_groups(order, starts, counts, image_per_class, seed_ds):
    """Per epoch: shuffle each class's images, cut them into groups of K (remainders dropped), shuffle the groups."""
    order, starts, counts = (tf.constant(arr, tf.int64) for arr in (order, starts, counts))
    class_of_slot = tf.repeat(tf.range(tf.size(counts), dtype=tf.int64), counts)
    slot_in_class = tf.range(tf.size(order), dtype=tf.int64) - tf.gather(starts, class_of_slot)
    full_group_start = tf.logical_and(
        slot_in_class % image_per_class == 0, slot_in_class + image_per_class <= tf.gather(counts, class_of_slot)
    )
    group_starts = tf.where(full_group_start)[:, 0]

    def groups(seed):
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        key = tf.cast(class_of_slot, tf.float64) + tf.random.stateless_uniform(tf.shape(class_of_slot), seeds[0], dtype=tf.float64) * 0.5
        shuffled = tf.gather(order, tf.argsort(key, stable=True))  # class blocks kept, images shuffled inside each
        starts_epoch = tf.random.experimental.stateless_shuffle(group_starts, seeds[1])
        return tf.gather(shuffled, starts_epoch[:, None] + tf.range(image_per_class, dtype=tf.int64)[None])

    return seed_ds.take(1).flat_map(lambda seed: tf.data.Dataset.from_tensor_slices(groups(seed)))


def _table_lookup(tables):
    """The fetcher `indices -> (path(s), label(s)[, embedding(s)])` over in-memory tables."""
    tables = [tf.constant(table) for table in tables if table is not None]
    return lambda indices: tuple(tf.gather(table, indices) for table in tables)


# ---------------------------------------------------------------- the pipeline
def _check_learnable(data_path, image_names, num_distinct_classes, is_train=True):
    """Refuse, before training starts, a dataset without a single readable image or (for training) of one class.

    Images are tried in order until one decodes (one read for a sound dataset).
    Usage: _check_learnable("faces_folders", image_names, len(np.unique(image_classes)))
    """
    if is_train and num_distinct_classes < 2:
        raise ValueError("{}: all images are of one class; a classifier needs at least two".format(data_path))
    if image_names is None:
        return
    for path in image_names:
        try:
            face_io.read_image(str(path))
            return
        except (OSError, ValueError):
            continue
    raise ValueError("{}: none of the {} images can be read as an image (e.g. {})".format(data_path, len(image_names), image_names[0]))


def _check_batching(num_images, batch_size, image_per_class, data_path):
    if image_per_class and batch_size % image_per_class:
        raise ValueError("batch_size={} is not divisible by image_per_class={}".format(batch_size, image_per_class))
    if num_images < batch_size:
        what = "images in groups of image_per_class={}".format(image_per_class) if image_per_class else "images"
        raise ValueError("{}: {} {}, fewer than one batch (batch_size={})".format(data_path, num_images, what, batch_size))


def _batched(ds, batch_size, image_per_class, drop_remainder, num_positions, count_skipped):
    """Batch (position, uint8 image(s), label(s)[, embedding(s)]) elements; triplet groups are flattened into images.

    Skipped images are counted on whole batches, the last partial one included, before the remainder is dropped.
    """
    group = image_per_class or 1
    ds = ds.batch(batch_size // group)
    if count_skipped:
        ds = _counting_skipped(ds, num_positions)
    if drop_remainder or image_per_class:
        ds = ds.filter(lambda positions, *rest: tf.shape(positions)[0] == batch_size // group)
    batch_dim = batch_size if drop_remainder or image_per_class else None

    def flatten(positions, *tensors):
        merged = [tf.reshape(tt, [-1] + tt.shape[2:].as_list()) if image_per_class else tt for tt in tensors]
        return (positions[0],) + tuple(tf.ensure_shape(tt, [batch_dim] + tt.shape[1:].as_list()) for tt in merged)

    return ds.map(flatten)


def _draw_seed_and_rows(epoch_seed, first_position, share):
    """The augmentation seed of a batch starting at `first_position`, and its `rows` of the draws (augment.batch_uniform).

    `share=(positions per global batch, images per position)` for a worker's slice of each global batch: the
    slice draws the global batch's numbers (seeded by its first position) and keeps its own rows, so that an image is
    augmented the same on any number of workers. None: the batch draws for itself.
    """
    if share is None:
        return tf.random.experimental.stateless_fold_in(epoch_seed, first_position), None
    positions_per_batch, group = share
    offset = first_position % positions_per_batch
    global_seed = tf.random.experimental.stateless_fold_in(epoch_seed, first_position - offset)
    return global_seed, (offset * group, positions_per_batch * group)


def _batch_finisher(augment, jit_compile, random_crop=None, norm=face_io.KERAS_NORM, mixup_alpha=0.0, num_classes=None, share=None):
    """(epoch_seed, (first position, uint8 images, labels[, embeddings])) -> model inputs and targets; with
    `mixup_alpha` > 0 the labels become mixed float32 rows of width `num_classes` (mixed within this batch); `share`:
    a worker's slice of global batches (`_draw_seed_and_rows`)."""

    def augment_and_normalize(images, seed, rows):
        images = tf.cast(images, tf.float32)
        return face_io.normalize(images if augment is None else augment(images, seed, rows=rows), norm)

    if jit_compile:  # XLA fuses the uint8 -> float32 cast, augmentation and normalization into a few passes
        augment_and_normalize = tf.function(augment_and_normalize, jit_compile=True)

    def finish_images(images, seed, rows):
        if random_crop is not None:  # CropAndResize has no XLA kernel; it reads uint8 and gives float32
            images = _random_crop_resize(images, seed + 1, random_crop, rows=rows)
        return augment_and_normalize(images, seed, rows)

    def finish(epoch_seed, batch):
        first_position, images, labels, *embedding = batch
        draw_seed, rows = _draw_seed_and_rows(epoch_seed, first_position, share)
        images = finish_images(images, draw_seed, rows)
        labels = tf.cast(labels, tf.int32)
        if mixup_alpha > 0:
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, first_position)
            label_rows = tf.one_hot(labels, num_classes, dtype=tf.float32)
            images, labels = mixup(images, label_rows, mixup_alpha, tf.random.experimental.stateless_fold_in(seed, 11))
        return images, (labels, tf.cast(embedding[0], tf.float32)) if embedding else labels

    return finish


def _check_input_shard(input_shard, batch_size, image_per_class, cache):
    """(index, count) of a valid `input_shard`, (0, 1) for None; errors name the argument."""
    if input_shard is None:
        return 0, 1
    index, count = (int(value) for value in input_shard)
    if count < 1 or not 0 <= index < count:
        raise ValueError("input_shard=(index, count) needs 0 <= index < count, got {!r}".format(input_shard))
    positions_per_batch = batch_size // (image_per_class or 1)
    if count > 1 and positions_per_batch % count:
        raise ValueError("input_shard: the global batch of {} {} does not split evenly over {} workers".format(
            positions_per_batch, "groups" if image_per_class else "images", count))
    if count > 1 and cache:
        raise ValueError("input_shard: cache is not supported with more than one worker; each worker reads its share")
    return index, count


def _positions_of_worker(ds, positions_per_batch, index, count):
    """Keep the (position, item) elements of worker `index`: its contiguous slice of every global batch."""
    share = positions_per_batch // count
    return ds.filter(lambda position, item: (position % positions_per_batch) // share == index)


def prepare_dataset_and_classes(
    data_path,
    image_names_reg=None,
    image_classes_rule=None,
    batch_size=128,
    img_shape=(112, 112),
    random_status=0,
    random_crop=DEFAULT_RANDOM_CROP,
    random_cutout_mask_area=0.0,
    image_per_class=0,
    cache=False,
    shuffle_buffer_size=None,
    is_train=True,
    seed=None,
    norm=None,
    mixup_alpha=0,
    input_shard=None,
):
    """tf.data batches `(images, labels)`, or `(images, (labels, embeddings))` for distiller data; steps per epoch;
    the number of classes.

    labels are int32 class indices [B] (losses that want one-hot rows get them inside the training step).
    images are float32 [B, H, W, 3] normalized by `(x - 127.5) * 0.0078125` (or `norm`, a (mean, std) such as
    `face_io.model_normalization(basic_model)`: `Train` passes its model's), augmented by `random_status` when
    is_train. At random_status 3 .. 99 a random `random_crop` (h, w[, c]) window of each image is resized back to
    img_shape (default (100, 100, 3), as the original Keras_insightface; None crops nothing; the RandAugment levels
    >= 100 do not crop, as the original). `random_cutout_mask_area` (0..1) fills the lower part of that share of the
    training images with gray, the original's mask stand-in (`cutout_lower_part`). `mixup_alpha` in (0, 1] mixes each
    training batch with itself as the original (`mixup`, after augmentation and normalization): labels are then float32
    rows [B, num_classes] of two classes' weights (not with teacher embeddings). `image_per_class=K > 0` makes every batch out of whole groups of K images of one class (classes with
    fewer than K images are left out). `cache` is True (memory) or a file prefix for `Dataset.cache` of the decoded
    images. Unreadable images are skipped with a printed count. `data_path` is a folder, a `.npz`, a distiller
    `.tfrecord`, or a `prepare_data.py --tfrecord` shard set (its folder or `tfrecord_shards.json`): the shard order,
    the record-by-record interleave of SHARD_CYCLE_LENGTH shards and a shuffle buffer of `shuffle_buffer_size`
    (default min(images, DEFAULT_SHARD_SHUFFLE_BUFFER)) are all seeded per epoch from `seed`.
    `input_shard=(index, count)` gives worker `index` of `count` its share of every global batch of `batch_size`:
    batches of batch_size // count; a shard set is split by file (shard i to worker i % count), any other source
    by position (the worker's contiguous slice of each global batch of the order every worker draws from `seed`).
    steps_per_epoch stays the number of global batches, the same on every worker (see `multi_worker.py`).
    Usage: ds, steps_per_epoch, num_classes = prepare_dataset_and_classes("faces_112x112_folders", batch_size=512)
    """
    data_path = os.fspath(data_path)
    img_shape = tuple(int(ii) for ii in img_shape[:2])
    image_per_class = int(image_per_class or 0)
    mixup_alpha = check_mixup_alpha(mixup_alpha) if is_train else 0.0
    if mixup_alpha and image_per_class:
        raise ValueError("mixup_alpha={} mixes the labels of a batch; triplet batches (image_per_class={}) need whole labels".format(mixup_alpha, image_per_class))
    shard_description = shard_description_path(data_path)
    if image_per_class and (cache or data_path.endswith(".tfrecord") or shard_description):
        raise ValueError("image_per_class={} works with a folder or npz dataset without cache".format(image_per_class))
    shard_index, shard_count = _check_input_shard(input_shard, batch_size, image_per_class, cache)
    order_seeds, augment_seeds = (_seed_pairs(seed, offset) for offset in (0, 1))
    loader = _load_group if image_per_class else _load_image

    if shard_description:
        info, paths = read_shard_description(shard_description)
        num_classes, num_images = int(info["num_classes"]), int(info["total_images"])
        num_positions = num_images
        _check_learnable(data_path, None, num_classes, is_train)
        _check_batching(num_images, batch_size, 0, data_path)
        buffer_size = shuffle_buffer_size or min(num_images, DEFAULT_SHARD_SHUFFLE_BUFFER)
        if shard_count > 1:
            paths, num_images = _worker_shard_files(info, paths, shard_index, shard_count, batch_size, shard_description)
        ds, fetch, loader = _shard_records(paths, is_train and not cache, buffer_size, order_seeds).enumerate(), _parse_shard_record, _decode_sized
        if shard_count > 1:  # positions unique across workers, so that augmentation seeds differ
            ds = ds.map(lambda position, record: (position * shard_count + shard_index, record))
    elif data_path.endswith(".tfrecord"):
        info = _read_sidecar(data_path)
        check_distiller_records(data_path, info)
        num_classes, num_images = int(info["num_classes"]), int(info["total_images"])
        num_positions = num_images
        _check_learnable(data_path, None, num_classes, is_train)
        _check_batching(num_images, batch_size, 0, data_path)
        ds, fetch = _tfrecord_source(data_path, info, is_train, shuffle_buffer_size, seed)
    else:
        image_names, image_classes, embeddings, num_classes = pre_process_folder(data_path, image_names_reg, image_classes_rule)
        _check_learnable(data_path, image_names, len(np.unique(image_classes)), is_train)
        fetch = _table_lookup([image_names, image_classes, embeddings])
        if image_per_class:
            order, starts, counts, num_groups = _triplet_groups(image_classes, image_per_class)
            num_images, num_positions = num_groups * image_per_class, num_groups
            _check_batching(num_images, batch_size, image_per_class, data_path)
            ds = _epoch_groups(order, starts, counts, image_per_class, order_seeds).enumerate()
        else:
            num_images = num_positions = len(image_names)
            _check_batching(num_images, batch_size, 0, data_path)
            in_order = cache or not is_train
            ds = (tf.data.Dataset.range(num_images) if in_order else _epoch_order(num_images, order_seeds)).enumerate()

    if shard_count > 1 and not shard_description:
        ds = _positions_of_worker(ds, batch_size // (image_per_class or 1), shard_index, shard_count)

    def load(position, item):
        paths, *rest = fetch(item)
        return (position, loader(paths, img_shape), *rest)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    if mixup_alpha and len(ds.element_spec) > 3:
        raise ValueError("{}: mixup_alpha={} with prepared teacher embeddings: mix images with a teacher computing "
                         "embeddings of the mixed images instead (Train's teacher_model_interf)".format(data_path, mixup_alpha))
    if cache:  # decoded images are counted and cached in file order, then shuffled every epoch
        ds = _counting_skipped(ds, num_positions).cache("" if cache is True else os.fspath(cache))
        if is_train:
            ds = ds.shuffle(shuffle_buffer_size or num_images, seed=seed, reshuffle_each_iteration=True)
    drop_remainder = is_train
    global_batch_size, batch_size = batch_size, batch_size // shard_count
    ds = _batched(ds, batch_size, image_per_class, drop_remainder, num_positions, count_skipped=not cache and shard_count == 1)
    if not 0 <= random_cutout_mask_area <= 1:
        raise ValueError("random_cutout_mask_area is the share of images masked, in [0, 1]; got {!r}".format(random_cutout_mask_area))
    augment = make_augment(random_status, seed, random_cutout_mask_area) if is_train else None
    crop = random_crop if is_train and RANDOM_CROP_LEVEL <= random_status < RANDAUGMENT_LEVEL else None  # as the original
    by_position = shard_count > 1 and not shard_description  # a shard set is split by file: no global batch to slice
    share = (global_batch_size // (image_per_class or 1), image_per_class or 1) if by_position else None
    finish = _batch_finisher(augment, jit_compile=random_status < RANDAUGMENT_LEVEL, random_crop=crop,
                             norm=face_io.KERAS_NORM if norm is None else tuple(float(value) for value in norm),
                             mixup_alpha=mixup_alpha, num_classes=num_classes, share=share)
    ds = tf.data.Dataset.zip(augment_seeds, ds).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    if shard_count > 1:
        steps_per_epoch = num_images // global_batch_size
        ds = ds.take(steps_per_epoch)  # every worker ends the epoch after the same number of steps
    else:
        steps_per_epoch = num_images // batch_size if drop_remainder else -(-num_images // batch_size)
    return ds.prefetch(tf.data.AUTOTUNE), steps_per_epoch, num_classes


def prepare_dataset(data_path, *args, **kwargs):
    """tf.data batches `(images, labels)` and steps per epoch; the arguments of `prepare_dataset_and_classes`.

    Usage: ds, steps_per_epoch = prepare_dataset("faces_112x112_folders", batch_size=512, random_status=2)
    """
    ds, steps_per_epoch, _ = prepare_dataset_and_classes(data_path, *args, **kwargs)
    return ds, steps_per_epoch


def image_batches_uint8(image_names, img_shape=(112, 112), batch_size=128):
    """Decoded uint8 RGB batches [B, H, W, 3] of image files, in order, as numpy arrays (for embedding tools).

    An unreadable file raises an error naming it: tools that extract embeddings must keep images and
    outputs aligned, so nothing is skipped silently.
    Usage: for batch in image_batches_uint8(image_names, batch_size=256): embs = teacher(batch)
    """
    img_shape = tuple(int(ii) for ii in img_shape[:2])
    image_names = np.asarray(image_names).astype(str)
    ds = tf.data.Dataset.from_tensor_slices(image_names).map(lambda path: _load_image(path, img_shape), num_parallel_calls=tf.data.AUTOTUNE)
    iterator = iter(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
    for start in range(0, len(image_names), batch_size):
        try:
            batch = next(iterator)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError("Unreadable image among {} (batch starting at index {}): {}".format(
                list(image_names[start : start + batch_size][:3]) + ["..."], start, error.message.splitlines()[0])) from error
        yield batch.numpy()
