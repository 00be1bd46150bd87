#!/usr/bin/env python3
"""What a training step costs: a bare `model.fit` step with one part changed at a time, per-batch timestamps.

The model is `buildin_models(name, dropout=0, emb_shape=256, output_layer="GDC")` + NormDense(100) with
`ArcfaceLoss(scale=16)`, SGD(0.1, momentum=0.9) and an accuracy metric, fit on in-memory float32 batches of 32.
Variants, each leaving out or swapping one part:
  default            as above (fused BatchNormalization)
  stock_bn           the stock Keras BatchNormalization (`fused_batchnorm=False`)
  sgd_no_momentum    SGD without momentum: one slot update less per variable
  no_metrics         no accuracy metric
  relu_for_prelu     every PReLU replaced by a ReLU (models that have PReLU only)
  stock_prelu        the stock Keras PReLU instead of `prelu.PReLU` (models that have PReLU only)
Variants run round-robin `--repeats` times in one process; a run's step time is the median interval between
batch ends after the first `--warmup` batches, and each variant's value is the median over its runs.
One JSON object per line on stdout.
Usage: python bench/step_profile.py [--models mobilenet mobilefacenet] [--steps 15] [--repeats 2]
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_insightface import losses, models, surgery  # noqa: E402
from bench_common import load_average, machine  # noqa: E402

NUM_CLASSES, BATCH_SIZE, INPUT_SHAPE = 100, 32, (112, 112, 3)
VARIANTS = ("default", "stock_bn", "sgd_no_momentum", "no_metrics", "relu_for_prelu", "stock_prelu")
PRELU_VARIANTS = ("relu_for_prelu", "stock_prelu")


class BatchTimer(keras.callbacks.Callback):
    """Records `time.perf_counter()` at each batch end."""

    def __init__(self):
        super().__init__()
        self.batch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())


def relu_for_prelu(model):
    """A copy of `model` with each PReLU layer replaced by a ReLU of the same name."""

    def convert_layer(layer):
        if isinstance(layer, keras.layers.PReLU):
            return keras.layers.ReLU(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return surgery.rebuild(model, convert_layer)


def has_prelu(model):
    return any(isinstance(layer, keras.layers.PReLU) for layer in surgery.iter_layers(model))


def build_model(name, variant):
    keras.utils.set_random_seed(0)
    basic_model = models.buildin_models(name, dropout=0, emb_shape=256, output_layer="GDC", fused_batchnorm=variant != "stock_bn")
    if variant == "relu_for_prelu":
        basic_model = relu_for_prelu(basic_model)
    if variant == "stock_prelu":
        basic_model = surgery.convert_prelu(basic_model, fused=False)
    head = models.NormDense(NUM_CLASSES, name="NormDense", dtype="float32")
    model = keras.Model(basic_model.inputs[0], head(basic_model.outputs[0]))
    momentum = 0.0 if variant == "sgd_no_momentum" else 0.9
    metrics = [] if variant == "no_metrics" else ["accuracy"]
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum), loss=losses.ArcfaceLoss(scale=16), metrics=metrics)
    return model


def step_time(name, variant, steps, warmup):
    """Median seconds per step of one fit of `steps` batches, after `warmup` intervals."""
    model = build_model(name, variant)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(steps * BATCH_SIZE, *INPUT_SHAPE)).astype("float32")
    labels = np.eye(NUM_CLASSES, dtype="float32")[np.arange(steps * BATCH_SIZE) % NUM_CLASSES]
    timer = BatchTimer()
    model.fit(images, labels, batch_size=BATCH_SIZE, epochs=1, callbacks=[timer], verbose=0, shuffle=False)
    keras.backend.clear_session()
    intervals = np.diff(timer.batch_ends)
    return float(np.median(intervals[warmup:]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet", "mobilefacenet"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    host = machine()
    for name in args.models:
        with_prelu = has_prelu(models.buildin_models(name, dropout=0))
        variants = [vv for vv in args.variants if vv not in PRELU_VARIANTS or with_prelu]
        keras.backend.clear_session()
        times = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for variant in variants:
                with contextlib.redirect_stdout(sys.stderr):
                    times[variant].append(step_time(name, variant, args.steps, args.warmup))
        for variant, values in times.items():
            record = {"name": f"step_profile/{name}/{variant}", "metric": "median_seconds_per_step", "value": round(statistics.median(values), 4),
                      "unit": "s", "runs": [round(value, 4) for value in values], "machine": host, "load_average": load_average()}
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
