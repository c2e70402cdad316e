"""Run evals on a finished run's SAE without training it again: add evals to the run, or measure how
much an eval's own sampling moves its numbers.

    python reevaluate.py run_1 --evals=absorption,scr          # added to run_1 itself
    python reevaluate.py run_1 --evals=core --set core.reconstruction_batches=16 --replace
    python reevaluate.py run_0 --out_dir=run_0_split1 --evals=unlearning --set unlearning.split_seed=1

The SAE (RUN/sae), model, hook, dataset, --held_out_percent and seed are the run's own (from its
final_info.json). Each selected eval starts from the settings the run used (its defaults if the run
did not select it), then the --set items given here.

Without --out_dir the results are added to the run: each eval's JSON beside the others, its summary
and key numbers into RUN/final_info.json (status and failures recomputed, the addition recorded under
`added_evals`), a section in notes.txt. An eval the run already holds is refused unless --replace is
given; every other result is kept. The evals run into RUN.adding/ first; the run is changed only
after all of them finished, final_info.json last and by an atomic rename.

With --out_dir the run is not touched: OUT_DIR/reevaluation.json (each eval's summary, the source run,
the resolved config) and each eval's own JSON, built in OUT_DIR.partial/ and renamed when complete; its
section in notes.txt (--notes) names the source, the evals and their seeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from experiment import offline_unless_hub_requested

if __name__ == "__main__":
    offline_unless_hub_requested(sys.argv[1:])

import experiment  # noqa: E402
from trainers.config import System, Target, UsageError, split_args  # noqa: E402
from trainers.data import DataError  # noqa: E402
from trainers.model import (EMBEDDED_MODEL, EMBEDDED_TL_NAME, MODEL_DEFAULTS, ModelError, load_model,  # noqa: E402
                            pick_device, pick_dtype)
from trainers.trainer import TrainSettings  # noqa: E402

SOURCE_FLAGS = {"target": ("variant", "model", "dataset", "hook", "d_sae", "context_size", "held_out_percent"),
                "training": ("seed", "model_batch_size"), "system": ("device", "dtype", "eval_cache_dir")}


def resolve(argv: list[str]) -> tuple[Path, experiment.Config, dict, bool]:
    """(source run folder, config, the source's final_info.json, in place: no --out_dir) from `RUN [flags]`."""
    if not argv or argv[0].startswith("--"):
        raise UsageError("usage: python reevaluate.py RUN_DIR --out_dir=DIR [--evals=a,b] [--set EVAL.FIELD=VALUE ...]")
    source, rest = Path(argv[0]), argv[1:]
    info_file = source / "final_info.json"
    flags, user_sets = split_args([a for a in rest if a != "--replace"])
    in_place = not any(key == "out_dir" for key, _ in flags)
    if (source / "cfg.json").is_file() and not info_file.is_file():  # an SAE in SAELens's format, from any tool
        if in_place:
            raise UsageError(f"{source}/ is an SAE folder, not a run of this harness: give --out_dir for the results")
        info = foreign_sae_info(source)
    elif not info_file.is_file() or not (source / "sae" / "cfg.json").is_file():
        raise UsageError(f"{source}/ is not a finished run (no final_info.json or sae/) nor an SAE folder (no cfg.json)")
    else:
        info = json.loads(info_file.read_text())
    bad = [key for key, _ in flags if key not in ("out_dir", "evals", "overwrite", "notes")]
    if bad:
        raise UsageError(f"--{bad[0]} cannot be changed here: the SAE, model and data are the source run's")
    selected = next((experiment.selected_evals(v) for k, v in flags if k == "evals"), experiment.DEFAULT_EVALS)
    try:
        args = [f"--{name}={info['config'][section][name]}" for section, names in SOURCE_FLAGS.items() for name in names]
        # the text's column (runs written before --text_field existed read "text")
        args.append(f"--text_field={info['config']['target'].get('text_field', 'text')}")
    except (KeyError, TypeError):
        raise UsageError(f"{info_file} holds no complete config: not a run of this harness") from None
    for name in selected:  # the run's own settings first, so that --set given here wins
        known = {f.name for f in dataclasses.fields(experiment.EVALS[name].Settings)}
        for field, value in info["config"]["evals"].get(name, {}).items():
            if field in known:
                args += ["--set", f"{name}.{field}={value}"]
            else:
                print(f"[reevaluate] note: {source}'s {name}.{field} is no setting of today's code; left out")
    args += [f"--{k}={v}" for k, v in flags]  # --notes included: the section goes where it is asked to
    for item in user_sets:
        args += ["--set", item]
    return source, experiment.parse(args), info, in_place


def foreign_sae_info(folder: Path) -> dict:
    """What a run's final_info.json would say about an SAE saved in SAELens's format by another tool:
    the model, hook, context and width from its cfg.json; the text and split are this harness's
    defaults (the evals read held-out documents of that split; whether the SAE's own training read
    them is not known)."""
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
        meta = cfg.get("metadata", cfg)
        model = EMBEDDED_MODEL if meta["model_name"] == EMBEDDED_TL_NAME else meta["model_name"]
        target = {"variant": "relu", "model": model, "hook": meta["hook_name"], "d_sae": cfg["d_sae"],
                  "context_size": meta.get("context_size") or 128, "held_out_percent": Target().held_out_percent,
                  "dataset": "auto" if model in MODEL_DEFAULTS else meta.get("dataset_path") or "auto"}
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"{folder}/cfg.json is not an SAELens SAE config ({type(err).__name__}: {err})") from None
    print(f"[reevaluate] {folder} is an SAE saved outside this harness: model {model}, hook {target['hook']}; the "
          "evals read this harness's held-out text, which that SAE's training may have read")
    return {"config": {"target": target, "training": {"seed": 0, "model_batch_size": TrainSettings().model_batch_size},
                       "system": {"device": "auto", "dtype": "auto", "eval_cache_dir": System().eval_cache_dir},
                       "evals": {}}, "foreign_sae": True}


