"""Augmentation of training batches: the random_status steps, random crop, lower-part cutout and mixup, as tf ops.

Usage:
    from keras_insightface import augment
    images = augment.make_augment(random_status=2)(tf.cast(uint8_batch, "float32"), tf.constant([1, 2]))
    images, soft_labels = augment.mixup(images, tf.one_hot(labels, num_classes), 0.4, tf.constant([3, 4]))
"""
import tensorflow as tf

# ---------------------------------------------------------------- augmentation of float32 batches in the 0..255 range
# Each step takes the images [B, H, W, 3], one uniform [0, 1) number per image `u` [B, 1, 1, 1] drawn for it, and
# random_status. The steps are whole-batch ops that XLA fuses into a few passes over the batch.
#
# `rows=(offset, total)`: the batch is rows offset .. offset + B of a larger batch of `total` images (a worker's share
# of a global batch). Its draws are then those rows of the draws of the whole batch, so that every image gets the
# numbers it gets when one worker takes the whole batch (docs/distributed.md).


def batch_uniform(images, shape_tail, seed_pair, rows=None):
    """Uniform [0, 1) draws [B, *shape_tail] for the batch `images`, one row per image; with `rows=(offset, total)`
    rows offset .. offset + B of the draws of a batch of `total` images.

    Usage: draws = batch_uniform(images, [2], tf.constant([1, 2]), rows=(4, 16))
    """
    batch = tf.shape(images)[0]
    if rows is None:
        return tf.random.stateless_uniform([batch, *shape_tail], seed_pair)
    offset, total = rows
    return tf.random.stateless_uniform([total, *shape_tail], seed_pair)[offset : offset + tf.cast(batch, offset.dtype)]
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as in tf.image.rgb_to_grayscale


def _spread(u, half_width):
    """Map u in [0, 1) onto [1 - half_width, 1 + half_width)."""
    return 1.0 - half_width + 2.0 * half_width * u


def _random_flip(images, u, random_status):
    """Mirror left-right with probability 0.5."""
    return tf.where(u < 0.5, tf.reverse(images, axis=[-2]), images)


def _random_brightness(images, u, random_status):
    """Add one delta in [-12.75 * random_status, 12.75 * random_status) to every pixel of an image."""
    return images + 12.75 * random_status * (2.0 * u - 1.0)


def _random_contrast(images, u, random_status):
    """Scale the distance to each channel's mean by a factor in 1 -/+ 0.1 * random_status.

    The mean is taken over every fourth row and column (1/16 of the pixels, 784 of a 112x112 face): as good an
    estimate for a face crop, and the reduction over all pixels would cost as much as the rest of the augmentation.
    """
    mean = tf.reduce_mean(images[..., ::4, ::4, :], axis=[-3, -2], keepdims=True)
    return (images - mean) * _spread(u, 0.1 * random_status) + mean


def _random_saturation(images, u, random_status):
    """Blend with the grayscale image by a factor in 1 -/+ 0.1 * random_status (0 is gray, 1 the input)."""
    gray = images[..., :1] * LUMA_WEIGHTS[0] + images[..., 1:2] * LUMA_WEIGHTS[1] + images[..., 2:] * LUMA_WEIGHTS[2]
    return (images - gray) * _spread(u, 0.1 * random_status) + gray


# (lowest random_status, step) for the classic levels; random_status >= RANDAUGMENT_LEVEL uses flip + RandAugment.
AUGMENT_LEVELS = (
    (0, _random_flip),
    (1, _random_brightness),
    (2, _random_contrast),
    (2, _random_saturation),
)
RANDOM_CROP_LEVEL = 3
DEFAULT_RANDOM_CROP = (100, 100, 3)  # the original Keras_insightface's default: a 100x100 window of a 112x112 face
RANDAUGMENT_LEVEL = 100


def _rand_augment_step(random_status, seed):
    """keras.layers.RandAugment with magnitude 5 * random_status / 100 on the 0..10 scale (factor = magnitude / 10)."""
    import keras

    magnitude = 5 * random_status / 100
    layer = keras.layers.RandAugment(value_range=(0, 255), factor=min(magnitude / 10, 1.0), seed=seed)
    return lambda images, u, level: layer(images, training=True)


def augmentation_steps(random_status, seed=None):
    """The augmentation functions `fn(images, u, random_status)` applied at a random_status, in order."""
    if random_status >= RANDAUGMENT_LEVEL:
        return [_random_flip, _rand_augment_step(random_status, seed)]
    return [step for level, step in AUGMENT_LEVELS if random_status >= level]


