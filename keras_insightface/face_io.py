"""Faces in, embeddings out: the one home of input normalization, image decoding, the `.bin` reader and the
embedding function that every tool (evals, IJB_evals, export parity, model_interf, data_drop_top_k,
data_distiller) uses.

- Normalization: a model takes `(x - mean) / std` of uint8 RGB pixels. Models trained here use
  `KERAS_NORM` = (127.5, 128), i.e. `(x - 127.5) * 0.0078125`; insightface's use `INSIGHTFACE_NORM`
  = (127.5, 127.5). A model that needs another one than `KERAS_NORM` carries an `InputNormalization` layer
  (an identity holding mean and std), so the tools read it from the saved model, no flags needed.
- Decoding: JPEG with the accurate integer IDCT, which is what OpenCV (`cv2.imdecode`) and so insightface's
  tools produce, in both the NumPy (`decode_image`) and the tf.data (`decode_image_tf`) paths: a face
  decodes to the same pixels for training, evaluation and export.
- Embedding: uint8 RGB -> normalized -> model -> (+ model of the mirrored image) -> L2-normalized, traced
  once per model, image shape and flip setting, and reused.

Usage:
    from keras_insightface import face_io
    images, issame = face_io.load_bin("lfw.bin")                        # uint8 [2N, 112, 112, 3], bool [N]
    embs = face_io.embed_images(basic_model, images, batch_size=64)       # L2-normalized [2N, D]
"""
import errno
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from . import io_utils

KERAS_NORM = (127.5, 128.0)
INSIGHTFACE_NORM = (127.5, 127.5)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEMPORARY_MARK = ".tmp"  # io_utils.atomic_path names end with ".tmp<ext>"


# ---------------------------------------------------------------- normalization
@keras.saving.register_keras_serializable(package="keras_insightface")
class InputNormalization(keras.layers.Layer):
    """Identity layer recording the input normalization `(x - mean) / std` a model expects.

    Usage: nn = InputNormalization(*face_io.INSIGHTFACE_NORM)(keras.Input((112, 112, 3)))
    """

    def __init__(self, mean=KERAS_NORM[0], std=KERAS_NORM[1], **kwargs):
        kwargs.setdefault("name", "input_normalization")
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def model_normalization(model):
    """(mean, std) of the inputs `model` expects: its `InputNormalization` layer's, else `KERAS_NORM`.

    Usage: mean, std = model_normalization(basic_model)
    """
    for layer in model.layers:
        if isinstance(layer, InputNormalization):
            return layer.mean, layer.std
    return KERAS_NORM


def normalize(images, norm=KERAS_NORM):
    """uint8-range pixels -> float32 `(x - mean) / std`, for NumPy arrays and tensors alike.

    Usage: x = normalize(uint8_batch)  # (x - 127.5) * 0.0078125
    """
    mean, std = norm
    if isinstance(images, np.ndarray):
        return (images.astype("float32") - mean) / np.float32(std)
    return (tf.cast(images, tf.float32) - mean) / std


# ---------------------------------------------------------------- files and decoding
def is_image_file(name):
    """True for an image file name: a known extension, not hidden, not a temporary file of an interrupted write.

    Usage: [name for name in os.listdir(folder) if is_image_file(name)]
    """
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".") and TEMPORARY_MARK not in base.lower()


def decode_image(buffer, source="image"):
    """Encoded image bytes (or a 1-D uint8 array of them) -> uint8 RGB [H, W, 3], decoded by OpenCV.

    Raises ValueError naming `source` when the bytes are not an image.
    Usage: image = decode_image(open("a.jpg", "rb").read(), "a.jpg")
    """
    if isinstance(buffer, (bytes, bytearray)):
        buffer = np.frombuffer(buffer, dtype=np.uint8)
    if not (isinstance(buffer, np.ndarray) and buffer.dtype == np.uint8 and buffer.ndim == 1):
        raise ValueError("{} is a {}, expected encoded image bytes or a 1-D uint8 array of an encoded image".format(
            source, type(buffer).__name__))
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if decoded is None:
        raise ValueError("{} ({} bytes) could not be decoded as an image".format(source, buffer.size))
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def resize_to(image, image_size):
    """`image` resized to (height, width) `image_size` with area interpolation, unchanged when it already fits."""
    height, width = image_size
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def read_image(path, image_size=None):
    """uint8 RGB [H, W, 3] of an image file, resized to `image_size` when given.  Usage: read_image("a.jpg", (112, 112))"""
    with open(path, "rb") as ff:
        image = decode_image(ff.read(), path)
    return image if image_size is None else resize_to(image, image_size)


