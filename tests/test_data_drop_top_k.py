"""Sub-center cleaning: a hand-set sub-center head drops a mislabelled image and keeps the clean ones."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_insightface import data_drop_top_k
from keras_insightface import models
from tests.helpers import write_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RED, BLUE = (255, 0, 0), (0, 0, 255)  # RGB


def noisy(rgb, rng):
    return np.clip(np.array(rgb, np.float32)[None, None] + rng.normal(0, 5, (112, 112, 3)), 0, 255).astype(np.uint8)


@pytest.fixture()
def noisy_dataset(tmp_path):
    """Class 0 holds red faces, class 1 blue ones, plus one red image filed under class 1."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for index in range(4):
        write_image(root / "0" / "red_{}.jpg".format(index), noisy(RED, rng))
        write_image(root / "1" / "blue_{}.jpg".format(index), noisy(BLUE, rng))
    write_image(root / "1" / "mislabelled_red.jpg", noisy(RED, rng))
    return str(root)


def sub_center_model(loss_top_k=3):
    """Embedding = mean normalized RGB; class 0's first sub-center points to red, class 1's first to blue."""
    inputs = keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    embedding = keras.layers.Dense(3, use_bias=False, kernel_initializer="identity", name="embedding")(pooled)
    head = models.NormDense(2, loss_top_k=loss_top_k, name="NormDense")
    model = keras.Model(inputs, head(embedding))
    if loss_top_k > 1:
        red, blue, green = [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]
        # column c * K + k is sub-center k of class c
        columns = [red, green, [0.0, 1.0, 0.0], blue, green, [0.0, 1.0, 0.0]]
        head.w.assign(np.array(columns, np.float32).T)
    return model


def test_mislabelled_image_is_dropped(noisy_dataset, tmp_path):
    dest = str(tmp_path / "cleaned.npz")
    result = data_drop_top_k.data_drop_top_k(sub_center_model(), noisy_dataset, dest_file=dest, deg_thresh=75)
    assert result == dest
    cleaned = np.load(dest)
    kept = sorted(os.path.basename(name) for name in cleaned["image_names"])
    assert kept == sorted(["red_{}.jpg".format(ii) for ii in range(4)] + ["blue_{}.jpg".format(ii) for ii in range(4)])
    for name, label in zip(cleaned["image_names"], cleaned["image_classes"]):
        assert int(label) == int(os.path.basename(os.path.dirname(name)))


def test_angle_rule_matches_hand_computation():
    # Image at 60 degrees from its class's dominant sub-center is kept at 75, dropped at 45.
    cosines = np.array([[np.cos(np.radians(60)), 0.0], [1.0, 0.0], [1.0, 0.2]])
    classes = np.array([0, 0, 0])
    assert data_drop_top_k.select_kept_images(cosines, classes, 1, 75).tolist() == [True, True, True]
    assert data_drop_top_k.select_kept_images(cosines, classes, 1, 45).tolist() == [False, True, True]


def test_saved_model_file_and_cli(noisy_dataset, tmp_path):
    model_path = str(tmp_path / "topk.h5")
    sub_center_model().save(model_path)
    dest = str(tmp_path / "cli.npz")
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    script = os.path.join(REPO, "data_drop_top_k.py")
    result = subprocess.run([sys.executable, script, "-M", model_path, "-D", noisy_dataset, "-d", dest, "-t", "75"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ">>>> Total images: 9, kept: 8, dropped: 1" in result.stdout
    assert len(np.load(dest)["image_names"]) == 8
    help_text = subprocess.run([sys.executable, script, "-h"], env=env, capture_output=True, text=True).stdout
    for flag in ("-M MODEL_FILE", "-D DATA_PATH", "-d DEST_FILE", "-t DEG_THRESH", "-L LIMIT", "NOT basic_model", "--overwrite"):
        assert flag in help_text


def test_model_without_sub_centers_is_refused(noisy_dataset):
    with pytest.raises(ValueError, match="no sub-centers"):
        data_drop_top_k.data_drop_top_k(sub_center_model(loss_top_k=1), noisy_dataset)
    with pytest.raises(ValueError, match="deg_thresh"):
        data_drop_top_k.data_drop_top_k(sub_center_model(), noisy_dataset, deg_thresh=200)


def test_train_continues_on_the_cleaned_dataset(noisy_dataset, tmp_path, monkeypatch):
    from keras_insightface import losses
    from keras_insightface import train

    monkeypatch.chdir(tmp_path)
    inputs = keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    basic_model = keras.Model(inputs, keras.layers.Dense(3, name="embedding")(pooled))
    tt = train.Train(noisy_dataset, "topk.h5", basic_model=basic_model, batch_size=4)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": "adam", "lossTopK": 3}])
    new_path = data_drop_top_k.data_drop_top_k(tt.model, tt.data_path, dest_file=str(tmp_path / "new.npz"), deg_thresh=180)
    assert len(np.load(new_path)["image_names"]) == 9  # nothing is farther than 180 degrees
    tt.reset_dataset(new_path)
    assert tt.data_path == new_path and tt.classes == 2
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "bottleneckOnly": True}], 0)
    assert tuple(tt.output_layer.w.shape) == (3, 2)  # back to one center per class


