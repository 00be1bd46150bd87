#!/usr/bin/env python3
"""Training step time of our `train.Train` against the original Keras_insightface `Train` (tf_keras), same work.

Both train `buildin_models(name, dropout=0, emb_shape=256, output_layer=..., weights=None)` (GDC head for mobilenet,
"E" for r50; the seed's names build the same networks on both sides) with
`ArcfaceLoss(scale=16)`, SGD(0.1, momentum=0.9), batch 32, random_status=0 and no eval paths, on one generated
folder of 100 identities x 20 JPEGs (112x112). Each run is a subprocess; runs alternate original, ours,
original, ours, ... (`--repeats` pairs per model), so a change of the machine's load hits both alike. A
callback records `time.perf_counter()` at each batch end and stops training after `--steps` batches; a run's
step time is the median of the intervals after the first `--warmup` (tracing) batches. Printed per model:
each side's median over its runs (s/step), and the ratio original / ours of those medians (>= 1: ours is at
least as fast). `--with_stock_bn` alternates a third side, ours with `fused_batchnorm=False`. One JSON object per line on stdout; training logs go to stderr.

The original is not part of this repository. Get it and its legacy Keras:
    git clone https://github.com/leondgarse/Keras_insightface /tmp/orig_kif
    pip install tf_keras==<your TensorFlow's minor version, e.g. 2.21.0> glob2   # or --target DIR, see --extra_path
It runs with TF_USE_LEGACY_KERAS=1 and `numpy.alltrue = numpy.all` (removed in numpy 2) set before its import.
Without the checkout, tf_keras or glob2 the script prints one JSON line with "skipped" and the reason.

Usage: python bench/train_vs_original.py --original /tmp/orig_kif [--models mobilenet r50] [--repeats 3]
       (or ORIGINAL_KERAS_INSIGHTFACE=/tmp/orig_kif; --extra_path DIR for a `pip install --target DIR`)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
NUM_CLASSES, IMAGES_PER_CLASS, BATCH_SIZE = 100, 20, 32
OUTPUT_LAYERS = {"mobilenet": "GDC", "r50": "E"}  # insightface's "E" head on the MXNet ResNets
DEFAULT_STEPS = {"mobilenet": 40, "r50": 6}
ORIGINAL_ENV = "ORIGINAL_KERAS_INSIGHTFACE"


# ---------------------------------------------------------------- child: one training run
def batch_timer(callback_base, max_steps):
    """A callback of `callback_base` recording perf_counter at each batch end, stopping after `max_steps` batches."""

    class BatchTimer(callback_base):
        def __init__(self):
            super().__init__()
            self.batch_ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.batch_ends.append(time.perf_counter())
            if len(self.batch_ends) >= max_steps:
                self.model.stop_training = True

    return BatchTimer()


def run_original(model_name, data_path, timer):
    """The original Train (tf_keras; its checkout is on sys.path) with `timer` among its callbacks."""
    import numpy

    numpy.alltrue = numpy.all  # removed in numpy 2, still used by the original
    import losses
    import models
    import train
    from tensorflow import keras

    basic_model = models.buildin_models(model_name, dropout=0, emb_shape=256, output_layer=OUTPUT_LAYERS[model_name], weights=None)
    tt = train.Train(data_path, save_path="orig.h5", eval_paths=[], basic_model=basic_model, batch_size=BATCH_SIZE, lr_base=0.1, random_status=0)
    tt.custom_callbacks.append(timer)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}])


def run_ours(model_name, data_path, timer, fused_batchnorm=True):
    """Our Train with `timer` after its callbacks; `fused_batchnorm=False`: the stock Keras BatchNormalization."""
    import keras

    from keras_insightface import losses, models, train

    basic_model = models.buildin_models(
        model_name, dropout=0, emb_shape=256, output_layer=OUTPUT_LAYERS[model_name], weights=None, fused_batchnorm=fused_batchnorm
    )
    tt = train.Train(data_path, save_path="ours.h5", eval_paths=[], basic_model=basic_model, batch_size=BATCH_SIZE, lr_base=0.1, random_status=0)
    train_callbacks = tt._callbacks
    tt._callbacks = lambda: [*train_callbacks(), timer]
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}])


def child(args):
    """Run one side once in the current directory and write its batch-end timestamps to `args.result`."""
    sys.stdout = sys.stderr  # training logs stay off the parent's JSON lines
    sys.path[:] = [path for path in sys.path if os.path.abspath(path or ".") != BENCH_DIR]  # bench/losses.py would shadow
    if args.child == "original":
        from tensorflow import keras
    else:
        import keras
    timer = batch_timer(keras.callbacks.Callback, args.steps)
    if args.child == "original":
        run_original(args.model, args.data_path, timer)
    else:
        run_ours(args.model, args.data_path, timer, fused_batchnorm=args.child == "ours")
    with open(args.result, "w") as ff:
        json.dump(timer.batch_ends, ff)


# ---------------------------------------------------------------- parent: alternated runs
def side_env(side, original, extra_path):
    """The environment of a child: the original sees its checkout (and tf_keras), never this repository."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))
    if side == "original":
        env.update(TF_USE_LEGACY_KERAS="1", PYTHONPATH=os.pathsep.join(path for path in (original, extra_path) if path))
    else:
        env.pop("TF_USE_LEGACY_KERAS", None)
        env["PYTHONPATH"] = os.pathsep.join(path for path in (REPO_ROOT, os.environ.get("PYTHONPATH")) if path)
    return env


