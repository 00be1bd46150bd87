#!/usr/bin/env python3
"""Cost of offline triplet mining (`Train(samples_per_mining=N)`): the mining rule on a pool's embeddings.

For each pool size: seconds of `triplet_mining.mine_triplets` on random L2-normalized 512-d embeddings of
pool / 4 classes (groups of 4), the best of `--repeats`. The pool's forward pass is the model's inference speed
(bench/backbones.py). Prints one JSON object per measurement.
Usage: python bench/triplet_mining.py [--pools 2048 8192 32768] [--repeats 3]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keras_insightface import triplet_mining  # noqa: E402
from bench_common import load_average, machine  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    for pool in args.pools:
        embs = rng.normal(size=(pool, 512)).astype("float32")
        embs /= np.linalg.norm(embs, axis=1, keepdims=True)
        labels = np.repeat(np.arange(pool // 4), 4)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            triplet_mining.mine_triplets(embs, labels)
            times.append(time.perf_counter() - start)
        print(json.dumps({"name": "mine_triplets pool {} emb 512".format(pool), "metric": "time", "value": round(min(times), 4),
                          "unit": "s", "load_average": load_average(), "machine": machine()}))


if __name__ == "__main__":
    main()
