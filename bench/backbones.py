#!/usr/bin/env python3
"""Size, FLOPs and forward speed of the built-in basic models (backbone + embedding head).

For each name: parameters (every weight except BatchNorm moving statistics), FLOPs of one
112x112 image from the TensorFlow profiler on the frozen inference graph (a multiply-add counts
as 2 FLOPs; MACs = FLOPs / 2), and forward images per second at batch 32 in inference mode.
The MXNet ResNets get the insightface "E" head (Dense with bias), the others "GDC"; emb_shape 512, no pointwise conv.
Prints one JSON object per measurement.
Usage: python bench/backbones.py [--names r18 mobilefacenet] [--batch_size 32] [--min_seconds 5]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402

from keras_insightface import models  # noqa: E402
from bench_common import machine  # noqa: E402

DEFAULT_NAMES = [
    "iresnet18", "iresnet34", "iresnet50", "iresnet100", "fmobilefacenet", "mobilenet", "ghostnet_paper", "mobilenetv3_small", "efficientnetb0"
]  # the networks of the README table
INPUT_SHAPE = (112, 112, 3)


def count_params(model):
    return sum(int(np.prod(ww.shape)) for ww in model.weights if "moving_" not in ww.path)


def count_flops(model):
    """FLOPs of one image, from tf.compat.v1.profiler on the frozen concrete inference function."""
    function = tf.function(lambda xx: model(xx, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, *INPUT_SHAPE), tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder(tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
    options = options.with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return int(profile.total_float_ops)


def images_per_second(model, batch_size, min_seconds):
    """Forward throughput in inference mode: one warm-up batch, then batches until `min_seconds` pass (at least 3)."""
    forward = tf.function(lambda xx: model(xx, training=False))
    images = tf.random.uniform((batch_size, *INPUT_SHAPE), -1, 1)
    forward(images).numpy()
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < min_seconds:
        forward(images).numpy()
        runs += 1
    return runs * batch_size / (time.perf_counter() - start)


def build(name):
    """The insightface "E" head (Dense with bias) on the MXNet ResNets, "GDC" on the others."""
    is_iresnet = name in models.BUILDIN_MODEL_GROUPS["MXNet version resnet"]
    output_layer = "E" if is_iresnet else "GDC"
    basic_model = models.buildin_models(
        name, dropout=0, emb_shape=512, input_shape=INPUT_SHAPE, output_layer=output_layer, use_bias=is_iresnet
    )
    return basic_model, output_layer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", nargs="+", default=DEFAULT_NAMES, help="buildin_models names")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--min_seconds", type=float, default=5.0, help="least timed seconds per model")
    args = parser.parse_args(argv)
    host = machine()
    throughput_unit = f"images/s at batch {args.batch_size}"
    for name in args.names:
        model, head = build(name)
        flops = count_flops(model)
        results = [
            ("params", count_params(model), "count"),
            ("flops", flops, "FLOPs per 112x112 image"),
            ("gmacs", round(flops / 2e9, 4), "GMACs per 112x112 image"),
            ("forward_throughput", round(images_per_second(model, args.batch_size, args.min_seconds), 2), throughput_unit),
        ]
        for metric, value, unit in results:
            record = {"name": name, "head": head, "metric": metric, "value": value, "unit": unit, "machine": host}
            print(json.dumps(record), flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
