"""What every command-line tool shares: user errors end as `prog: error: <what, which file>` with exit status 2, and
outputs are never silently overwritten.

Tracebacks are for bugs: a missing file, bad input, a full or read-only disk or a missing optional dependency is
reported in one line, naming the file. `prog` is the name the tool was run by (`keras-insightface-export` for the
console script, else the flat script's name).

Usage (a tool's main):
    def main(argv=None):
        args = parse_arguments(argv)
        return cli.run("export.py", convert, args.model_file)
"""
import argparse
import errno
import importlib
import os
import sys
import tempfile

USER_ERRORS = (OSError, ValueError, ImportError)  # FileNotFoundError, IsADirectoryError, ... are OSErrors
CONSOLE_SCRIPT_PREFIX = "keras-insightface-"
OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file grew beyond the size limit of the file system or of the process (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory, a file was expected",
    errno.ENOTDIR: "a path component is not a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
}


def prog_name(script):
    """The name the tool was run by: the console script (`keras-insightface-...`) when that is it, else `script`."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith(CONSOLE_SCRIPT_PREFIX) else script


def describe_error(error):
    """One line for a user error: an OSError as `<file>: <reason>`, anything else as its message."""
    if isinstance(error, OSError) and error.errno in OS_REASONS and not _has_own_message(error):
        names = " -> ".join(name for name in (error.filename, error.filename2) if name)
        return "{}: {}".format(names, OS_REASONS[error.errno]) if names else OS_REASONS[error.errno]
    return " ".join(str(error).split("\n"))


def _has_own_message(error):
    """True for an OSError raised by the project with its own message (no errno strerror pair)."""
    return error.strerror is None


def run(prog, function, *args, **kwargs):
    """Call `function(*args, **kwargs)`; exit status 0, or 2 with a one-line `prog: error:` for a user error."""
    try:
        function(*args, **kwargs)
    except USER_ERRORS as error:
        print("{}: error: {}".format(prog_name(prog), describe_error(error)), file=sys.stderr)
        return 2
    return 0


def check_output_file(path, overwrite=False, what="output file"):
    """Refuse to write `path` when it is a directory, or an existing file and `overwrite` is False (FileExistsError
    naming it and `--overwrite`); its folder must exist or be creatable, and be writable: a read-only folder (or one
    without permission) fails here, before any long work.  Usage: cli.check_output_file(args.output, args.overwrite)
    """
    if os.path.isdir(path):
        raise IsADirectoryError("{} {}: is a directory; give a file name".format(what, path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError("{} {}: already exists; it is kept (pass --overwrite to replace it)".format(what, path))
    folder = _nearest_existing_folder(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise NotADirectoryError("{} {}: {} is not a directory".format(what, path, folder))
    _probe_writable(folder, path)
    return path


def positive_int(text):
    """argparse type: a whole number >= 1 (a batch size, a worker count).  Usage: add_argument("-b", type=cli.positive_int)"""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got {!r}".format(text)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got {}".format(value))
    return value


def _nearest_existing_folder(folder):
    """`folder`, or its nearest existing ancestor (atomic writes create the missing ones)."""
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _probe_writable(folder, path):
    """Create and remove a hidden temporary file in `folder`; an OSError (read-only, permission, no inode) names `path`."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".write_probe.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OSError(error.errno, error.strerror, path) from error
    os.close(handle)
    os.remove(probe)


def check_number(name, value, minimum=None, maximum=None):
    """Refuse a number outside [minimum, maximum] (either may be None) or NaN with a ValueError naming `name` and the
    range; returns `value`.  Usage: cli.check_number("batch_size", batch_size, minimum=1)
    """
    if minimum is not None and maximum is not None:
        expected = "between {} and {}".format(minimum, maximum)
    else:
        expected = ">= {}".format(minimum) if minimum is not None else "<= {}".format(maximum)
    inside = value == value and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not inside:
        raise ValueError("{}={}: expected a number {}".format(name, value, expected))
    return value


def require(module, extra, what):
    """Import an optional dependency, or raise ImportError naming the extra that installs it.

    Usage: ort = cli.require("onnxruntime", "onnx", "model.onnx: ONNX models")
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError("{} need the optional package '{}', which is not installed: pip install keras_insightface[{}]".format(
            what, module.split(".")[0], extra)) from error
