"""Small data and models shared by the tests: an image folder a tiny model can learn, a tiny basic model; a full disk
and a read-only folder, simulated."""
import contextlib
import errno
import os
import resource
import signal
import tempfile

import cv2
import keras
import numpy as np

NUM_CLASSES, IMAGES_PER_CLASS, EMB = 4, 8, 16


def make_image_folder(root, num_classes=NUM_CLASSES, images_per_class=IMAGES_PER_CLASS, size=112, seed=0):
    """Class c images are mostly colour c, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    for class_id in range(num_classes):
        os.makedirs(os.path.join(root, str(class_id)), exist_ok=True)
        for image_id in range(images_per_class):
            image = np.full((size, size, 3), 40 + 50 * class_id, np.uint8)
            image[:, : size // 2, class_id % 3] = 230
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(os.path.join(root, str(class_id), "{}.jpg".format(image_id)), image)
    return str(root)


def tiny_basic_model(emb=EMB, l2=0):
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
