"""Teacher embeddings (Keras and ONNX teachers), the tfrecord / npz outputs, and distillation training."""
import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

from keras_insightface import data
from keras_insightface import data_distiller
from tests.helpers import noise_face

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_EMB = 4


def striped_noise_face(class_id, index, rng, shape):
    """Noise around 60 + 60 c with the left 40 columns of channel c at 250."""
    image = noise_face(class_id, index, rng, shape, mean_step=60, sd=30)
    image[:, :40, class_id] = 250
    return image


@pytest.fixture()
def faces(image_folder):
    return image_folder(num_classes=3, images_per_class=6, image=striped_noise_face, ext=".png")  # lossless: exact pixels


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def teacher_model():
    inputs = keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(TEACHER_EMB, name="embedding")(pooled))


def normalized(embeddings):
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def test_keras_teacher_npz_matches_direct_model(faces, tmp_path):
    teacher = teacher_model()
    teacher_path = str(tmp_path / "teacher.h5")
    teacher.save(teacher_path)
    dest = str(tmp_path / "embs.npz")
    data_distiller.data_distiller(faces, teacher_path, dest_file=dest, batch_size=5, save_npz_file=True)
    saved = np.load(dest)
    assert set(saved.files) == {"image_names", "image_classes", "embeddings"}
    images = np.stack([read_rgb(name) for name in saved["image_names"]]).astype("float32")
    expected = normalized(teacher.predict((images - 127.5) / 128, verbose=0))
    np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-5)
    labels = [int(os.path.basename(os.path.dirname(name))) for name in saved["image_names"]]
    assert saved["image_classes"].tolist() == labels


def onnx_teacher(path, weights):
    """NCHW input -> spatial mean -> MatMul: built with the onnx helper API."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["data", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weights"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "teacher",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", TEACHER_EMB])],
        initializer=[numpy_helper.from_array(np.array([2, 3], np.int64), "axes"), numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def test_onnx_teacher_tfrecord_fp16(faces, tmp_path):
    weights = np.random.default_rng(1).normal(size=(3, TEACHER_EMB)).astype(np.float32)
    teacher_path = str(tmp_path / "teacher.onnx")
    onnx_teacher(teacher_path, weights)
    dest = str(tmp_path / "embs.tfrecord")
    data_distiller.data_distiller(faces, teacher_path, dest_file=dest, batch_size=4, use_fp16=True)
    info = json.load(open(dest + ".json"))
    assert info == {"num_classes": 3, "total_images": 18, "emb_shape": TEACHER_EMB, "dtype": "float16"}

    ds, steps = data.prepare_dataset(dest, batch_size=18, is_train=False)
    images, (labels, embeddings) = next(iter(ds))
    assert steps == 1 and embeddings.shape == (18, TEACHER_EMB)
    # insightface ONNX convention: NCHW, (x - 127.5) / 127.5; the decoded pixels are those of the PNG files
    pixels = (images.numpy() / 0.0078125 + 127.5).round()
    expected = normalized((((pixels - 127.5) / 127.5).mean(axis=(1, 2))) @ weights)
    np.testing.assert_allclose(embeddings.numpy(), expected, atol=2e-3)  # float16 storage
    assert labels.shape == (18,)


def test_npz_to_tfrecord_cli(faces, tmp_path):
    teacher_path = str(tmp_path / "teacher.h5")
    teacher_model().save(teacher_path)
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    script = os.path.join(REPO, "data_distiller.py")
    run = lambda *args: subprocess.run([sys.executable, script, *args], cwd=tmp_path, env=env, capture_output=True, text=True)  # noqa: E731
    made = run("-M", teacher_path, "-D", faces, "--save_npz", "-b", "8")
    assert made.returncode == 0, made.stderr[-2000:]
    npz_name = "faces_shuffle_label_embs_normed_{}.npz".format(TEACHER_EMB)
    assert ">>>> Output: " + npz_name in made.stdout
    converted = run("-D", npz_name)
    assert converted.returncode == 0, converted.stderr[-2000:]
    tfrecord = str(tmp_path / npz_name.replace(".npz", ".tfrecord"))
    ds, _ = data.prepare_dataset(tfrecord, batch_size=18, is_train=False)
    _, (_, embeddings) = next(iter(ds))
    stored = np.load(tmp_path / npz_name)
    np.testing.assert_allclose(np.sort(embeddings.numpy(), axis=0), np.sort(stored["embeddings"], axis=0), atol=1e-6)
    help_text = run("-h").stdout
    for flag in ("-D DATA_PATH", "-M MODEL_FILE", "-d DEST_FILE", "-b BATCH_SIZE", "-L LIMIT", "--use_fp16", "--save_npz"):
        assert flag in help_text
    assert run("-D", faces).returncode != 0  # a folder needs a teacher


def test_distill_training_brings_student_towards_teacher(faces, tmp_path, monkeypatch):
    from keras_insightface import losses
    from keras_insightface import train

    monkeypatch.chdir(tmp_path)
    teacher_path = str(tmp_path / "teacher.h5")
    teacher_model().save(teacher_path)
    tfrecord = data_distiller.data_distiller(faces, teacher_path, dest_file=str(tmp_path / "embs.tfrecord"))

    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.Conv2D(8, 3, strides=4)(inputs)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    student = keras.Model(inputs, keras.layers.Dense(6, name="embedding")(nn))  # 6 != teacher's 4: a map layer is added
    tt = train.Train(tfrecord, "student.h5", basic_model=student, batch_size=6, lr_base=0.01)

    def teacher_cosine():
        ds, _ = data.prepare_dataset(tfrecord, batch_size=18, is_train=False)
        images, (_, teacher_embs) = next(iter(ds))
        mapped = tt.model.get_layer("distill_emb_map_layer")(tt.basic_model(images, training=False))
        return float(np.mean(np.sum(normalized(np.asarray(mapped)) * teacher_embs.numpy(), axis=1)))

    tt.train_single_scheduler(losses.ArcfaceLoss(scale=16), epoch=1, optimizer="adam", distill=128)
    before = teacher_cosine()
    tt.train_single_scheduler(losses.ArcfaceLoss(scale=16), epoch=4, initial_epoch=1, distill=128)
    after = teacher_cosine()
    assert len(tt.model.outputs) == 2 and tt.model.outputs[1].shape[-1] == TEACHER_EMB
    assert after > before + 0.05, (before, after)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], 5)  # no eval_paths: the latest basic model is saved
    saved = keras.models.load_model(os.path.join("checkpoints", "student_basic_model_latest.h5"))
    assert "distill_emb_map_layer" not in [layer.name for layer in saved.layers]
    assert saved.output_shape[-1] == 6
