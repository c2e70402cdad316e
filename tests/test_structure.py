"""The shape of the house: imports run one way (experiment.py and plot.py on top, evals/ above
trainers/), every module imports on its own, and every registered variant and eval keeps its contract."""

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from evals import DEFAULT_EVALS, EVALS
from trainers import VARIANTS

ROOT = Path(__file__).resolve().parent.parent


def project_modules() -> dict[str, Path]:
    """module name -> file, for every module of the project (tests excluded)."""
    out = {"experiment": ROOT / "experiment.py", "plot": ROOT / "plot.py"}
    for package in ("trainers", "evals"):
        for path in sorted((ROOT / package).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                # `from trainers import relu` imports the submodule trainers.relu, not a name of trainers/__init__
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                found |= subs or {node.module}
                if len(subs) < len(node.names):
                    found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def test_imports_run_one_way_and_form_no_circle():
    graph = import_graph()
    assert len(graph) > 20
    for name, deps in graph.items():
        assert not deps & {"experiment", "plot"}, f"{name} imports experiment.py or plot.py"
        if name.startswith("trainers"):
            assert not any(d.startswith("evals") for d in deps), f"{name} imports evals/: {deps}"
    # no circle among the files (depth-first search for a back edge)
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for dep in graph[node]:
            assert state.get(dep) != "open", "import circle: " + " -> ".join(path + [node, dep])
            if dep not in state:
                visit(dep, path + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(project_modules())
    # two at a time: a fresh interpreter importing sae_lens takes seconds
    failed, pending = [], list(names)
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = [(n, subprocess.Popen([sys.executable, "-c", f"import {n}"], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)) for n in batch]
        for n, p in procs:
            _, err = p.communicate(timeout=300)
            if p.returncode != 0:
                failed.append(f"{n}: {err.strip().splitlines()[-1]}")
    assert not failed, failed


def test_every_registered_eval_keeps_the_contract():
    assert set(DEFAULT_EVALS) <= set(EVALS)
    for name, module in EVALS.items():
        assert dataclasses.is_dataclass(module.Settings), name
        module.Settings()  # every setting has a default
        assert list(inspect.signature(module.run).parameters) == ["ctx", "settings"], name
        assert callable(module.headline), name
        for optional in ("key_numbers", "failures"):
            assert callable(getattr(module, optional, len)), name


def test_every_registered_variant_keeps_the_contract():
    for name, module in VARIANTS.items():
        assert dataclasses.is_dataclass(module.Config), name
        cfg = module.Config()
        module.check(cfg)  # the defaults are valid
        sae = module.build_sae(cfg, 4, 8, 10, decoder_init_norm=1.0)
        assert sae.cfg.d_in == 4 and sae.cfg.d_sae == 8, name
        assert module.LOSS_TERM is None or (len(module.LOSS_TERM) == 2 and all(module.LOSS_TERM)), name
        if hasattr(sae, "extra_loss_name"):  # a VariantSAE: its term is logged under the registered name
            assert module.LOSS_TERM[0] == sae.extra_loss_name, name
        for attr in ("current_batch", "buffer"):  # nothing is set on it from outside any more
            assert not hasattr(sae, attr), name
