#!/usr/bin/env python3
"""Training throughput of one worker against two workers (MultiWorkerMirroredStrategy over 127.0.0.1) at the same
global batch, on this machine.

Each configuration runs `train.Train` on a generated folder of 112x112 JPEGs (random_status=0, no eval .bin) in
fresh processes: alone, or as two worker processes with TF_CONFIG naming two local ports (one CPU device each,
the global batch split between them). The first epoch (tracing) is not timed: images/s counts the epochs after it,
measured by the chief. The configurations alternate (1, 2, 1, 2, ...) so a change of the machine's load biases
the comparison less. On one machine both workers share the same cores, so two workers are expected to be slower:
the number is the overhead of the collectives and of a second process, not a speed-up.
Training logs go to stderr; stdout holds one JSON object per line.
Usage: python bench/multi_worker.py [--rounds 2] [--epochs 3] [--batch_size 64] [--model small]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path[:0] = [BENCH_DIR, REPO]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_common import load_average, machine, write_images  # noqa: E402
from tests.local_cluster import free_ports  # noqa: E402

NUM_IMAGES, NUM_CLASSES = 512, 32


def small_basic_model(keras):
    """Strided convolutions, pooling and a BatchNorm embedding: quick to trace on a CPU."""
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
    nn = keras.layers.BatchNormalization()(nn)
    nn = keras.layers.PReLU(shared_axes=[1, 2])(nn)
    nn = keras.layers.Conv2D(32, 3, strides=2, use_bias=False)(nn)
    nn = keras.layers.BatchNormalization()(nn)
    nn = keras.layers.PReLU(shared_axes=[1, 2])(nn)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(64)(nn)
    nn = keras.layers.BatchNormalization(name="embedding")(nn)
    return keras.Model(inputs, nn, name="small")


def run_worker(args):
    """One process: train, then print `RESULT {"images_per_s": ...}` (the chief, or a single worker)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    import keras
    import tensorflow as tf

    from keras_insightface import losses, models, multi_worker, train

    strategy = multi_worker.cluster_strategy(timeout_seconds=600) if "TF_CONFIG" in os.environ else tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        basic_model = small_basic_model(keras) if args.model == "small" else models.buildin_models(args.model, dropout=0, emb_shape=128)
        tt = train.Train(args.data, "bench_mw.h5", basic_model=basic_model, batch_size=args.batch_size // args.workers, lr_base=0.01, random_status=0, seed=0)
        ends = []
        epoch_ends = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
        callbacks = tt._callbacks
        tt._callbacks = lambda: [epoch_ends] + callbacks()
        tt.train([{"loss": losses.ArcfaceLoss(), "epoch": args.epochs, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}], 0)
    images = tt.steps_per_epoch * tt.batch_size * (len(ends) - 1)
    print("RESULT " + json.dumps({"images_per_s": images / (ends[-1] - ends[0]), "is_chief": tt.worker.is_chief}), flush=True)


def measure(args, workers, folder):
    """Images/s of the chief of `workers` processes (each in its own working folder)."""
    ports = free_ports(workers).split(",")
    jobs = []
    for index in range(workers):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if workers > 1:
            cluster = {"worker": ["127.0.0.1:{}".format(port) for port in ports]}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cwd = os.path.join(folder, "w{}_{}".format(workers, index))
        os.makedirs(cwd, exist_ok=True)
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--workers", str(workers), "--data", args.data,
                   "--epochs", str(args.epochs), "--batch_size", str(args.batch_size), "--model", args.model]
        jobs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for job in jobs:
        stdout, _ = job.communicate()
        if job.returncode:
            raise RuntimeError("a worker failed with exit status {}".format(job.returncode))
        results += [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    return next(result["images_per_s"] for result in results if result["is_chief"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of 1 and 2 workers")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, the first one not timed")
    parser.add_argument("--batch_size", type=int, default=64, help="global batch size")
    parser.add_argument("--model", default="small", help="'small' or a buildin_models name")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is not timed)")
    if args.worker:
        return run_worker(args)
    with tempfile.TemporaryDirectory() as folder:
        args.data = os.path.join(folder, "faces")
        write_images(args.data, NUM_IMAGES, NUM_CLASSES)
        for round_index in range(args.rounds):
            for workers in (1, 2):
                rate = measure(args, workers, folder)
                print(json.dumps({"name": "multi_worker_train", "workers": workers, "round": round_index, "model": args.model,
                                  "global_batch_size": args.batch_size, "metric": "images_per_s", "value": round(rate, 1),
                                  "unit": "images/s", "load_average": load_average(), "machine": machine()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
