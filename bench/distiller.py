#!/usr/bin/env python3
"""Teacher-embedding extraction speed: a Keras teacher against the same teacher exported to ONNX.

Builds a basic model (fmobilefacenet, insightface's MobileFaceNet, by default, "GDC" head, emb_shape 512, random weights), saves it as `.h5`,
exports it with `export.convert_onnx` (tf2onnx, NHWC input, parity-checked), then for both files measures, in one
run on this machine (the ONNX file twice: onnxruntime's default threads, as load_model_interf opens it, and one
intra-op thread):
  - `model_interf.load_model_interf(path, batch_size=...)` on in-memory uint8 batches (model only);
  - `data_distiller.extract_embeddings(teacher, image_names, batch_size)` on a generated folder of 112x112 JPEGs
    (file reading, JPEG decoding, the model and L2 normalization: the distiller's whole extraction loop).
Also prints the min cosine similarity between the two teachers' embeddings. Logs go to stderr; stdout holds one
JSON object per line.
Usage: python bench/distiller.py [--model fmobilefacenet] [--batch_size 64] [--images 512] [--min_seconds 5]
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_insightface import data, face_io  # noqa: E402
from keras_insightface import data_distiller  # noqa: E402
from keras_insightface import export  # noqa: E402
from keras_insightface import model_interf  # noqa: E402
from keras_insightface import models  # noqa: E402
from bench_common import load_average, machine, write_images  # noqa: E402

NUM_CLASSES = 50


def images_per_second(run, num_images, min_seconds):
    """Calls `run()` (which handles `num_images` images) once to warm up, then until `min_seconds` pass (at least twice)."""
    run()
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < min_seconds:
        run()
        runs += 1
    return runs * num_images / (time.perf_counter() - start)


def onnx_single_thread_interf(onnx_path, batch_size):
    """The NHWC ONNX teacher on an onnxruntime session limited to one intra-op thread (load_model_interf uses the default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    predict = lambda inputs: session.run(None, {input_name: inputs})[0]  # noqa: E731
    return model_interf.ModelInterf(predict, "NHWC", *model_interf.KERAS_NORM, batch_size=batch_size, name="onnx_1_thread")


def make_teachers(name, work_dir, batch_size):
    """Loaders of the Keras `.h5` teacher and of its ONNX export (default session, and one intra-op thread)."""
    basic_model = models.buildin_models(name, dropout=0, emb_shape=512, output_layer="GDC")
    h5_path = os.path.join(work_dir, name + ".h5")
    basic_model.save(h5_path)
    onnx_path = export.convert_onnx(h5_path, output_path=os.path.join(work_dir, name + ".onnx"))
    return {
        "keras": lambda: model_interf.load_model_interf(h5_path, batch_size=batch_size),
        "onnx": lambda: model_interf.load_model_interf(onnx_path, batch_size=batch_size),
        "onnx_1_thread": lambda: onnx_single_thread_interf(onnx_path, batch_size),
    }


def min_cosine(embeddings_a, embeddings_b):
    normed_a, normed_b = (face_io.l2_normalize(ee) for ee in (embeddings_a, embeddings_b))
    return float(np.min(np.sum(normed_a * normed_b, axis=1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fmobilefacenet", help="buildin_models name of the teacher")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="images per timed pass")
    parser.add_argument("--min_seconds", type=float, default=5.0, help="least timed seconds per measurement")
    args = parser.parse_args(argv)

    host = machine()
    common = {"model": args.model, "batch_size": args.batch_size, "images": args.images, "machine": host}

    def report(setup, metric, value, unit):
        record = {"name": "distiller/{}/{}".format(args.model, setup), "metric": metric, "value": round(value, 6), "unit": unit}
        print(json.dumps({**record, **common, "load_average": load_average()}), flush=True)

    has_file_batches = hasattr(data, "image_batches_uint8")
    with tempfile.TemporaryDirectory() as work_dir:
        data_path = os.path.join(work_dir, "faces")
        write_images(data_path, args.images, NUM_CLASSES)
        faces = np.random.default_rng(0).integers(0, 256, size=(args.images, 112, 112, 3), dtype=np.uint8)
        with contextlib.redirect_stdout(sys.stderr):
            image_names = data.pre_process_folder(data_path)[0]
            teachers = make_teachers(args.model, work_dir, args.batch_size)
        embeddings = {}
        for kind, load_teacher in teachers.items():
            with contextlib.redirect_stdout(sys.stderr):
                teacher = load_teacher()
                embeddings[kind] = teacher(faces)
                interf_rate = images_per_second(lambda: teacher(faces), args.images, args.min_seconds)
            report(kind + "_interf_uint8", "images_per_second", interf_rate, "images/s")
            if not has_file_batches:
                print("data.image_batches_uint8 is missing: extract_embeddings not timed", file=sys.stderr)
                continue
            with contextlib.redirect_stdout(sys.stderr):
                extract = lambda: data_distiller.extract_embeddings(teacher, image_names, batch_size=args.batch_size)  # noqa: E731
                extract_rate = images_per_second(extract, len(image_names), args.min_seconds)
            report(kind + "_extract_embeddings", "images_per_second", extract_rate, "images/s")
        report("onnx_vs_keras", "min_cosine_similarity", min_cosine(embeddings["keras"], embeddings["onnx"]), "cosine")


if __name__ == "__main__":
    main()