def test_default_output_is_beside_the_dataset_and_names_it_and_the_model(tmp_path, monkeypatch):
    """Two datasets both named `train` get two files; the cwd gets none; a second run keeps the first's output."""
    from tests.helpers import make_image_folder

    monkeypatch.chdir(tmp_path)
    model = sub_center_model()
    datasets = [make_image_folder(str(tmp_path / where / "train"), num_classes=2, images_per_class=2, seed=ii) for ii, where in enumerate("ab")]
    outputs = [data_drop_top_k.data_drop_top_k(model, dataset, deg_thresh=180) for dataset in datasets]
    assert outputs == [str(tmp_path / where / "train_{}_topK3_deg180.npz".format(model.name)) for where in "ab"]
    for dataset, output in zip(datasets, outputs):
        assert all(name.startswith(dataset + os.sep) for name in np.load(output)["image_names"])
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]

    with open(outputs[0], "wb") as ff:
        ff.write(b"the user's earlier result")
    with pytest.raises(FileExistsError, match="train_{}_topK3_deg180.npz: already exists; it is kept".format(model.name)):
        data_drop_top_k.data_drop_top_k(model, datasets[0], deg_thresh=180)
    assert open(outputs[0], "rb").read() == b"the user's earlier result"
    assert data_drop_top_k.data_drop_top_k(model, datasets[0], deg_thresh=180, overwrite=True) == outputs[0]
    assert len(np.load(outputs[0])["image_names"]) == 4


def test_default_output_of_a_model_file_and_an_npz_dataset(noisy_dataset, tmp_path):
    model_path = str(tmp_path / "TT_topk.h5")
    sub_center_model().save(model_path)
    dataset = str(tmp_path / "listed.npz")
    np.savez(dataset, image_names=np.array([os.path.join(noisy_dataset, "0", "red_0.jpg")]), image_classes=np.array([0]))
    assert data_drop_top_k.main(["-M", model_path, "-D", dataset, "-t", "12.5"]) == 0
    assert os.path.isfile(str(tmp_path / "listed_TT_topk_topK3_deg12.5.npz"))


def test_a_head_with_fewer_classes_than_the_data_is_one_line(noisy_dataset, tmp_path, capsys):
    from tests.helpers import make_image_folder

    model_path = str(tmp_path / "two_classes.h5")
    sub_center_model().save(model_path)
    three_classes = make_image_folder(str(tmp_path / "three"), num_classes=3, images_per_class=1)
    assert data_drop_top_k.main(["-M", model_path, "-D", three_classes]) == 2
    assert capsys.readouterr().err.endswith(
        "data_drop_top_k.py: error: {}: its NormDense head has 2 classes, but the dataset {} has 3; clean the dataset the "
        "model was trained on\n".format(model_path, three_classes))
    assert not [name for name in os.listdir(tmp_path) if name.endswith("_topK3_deg75.npz")]


@pytest.mark.parametrize("argv, words", [
    (["-t", "200"], "deg_thresh=200.0: expected a number between 0 and 180"),
    (["-t", "nan"], "deg_thresh=nan: expected a number between 0 and 180"),
    (["-L", "-1"], "limit=-1: expected a number >= 0"),
])
def test_bad_numbers_are_one_line(noisy_dataset, tmp_path, capsys, argv, words):
    model_path = str(tmp_path / "topk.h5")
    sub_center_model().save(model_path)
    assert data_drop_top_k.main(["-M", model_path, "-D", noisy_dataset, "-d", str(tmp_path / "out.npz"), *argv]) == 2
    assert capsys.readouterr().err == "data_drop_top_k.py: error: {}\n".format(words)
    assert not os.path.exists(tmp_path / "out.npz")
