"""Helpers shared by the benchmark scripts: the machine description, its load, and a JPEG folder generator.

Usage: from bench_common import load_average, machine, write_images
"""
import os
import platform
from importlib import metadata


def load_average():
    """The 1-minute load average, rounded."""
    return round(os.getloadavg()[0], 2)


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or "unknown CPU" where there is none."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as ff:
            for line in ff:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return "unknown CPU"


def tensorflow_version():
    """The installed TensorFlow's version, whichever wheel (tensorflow, tensorflow-cpu) provided it."""
    for name in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def machine():
    """`N-core ARCH CPU sandbox (model), TensorFlow X`, noting when other jobs were loading it."""
    description = "{}-core {} CPU sandbox ({}), TensorFlow {}".format(
        os.cpu_count(), platform.machine(), cpu_model(), tensorflow_version()
    )
    if load_average() > 2:
        description += ", shared with other jobs during the run"
    return description


def write_images(root, num_images, num_classes, size=112):
    """Smooth random pictures (closer to faces in JPEG size than noise) in `root/<class>/<n>.jpg`."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for ii in range(num_images):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        folder = os.path.join(root, str(ii % num_classes))
        os.makedirs(folder, exist_ok=True)
        cv2.imwrite(os.path.join(folder, "{}.jpg".format(ii)), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
