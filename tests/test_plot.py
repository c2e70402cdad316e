import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fake_info(variant, l0, with_core=True):
    curves = {"tokens": [256, 512, 768], "loss": [50.0, 30.0, 20.0], "l0": [900.0, 100.0, l0]}
    info = {"status": "ok", "variant": variant, "core": None, "summary": {"n_tokens": 768, "l0": l0},
            "training": {"curves": curves, "final": {"dead_frac": 0.05, "loss": 20.0}, "n_steps": 3}}
    if with_core:
        info["core"] = {"eval_result_metrics": {
            "reconstruction_quality": {"explained_variance": 0.9, "mse_per_element": 200.0},
            "model_performance_preservation": {"ce_loss_score": 0.85},
            "model_behavior_preservation": {"kl_div_score": 0.86},
            "sparsity": {"l0": l0, "l1": 1500.0},
        }}
    return info


def with_evals(info, mcq=None, absorption=0.2):
    ks = {"1": 0.6, "2": 0.65, "5": 0.7, "10": 0.75, "20": 0.8, "50": 0.85}
    info["sparse_probing"] = {"sae_top_k_test_accuracy": ks, "llm_top_k_test_accuracy": {k: v + 0.05 for k, v in ks.items()}}
    info["unlearning"] = {"loss_unlearning_score": 0.12, "loss_score_tolerance": 0.01, "mcq_unlearning_score": mcq}
    info["scr"] = {"metric_by_n_latents": {"2": 0.1, "5": 0.2, "10": None}}
    info["tpp"] = {"metric_by_n_latents": {"2": 0.01, "5": 0.05, "10": 0.1}}
    info["absorption"] = {"status": "ok", "mean_absorption_fraction_score": absorption}
    info["diagnostics"] = {"status": "ok", "nmi": 0.3, "llm_nmi": 0.25, "silhouette": 0.05, "llm_silhouette": 0.04,
                           "mig": 0.02, "mig_null": 0.005, "feature_corr_mean_abs": 0.01, "decoder_cos_mean_abs": 0.03,
                           "domain_specific_share": 0.2, "cross_group_decoder_abs_cos": None, "firing_mi_bits": 0.003,
                           "autocorrelation": {"1": 0.05, "2": 0.02, "4": 0.015, "8": 0.01}}
    return info


def contrastive_info():
    info = with_evals(fake_info("contrastive", 40.0), 0.3)
    info["training"]["curves"]["contrastive_loss"] = [None, 0.4, 0.5]  # a term that starts after step 1
    from trainers import contrastive  # its own default L1 is left out of the table's settings; the weight is not
    info["config"] = {"variant": {"l1_coefficient": contrastive.Config().l1_coefficient, "weight": 0.5}}
    return info


