"""One command per comparison: every variant along the sparsity frontier, the baselines at several seeds,
all on the same cached activations, then evaluated (a script on top of experiment.py, whose commands it runs).

    python compare.py [--out=comparison] [--n_tokens=100000] [--variants=relu,topk,...] [--seeded=relu,topk]
                      [--seeds=0,1,2] [--evals=core,diagnostics] [--dry_run] [-- FLAGS FOR experiment.py ...]

For each variant: `experiment.py --variant=V --sweep V.KNOB=v1,v2,... [--sweep seed=...]`, its sparsity setting
and grid from the variant's SPARSITY (trainers/), every point of the grid trained together in one pass over
the cached activations; the --seeded variants (the baselines the others are judged against) at every seed of
--seeds, the others at the first. Each SAE is its own run folder, OUT/VARIANT_i, with its own notes section
in OUT/notes.txt. A variant whose folders are all complete is not trained again (so a comparison that was
stopped goes on where it was, and adding a variant trains only it). Then:

    python plot.py --runs_glob='comparison/*' --out=comparison/figures

draws the frontiers and writes the matched-L0 table. The wall time of each variant and of the whole is printed.
"""

from __future__ import annotations

import json
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
DEFAULTS = {"out": "comparison", "n_tokens": "100000", "variants": ",".join(VARIANTS), "seeded": "relu,topk",
            "seeds": "0,1,2", "evals": "core,diagnostics"}


def commands(opts: dict, extra: list[str]) -> list[tuple[str, list[str], int]]:
    """(variant, experiment.py arguments, number of SAEs) for every variant of the comparison."""
    out, seeds = Path(opts["out"]), opts["seeds"].split(",")
    seeded = set(opts["seeded"].split(","))
    todo = []
    for variant in opts["variants"].split(","):
        knob, grid = VARIANTS[variant].SPARSITY
        run_seeds = seeds if variant in seeded else seeds[:1]
        evals = opts["evals"].split(",")  # plus the evals its target metrics come from (adversarial: SCR)
        evals += [p[0] for _, p in getattr(VARIANTS[variant], "TARGET_METRICS", ()) if p[0] in ("scr", "tpp") and p[0] not in evals]
        args = [f"--out_dir={out / variant}", f"--variant={variant}",
                "--sweep", f"{variant}.{knob}=" + ",".join(f"{v:g}" for v in grid), "--sweep", "seed=" + ",".join(run_seeds),
                f"--n_tokens={opts['n_tokens']}", f"--evals={','.join(evals)}", f"--notes={out / 'notes.txt'}", *extra]
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
        if key == "dry_run" and not eq:
            opts["dry_run"] = "1"
        elif key in DEFAULTS and eq and value:
            opts[key] = value
        else:
            print(f"error: {a!r} is not an option of compare.py (options: {', '.join('--' + k for k in DEFAULTS)}, "
                  "--dry_run; flags after -- go to experiment.py)", file=sys.stderr)
            return 2
    unknown = [v for v in opts["variants"].split(",") + opts["seeded"].split(",") if v not in VARIANTS]
    if unknown:
        print(f"error: no variant {', '.join(map(repr, unknown))}; the variants are {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    out = Path(opts["out"])
    todo = commands(opts, extra)
    total_saes = sum(n for _, _, n in todo)
    print(f"comparison in {out}/: {len(todo)} variants, {total_saes} SAEs at {int(opts['n_tokens']):,} tokens each")
    start, times = time.perf_counter(), {}
    for variant, args, n in todo:
        if complete(out, variant, n):
            print(f"[compare] {variant}: its {n} runs are complete in {out}/, not trained again")
            continue
        print("$ python experiment.py " + " ".join(args), flush=True)
        if "dry_run" in opts:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "experiment.py"), *args, "--overwrite"], cwd=ROOT)
        times[variant] = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 1: a run the gate failed (written as failed, shown as such)
            print(f"error: {variant}'s runs exited {proc.returncode}; the comparison stops here "
                  f"(run the same command again to go on)", file=sys.stderr)
            return proc.returncode
    for variant, seconds in times.items():
        print(f"[compare] {variant}: {seconds / 60:.1f} min")
    print(f"[compare] wall time {(time.perf_counter() - start) / 60:.1f} min; figures and the matched-L0 table: "
          f"python plot.py --runs_glob='{out}/*' --out={out}/figures")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
