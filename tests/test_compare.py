"""compare.py: the comparison's commands (every variant along its SPARSITY grid, the baselines at every seed),
bad options in one line, and a variant whose runs are complete is not trained again."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compare(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "compare.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_dry_run_lists_one_sweep_per_variant_over_its_sparsity_grid_with_the_baselines_at_every_seed(tmp_path):
    """ReLU is the seeded baseline by default (--seeded adds others); core runs at --core_batches."""
    from trainers import VARIANTS

    for seeded, flags in (("relu", ()), ("relu,topk", ("--seeded=relu,topk", "--core_batches=8"))):
        proc = compare("--dry_run", f"--out={tmp_path}", "--seeds=0,1,2", *flags, "--", "--set", "diagnostics.seed=2")
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("$ ")]
        assert len(lines) == len(VARIANTS)
        for variant, line in zip(VARIANTS, lines):
            knob, grid = VARIANTS[variant].SPARSITY
            assert f"--variant={variant} --sweep {variant}.{knob}=" + ",".join(f"{v:g}" for v in grid) in line
            assert ("--sweep seed=0,1,2" if variant in seeded.split(",") else "--sweep seed=0 ") in line
            assert ("scr" in line.split("--evals=")[1].split()[0]) == (variant == "adversarial")  # its target's eval
            # core's batches, 4 unless --core_batches says otherwise, the same for every run
            assert f"--set core.reconstruction_batches={8 if flags else 4} " in line
            assert line.endswith("--set diagnostics.seed=2")  # flags after -- reach experiment.py
        n = sum(len(VARIANTS[v].SPARSITY[1]) * (3 if v in seeded.split(",") else 1) for v in VARIANTS)
        assert f"{len(VARIANTS)} sweeps, {n} SAEs" in proc.stdout


def test_a_variant_with_all_its_runs_complete_is_skipped_and_bad_options_get_one_line(tmp_path):
    from trainers import VARIANTS

    for i in range(len(VARIANTS["topk"].SPARSITY[1])):
        (tmp_path / f"topk_{i}").mkdir()
        (tmp_path / f"topk_{i}" / "final_info.json").write_text(json.dumps({"status": "ok"}))
    proc = compare("--dry_run", f"--out={tmp_path}", "--variants=topk,relu", "--seeded=relu")
    assert proc.returncode == 0 and "topk: its 4 runs are complete" in proc.stdout
    assert "--variant=relu" in proc.stdout and "--variant=topk" not in proc.stdout
    for bad, says in (("--variants=relu,nope", "no variant 'nope'"), ("--frobnicate=1", "is not an option"),
                      ("--core_batches=0", "a whole number of batches")):
        proc = compare("--dry_run", bad)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_dose_sweeps_each_seed_variant_term_weight_at_one_sparsity_and_noise_needs_the_comparison_first(tmp_path):
    from trainers import VARIANTS

    proc = compare("--dose", "--dry_run", f"--out={tmp_path}", "--weights=0,1,10,100", "--dose_at=1")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("$ ")]
    with_target = [v for v in VARIANTS if getattr(VARIANTS[v], "TARGET_METRICS", ())]
    assert [line.split("--variant=")[1].split()[0] for line in lines] == with_target
    for variant, line in zip(with_target, lines):
        knob, grid = VARIANTS[variant].SPARSITY
        assert f"--sweep {variant}.weight=0,1,10,100 --set {variant}.{knob}={grid[1]:g} --seed=0" in line
        assert f"--out_dir={tmp_path / ('dose_' + variant)}" in line
    proc = compare("--noise", "--dry_run", f"--out={tmp_path}")
    assert proc.returncode == 2 and "run the comparison (python compare.py) first" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_noise_adds_the_missing_evals_to_each_baseline_seed_and_reevaluates_the_first_at_every_eval_seed(tmp_path):
    from trainers import VARIANTS

    knob, grid = VARIANTS["relu"].SPARSITY
    for i, (seed, value) in enumerate([(s, v) for v in grid for s in (0, 1, 2)]):
        (tmp_path / f"relu_{i}").mkdir()
        info = {"status": "ok", "variant": "relu", "core": {}, "config": {"variant": {knob: value}, "training": {"seed": seed}}}
        if i == 4:  # already holds sparse probing: only the other evals are added to it
            info["sparse_probing"] = {}
        if i == 5:  # its sparse probing failed: run again, replacing the failure
            info["sparse_probing"] = {"status": "error", "error": "FileNotFoundError"}
        (tmp_path / f"relu_{i}" / "final_info.json").write_text(json.dumps(info))
    (tmp_path / "noise_evalseed_2").mkdir()  # a reevaluation whose eval failed: done again, over it
    (tmp_path / "noise_evalseed_2" / "reevaluation.json").write_text(json.dumps({"status": "failed"}))
    proc = compare("--noise", "--dry_run", f"--out={tmp_path}", "--dose_at=1", "--noise_evals=core,sparse_probing,unlearning",
                   "--eval_seeds=1,2")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("$ ")]
    at = [f"relu_{i}" for i in (3, 4, 5)]  # grid[1] at seeds 0, 1, 2
    notes = f"--notes={tmp_path / 'notes.txt'}"  # the additions' notes go beside the comparison's
    assert lines[:3] == [f"$ python reevaluate.py {tmp_path / at[0]} --evals=sparse_probing,unlearning {notes}",
                         f"$ python reevaluate.py {tmp_path / at[1]} --evals=unlearning {notes}",
                         f"$ python reevaluate.py {tmp_path / at[2]} --evals=sparse_probing,unlearning {notes} --replace"]
    for s, line in zip((1, 2), lines[3:]):
        assert line == (f"$ python reevaluate.py {tmp_path / at[0]} --out_dir={tmp_path / f'noise_evalseed_{s}'} "
                        f"--evals=core,sparse_probing,unlearning --set core.seed={s} --set sparse_probing.seed={s} "
                        f"--set unlearning.split_seed={s} {notes}" + (" --overwrite" if s == 2 else ""))
    assert len(lines) == 5


def test_noise_extended_later_reevaluates_only_the_evals_no_reevaluation_holds_at_that_seed(tmp_path):
    """A study run before with core and sparse probing, then asked for unlearning too: at each eval seed only
    unlearning is reevaluated, into a folder of its own; a reevaluation at other core settings (2 batches) or of
    another SAE, or whose eval failed, does not count."""
    from trainers import VARIANTS

    knob, grid = VARIANTS["relu"].SPARSITY
    evals = {"core": {"seed": 0, "reconstruction_batches": 8}, "sparse_probing": {"seed": 0}, "unlearning": {"split_seed": 0, "seed": 0}}
    for i, (seed, value) in enumerate([(s, v) for v in grid for s in (0, 1, 2)]):
        (tmp_path / f"relu_{i}").mkdir()
        info = {"status": "ok", "variant": "relu", "core": {}, "sparse_probing": {}, "unlearning": {},
                "config": {"variant": {knob: value}, "training": {"seed": seed}, "evals": evals}}
        (tmp_path / f"relu_{i}" / "final_info.json").write_text(json.dumps(info))

    def reevaluation(folder, source, seed, held, core_batches=8, failed=()):
        (tmp_path / folder).mkdir()
        rv = {"source_run": str(tmp_path / source), "status": "ok",
              "config": {"evals": {e: dict(evals[e], **{"seed" if e != "unlearning" else "split_seed": seed},
                                           **({"reconstruction_batches": core_batches} if e == "core" else {})) for e in held}},
              **{e: {"status": "error" if e in failed else "ok"} for e in held}}
        (tmp_path / folder / "reevaluation.json").write_text(json.dumps(rv))

    reevaluation("noise_evalseed_1", "relu_3", 1, ["core", "sparse_probing"])
    reevaluation("noise_evalseed_2", "relu_3", 2, ["sparse_probing"])
    reevaluation("noise_core2_relu_3_evalseed_2", "relu_3", 2, ["core"], core_batches=2)  # another study
    reevaluation("noise_relu_4_evalseed_2", "relu_4", 2, ["core"])  # another SAE
    reevaluation("noise_failed_2", "relu_3", 2, ["unlearning"], failed=["unlearning"])
    proc = compare("--noise", "--dry_run", f"--out={tmp_path}", "--dose_at=1", "--noise_evals=core,sparse_probing,unlearning",
                   "--eval_seeds=1,2")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("$ ")]
    assert lines == [
        f"$ python reevaluate.py {tmp_path / 'relu_3'} --out_dir={tmp_path / 'noise_evalseed_unlearning_1'} "
        f"--evals=unlearning --set unlearning.split_seed=1 --notes={tmp_path / 'notes.txt'}",
        f"$ python reevaluate.py {tmp_path / 'relu_3'} --out_dir={tmp_path / 'noise_evalseed_core-unlearning_2'} "
        f"--evals=core,unlearning --set core.seed=2 --set unlearning.split_seed=2 --notes={tmp_path / 'notes.txt'}"]
    # asked for unlearning alone: never over noise_evalseed_1, which holds core and sparse probing
    proc = compare("--noise", "--dry_run", f"--out={tmp_path}", "--dose_at=1", "--noise_evals=unlearning", "--eval_seeds=1")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("$ ")] == [
        f"$ python reevaluate.py {tmp_path / 'relu_3'} --out_dir={tmp_path / 'noise_evalseed_unlearning_1'} "
        f"--evals=unlearning --set unlearning.split_seed=1 --notes={tmp_path / 'notes.txt'}"]


def test_a_comparison_whose_runs_read_other_core_batches_is_not_extended_with_mixed_ones(tmp_path):
    (tmp_path / "relu_0").mkdir()
    (tmp_path / "relu_0" / "final_info.json").write_text(json.dumps(
        {"status": "ok", "config": {"evals": {"core": {"reconstruction_batches": 8}}}}))
    proc = compare("--dry_run", f"--out={tmp_path}", "--variants=topk")
    assert proc.returncode == 2 and "relu_0: 8" in proc.stderr and "--core_batches=8" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = compare("--dry_run", f"--out={tmp_path}", "--variants=topk", "--core_batches=8")
    assert proc.returncode == 0 and "--set core.reconstruction_batches=8 " in proc.stdout
