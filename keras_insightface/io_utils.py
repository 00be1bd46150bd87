"""Small file helpers shared by the modules: atomic writes and path naming.

Usage:
    with atomic_path("checkpoints/model.h5") as tmp:
        model.save(tmp)
"""
import contextlib
import errno
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


def atomic_write_bytes(path, data, what="file"):
    """Write `data` to `path` atomically through `checked_write`; the temporary name `.<name>.<random>.tmp` has no
    data extension.  Usage: atomic_write_bytes("a.jpg", jpeg_bytes)
    """
    checked_write(path, _write_bytes_to(data), what)


def checked_write(path, write, what="output file", suffix=""):
    """Write the file `path` through `write(temporary_path)`, atomically (`atomic_path`; the temporary name ends in
    `.tmp<suffix>`, by default no data extension), or fail
    naming `path`: a directory where the file goes is refused before anything is written, and an OSError of the
    write (a full disk, a read-only folder) is raised again with `path` as its file name, the temporary file gone.

    Usage: checked_write("out/0/1.jpg", lambda tmp: open(tmp, "wb").write(jpeg_bytes), "image")
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "{} {}: is a directory where the file goes".format(what, path), path)
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            write(tmp)
    except OSError as error:
        if error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, path) from error


def _write_bytes_to(data):
    def write(tmp):
        with open(tmp, "wb") as ff:
            ff.write(data)

    return write


def link_or_copy(source, target):
    """Make `target` a hard link of `source` (no second copy on disk), or a copy (metadata too) where links are refused.

    Usage: link_or_copy("cfp_fp.bin", "cfp_fp.orig.bin")
    """
    import shutil

    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def atomic_write_text(path, text):
    """Write `text` (utf-8) to `path` atomically.  Usage: atomic_write_text("h.json", json.dumps(h))"""
    atomic_write_bytes(path, text.encode("utf-8"))


_SAFE_PICKLE_GLOBALS = {
    ("_codecs", "encode"),  # how Python 2 / protocol 2 pickles store `bytes`
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class UnsafePickleError(ValueError):
    """Raised when a pickle asks for anything beyond containers, bytes, numbers and numpy arrays."""


def safe_load_pickle(path, encoding="bytes"):
    """Load a pickle that may hold only containers, bytes / str, bools / numbers and numpy arrays.

    Any other global (a function or class that could run code) is refused before it is called.
    Usage: bins, issame_list = safe_load_pickle("lfw.bin")
    """
    import pickle

    import numpy as np  # noqa: F401  (the allowed numpy globals are resolved through it)

    class _Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in _SAFE_PICKLE_GLOBALS:
                raise UnsafePickleError(
                    "{}: refusing to load, the pickle references '{}.{}'; only containers, bytes, "
                    "numbers and numpy arrays are accepted".format(path, module, name)
                )
            return super().find_class(module, name)

    with open(path, "rb") as ff:
        try:
            return _Restricted(ff, encoding=encoding).load()
        except UnsafePickleError:
            raise
        except Exception as error:
            raise ValueError("{}: not a readable pickle ({}: {})".format(path, type(error).__name__, error)) from error