def missing_requirement(original, extra_path):
    """Why the original cannot run here, or None."""
    if not original or not os.path.isfile(os.path.join(original, "train.py")):
        return f"no original Keras_insightface checkout (--original or {ORIGINAL_ENV}; got {original!r})"
    probe = "import importlib.util as u; print(','.join(m for m in ('tf_keras', 'glob2') if u.find_spec(m) is None))"
    env = side_env("original", None, extra_path)  # not the checkout: its own module names would shadow the probe's
    missing = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()
    return f"not installed for the original: {missing} (pip install tf_keras glob2)" if missing else None


def step_time(batch_ends, warmup):
    """Median interval between batch ends after the first `warmup` batches."""
    intervals = [end - start for start, end in zip(batch_ends[:-1], batch_ends[1:])]
    return statistics.median(intervals[warmup:])


def run_side(side, model_name, data_path, steps, original, extra_path):
    """One run of `side` in a fresh directory; its steady-state seconds per step."""
    with tempfile.TemporaryDirectory() as work_dir:
        result = os.path.join(work_dir, "batch_ends.json")
        command = [sys.executable, os.path.abspath(__file__), "--child", side, "--model", model_name,
                   "--data_path", data_path, "--steps", str(steps), "--result", result]
        subprocess.run(command, cwd=work_dir, env=side_env(side, original, extra_path), check=True, stdout=sys.stderr)
        with open(result) as ff:
            return json.load(ff)


def measure(model_name, data_path, args, host):
    """Alternate original and ours `args.repeats` times; print each run and the medians."""
    steps = args.steps or DEFAULT_STEPS.get(model_name, 20)
    sides = ("original", "ours", "ours_stock_bn") if args.with_stock_bn else ("original", "ours")
    times = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side in sides:
            batch_ends = run_side(side, model_name, data_path, steps, args.original, args.extra_path)
            seconds = step_time(batch_ends, args.warmup)
            times[side].append(seconds)
            emit(f"train_vs_original/{model_name}/{side}/run{repeat + 1}", "seconds_per_step", seconds, "s", host, steps=len(batch_ends))
    medians = {side: statistics.median(values) for side, values in times.items()}
    for side, value in medians.items():
        emit(f"train_vs_original/{model_name}/{side}", "median_seconds_per_step", value, "s", host, images_per_second=BATCH_SIZE / value)
    emit(f"train_vs_original/{model_name}", "speed_ratio_ours_over_original", medians["original"] / medians["ours"], "x", host)


def emit(name, metric, value, unit, host, **extra):
    print(json.dumps({"name": name, "metric": metric, "value": round(value, 4), "unit": unit, "machine": host, **extra}), flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", default=os.environ.get(ORIGINAL_ENV), help=f"original checkout (default ${ORIGINAL_ENV})")
    parser.add_argument("--extra_path", default=None, help="a folder put on the original's PYTHONPATH (pip install --target)")
    parser.add_argument("--models", nargs="+", default=["mobilenet", "r50"], choices=sorted(OUTPUT_LAYERS))
    parser.add_argument("--repeats", type=int, default=3, help="alternated (original, ours) pairs per model")
    parser.add_argument("--steps", type=int, default=0, help="batches per run (default: 40 mobilenet, 6 r50)")
    parser.add_argument("--warmup", type=int, default=2, help="first batch intervals left out of the median")
    parser.add_argument("--with_stock_bn", action="store_true", help="alternate a third side: ours with the stock Keras BatchNorm")
    parser.add_argument("--child", choices=["original", "ours", "ours_stock_bn"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data_path", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and (args.steps and args.steps < args.warmup + 2):
        parser.error("--steps must be at least --warmup + 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    sys.path.insert(0, BENCH_DIR)
    from bench_common import machine, write_images

    host = machine()
    reason = missing_requirement(args.original, args.extra_path)
    if reason:
        print(json.dumps({"name": "train_vs_original", "skipped": reason, "machine": host}))
        return None
    with tempfile.TemporaryDirectory() as data_dir:
        data_path = os.path.join(data_dir, "faces")
        write_images(data_path, NUM_CLASSES * IMAGES_PER_CLASS, NUM_CLASSES)
        for model_name in args.models:
            measure(model_name, data_path, args, host)


if __name__ == "__main__":
    main()
