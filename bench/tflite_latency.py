#!/usr/bin/env python3
"""TFLite size and latency of embedding models on this machine's CPU: the three tables of the README.

Tables (random weights, `weights=None`; latency does not depend on the weight values):
  conversions  mobilenetv2 + GDC + emb 512: float32 / dynamic / float16 / uint8, XNNPACK off and on
  heads        mobilenetv2, float16 + XNNPACK: emb 256 / 512, GDC / E, pointwise conv, PReLU
  backbones    float16 + XNNPACK, GDC + emb 512: the small backbones
Each model is run single-image ([1, 112, 112, 3]) at every `--threads` value: `--warmup` invokes,
then the median of `--runs` timed invokes. A cosine of the TFLite against the Keras embedding on a few
faces guards against a delegate computing something else. One JSON object per measurement on stdout;
`--markdown PATH` also writes the tables.
Usage: python bench/tflite_latency.py [--tables conversions heads backbones] [--threads 1 2] [--runs 30]
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
from tqdm import tqdm  # noqa: E402

from keras_insightface import export, face_io  # noqa: E402
from keras_insightface import io_utils  # noqa: E402
from keras_insightface import models  # noqa: E402
from bench_common import machine  # noqa: E402

DEFAULT_FACES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "faces_rec", "lfw.bin")
HEAD = dict(emb_shape=512, output_layer="GDC", add_pointwise_conv=False, use_prelu=False)


# ---------------------------------------------------------------- the rows of each table: (row label, backbone, head, conversion, xnnpack)
def conversion_rows():
    return [
        ("{}{}".format(quantization, " xnn" if xnn else ""), "mobilenetv2", HEAD, quantization, xnn)
        for quantization in ("float32", "dynamic", "float16", "uint8")
        for xnn in (False, True)
    ]


def head_rows():
    heads = [
        dict(emb_shape=emb, output_layer=layer, add_pointwise_conv=pointwise, use_prelu=False)
        for layer, pointwise in (("GDC", False), ("GDC", True), ("E", True), ("E", False))
        for emb in (256, 512)
    ] + [dict(emb_shape=512, output_layer="GDC", add_pointwise_conv=False, use_prelu=True)]
    return [(head_label(head), "mobilenetv2", head, "float16", True) for head in heads]


BACKBONES = {
    "mobilenet_v3_small": "mobilenetv3_small",
    "mobilenet_v3_large": "mobilenetv3_large",
    "ghostnet": "ghostnet",
    "mobilenet": "mobilenet",
    "se_mobilefacenet": "se_mobilefacenet",
    "mobilefacenet": "mobilefacenet",
    "EB0": "efficientnetb0",
    "EB1": "efficientnetb1",
}


def backbone_rows():
    return [(label, name, HEAD, "float16", True) for label, name in BACKBONES.items()]


TABLES = {"conversions": conversion_rows, "heads": head_rows, "backbones": backbone_rows}


def head_label(head):
    return "emb{emb_shape} {output_layer} pointwise_conv={add_pointwise_conv} PReLU={use_prelu}".format(**head)


# ---------------------------------------------------------------- measuring
def median_latency_ms(interpreter, runs, warmup):
    """Median wall time of one invoke, in ms, on a fixed random input of the model's type."""
    detail = interpreter.get_input_details()[0]
    image = np.random.default_rng(0).uniform(-1, 1, detail["shape"]).astype("float32")
    interpreter.set_tensor(detail["index"], export.quantize(image, detail))
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def all_layers(model):
    for layer in model.layers:
        yield from all_layers(layer) if isinstance(layer, keras.Model) else [layer]


def calibrate_batchnorm(model, faces):
    """Set every BatchNorm's moving statistics to those of a batch of faces.

    Freshly initialized deep backbones shrink activations towards zero (mobilenetv2 ends near 1e-11),
    which makes uint8 calibration and the cosine check meaningless; with batch statistics the
    activations are unit-scale, as in a trained model. One training-mode pass with momentum 0 does it.
    """
    layers = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momentums = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(face_io.normalize(faces), training=True)
    for layer, momentum in zip(layers, momentums):
        layer.momentum = momentum
    return model