def run(source: Path, cfg: experiment.Config) -> int:
    t_start = time.perf_counter()
    out = Path(cfg.system.out_dir)
    if out.resolve() == source.resolve():
        raise UsageError("--out_dir must not be the source run")
    if out.exists() and any(out.iterdir()) and not cfg.system.overwrite:
        raise UsageError(f"{out}/ already holds results; pass --overwrite to replace them, or choose another --out_dir")
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        loaded, sae = load_sae(cfg, source)
        stage.mkdir(parents=True)
        evals, _ = experiment.evaluate(cfg, loaded, sae, stage)
        failed = [name for name, r in evals.items() if r.get("status") == "error"]
        result = {"source_run": str(source), "status": "failed" if failed else "ok", "config": cfg.to_json(),
                  "source_is_a_run_of_this_harness": (source / "final_info.json").is_file(),
                  "wall_time_s": time.perf_counter() - t_start, **evals}
        (stage / "reevaluation.json").write_text(json.dumps(result, indent=2))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_notes(cfg, f"## {source}: evaluated again into {out} ({', '.join(evals)}; {seeds_note(cfg)})", evals,
                [f"{name} failed" for name in failed])
    return 1 if failed else 0


def seeds_note(cfg: experiment.Config) -> str:
    """Each selected eval's sample seed, so a section of notes.txt says which sample it read."""
    seeds = {name: (e.get("seed", e.get("split_seed")) if isinstance(e, dict) else None)
             for name, e in cfg.to_json()["evals"].items()}
    return "eval seeds " + ", ".join(f"{name} {s}" for name, s in seeds.items() if s is not None)


def write_notes(cfg: experiment.Config, title: str, evals: dict, failures: list[str]) -> None:
    """Append a section to --notes (and print it): each eval's headline, and what makes it not a result."""
    lines = [title + ("" if not failures else "  (FAILED)"), ""]
    for name, r in evals.items():
        lines.append(f"{name}: " + ("FAILED: " + r["error"] if r.get("status") == "error"
                                    else experiment.EVALS[name].headline(r)))
    if failures:
        lines.append("NOT A RESULT: " + "; ".join(failures))
    with open(cfg.system.notes, "a") as f:
        f.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))


def load_sae(cfg: experiment.Config, source: Path):
    from sae_lens import SAE

    device = pick_device(cfg.system.device)
    dtype = pick_dtype(cfg.system.dtype, device)
    model = load_model(cfg.target.model, device=device, dtype=dtype)
    sae_dir = source if (source / "cfg.json").is_file() and not (source / "final_info.json").is_file() else source / "sae"
    sae = SAE.load_from_disk(str(sae_dir), device=device)
    sae.eval()
    return experiment.Loaded(model, None, device, dtype, sae.cfg.metadata.model_name), sae


def add_to_run(source: Path, cfg: experiment.Config, info: dict, replace: bool) -> int:
    """Run the selected evals on RUN's SAE and add their results to RUN (see the module's docstring)."""
    present = [name for name in cfg.evals if name in info]
    if present and not replace:
        raise UsageError(f"{source}/ already holds {', '.join(present)}; pass --replace to replace "
                         f"{'it' if len(present) == 1 else 'them'} (every other result is kept)")
    if not cfg.evals:
        raise UsageError("no eval selected: give --evals=a,b")
    stage = source.with_name(source.name + ".adding")
    shutil.rmtree(stage, ignore_errors=True)
    t_start = time.perf_counter()
    try:
        loaded, sae = load_sae(cfg, source)
        stage.mkdir(parents=True)
        evals, _ = experiment.evaluate(cfg, loaded, sae, stage)
        # every eval finished: only now is the run changed (the eval files, then final_info.json atomically)
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = source / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "eval_errors.log" and target.exists():
                target.write_text(target.read_text() + path.read_text())
            else:
                os.replace(path, target)
        info = {**info, **evals}
        info["config"]["evals"].update(cfg.to_json()["evals"])
        held = {name: info[name] for name in experiment.EVALS if name in info}
        eval_failures, numbers = experiment.read_evals(held)
        info["summary"].update(numbers)
        failures = experiment.training_failures(info["training"], info["config"]["target"]["d_sae"]) + eval_failures
        failures += experiment.data_failures(info.get("data", {}))
        info["failures"], info["status"] = failures, "ok" if not failures else "failed"
        info.setdefault("added_evals", []).append(
            {"evals": list(evals), "replaced": present, "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "wall_time_s": time.perf_counter() - t_start})
        tmp = source / "final_info.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, source / "final_info.json")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_notes(cfg, f"## Run {source.name.removeprefix('run_')}: evals added ({', '.join(evals)})", evals, failures)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    try:
        source, cfg, info, in_place = resolve(argv)
        if in_place:
            return add_to_run(source, cfg, info, replace="--replace" in argv)
        return run(source, cfg)
    except (UsageError, ModelError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
