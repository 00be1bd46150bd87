"""Parity of a model made from another (exported to TFLite / ONNX, converted from insightface weights): the Keras
model's embeddings, cosine similarities in float64, the required minimum cosines and the error below them.

Usage:
    from keras_insightface import parity
    images = parity.synthetic_images(8)
    cosines = parity.cosine_similarities(parity.keras_embeddings(basic_model, images), other_embeddings)
    passed = cosines.min() >= parity.PARITY_THRESHOLDS["onnx"]  # else raise parity.ParityError(...)
"""
import numpy as np

from . import face_io

PARITY_THRESHOLDS = {"float32": 0.9999, "float16": 0.999, "onnx": 0.9999}  # min cosine; others only report
PARITY_BATCH = 32


class ParityError(ValueError):
    """The exported model's embeddings differ from the Keras model's more than allowed; nothing was written."""


def synthetic_images(count, image_size=(112, 112), seed=0):
    """Random-noise uint8 images, the parity fallback when no real faces are given.  Usage: synthetic_images(16)"""
    return np.random.default_rng(seed).integers(0, 256, size=(count, *image_size, 3), dtype=np.uint8)


def keras_embeddings(model, images):
    """float32 embeddings of uint8 images by the Keras model (face_io's function, no flip, not L2-normalized).

    Usage: keras_embeddings(basic_model, images)
    """
    return face_io.embed_images(model, np.asarray(images, dtype=np.uint8), PARITY_BATCH, flip=False, normalized=False).astype("float32")


def cosine_similarities(embeddings_a, embeddings_b, epsilon=1e-300):
    """Row-wise cosine similarity, in float64 so that tiny embeddings still compare.  Usage: cosine_similarities(a, b)"""
    aa, bb = np.asarray(embeddings_a, "float64"), np.asarray(embeddings_b, "float64")
    aa = aa / np.maximum(np.linalg.norm(aa, axis=1, keepdims=True), epsilon)
    bb = bb / np.maximum(np.linalg.norm(bb, axis=1, keepdims=True), epsilon)
    return np.sum(aa * bb, axis=1)
