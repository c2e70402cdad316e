"""Figures comparing every run: reads ./run_*/final_info.json, writes PNGs into ./figures/.

    python plot.py [--runs_glob='run_*'] [--out=figures]

training_curves.png  loss and L0 over training tokens, one line per run
core_metrics.png     explained variance (about the mean), MSE per element, CE-loss score, KL score
sparsity.png         L0 and L1 on held-out text, dead-feature fraction at the end of training
l0_vs_ce_loss.png    L0 against CE-loss score, every run one point
A run without a core eval is left out of the figures that need it; a failed run is labelled so.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_runs(pattern: str) -> list[dict]:
    runs = []
    for info_path in Path(".").glob(f"{pattern}/final_info.json"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {info_path}: {err}", file=sys.stderr)
            continue
        name = info_path.parent.name
        label = f"{name}: {info.get('variant', '?')}" + ("" if info.get("status") == "ok" else " (FAILED)")
        runs.append({"name": name, "label": label, "info": info})
    key = lambda r: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", r["name"])]  # noqa: E731
    return sorted(runs, key=key)


def _bars(ax, runs, values, title, ylabel=None):
    labels = [r["label"] for r in runs]
    bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    if ylabel:
        ax.set_ylabel(ylabel)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curves(runs, out: Path) -> Path | None:
    with_curves = [r for r in runs if r["info"].get("training", {}).get("curves", {}).get("tokens")]
    if not with_curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in with_curves:
        c = r["info"]["training"]["curves"]
        axes[0].plot(c["tokens"], c["loss"], label=r["label"])
        axes[1].plot(c["tokens"], c["l0"], label=r["label"])
    axes[0].set(title="training loss (normalized activations)", xlabel="training tokens", ylabel="loss", yscale="log")
    axes[1].set(title="L0 per token during training", xlabel="training tokens", ylabel="active features", yscale="log")
    axes[0].legend(fontsize=8)
    return _save(fig, out / "training_curves.png")


def _with_core(runs):
    return [r for r in runs if r["info"].get("core")]


def plot_core_metrics(runs, out: Path) -> Path | None:
    runs = _with_core(runs)
    if not runs:
        return None
    m = [r["info"]["core"]["eval_result_metrics"] for r in runs]
    panels = [
        ("explained variance (about the mean)", [x["reconstruction_quality"]["explained_variance"] for x in m]),
        ("MSE per element (model units)", [x["reconstruction_quality"]["mse_per_element"] for x in m]),
        ("CE-loss score", [x["model_performance_preservation"]["ce_loss_score"] for x in m]),
        ("KL-divergence score", [x["model_behavior_preservation"]["kl_div_score"] for x in m]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.5))
    for ax, (title, values) in zip(axes, panels):
        _bars(ax, runs, values, title)
    fig.suptitle("SAEBench core on held-out text")
    return _save(fig, out / "core_metrics.png")


def plot_sparsity(runs, out: Path) -> Path | None:
    if not runs:
        return None
    core_runs = _with_core(runs)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    if core_runs:
        m = [r["info"]["core"]["eval_result_metrics"]["sparsity"] for r in core_runs]
        _bars(axes[0], core_runs, [x["l0"] for x in m], "L0 (held-out)")
        _bars(axes[1], core_runs, [x["l1"] for x in m], "L1 of feature activations (held-out)")
    _bars(axes[2], runs, [r["info"]["training"]["final"]["dead_frac"] for r in runs], "dead fraction (end of training)")
    return _save(fig, out / "sparsity.png")


def plot_l0_vs_ce(runs, out: Path) -> Path | None:
    runs = _with_core(runs)
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, r in enumerate(runs):
        m = r["info"]["core"]["eval_result_metrics"]
        x, y = m["sparsity"]["l0"], m["model_performance_preservation"]["ce_loss_score"]
        ax.scatter(x, y, color=f"C{i}", s=50)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xscale="log", xlabel="L0 (held-out)", ylabel="CE-loss score", title="sparsity vs. model-loss preservation")
    ax.grid(alpha=0.3)
    return _save(fig, out / "l0_vs_ce_loss.png")


def main(argv: list[str]) -> int:
    opts = {"runs_glob": "run_*", "out": "figures"}
    for arg in argv:
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq or key not in opts:
            print(f"error: unknown argument {arg!r}; use --runs_glob=PATTERN --out=DIR", file=sys.stderr)
            return 2
        opts[key] = value
    runs = load_runs(opts["runs_glob"])
    if not runs:
        print(f"error: no {opts['runs_glob']}/final_info.json here; run experiment.py first", file=sys.stderr)
        return 2
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    written = [p for p in (f(runs, out) for f in (plot_training_curves, plot_core_metrics, plot_sparsity, plot_l0_vs_ce)) if p]
    print(f"{len(runs)} runs -> " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
