"""Offline triplet mining, the original Keras_insightface's `Train(samples_per_mining=N)` dataset.

Every epoch draws a pool of N images in whole groups of `image_per_class` images of one class, embeds the pool with
the current basic model (no augmentation, L2-normalized), and takes every pool image as an anchor with its hardest
positive (the same-class pool image of lowest cosine similarity) and its hardest negative (the other-class pool image
of highest similarity). The epoch's batches are these triplets in the order `[anchor, positive, negative, ...]`,
augmented like any training batch, for `losses.OfflineTripletLoss` / `losses.OfflineArcTripletLoss`.

Usage:
    from keras_insightface import triplet_mining
    ds, steps_per_epoch, num_classes, miner = triplet_mining.offline_triplet_dataset("faces_folders", basic_model, 2048, batch_size=96)
    tt = train.Train("faces_folders", "m.h5", basic_model=basic_model, samples_per_mining=2048)   # the same, inside Train
"""
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from . import data
from . import face_io

MIN_IMAGE_PER_CLASS = 4  # the original raises image_per_class to at least 4
MINING_CHUNK = 1024  # anchors compared with the whole pool at once


def mine_triplets(embeddings, labels, chunk=MINING_CHUNK):
    """(positive, negative) pool indices for every anchor of L2-normalized `embeddings` [N, D] with class `labels` [N].

    Positive: the same-label sample of lowest cosine similarity (the anchor itself when it is alone); negative: the
    other-label sample of highest similarity. First index on ties, as np.argmin / np.argmax.
    Usage: positives, negatives = mine_triplets(l2_normalized_embs, labels)
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("triplet mining: the pool holds a single class ({}); a negative needs another".format(labels[0]))
    positives, negatives = np.empty(len(labels), "int64"), np.empty(len(labels), "int64")
    for start in range(0, len(labels), chunk):
        sims = embeddings[start : start + chunk] @ embeddings.T
        same = labels[start : start + chunk, None] == labels[None, :]
        positives[start : start + chunk] = np.argmin(np.where(same, sims, np.inf), axis=1)
        negatives[start : start + chunk] = np.argmax(np.where(same, -np.inf, sims), axis=1)
    return positives, negatives


def class_groups(image_classes, image_per_class, rng):
    """Groups [G, image_per_class] of image indices: each class's images shuffled and cut into whole groups."""
    order = rng.permutation(len(image_classes))
    order = order[np.argsort(image_classes[order], kind="stable")]
    _, starts, counts = np.unique(image_classes[order], return_index=True, return_counts=True)
    groups = [order[start : start + count // image_per_class * image_per_class] for start, count in zip(starts, counts)]
    return np.concatenate([group for group in groups if group.size]).reshape(-1, image_per_class)


def pool_groups(samples_per_mining, num_images, image_per_class):
    """Groups per pool: `N // image_per_class` for N > 1, `int(num_images * N) // image_per_class` for 0 < N <= 1."""
    samples = samples_per_mining if samples_per_mining > 1 else int(num_images * samples_per_mining)
    return int(samples) // image_per_class


def draw_pool(groups, image_classes, num_groups, rng):
    """Image indices of `num_groups` random groups, shuffled; holding two classes at least (mining needs a negative)."""
    picked = groups[rng.permutation(len(groups))]
    pool = picked[:num_groups]
    if len(np.unique(image_classes[pool[:, 0]])) < 2:
        other = np.flatnonzero(image_classes[picked[:, 0]] != image_classes[pool[0, 0]])[0]
        pool = np.concatenate([pool[:-1], picked[other : other + 1]])
    return rng.permutation(pool.ravel())


class OfflineTripletMiner:
    """The generator of one epoch's triplet indices `[a, p, n, a, p, n, ...]` into `image_names`, mined afresh.

    Usage: miner = OfflineTripletMiner(basic_model, names, classes, 2048); flat_indices = list(miner.epoch_triplets())
    """

    def __init__(self, basic_model, image_names, image_classes, samples_per_mining, image_per_class=MIN_IMAGE_PER_CLASS,
                 img_shape=(112, 112), batch_size=128, norm=None, seed=None):
        if not samples_per_mining > 0:
            raise ValueError("samples_per_mining must be > 0 (a count of images, or a share of the dataset in (0, 1]), "
                             "got {!r}".format(samples_per_mining))
        self.basic_model, self.image_names = basic_model, np.asarray(image_names).astype(str)
        self.image_classes = np.asarray(image_classes, "int64")
        self.image_per_class = max(MIN_IMAGE_PER_CLASS, int(image_per_class or 0))
        self.img_shape, self.batch_size, self.norm = tuple(img_shape[:2]), batch_size, norm
        self.seed = int(np.random.randint(2**31 - 1)) if seed is None else int(seed)
        self.epoch = 0  # the next pool's epoch: a resumed run sets it to its initial_epoch
        _, counts = np.unique(self.image_classes, return_counts=True)
        kept = counts[counts >= self.image_per_class]
        if len(kept) < 2:
            raise ValueError("samples_per_mining: {} class(es) with image_per_class={} images or more; mining needs two "
                             "classes".format(len(kept), self.image_per_class))
        all_groups = int(np.sum(kept // self.image_per_class))
        self.num_groups = min(pool_groups(samples_per_mining, int(kept.sum()), self.image_per_class), all_groups)
        if self.num_groups < 2:
            raise ValueError("samples_per_mining={!r} gives {} group(s) of image_per_class={}; a pool needs two groups".format(
                samples_per_mining, self.num_groups, self.image_per_class))
        self.pool_size = self.num_groups * self.image_per_class

    def _rng(self):
        return np.random.default_rng([self.seed, self.epoch])

    def pool_embeddings(self, pool):
        """L2-normalized embeddings of the pool's images by the current basic model, no augmentation."""
        embed = face_io.embedding_function(self.basic_model, (*self.img_shape, 3), flip=False, norm=self.norm)
        batches = data.image_batches_uint8(self.image_names[pool], self.img_shape, self.batch_size)
        steps = -(-len(pool) // self.batch_size)
        embs = [np.asarray(embed(batch)) for batch in tqdm(batches, "Triplet embedding", total=steps, leave=False)]
        return face_io.l2_normalize(np.concatenate(embs), dtype="float32")

    def mine(self):
        """One pool's triplets: flat int64 indices `[a, p, n, ...]` into image_names (3 * pool_size of them); the pool
        depends only on (seed, epoch) and the basic model's weights, so a resumed run mines what an uninterrupted one did."""
        rng = self._rng()
        self.epoch += 1
        groups = class_groups(self.image_classes, self.image_per_class, rng)
        pool = draw_pool(groups, self.image_classes, self.num_groups, rng)
        positives, negatives = mine_triplets(self.pool_embeddings(pool), self.image_classes[pool])
        return np.stack([pool, pool[positives], pool[negatives]], axis=1).ravel()

    def epoch_triplets(self):
        """Yields (epoch, flat index) for one pool: the epoch seeds that pool's augmentation."""
        epoch = self.epoch
        for index in self.mine():
            yield epoch, index


def offline_triplet_dataset(data_path, basic_model, samples_per_mining, batch_size=48, image_per_class=MIN_IMAGE_PER_CLASS,
                            img_shape=(112, 112), random_status=0, random_crop=data.DEFAULT_RANDOM_CROP,
                            random_cutout_mask_area=0.0, seed=None, norm=None):
    """Batches `(images, int32 labels)` of mined triplets, one pool per epoch (each iteration mines anew); the steps per
    epoch `ceil(3 * pool / batch)`; the class count; the miner (set `miner.epoch` to resume at an epoch). The batch is `batch_size // 3 * 3` images (the last one of an epoch
    may be smaller); images are augmented by `random_status` / `random_crop` / `random_cutout_mask_area` as
    `data.prepare_dataset` does, and normalized by `norm` (default the basic model's, see face_io.model_normalization).
    `data_path`: an image folder or an npz without teacher embeddings.
    Usage: ds, steps_per_epoch, num_classes, miner = offline_triplet_dataset("faces_folders", basic_model, 2048, batch_size=96)
    """
    if data.shard_description_path(data_path) or str(data_path).endswith(".tfrecord"):
        raise ValueError("samples_per_mining works with an image folder or npz dataset, got {}".format(data_path))
    image_names, image_classes, embeddings, num_classes = data.pre_process_folder(data_path)
    if embeddings is not None:
        raise ValueError("samples_per_mining: {} carries teacher embeddings; mining works with plain images".format(data_path))
    triplet_batch = batch_size // 3 * 3
    if triplet_batch < 3:
        raise ValueError("samples_per_mining needs batch_size >= 3 (whole [anchor, positive, negative] triplets), got {}".format(batch_size))
    norm = face_io.model_normalization(basic_model) if norm is None else tuple(float(value) for value in norm)
    miner = OfflineTripletMiner(basic_model, image_names, image_classes, samples_per_mining, image_per_class, img_shape,
                                batch_size, norm, seed)
    print(">>>> Offline triplet mining: pool of {} images ({} groups of {}) per epoch, batch {}".format(
        miner.pool_size, miner.num_groups, miner.image_per_class, triplet_batch))
    fetch = data._table_lookup([miner.image_names, miner.image_classes])
    img_shape = tuple(int(ii) for ii in img_shape[:2])

    def load(position, epoch_and_index):
        epoch, index = epoch_and_index[0], epoch_and_index[1]
        path, label = fetch(index)
        return epoch, position, data._load_image(path, img_shape), label

    def with_epoch_seed(epochs, positions, images, labels):
        epoch_seed = tf.stack([tf.constant(miner.seed + 1, tf.int64), epochs[0]])
        return epoch_seed, (positions[0], images, labels)

    triplets = tf.data.Dataset.from_generator(miner.epoch_triplets, output_signature=tf.TensorSpec([2], tf.int64))
    ds = triplets.enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(triplet_batch).map(with_epoch_seed)
    augment = data.make_augment(random_status, seed, random_cutout_mask_area)
    crop = random_crop if data.RANDOM_CROP_LEVEL <= random_status < data.RANDAUGMENT_LEVEL else None
    finish = data._batch_finisher(augment, jit_compile=random_status < data.RANDAUGMENT_LEVEL, random_crop=crop, norm=norm)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    steps_per_epoch = -(-3 * miner.pool_size // triplet_batch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))  # a known epoch length for Keras' progress bar
    return ds.prefetch(tf.data.AUTOTUNE), steps_per_epoch, num_classes, miner