def build(backbone, head, faces):
    return calibrate_batchnorm(models.buildin_models(backbone, dropout=0, weights=None, **head), faces[:32])


def measure_row(table, row, args, faces, cache):
    """Convert (cached per model and conversion) and time one row at every thread count; yield JSON records."""
    label, backbone, head, quantization, xnn = row
    key = (backbone, tuple(sorted(head.items())), quantization)
    if key not in cache:
        model = build(backbone, head, faces)
        content = export.to_tflite_bytes(model, quantization, faces if quantization in export.INTEGER_QUANTIZATIONS else None)
        cache.clear()  # one model at a time: keep memory flat
        cache[key] = (model, content)
    model, content = cache[key]
    name = "tflite/{}/{}/{}".format(table, backbone, label.replace(" ", "_"))
    records = [dict(name=name, metric="size", value=round(len(content) / 2**20, 4), unit="MB")]
    check = export.run_tflite(export.make_tflite_interpreter(content, use_xnnpack=xnn), face_io.normalize(faces[: args.parity_images]))
    cosines = export.cosine_similarities(export.keras_embeddings(model, faces[: args.parity_images]), check)
    records.append(dict(name=name, metric="cosine_min_vs_keras", value=round(float(cosines.min()), 6), unit="cosine"))
    for threads in args.threads:
        interpreter = export.make_tflite_interpreter(content, num_threads=threads, use_xnnpack=xnn)
        latency = median_latency_ms(interpreter, args.runs, args.warmup)
        records.append(dict(name=name, metric="latency_threads{}".format(threads), value=round(latency, 3), unit="ms"))
    return records


# ---------------------------------------------------------------- tables
def markdown_table(table, rows, results, threads):
    first = {"conversions": "mobilenet_v2", "heads": "emb_shape | output_layer | pointwise_conv | PReLU", "backbones": "Model"}[table]
    header = "| {} | Size (MB) | {} | cos min vs Keras |".format(first, " | ".join("threads={} (ms)".format(tt) for tt in threads))
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for label, backbone, head, _, _ in rows:
        values = results.get((table, label), {})
        cells = "{emb_shape} | {output_layer} | {add_pointwise_conv} | {use_prelu}".format(**head) if table == "heads" else label
        timings = " | ".join("{:.3f}".format(values["latency_threads{}".format(tt)]) if "latency_threads{}".format(tt) in values else "-" for tt in threads)
        size, cosine = values.get("size"), values.get("cosine_min_vs_keras")
        lines.append("| {} | {} | {} | {} |".format(cells, "-" if size is None else "{:.4f}".format(size), timings, "-" if cosine is None else "{:.5f}".format(cosine)))
    return "\n".join(lines)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=30, help="timed invokes per measurement (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--faces", default=DEFAULT_FACES, help=".bin or image folder: uint8 calibration and the cosine check")
    parser.add_argument("--parity_images", type=int, default=4)
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_arguments(argv)
    faces = export.load_images(args.faces, count=100)
    results, cache, tables = {}, {}, {}
    for table in args.tables:
        rows = TABLES[table]()
        for row in tqdm(rows, desc=table, file=sys.stderr):
            for record in measure_row(table, row, args, faces, cache):
                record["machine"] = machine()
                print(json.dumps(record), flush=True)
                results.setdefault((table, row[0]), {})[record["metric"]] = record["value"]
        tables[table] = markdown_table(table, rows, results, args.threads)
        print("\n" + tables[table] + "\n", file=sys.stderr)
    if args.markdown:
        text = "".join("### {}\n\n{}\n\n".format(table, content) for table, content in tables.items())
        io_utils.atomic_write_text(args.markdown, "Machine: {}\n\n{}".format(machine(), text))


if __name__ == "__main__":
    main()
