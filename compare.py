"""One command per comparison: every variant along the sparsity frontier, the baselines at several seeds,
all on the same cached activations, then evaluated (a script on top of experiment.py, whose commands it runs).

    python compare.py [--out=comparison] [--n_tokens=100000] [--variants=relu,topk,...] [--seeded=relu]
                      [--seeds=0,1,2] [--evals=core,diagnostics] [--core_batches=4] [--dry_run]
                      [-- FLAGS FOR experiment.py ...]
    python compare.py --dose [--weights=1,10,100] [--dose_at=1] ...     # dose-response of the seed variants
    python compare.py --noise [--noise_evals=...] [--eval_seeds=1,2] ...  # what each eval can resolve

For each variant: `experiment.py --variant=V --sweep V.KNOB=v1,v2,... [--sweep seed=...]`, its sparsity setting
and grid from the variant's SPARSITY (trainers/), every point of the grid trained together in one pass over
the cached activations; the --seeded variants (the baselines the others are judged against; ReLU by default) at
every seed of --seeds, the others at the first. Core measures CE/KL on --core_batches batches (4, half of
SAEBench's 8: the default comparison's time; its noise is in the README), the same for every run and dose run.
Each SAE is its own run folder, OUT/VARIANT_i, with its own notes section in OUT/notes.txt. A variant whose folders are all complete is not trained again (so a comparison that was
stopped goes on where it was, and adding a variant trains only it). Then:

    python plot.py --runs_glob='comparison/*' --out=comparison/figures

draws the frontiers and writes the matched-L0 table. The wall time of each variant and of the whole is printed.

--dose (after the comparison, into the same OUT): every variant with target metrics and a `weight` (the seed
variants) trained at the weights of --weights beside the comparison's own run at its default weight, at one
sparsity setting (the --dose_at-th of its grid, same seed): OUT/dose_VARIANT_i. plot.py draws the target metric
and the CE-loss score against the weight (dose_response.png, dose_table.md).

--noise (after the comparison): how much each eval moves when only its own sampling changes, and when only the
SAE's training seed does. The --seeded baseline's runs at the --dose_at-th setting (one per seed) are given
the --noise_evals they lack (added to each run, reevaluate.py); then the first seed's SAE is evaluated again at
every eval seed of --eval_seeds (each eval's `seed`, unlearning's `split_seed`) into OUT/noise_evalseed_S; evals
that a finished reevaluation in OUT/ already holds at that seed are not run again, the others (a study extended
later with more --noise_evals) go into OUT/noise_evalseed_EVALS_S.
plot.py writes noise_table.md: per metric, the reseed noise, the training-seed spread, the smallest difference
it resolves, beside the spread between the variants at the same L0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # offline, before transformers/datasets are imported (they read it at import)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from trainers import VARIANTS  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULTS = {"out": "comparison", "n_tokens": "100000", "variants": ",".join(VARIANTS), "seeded": "relu",
            "core_batches": "4",
            "seeds": "0,1,2", "evals": "core,diagnostics", "weights": "1,10,100", "dose_at": "1",
            "noise_evals": "core,diagnostics,sparse_probing,scr,tpp,absorption", "eval_seeds": "1,2"}
FLAGS = ("dry_run", "dose", "noise")
RESEED = {"unlearning": "split_seed"}  # the eval's setting that draws another sample; `seed` for every other


def variant_evals(variant: str, evals: str) -> list[str]:
    """The comparison's evals plus those the variant's target metrics come from (adversarial: SCR)."""
    out = evals.split(",")
    return out + [p[0] for _, p in getattr(VARIANTS[variant], "TARGET_METRICS", ()) if p[0] in ("scr", "tpp") and p[0] not in out]


def core_batches(opts: dict) -> list[str]:
    """core's CE/KL batches for every run of a comparison and its dose-response (one setting, so that they
    compare): 4 by default, not SAEBench's 8, which keep the default comparison under 90 minutes on a 2-core
    CPU (README, "Time on this 2-core CPU")."""
    return ["--set", f"core.reconstruction_batches={int(opts['core_batches'])}"] if "core" in opts["evals"].split(",") else []


def other_core_batches(out: Path, batches: int) -> dict[str, int]:
    """The runs in OUT/ whose core read another number of CE/KL batches than `batches` (run folder -> number):
    a comparison, or a variant or dose-response added to it later, keeps one number throughout."""
    other = {}
    for info_file in out.glob("*/final_info.json"):
        core = json.loads(info_file.read_text()).get("config", {}).get("evals", {}).get("core")
        if isinstance(core, dict) and core.get("reconstruction_batches", batches) != batches:
            other[info_file.parent.name] = core["reconstruction_batches"]
    return other


def dose_variants(opts: dict) -> list[str]:
    """The variants a dose-response is drawn for: a term with a weight and a metric it aims to move."""
    return [v for v in opts["variants"].split(",") if getattr(VARIANTS[v], "TARGET_METRICS", ())
            and "weight" in {f.name for f in dataclasses.fields(VARIANTS[v].Config)}]


def dose_commands(opts: dict, extra: list[str]) -> list[tuple[str, list[str], int]]:
    """(name, experiment.py arguments, number of SAEs): each seed variant at --weights, at its --dose_at-th
    sparsity setting and the first seed (the comparison's run at the default weight completes the curve)."""
    out, weights, todo = Path(opts["out"]), opts["weights"].split(","), []
    for variant in dose_variants(opts):
        knob, grid = VARIANTS[variant].SPARSITY
        args = [f"--out_dir={out / ('dose_' + variant)}", f"--variant={variant}", "--sweep", f"{variant}.weight=" + ",".join(weights),
                "--set", f"{variant}.{knob}={grid[int(opts['dose_at'])]:g}", f"--seed={opts['seeds'].split(',')[0]}",
                f"--n_tokens={opts['n_tokens']}", f"--evals={','.join(variant_evals(variant, opts['evals']))}",
                *core_batches(opts), f"--notes={out / 'notes.txt'}", *extra]
        todo.append(("dose_" + variant, args, len(weights)))
    return todo


def noise_sources(opts: dict) -> list[Path]:
    """The seeded baseline's finished runs at its --dose_at-th sparsity setting, one per seed, first seed first."""
    out, base = Path(opts["out"]), opts["seeded"].split(",")[0]
    knob, grid = VARIANTS[base].SPARSITY
    at, found = grid[int(opts["dose_at"])], {}
    for info_file in sorted(out.glob(f"{base}_*/final_info.json")):
        info = json.loads(info_file.read_text())
        if info.get("variant") == base and math.isclose(info["config"]["variant"].get(knob, math.nan), at):
            found[str(info["config"]["training"]["seed"])] = info_file.parent
    return [found[s] for s in opts["seeds"].split(",") if s in found]


def held_at_seed(out: Path, source: Path, seed: str) -> set[str]:
    """The evals some finished reevaluation in OUT/ holds for `source` at eval seed `seed` with the source's own
    settings otherwise (a reevaluation at other settings, e.g. fewer core batches, is another study), not failed."""
    held_settings = json.loads((source / "final_info.json").read_text()).get("config", {}).get("evals", {})
    held = set()
    for path in out.glob("*/reevaluation.json"):
        rv = json.loads(path.read_text())
        if Path(rv.get("source_run", "")).resolve() != source.resolve():
            continue
        for ev in finished_evals(rv):
            settings, field = rv["config"]["evals"][ev], RESEED.get(ev, "seed")
            base = held_settings.get(ev) if isinstance(held_settings.get(ev), dict) else {}
            if str(settings.get(field)) == seed and all(base[k] == v for k, v in settings.items() if k != field and k in base):
                held.add(ev)
    return held


def finished_evals(reevaluation: dict) -> list[str]:
    """The evals a reevaluation.json holds a result of that did not fail."""
    return [e for e in reevaluation.get("config", {}).get("evals", {})
            if isinstance(reevaluation.get(e), dict) and reevaluation[e].get("status") != "error"]


def holds_results(folder: Path) -> bool:
    """`folder` holds a reevaluation with at least one eval that did not fail."""
    path = folder / "reevaluation.json"
    return bool(finished_evals(json.loads(path.read_text()) if path.is_file() else {}))


def noise_commands(opts: dict, sources: list[Path]) -> list[tuple[str, list[str]]]:
    """(what, reevaluate.py arguments) for the eval-noise study on `sources` (noise_sources; see the module doc)."""
    evals = opts["noise_evals"].split(",")
    todo = []
    for run in sources:
        held = json.loads((run / "final_info.json").read_text())
        failed = [e for e in evals if isinstance(held.get(e), dict) and held[e].get("status") == "error"]
        missing = [e for e in evals if not isinstance(held.get(e), dict) or e in failed]  # a failed eval is run again
        if missing:
            todo.append((f"{run.name}: add {','.join(missing)}", [str(run), f"--evals={','.join(missing)}",
                                                                  f"--notes={Path(opts['out']) / 'notes.txt'}",
                                                                  *(["--replace"] if failed else [])]))
    out = Path(opts["out"])
    for s in opts["eval_seeds"].split(",") if sources else ():
        held = held_at_seed(out, sources[0], s)
        missing = [e for e in evals if e not in held]
        if not missing:
            continue
        # a study extended later (--noise_evals with an eval the first one left out) gets a folder of its own;
        # a folder is only written over when it holds no eval that did not fail
        names = [f"noise_evalseed_{s}", f"noise_evalseed_{'-'.join(missing)}_{s}"]
        names += [f"{names[1]}_{i}" for i in range(2, 100)]
        target = next(out / n for n in names if not holds_results(out / n))
        sets = [a for e in missing for a in ("--set", f"{e}.{RESEED.get(e, 'seed')}={s}")]
        todo.append((f"{sources[0].name} at eval seed {s}", [str(sources[0]), f"--out_dir={target}", f"--evals={','.join(missing)}",
                                                             *sets, f"--notes={out / 'notes.txt'}",
                                                             *(["--overwrite"] if target.exists() else [])]))
    return todo


def commands(opts: dict, extra: list[str]) -> list[tuple[str, list[str], int]]:
    """(variant, experiment.py arguments, number of SAEs) for every variant of the comparison."""
    out, seeds = Path(opts["out"]), opts["seeds"].split(",")
    seeded = set(opts["seeded"].split(","))
    todo = []
    for variant in opts["variants"].split(","):
        knob, grid = VARIANTS[variant].SPARSITY
        run_seeds = seeds if variant in seeded else seeds[:1]
        evals = variant_evals(variant, opts["evals"])
        args = [f"--out_dir={out / variant}", f"--variant={variant}",
                "--sweep", f"{variant}.{knob}=" + ",".join(f"{v:g}" for v in grid), "--sweep", "seed=" + ",".join(run_seeds),
                f"--n_tokens={opts['n_tokens']}", f"--evals={','.join(evals)}", *core_batches(opts),
                f"--notes={out / 'notes.txt'}", *extra]
        todo.append((variant, args, len(grid) * len(run_seeds)))
    return todo


def complete(out: Path, variant: str, n: int) -> bool:
    """Every SAE of this variant's sweep has its final_info.json (a folder is only renamed into place whole)."""
    infos = [out / f"{variant}_{i}" / "final_info.json" for i in range(n)]
    return all(p.is_file() for p in infos) and all(json.loads(p.read_text()).get("status") for p in infos)


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    opts = dict(DEFAULTS)
    for a in own:
        key, eq, value = a.removeprefix("--").partition("=")
        if key in FLAGS and not eq:
            opts[key] = "1"
        elif key in DEFAULTS and eq and value:
            opts[key] = value
        else:
            print(f"error: {a!r} is not an option of compare.py (options: {', '.join('--' + k for k in DEFAULTS)}, "
                  f"{', '.join('--' + f for f in FLAGS)}; flags after -- go to experiment.py)", file=sys.stderr)
            return 2
    unknown = [v for v in opts["variants"].split(",") + opts["seeded"].split(",") if v not in VARIANTS]
    if unknown:
        print(f"error: no variant {', '.join(map(repr, unknown))}; the variants are {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not opts["core_batches"].isdecimal() or int(opts["core_batches"]) < 1:
        print(f"error: --core_batches={opts['core_batches']!r}: a whole number of batches, at least 1", file=sys.stderr)
        return 2
    out = Path(opts["out"])
    other = other_core_batches(out, int(opts["core_batches"])) if "noise" not in opts and core_batches(opts) else {}
    if other:
        print(f"error: {out}/ holds runs whose core read other batch counts ({', '.join(f'{n}: {b}' for n, b in sorted(other.items())[:3])}"
              f"{', ...' if len(other) > 3 else ''}); give --core_batches={sorted(other.values())[0]} so that the runs compare, "
              "or another --out", file=sys.stderr)
        return 2
    start, times = time.perf_counter(), {}
    if "noise" in opts:
        sources = noise_sources(opts)
        if not sources:
            print(f"error: no finished {opts['seeded'].split(',')[0]} run at the --dose_at setting in {out}/: "
                  "run the comparison (python compare.py) first", file=sys.stderr)
            return 2
        todo = noise_commands(opts, sources)
        print(f"eval noise in {out}/: {len(todo)} evaluations of saved SAEs ({len(sources)} training seeds)")
        for what, args in todo:
            print("$ python reevaluate.py " + " ".join(args), flush=True)
            if "dry_run" in opts:
                continue
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "reevaluate.py"), *args], cwd=ROOT)
            times[what] = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"error: {what} exited {proc.returncode}; run the same command again to go on", file=sys.stderr)
                return proc.returncode
    else:
        todo = dose_commands(opts, extra) if "dose" in opts else commands(opts, extra)
        total_saes = sum(n for _, _, n in todo)
        print(f"{'dose-response' if 'dose' in opts else 'comparison'} in {out}/: {len(todo)} sweeps, {total_saes} SAEs "
              f"at {int(opts['n_tokens']):,} tokens each")
        for name, args, n in todo:
            if complete(out, name, n):
                print(f"[compare] {name}: its {n} runs are complete in {out}/, not trained again")
                continue
            print("$ python experiment.py " + " ".join(args), flush=True)
            if "dry_run" in opts:
                continue
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, str(ROOT / "experiment.py"), *args, "--overwrite"], cwd=ROOT)
            times[name] = time.perf_counter() - t0
            if proc.returncode not in (0, 1):  # 1: a run the gate failed (written as failed, shown as such)
                print(f"error: {name}'s runs exited {proc.returncode}; the comparison stops here "
                      f"(run the same command again to go on)", file=sys.stderr)
                return proc.returncode
    for name, seconds in times.items():
        print(f"[compare] {name}: {seconds / 60:.1f} min")
    print(f"[compare] wall time {(time.perf_counter() - start) / 60:.1f} min; figures and tables: "
          f"python plot.py --runs_glob='{out}/*' --out={out}/figures")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
