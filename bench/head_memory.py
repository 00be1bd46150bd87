"""Training step time and peak memory of the classification head + ArcFace loss: dense NormDense vs Partial FC.

Each case (head, classes, batch) runs in its own subprocess: a random embedding batch `(batch, emb)` and labels, the
head (`models.NormDense`, or `partial_fc.NormDensePartialFC` at rate r), `losses.ArcfaceLoss`, SGD with momentum 0.9
(`partial_fc.rows_only` for Partial FC), one `tf.function` step = forward, loss, gradients, optimizer update. Time per
step is the median of `--steps` steps after one warm-up step; peak memory is the child's `ru_maxrss` minus its resident
size before the head was built (so the kernel, its momentum, gradients and logits all count; the TensorFlow runtime
does not).

Before a case runs, its bytes are estimated (`estimate_bytes`): a case above `--limit_gib` is not run and its line
says "does not fit in <limit>" with the estimate. The dense case and the Partial FC cases of one (classes, batch)
alternate, `--rounds` times (A, B, C, A, B, C), and each round reports Partial FC / dense ratios.

Usage:
    python bench/head_memory.py --classes 100000                     # batch 128 and 512, r = 0.1 and 0.3
    python bench/head_memory.py --classes 100000 1000000 5000000 --limit_gib 20
Prints one JSON object per measurement: name, metric, value, unit, machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from bench_common import load_average, machine

FLOAT_BYTES = 4


RUNTIME_EXTRA_BYTES = 64 * 2**20  # graph, step and small buffers beyond the counted tensors


def estimate_bytes(rate, classes, batch, emb):
    """Bytes a step needs beyond the runtime, counted from its tensors (rate None: the dense head).

    Dense: kernel, momentum, gradient, the normalized kernel kept for the backward pass, two kernel-size temporaries
    of the momentum update and the initializer's transient copy (7 kernel sizes), plus 3 logits-size buffers (logits,
    margined logits, their gradient). Partial FC: kernel, momentum and the initializer's copy (3 kernel sizes), 6
    sample-size copies of the gathered rows (gather, normalized, gradient, optimizer rows), 3 sample-wide logits
    buffers and 3 class-length vectors of the sampling scores. Checked at 100k classes on the 2-core sandbox: the
    measured peaks were 0.92-1.03 of these estimates (docs/partial_fc.md).
    """
    kernel = classes * emb * FLOAT_BYTES
    if rate is None:
        return 7 * kernel + 3 * batch * classes * FLOAT_BYTES + RUNTIME_EXTRA_BYTES
    sample = max(int(rate * classes), 1)
    rows = 6 * sample * emb * FLOAT_BYTES + 3 * batch * sample * FLOAT_BYTES + 3 * classes * FLOAT_BYTES
    return 3 * kernel + rows + RUNTIME_EXTRA_BYTES


def resident_bytes():
    with open("/proc/self/statm") as ff:
        return int(ff.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_case(rate, classes, batch, emb, steps):
    """In a fresh process: (median seconds per step, peak bytes over the resident size before the head existed)."""
    import resource
    import time

    import keras
    import tensorflow as tf
    from keras_insightface import losses, models, partial_fc

    embedding = tf.random.normal((batch, emb))
    labels = tf.random.uniform((batch,), 0, classes, dtype=tf.int32)
    before = resident_bytes()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    if rate is None:
        head, loss = models.NormDense(classes), losses.ArcfaceLoss()
        head.build((None, emb))
    else:
        head, loss = partial_fc.NormDensePartialFC(classes, rate, seed=0), partial_fc.PartialFCLoss(losses.ArcfaceLoss())
        head.build([(None, emb), (None,)])
        partial_fc.rows_only(optimizer)
    optimizer.build([head.w])
    inputs = embedding if rate is None else [embedding, labels]

    @tf.function
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(labels, head(inputs, training=True)))
        optimizer.apply_gradients([(tape.gradient(value, head.w), head.w)])
        return value

    step(inputs, labels).numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(inputs, labels).numpy()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return statistics.median(times), peak


def case_name(rate, classes, batch):
    return "{}_c{}_b{}".format("dense" if rate is None else "pfc{}".format(rate), classes, batch)


def line(name, metric, value, unit):
    return json.dumps({"name": name, "metric": metric, "value": value, "unit": unit, "machine": machine(), "load": load_average()})


def run_case(rate, classes, batch, emb, steps, limit_bytes):
    """One case in a subprocess (or its "does not fit" line); returns (seconds, peak bytes) or None."""
    name = case_name(rate, classes, batch)
    estimate = estimate_bytes(rate, classes, batch, emb)
    print(line(name, "estimated_memory", round(estimate / 2**30, 3), "GiB"), flush=True)
    if estimate > limit_bytes:
        print(line(name, "skipped", "does not fit in {:g} GiB (estimate {:.1f} GiB)".format(limit_bytes / 2**30, estimate / 2**30), ""), flush=True)
        return None
    command = [sys.executable, os.path.abspath(__file__), "--case", str(rate), str(classes), str(batch), "--emb", str(emb), "--steps", str(steps)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(line(name, "error", done.stderr.strip()[-300:], ""), flush=True)
        return None
    seconds, peak = json.loads(done.stdout.strip().splitlines()[-1])
    print(line(name, "time_per_step", round(seconds * 1000, 1), "ms"), flush=True)
    print(line(name, "peak_memory", round(peak / 2**20, 1), "MB"), flush=True)
    return seconds, peak


def report_ratios(round_id, results, classes, batch):
    dense = results.get(None)
    for rate, measured in results.items():
        if rate is None or measured is None or dense is None:
            continue
        name = "{}_over_dense_round{}".format(case_name(rate, classes, batch), round_id)
        print(line(name, "time_ratio", round(measured[0] / dense[0], 3), "x"), flush=True)
        print(line(name, "memory_ratio", round(measured[1] / dense[1], 3), "x"), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100000])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--emb", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit_gib", type=float, default=20.0, help="cases estimated above this are not run")
    parser.add_argument("--case", nargs=3, metavar=("RATE", "CLASSES", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        rate = None if args.case[0] == "None" else float(args.case[0])
        print(json.dumps(measure_case(rate, int(args.case[1]), int(args.case[2]), args.emb, args.steps)))
        return
    for classes in args.classes:
        for batch in args.batch:
            for round_id in range(args.rounds):
                results = {rate: run_case(rate, classes, batch, args.emb, args.steps, args.limit_gib * 2**30) for rate in [None, *args.rates]}
                report_ratios(round_id, results, classes, batch)


if __name__ == "__main__":
    main()
