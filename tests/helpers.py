"""Small data and models shared by the tests: image files and image folders (`root/<class>/<n>.jpg`), a tiny basic
model; a full disk and a read-only folder, simulated."""
import contextlib
import errno
import hashlib
import os
import resource
import signal
import tempfile

import cv2
import keras
import numpy as np

NUM_CLASSES, IMAGES_PER_CLASS, EMB = 4, 8, 16
GRAY_SIZE = (16, 16)


def write_image(path, pixels, rgb=True):
    """Write a uint8 image, RGB (as data.py decodes) or with rgb=False in OpenCV's BGR order, creating its folder; the
    extension picks the format (PNG: exact pixels). Usage: write_image(tmp_path / "0" / "a.png", np.zeros((8, 8, 3), np.uint8))"""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(pixels[..., ::-1] if rgb else pixels))


def colour_face(class_id, index, rng, shape, first_value=40, value_step=50):
    """Gray (first_value + value_step * class_id) % 256, channel class_id % 3 of the left half at 230, N(0, 8) noise:
    a tiny model tells the classes apart. Usage: make_image_folder(root, image=colour_face)"""
    image = np.full(shape + (3,), (first_value + value_step * class_id) % 256, np.uint8)
    image[:, : shape[1] // 2, class_id % 3] = 230
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def noise_face(class_id, index, rng, shape, mean=60, mean_step=120, sd=20):
    """Gaussian noise around mean + mean_step * class_id. Usage: make_image_folder(root, 2, 4, image=noise_face)"""
    return np.clip(rng.normal(mean + mean_step * class_id, sd, shape + (3,)), 0, 255).astype(np.uint8)


def gray_value(image_id):
    """The flat gray value of image `image_id` of a gray folder. Usage: write_gray(path, gray_value(3))"""
    return 10 * image_id + 5


def flat_gray(class_id, index, rng, shape):
    """One flat gray value, gray_value(index). Usage: make_image_folder(root, image=flat_gray)"""
    return np.full(shape + (3,), gray_value(index), np.uint8)


def write_gray(path, value, size=GRAY_SIZE):
    """A flat gray image of `size` (height, width). Usage: write_gray(tmp_path / "0" / "a.png", 200, size=(20, 20))"""
    write_image(path, np.full(size + (3,), value, np.uint8))


def make_image_folder(root, num_classes=NUM_CLASSES, images_per_class=IMAGES_PER_CLASS, size=112, seed=0, *,
                      image=colour_face, class_names=None, ext=".jpg"):
    """`root/<class name>/<n><ext>`, class by class: file n of class c holds image(c, index, rng, (height, width)), an
    OpenCV (BGR) uint8 array; index counts the images of the whole folder, rng is np.random.default_rng(seed).
    images_per_class: one count, or one per class; class_names: the folder names (default "0", "1", ...); size: an int
    or (height, width). Returns str(root).
    Usage: make_image_folder(tmp_path / "faces", num_classes=10, images_per_class=2)"""
    rng = np.random.default_rng(seed)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    counts = [images_per_class] * num_classes if isinstance(images_per_class, int) else images_per_class
    index = 0
    for class_id, count in enumerate(counts):
        class_name = class_names[class_id] if class_names else str(class_id)
        os.makedirs(os.path.join(root, class_name), exist_ok=True)
        for image_id in range(count):
            pixels = image(class_id, index, rng, shape)
            write_image(os.path.join(root, class_name, "{}{}".format(image_id, ext)), pixels, rgb=False)
            index += 1
    return str(root)


def make_gray_folder(root, images_per_class, ext=".png", size=GRAY_SIZE):
    """`root/<class name>/<n><ext>` of flat gray images, image id i (counted over the folder) at gray_value(i), so a
    decoded image tells its id. images_per_class: {class name: count}. Returns {image id: class name}.
    Usage: ids = make_gray_folder(tmp_path / "names", {"carol": 1, "alice": 2})"""
    make_image_folder(root, len(images_per_class), list(images_per_class.values()), size, image=flat_gray,
                      class_names=list(images_per_class), ext=ext)
    return dict(enumerate(name for name, count in images_per_class.items() for _ in range(count)))


def tiny_basic_model(emb=EMB, l2=0):
    """A headless model ending in the `embedding` layer that trains in seconds.
    Usage: train.Train(dataset, "tiny.h5", basic_model=tiny_basic_model())"""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.Conv2D(8, 3, strides=4, kernel_regularizer=regularizer)(inputs)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(emb, kernel_regularizer=regularizer)(nn)
    nn = keras.layers.BatchNormalization(name="embedding")(nn)
    return keras.Model(inputs, nn, name="tiny")


@contextlib.contextmanager
def file_size_limit(nbytes):
    """Within the block a write past `nbytes` of any file fails at the OS level (EFBIG), as writes fail on a full disk:
    Python's write, numpy's zip, h5py and TensorFlow's C++ writers all meet it. SIGXFSZ is ignored meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def make_read_only(monkeypatch, folder):
    """Creating a file in `folder` fails with EROFS, as on a read-only file system (the tests may run as root, for
    whom permissions do not stop a write): `tempfile.mkstemp`, through which every atomic write goes, raises it."""
    real_mkstemp = tempfile.mkstemp
    folder = os.path.abspath(folder)

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if dir is not None and os.path.abspath(dir) == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, (prefix or "") + "abcdef" + (suffix or "")))
        return real_mkstemp(suffix, prefix, dir, text)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def tree_sha256(folder):
    """{relative path: sha256} of every file under `folder`, hidden files included."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as ff:
                found[os.path.relpath(path, folder).replace(os.sep, "/")] = hashlib.sha256(ff.read()).hexdigest()
    return found


def small_conv_model(with_batchnorm=True, size=32, emb=EMB):
    """Strided conv, BatchNorm, PReLU, pooling, a Dense embedding with BatchNorm (the package's fused BatchNorm layers),
    or the same without the BatchNorms (with biases instead): the equality tests' model of many replicas and workers."""
    from keras_insightface import batchnorm

    inputs = keras.Input((size, size, 3))
    nn = keras.layers.Conv2D(8, 3, strides=2, use_bias=not with_batchnorm)(inputs)
    nn = batchnorm.BatchNormalization()(nn) if with_batchnorm else nn
    nn = keras.layers.PReLU(shared_axes=[1, 2])(nn)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(emb, use_bias=not with_batchnorm)(nn)
    nn = batchnorm.BatchNormalization(name="embedding")(nn) if with_batchnorm else keras.layers.Identity(name="embedding")(nn)
    return keras.Model(inputs, nn, name="small")


def with_class_centers(basic_model, classes):
    """basic model + a `NormDense(classes)` head: a start that a dense and a sharded-centers run share."""
    from keras_insightface import models

    head = models.NormDense(classes, name="NormDense", dtype="float32")
    return keras.Model(basic_model.inputs, head(basic_model.outputs[0]), name=basic_model.name + "_centers")


def reversed_rows(dataset):
    """The batches of `dataset` with their rows in reverse order: the same training in another float summation order."""
    return dataset.map(lambda images, labels: (images[::-1], labels[::-1]))
