"""Figures comparing every run: reads ./run_*/final_info.json, writes PNGs into ./figures/.

    python plot.py [--runs_glob='run_*'] [--out=figures]

training_curves.png  loss and L0 over training tokens, one line per run
core_metrics.png     explained variance (about the mean), MSE per element, CE-loss score, KL score
sparsity.png         L0 and L1 on held-out text, dead-feature fraction at the end of training
l0_vs_ce_loss.png    L0 against CE-loss score, every run one point
sparse_probing.png   SAEBench sparse probing: test accuracy against k, SAE (solid) beside the LLM (dashed)
unlearning.png       loss-based unlearning score and SAEBench's MCQ score per run ("n/a" where not applicable),
                     and every intervention's forget- vs retain-loss rise (the curve)
scr_tpp_absorption.png  SCR and TPP metric against the number of ablated latents; absorption fraction per run
variant_terms.png    each variant's extra loss term over training (and TopK's auxiliary loss), one panel per term
diagnostics.png      the seeds' diagnostics per run: NMI, silhouette, MIG, feature correlation, decoder cosine,
                     forget/retain separation, auto-correlation by lag, firing mutual information
final_metrics.png    the seeds' own summary figure: final training loss and steps, explained variance, MSE, KL
index.html           one page for everything: the runs table, every figure, and a link to each run's feature pages
frontiers.png        L0 against CE-loss score, explained variance and each variant's target metric, one line per
                     variant along its sparsity setting, the seeds' range shaded (compare.py's runs)
frontier_table.md    each variant against the baseline at matched L0 (20, 40, 80): values, difference, and whether
                     it exceeds the seed spread
dose_response.png    each seed variant's target metric and CE-loss score against its term's weight (compare.py --dose),
                     the baseline's seeds at the same sparsity setting shaded; dose_table.md: the same numbers
noise_table.md       per metric: its range when only the eval's seed changes (the SAE fixed; reevaluate.py folders
                     at other eval seeds, compare.py --noise), its training-seed range, the least difference it
                     resolves, and the range between the variants at the same L0
runs_table.md        one row per run: variant, settings changed from the defaults, L0, EV, CE/KL score, diagnostics;
                     with >= 3 baseline seeds of one budget: their mean, spread, and "~" on numbers within it
A run without a core eval is left out of the figures that need it; a failed run is labelled so.
"""

from __future__ import annotations

import glob
import json
import math
import re
import sys
from pathlib import Path

import dataclasses

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, SymmetricalLogLocator  # noqa: E402

from trainers import VARIANTS  # noqa: E402


def load_runs(pattern: str) -> list[dict]:
    runs = []
    for info_path in map(Path, glob.glob(f"{pattern}/final_info.json")):  # glob: an absolute pattern too
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {info_path}: {err}", file=sys.stderr)
            continue
        name = info_path.parent.name
        label = f"{name}: {info.get('variant', '?')}" + ("" if info.get("status") == "ok" else " (FAILED)")
        runs.append({"name": name, "label": label, "info": info, "dir": str(info_path.parent)})
    key = lambda r: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", r["name"])]  # noqa: E731
    return sorted(runs, key=key)


def seed_group(info: dict) -> str | None:
    """What a run shares with the other seeds of the same setting: its whole config but the seed and where it
    is written (None for runs made before the config had sections)."""
    cfg = info.get("config", {})
    if not isinstance(cfg.get("target"), dict):
        return None
    return json.dumps({k: ({f: v for f, v in section.items() if f != "seed"} if k == "training" else section)
                       for k, section in cfg.items() if k not in ("system", "sweep")}, sort_keys=True, default=str)


def seed_ranges(runs, values) -> list[tuple[float, float] | None]:
    """For each run, (min, max) of `values` over the runs that are seeds of its setting (None where it has none)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        key = seed_group(r["info"])
        if key is not None:
            groups.setdefault(key, []).append(i)
    out: list[tuple[float, float] | None] = [None] * len(runs)
    for members in groups.values():
        vs = [values[i] for i in members if values[i] is not None and math.isfinite(values[i])]
        if len(members) > 1 and len(vs) == len(members):
            for i in members:
                out[i] = (min(vs), max(vs))
    return out


def seed_bands(runs, curves: list[dict]) -> list[dict | None]:
    """For curves (one {x: y} per run), each run's {x: (min, max)} over the seeds of its setting, drawn once per
    setting: the first seed of a setting gets the band, the others None (as do runs without seeds)."""
    xs = sorted({x for c in curves for x in c}, key=float)
    per_x = {x: seed_ranges(runs, [c.get(x) for c in curves]) for x in xs}
    out: list[dict | None] = [None] * len(runs)
    drawn = set()
    for i, r in enumerate(runs):
        band = {x: per_x[x][i] for x in xs if per_x[x][i] is not None}
        group = seed_group(r["info"])
        if band and group not in drawn:
            drawn.add(group)
            out[i] = band
    return out


def _band(ax, band: dict | None, colour: str) -> None:
    """A run's seed range along its curve, shaded (nothing where it has no seeds)."""
    if band:
        xs = sorted(band, key=float)
        ax.fill_between([float(x) for x in xs], [band[x][0] for x in xs], [band[x][1] for x in xs], color=colour,
                        alpha=0.15, lw=0)


def bar_label(v: float) -> str:
    """A bar's value as a person writes it: 0.918, 37.4, 1760 (not 1.76e+03)."""
    return f"{v:.0f}" if 1000 <= abs(v) < 1e7 else f"{v:.3g}"


def _bars(ax, runs, values, title, ylabel=None, ranges=None):
    labels = [r["label"] for r in runs]
    bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
    for i, spread in enumerate(ranges if ranges is not None else seed_ranges(runs, values)):  # the seeds' range of this run's setting, on its bar
        if spread is not None:
            ax.errorbar(i, values[i], yerr=[[values[i] - spread[0]], [spread[1] - values[i]]], color="black",
                        capsize=4, lw=1)
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    if ylabel:
        ax.set_ylabel(ylabel)
    many = len(values) > 6  # side by side the labels would overlap: upright, inside the bar
    for bar, v in zip(bars, values):
        ax.annotate(bar_label(v), (bar.get_x() + bar.get_width() / 2, bar.get_height() * (0.97 if many else 1)),
                    ha="center", va="top" if many else "bottom", fontsize=7 if many else 8, rotation=90 if many else 0)


def _bar_row(runs, panels, path: Path, title: str | None = None) -> Path:
    """One figure, one bar panel per (title, values) pair: side by side, or one above the other where the runs
    are many (side by side, 56 runs made a figure 94 inches wide)."""
    width, height = max(4, 0.42 * len(runs)), 4.5 + 0.08 * len(runs)
    fig, axes, stacked = panel_axes(len(runs), len(panels), (1, len(panels)), (width * len(panels), height), 4)
    for ax, (panel_title, values) in zip(axes, panels):
        _bars(ax, runs, values, panel_title)
    if title and stacked:  # a figure title would sit on the first panel's
        axes[0].set_title(f"{title}: {axes[0].get_title()}")
    elif title:
        fig.suptitle(title)
    return _save(fig, path)


def panel_axes(n_runs: int, n_panels: int, few_grid: tuple[int, int], few_size: tuple[float, float],
               min_width: float = 14) -> tuple:
    """(figure, its axes in order, stacked) for n_panels bar panels over n_runs runs: few_grid at few_size, or,
    where the runs are many, one wide panel per row so that every bar keeps room for its name."""
    stacked = n_runs > MANY_POINTS and n_panels > 1
    if stacked:
        fig, axes = plt.subplots(n_panels, 1, squeeze=False,
                                 figsize=(max(min_width, 0.42 * n_runs), (4.5 + 0.08 * n_runs) * n_panels))
    else:
        fig, axes = plt.subplots(*few_grid, squeeze=False, figsize=few_size)
    return fig, list(axes.flat), stacked


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


