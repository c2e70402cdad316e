import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fake_info(variant, l0, with_core=True):
    curves = {"tokens": [256, 512, 768], "loss": [50.0, 30.0, 20.0], "l0": [900.0, 100.0, l0]}
    info = {"status": "ok", "variant": variant, "training": {"curves": curves, "final": {"dead_frac": 0.05}}, "core": None}
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
    return info


def test_plot_writes_every_figure_and_skips_runs_without_core(tmp_path):
    for name, info in {"run_0": with_evals(fake_info("relu", 34.0)), "run_1": with_evals(fake_info("topk", 48.0), 0.3),
                       "run_2": fake_info("relu", 20.0, with_core=False)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "final_info.json").write_text(json.dumps(info))
    proc = subprocess.run([sys.executable, str(ROOT / "plot.py")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for png in ("training_curves.png", "core_metrics.png", "sparsity.png", "l0_vs_ce_loss.png", "sparse_probing.png",
                "unlearning.png", "scr_tpp_absorption.png"):
        path = tmp_path / "figures" / png
        assert path.stat().st_size > 5000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 runs" in proc.stdout


def test_plot_without_runs_says_so_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "plot.py")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "no run_*/final_info.json" in proc.stderr and "Traceback" not in proc.stderr
