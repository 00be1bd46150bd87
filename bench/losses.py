"""Time per step (forward + backward) and peak memory of the margin losses on cosine logits.

Each (loss, classes) case runs in its own subprocess: random cosines `(batch, classes)` and
one-hot labels are made first, then one `tf.function` step computes the loss and its gradient
with respect to the cosines. Peak memory is `ru_maxrss` after the first step minus the resident
size just before it (the inputs already allocated), reported in MB and in units of one logits
tensor (`batch * classes * 4` bytes); it includes the gradient itself (one logits tensor).

Usage:
    python bench/losses.py                        # batch 512, 10k and 100k classes
    python bench/losses.py --classes 10000 100000 1000000 --steps 3
Prints one JSON object per measurement: name, metric, value, unit, machine.
"""
import argparse
import json
import os
import subprocess
import sys

from bench_common import machine

LOSS_NAMES = ("scale_softmax", "arcface", "arcface_simple", "cosface", "curricular", "magface", "adaface")


def build_loss(name):
    from keras_insightface import losses

    factories = {
        "scale_softmax": lambda: losses.scale_softmax,
        "arcface": losses.ArcfaceLoss,
        "arcface_simple": losses.ArcfaceLossSimple,
        "cosface": losses.CosFaceLoss,
        "curricular": losses.CurricularFaceLoss,
        "magface": losses.MagFaceLoss,
        "adaface": losses.AdaFaceLoss,
    }
    return factories[name]()


def resident_bytes():
    with open("/proc/self/statm") as ff:
        return int(ff.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_case(name, classes, batch, steps):
    """Run in a fresh process: returns (seconds per step, peak extra bytes)."""
    import resource
    import time

    import tensorflow as tf
    from keras_insightface import losses

    loss = build_loss(name)
    y_pred = tf.random.uniform((batch, classes), -1.0, 1.0)
    if losses.needs_feature_norm(loss):
        y_pred = tf.concat([y_pred, tf.random.uniform((batch, 1), 5.0, 60.0)], axis=-1)
    y_true = tf.one_hot(tf.random.uniform((batch,), 0, classes, dtype=tf.int32), classes)

    @tf.function
    def step(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = tf.reduce_mean(loss(y_true, y_pred))
        return value, tf.reduce_sum(tape.gradient(value, y_pred))

    step.get_concrete_function(y_true, y_pred)
    before = resident_bytes()
    step(y_true, y_pred)[1].numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    start = time.perf_counter()
    for _ in range(steps):
        step(y_true, y_pred)[1].numpy()
    return (time.perf_counter() - start) / steps, peak


def run_case(name, classes, batch, steps):
    """Measure one case in a subprocess and print its JSON lines."""
    command = [sys.executable, os.path.abspath(__file__), "--case", name, str(classes), "--batch", str(batch), "--steps", str(steps)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(json.dumps({"name": "{}_{}".format(name, classes), "metric": "error", "value": done.stderr.strip()[-300:], "unit": "", "machine": machine()}))
        return
    print(done.stdout.strip(), flush=True)


def report_case(name, classes, batch, steps):
    seconds, peak = measure_case(name, classes, batch, steps)
    logits_bytes = batch * classes * 4
    label = "{}_b{}_c{}".format(name, batch, classes)
    for metric, value, unit in (
        ("time_per_step", seconds * 1000, "ms"),
        ("peak_extra_memory", peak / 2**20, "MB"),
        ("peak_extra_memory_in_logits", peak / logits_bytes, "logits"),
    ):
        print(json.dumps({"name": label, "metric": metric, "value": round(value, 3), "unit": unit, "machine": machine()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--case", nargs=2, metavar=("LOSS", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        report_case(args.case[0], int(args.case[1]), args.batch, args.steps)
        return
    for classes in args.classes:
        for name in args.losses:
            run_case(name, classes, args.batch, args.steps)


if __name__ == "__main__":
    main()
