#!/usr/bin/env python3
"""PReLU forward + backward: the stock Keras layer against `keras_insightface.prelu.PReLU`, alternated.

For each feature-map shape of an r50 / iresnet50 training batch (batch 32 at 112x112: 112x112x64 stem,
56x56x64, 28x28x128, 14x14x256, 7x7x512), both layers (shared_axes=[1, 2], the same alpha) run one compiled
`tf.function` computing the output and the gradients of `sum(output * upstream)` for the input and alpha.
Rounds alternate stock, fused, stock, fused, ...; each round times `--calls` calls; a layer's value is the
median round. Prints one JSON object per shape and layer, and the ratio stock / fused.
Usage: python bench/prelu.py [--batch_size 32] [--rounds 7] [--calls 10]
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_insightface import prelu  # noqa: E402
from bench_common import load_average, machine  # noqa: E402

MAP_SHAPES = [(112, 112, 64), (56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]


def forward_backward(layer, inputs, upstream):
    """A compiled function: the layer's output and the gradients of sum(output * upstream) for inputs and alpha."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, training=True) * upstream)
        return tape.gradient(loss, [inputs, layer.alpha])

    return step


def milliseconds_per_call(step, calls):
    start = time.perf_counter()
    for _ in range(calls):
        grads = step()
    grads[1].numpy()
    return (time.perf_counter() - start) / calls * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args(argv)
    host = machine()
    for shape in MAP_SHAPES:
        inputs = tf.random.normal((args.batch_size, *shape), seed=0)
        upstream = tf.random.normal(inputs.shape, seed=1)
        steps = {}
        for name, layer_class in (("stock", keras.layers.PReLU), ("fused", prelu.PReLU)):
            layer = layer_class(shared_axes=[1, 2], alpha_initializer=keras.initializers.Constant(0.25))
            steps[name] = forward_backward(layer, inputs, upstream)
            steps[name]()  # tracing
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(milliseconds_per_call(step, args.calls))
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            record = {"name": "prelu/{}/{}".format("x".join(map(str, shape)), name), "metric": "forward_backward_ms",
                      "value": round(medians[name], 3), "unit": "ms", "batch_size": args.batch_size,
                      "rounds": [round(value, 2) for value in values], "machine": host, "load_average": load_average()}
            print(json.dumps(record), flush=True)
        print(json.dumps({"name": "prelu/{}/stock_over_fused".format("x".join(map(str, shape))), "metric": "ratio",
                          "value": round(medians["stock"] / medians["fused"], 3), "unit": "ratio", "machine": host}), flush=True)


if __name__ == "__main__":
    main()
