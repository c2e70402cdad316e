"""End to end: experiment.py on the embedded default (Gemma 3 270M), tiny budget; CLI errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_experiment(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "experiment.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=1800)


TINY = ["--n_tokens=12800", "--batch_size=128", "--seqs_per_fill=32", "--core_reconstruction_batches=1",
        "--core_sparsity_variance_batches=2", "--core_batch_size_prompts=4", "--log_every=10"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    proc = run_experiment("--out_dir=run_0", *TINY, cwd=cwd)
    return cwd, proc


def test_tiny_default_run_writes_a_sane_final_info_sae_and_notes(tiny_run):
    cwd, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cwd / "run_0"
    assert not (cwd / "run_0.partial").exists()
    def no_nan(token):
        raise AssertionError(f"final_info.json holds {token}")

    info = json.loads((run / "final_info.json").read_text(), parse_constant=no_nan)
    assert info["status"] == "ok" and info["failures"] == []
    assert info["config"]["variant"] == "relu" and info["config"]["model"] == "gemma-3-270m-embedded"
    tr = info["training"]
    assert tr["n_steps"] == 100 and tr["n_tokens"] == 12800 and tr["tokens_per_s"] > 0
    assert tr["curves"]["step"][0] == 1 and tr["curves"]["step"][-1] == 100
    assert tr["final"]["averaged_over_last_steps"] >= 1
    core = info["core"]
    for key in ("eval_type_id", "eval_config", "eval_result_metrics", "eval_result_details", "sae_cfg_dict"):
        assert key in core
    assert core["eval_type_id"] == "core"
    s = info["summary"]
    assert 0 < s["l0"] < 4096
    assert 0 < s["explained_variance"] < 1
    assert s["explained_variance"] != s["explained_variance_saebench_about_zero"]
    assert math.isfinite(s["ce_loss_score"]) and math.isfinite(s["kl_div_score"])
    assert json.loads((run / "core_eval_results.json").read_text())["eval_result_metrics"] == core["eval_result_metrics"]
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["d_sae"] == 4096 and cfg["d_in"] == 640
    assert (run / "sae" / "sae_weights.safetensors").stat().st_size > 4096 * 640 * 4
    notes = (cwd / "notes.txt").read_text()
    assert notes.startswith("## Run 0: relu") and "explained_variance" in notes


def test_existing_results_are_not_overwritten_without_the_flag(tiny_run):
    cwd, _ = tiny_run
    before = (cwd / "run_0" / "final_info.json").read_text()
    proc = run_experiment("--out_dir=run_0", *TINY, cwd=cwd)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (cwd / "run_0" / "final_info.json").read_text() == before
    assert (cwd / "notes.txt").read_text().count("## Run") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant=nope"], "unknown variant"),
        (["--model=not/a-model"], "has no defaults here"),
        (["--hook=blocks.40.hook_resid_post"], "out of range"),
        (["--set", "relu.nope=1"], "has no setting"),
        (["--n_tokens=ten"], "not a valid int"),
    ],
)
def test_bad_input_gets_one_clear_line_and_exit_code_2(tmp_path, args, message):
    proc = run_experiment("--out_dir=run_9", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run_9").exists() and not (tmp_path / "run_9.partial").exists()
