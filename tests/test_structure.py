"""The shape of the house: imports run one way (experiment.py and plot.py on top, evals/ above
trainers/), every module imports on its own, and every registered variant and eval keeps its contract."""

import ast
import dataclasses
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evals import DEFAULT_EVALS, EVALS
from trainers import VARIANTS

ROOT = Path(__file__).resolve().parent.parent


def project_modules() -> dict[str, Path]:
    """module name -> file, for every module of the project (tests excluded)."""
    out = {"experiment": ROOT / "experiment.py", "plot": ROOT / "plot.py", "reevaluate": ROOT / "reevaluate.py",
           "quality_benchmark": ROOT / "quality_benchmark.py", "compare": ROOT / "compare.py"}
    for package in ("trainers", "evals"):
        for path in sorted((ROOT / package).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def import_statements(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Every import in a file, anywhere in it (function-level ones included), as (module, names imported from
    it): `import a.b` -> ("a.b", ()), `from a import b, c` -> ("a", ("b", "c")), `import_module("a")` (the
    registries) -> ("a", ()). Relative imports are left out: the project uses none."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_module":
            found += [(a.value, ()) for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        elif isinstance(node, ast.Import):
            found += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, tuple(a.name for a in node.names)))
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports."""
    found = set()
    for module, names in import_statements(path):
        if module in modules:
            # `from trainers import relu` imports the submodule trainers.relu, not a name of trainers/__init__
            subs = {f"{module}.{n}" for n in names} & modules
            found |= subs
            if len(subs) < len(names) or not names:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def test_imports_run_one_way_and_form_no_circle():
    graph = import_graph()
    assert len(graph) > 20
    assert {"trainers.relu", "trainers.temporal"} <= graph["trainers"] and "evals.core" in graph["evals"]
    for name, deps in graph.items():
        # reevaluate.py and quality_benchmark.py are scripts on top of experiment's stages
        top = {"experiment", "plot", "reevaluate", "quality_benchmark", "compare"} - (
            {"experiment"} if name in ("reevaluate", "quality_benchmark") else set())
        assert not deps & top, f"{name} imports a top-level script: {deps & top}"
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


# Each project module imported first, in a child forked from an interpreter that has imported only the
# third-party libraries the project imports (a fresh interpreter per module spent ~10 s of each import on
# torch, sae_lens and SAEBench): no project module is loaded before the one tested, so an import circle or a
# module that works only after another project module ran fails here as it would in a fresh interpreter.
FORKED_IMPORTS = """
import importlib, json, os, sys
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # an optional library: the module that needs it says so itself
assert not set(json.loads(sys.argv[2])) & set(sys.modules), "a project module was imported before its test"
failed = []
for name in json.loads(sys.argv[2]):
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException as err:
            print(f"{name}: {type(err).__name__}: {err}", flush=True)
            os._exit(1)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("failed:", json.dumps(failed))
"""


def third_party_imports() -> list[str]:
    """The top-level names of every library the project's modules import (the standard library included)."""
    modules = project_modules()
    ours = {n.split(".")[0] for n in modules}
    found = {module.split(".")[0] for path in modules.values() for module, _ in import_statements(path)}
    return sorted(found - ours)


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(project_modules())
    libraries = third_party_imports()
    assert {"torch", "sae_lens", "transformer_lens"} <= set(libraries) and not set(libraries) & set(names)
    proc = subprocess.run([sys.executable, "-c", FORKED_IMPORTS, json.dumps(libraries), json.dumps(names)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "failed: []" in proc.stdout, (proc.stdout[-3000:], proc.stderr[-3000:])


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
        knob, grid = module.SPARSITY  # the comparison's sparsity setting and its >= 4 points
        assert knob in dataclasses.asdict(cfg) and len(grid) >= 4 and len(set(grid)) == len(grid), name
        for label, path in getattr(module, "TARGET_METRICS", ()):
            assert label and path[0] in ("diagnostics", "scr", "tpp", "summary"), name
        for attr in ("current_batch", "buffer"):  # nothing is set on it from outside any more
            assert not hasattr(sae, attr), name


@pytest.mark.slow
def test_the_readme_example_eval_is_one_file_and_one_registry_line(tmp_path):
    """The README's example, added to a copy of the project exactly as the README says, runs end to end."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    eval_file = next(b for b in blocks if b.startswith("# evals/feature_density.py"))
    registry_line = next(b for b in blocks if b.strip().startswith('"feature_density": import_module'))
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".cache", ".git", "run_*", "figures", "tests",
                                                              "__pycache__", ".pytest_cache"))
    (copy / ".cache").symlink_to(ROOT / ".cache")  # the embedded model, converted once by setup.sh
    (copy / "evals" / "feature_density.py").write_text(eval_file)
    init = copy / "evals" / "__init__.py"
    text = init.read_text()
    end = text.index("\n}", text.index("EVALS = {"))
    init.write_text(text[:end] + "\n" + registry_line.rstrip() + text[end:])
    proc = subprocess.run([sys.executable, "experiment.py", "--out_dir=run_1", "--n_tokens=12800", "--batch_size=128",
                           "--seqs_per_fill=32", "--evals=feature_density", "--set", "feature_density.sequences=4"],
                          cwd=copy, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((copy / "run_1" / "final_info.json").read_text())
    assert info["config"]["evals"] == {"feature_density": {"sequences": 4}}
    assert info["feature_density"]["tokens"] == 4 * 127 and info["feature_density"]["never"] >= 0
    assert "\nfeature_density: " in (copy / "notes.txt").read_text()
