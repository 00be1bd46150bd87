"""Small data and models shared by the tests: an image folder a tiny model can learn, a tiny basic model."""
import os

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
