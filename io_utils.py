"""Small file helpers shared by the modules: atomic writes and path naming.

Usage:
    with atomic_path("checkpoints/model.h5") as tmp:
        model.save(tmp)
"""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary file name beside `path`; rename it onto `path` only on success.

    The temporary name keeps `path`'s extension (or `suffix`) so that writers which
    choose the format by extension (Keras `.h5` / `.keras`, numpy `.npz`) still work.
    A crash or exception leaves `path` untouched and removes the temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    os.remove(tmp)  # writers such as h5py refuse to open an existing empty file in some modes
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path, data):
    """Write `data` to `path` atomically.  Usage: atomic_write_bytes("a.jpg", jpeg_bytes)"""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as ff:
            ff.write(data)


def atomic_write_text(path, text):
    """Write `text` (utf-8) to `path` atomically.  Usage: atomic_write_text("h.json", json.dumps(h))"""
    atomic_write_bytes(path, text.encode("utf-8"))
