"""The seed's flat module names from a checkout: `import train` at the repo root is `keras_insightface.train`.

Each file at the repo root (`train.py`, `losses.py`, `backbones/`, ...) calls `alias(__name__, "train")`:
imported, it replaces itself in `sys.modules` with the package's module (the same object, never a copy);
run as a script (`python train.py --demo`), it runs that name's command line (`COMMANDS`), or says in one line
that the module is a library and which commands there are (exit status 2).

Usage (a root shim): from keras_insightface._flat import alias; alias(__name__, "train")
"""
import importlib
import sys

PACKAGE = "keras_insightface"
# flat name run as a script -> the module whose main() is its command line
COMMANDS = {
    "train": "demo",
    "prepare_data": "prepare_data",
    "data_drop_top_k": "data_drop_top_k",
    "data_distiller": "data_distiller",
    "IJB_evals": "IJB_evals",
    "export": "export",
    "eval_folder": "eval_folder",
    "convert_insightface": "convert_insightface",
    "plot": "plot",
}


def run_command(module_name, argv=None):
    """Run the command line of flat name `module_name`; a library module gets one line naming the commands (exit 2)."""
    if module_name not in COMMANDS:
        print("{}.py is a library module, not a command: import it (`import {}` at the repo root, or `from keras_insightface import {}`); "
              "the commands are: {}".format(module_name, module_name, module_name, ", ".join(name + ".py" for name in COMMANDS)), file=sys.stderr)
        return 2
    module = importlib.import_module("{}.{}".format(PACKAGE, COMMANDS[module_name]))
    return module.main(argv)


def alias(flat_name, module_name):
    """Make `flat_name` (and its loaded sub-modules) name `keras_insightface.<module_name>`, or run its command line."""
    if flat_name == "__main__":
        sys.exit(run_command(module_name))
    module = importlib.import_module("{}.{}".format(PACKAGE, module_name))
    sys.modules[flat_name] = module
    prefix = module.__name__ + "."
    for name, sub_module in list(sys.modules.items()):
        if name.startswith(prefix):
            sys.modules[flat_name + "." + name[len(prefix):]] = sub_module
    return module
