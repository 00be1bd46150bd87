"""pytest setup: TensorFlow quiet and on the CPU; shared fixtures of the test modules."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import keras  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import make_image_folder  # noqa: E402


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    return tmp_path


@pytest.fixture()
def dataset(workdir):
    return make_image_folder(workdir / "faces")