def decode_image_tf(contents):
    """The tf.data twin of `decode_image`: encoded bytes tensor -> uint8 RGB [H, W, 3], JPEG as OpenCV decodes it.

    Usage: image = decode_image_tf(tf.io.read_file(path))
    """
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )


# ---------------------------------------------------------------- .bin pair files
def check_pairs(content, path):
    """Validate the `(bins, issame_list)` layout of a `.bin`; returns (list of encoded images, bool array)."""
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError("{}: expected a pickled pair (bins, issame_list), got {}".format(path, type(content).__name__))
    bins, issame = content
    if not isinstance(bins, (tuple, list, np.ndarray)) or not isinstance(issame, (tuple, list, np.ndarray)):
        raise ValueError("{}: expected bins and issame_list to be sequences".format(path))
    if len(bins) == 0:
        raise ValueError("{}: holds no image pairs".format(path))
    if len(bins) % 2 != 0:
        raise ValueError("{}: holds an odd number of images ({}), expected two per pair".format(path, len(bins)))
    if len(bins) != 2 * len(issame):
        raise ValueError("{}: holds {} images for {} issame labels, expected two images per label".format(path, len(bins), len(issame)))
    issame = np.asarray(issame)
    if issame.size and not np.isin(issame, (0, 1)).all():
        raise ValueError("{}: issame_list holds values other than True / False".format(path))
    return bins, issame.astype(bool)


MIN_ENCODED_IMAGE_BYTES = 64  # less than any real JPEG / PNG (a PNG of one pixel holds 67 bytes)
REFERENCED_BYTES_SLACK = 4  # images may share objects (a pair of one image), but not reference far more than the file


def _image_size(image):
    return image.nbytes if isinstance(image, np.ndarray) else len(image) if isinstance(image, (bytes, bytearray)) else None


