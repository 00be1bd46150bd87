"""What every command-line tool shares: user errors end as `prog: error: <what, which file>` with exit status 2.

Tracebacks are for bugs: a missing file, bad input or a missing optional dependency is reported in one line.

Usage (a tool's main):
    def main(argv=None):
        args = parse_arguments(argv)
        return cli.run("export.py", convert, args.model_file)
"""
import importlib
import sys

USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, ImportError)


def run(prog, function, *args, **kwargs):
    """Call `function(*args, **kwargs)`; exit status 0, or 2 with a one-line `prog: error:` for a user error."""
    try:
        function(*args, **kwargs)
    except USER_ERRORS as error:
        print("{}: error: {}".format(prog, error), file=sys.stderr)
        return 2
    return 0


def require(module, extra, what):
    """Import an optional dependency, or raise ImportError naming the extra that installs it.

    Usage: ort = cli.require("onnxruntime", "onnx", "model.onnx: ONNX models")
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError("{} need the optional package '{}', which is not installed: pip install keras_insightface[{}]".format(
            what, module.split(".")[0], extra)) from error
