"""End to end on the embedded model: a run killed with SIGKILL mid-training, or mid-evals, interrupted
with Ctrl-C, or whose disk fills while it writes, and resumed with `--resume` finishes with
final_info.json numbers identical to a run never interrupted; two runs with the same seed give
identical numbers (determinism); the guards fail diverging and degenerate runs whichever evals ran."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_experiment import ROOT, TINY_EVALS, run_experiment

pytestmark = pytest.mark.slow

N_TOKENS = 128 * 80  # 80 steps, a checkpoint every 10: long enough to be killed in the middle (the model runs)
STEPS = N_TOKENS // 128
ARGS = [f"--n_tokens={N_TOKENS}", "--batch_size=128", "--seqs_per_fill=32", "--log_every=5",
        "--checkpoint_every_tokens=1280", "--activation_cache=false", "--eval_cache_dir=cache",
        "--evals=core,diagnostics"] + [a for name in ("core", "diagnostics") for s in TINY_EVALS[name]
                                       for a in ("--set", f"{name}.{s}")]
TIMING = ("wall_time_s", "tokens_per_s", "build_s", "datetime_epoch_millis")
NOT_COMPARED = TIMING + ("out_dir", "eval_model_only_caches", "eval_id")  # the first run builds the eval caches, later ones read them


def numbers(info, path=""):
    """Every value of final_info.json but timings (and the config's out_dir), flattened."""
    out = {}
    if isinstance(info, dict):
        for k, v in info.items():
            if k in NOT_COMPARED:
                continue
            out.update(numbers(v, f"{path}.{k}"))
    elif isinstance(info, list):
        for i, v in enumerate(info):
            out.update(numbers(v, f"{path}[{i}]"))
    else:
        out[path] = info
    return out


def assert_same(got: dict, expected: dict) -> None:
    """Every number equal, and none missing or added on either side."""
    assert set(got) == set(expected), set(got) ^ set(expected)
    assert {k: (v, expected[k]) for k, v in got.items() if v != expected[k]} == {}


def killed_when(out_dir: str, cwd: Path, ready) -> None:
    """Start the run, SIGKILL it as soon as `ready(work_folder)` holds; assert it had not finished."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiment.py"), f"--out_dir={out_dir}", *ARGS], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = cwd / f"{out_dir}.partial"
    deadline = time.time() + 900
    while not ready(work) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cwd / out_dir).exists() and work.is_dir()


def steps_done(work: Path) -> int:
    """The steps of the checkpoint a resume would read (checkpoint/, else checkpoint.old/ when the run
    was killed between the two renames); 0 if none."""
    for name in ("checkpoint", "checkpoint.old"):
        try:
            return json.loads((work / name / "complete.json").read_text())["steps_done"]
        except (OSError, ValueError):
            continue
    return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("resume")
    proc = run_experiment("--out_dir=run_0", *ARGS, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, numbers(json.loads((cwd / "run_0" / "final_info.json").read_text()))


def test_two_runs_with_the_same_seed_give_identical_numbers(reference):
    cwd, expected = reference
    proc = run_experiment("--out_dir=run_1", *ARGS, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = numbers(json.loads((cwd / "run_1" / "final_info.json").read_text()))
    assert len(expected) > 200
    assert_same(got, expected)


def test_a_run_killed_mid_training_and_resumed_ends_identical_to_one_never_interrupted(reference):
    cwd, expected = reference
    killed_when("run_2", cwd, lambda work: steps_done(work) >= 30)
    at = steps_done(cwd / "run_2.partial")
    assert 30 <= at < STEPS
    proc = run_experiment("--out_dir=run_2", "--resume", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"training goes on from step {at} of {STEPS}" in proc.stdout
    got = numbers(json.loads((cwd / "run_2" / "final_info.json").read_text()))
    assert_same(got, expected)
    assert not (cwd / "run_2.partial").exists()  # finished: no work folder, no checkpoint left


def test_a_run_killed_during_its_evals_resumes_without_rerunning_the_finished_ones(reference):
    cwd, expected = reference
    killed_when("run_3", cwd, lambda work: (work / "run_3" / "evals_done.pt").exists())
    proc = run_experiment("--out_dir=run_3", "--resume", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"training goes on from step {STEPS} of {STEPS}" in proc.stdout
    assert "[eval] core: finished before the interruption, kept" in proc.stdout
    got = numbers(json.loads((cwd / "run_3" / "final_info.json").read_text()))
    assert_same(got, expected)
    notes = (cwd / "notes.txt").read_text()
    assert notes.count("## Run 3:") == 1


def test_resume_without_anything_to_resume_is_one_line(tmp_path):
    proc = run_experiment("--out_dir=run_7", "--resume", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_experiment("--out_dir=run_7", "--resume", "--lr=1", cwd=tmp_path)
    assert proc.returncode == 2 and "--resume takes only --out_dir" in proc.stderr


def ctrl_c_as_in_a_terminal() -> None:
    """The run's SIGINT as a foreground command's: a suite started in the background by a script (`cmd &`
    without job control) passes SIGINT on ignored, and Python then never raises KeyboardInterrupt (the
    run went on to exit 0 in such a fresh-clone check)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_checkpoint_says_how_to_resume_and_exits_130(reference):
    cwd, expected = reference
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiment.py"), "--out_dir=run_4", *ARGS], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.time() + 900
    while steps_done(cwd / "run_4.partial") < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "python experiment.py --out_dir=run_4 --resume" in err
    assert (cwd / "run_4.partial" / "checkpoint" / "complete.json").exists() and not (cwd / "run_4").exists()
    proc = run_experiment("--out_dir=run_4", "--resume", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = numbers(json.loads((cwd / "run_4" / "final_info.json").read_text()))
    assert_same(got, expected)


def test_ctrl_c_during_the_evals_keeps_what_finished_says_how_to_resume_and_exits_130(reference):
    cwd, expected = reference
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiment.py"), "--out_dir=run_6", *ARGS], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_in_a_terminal)
    stage = cwd / "run_6.partial" / "run_6"
    deadline = time.time() + 900
    while not (stage / "evals_done.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)  # core is finished, diagnostics is running
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "python experiment.py --out_dir=run_6 --resume" in err
    assert (stage / "evals_done.pt").exists() and (stage / "sae").is_dir() and not (cwd / "run_6").exists()
    assert steps_done(cwd / "run_6.partial") == STEPS
    proc = run_experiment("--out_dir=run_6", "--resume", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[eval] core: finished before the interruption, kept" in proc.stdout
    assert_same(numbers(json.loads((cwd / "run_6" / "final_info.json").read_text())), expected)


FULL_DISK = '''
import errno, os, pathlib
_target = os.environ.get("SIMULATE_FULL_DISK_ON")
if _target:
    _write_text = pathlib.Path.write_text
    def write_text(self, *args, **kwargs):
        if self.name.startswith(_target):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return _write_text(self, *args, **kwargs)
    pathlib.Path.write_text = write_text
'''


@pytest.mark.parametrize("full_on", ["final_info.json", "notes.txt"])
def test_a_disk_that_fills_while_results_are_written_leaves_no_half_result_and_the_run_resumes(reference, tmp_path,
                                                                                               full_on):
    cwd, expected = reference
    (tmp_path / "sitecustomize.py").write_text(FULL_DISK)
    notes = (cwd / "notes.txt").read_text()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SIMULATE_FULL_DISK_ON": full_on}
    out = f"run_5{full_on[0]}"
    proc = subprocess.run([sys.executable, str(ROOT / "experiment.py"), f"--out_dir={out}", *ARGS], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "--resume" in errors[0]
    assert not (cwd / out).exists() and (cwd / "notes.txt").read_text() == notes
    assert not list(cwd.glob("notes.txt.tmp"))
    proc = run_experiment(f"--out_dir={out}", "--resume", cwd=cwd)  # space freed: resume writes it
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = numbers(json.loads((cwd / out / "final_info.json").read_text()))
    assert_same(got, expected)


def test_a_diverging_run_stops_at_its_step_and_is_written_as_failed_with_exit_1(tmp_path):
    proc = run_experiment("--out_dir=run_0", "--n_tokens=12800", "--batch_size=128", "--seqs_per_fill=32",
                          "--lr=1e30", "--evals=none", "--activation_cache=false", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    guard = [line for line in proc.stderr.splitlines() if line.startswith("[guard] step")]
    assert len(guard) == 1 and ("the loss term" in guard[0] or "gradient was not finite" in guard[0]), proc.stderr[-3000:]
    info = json.loads((tmp_path / "run_0" / "final_info.json").read_text())
    assert info["status"] == "failed" and info["failures"][0].startswith("training stopped: step")
    assert info["training"]["n_steps"] < 100 and "(FAILED)" in (tmp_path / "notes.txt").read_text()


NAN_AT_STEP_31 = """
import runpy, sys
import trainers.trainer as t
check = t.check_finite
def nan_at_step_31(step, losses, sae):  # the loss turns non-finite at step 31, after the checkpoint at step 30
    return check(step, {**losses, "loss": float("nan")} if step == 30 else losses, sae)
t.check_finite = nan_at_step_31
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_run_whose_loss_turns_nonfinite_keeps_its_last_good_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", NAN_AT_STEP_31, str(ROOT / "experiment.py"), "--out_dir=run_0",
                           "--n_tokens=12800", "--batch_size=128", "--seqs_per_fill=32", "--checkpoint_every_tokens=1280",
                           "--evals=none", "--activation_cache=false"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "[guard] step 31: the loss term loss is nan" in proc.stderr, proc.stderr[-3000:]
    assert "the last good checkpoint" in proc.stderr
    info = json.loads((tmp_path / "run_0" / "final_info.json").read_text())
    assert info["status"] == "failed" and info["failures"][0].startswith("training stopped: step 31")
    assert steps_done(tmp_path / "run_0.partial") == 30


def test_a_degenerate_sae_fails_the_run_even_with_no_evals(tmp_path):
    # a learning rate 190x the default (1.6e-3) drives every feature silent with a finite loss (measured: L0 0 and
    # explained variance -0.25 at the end); whether the guard's line comes before the end depends on how long
    # the silence lasts (tests/test_checkpoint.py tests the flagging itself)
    proc = run_experiment("--out_dir=run_0", "--lr=0.3", "--n_tokens=12800", "--batch_size=128", "--seqs_per_fill=32",
                          "--log_every=5", "--evals=none", "--activation_cache=false", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    info = json.loads((tmp_path / "run_0" / "final_info.json").read_text())
    assert info["status"] == "failed" and "core" not in info  # failed by the training numbers alone
    assert any("L0 is 0" in f or "worse than predicting the mean" in f for f in info["failures"]), info["failures"]
    assert "NOT A RESULT" in (tmp_path / "notes.txt").read_text()