def check_bin_sizes(bins, path):
    """Refuse a `.bin` whose images cannot be what its file holds, before anything is decoded or allocated.

    Every image needs MIN_ENCODED_IMAGE_BYTES of the file, and all of them together may reference at most
    REFERENCED_BYTES_SLACK times the file's bytes: a pickle that references one object millions of times would
    otherwise ask for terabytes of decoded images.
    Usage: check_bin_sizes(bins, "lfw.bin")
    """
    sizes = [_image_size(image) for image in bins]
    for index, size in enumerate(sizes):
        if size is None:
            raise ValueError("{}: image {} is a {}, expected encoded image bytes or a uint8 array of them".format(path, index, type(bins[index]).__name__))
        if size < MIN_ENCODED_IMAGE_BYTES:
            raise ValueError("{}: image {} holds only {} bytes, too few for an encoded image".format(path, index, size))
    file_size = os.path.getsize(path)
    if len(bins) * MIN_ENCODED_IMAGE_BYTES > file_size:
        raise ValueError("{}: lists {} images, but a {}-byte file holds at most {} encoded images; the pickle references shared objects".format(
            path, len(bins), file_size, file_size // MIN_ENCODED_IMAGE_BYTES))
    if sum(sizes) > REFERENCED_BYTES_SLACK * file_size:
        raise ValueError("{}: its images reference {} bytes, more than {} times the {}-byte file; the pickle references shared objects".format(
            path, sum(sizes), REFERENCED_BYTES_SLACK, file_size))


def read_bin_pairs(path):
    """The checked `(bins, issame)` of a `.bin`, read through the restricted unpickler (no image decoding).

    Usage: bins, issame = read_bin_pairs("cfp_fp.bin")
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, expected a .bin file", path)
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no such .bin file".format(path))
    bins, issame = check_pairs(io_utils.safe_load_pickle(path, encoding="bytes"), path)
    check_bin_sizes(bins, path)
    return bins, issame


def load_bin(path, image_size=(112, 112)):
    """Read an insightface verification `.bin`: images decoded to uint8 RGB, resized to `image_size` if needed.

    Accepts JPEG bytes (LFW) and uint8 arrays of encoded images (CFP-FP, AgeDB-30), Python 2 pickles too,
    through a restricted unpickler that refuses anything able to run code.
    Usage: images, issame = load_bin("lfw.bin")  # images [2N, 112, 112, 3] uint8, issame [N] bool
    """
    bins, issame = read_bin_pairs(path)
    source = "{}: image {}".format
    images = np.empty((len(bins), *image_size, 3), dtype=np.uint8)
    with ThreadPoolExecutor() as pool:  # cv2 releases the GIL while decoding
        decoded = pool.map(lambda index: resize_to(decode_image(bins[index], source(path, index)), image_size), range(len(bins)))
        for index, image in enumerate(tqdm(decoded, "Loading " + os.path.basename(path), len(bins), leave=False)):
            images[index] = image
    return images, issame


# ---------------------------------------------------------------- embeddings
def l2_normalize(embeddings, epsilon=1e-12, dtype="float64"):
    """A copy of the rows scaled to unit L2 norm, computed in `dtype` (float32 halves the memory of IJB-size sets).

    Usage: normed = l2_normalize(np.array([[3.0, 4.0]]))  # [[0.6, 0.8]]
    """
    embeddings = np.asarray(embeddings, dtype=dtype)
    return embeddings / np.maximum(np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings)), epsilon)[:, None]


def check_embedding_rows(embeddings, source, name="embeddings"):
    """Refuse embeddings that a verification metric would turn into a wrong number without a word: not [images, size]
    numbers, NaN / inf rows, all-zero rows, or every row the same vector (a model that ignores its input).

    Usage: check_embedding_rows(embs, "model.h5")  # ValueError naming `source`, the rows and the first bad row
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.dtype.kind not in "biuf":
        raise ValueError("{}: {} of shape {} ({}); expected numbers shaped [images, embedding size]".format(
            source, name, embeddings.shape, embeddings.dtype))
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise ValueError("{}: {} of {} {} rows hold NaN or inf (first: row {})".format(source, int(bad.sum()), len(embeddings), name, int(np.argmax(bad))))
    zero = ~(embeddings != 0).any(axis=1)
    if zero.any():
        raise ValueError("{}: {} of {} {} rows are all zero (first: row {}): degenerate embeddings".format(
            source, int(zero.sum()), len(embeddings), name, int(np.argmax(zero))))
    if len(embeddings) > 1 and (embeddings == embeddings[0]).all():
        raise ValueError("{}: all {} {} rows are the same vector: degenerate embeddings (a model that ignores its input?)".format(
            source, len(embeddings), name))


_FUNCTIONS_ATTRIBUTE = "_face_io_embedding_functions"  # {(image_shape, flip, norm): traced function}, on the model


def embedding_function(model, image_shape, flip=True, norm=None):
    """The traced `uint8 [B, *image_shape] -> embedding` function of `model` (not L2-normalized).

    Normalizes as `norm` (mean, std), by default `model_normalization(model)`, runs the model in inference mode
    and, with `flip`, adds the embedding of the horizontally mirrored image. Traced once per (model, image_shape,
    flip, norm) and reused.
    Usage: embed = embedding_function(basic_model, (112, 112, 3)); embs = embed(uint8_batch)
    """
    functions = getattr(model, _FUNCTIONS_ATTRIBUTE, None)
    if functions is None:
        functions = {}
        object.__setattr__(model, _FUNCTIONS_ATTRIBUTE, functions)  # plain attribute, outside Keras' tracking
    norm = model_normalization(model) if norm is None else tuple(float(ii) for ii in norm)
    key = (tuple(int(ii) for ii in image_shape), bool(flip), norm)
    if key not in functions:

        def embed(images):
            inputs = normalize(images, norm)
            embedding = first_output(model(inputs, training=False))
            if flip:
                embedding = embedding + first_output(model(tf.reverse(inputs, axis=[2]), training=False))
            return tf.cast(embedding, tf.float32)

        functions[key] = tf.function(embed, input_signature=[tf.TensorSpec((None, *key[0]), tf.uint8)])
    return functions[key]


def first_output(outputs):
    """The first output of a model that may return several (a list or tuple), else the output itself.

    Usage: embedding = first_output(model(images, training=False))
    """
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def run_batches(embed, images, batch_size=128, desc="Embedding"):
    """`embed` over `images` in batches, concatenated as float32 NumPy.  Usage: embs = run_batches(embed, images, 64)"""
    steps = range(0, len(images), batch_size)
    batches = [np.asarray(embed(images[start : start + batch_size])) for start in tqdm(steps, desc, leave=False)]
    return np.concatenate(batches, axis=0) if batches else np.zeros((0, 0), dtype="float32")


def embed_images(model, images_uint8, batch_size=128, flip=True, normalized=True):
    """Embeddings of uint8 RGB images; with `flip` the mirrored image's embedding is added; L2-normalized if `normalized`.

    Usage: embs = embed_images(basic_model, images, batch_size=64)  # [len(images), emb_size]
    """
    embs = run_batches(embedding_function(model, np.shape(images_uint8)[1:], flip=flip), images_uint8, batch_size)
    return l2_normalize(embs) if normalized else embs
