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
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    run = lambda *args: subprocess.run([sys.executable, script, *args], cwd=workdir, env=env, capture_output=True, text=True)  # noqa: E731
    made = run("-M", teacher_path, "-D", faces, "--save_npz", "-b", "8")
    assert made.returncode == 0, made.stderr[-2000:]
    npz_path = str(tmp_path / "faces_teacher_shuffle_label_embs_normed_{}.npz".format(TEACHER_EMB))  # beside the dataset
    assert ">>>> Output: " + npz_path in made.stdout
    converted = run("-D", npz_path)
    assert converted.returncode == 0, converted.stderr[-2000:]
    tfrecord = npz_path.replace(".npz", ".tfrecord")
    assert ">>>> Output: " + tfrecord in converted.stdout and os.listdir(workdir) == []
    ds, _ = data.prepare_dataset(tfrecord, batch_size=18, is_train=False)
    _, (_, embeddings) = next(iter(ds))
    stored = np.load(npz_path)
    np.testing.assert_allclose(np.sort(embeddings.numpy(), axis=0), np.sort(stored["embeddings"], axis=0), atol=1e-6)
    help_text = run("-h").stdout
    for flag in ("-D DATA_PATH", "-M MODEL_FILE", "-d DEST_FILE", "-b BATCH_SIZE", "-L LIMIT", "--use_fp16", "--save_npz", "--overwrite"):
        assert flag in help_text
    assert run("-D", faces).returncode != 0  # a folder needs a teacher


def test_default_outputs_name_dataset_and_teacher_and_are_kept(tmp_path, capsys):
    """Two datasets both named `faces` and two teachers give four files; a second run keeps the first's output."""
    from tests.helpers import make_image_folder

    teachers = []
    for name in ("teacher_a", "teacher_b"):
        teachers.append(str(tmp_path / (name + ".h5")))
        teacher_model().save(teachers[-1])
    datasets = [make_image_folder(str(tmp_path / where / "faces"), num_classes=2, images_per_class=2, seed=ii) for ii, where in enumerate("ab")]
    outputs = [data_distiller.data_distiller(dataset, teacher, batch_size=4) for dataset in datasets for teacher in teachers]
    expected = [str(tmp_path / where / "faces_{}_shuffle_label_embs_normed_{}.tfrecord".format(name, TEACHER_EMB))
                for where in "ab" for name in ("teacher_a", "teacher_b")]
    assert outputs == expected and all(os.path.isfile(path) and os.path.isfile(path + ".json") for path in expected)
    before = open(expected[0], "rb").read()
    with pytest.raises(FileExistsError, match="already exists; it is kept.*--overwrite"):
        data_distiller.data_distiller(datasets[0], teachers[0], batch_size=4)
    assert open(expected[0], "rb").read() == before
    assert data_distiller.data_distiller(datasets[0], teachers[0], batch_size=4, overwrite=True) == expected[0]


def test_overwriting_a_tfrecord_replaces_its_sidecar_too(faces, tmp_path):
    dest = str(tmp_path / "embs.tfrecord")
    data_distiller.data_distiller(faces, save_teacher(tmp_path, "wide.h5", emb=6), dest_file=dest, batch_size=8)
    assert json.load(open(dest + ".json"))["emb_shape"] == 6
    data_distiller.data_distiller(faces, save_teacher(tmp_path, "narrow.h5", emb=3), dest_file=dest, batch_size=8, overwrite=True)
    assert json.load(open(dest + ".json"))["emb_shape"] == 3
    ds, _ = data.prepare_dataset(dest, batch_size=18, is_train=False)
    assert next(iter(ds))[1][1].shape == (18, 3)


def save_teacher(folder, name, emb):
    inputs = keras.Input((112, 112, 3))
    model = keras.Model(inputs, keras.layers.Dense(emb, name="embedding")(keras.layers.GlobalAveragePooling2D()(inputs)))
    model.save(str(folder / name))
    return str(folder / name)


def test_a_teacher_giving_nan_or_zero_embeddings_is_refused(faces, tmp_path):
    inputs = keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    zeros = keras.Model(inputs, keras.layers.Dense(TEACHER_EMB, kernel_initializer="zeros", name="embedding")(pooled))
    with pytest.raises(ValueError, match=r"teacher .*: 18 of 18 embeddings are NaN, inf or all zero \(first: "):
        data_distiller.data_distiller(faces, zeros, dest_file=str(tmp_path / "zeros.tfrecord"), batch_size=32)
    nan_layer = keras.layers.Dense(TEACHER_EMB, bias_initializer=keras.initializers.Constant(float("nan")), name="embedding")
    with pytest.raises(ValueError, match="NaN, inf or all zero"):
        data_distiller.data_distiller(faces, keras.Model(inputs, nan_layer(pooled)), dest_file=str(tmp_path / "nan.tfrecord"))
    assert sorted(os.listdir(tmp_path)) == ["faces", os.path.basename(data.cache_path_of(faces))]  # no output written


@pytest.mark.parametrize("argv, words", [
    (["-b", "0"], "batch_size=0: expected a number >= 1"),
    (["-L", "-5"], "limit=-5: expected a number of images, or -1 / 0 for all of them"),
])
def test_bad_numbers_are_one_line(faces, tmp_path, capsys, argv, words):
    teacher = save_teacher(tmp_path, "teacher.h5", emb=TEACHER_EMB)
    assert data_distiller.main(["-M", teacher, "-D", faces, "-d", str(tmp_path / "out.tfrecord"), *argv]) == 2
    assert capsys.readouterr().err.endswith("data_distiller.py: error: {}\n".format(words))
    assert not os.path.exists(tmp_path / "out.tfrecord")


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