def _random_crop_resize(images, seed, random_crop, rows=None):
    """Crop a random `random_crop` (h, w[, c]) window from each image and resize it back to the full size
    (`rows`: see `batch_uniform`)."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    crop_h, crop_w = int(random_crop[0]), int(random_crop[1])
    if crop_h > height or crop_w > width:
        raise ValueError(
            "random_crop={} is larger than the image shape ({}, {}); pass a smaller random_crop, or None".format(random_crop, height, width)
        )
    offsets = tf.floor(batch_uniform(images, [2], seed, rows) * [height - crop_h + 1, width - crop_w + 1])
    top, left = offsets[:, 0], offsets[:, 1]
    boxes = tf.stack([top / (height - 1), left / (width - 1), (top + crop_h - 1) / (height - 1), (left + crop_w - 1) / (width - 1)], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), [height, width])


def cutout_lower_part(images, seed_pair, probability, fill=128.0, rows=None):
    """With `probability` per image, fill the rows below a random height in [0.55 H, 0.7 W) with `fill`: the
    original's `random_cutout_mask_area`, a stand-in for a face mask (`rows`: see `batch_uniform`).
    Usage: cutout_lower_part(images, seed, 0.3)"""
    height, width = images.shape[1], images.shape[2]
    low, high = int(height * 0.55), int(width * 0.7)
    draws = batch_uniform(images, [2], seed_pair, rows)
    kept_rows = low + tf.cast(tf.floor(draws[:, 1] * (high - low)), tf.int32)
    kept_rows = tf.where(draws[:, 0] < probability, kept_rows, height)
    rows = tf.range(height)[None, :, None, None]
    return tf.where(rows < kept_rows[:, None, None, None], images, tf.cast(fill, images.dtype))


def make_augment(random_status=0, seed=None, random_cutout_mask_area=0.0):
    """`augment(images_float32_0_255 [B, H, W, 3], seed_pair, rows=None)` for a random_status, clipping to [0, 255];
    `random_cutout_mask_area` > 0 then fills the lower part of that share of the images (`cutout_lower_part`);
    `rows`: see `batch_uniform` (RandAugment, random_status >= 100, draws from its Keras layer's own generator).

    Usage: augment = make_augment(2); images = augment(tf.cast(uint8_batch, "float32"), tf.constant([1, 2]))
    """
    steps = augmentation_steps(random_status, seed)

    def augment(images, seed_pair, rows=None):
        draws = batch_uniform(images, [1, 1, len(steps)], seed_pair, rows)
        for index, step in enumerate(steps):
            images = step(images, draws[..., index : index + 1], random_status)
        if random_cutout_mask_area > 0:
            images = cutout_lower_part(images, tf.random.experimental.stateless_fold_in(seed_pair, 7), random_cutout_mask_area, rows=rows)
        return tf.clip_by_value(images, 0.0, 255.0)

    return augment


# ---------------------------------------------------------------- mixup
MIXUP_NO_MIX_ABOVE = 0.9  # the original counts a drawn weight above 0.9 as no mixup (weight 1)


def mixup_weights_and_partners(batch_size, alpha, seed_pair):
    """The original's mixup draws for a batch: per sample a weight `w ~ Beta(alpha, alpha)` folded to
    `max(w, 1 - w)`, 1 where above 0.9, and its partner, a random permutation of the batch.

    Usage: weights, partners = mixup_weights_and_partners(512, 0.4, tf.constant([1, 2]))
    """
    seeds = tf.random.experimental.stateless_split(seed_pair, num=3)
    gamma_1 = tf.random.stateless_gamma([batch_size], seeds[0], alpha=alpha)
    gamma_2 = tf.random.stateless_gamma([batch_size], seeds[1], alpha=alpha)
    weights = gamma_1 / (gamma_1 + gamma_2)
    weights = tf.maximum(weights, 1.0 - weights)
    weights = tf.where(weights > MIXUP_NO_MIX_ABOVE, tf.ones_like(weights), weights)
    return weights, tf.random.experimental.stateless_shuffle(tf.range(batch_size), seeds[2])


def mixup(images, label_rows, alpha, seed_pair):
    """Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018) within a batch, as the original:
    `x_i * w_i + x_p(i) * (1 - w_i)` and the same for the label rows, with `mixup_weights_and_partners`.

    Usage: images, soft_labels = mixup(images, tf.one_hot(labels, num_classes), 0.4, seed_pair)
    """
    weights, partners = mixup_weights_and_partners(tf.shape(images)[0], alpha, seed_pair)
    image_weights = tf.cast(weights[:, None, None, None], images.dtype)
    label_weights = tf.cast(weights[:, None], label_rows.dtype)
    images = images * image_weights + tf.gather(images, partners) * (1.0 - image_weights)
    label_rows = label_rows * label_weights + tf.gather(label_rows, partners) * (1.0 - label_weights)
    return images, label_rows


def check_mixup_alpha(mixup_alpha):
    """`mixup_alpha` in [0, 1] (0: off), as the original enables it for (0, 1].  Usage: check_mixup_alpha(0.4)"""
    if not isinstance(mixup_alpha, (int, float)) or not 0 <= mixup_alpha <= 1:
        raise ValueError("mixup_alpha is the Beta(alpha, alpha) concentration in (0, 1], or 0 for no mixup; got {!r}".format(mixup_alpha))
    return float(mixup_alpha)
