#!/usr/bin/env python3
"""Throughput of the training data pipeline against plain JPEG decoding of the same files.

Writes a temporary folder of 112x112 JPEG faces-sized images, then measures images per second of
  - plain decoding (read + decode_jpeg in a parallel tf.data map, batched, nothing else),
  - data.prepare_dataset at random_status 0 and 2 over the folder,
  - data.prepare_dataset at random_status 0 and 2 over the same images as TFRecord shards
    (prepare_data.write_shards, 4 shards, as `prepare_data.py --tfrecord` writes them),
all in one run on this machine. Prints one JSON object per measurement.
Each is measured in interleaved rounds and the best round is reported, with the process CPU time per image
and the fraction of plain decoding by wall time and by CPU time (the latter is steadier under other load).
Each epoch's wall time is also split into the wait for its first batch (for shards: filling the record shuffle
buffer, min(images, 20000) records by default, before anything is decoded) and the rate after it.
The default 10000 images make each measured epoch long enough that starting an iterator (about 50 ms for the
full pipeline, 5 ms for plain decoding) does not dominate: real training epochs have 10^5 to 10^7 images.
Usage: python bench/data_pipeline.py [--images 10000] [--classes 100] [--batch_size 128] [--epochs 2] [--rounds 5]
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_insightface import data, prepare_data  # noqa: E402
from bench_common import machine, write_images  # noqa: E402


def plain_decode_dataset(root, batch_size):
    paths = sorted(tf.io.gfile.glob(os.path.join(root, "*", "*.jpg")))
    decode = lambda path: tf.io.decode_jpeg(tf.io.read_file(path), channels=3)  # noqa: E731
    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def write_shards_of(root, shards_dir, num_shards=4):
    """The images of folder `root` as a TFRecord shard set in `shards_dir`, in folder scan order."""
    paths = sorted(tf.io.gfile.glob(os.path.join(root, "*", "*.jpg")))
    records = ((int(os.path.basename(os.path.dirname(path))), pathlib.Path(path).read_bytes()) for path in paths)
    description, _ = prepare_data.write_shards(shards_dir, records, len(paths), shard_images=-(-len(paths) // num_shards))
    prepare_data.write_description(shards_dir, description)


def measure(ds, epochs):
    """(images per second, process CPU microseconds per image, seconds to an epoch's first batch, images per second
    after each epoch's first batch) over `epochs` passes."""
    count, steady_count, first_batch, wall, cpu = 0, 0, 0.0, time.perf_counter(), time.process_time()
    for _ in range(epochs):
        start = time.perf_counter()
        for index, batch in enumerate(ds):
            size = int(tf.nest.flatten(batch)[0].shape[0])
            count += size
            if index == 0:
                first_batch += time.perf_counter() - start
            else:
                steady_count += size
    elapsed = time.perf_counter() - wall
    return count / elapsed, (time.process_time() - cpu) / count * 1e6, first_batch / epochs, steady_count / (elapsed - first_batch)


def report(name, metric, value, unit):
    print(json.dumps({"name": name, "metric": metric, "value": round(value, 3), "unit": unit, "machine": machine()}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="passes per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds; the best is reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "faces_112x112_folders")
        write_images(root, args.images, args.classes)
        shards_dir = os.path.join(tmp, "faces_112x112_tfrecord")
        write_shards_of(root, shards_dir)
        pipelines = {"plain_decode": plain_decode_dataset(root, args.batch_size)}
        for source, path in (("", root), ("tfrecord_shards_", shards_dir)):
            for random_status in (0, 2):
                ds, _ = data.prepare_dataset(path, batch_size=args.batch_size, random_status=random_status, seed=0)
                pipelines["{}prepare_dataset_random_status_{}".format(source, random_status)] = ds
        for ds in pipelines.values():  # warm-up: tracing, XLA compilation, file cache
            measure(ds, 1)
        best = {name: (0.0, float("inf"), float("inf"), 0.0) for name in pipelines}
        for _ in range(args.rounds):  # interleaved rounds; the best of each resists load from other processes
            for name, ds in pipelines.items():
                speed, cpu, first_batch, steady = measure(ds, args.epochs)
                best[name] = (max(best[name][0], speed), min(best[name][1], cpu), min(best[name][2], first_batch), max(best[name][3], steady))
        for name, (speed, cpu, first_batch, steady) in best.items():
            report(name, "throughput", speed, "images/s")
            report(name, "cpu_time_per_image", cpu, "us")
            report(name, "seconds_to_first_batch", first_batch, "s")
            report(name, "throughput_after_first_batch", steady, "images/s")
            if name != "plain_decode":
                report(name, "fraction_of_plain_decode", speed / best["plain_decode"][0], "ratio")
                report(name, "fraction_of_plain_decode_cpu", best["plain_decode"][1] / cpu, "ratio")


if __name__ == "__main__":
    main()
