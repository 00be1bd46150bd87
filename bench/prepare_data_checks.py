#!/usr/bin/env python3
"""What checking every record costs `prepare_data.py`: a RecordIO file of generated 112x112 JPEGs (shuffled layout, with
`.idx` and `property`) read four ways on this machine:
  - `read`: every image record read (`recordio.read_image`), nothing checked: the floor;
  - `index_check`: `recordio.check_index_covers_file`, the `.idx` tiling the file (record heads only);
  - `verify`: `record_checks.verified_images`, every record checked and decoded (threads), nothing written;
  - `extract`: the whole `prepare_data.extract_recordio` into a new folder (index, checks, atomic writes, marker).
Logs go to stderr; stdout holds one JSON object per line (images per second).
Usage: python bench/prepare_data_checks.py [--images 5000] [--classes 100]
"""
import argparse
import json
import os
import struct
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from keras_insightface import prepare_data, record_checks, recordio  # noqa: E402
from bench_common import load_average, machine  # noqa: E402


def write_dataset(folder, num_images, num_classes, size=112):
    """`train.rec` (whole records, one per image, scalar labels), `train.idx` and `property` in `folder`."""
    rng = np.random.default_rng(0)
    with open(os.path.join(folder, "train.rec"), "wb") as rec, open(os.path.join(folder, "train.idx"), "w") as idx:
        for key in range(num_images):
            small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            image = np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (size, size, 3)), 0, 255)
            jpeg = cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            payload = struct.pack("<IfQQ", 0, float(key % num_classes), key, 0) + jpeg
            idx.write("{}\t{}\n".format(key, rec.tell()))
            rec.write(struct.pack("<II", recordio.MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4))
    with open(os.path.join(folder, "property"), "w") as ff:
        ff.write("{},{},{}".format(num_classes, size, size))


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = os.path.join(tmp, "faces")
        os.makedirs(dataset_dir)
        write_dataset(dataset_dir, args.images, args.classes)
        rec_path = os.path.join(dataset_dir, "train.rec")
        with recordio.RecordReader(rec_path) as reader:
            entries = recordio.index_images(reader)
            limits = record_checks.dataset_limits(dataset_dir, reader)
            runs = {
                "read": lambda: [recordio.read_image(reader, offset) for _, offset in entries],
                "index_check": lambda: recordio.check_index_covers_file(reader),
                "verify": lambda: sum(1 for _ in record_checks.verified_images(reader, entries, limits)),
            }
            seconds = {name: timed(run) for name, run in runs.items()}
        stderr, sys.stdout = sys.stdout, sys.stderr  # the tool's own >>>> lines and progress bar go to stderr
        try:
            seconds["extract"] = timed(lambda: prepare_data.extract_recordio(dataset_dir, os.path.join(tmp, "out")))
        finally:
            sys.stdout = stderr
    for name, value in seconds.items():
        print(json.dumps({"name": "prepare_data_" + name, "metric": "images_per_second", "value": round(args.images / value, 1),
                          "unit": "images/s", "images": args.images, "load": load_average(), "machine": machine()}))


if __name__ == "__main__":
    main()
