"""The layout's rules: stage packages import only downwards, no import cycles, every module imports alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lower layers never import higher ones; packages of one layer never import each other.
LAYERS = {
    "tfwhale.core": 0,
    "tfwhale.nets": 1,
    "tfwhale.imaging": 1,  # photo bytes + box -> crop: below the contracts that name its settings
    "tfwhale.contracts": 2,
    "tfwhale.retrieval": 3,
    "tfwhale.matching": 3,
    "tfwhale.feed": 3,
    "tfwhale.synthetic": 3,
    "tfrecords_builder": 4,  # its workers take local features with tfwhale.matching.photo
    "tfwhale.training": 4,
    "tfwhale.query": 4,  # the one query path: gallery -> crop -> embed -> rank -> threshold -> answers
    "tfwhale.inference": 5,  # predict's internals, on top of the query path
    "tfwhale": 6,  # the commands users call: train, predict, identify, demo, kaggle glue
    "tfwhale.gallery": 6,  # the day-one gallery command: a photo folder -> a gallery, no training
    "tfwhale.serve": 7,  # the catalogue app, on top of the query path
}


def _modules() -> dict[str, str]:
    found = {}
    for top in ("tfwhale", "tfrecords_builder"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    found[dotted] = path
    return found


def _package(module: str, modules: dict[str, str]) -> str:
    """The layer package a module belongs to (its longest prefix in LAYERS)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS and (prefix != module or modules[module].endswith("__init__.py")):
            return prefix
    raise AssertionError(f"{module}: in no layer of LAYERS; add its package there")


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        targets |= {n for n in names if n in modules and n != module}
    return targets


def _graph() -> tuple[dict[str, str], dict[str, set[str]]]:
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def test_layers_import_only_downwards():
    modules, graph = _graph()
    wrong = []
    for module, targets in graph.items():
        source = _package(module, modules)
        for target in targets - {"tfwhale"}:  # the root __init__ holds only the version
            dest = _package(target, modules)
            if dest != source and LAYERS[dest] >= LAYERS[source] and not target.startswith(source + "."):
                wrong.append(f"{module} ({source}) imports {target} ({dest})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    _, graph = _graph()
    cycles, seen = [], set()

    def reach(start: str) -> set[str]:
        stack, found = [start], set()
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt not in found:
                    found.add(nxt)
                    stack.append(nxt)
        return found

    for module in graph:
        if module in seen:
            continue
        cycle = sorted(m for m in reach(module) if module in reach(m))
        if cycle and not all(m == module or m.startswith(module + ".") for m in cycle):
            cycles.append(" <-> ".join(cycle))
            seen |= set(cycle)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_builder_and_the_trainer_packages_import_one_way():
    _, graph = _graph()
    back = [f"{m} imports {t}" for m, ts in graph.items() if m.startswith("tfwhale") for t in ts
            if t.startswith("tfrecords_builder")]  # fmt: skip
    assert not back, "\n".join(back)


def test_every_module_imports_on_its_own():
    """Each module with only its own imports: tfwhale and tfrecords_builder are forgotten between them."""
    modules = sorted(_modules())
    script = (
        "import importlib, sys, traceback\n"
        "import tensorflow, keras\n"
        "failed = []\n"
        f"for name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('tfwhale', 'tfrecords_builder')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=1))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
