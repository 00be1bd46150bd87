"""Small file helpers shared by the modules: atomic writes and path naming.

Usage:
    with atomic_path("checkpoints/model.h5") as tmp:
        model.save(tmp)
"""
import contextlib
import errno
import os
import re
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary file name beside `path`; rename it onto `path` only on success.

    The temporary name keeps `path`'s extension (or `suffix`) so that writers which
    choose the format by extension (Keras `.h5` / `.keras`, numpy `.npz`) still work.
    A crash or exception leaves `path` untouched and removes the temporary file. An OS error of the
    write itself (read-only, full disk: no file named, or the temporary one) is raised naming `path`.
    """
    path = os.fspath(path)
    folder, tmp = os.path.dirname(os.path.abspath(path)), None
    prefix = "." + os.path.basename(path) + "."
    try:
        os.makedirs(folder, exist_ok=True)
        suffix = os.path.splitext(path)[1] if suffix is None else suffix
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp" + suffix, dir=folder)
        os.close(fd)
        os.remove(tmp)  # writers such as h5py refuse to open an existing empty file in some modes
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise _naming_the_output(error, os.path.join(folder, prefix), path) from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _naming_the_output(error, temporary_prefix, path):
    """`error` as the failed write of `path` when it names no file or a temporary one (`temporary_prefix...`): an OS
    error keeps its errno; a plain OSError without one (h5py: "File write failed") gets `path` in front."""
    named = error.filename
    if named is not None and not str(named).startswith(temporary_prefix):
        return error
    if error.errno is not None:
        renamed = OSError(error.errno, error.strerror, path)  # OSError(errno, ...) is the errno's subclass
        return renamed if type(renamed) is type(error) else error
    if type(error) is not OSError or path in str(error):
        return error
    return OSError("{}: could not be written ({})".format(path, error))


def atomic_write_bytes(path, data, what="file"):
    """Write `data` to `path` atomically through `checked_write`; the temporary name `.<name>.<random>.tmp` has no
    data extension.  Usage: atomic_write_bytes("a.jpg", jpeg_bytes)
    """
    checked_write(path, _write_bytes_to(data), what)


def checked_write(path, write, what="output file", suffix=""):
    """Write the file `path` through `write(temporary_path)`, atomically (`atomic_path`; the temporary name ends in
    `.tmp<suffix>`, by default no data extension), or fail
    naming `path`: a directory where the file goes is refused before anything is written, and an OSError of the
    write (a full disk, a read-only folder) names `path` (`atomic_path`), the temporary file gone.

    Usage: checked_write("out/0/1.jpg", lambda tmp: open(tmp, "wb").write(jpeg_bytes), "image")
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "{} {}: is a directory where the file goes".format(what, path), path)
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)


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


def name_of_several(stems, joiner="_vs_", limit=150):
    """One file-name stem standing for several inputs: their stems joined by `joiner`, or, beyond `limit` characters,
    the first stem, the count of the others and a digest of all of them (another set of inputs, another name).

    Usage: name_of_several(["a_hist", "b_hist"]) -> "a_hist_vs_b_hist"
    """
    import hashlib

    name = joiner.join(stems)
    if len(name) <= limit:
        return name
    digest = hashlib.sha1("\n".join(stems).encode("utf-8")).hexdigest()[:8]
    return "{}_and_{}_more_{}".format(stems[0], len(stems) - 1, digest)


def name_beside(source, parts, extension):
    """`<source>_<part>_..._<part><extension>` beside `source` (a folder, or a file whose extension is dropped): a tool's
    output named by its dataset's full path, so that two datasets of one name never share it. Characters that do not
    belong in a file name become `_` in the parts.
    Usage: name_beside("/d/train/", ["r100", "topK3"], ".npz") -> "/d/train_r100_topK3.npz"
    """
    source = os.path.normpath(os.fspath(source))
    stem = os.path.splitext(source)[0] if os.path.isfile(source) else source
    return "_".join([stem, *(re.sub(r"[^\w.-]", "_", str(part)) for part in parts)]) + extension


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
