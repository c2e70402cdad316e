"""Run evals again on a finished run's SAE, without training it again: to measure how much an eval's
own sampling moves its numbers, or to add an eval to an old run.

    python reevaluate.py run_0 --out_dir=run_0_split1 --evals=unlearning --set unlearning.split_seed=1

The SAE (RUN/sae), model, hook, dataset, --held_out_percent and seed are the run's own (from its
final_info.json). Each selected eval starts from the settings the run used (its defaults if the run
did not select it), then the --set items given here. Writes OUT_DIR/reevaluation.json (each eval's
summary, the source run, the resolved config) and each eval's own JSON; the source run is not touched.
Like experiment.py, OUT_DIR is built in OUT_DIR.partial/ and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from experiment import offline_unless_hub_requested

if __name__ == "__main__":
    offline_unless_hub_requested(sys.argv[1:])

import experiment  # noqa: E402
from trainers.config import UsageError, split_args  # noqa: E402
from trainers.data import DataError  # noqa: E402
from trainers.model import ModelError, load_model, pick_device, pick_dtype  # noqa: E402

SOURCE_FLAGS = {"target": ("variant", "model", "dataset", "hook", "d_sae", "context_size", "held_out_percent"),
                "training": ("seed", "model_batch_size"), "system": ("device", "dtype", "eval_cache_dir")}


def resolve(argv: list[str]) -> tuple[Path, experiment.Config, dict]:
    """(source run folder, config, the source's final_info.json) from `RUN [flags]`."""
    if not argv or argv[0].startswith("--"):
        raise UsageError("usage: python reevaluate.py RUN_DIR --out_dir=DIR [--evals=a,b] [--set EVAL.FIELD=VALUE ...]")
    source, rest = Path(argv[0]), argv[1:]
    info_file = source / "final_info.json"
    if not info_file.is_file() or not (source / "sae" / "cfg.json").is_file():
        raise UsageError(f"{source}/ is not a finished run (no final_info.json or sae/)")
    info = json.loads(info_file.read_text())
    flags, user_sets = split_args(rest)
    if not any(key == "out_dir" for key, _ in flags):
        raise UsageError("--out_dir is required (the source run is never written to)")
    bad = [key for key, _ in flags if key not in ("out_dir", "evals", "overwrite", "notes")]
    if bad:
        raise UsageError(f"--{bad[0]} cannot be changed here: the SAE, model and data are the source run's")
    selected = next((experiment.selected_evals(v) for k, v in flags if k == "evals"), experiment.DEFAULT_EVALS)
    args = [f"--{name}={info['config'][section][name]}" for section, names in SOURCE_FLAGS.items() for name in names]
    for name in selected:  # the run's own settings first, so that --set given here wins
        known = {f.name for f in dataclasses.fields(experiment.EVALS[name].Settings)}
        for field, value in info["config"]["evals"].get(name, {}).items():
            if field in known:
                args += ["--set", f"{name}.{field}={value}"]
            else:
                print(f"[reevaluate] note: {source}'s {name}.{field} is no setting of today's code; left out")
    args += [f"--{k}={v}" for k, v in flags if k != "notes"]
    for item in user_sets:
        args += ["--set", item]
    return source, experiment.parse(args), info


def run(source: Path, cfg: experiment.Config) -> int:
    from sae_lens import SAE

    t_start = time.perf_counter()
    out = Path(cfg.system.out_dir)
    if out.resolve() == source.resolve():
        raise UsageError("--out_dir must not be the source run")
    if out.exists() and any(out.iterdir()) and not cfg.system.overwrite:
        raise UsageError(f"{out}/ already holds results; pass --overwrite to replace them, or choose another --out_dir")
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        device = pick_device(cfg.system.device)
        dtype = pick_dtype(cfg.system.dtype, device)
        model = load_model(cfg.target.model, device=device, dtype=dtype)
        sae = SAE.load_from_disk(str(source / "sae"), device=device)
        sae.eval()
        model_name = sae.cfg.metadata.model_name
        loaded = experiment.Loaded(model, None, None, device, dtype, model_name)
        stage.mkdir(parents=True)
        evals, _ = experiment.evaluate(cfg, loaded, sae, stage)
        failed = [name for name, r in evals.items() if r.get("status") == "error"]
        result = {"source_run": str(source), "status": "failed" if failed else "ok", "config": cfg.to_json(),
                  "wall_time_s": time.perf_counter() - t_start, **evals}
        (stage / "reevaluation.json").write_text(json.dumps(result, indent=2))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for name, r in evals.items():
        print(f"{name}: " + ("FAILED: " + r["error"] if r.get("status") == "error" else experiment.EVALS[name].headline(r)))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    try:
        source, cfg, _ = resolve(argv)
        return run(source, cfg)
    except (UsageError, ModelError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
