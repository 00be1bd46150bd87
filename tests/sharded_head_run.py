"""Run by tests/test_sharded_head.py in a fresh interpreter: N logical CPU devices, the sharded head beside the dense
NormDense head; prints one JSON object of measured differences.  Usage: python tests/sharded_head_run.py WORKDIR"""
import json
import os
import sys

import tensorflow as tf

REPLICAS = 2
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_insightface import checkpoints, losses, models, sharded_head, train  # noqa: E402
from tests.helpers import make_image_folder, reversed_rows, small_conv_model, with_class_centers  # noqa: E402

CLASSES, EMB, BATCH, STEPS = 7, 8, 8, 3  # 7 classes over 2 replicas: shards of 4 columns, one padding column
rng = np.random.default_rng(0)
IMAGES = rng.normal(size=(STEPS * BATCH, 6, 6, 3)).astype("float32")
LABELS = rng.integers(0, CLASSES, STEPS * BATCH)
LABELS[:2] = [0, CLASSES - 1]  # both shards own a target in the first batch
KERNEL = rng.normal(size=(EMB, CLASSES)).astype("float32")


def basic_model(l2=0.0):
    """No BatchNorm: per-replica batch statistics would differ from the global batch's."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    nn = keras.layers.Conv2D(4, 3)(inputs)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(EMB, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None, name="embedding")(nn)
    return keras.Model(inputs, nn, name="tiny")


def batches(first=0, last=STEPS):
    return tf.data.Dataset.from_tensor_slices((IMAGES[first * BATCH : last * BATCH], LABELS[first * BATCH : last * BATCH])).batch(BATCH)


class BatchLosses(keras.callbacks.Callback):
    """The per-step loss: Keras logs the running mean over the epoch's batches, all of one size."""

    def on_train_begin(self, logs=None):
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    def step_losses(self):
        means = np.array(self.means)
        return means * np.arange(1, len(means) + 1) - np.concatenate([[0.0], means[:-1] * np.arange(1, len(means))])


def fit(model, data):
    recorder = BatchLosses()
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[recorder])
    return recorder.step_losses()


def dense_run(make_optimizer, loss, l2=0.0):
    basic = basic_model(l2)
    head = models.NormDense(CLASSES, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None, name="NormDense")
    model = keras.Model(basic.inputs, head(basic.outputs[0]))
    head.w.assign(KERNEL)
    model.compile(optimizer=make_optimizer(), loss=loss)
    return fit(model, batches()), head.w.numpy(), basic.get_weights()


def sharded_model(strategy, make_optimizer, loss, l2=0.0):
    with strategy.scope():
        model = sharded_head.ShardedHeadModel(basic_model(l2), CLASSES, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)
        model.compile(optimizer=make_optimizer(), loss=loss)
    model.centers.set(KERNEL)
    return model


def max_difference(first, second):
    return float(max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(first, second)))


def compare(strategy, make_optimizer, make_loss, l2=0.0):
    dense_losses, dense_kernel, dense_basic = dense_run(make_optimizer, make_loss(), l2)
    model = sharded_model(strategy, make_optimizer, make_loss(), l2)
    sharded_losses = fit(model, batches())
    return {
        "loss": max_difference([dense_losses], [sharded_losses]),
        "kernel": max_difference([dense_kernel], [model.centers.get()]),
        "basic": max_difference(dense_basic, model.basic_model.get_weights()),
        "kernel_moved": float(np.abs(dense_kernel - KERNEL).max()),
        "steps": len(sharded_losses),
    }, model


def resume(strategy, workdir, continuous):
    """Two steps on 2 replicas, checkpoint, the third step on 1 replica (sharded) and on the dense head."""
    sgd = lambda: keras.optimizers.SGD(0.1, momentum=0.9)  # noqa: E731
    model = sharded_model(strategy, sgd, losses.ArcfaceLoss(scale=16))
    fit(model, batches(0, 2))
    model_path, optimizer_path = os.path.join(workdir, "m.keras"), os.path.join(workdir, "m_optimizer.npz")
    dense_model, dense_optimizer = model.checkpoint_state()
    dense_model.save(model_path)
    checkpoints.save_optimizer_state(dense_optimizer, optimizer_path, dense_model.weights)

    one_replica = sharded_model(tf.distribute.get_strategy(), sgd, losses.ArcfaceLoss(scale=16))
    one_replica.load_checkpoint(model_path, optimizer_path)
    fit(one_replica, batches(2, 3))
    dense = keras.models.load_model(model_path, compile=False)
    dense.compile(optimizer=checkpoints.restore_optimizer_state(optimizer_path, dense.trainable_variables), loss=losses.ArcfaceLoss(scale=16))
    fit(dense, batches(2, 3))
    expected_kernel, expected_basic = continuous.centers.get(), continuous.basic_model.get_weights()
    return {
        "one_replica_kernel": max_difference([expected_kernel], [one_replica.centers.get()]),
        "one_replica_basic": max_difference(expected_basic, one_replica.basic_model.get_weights()),
        "dense_kernel": max_difference([expected_kernel], [dense.get_layer("NormDense").w.numpy()]),
        "dense_basic": max_difference(expected_basic, dense.get_weights()[:-1]),
    }


