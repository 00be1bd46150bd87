"""The seed's flat module names from a checkout: `import train` at the repo root is `keras_insightface.train`.

Each file at the repo root (`train.py`, `losses.py`, `backbones/`, ...) calls `alias(__name__, "train")`:
imported, it replaces itself in `sys.modules` with the package's module (the same object, never a copy);
run as a script (`python train.py --demo`), it runs that module's `main()`.

Usage (a root shim): from keras_insightface._flat import alias; alias(__name__, "train")
"""
import importlib
import sys

PACKAGE = "keras_insightface"


def alias(flat_name, module_name):
    """Make `flat_name` (and its loaded sub-modules) name `keras_insightface.<module_name>`, or run its main()."""
    module = importlib.import_module("{}.{}".format(PACKAGE, module_name))
    if flat_name == "__main__":
        sys.exit(module.main())
    sys.modules[flat_name] = module
    prefix = module.__name__ + "."
    for name, sub_module in list(sys.modules.items()):
        if name.startswith(prefix):
            sys.modules[flat_name + "." + name[len(prefix):]] = sub_module
    return module
