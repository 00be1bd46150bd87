"""Per-device memory of the sharded class-center head (sharded_head.ShardedHeadModel) with 1, 2 and 4 replicas.

Each case runs in its own process with N logical CPU devices (MirroredStrategy for N > 1): a ShardedHeadModel over
`classes` x `emb` centers (a tiny backbone in front), compiled with SGD momentum (one slot matrix), then one training
step on a batch of `batch` images per replica (not timed: it traces) and `steps` steps timed from per-batch
timestamps. Reported: the bytes of the head's variables (centers + momentum) on the fullest device, the same for one
dense copy, the resident size added by building, the process's peak resident size and its peak minus the resident
size before building. The logical devices of one CPU share the process's memory, so the
resident size is the sum over devices: it shows that sharding adds no second copy, the per-device bytes show the split.

Usage:
    python bench/sharded_head.py                          # 1M classes, emb 512, 4, 2 then 1 device(s)
    python bench/sharded_head.py --classes 100000 --devices 1 2
Prints one JSON object per measurement: name, metric, value, unit, machine.
"""
import argparse
import json
import os
import subprocess
import sys

from bench_common import machine

MB = 2**20


def peak_resident_bytes():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident_bytes():
    with open("/proc/self/statm") as ff:
        return int(ff.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_case(devices, classes, emb, batch, steps):
    """Run in a fresh process with `devices` logical CPU devices; returns {metric: (value, unit)}."""
    import time

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    import keras
    import numpy as np

    from keras_insightface import losses, sharded_head

    names = [device.name for device in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(names) if devices > 1 else tf.distribute.get_strategy()
    start_resident = resident_bytes()
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        nn = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3)(inputs))
        basic_model = keras.Model(inputs, keras.layers.Dense(emb, name="embedding")(nn))
        model = sharded_head.ShardedHeadModel(basic_model, classes, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss())
    built_resident = resident_bytes()
    per_device = model.centers.bytes_per_device()

    rng = np.random.default_rng(0)
    global_batch = batch * devices
    images = rng.normal(size=(global_batch * (steps + 1), 8, 8, 3)).astype("float32")
    labels = rng.integers(0, classes, len(images))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(global_batch)
    batch_ends = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batch_ends.append(time.perf_counter()))
    model.fit(dataset, epochs=1, verbose=0, callbacks=[timer])
    step_seconds = (batch_ends[-1] - batch_ends[0]) / steps
    dense_bytes = emb * classes * 4 * (1 + len(model.centers.slots))
    return {
        "head_variables_per_device_max": (max(per_device.values()) / MB, "MB"),
        "head_variables_dense_copy": (dense_bytes / MB, "MB"),
        "head_variables_per_device_fraction": (max(per_device.values()) / dense_bytes, "ratio"),
        "resident_added_by_building": ((built_resident - start_resident) / MB, "MB"),
        "peak_resident_process": (peak_resident_bytes() / MB, "MB"),
        "peak_resident_added": ((peak_resident_bytes() - start_resident) / MB, "MB"),
        "time_per_step": (step_seconds * 1000, "ms"),
    }


def run_case(devices, args):
    """Measure one case in a subprocess and print its JSON lines."""
    command = [
        sys.executable, os.path.abspath(__file__), "--case", str(devices), "--classes", str(args.classes), "--emb", str(args.emb),
        "--batch", str(args.batch), "--steps", str(args.steps),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        name = "sharded_head_d{}_c{}".format(devices, args.classes)
        reason = "exit status {}: {}".format(done.returncode, done.stderr.strip()[-300:])
        print(json.dumps({"name": name, "metric": "error", "value": reason, "unit": "", "machine": machine()}))
        return
    print(done.stdout.strip(), flush=True)


def report_case(devices, args):
    results = measure_case(devices, args.classes, args.emb, args.batch, args.steps)
    name = "sharded_head_d{}_c{}_e{}_b{}".format(devices, args.classes, args.emb, args.batch)
    for metric, (value, unit) in results.items():
        print(json.dumps({"name": name, "metric": metric, "value": round(value, 3), "unit": unit, "machine": machine()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[4, 2, 1])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--emb", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="images per replica")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        report_case(args.case, args)
        return
    for devices in args.devices:
        run_case(devices, args)


if __name__ == "__main__":
    main()
