"""The package's shape, as docs/architecture.md states it: no import circles, no library module importing a command
line tool, no module over 700 lines, `Train` under 400 lines and asking the output head instead of testing its type."""
import ast
import os

import pytest

from keras_insightface.heads import registry

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_insightface")
MAX_MODULE_LINES = 700
MAX_TRAIN_LINES = 400


def module_files():
    """{dotted module name: file path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def _package_of(module, path):
    return module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]


def imports_of(module):
    """The package modules `module` imports, at any depth of its code (function-level imports included)."""
    path = MODULES[module]
    package, targets = _package_of(module, path), set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            base = (base + "." + node.module if node.module else base) if node.level else node.module
            for alias in node.names:
                candidate = base + "." + alias.name
                targets.add(candidate if candidate in MODULES else base)
    return {target for target in targets if target in MODULES and target != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def has_main(module):
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


TOOLS = {module for module in MODULES if has_main(module)}


def find_cycle():
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_circle():
    assert find_cycle() is None, " -> ".join(find_cycle())


def test_the_tools_are_found_and_nothing_imports_a_tool():
    assert {"keras_insightface.prepare_data", "keras_insightface.export", "keras_insightface.demo"} <= TOOLS
    importers = {module: sorted(GRAPH[module] & TOOLS) for module in MODULES if GRAPH[module] & TOOLS}
    assert importers == {}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_700_lines(module):
    with open(MODULES[module], encoding="utf-8") as ff:
        assert len(ff.readlines()) <= MAX_MODULE_LINES


def test_train_is_under_400_lines_and_never_tests_head_types():
    path = MODULES["keras_insightface.train"]
    tree = ast.parse(open(path, encoding="utf-8").read())
    train_class = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Train")
    assert train_class.end_lineno - train_class.lineno + 1 < MAX_TRAIN_LINES
    head_classes = {kind.__name__ for kind in registry.HEAD_KINDS}
    head_classes |= {"NormDense", "NormDenseVPL", "NormDensePartialFC", "ShardedHeadModel"}
    names = {node.id for node in ast.walk(train_class) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(train_class) if isinstance(node, ast.Attribute)}
    assert not names & head_classes, names & head_classes
    assert not [node for node in ast.walk(train_class) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"
                and "head" in ast.unparse(node).lower()]