def memory(strategy):
    """Bytes of the head's variables (kernel + SGD momentum) per device, 1000 classes x 16."""
    with strategy.scope():
        centers = sharded_head.ShardedCenters(16, 1000, strategy, seed=0)
        centers.build_slots(["momentum"])
    return {"per_device": centers.bytes_per_device(), "dense": 2 * 16 * 1000 * 4}


def train_basic_model():
    """112x112 input for Train's pipeline, no BatchNorm."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.Conv2D(4, 3, strides=8)(inputs)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(EMB, name="embedding")(nn)
    return keras.Model(inputs, nn, name="tiny112")


def train_resume(strategy, workdir):
    """Train(shard_centers=True) on 2 replicas for 1 epoch; its checkpoint resumed for 1 more epoch on 2 replicas by the
    sharded head and by the dense head (shard_centers=False)."""
    data = make_image_folder(os.path.join(workdir, "faces"))
    plan = lambda: [{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.05, momentum=0.9)}]  # noqa: E731
    options = {"eval_paths": [], "lr_base": 0.05, "lr_decay": 1.0, "seed": 0, "random_status": 0}
    os.chdir(workdir)
    with strategy.scope():
        first = train.Train(data, "first.keras", basic_model=train_basic_model(), batch_size=4, shard_centers=True, **options)
        first.train(plan(), 0)
        sharded_model = type(first.model).__name__
        sharded = train.Train(data, "sharded.keras", model="checkpoints/first.keras", batch_size=4, shard_centers=True, **options)
        sharded.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 1)
        dense = train.Train(data, "dense.keras", model="checkpoints/first.keras", batch_size=4, **options)
        dense.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 1)
    checkpoint = keras.models.load_model("checkpoints/sharded.keras", compile=False)
    first_kernel = keras.models.load_model("checkpoints/first.keras", compile=False).get_layer("NormDense").w.numpy()
    dense_kernel = dense.model.get_layer("NormDense").w.numpy()
    return {
        "first_model": sharded_model,
        "resumed_model": type(sharded.model).__name__,
        "checkpoint_head": checkpoint.get_layer("NormDense").w.shape[1],
        "kernel": max_difference([dense_kernel], [sharded.model.centers.get()]),
        "checkpoint_kernel": max_difference([dense_kernel], [checkpoint.get_layer("NormDense").w.numpy()]),
        "basic": max_difference(dense.basic_model.get_weights(), sharded.basic_model.get_weights()),
        "kernel_moved": float(np.abs(dense_kernel - first_kernel).max()),
    }


def train_with_batchnorm(strategy, data, name, batch_size, reorder=False):
    """Train a BatchNorm model with sync_batchnorm and shard_centers (a dense head on one replica) under `strategy`:
    2 epochs of SGD momentum + ArcFace at lr 0.1 on augmented data; the basic model's weights, then the centers."""
    with strategy.scope():
        keras.utils.set_random_seed(0)
        start = with_class_centers(small_conv_model(True, size=32), 4)
        tt = train.Train(data, name, model=start, eval_paths=[], batch_size=batch_size, lr_base=0.1, random_status=3, random_crop=(28, 28, 3),
                         seed=1, sync_batchnorm=True, shard_centers=True)
        if reorder:
            tt.train_ds = reversed_rows(tt.train_ds)
        tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}], 0)
    centers = tt.model.centers.get() if hasattr(tt.model, "centers") else tt.model.get_layer("NormDense").w.numpy()
    return type(tt.model).__name__, tt.basic_model.get_weights() + [centers]


def sharded_batchnorm_equals_one_device(strategy, workdir):
    """2 replicas x 8 images with sharded centers and synchronized BatchNorm against one device at 16 (dense), and
    the one-device run with its batch rows reversed (float32 rounding alone)."""
    data = make_image_folder(os.path.join(workdir, "faces32"), num_classes=4, images_per_class=8, size=32)
    sharded_model, sharded = train_with_batchnorm(strategy, data, "bn_sharded.h5", 8)
    one = tf.distribute.get_strategy()
    dense_model, dense = train_with_batchnorm(one, data, "bn_dense.h5", 16)
    _, reordered = train_with_batchnorm(one, data, "bn_reordered.h5", 16, reorder=True)
    return {"models": [sharded_model, dense_model], "sharded": max_difference(sharded, dense), "reordered": max_difference(reordered, dense)}


def main(workdir):
    strategy = tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])
    sgd_result, continuous = compare(strategy, lambda: keras.optimizers.SGD(0.1, momentum=0.9), lambda: losses.ArcfaceLoss(scale=16))
    adam_result, _ = compare(strategy, lambda: keras.optimizers.Adam(0.01), lambda: losses.CosFaceLoss(scale=16, label_smoothing=0.1), l2=0.01)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "sgd_arcface": sgd_result,
        "adam_cosface_smoothing": adam_result,
        "resume": resume(strategy, workdir, continuous),
        "memory": memory(strategy),
        "train": train_resume(strategy, workdir),
        "batchnorm": sharded_batchnorm_equals_one_device(strategy, workdir),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
