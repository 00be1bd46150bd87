#!/usr/bin/env python3
"""Training throughput of `train.Train` end to end against a bare `model.fit` of the same model.

For each model name, in one run on this machine:
  - `Train`: a generated folder of 112x112 JPEGs (decoding + augmentation random_status=2), its callbacks
    (lr scheduler, history, atomic checkpoint of the full model + optimizer state, NaN guard), no eval .bin;
  - bare: `model.fit` of the same full model (basic model + NormDense head, ArcfaceLoss, SGD(0.1, momentum=0.9),
    accuracy metric) on in-memory float32 tensors, no callbacks.
The bare fit runs before and after `Train` and its rate is the mean of both, so a change of the machine's load
during the run biases the ratio less. The first epoch (tracing, file cache) is not timed: throughput counts the
epochs after it, from the end of epoch 1 to the end of the last epoch, so `Train`'s epoch-end saving is included. `Train`'s rate with its
epoch-end callbacks left out and the seconds those callbacks take per epoch are printed too, since real epochs
are far longer than the few steps timed here. Training logs go to stderr; stdout holds one JSON object per line.
Usage: python bench/train_speed.py [--models fmobilefacenet iresnet50] [--steps 30] [--timed_epochs 2] [--batch_size 32]
"""
import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_insightface import losses  # noqa: E402
from keras_insightface import models  # noqa: E402
from keras_insightface import train  # noqa: E402
from bench_common import load_average, machine, write_images  # noqa: E402

DEFAULT_MODELS = ["fmobilefacenet", "iresnet50"]  # the networks measured in docs/benchmarks.md (then named mobilefacenet, r50)
OUTPUT_LAYERS = {"r50": "E", "r100": "E", "iresnet50": "E", "iresnet100": "E"}  # insightface's "E" head on the MXNet ResNets, "GDC" elsewhere
NUM_CLASSES = 100
INPUT_SHAPE = (112, 112, 3)
LR_BASE = 0.1


class EpochTimer(keras.callbacks.Callback):
    """Records `time.perf_counter()` at each epoch end; put it first and last to time the callbacks between."""

    def __init__(self):
        super().__init__()
        self.epoch_ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())


def steady_rate(epoch_ends, images_per_epoch):
    """Images per second from the end of the first epoch to the end of the last one."""
    timed_epochs = len(epoch_ends) - 1
    return timed_epochs * images_per_epoch / (epoch_ends[-1] - epoch_ends[0])


def build_basic_model(name):
    keras.utils.set_random_seed(0)
    return models.buildin_models(name, dropout=0, emb_shape=512, input_shape=INPUT_SHAPE, output_layer=OUTPUT_LAYERS.get(name, "GDC"))


def optimizer():
    return keras.optimizers.SGD(LR_BASE, momentum=0.9)


def bare_fit_rate(name, images_per_epoch, num_classes, batch_size, epochs):
    """Images per second of `model.fit` on in-memory tensors, epochs after the first."""
    basic_model = build_basic_model(name)
    l2 = models.get_l2_regularizer_value(basic_model)  # the head regularizer Train's default output_weight_decay=1 gives
    head = models.NormDense(num_classes, kernel_regularizer=keras.regularizers.L2(l2) if l2 > 0 else None, name="NormDense", dtype="float32")
    model = keras.Model(basic_model.inputs[0], head(basic_model.outputs[0]))
    model.compile(optimizer=optimizer(), loss=losses.ArcfaceLoss(), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(images_per_epoch, *INPUT_SHAPE)).astype("float32")
    labels = np.eye(num_classes, dtype="float32")[np.arange(images_per_epoch) % num_classes]
    timer = EpochTimer()
    model.fit(images, labels, batch_size=batch_size, epochs=epochs, callbacks=[timer], verbose=0)
    return steady_rate(timer.epoch_ends, images_per_epoch)


def train_rates(name, data_path, batch_size, epochs):
    """(end-to-end, without epoch-end callbacks) images per second of Train, and its callbacks' seconds per epoch."""
    tt = train.Train(data_path, save_path="bench_{}.h5".format(name), eval_paths=[], basic_model=build_basic_model(name),
                     batch_size=batch_size, lr_base=LR_BASE, random_status=2, seed=0)
    first, last = EpochTimer(), EpochTimer()
    train_callbacks = tt._callbacks
    tt._callbacks = lambda: [first, *train_callbacks(), last]
    tt.train([{"loss": losses.ArcfaceLoss(), "epoch": epochs, "optimizer": optimizer()}])
    images_per_epoch = tt.steps_per_epoch * batch_size
    callbacks_seconds = float(np.mean(np.subtract(last.epoch_ends, first.epoch_ends)[1:]))
    without_callbacks = [end - previous_last for previous_last, end in zip(last.epoch_ends[:-1], first.epoch_ends[1:])]
    rate_without_callbacks = len(without_callbacks) * images_per_epoch / sum(without_callbacks)
    return steady_rate(last.epoch_ends, images_per_epoch), rate_without_callbacks, callbacks_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="buildin_models names")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setup (after one untimed epoch)")
    parser.add_argument("--timed_epochs", type=int, default=2, help="the timed steps are split into this many epochs")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.steps < args.timed_epochs or args.timed_epochs < 1:
        parser.error("--steps must be >= --timed_epochs >= 1")

    steps_per_epoch = math.ceil(args.steps / args.timed_epochs)
    images_per_epoch = steps_per_epoch * args.batch_size
    epochs = args.timed_epochs + 1
    host = machine()
    start_dir = os.getcwd()
    with tempfile.TemporaryDirectory() as work_dir:
        data_path = os.path.join(work_dir, "faces")
        num_classes = min(NUM_CLASSES, images_per_epoch)
        write_images(data_path, images_per_epoch, num_classes)
        os.chdir(work_dir)  # Train writes ./checkpoints
        for name in args.models:
            common = {"model": name, "batch_size": args.batch_size, "timed_steps": steps_per_epoch * args.timed_epochs, "machine": host}
            with contextlib.redirect_stdout(sys.stderr):
                bare_before = bare_fit_rate(name, images_per_epoch, num_classes, args.batch_size, epochs)
                keras.backend.clear_session()
                end_to_end, without_callbacks, callbacks_seconds = train_rates(name, data_path, args.batch_size, epochs)
                keras.backend.clear_session()
                bare_after = bare_fit_rate(name, images_per_epoch, num_classes, args.batch_size, epochs)
                keras.backend.clear_session()
            bare = (bare_before + bare_after) / 2
            results = [
                ("bare_fit_before_train", "images_per_second", bare_before, "images/s"),
                ("bare_fit_after_train", "images_per_second", bare_after, "images/s"),
                ("bare_fit", "images_per_second", bare, "images/s"),
                ("train_end_to_end", "images_per_second", end_to_end, "images/s"),
                ("train_without_epoch_end_callbacks", "images_per_second", without_callbacks, "images/s"),
                ("train_epoch_end_callbacks", "seconds_per_epoch", callbacks_seconds, "s"),
                ("train_over_bare", "ratio", end_to_end / bare, "ratio"),
                ("train_without_epoch_end_callbacks_over_bare", "ratio", without_callbacks / bare, "ratio"),
            ]
            for setup, metric, value, unit in results:
                record = {"name": "train_speed/{}/{}".format(name, setup), "metric": metric, "value": round(value, 3), "unit": unit}
                print(json.dumps({**record, **common, "load_average": load_average()}), flush=True)
        os.chdir(start_dir)


if __name__ == "__main__":
    main()
