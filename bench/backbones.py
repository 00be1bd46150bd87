#!/usr/bin/env python3
"""Size, FLOPs and forward speed of the built-in basic models (backbone + embedding head).

For each name: parameters (every weight except BatchNorm moving statistics), FLOPs of one
112x112 image from the TensorFlow profiler on the frozen inference graph (a multiply-add counts
as 2 FLOPs; MACs = FLOPs / 2), and forward images per second at batch 32 in inference mode.
The MXNet ResNets get the insightface "E" head (Dense with bias), the others "GDC"; emb_shape 512, no pointwise conv.
Prints one JSON object per measurement.

`--train_step` measures training steps instead: for each of `--train_names` (iresnet50 and mbf by default),
one training step of the basic model + a `--classes`-class ArcFace head (NormDense, `ArcfaceLoss(scale=64)`,
SGD(0.1, momentum=0.9), no weight decay), batch 32, 112x112, on in-memory random images, for
  - keras_float32          this package, float32,
  - keras_mixed_bfloat16   the same model through `surgery.mixed_precision_model(..., "mixed_bfloat16")`,
  - torch_float32          arcface_torch's IResNet50 / MobileFaceNet in PyTorch (CPU), when torch is installed,
    the nets of tests/insightface_torch_nets.py (written from arcface_torch's definitions), with the same head:
    normalized embedding x normalized weight, target logit cos(theta + 0.5), times 64, cross-entropy;
built once each, then run in alternated bursts (keras f32, keras bf16, torch, keras f32, ...), `--rounds`
bursts of `--steps` steps. A burst's step time is the median interval between per-batch timestamps after its
first `--warmup` steps; each side's value is the median over its bursts. Prints the ratios of images/s.
Usage: python bench/backbones.py [--names r18 mobilefacenet] [--batch_size 32] [--min_seconds 5]
       python bench/backbones.py --train_step [--train_names iresnet50 mbf] [--rounds 3] [--steps 6]
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402

from keras_insightface import losses, models, surgery  # noqa: E402
from bench_common import load_average, machine  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_NETS = {"iresnet50": lambda nets: nets.IResNet((3, 4, 14, 3)), "mbf": lambda nets: nets.MobileFaceNet()}

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


# ---------------------------------------------------------------- training steps: Keras float32 / bfloat16 against PyTorch
def keras_train_step(name, classes, batch_size, policy=None):
    """A function running one compiled training step of `name` + ArcFace head; it returns when the step is done."""
    keras.utils.set_random_seed(0)
    basic_model, _ = build(name)
    if policy:
        basic_model = surgery.mixed_precision_model(basic_model, policy)
    head = models.NormDense(classes, name="NormDense", dtype="float32")
    model = keras.Model(basic_model.inputs[0], head(basic_model.outputs[0]))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss(scale=64))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(batch_size, *INPUT_SHAPE)).astype("float32")
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch_size)]
    return lambda: model.train_on_batch(images, labels)


def torch_train_step(name, classes, batch_size):
    """The same step in PyTorch on arcface_torch's network, or None when torch (or the net) is not available."""
    try:
        import torch
    except ImportError:
        return None
    if name not in TORCH_NETS:
        return None
    sys.path.insert(0, REPO_ROOT)
    from tests import insightface_torch_nets

    torch.manual_seed(0)
    backbone = TORCH_NETS[name](insightface_torch_nets).train()
    weight = torch.nn.Parameter(torch.randn(classes, 512) * 0.01)
    optimizer = torch.optim.SGD([*backbone.parameters(), weight], lr=0.1, momentum=0.9)
    images = torch.rand(batch_size, 3, *INPUT_SHAPE[:2]) * 2 - 1
    labels = torch.randint(0, classes, (batch_size,))
    target = torch.nn.functional.one_hot(labels, classes).bool()

    def step():
        cosine = torch.nn.functional.linear(torch.nn.functional.normalize(backbone(images)), torch.nn.functional.normalize(weight))
        cosine = cosine.clamp(-1 + 1e-7, 1 - 1e-7)
        logits = torch.where(target, torch.cos(torch.acos(cosine) + 0.5), cosine) * 64
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def burst_step_time(step, steps, warmup):
    """Median interval between per-batch timestamps of `steps` calls of `step`, after the first `warmup`."""
    stamps = [time.perf_counter()]
    for _ in range(steps):
        step()
        stamps.append(time.perf_counter())
    return statistics.median(np.diff(stamps)[warmup:])


def compare_train_steps(args, host):
    for name in args.train_names:
        sides = {"keras_float32": keras_train_step(name, args.classes, args.batch_size),
                 "keras_mixed_bfloat16": keras_train_step(name, args.classes, args.batch_size, "mixed_bfloat16")}
        torch_step = torch_train_step(name, args.classes, args.batch_size)
        if torch_step is None:
            print(json.dumps({"name": f"train_step/{name}/torch_float32", "skipped": "torch or its net is not available"}), flush=True)
        else:
            sides["torch_float32"] = torch_step
        for step in sides.values():  # tracing, first allocations
            step()
        times = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, step in sides.items():
                times[side].append(burst_step_time(step, args.steps, args.warmup))
                print(f"{name} {side}: {times[side][-1]:.3f} s/step", file=sys.stderr, flush=True)
        medians = {side: statistics.median(values) for side, values in times.items()}
        for side, values in times.items():
            record = {"name": f"train_step/{name}/{side}", "metric": "images_per_second", "value": round(args.batch_size / medians[side], 3),
                      "unit": "images/s", "seconds_per_step": [round(value, 4) for value in values], "batch_size": args.batch_size,
                      "classes": args.classes, "machine": host, "load_average": load_average()}
            print(json.dumps(record), flush=True)
        for side in sides:
            for other in sides:
                if side < other:
                    print(json.dumps({"name": f"train_step/{name}/{side}_over_{other}", "metric": "images_per_second_ratio",
                                      "value": round(medians[other] / medians[side], 3), "unit": "ratio", "machine": host}), flush=True)
        keras.backend.clear_session()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", nargs="+", default=DEFAULT_NAMES, help="buildin_models names")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--min_seconds", type=float, default=5.0, help="least timed seconds per model")
    parser.add_argument("--train_step", action="store_true", help="time training steps: Keras float32 / mixed_bfloat16 / PyTorch")
    parser.add_argument("--train_names", nargs="+", default=["iresnet50", "mbf"], choices=sorted(TORCH_NETS))
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps per burst")
    parser.add_argument("--warmup", type=int, default=1, help="intervals left out at the start of each burst")
    args = parser.parse_args(argv)
    host = machine()
    if args.train_step:
        return compare_train_steps(args, host)
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
