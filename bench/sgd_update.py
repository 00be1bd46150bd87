#!/usr/bin/env python3
"""The SGD-momentum update of a whole network: Keras 3's `SGD.apply` against TensorFlow's fused kernel, alternated.

Keras 3's SGD updates each variable with several ops (`m = m * momentum - g * lr`, `var += m`); tf_keras used one
`ResourceApplyKerasMomentum` kernel per variable, which computes the same. Both run here on the trainable
variables of `--model` (default iresnet50 with the "E" head: 212 variables, 43.6M values) with fixed random
gradients, each as one compiled `tf.function`, in alternated rounds of `--calls` calls; a side's value is its
median round. This decides whether a fused update path is worth having: compare it with the step time
(bench/step_profile.py, bench/backbones.py --train_step).
Usage: python bench/sgd_update.py [--model iresnet50] [--rounds 5] [--calls 5]
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_insightface import models  # noqa: E402
from bench_common import load_average, machine  # noqa: E402

LEARNING_RATE, MOMENTUM = 0.1, 0.9


def keras_update(variables, gradients):
    optimizer = keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)
    optimizer.build(variables)
    return tf.function(lambda: optimizer.apply(gradients, variables))


def fused_update(variables, gradients):
    momentums = [tf.Variable(tf.zeros(variable.shape)) for variable in variables]

    @tf.function
    def update():
        for variable, momentum, gradient in zip(variables, momentums, gradients):
            tf.raw_ops.ResourceApplyKerasMomentum(var=variable.value.handle, accum=momentum.handle, lr=tf.constant(LEARNING_RATE),
                                                  grad=gradient, momentum=tf.constant(MOMENTUM), use_nesterov=False)

    return update


def milliseconds_per_call(update, calls, probe):
    start = time.perf_counter()
    for _ in range(calls):
        update()
    probe.numpy()
    return (time.perf_counter() - start) / calls * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="iresnet50")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args(argv)
    basic_model = models.buildin_models(args.model, dropout=0, emb_shape=512, output_layer="E")
    variables = basic_model.trainable_variables
    gradients = [tf.random.normal(variable.shape, stddev=1e-3, seed=index) for index, variable in enumerate(variables)]
    updates = {"keras_sgd": keras_update(variables, gradients), "fused_kernel": fused_update(variables, gradients)}
    for update in updates.values():
        update()  # tracing
    times = {name: [] for name in updates}
    for _ in range(args.rounds):
        for name, update in updates.items():
            times[name].append(milliseconds_per_call(update, args.calls, variables[0]))
    host = machine()
    for name, values in times.items():
        record = {"name": f"sgd_update/{args.model}/{name}", "metric": "milliseconds_per_update", "value": round(statistics.median(values), 2),
                  "unit": "ms", "variables": len(variables), "values": int(sum(np.prod(variable.shape) for variable in variables)),
                  "rounds": [round(value, 1) for value in values], "machine": host, "load_average": load_average()}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