MANY_POINTS = 10  # more runs than this in one plot: coloured by variant (one legend entry each), not run by run


def run_styles(runs) -> list[tuple[str, str | None]]:
    """(colour, legend label or None) per run: a colour and the run's label each where the runs are few; where
    they are many, one colour per variant, labelled on its first run only (56 labels would hide the curves)."""
    if len(runs) <= MANY_POINTS:
        return [(f"C{i}", r["label"]) for i, r in enumerate(runs)]
    variants = list(dict.fromkeys(str(r["info"].get("variant")) for r in runs))
    seen: set[str] = set()
    styles = []
    for r in runs:
        v = str(r["info"].get("variant"))
        styles.append((f"C{variants.index(v)}", None if v in seen else v))
        seen.add(v)
    return styles


def run_legend(ax, runs, **kwargs) -> None:
    """The legend of a plot drawn with run_styles: beside the axes, titled "variant", where the runs are many."""
    if len(runs) > MANY_POINTS:
        ax.legend(fontsize=7, title="variant", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(**{"fontsize": 7, **kwargs})


def plot_training_curves(runs, out: Path) -> Path | None:
    with_curves = [r for r in runs if r["info"].get("training", {}).get("curves", {}).get("tokens")]
    if not with_curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(14 if len(with_curves) > MANY_POINTS else 12, 4.5))
    for r, (colour, label) in zip(with_curves, run_styles(with_curves)):
        c = r["info"]["training"]["curves"]
        axes[0].plot(c["tokens"], c["loss"], color=colour, label=label)
        axes[1].plot(c["tokens"], c["l0"], color=colour, label=label)
    axes[0].set(title="training loss (normalized activations)", xlabel="training tokens", ylabel="loss", yscale="log")
    axes[1].set(title="L0 per token during training", xlabel="training tokens", ylabel="active features", yscale="log")
    run_legend(axes[1] if len(with_curves) > MANY_POINTS else axes[0], with_curves, fontsize=8)
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
    return _bar_row(runs, panels, out / "core_metrics.png", "SAEBench core on held-out text")


def plot_sparsity(runs, out: Path) -> Path | None:
    if not runs:
        return None
    core_runs = _with_core(runs)
    fig, axes, _ = panel_axes(len(runs), 3, (1, 3), (14, 4.5))
    if core_runs:
        m = [r["info"]["core"]["eval_result_metrics"]["sparsity"] for r in core_runs]
        _bars(axes[0], core_runs, [x["l0"] for x in m], "L0 (held-out)")
        _bars(axes[1], core_runs, [x["l1"] for x in m], "L1 of feature activations (held-out)")
    _bars(axes[2], runs, [r["info"]["training"]["final"].get("dead_frac", float("nan")) for r in runs], "dead fraction (end of training)")
    return _save(fig, out / "sparsity.png")