def test_plot_writes_every_figure_and_skips_runs_without_core(tmp_path):
    old_format = fake_info("relu", 20.0, with_core=False)
    old_format["config"] = {"variant": "relu", "variant_config": {"l1_coefficient": 2.0, "l1_warm_up_frac": 0.05}}
    for name, info in {"run_0": with_evals(fake_info("relu", 34.0)), "run_1": contrastive_info(),
                       "run_2": old_format}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "final_info.json").write_text(json.dumps(info))
    proc = subprocess.run([sys.executable, str(ROOT / "plot.py")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for png in ("training_curves.png", "core_metrics.png", "sparsity.png", "l0_vs_ce_loss.png", "sparse_probing.png",
                "unlearning.png", "scr_tpp_absorption.png", "variant_terms.png", "diagnostics.png", "final_metrics.png"):
        path = tmp_path / "figures" / png
        assert path.stat().st_size > 5000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 runs" in proc.stdout
    table = (tmp_path / "figures" / "runs_table.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "| run_1 | contrastive | weight=0.5 | 768 | 40 |" in table[3]
    assert "n/a" in table[3]  # the cross-group cosine that could not be measured
    assert "| run_2 | relu | l1_coefficient=2.0 |" in table[4]  # a run recorded before the config had sections


def test_runs_glob_may_be_an_absolute_pattern(tmp_path):
    (tmp_path / "cmp" / "relu_0").mkdir(parents=True)
    (tmp_path / "cmp" / "relu_0" / "final_info.json").write_text(json.dumps(fake_info("relu", 30.0)))
    proc = subprocess.run([sys.executable, str(ROOT / "plot.py"), f"--runs_glob={tmp_path / 'cmp'}/*",
                           f"--out={tmp_path / 'figs'}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 runs" in proc.stdout and (tmp_path / "figs" / "runs_table.md").is_file()


def test_plot_without_runs_says_so_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "plot.py")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "no run_*/final_info.json" in proc.stderr and "Traceback" not in proc.stderr


def _sectioned(info, variant_settings, seed, n_tokens=100_000):
    info["config"] = {"target": {"variant": info["variant"], "d_sae": 4096}, "training": {"n_tokens": n_tokens, "seed": seed},
                      "variant": variant_settings, "evals": {"core": {}}, "system": {"out_dir": "x"}}
    return info


def test_runs_table_gives_the_baseline_seed_spread_and_marks_what_is_within_it_as_noise(tmp_path):
    import importlib

    plot = importlib.import_module("plot")
    runs = []
    for i, (seed, l0) in enumerate([(0, 30.0), (1, 34.0), (2, 32.0)]):  # baseline: mean 32, spread 4
        runs.append({"name": f"run_{i}", "info": _sectioned(fake_info("relu", l0), {}, seed)})
    runs.append({"name": "run_3", "info": _sectioned(fake_info("topk", 35.0), {"k": 64}, 0)})  # |35 - 32| <= 4: noise
    runs.append({"name": "run_4", "info": _sectioned(fake_info("topk", 40.0), {"k": 64}, 0)})  # 8 > 4: a difference
    runs.append({"name": "run_5", "info": _sectioned(fake_info("topk", 33.0), {"k": 64}, 0, n_tokens=5)})  # other budget
    for r in runs[:3]:  # the registry's relu defaults are what "defaults" means
        r["info"]["config"]["variant"] = dict(vars(plot.VARIANTS["relu"].Config()))
    table = plot.write_table(runs, tmp_path).read_text().splitlines()
    row = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table if line.startswith("| ")}
    l0 = 4  # column index of L0
    assert row["run_3"][l0] == "35~" and row["run_4"][l0] == "40" and row["run_5"][l0] == "33"
    assert row["run_0"][l0] == "30"  # a baseline seed is not marked against itself
    mean = next(v for k, v in row.items() if k.startswith("baseline mean (3 seeds"))
    spread = row["baseline seed spread (max - min)"]
    assert mean[l0] == "32" and spread[l0] == "4"
    assert any("noise, not a finding" in line for line in table)


def test_l0_vs_ce_names_each_point_for_a_few_runs_and_colours_by_variant_for_many(tmp_path, monkeypatch):
    import plot

    drawn = {}
    monkeypatch.setattr(plot, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    runs = [{"name": f"{v}_{i}", "label": f"{v}_{i}: {v}", "info": fake_info(v, 10.0 * (i + 1))}
            for v in ("relu", "topk", "contrastive") for i in range(4)]
    plot.plot_l0_vs_ce(runs[:3], tmp_path)
    assert [t.get_text() for t in drawn["fig"].axes[0].texts] == ["relu_0: relu", "relu_1: relu", "relu_2: relu"]
    drawn.clear()
    plot.plot_l0_vs_ce(runs, tmp_path)  # 12 runs: no name beside each point, one legend entry per variant
    ax = drawn["fig"].axes[0]
    assert len(ax.texts) == 0 and ax.get_legend_handles_labels()[1] == ["relu", "topk", "contrastive"]
    colours = [tuple(c.get_facecolor()[0]) for c in ax.collections]
    assert len(set(colours[:4])) == 1 and len(set(colours)) == 3  # a variant's runs share its colour


def test_bar_panels_stand_side_by_side_for_a_few_runs_and_one_above_the_other_for_many(tmp_path, monkeypatch):
    import plot

    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: drawn.append(fig))
    for n in (3, 12):
        runs = [{"name": f"relu_{i}", "label": f"relu_{i}", "info": fake_info("relu", 10.0 + i)} for i in range(n)]
        plot._bar_row(runs, [("A", [1.0] * n), ("B", [2.0] * n)], tmp_path / "x.png", "core")
    few, many = ([ax.get_position() for ax in fig.axes] for fig in drawn)
    assert few[0].y0 == few[1].y0 and few[0].x0 < few[1].x0  # side by side
    assert many[0].x0 == many[1].x0 and many[0].y0 > many[1].y0  # stacked, A on top
    assert drawn[0]._suptitle.get_text() == "core" and drawn[1].axes[0].get_title() == "core: A"
    drawn.clear()
    runs = [{"name": f"{v}_{i}", "label": f"{v}_{i}: {v}", "info": with_evals(fake_info(v, 10.0 + i))}
            for v in ("relu", "topk") for i in range(6)]
    plot.plot_diagnostics(runs, tmp_path)  # 12 runs: every panel in one column, the lag curves coloured by variant
    axes = drawn[0].axes
    assert len(axes) == len(plot.DIAGNOSTIC_PANELS) + 1 and len({round(ax.get_position().x0, 3) for ax in axes}) == 1
    assert axes[-1].get_legend_handles_labels()[1] == ["relu", "topk"]
    drawn.clear()
    plot.plot_training_curves(runs, tmp_path)  # the loss and L0 curves too: a colour and a legend entry per variant
    assert drawn[0].axes[1].get_legend_handles_labels()[1] == ["relu", "topk"]
    assert len({line.get_color() for line in drawn[0].axes[0].lines}) == 2


def test_l0_vs_ce_has_plain_ticks_and_sane_limits_for_near_identical_and_for_widely_spread_runs(tmp_path, monkeypatch):
    import plot

    drawn = {}
    monkeypatch.setattr(plot, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    for points in ([(33.6422, 0.856710), (33.6423, 0.856715)], [(3.0, 0.2), (400.0, 0.99)]):
        runs = []
        for i, (l0, ce) in enumerate(points):
            info = fake_info("relu", l0)
            info["core"]["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] = ce
            runs.append({"name": f"run_{i}", "label": f"run_{i}: relu", "info": info})
        drawn.clear()
        plot.plot_l0_vs_ce(runs, tmp_path)
        ax = drawn["fig"].axes[0]
        drawn["fig"].canvas.draw()
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
            assert labels and axis.get_offset_text().get_text() == ""  # no "1e-5+8.567e-1"
            assert not any("10^" in s or "times" in s or "$" in s for s in labels), labels
            assert len(set(labels)) == len(labels), labels  # no label written eight times over
        lo, hi = ax.get_ylim()
        assert lo < min(ce for _, ce in points) and hi > max(ce for _, ce in points)
        assert hi - lo >= 0.01 * 0.85  # near-identical points: at least 2% of the magnitude is shown
        assert ax.get_xscale() == ("log" if points[1][0] / points[0][0] >= 3 else "linear")


def frontier_run(variant, seed, knob_value, l0, ce, **diagnostics):
    from trainers import VARIANTS

    mod = VARIANTS[variant]
    settings = {**dataclasses.asdict(mod.Config()), mod.SPARSITY[0]: knob_value}
    info = fake_info(variant, l0)
    info["summary"].update({"ce_loss_score": ce, "explained_variance": ce + 0.05, "kl_div_score": ce})
    info["config"] = {"target": {"variant": variant, "model": "m", "hook": "h", "d_sae": 64},
                      "training": {"seed": seed, "n_tokens": 768}, "variant": settings}
    info["diagnostics"] = {"status": "ok", **diagnostics}
    return {"name": f"{variant}_{seed}_{knob_value}", "label": variant, "info": info}


def test_matched_l0_table_interpolates_in_log_l0_and_calls_a_finding_only_beyond_the_seed_spread(tmp_path):
    import plot

    runs = []
    for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):  # baseline CE at L0 20 / 40 / 80: 0.80 / 0.85 / 0.90 +- 0.01
        for l1, l0, ce in ((2.0, 10, 0.75), (1.0, 20, 0.80), (0.5, 40, 0.85), (0.25, 80, 0.90)):
            runs.append(frontier_run("relu", seed, l1, l0, ce + shift, silhouette=0.1))
    # topk: points at L0 10 and 40, so at L0 20 (halfway in log L0) the mean of the two; beyond L0 40: no value
    runs += [frontier_run("topk", 0, 10, 10, 0.80), frontier_run("topk", 0, 40, 40, 0.90)]
    # contrastive: its CE equals the baseline's to within the spread; its silhouette (its target) is higher
    runs += [frontier_run("contrastive", 0, l1, l0, ce + 0.005, silhouette=0.3)
             for l1, l0, ce in ((2.0, 10, 0.75), (1.0, 20, 0.80), (0.5, 40, 0.85), (0.25, 80, 0.90))]
    # sparse probing, added afterwards to some runs only: the baseline's and contrastive's two sparsest
    for r in runs:
        if r["label"] in ("relu", "contrastive") and r["info"]["summary"]["l0"] <= 20:
            top1 = 0.6 + (0.1 if r["info"]["summary"]["l0"] == 20 else 0) + (0.05 if r["label"] == "contrastive" else 0)
            r["info"]["sparse_probing"] = {"sae_top_k_test_accuracy": {"1": top1 + 0.001 * r["info"]["config"]["training"]["seed"]}}
    series = plot.frontier_series(runs)
    assert sorted(label for _, label in series) == ["contrastive", "relu", "topk"]
    base = next(s for (_, label), s in series.items() if label == "relu")
    mean, spread, n = plot.matched(base, 20, ("summary", "ce_loss_score"))
    assert (round(mean, 6), round(spread, 6), n) == (0.8, 0.02, 3)
    topk = next(s for (_, label), s in series.items() if label == "topk")
    assert plot.at_l0(topk["seeds"][0], 20, ("summary", "ce_loss_score")) == pytest.approx(0.85)
    assert plot.at_l0(topk["seeds"][0], 80, ("summary", "ce_loss_score")) is None  # no extrapolation
    table = plot.write_matched_table(runs, tmp_path).read_text()
    ce = table[table.index("### CE-loss score"):table.index("### explained variance")]
    assert "| topk | 0.85 vs 0.8: +0.05 (spread 0.02) **yes** | 0.9 vs 0.85: +0.05 (spread 0.02) **yes** | - |" in ce
    assert "| contrastive | 0.805 vs 0.8: +0.005 (spread 0.02) no |" in ce
    probing = table[table.index("### sparse probing top-1"):table.index("### silhouette")]
    assert "| contrastive | 0.75 vs 0.701: +0.049 (spread 0.002) **yes** | - | - |" in probing
    assert "topk" not in probing and "### sparse probing top-5" not in table  # no run holds it: no section
    sil = table[table.index("### silhouette"):]
    assert "| contrastive | 0.3 vs 0.1: +0.2 (spread 0) **yes**" in sil and "topk" not in sil  # only its target
    # where the eval sample alone moves a difference by more than the seeds do, that is the bar
    table = plot.write_matched_table(runs, tmp_path, {"silhouette": 0.25, "CE-loss score": 0.001}).read_text()
    assert "| contrastive | 0.3 vs 0.1: +0.2 (spread 0, eval sample 0.25) no" in table
    assert "| topk | 0.85 vs 0.8: +0.05 (spread 0.02, eval sample 0.001) **yes** |" in table
    # the figure: one panel per frontier metric and target, drawn, with the baseline's spread shaded
    path = plot.plot_frontiers(runs, tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20000


def test_bars_carry_the_seed_range_of_their_setting_and_only_seeds_of_one_setting_are_grouped():
    import plot

    runs = [frontier_run("relu", 0, 1.0, 30, 0.80), frontier_run("relu", 1, 1.0, 31, 0.84),
            frontier_run("relu", 0, 0.5, 60, 0.90), frontier_run("topk", 0, 48, 48, 0.92)]
    for r, system in zip(runs, ("a", "b", "c", "d")):  # where a run is written does not separate seeds
        r["info"]["config"]["system"] = {"out_dir": system}
    values = [r["info"]["summary"]["ce_loss_score"] for r in runs]
    assert plot.seed_ranges(runs, values) == [(0.80, 0.84), (0.80, 0.84), None, None]
    fig, ax = plot.plt.subplots()
    plot._bars(ax, runs, values, "CE")
    assert [type(c).__name__ for c in ax.containers] == ["BarContainer", "ErrorbarContainer", "ErrorbarContainer"]
    # the bars, and the two seeds' range on each seed's bar (runs 0 and 1), none on the others'
    assert [round(float(c.lines[0].get_xdata()[0])) for c in ax.containers[1:]] == [0, 1]
    plot.plt.close(fig)


def test_line_figures_shade_each_settings_seed_range_once_per_setting(tmp_path):
    import plot

    runs = [{"name": f"relu_{i}", "label": f"relu_{i}", "info": frontier_run("relu", seed, l1, 30, 0.8)["info"]}
            for i, (seed, l1) in enumerate([(0, 1.0), (1, 1.0), (2, 1.0), (0, 0.5)])]
    curves = [{"1": 0.60, "5": 0.70}, {"1": 0.64, "5": 0.69}, {"1": 0.62, "5": None}, {"1": 0.9, "5": 0.95}]
    for r, c in zip(runs, curves):
        r["info"] = with_evals(r["info"])
        r["info"]["sparse_probing"]["sae_top_k_test_accuracy"] = {k: v for k, v in c.items() if v is not None}
    bands = plot.seed_bands(runs, [r["info"]["sparse_probing"]["sae_top_k_test_accuracy"] for r in runs])
    # k=1: the three seeds' range; k=5: one seed lacks it, so no range; drawn on the first seed only, none for L1 0.5
    assert bands == [{"1": (0.60, 0.64)}, None, None, None]
    drawn = {}
    save = plot._save
    plot._save = lambda fig, path: drawn.setdefault("fig", fig) and save(fig, path)
    try:
        plot.plot_sparse_probing(runs, tmp_path)
    finally:
        plot._save = save
    labels = drawn["fig"].axes[0].get_legend_handles_labels()[1]
    assert labels.count("LLM residual stream") == 1 and not any("relu_1 LLM" in x for x in labels)  # drawn once
    fig, ax = plot.plt.subplots()
    plot._band(ax, bands[0], "C0")
    assert len(ax.collections) == 1 and plot._band(ax, None, "C1") is None and len(ax.collections) == 1
    plot.plt.close(fig)
    assert (tmp_path / "sparse_probing.png").stat().st_size > 5000


def test_dose_response_groups_one_variant_over_its_weights_beside_the_baseline_and_stays_off_the_frontier(tmp_path):
    import plot

    runs = [frontier_run("relu", seed, l1, l0, ce) for seed in (0, 1, 2)
            for l1, l0, ce in ((1.0, 20 + seed, 0.80 + 0.01 * seed), (0.5, 40, 0.85))]
    runs += [frontier_run("contrastive", 0, l1, l0, 0.8, silhouette=0.1) for l1, l0 in ((1.0, 20), (0.5, 40))]
    for w, sil, ce in ((0.0, 0.10, 0.81), (1.0, 0.15, 0.80), (10.0, 0.30, 0.75), (100.0, 0.50, 0.60)):
        r = frontier_run("contrastive", 0, 1.0, 22, ce, silhouette=sil)
        r["info"]["config"]["variant"]["weight"] = w
        runs.append(r)
    groups = plot.dose_groups(runs)
    assert len(groups) == 1 and groups[0]["sparsity"] == ("l1_coefficient", 1.0)
    # the comparison's own run at the default weight (0.1) joins the four dose runs; the baseline: relu's 3 seeds at L1 1
    assert [w for w, _ in groups[0]["points"]] == [0.0, 0.1, 1.0, 10.0, 100.0]
    assert len(groups[0]["baseline"]) == 3
    # the dose runs (one sparsity setting each) are not frontiers: only relu's and contrastive's own
    assert sorted(label for _, label in plot.frontier_series(runs)) == ["contrastive", "relu"]
    table = plot.write_dose_table(runs, tmp_path).read_text()
    assert "| 100 | 22 | 0.6 | 0.65 | 0.5 | n/a |" in table  # weight, L0, CE, EV (CE + 0.05), silhouette, NMI
    assert "| relu, 3 seeds (range) | 20-22 | 0.8-0.82 |" in table
    path = plot.plot_dose_response(runs, tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20000


def test_noise_table_gives_reseed_and_training_seed_ranges_and_separates_variants_only_beyond_both(tmp_path):
    import plot

    def core(ev):
        return {"eval_result_metrics": {"reconstruction_quality": {"explained_variance": ev}, "sparsity": {"l0": 40}}}

    runs = []
    for seed, ev in ((0, 0.90), (1, 0.92), (2, 0.91)):  # training-seed range of EV: 0.02
        for l1, l0 in ((1.0, 20), (0.5, 40), (0.25, 80)):
            r = frontier_run("relu", seed, l1, l0, 0.85, nmi=0.30 + 0.01 * seed)
            r["info"]["summary"]["explained_variance"] = ev if l1 == 0.5 else ev - 0.05
            r["info"]["core"] = core(ev if l1 == 0.5 else ev - 0.05)
            r["dir"] = str(tmp_path / f"relu_{seed}_{l1}")
            runs.append(r)
    for l1, l0, ev in ((1.0, 20, 0.90), (0.5, 40, 0.95), (0.25, 80, 0.97)):  # topk's EV at L0 40: 0.95
        r = frontier_run("topk", 0, l1 * 100, l0, 0.85)
        r["info"]["summary"]["explained_variance"] = ev
        runs.append(r)
    source = runs[1]  # relu, seed 0, L1 0.5: EV 0.90 at eval seed 0, 0.905 and 0.895 at eval seeds 1 and 2
    reevals = [{"name": f"noise_evalseed_{s}", "info": {"source_run": source["dir"], "core": core(ev),
                                                         "diagnostics": {"nmi": 0.30 + d},
                                                         "config": {"evals": {"core": {"seed": s}}}}}
               for s, ev, d in ((1, 0.905, 0.04), (2, 0.895, -0.01))]
    table = plot.write_noise_table(runs, reevals, tmp_path).read_text()
    assert "at eval seeds 0, 1, 2" in table and "3 SAEs of this setting" in table
    # EV: reseed range 0.01, training-seed range 0.02, resolvable 0.02; between variants at L0 40: topk 0.95 against
    # relu's mean over seeds 0.91, a range of 0.04 > 0.02: separated
    assert "| explained variance | 0.9 | 0.01 | 0.02 | 0.02 | 0.04 | **yes** |" in table
    # NMI: reseed range 0.05 (0.29 .. 0.34) exceeds the training-seed range 0.02; topk has no NMI: n/a between variants
    assert "| NMI | 0.3 | 0.05 | 0.02 | 0.05 | n/a | n/a |" in table
    assert "sparse probing" not in table  # a metric nobody measured is left out



def ce_core(ce):
    return {"eval_result_metrics": {"model_performance_preservation": {"ce_loss_score": ce}}}


def two_relu_seeds(tmp_path, evals_config=None):
    """relu_a (seed 0, CE 0.80) and relu_b (seed 1, CE 0.83) at one setting, written in tmp_path."""
    runs = []
    for name, seed, ce in (("relu_a", 0, 0.80), ("relu_b", 1, 0.83)):
        r = frontier_run("relu", seed, 0.5, 40, ce)
        r["name"], r["dir"] = name, str(tmp_path / name)
        r["info"]["core"] = ce_core(ce)
        if evals_config:
            r["info"]["config"]["evals"] = evals_config
        runs.append(r)
    return runs


def test_noise_table_gives_the_paired_difference_of_two_reseeded_saes_at_each_eval_seed(tmp_path):
    import plot

    core = ce_core
    runs = two_relu_seeds(tmp_path)

    def reeval(src, s, ce, evals="core"):
        return {"name": f"{src}_{s}_{evals}", "info": {"source_run": str(tmp_path / src), evals: core(ce) if evals == "core" else {},
                                                       "config": {"evals": {evals: {"seed": s}}}}}

    # relu_a at eval seeds 0, 1, 2: 0.80, 0.90, 0.70 (reseed range 0.2); relu_b: 0.83, 0.92, 0.74. Differences
    # b - a: +0.03, +0.02, +0.04, range 0.02: the sample moves both together. relu_a has one more reevaluation
    # (another eval at seed 1), so it is the reference even though it is listed last.
    reevals = [reeval("relu_b", 1, 0.92), reeval("relu_b", 2, 0.74),
               reeval("relu_a", 1, 0.90), reeval("relu_a", 2, 0.70), reeval("relu_a", 1, None, "scr")]
    table = plot.write_noise_table(runs, reevals, tmp_path).read_text()
    assert "## SAE x eval sample: differences from relu_a at each eval seed" in table
    assert table.index("## relu_a") < table.index("## relu_b")
    row = next(line for line in table.splitlines() if line.startswith("| relu_b | CE-loss score |"))
    assert row == "| relu_b | CE-loss score | 0: +0.03, 1: +0.02, 2: +0.04 | 0.02 | 0.2 |"
    # the matched-L0 table's eval-sample noise: the paired range (0.02), not relu_a's own reseed range (0.2)
    assert plot.sample_noise(runs, reevals) == {"CE-loss score": pytest.approx(0.02)}
    # with relu_a alone reevaluated, only its own reseed range bounds it
    assert plot.sample_noise(runs, reevals[2:]) == {"CE-loss score": pytest.approx(0.2)}
    assert "| relu_b | explained variance |" not in table  # not measured at two eval seeds: no row


def test_reevaluations_at_other_eval_settings_are_a_study_of_their_own_never_pooled_with_the_runs(tmp_path):
    import plot

    runs = two_relu_seeds(tmp_path, {"core": {"reconstruction_batches": 8, "seed": 0}})

    def reeval(src, s, ce, batches):
        return {"name": f"{src}_{s}_{batches}", "info": {"source_run": str(tmp_path / src), "core": ce_core(ce),
                                                          "config": {"evals": {"core": {"reconstruction_batches": batches, "seed": s}}}}}

    # at the runs' 8 batches: relu_a 0.80, 0.90 (eval seeds 0, 1). At 2 batches, eval seeds 0, 1, 2: relu_a 0.60,
    # 0.95, 0.75 (range 0.35), relu_b 0.66, 0.97, 0.80: differences +0.06, +0.02, +0.05 (range 0.04); training
    # seeds at 2 batches, eval seed 0: 0.60 and 0.66 (range 0.06)
    reevals = [reeval("relu_a", 1, 0.90, 8)] + [reeval(src, s, ce, 2) for src, vals in
                                                 (("relu_a", (0.60, 0.95, 0.75)), ("relu_b", (0.66, 0.97, 0.80)))
                                                 for s, ce in enumerate(vals)]
    assert plot.settings_changed(reevals[1]["info"], runs[0]["info"]) == "core.reconstruction_batches=2"
    assert plot.settings_changed(reevals[0]["info"], runs[0]["info"]) == ""  # the eval seed alone: the same study
    table = plot.write_noise_table(runs, reevals, tmp_path).read_text()
    default = table[:table.index("evals at core.reconstruction_batches=2")]
    assert "| CE-loss score | 0.8 | 0.1 | 0.03 | 0.1 |" in default  # 0.80 and 0.90 only: the 2-batch values kept out
    other = table[table.index("## relu_a (relu, l1_coefficient=0.5, L0 40): evals at core.reconstruction_batches=2"):]
    assert "| CE-loss score | 0.6 | 0.35 | 0.06 | 0.35 | n/a | n/a |" in other  # its seed 0 is its own reevaluation
    assert "differences from relu_a at each eval seed, evals at core.reconstruction_batches=2" in other
    assert "| relu_b | CE-loss score | 0: +0.06, 1: +0.02, 2: +0.05 | 0.04 | 0.35 |" in other

def test_bar_labels_are_plain_numbers_and_a_panel_with_nothing_measured_shows_no_scale():
    import plot

    assert [plot.bar_label(v) for v in (1763.2, 0.91834, 37.35, 2.5e-5)] == ["1763", "0.918", "37.4", "2.5e-05"]
    runs = [frontier_run("relu", s, 1.0, 30, 0.8) for s in (0, 1)]
    fig, ax = plot.plt.subplots()
    plot._bars_or_na(ax, runs, [None, None], "MCQ")
    assert [t.get_text() for t in ax.texts] == ["n/a", "n/a"] and list(ax.get_yticks()) == []
    assert [type(c).__name__ for c in ax.containers] == ["BarContainer"]  # no seed range drawn for what is not measured
    plot.plt.close(fig)
