#!/usr/bin/env python3
"""Effect of `Train(steps_per_execution=..., jit_compile=...)` on training throughput, runs alternated.

One generated folder of 112x112 JPEGs (random_status=2, no eval .bin); for each model, the settings run in turn
(A, B, C, D, A, B, ...) for `--rounds` rounds, each a fresh `Train` of `--epochs` epochs whose first (tracing) epoch
is not timed; the rate is images per second from the end of epoch 1 to the end of the last epoch. Printed per
setting: the median rate and its ratio to steps_per_execution=1 without XLA. Training logs go to stderr.
Usage: python bench/train_execution.py [--models mobilenet] [--images 640] [--rounds 2] [--epochs 3]
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_insightface import losses, train  # noqa: E402
from bench_common import load_average, machine, write_images  # noqa: E402
from train_speed import EpochTimer, build_basic_model, optimizer, steady_rate  # noqa: E402

SETTINGS = {"spe1": (1, False), "spe4": (4, False), "spe1_xla": (1, True), "spe4_xla": (4, True)}


def rate(name, data_path, steps_per_execution, jit_compile, batch_size, epochs):
    tt = train.Train(data_path, save_path="bench_exec.h5", basic_model=build_basic_model(name), batch_size=batch_size,
                     random_status=2, seed=0, steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    timer = EpochTimer()
    callbacks = tt._callbacks
    tt._callbacks = lambda: [*callbacks(), timer]
    tt.train([{"loss": losses.ArcfaceLoss(), "epoch": epochs, "optimizer": optimizer()}])
    return steady_rate(timer.epoch_ends, tt.steps_per_epoch * batch_size)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet"])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        write_images(os.path.join(workdir, "faces"), args.images, 20)
        for name in args.models:
            rates = {setting: [] for setting in SETTINGS}
            for _ in range(args.rounds):
                for setting, (steps_per_execution, jit_compile) in SETTINGS.items():
                    with contextlib.redirect_stdout(sys.stderr):
                        rates[setting].append(rate(name, "faces", steps_per_execution, jit_compile, args.batch_size, args.epochs))
            base = np.median(rates["spe1"])
            for setting, values in rates.items():
                record = {"name": "train_execution/{}/{}".format(name, setting), "metric": "images_per_second",
                          "value": round(float(np.median(values)), 2), "unit": "images/s", "runs": [round(v, 2) for v in values],
                          "ratio_to_spe1": round(float(np.median(values) / base), 3), "machine": machine(), "load_average": load_average()}
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