def plot_l0_vs_ce(runs, out: Path) -> Path | None:
    runs = _with_core(runs)
    if not runs:
        return None
    many = len(runs) > MANY_POINTS  # a name beside every point would be unreadable: one colour per variant
    fig, ax = plt.subplots(figsize=(8.5 if many else 6.5, 5))
    at: dict[tuple, list[str]] = {}  # runs at the same point (to 3 digits) share one label instead of overprinting
    for r, (colour, label) in zip(runs, run_styles(runs)):
        m = r["info"]["core"]["eval_result_metrics"]
        x, y = m["sparsity"]["l0"], m["model_performance_preservation"]["ce_loss_score"]
        ax.scatter(x, y, color=colour, s=30 if many else 50, label=label if many else None)
        at.setdefault((f"{x:.3g}", f"{y:.3g}"), []).append((x, y, r["label"]))
    for same in at.values() if not many else ():
        ax.annotate(", ".join(label for _, _, label in same), same[0][:2], textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    if many:
        run_legend(ax, runs)
    ax.set(xlabel="L0 (held-out)", ylabel="CE-loss score", title="sparsity vs. model-loss preservation")
    m = [r["info"]["core"]["eval_result_metrics"] for r in runs]
    readable_axis(ax, "x", [x["sparsity"]["l0"] for x in m], log=True)
    readable_axis(ax, "y", [x["model_performance_preservation"]["ce_loss_score"] for x in m])
    ax.grid(alpha=0.3)
    return _save(fig, out / "l0_vs_ce_loss.png")


def plain_number(v: float, _pos=None) -> str:
    """A tick label as a person writes it: 40, 0.857, 1e-05 (never matplotlib's 3.36422x10^1 or an offset)."""
    return f"{v:.4g}"


def readable_axis(ax, which: str, values, log: bool = False) -> None:
    """Sensible limits and plain tick labels whatever the points' spread: at least 2% of their magnitude is
    shown (near-identical points sit together instead of being blown up to a range of 1e-5 with an offset),
    15% padding beyond their range otherwise; a log scale only where the values span 3x or more."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    axis = ax.xaxis if which == "x" else ax.yaxis
    set_lim, set_scale = (ax.set_xlim, ax.set_xscale) if which == "x" else (ax.set_ylim, ax.set_yscale)
    if log and lo > 0 and hi / lo >= 3:
        set_scale("log")
        set_lim(lo / 1.25, hi * 1.25)
        axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))  # 10, 20, 50, 100: not only the decades
        axis.set_major_formatter(FuncFormatter(plain_number))
        axis.set_minor_formatter(NullFormatter())
        return
    pad = max((hi - lo) * 0.15, max(abs(lo), abs(hi), 1e-12) * 0.01)
    set_lim(lo - pad, hi + pad)
    axis.set_major_formatter(FuncFormatter(plain_number))


def _with(runs, key):
    return [r for r in runs if isinstance(r["info"].get(key), dict) and r["info"][key].get("status") != "error"]


def plot_sparse_probing(runs, out: Path) -> Path | None:
    runs = _with(runs, "sparse_probing")
    if not runs:
        return None
    columns = 1 + (len(runs) + 2) // 24  # legend columns beside the axes: many runs never cover the curves
    fig, ax = plt.subplots(figsize=(7.5 + (2.6 * columns if len(runs) > 6 else 0), 5))
    bands = seed_bands(runs, [r["info"]["sparse_probing"]["sae_top_k_test_accuracy"] for r in runs])
    llm_curves: list[tuple] = []
    for i, r in enumerate(runs):
        sp = r["info"]["sparse_probing"]
        ks = sorted(sp["sae_top_k_test_accuracy"], key=int)
        ax.plot([int(k) for k in ks], [sp["sae_top_k_test_accuracy"][k] for k in ks], "o-", color=f"C{i}",
                label=f"{r['label']} SAE" + (" (its seeds' range shaded)" if bands[i] else ""))
        _band(ax, bands[i], f"C{i}")
        llm = sp.get("llm_top_k_test_accuracy") or {}
        curve = tuple((int(k), round(llm[k], 6)) for k in ks if llm.get(k) is not None)
        if curve and curve not in llm_curves:  # model-only: one curve for all the SAEs on one model, hook and texts
            llm_curves.append(curve)
            ax.plot([k for k, _ in curve], [v for _, v in curve], "x--", color="black" if len(llm_curves) == 1 else f"C{i}",
                    alpha=0.7, label="LLM residual stream" + ("" if len(llm_curves) == 1 else f" ({r['label']})"))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xscale="log", xlabel="k (features / residual dimensions the probe may use)", ylabel="test accuracy",
           title="sparse probing (mean over datasets)")
    _integer_ticks(ax, [1, 2, 5, 10, 20, 50, 100])
    if len(runs) > 6:
        ax.legend(fontsize=7, ncol=columns, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "sparse_probing.png")


def _integer_ticks(ax, ticks):
    """Plain integer tick labels on a log axis (matplotlib's default writes 2x10^0, 3x10^0, ...)."""
    lo, hi = ax.get_xlim()
    shown = [t for t in ticks if lo <= t <= hi]
    ax.set_xticks(shown, [str(t) for t in shown])
    ax.minorticks_off()


def _bars_or_na(ax, runs, values, title):
    """Bars for numbers; "n/a" written where a score could not be measured (never drawn as 0)."""
    _bars(ax, runs, [0.0 if v is None else v for v in values], title, ranges=seed_ranges(runs, values))
    for i, v in enumerate(values):
        if v is None:
            ax.patches[i].set_alpha(0)
            ax.texts[i].set_text("n/a")
    if all(v is None for v in values):  # nothing measured: no scale to read
        ax.set_ylim(0, 1)
        ax.set_yticks([])


def plot_unlearning(runs, out: Path) -> Path | None:
    runs = _with(runs, "unlearning")
    if not runs:
        return None
    u = [r["info"]["unlearning"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    _bars_or_na(axes[0], runs, [x["loss_unlearning_score"] for x in u],
                f"loss-based: forget-loss rise at retain +{u[0]['loss_score_tolerance']:.0%}\n(score half, family chosen on the select half)")
    _bars_or_na(axes[1], runs, [x["mcq_unlearning_score"] for x in u], "SAEBench MCQ unlearning score")
    ax = axes[2]
    for i, (r, x) in enumerate(zip(runs, u)):
        curve = x.get("loss_curve") or []  # older runs have no curve
        if curve:
            ax.plot([100 * p["retain_loss_increase"] for p in curve], [100 * p["forget_loss_increase"] for p in curve],
                    "o", color=f"C{i}", ms=4, label=r["label"])
    ax.axvline(100 * u[0]["loss_score_tolerance"], color="gray", ls="--", lw=1, label="retain tolerance")
    if not any(x.get("loss_curve") for x in u):
        ax.text(0.5, 0.5, "no run has the curve\n(made before it was recorded)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xscale="symlog", xlabel="retain-loss rise, % (select half)", ylabel="forget-loss rise, % (select half)",
           title="every intervention of the sweep")
    ax.xaxis.set_major_locator(SymmetricalLogLocator(linthresh=1, base=10, subs=[1, 2, 5]))
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out / "unlearning.png")


def plot_scr_tpp_absorption(runs, out: Path) -> Path | None:
    panels = [(k, _with(runs, k)) for k in ("scr", "tpp")]
    absorbed = _with(runs, "absorption")
    if not any(p for _, p in panels) and not absorbed:
        return None
    bars_width = max(16 / 3, 0.42 * len(absorbed))  # the absorption panel widens with its bars (labels side by side)
    fig, axes = plt.subplots(1, 3, figsize=(2 * 16 / 3 + bars_width, 4.5 + 0.08 * len(absorbed)),
                             gridspec_kw={"width_ratios": [16 / 3, 16 / 3, bars_width]})
    for ax, (key, these) in zip(axes, panels):
        bands = seed_bands(these, [r["info"][key]["metric_by_n_latents"] for r in these])  # None: no range there
        for i, r in enumerate(these):
            m = r["info"][key]["metric_by_n_latents"]
            ns = [n for n in sorted(m, key=int) if m[n] is not None]
            ax.plot([int(n) for n in ns], [m[n] for n in ns], "o-", color=f"C{i}",
                    label=r["label"] + (" (its seeds' range shaded)" if bands[i] else ""))
            _band(ax, bands[i], f"C{i}")
        title = "SCR (spurious-correlation removal)" if key == "scr" else "TPP (targeted probe perturbation)"
        ax.set(xscale="log", xlabel="latents ablated", ylabel="metric", title=title)
        _integer_ticks(ax, [2, 5, 10, 20, 50, 100, 500])
        ax.grid(alpha=0.3)
        if these:
            ax.legend(fontsize=7)
    if absorbed:
        _bars_or_na(axes[2], absorbed, [r["info"]["absorption"].get("mean_absorption_fraction_score")
                                        for r in absorbed], "absorption fraction (first letter; lower is better)")
    return _save(fig, out / "scr_tpp_absorption.png")


# One panel per term a variant adds to the loss, from the variant registry (its LOSS_TERM); variants that add
# the same term (TopK's AuxK, also BatchTopK's and Matryoshka's) share its panel.
EXTRA_TERMS = {term: ", ".join(n for n, m in VARIANTS.items() if m.LOSS_TERM and m.LOSS_TERM[0] == term) + f" ({what})"
               for term, what in dict(m.LOSS_TERM for m in VARIANTS.values() if m.LOSS_TERM).items()}


def plot_variant_terms(runs, out: Path) -> Path | None:
    present = [k for k in EXTRA_TERMS if any(k in r["info"].get("training", {}).get("curves", {}) for r in runs)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 4.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        these = [r for r in runs if key in r["info"]["training"]["curves"]]
        for r, (colour, label) in zip(these, run_styles(these)):
            c = r["info"]["training"]["curves"]
            pts = [(t, v) for t, v in zip(c["tokens"], c[key]) if v is not None]
            ax.plot([t for t, _ in pts], [v for _, v in pts], color=colour, label=label)
        ax.set(title=EXTRA_TERMS[key], xlabel="training tokens", ylabel="term added to the loss")
        ax.title.set_fontsize(9)
        run_legend(ax, these)
        ax.grid(alpha=0.3)
    return _save(fig, out / "variant_terms.png")


RAW = "raw model activations"
DIAGNOSTIC_PANELS = [  # (key, title, (reference key, what the reference is) or None)
    ("nmi", "NMI: k-means of doc features vs labels", ("llm_nmi", RAW)),
    ("silhouette", "silhouette of doc features by class", ("llm_silhouette", RAW)),
    ("mig", "MIG over label factors", ("mig_null", "null: labels permuted (mean over runs)")),
    ("feature_corr_mean_abs", "feature activation |r| (mean over pairs)", None),
    ("decoder_cos_mean_abs", "decoder |cos| (mean over pairs)", None),
    ("domain_specific_share", "forget/retain-specific share of active features", None),
    ("cross_group_decoder_abs_cos", "decoder |cos| between forget and retain groups", None),
    ("firing_mi_bits", "MI(firing at t; at t+1), bits", None),
]


def plot_diagnostics(runs, out: Path) -> Path | None:
    runs = _with(runs, "diagnostics")
    if not runs:
        return None
    fig, axes, many = panel_axes(len(runs), len(DIAGNOSTIC_PANELS) + 1, (3, 3), (16, 12), 16)
    d = [r["info"]["diagnostics"] for r in runs]
    for ax, (key, title, reference) in zip(axes, DIAGNOSTIC_PANELS):
        _bars_or_na(ax, runs, [x.get(key) for x in d], title)
        values = [x.get(reference[0]) for x in d if x.get(reference[0]) is not None] if reference else []
        if values:  # the reference is the same for every run (raw activations) or a null: its mean
            ax.axhline(sum(values) / len(values), color="grey", ls="--", lw=1, label=reference[1])
            ax.legend(fontsize=7)
    ax = axes[len(DIAGNOSTIC_PANELS)]
    for r, x, (colour, label) in zip(runs, d, run_styles(runs)):
        lags = sorted(x["autocorrelation"], key=int)
        ax.plot([int(k) for k in lags], [x["autocorrelation"][k] for k in lags], "o-", color=colour,
                alpha=0.6 if many else 1.0, label=label)
    ax.set(xscale="log", xlabel="lag (tokens)", title="feature auto-correlation by lag")
    _integer_ticks(ax, [1, 2, 4, 8])
    run_legend(ax, runs)
    ax.grid(alpha=0.3)
    if many:  # a figure title would sit on the first panel's
        axes[0].set_title(f"the seeds' diagnostics (held-out text): {axes[0].get_title()}")
    else:
        fig.suptitle("the seeds' diagnostics (held-out text)")
    return _save(fig, out / "diagnostics.png")


def plot_final_metrics(runs, out: Path) -> Path | None:
    runs = _with_core(runs)
    if not runs:
        return None
    m = [r["info"]["core"]["eval_result_metrics"] for r in runs]
    panels = [
        ("final training loss", [r["info"]["training"]["final"].get("loss", float("nan")) for r in runs]),
        ("training steps", [r["info"]["training"]["n_steps"] for r in runs]),
        ("explained variance", [x["reconstruction_quality"]["explained_variance"] for x in m]),
        ("MSE per element", [x["reconstruction_quality"]["mse_per_element"] for x in m]),
        ("KL-divergence score", [x["model_behavior_preservation"]["kl_div_score"] for x in m]),
    ]
    return _bar_row(runs, panels, out / "final_metrics.png")


def changed_settings(info: dict) -> str:
    """The variant settings that differ from the variant's defaults, e.g. "l1_coefficient=1.3"."""
    variant = VARIANTS.get(info.get("variant"))
    defaults = dataclasses.asdict(variant.Config()) if variant else {}  # a variant this checkout lacks: show all
    cfg = info.get("config", {})
    # runs made before the config had sections kept the variant's settings under "variant_config"
    settings = cfg["variant"] if isinstance(cfg.get("variant"), dict) else cfg.get("variant_config", {})
    out = [f"{k}={v}" for k, v in settings.items() if defaults.get(k, object()) != v]
    return ", ".join(out) or "defaults"


# (column, where in final_info.json): the runs table's numbers
TABLE_METRICS = [
    ("L0", ("summary", "l0")), ("EV", ("summary", "explained_variance")), ("CE score", ("summary", "ce_loss_score")),
    ("KL score", ("summary", "kl_div_score")), ("NMI", ("diagnostics", "nmi")),
    ("silhouette", ("diagnostics", "silhouette")), ("MIG", ("diagnostics", "mig")),
    ("MIG null", ("diagnostics", "mig_null")), ("FactorVAE", ("diagnostics", "factorvae")),
    ("FactorVAE null", ("diagnostics", "factorvae_null")), ("feat. abs r", ("diagnostics", "feature_corr_mean_abs")),
    ("dec. abs cos", ("diagnostics", "decoder_cos_mean_abs")), ("domain-spec.", ("diagnostics", "domain_specific_share")),
    ("forget x retain abs cos", ("diagnostics", "cross_group_decoder_abs_cos")),
    ("autocorr lag 1", ("diagnostics", "autocorrelation", "1")), ("firing MI (bits)", ("diagnostics", "firing_mi_bits")),
]
NOISE_MARK = "~"


def metric_values(info: dict) -> dict[str, float | None]:
    return {name: lookup(info, path) for name, path in TABLE_METRICS}


def budget_key(info: dict) -> str | None:
    """What a run shares with others of the same comparison: its config without the variant, its
    settings, the seed and the system section (None for runs made before the config had sections)."""
    cfg = info.get("config", {})
    if not isinstance(cfg.get("target"), dict) or info.get("status") != "ok":
        return None
    target = {k: v for k, v in cfg["target"].items() if k != "variant"}
    training = {k: v for k, v in cfg.get("training", {}).items() if k != "seed"}
    return json.dumps([target, training, cfg.get("evals")], sort_keys=True)


def baseline_spread(runs) -> dict[str, dict]:
    """{budget key: {"n_seeds", "runs", "mean": {metric: v}, "spread": {metric: max - min}}} for every
    budget with >= 3 runs of the baseline (relu, default settings) that differ only in the seed."""
    groups: dict[str, list] = {}
    for r in runs:
        key = budget_key(r["info"])
        if key and r["info"].get("variant") == "relu" and changed_settings(r["info"]) == "defaults":
            groups.setdefault(key, []).append(r)
    out = {}
    for key, group in groups.items():
        seeds = {r["info"]["config"]["training"]["seed"] for r in group}
        if len(seeds) < 3:
            continue
        values = [metric_values(r["info"]) for r in group]
        mean, spread = {}, {}
        for name, _ in TABLE_METRICS:
            vs = [v[name] for v in values if v[name] is not None]
            mean[name] = float(np.mean(vs)) if len(vs) == len(values) else None
            spread[name] = float(max(vs) - min(vs)) if len(vs) == len(values) else None
        out[key] = {"n_seeds": len(seeds), "runs": [r["name"] for r in group], "mean": mean, "spread": spread}
    return out


def write_table(runs, out: Path) -> Path:
    """One row per run. Where >= 3 baseline seeds share a run's budget, a row gives their mean and
    spread (max - min), and a number of a run with that budget within the spread of the baseline mean
    is marked NOISE_MARK: the seed alone moves the baseline that much."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    spreads = baseline_spread(runs)
    head = ["run", "variant", "settings", "tokens"] + [name for name, _ in TABLE_METRICS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        info, s = r["info"], r["info"].get("summary", {})
        base = spreads.get(budget_key(info))
        cells = [r["name"], info.get("variant", "?") + ("" if info.get("status") == "ok" else " (FAILED)"),
                 changed_settings(info), f"{s.get('n_tokens', 0):,}"]
        for name, v in metric_values(info).items():
            noise = (base is not None and r["name"] not in base["runs"] and v is not None
                     and base["spread"][name] is not None and abs(v - base["mean"][name]) <= base["spread"][name])
            cells.append(fmt(v) + (NOISE_MARK if noise else ""))
        rows.append("| " + " | ".join(cells) + " |")
    for base in spreads.values():
        rows.append("| " + " | ".join([f"baseline mean ({base['n_seeds']} seeds: {', '.join(base['runs'])})", "relu",
                                       "defaults", ""] + [fmt(base["mean"][n]) for n, _ in TABLE_METRICS]) + " |")
        rows.append("| " + " | ".join(["baseline seed spread (max - min)", "relu", "defaults", ""]
                                      + [fmt(base["spread"][n]) for n, _ in TABLE_METRICS]) + " |")
    if spreads:
        rows += ["", f"{NOISE_MARK}: within the baseline's seed spread of the baseline mean, same budget: noise, not a finding."]
    path = out / "runs_table.md"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_index(runs, out: Path, written: list[Path]) -> Path:
    """figures/index.html: the runs table, each run's feature pages (evals/features.py) and every figure,
    with relative links, so the folder opens from disk with no network."""
    import html
    import os

    table = (out / "runs_table.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table if line.startswith("|")]
    note = [line for line in table if line and not line.startswith("|")]
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    table_html = ("<table><tr>" + cells(rows[0], "th") + "</tr>" +
                  "".join("<tr>" + cells(r, "td") + "</tr>" for r in rows[2:]) + "</table>" +
                  "".join(f"<p>{html.escape(n)}</p>" for n in note))
    links = []
    for r in runs:
        page = Path(r.get("dir", r["name"])) / "features" / "index.html"
        target = (f"<a href='{html.escape(os.path.relpath(page, out))}'>feature pages</a>" if page.exists()
                  else "<span class=dim>no feature pages (run without the features eval)</span>")
        links.append(f"<li>{html.escape(r['label'])}: {target}</li>")
    figures = "".join(f"<h3>{html.escape(p.stem)}</h3><img src='{html.escape(p.name)}' alt='{html.escape(p.stem)}'>"
                      for p in written if p.suffix == ".png")
    path = out / "index.html"
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>SAE runs</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border-bottom:1px solid #ddd;padding:3px 7px;text-align:left}} th{{background:#f4f4f4}}
img{{max-width:100%;border:1px solid #eee}} .dim{{color:#888}}</style></head><body>
<h1>SAE runs ({len(runs)})</h1><h2>Runs table</h2>{table_html}
<h2>Feature pages</h2><ul>{"".join(links)}</ul><h2>Figures</h2>{figures}</body></html>""")
    return path

# ---- the sparsity frontier: metrics against L0, per variant, beside the baseline's seeds ----------------

BASELINE = "relu"
FRONTIER_METRICS = [("CE-loss score", ("summary", "ce_loss_score")), ("explained variance", ("summary", "explained_variance")),
                    ("KL score", ("summary", "kl_div_score"))]
MATCHED_L0 = (20, 40, 80)
# in the matched-L0 table for every variant whose runs hold them (sparse probing and absorption are added to a
# comparison's runs afterwards, reevaluate.py): k-sparse probing is the metric the 2026 SAEBench audit found most
# reliable; absorption is what Matryoshka SAEs are meant to reduce
MATCHED_EXTRA = [("sparse probing top-1", ("sparse_probing", "sae_top_k_test_accuracy", "1")),
                 ("sparse probing top-5", ("sparse_probing", "sae_top_k_test_accuracy", "5")),
                 ("absorption fraction", ("absorption", "mean_absorption_fraction_score")),
                 ("full absorption", ("absorption", "mean_full_absorption_score"))]


def lookup(info: dict, path) -> float | None:
    v = info
    for key in path:
        v = v.get(key) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def comparison_key(info: dict) -> str:
    """What the runs of one comparison share: the target (model, hook, data) without the variant, and the
    training settings without the seed."""
    cfg = info.get("config", {})
    return json.dumps([{k: v for k, v in cfg.get("target", {}).items() if k != "variant"},
                       {k: v for k, v in cfg.get("training", {}).items() if k != "seed"}], sort_keys=True)


def frontier_series(runs) -> dict[tuple[str, str], dict]:
    """(comparison key, series label) -> {"variant", "seeds": {seed: [(L0, info), ...] by L0}} for every finished
    run with a core eval: a series is one variant with one setting of everything but its sparsity setting (its
    SPARSITY knob) and the seed; the comparison key is the run's model, hook, data and training settings."""
    out: dict[tuple[str, str], dict] = {}
    for r in runs:
        info = r["info"]
        variant, cfg = VARIANTS.get(info.get("variant")), info.get("config", {})
        l0 = lookup(info, ("summary", "l0"))
        if variant is None or info.get("status") != "ok" or l0 is None or not isinstance(cfg.get("target"), dict):
            continue
        knob = variant.SPARSITY[0]
        key = comparison_key(info)
        others = ", ".join(s for s in changed_settings(info).split(", ") if not s.startswith(f"{knob}="))
        label = info["variant"] + ("" if others in ("", "defaults") else f" ({others})")
        series = out.setdefault((key, label), {"variant": info["variant"], "seeds": {}})
        series["seeds"].setdefault(cfg["training"].get("seed", 0), []).append((l0, info))
    for series in out.values():
        for points in series["seeds"].values():
            points.sort(key=lambda p: p[0])
    # a frontier needs two sparsity settings: a single setting (a dose-response run) is not drawn as one
    return {k: s for k, s in out.items()
            if len({str(i["config"]["variant"].get(VARIANTS[s["variant"]].SPARSITY[0])) for p in s["seeds"].values() for _, i in p}) >= 2}


def at_l0(points, target: float, path) -> float | None:
    """The metric at L0 = target, linear in log L0 between the two nearest points; None outside the points'
    L0 range (no extrapolation) or where a needed value is missing."""
    pairs = [(math.log(l0), v) for l0, info in points if l0 > 0 and (v := lookup(info, path)) is not None]
    xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
    if len(xs) < 2 or not xs[0] <= math.log(target) <= xs[-1]:
        return None
    return float(np.interp(math.log(target), xs, ys))


def matched(series: dict, target: float, path) -> tuple[float | None, float | None, int]:
    """(mean over seeds, spread max - min over seeds or None with one seed, seeds) at L0 = target."""
    values = [v for v in (at_l0(p, target, path) for p in series["seeds"].values()) if v is not None]
    if not values:
        return None, None, 0
    return float(np.mean(values)), (float(max(values) - min(values)) if len(values) > 1 else None), len(values)


def target_metrics(variant: str) -> list[tuple[str, tuple]]:
    return list(getattr(VARIANTS.get(variant), "TARGET_METRICS", ()))


def write_matched_table(runs, out: Path, sample: dict[str, float] | None = None) -> Path | None:
    """frontier_table.md: for every variant and metric, its value at fixed L0s (interpolated along its frontier),
    the baseline's, the difference, and whether the difference exceeds the seed spread (max - min over seeds of
    the baseline, and of the variant where it has several) and, where the eval-noise study measured it (`sample`,
    sample_noise: how far the eval sample alone moves a difference between two SAEs), that too: only then is it
    a finding. Three seeds' range can fall short of a metric's sample noise where that noise is each SAE's own
    (which latents a probe picks): the study's figure keeps such a metric from being called on too little."""
    sample = sample or {}
    all_series = frontier_series(runs)
    keys = {key for key, label in all_series if label == BASELINE}
    lines = []
    for key in sorted(keys):
        base = all_series[(key, BASELINE)]
        others = [(label, s) for (k, label), s in sorted(all_series.items()) if k == key and label != BASELINE]
        setup = json.loads(key)
        lines += [f"## {setup[1].get('n_tokens', 0):,} training tokens, {setup[0].get('model')} {setup[0].get('hook')}",
                  f"Baseline: {BASELINE}, {len(base['seeds'])} seed(s). Each cell: the variant's value at that L0 "
                  "(mean over its seeds), the baseline's, the difference, and whether it exceeds the seed spread "
                  "(the larger of the baseline's and the variant's max - min over seeds) and, where the eval-noise "
                  "study measured it (noise_table.md), the eval sample's (how far the sample alone moves a "
                  "difference between two SAEs): **yes** is a finding, no is no measurable difference at this "
                  "budget; - where an L0 lies outside a frontier's range.", ""]
        common = FRONTIER_METRICS + MATCHED_EXTRA
        metrics = common + [m for label, s in others for m in target_metrics(s["variant"]) if m not in common]
        for name, path in dict.fromkeys(metrics):
            rows = []
            for label, s in others:
                if (name, path) not in common and (name, path) not in target_metrics(s["variant"]):
                    continue
                cells = []
                for l0 in MATCHED_L0:
                    v, v_spread, _ = matched(s, l0, path)
                    b, b_spread, n_base = matched(base, l0, path)
                    if v is None or b is None:
                        cells.append("-")
                        continue
                    spread = max(x for x in (b_spread, v_spread, 0.0) if x is not None)
                    noise = max(spread, sample.get(name, 0.0))
                    verdict = ("no seed spread" if b_spread is None and v_spread is None
                               else ("**yes**" if abs(v - b) > noise else "no"))
                    of = f"spread {spread:.2g}" + (f", eval sample {sample[name]:.2g}" if name in sample else "")
                    cells.append(f"{v:.4g} vs {b:.4g}: {v - b:+.3g} ({of}) {verdict}")
                if any(c != "-" for c in cells):  # a metric only some runs hold: rows where it is matched somewhere
                    rows.append(f"| {label} | " + " | ".join(cells) + " |")
            if rows:
                lines += [f"### {name}", "", "| variant | " + " | ".join(f"L0 {l0}" for l0 in MATCHED_L0) + " |",
                          "|---|" + "---|" * len(MATCHED_L0), *rows, ""]
    if not lines:
        return None
    path = out / "frontier_table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_frontiers(runs, out: Path) -> Path | None:
    """frontiers.png: L0 against CE-loss score, explained variance and each variant's target metric, one line per
    variant (mean over its seeds at each setting), the baseline's seed range shaded."""
    all_series = frontier_series(runs)
    keys = sorted({key for key, label in all_series if label == BASELINE})
    if not keys:
        return None
    series = {label: s for (k, label), s in all_series.items() if k == keys[0]}  # the first comparison drawn
    targets = [m for s in series.values() for m in target_metrics(s["variant"])]
    panels = [(n, p, None) for n, p in FRONTIER_METRICS[:2]] + [(n, p, n) for n, p in dict.fromkeys(targets)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    colours = {label: f"C{i}" for i, label in enumerate(sorted(series, key=lambda x: (x != BASELINE, x)))}
    for ax, (name, path, target) in zip(axes[0], panels):
        xs_all, ys_all = [], []
        for label, s in sorted(series.items(), key=lambda x: (x[0] != BASELINE, x[0])):
            if target and label != BASELINE and (name, path) not in target_metrics(s["variant"]):
                continue
            knob = VARIANTS[s["variant"]].SPARSITY[0]
            by_setting: dict[str, list[tuple[float, float]]] = {}  # the seeds of one sparsity setting together
            for points in s["seeds"].values():
                for l0, info in points:
                    if lookup(info, path) is not None:
                        by_setting.setdefault(str(info["config"]["variant"].get(knob)), []).append((l0, lookup(info, path)))
            rows = sorted((float(np.mean([p[0] for p in v])), float(np.mean([p[1] for p in v])),
                           min(p[1] for p in v), max(p[1] for p in v)) for v in by_setting.values())
            if not rows:
                continue
            x, y, lo, hi = (list(c) for c in zip(*rows))
            n_seeds = len(s["seeds"])
            ax.plot(x, y, "o-", color=colours[label], lw=2 if label == BASELINE else 1.3,
                    label=label + (f" ({n_seeds} seeds)" if n_seeds > 1 else ""))
            if n_seeds > 1:
                ax.fill_between(x, lo, hi, color=colours[label], alpha=0.18 if label == BASELINE else 0.1, lw=0)
            xs_all += x
            ys_all += lo + hi
        ax.set(xlabel="L0 (held-out)", ylabel=name, title=f"{name} against L0" + (" (its target)" if target else ""))
        readable_axis(ax, "x", xs_all, log=True)
        readable_axis(ax, "y", ys_all)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "frontiers.png")


# ---- dose-response: a seed variant's term weight against its target metric and its cost ------------------

DOSE_KNOB = "weight"


def dose_groups(runs) -> list[dict]:
    """One group per (comparison, variant, every setting but the term's weight, seed) holding >= 3 weights:
    {"variant", "sparsity": (knob, value), "seed", "points": [(weight, info), ...] by weight, "baseline": [infos]},
    the baseline's runs being its seeds at the same sparsity setting, same comparison."""
    groups: dict[str, dict] = {}
    for r in runs:
        info = r["info"]
        variant, cfg = VARIANTS.get(info.get("variant")), info.get("config", {})
        if (variant is None or info.get("status") != "ok" or not getattr(variant, "TARGET_METRICS", ())
                or not isinstance(cfg.get("variant"), dict) or DOSE_KNOB not in cfg["variant"]
                or not isinstance(cfg.get("target"), dict)):
            continue
        knob = variant.SPARSITY[0]
        setup, seed = comparison_key(info), cfg.get("training", {}).get("seed", 0)
        others = {k: v for k, v in cfg["variant"].items() if k != DOSE_KNOB}
        key = json.dumps([setup, seed, info["variant"], others], sort_keys=True, default=str)
        g = groups.setdefault(key, {"variant": info["variant"], "sparsity": (knob, cfg["variant"].get(knob)),
                                    "seed": seed, "setup": setup, "points": []})
        g["points"].append((float(cfg["variant"][DOSE_KNOB]), info))
    out = []
    for g in groups.values():
        if len({w for w, _ in g["points"]}) < 3:
            continue
        g["points"].sort(key=lambda p: p[0])
        knob, value = g["sparsity"]
        g["baseline"] = [r["info"] for r in runs if r["info"].get("variant") == BASELINE and r["info"].get("status") == "ok"
                         and isinstance(r["info"].get("config", {}).get("variant"), dict)
                         and r["info"]["config"]["variant"].get(knob) == value
                         and changed_settings(r["info"]) in ("defaults", f"{knob}={value}")
                         and comparison_key(r["info"]) == g["setup"]]
        out.append(g)
    return sorted(out, key=lambda g: g["variant"])


def plot_dose_response(runs, out: Path) -> Path | None:
    """dose_response.png: per seed variant (columns), its target metric (top) and the CE-loss score (bottom)
    against its term's weight (log axis; weight 0, the term off, as a dashed line), the baseline's seeds at the
    same sparsity setting shaded, each point's L0 written beside it."""
    groups = dose_groups(runs)
    if not groups:
        return None
    fig, axes = plt.subplots(2, len(groups), figsize=(4.8 * len(groups), 8), squeeze=False)
    for col, g in enumerate(groups):
        (target_name, target_path), = target_metrics(g["variant"])[:1]
        for row, (name, path) in enumerate([(target_name, target_path), FRONTIER_METRICS[0]]):
            ax = axes[row][col]
            pts = [(w, lookup(i, path), lookup(i, ("summary", "l0"))) for w, i in g["points"]]
            pos = [(w, v, l0) for w, v, l0 in pts if w > 0 and v is not None]
            ys = [v for _, v, _ in pts if v is not None]
            if pos:
                ax.plot([p[0] for p in pos], [p[1] for p in pos], "o-", color="C1", label=g["variant"])
                for w, v, l0 in pos:
                    if l0 is not None:
                        ax.annotate(f"L0 {l0:.0f}", (w, v), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for w, v, l0 in pts:
                if w == 0 and v is not None:
                    ax.axhline(v, color="C1", ls="--", lw=1, label=f"weight 0 (term off), L0 {l0:.0f}" if l0 else "weight 0")
            base = [v for v in (lookup(i, path) for i in g["baseline"]) if v is not None]
            if base:
                ax.axhspan(min(base), max(base), color="C0", alpha=0.2,
                           label=f"{BASELINE} at the same {g['sparsity'][0]}, {len(base)} seed(s)")
                ys += base
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
            readable_axis(ax, "y", ys)
            ax.set(xlabel=f"{g['variant']}.{DOSE_KNOB}", ylabel=name,
                   title=f"{g['variant']}: {name}" + (" (its target)" if row == 0 else " (its cost)"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"dose-response at {groups[0]['sparsity'][0]}={groups[0]['sparsity'][1]}, seed {groups[0]['seed']}")
    return _save(fig, out / "dose_response.png")


def write_dose_table(runs, out: Path) -> Path | None:
    """dose_table.md: every dose-response point: weight, L0, CE-loss score, target metric(s)."""
    groups = dose_groups(runs)
    if not groups:
        return None
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    lines = []
    for g in groups:
        targets = target_metrics(g["variant"])
        knob, value = g["sparsity"]
        lines += [f"### {g['variant']} ({knob}={value}, seed {g['seed']})", "",
                  "| weight | L0 | CE-loss score | EV | " + " | ".join(n for n, _ in targets) + " |",
                  "|---|---|---|---|" + "---|" * len(targets)]
        for w, i in g["points"]:
            cells = [f"{w:g}"] + [fmt(lookup(i, p)) for p in (("summary", "l0"), FRONTIER_METRICS[0][1], FRONTIER_METRICS[1][1])]
            lines.append("| " + " | ".join(cells + [fmt(lookup(i, p)) for _, p in targets]) + " |")
        base = g["baseline"]
        if base:
            spread = lambda p: (lambda vs: f"{fmt(min(vs))}-{fmt(max(vs))}" if vs else "n/a")(  # noqa: E731
                [v for v in (lookup(i, p) for i in base) if v is not None])
            lines.append(f"| {BASELINE}, {len(base)} seeds (range) | {spread(('summary', 'l0'))} | {spread(FRONTIER_METRICS[0][1])} | "
                         f"{spread(FRONTIER_METRICS[1][1])} | " + " | ".join(spread(p) for _, p in targets) + " |")
        lines.append("")
    path = out / "dose_table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- eval noise: what each metric can resolve ------------------------------------------------------------

# (label, eval, path inside that eval's section of final_info.json / reevaluation.json)
NOISE_METRICS = [
    ("L0", "core", ("eval_result_metrics", "sparsity", "l0")),
    ("explained variance", "core", ("eval_result_metrics", "reconstruction_quality", "explained_variance")),
    ("CE-loss score", "core", ("eval_result_metrics", "model_performance_preservation", "ce_loss_score")),
    ("KL score", "core", ("eval_result_metrics", "model_behavior_preservation", "kl_div_score")),
    ("sparse probing top-1", "sparse_probing", ("sae_top_k_test_accuracy", "1")),
    ("sparse probing top-5", "sparse_probing", ("sae_top_k_test_accuracy", "5")),
    ("sparse probing all latents", "sparse_probing", ("sae_test_accuracy",)),
    ("SCR top-20", "scr", ("metric_by_n_latents", "20")),
    ("TPP top-20", "tpp", ("metric_by_n_latents", "20")),
    ("absorption fraction", "absorption", ("mean_absorption_fraction_score",)),
    ("full absorption", "absorption", ("mean_full_absorption_score",)),
    ("unlearning (loss)", "unlearning", ("loss_unlearning_score",)),
    ("NMI", "diagnostics", ("nmi",)), ("silhouette", "diagnostics", ("silhouette",)), ("MIG", "diagnostics", ("mig",)),
    ("FactorVAE", "diagnostics", ("factorvae",)), ("feature abs r", "diagnostics", ("feature_corr_mean_abs",)),
    ("forget x retain abs cos", "diagnostics", ("cross_group_decoder_abs_cos",)),
    ("autocorr lag 1", "diagnostics", ("autocorrelation", "1")),
]
# the same metric where the frontier reads it (final_info.json), for the spread between variants
FRONTIER_PATH = {"explained variance": ("summary", "explained_variance"), "CE-loss score": ("summary", "ce_loss_score"),
                 "KL score": ("summary", "kl_div_score")}


def load_reevaluations(pattern: str) -> list[dict]:
    """Every PATTERN/reevaluation.json (reevaluate.py --out_dir): an SAE evaluated again, e.g. at another eval seed."""
    out = []
    for path in sorted(map(Path, glob.glob(f"{pattern}/reevaluation.json"))):
        try:
            out.append({"name": path.parent.name, "info": json.loads(path.read_text())})
        except (OSError, json.JSONDecodeError) as err:
            print(f"skipping {path}: {err}", file=sys.stderr)
    return out


def eval_seed_of(reevaluation: dict) -> int:
    """The eval seed a reevaluation ran at: its evals' `seed` (unlearning: `split_seed`); 0 if none is set."""
    seeds = {v.get("seed", v.get("split_seed", 0)) for v in reevaluation.get("config", {}).get("evals", {}).values()}
    return max(seeds) if seeds else 0


RESEED_FIELDS = ("seed", "split_seed")  # an eval's sample; every other setting changes what is measured


def settings_changed(reevaluation: dict, source: dict) -> str:
    """The eval settings a reevaluation changed from its source run's own, other than the eval seed ("" if none).
    A reevaluation at other settings (fewer core batches, ...) is another study: never pooled with the default's."""
    held = source.get("config", {}).get("evals", {})
    changed = []
    for ev, settings in sorted(reevaluation.get("config", {}).get("evals", {}).items()):
        base = held.get(ev) if isinstance(held.get(ev), dict) else {}
        changed += [f"{ev}.{k}={v}" for k, v in sorted(settings.items())
                    if k not in RESEED_FIELDS and k in base and base[k] != v]
    return ", ".join(changed)


def noise_studies(runs, reevaluations) -> tuple[dict, dict[str, dict[str, list]]]:
    """(run by resolved folder, {changed settings ("" for the runs' own, first): {source run folder: its
    reevaluations}}), each study's sources ordered by their number of reevaluations, most first: the reference
    the paired differences are taken from."""
    by_dir = {str(Path(r["dir"]).resolve()): r for r in runs if "dir" in r}
    studies: dict[str, dict[str, list]] = {}
    for rv in reevaluations:
        src = str(Path(rv["info"].get("source_run", "")).resolve())
        if src in by_dir:
            studies.setdefault(settings_changed(rv["info"], by_dir[src]["info"]), {}).setdefault(src, []).append(rv)
    return by_dir, {c: dict(sorted(studies[c].items(), key=lambda item: -len(item[1]))) for c in sorted(studies)}


def sample_noise(runs, reevaluations) -> dict[str, float]:
    """Per metric, how far the eval sample alone moves a difference between two SAEs read on one sample: the
    largest range over eval seeds of a paired difference (the runs' own settings), or, where no pair was
    reevaluated, one SAE's reseed range (an upper bound: the sample can move both SAEs together)."""
    by_dir, studies = noise_studies(runs, reevaluations)
    sources = studies.get("", {})
    if not sources:
        return {}
    out: dict[str, float] = {}
    first = next(iter(sources))
    differences = paired_differences(by_dir, sources)
    for name, ev, path in NOISE_METRICS:
        pairs = [max(d) - min(d) for _, metric, diffs in differences if metric == name for d in [[x for _, x in diffs]]]
        own = [v for s in sorted({0} | {eval_seed_of(r["info"]) for r in sources[first]})
               for v in [value_at_eval_seed(by_dir[first]["info"], sources[first], s, ev, path)] if v is not None]
        if pairs:
            out[name] = max(pairs)
        elif len(own) > 1:
            out[name] = max(own) - min(own)
    return out


def write_noise_table(runs, reevaluations, out: Path) -> Path | None:
    """noise_table.md: for the SAE the reevaluations re-ran (eval seed changed, SAE fixed) and the other training
    seeds of its setting (SAE seed changed, eval seed 0), per metric: the reseed range, the training-seed range,
    the smallest difference it resolves (the larger of the two), and the range between the variants' frontiers
    at that SAE's L0; "separates variants" only where that range exceeds the smallest resolvable difference.
    Reevaluations at other eval settings than the runs' (settings_changed) form studies of their own: their
    eval seed 0 is a reevaluation too, their training-seed range is over the SAEs evaluated at those settings,
    and the frontiers (made at the runs' settings) are not compared with them."""
    by_dir, studies = noise_studies(runs, reevaluations)
    if not studies:
        return None
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    series = frontier_series(runs)
    lines = []
    for changed, sources in studies.items():
        for src, rvs in sources.items():
            lines += noise_section(by_dir[src], rvs, changed, runs, sources, by_dir, series, fmt)
        lines += paired_noise_lines(by_dir, sources, fmt, changed)
    path = out / "noise_table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def noise_section(fixed: dict, rvs: list[dict], changed: str, runs, sources: dict, by_dir: dict, series, fmt) -> list[str]:
    """One SAE's rows of noise_table.md (see write_noise_table)."""
    group = seed_group(fixed["info"])
    if changed:  # the training seeds evaluated at these settings: the sources of this study of the same setting
        seeds = [by_dir[s] for s in sources if seed_group(by_dir[s]["info"]) == group]
    else:
        seeds = [r for r in runs if seed_group(r["info"]) == group and r["info"].get("status") == "ok"]
    at = lambda info, r, s, ev, path: value_at_eval_seed(info, r, s, ev, path, from_run=not changed)  # noqa: E731
    eval_seeds = sorted(({0} if not changed else set()) | {eval_seed_of(r["info"]) for r in rvs})
    l0 = lookup(fixed["info"], ("summary", "l0"))
    key = comparison_key(fixed["info"])
    lines = [f"## {fixed['name']} ({fixed['info']['variant']}, {changed_settings(fixed['info'])}, L0 {fmt(l0)})"
             + (f": evals at {changed}" if changed else ""), "",
             f"Reseed: the same SAE at eval seeds {', '.join(str(s) for s in eval_seeds)}. "
             f"Training seeds: {len(seeds)} SAEs of this setting ({', '.join(r['name'] for r in seeds)}), eval seed 0"
             + (f", evaluated at {changed}" if changed else "") + ". Ranges are max - min. Resolvable: the larger of "
             "the two ranges, the least difference between two SAEs that is more than noise. Between variants: the "
             f"range of the variants' frontier values (mean over seeds) at L0 {fmt(l0)}, where the variants have that "
             "metric" + (" (not compared: the frontiers were evaluated at the runs' own settings)" if changed else "") + ".", "",
             "| metric | value | reseed range | training-seed range | resolvable | between variants | separates variants |",
             "|---|---|---|---|---|---|---|"]
    for name, ev, path in NOISE_METRICS:
        at_seed0 = at(fixed["info"], rvs, 0, ev, path)
        reseed = [v for v in (at(fixed["info"], rvs, s, ev, path) for s in eval_seeds) if v is not None]
        trained = [v for v in (at(r["info"], sources.get(str(Path(r["dir"]).resolve()), []), 0, ev, path)
                               for r in seeds) if v is not None]
        if at_seed0 is None and not trained:
            continue
        r_range = max(reseed) - min(reseed) if len(reseed) > 1 else None
        t_range = max(trained) - min(trained) if len(trained) > 1 else None
        resolvable = max((x for x in (r_range, t_range) if x is not None), default=None)
        fpath = FRONTIER_PATH.get(name, (ev, *path))  # where the frontier's runs hold it in final_info.json
        between = None
        if l0 is not None and name != "L0" and not changed:  # L0 is what the variants are matched at
            vals = [v for (k, _), s in series.items() if k == key for v in [matched(s, l0, fpath)[0]] if v is not None]
            between = max(vals) - min(vals) if len(vals) > 1 else None
        verdict = ("n/a" if between is None or resolvable is None
                   else ("**yes**" if between > resolvable else "no"))
        lines.append(f"| {name} | {fmt(at_seed0)} | {fmt(r_range)} | {fmt(t_range)} | {fmt(resolvable)} | "
                     f"{fmt(between)} | {verdict} |")
    return lines + [""]


def value_at_eval_seed(fixed: dict, rvs: list[dict], seed: int, ev: str, path, from_run: bool = True) -> float | None:
    """A metric of one SAE at one eval seed: seed 0 from its run (from_run; else from a reevaluation at seed 0, as
    for a study at other eval settings), another from a reevaluation at that seed that holds the eval (several
    reevaluations at one seed may each hold other evals)."""
    if seed == 0 and from_run:
        return lookup(fixed.get(ev) or {}, path)
    return next((v for r in rvs if eval_seed_of(r["info"]) == seed
                 for v in [lookup(r["info"].get(ev) or {}, path)] if v is not None), None)


def paired_noise_lines(by_dir: dict, sources: dict, fmt, changed: str = "") -> list[str]:
    """The SAE x eval-sample interaction: where two or more SAEs were evaluated again at the same eval seeds, the
    difference between each and the first at every eval seed they share, and that difference's range over the eval
    seeds. A comparison reads every SAE on one sample, so this range (not one SAE's reseed range, which moves both
    together) is how far the sample moves a difference between two SAEs."""
    srcs = list(sources)
    if len(srcs) < 2:
        return []
    first = by_dir[srcs[0]]
    lines = [f"## SAE x eval sample: differences from {first['name']} at each eval seed"
             + (f", evals at {changed}" if changed else ""), "",
             "Each row: another SAE minus the first, at every eval seed both were evaluated at"
             + (" (seed 0: the runs themselves)" if not changed else "") + ", and the range of that difference over "
             "the eval seeds, beside the first SAE's own reseed range. A paired difference that moves less than one "
             "SAE's value is a sample effect both share.", "",
             "| SAE minus " + first["name"] + " | metric | difference at eval seeds | range over eval seeds | "
             f"{first['name']}'s reseed range |", "|---|---|---|---|---|"]
    for other, name, diffs, own in paired_differences(by_dir, sources, changed, with_own=True):
        values = [d for _, d in diffs]
        lines.append(f"| {other} | {name} | " + ", ".join(f"{s}: {d:+.3g}" for s, d in diffs) +
                     f" | {fmt(max(values) - min(values))} | {fmt(max(own) - min(own) if len(own) > 1 else None)} |")
    return lines + [""]


def paired_differences(by_dir: dict, sources: dict, changed: str = "", with_own: bool = False) -> list[tuple]:
    """(other SAE's name, metric, [(eval seed, other - first)], and with_own the first SAE's values at those eval
    seeds) for every other source of a study and every metric both were measured on at two or more eval seeds."""
    srcs = list(sources)
    out = []
    for src in srcs[1:]:
        for name, ev, path in NOISE_METRICS:
            seeds = sorted(({0} if not changed else set()) | {eval_seed_of(r["info"]) for r in sources[src]}
                           | {eval_seed_of(r["info"]) for r in sources[srcs[0]]})
            diffs, own = [], []
            for s in seeds:
                a = value_at_eval_seed(by_dir[srcs[0]]["info"], sources[srcs[0]], s, ev, path, from_run=not changed)
                b = value_at_eval_seed(by_dir[src]["info"], sources[src], s, ev, path, from_run=not changed)
                own += [a] if a is not None else []
                if a is not None and b is not None:
                    diffs.append((s, b - a))
            if len(diffs) >= 2:
                out.append((by_dir[src]["name"], name, diffs, *([own] if with_own else [])))
    return out


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
    figures = (plot_training_curves, plot_core_metrics, plot_sparsity, plot_l0_vs_ce, plot_sparse_probing,
               plot_unlearning, plot_scr_tpp_absorption, plot_variant_terms, plot_diagnostics, plot_final_metrics,
               plot_frontiers, plot_dose_response)
    written = [p for p in (f(runs, out) for f in figures) if p] + [write_table(runs, out)]
    reevaluations = load_reevaluations(opts["runs_glob"])
    written += [p for p in [write_matched_table(runs, out, sample_noise(runs, reevaluations)), write_dose_table(runs, out),
                            write_noise_table(runs, reevaluations, out)] if p]
    written.append(write_index(runs, out, written))
    print(f"{len(runs)} runs -> " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
