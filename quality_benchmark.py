"""Quality per token: the harness's recipes against EleutherAI's sparsify at the same budget (a script
that prints a table, not a test). It sits beside experiment.py and reevaluate.py, whose commands it runs.

    python quality_benchmark.py [--budgets=100000,300000] [--work=.cache/quality_benchmark]
                                         [--k=48] [--only=topk,relu,sparsify,...] [--core_batches=8]
                                         [--seeds=0,1,2] [--aux_seeds=0]

For each budget (training tokens; batch 256, so budget // 256 steps), on the embedded default (Gemma 3
270M, blocks.6.hook_resid_post, d_sae 4096, the same training documents and activation cache), it trains

- harness TopK (k = --k) with Adam at its default rate (AuxK 4) and with signum (`topk_signum`); the previous
  recipe (Adam 4e-4, AuxK 1/32, `previous`); and the default with AuxK 0 and Gao et al.'s 1/32 (`topk_aux`);
- harness ReLU + L1 at its defaults with Adam (`relu`) and signum (`relu_signum`), and with AuxK 1 (`relu_aux`);
- sparsify 1.3.3's TopK at its own defaults (SparseCoder; schedule-free sign-SGD, momentum 0.95,
  lr 5e-3 x sqrt(16384 / d_sae); b_dec at the first batch's mean; FVU loss; no AuxK; raw model
  activations), on the same batches the harness's buffer serves (seed 0, same rows in the same order),
  saved at the optimizer's averaged weights as sparsify saves, converted to SAELens's format (the
  conversion is checked: same reconstruction to 1e-4);

the defaults, sparsify and the open question (`topk`, `relu`, `relu_aux`, `sparsify`) at every seed of --seeds,
the recipes that lost (`topk_signum`, `previous`, `topk_aux`, `relu_signum`) at --aux_seeds; --only picks rows;
and scores every SAE with the harness's own core eval (same settings, same held-out sequences):
explained variance (1 - FVU), CE-loss score, KL score, L0, and the dead fraction over the training's
last dead-feature window (the harness's rule, applied to sparsify's firing too).

sparsify is installed for this script only, with `pip install --target .cache/sparsify` (not in
requirements.txt): its training loop needs a Hugging Face model and dataset, so the loop below drives
its own SparseCoder, SignSGD-in-ScheduleFreeWrapper and loss in the order its Trainer.fit does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":  # offline, before transformers/datasets are imported (they read it at import)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent
PREVIOUS_ADAM_LR = 4e-4
ROWS = ("topk", "topk_signum", "previous", "topk_aux", "relu", "relu_signum", "relu_aux", "sparsify")
SPARSIFY = ("eai-sparsify==1.3.3", "natsort==8.4.0")  # natsort: imported by sparsify's trainer module


def core_flags(batches: int) -> list[str]:
    """core's CE/KL batches, said out loud (8, its default): every row is scored alike; fewer only to check the script."""
    return ["--set", f"core.reconstruction_batches={batches}"]


def experiment(*args: str) -> None:
    cmd = [sys.executable, str(ROOT / "experiment.py"), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode not in (0, 1):  # 1: a run the gate failed (written as failed, listed in the table as such)
        raise SystemExit(f"error: {' '.join(cmd[1:])} exited {proc.returncode}")


def harness_runs(work: Path, budget: int, k: int, only: set[str], seeds: str, aux_seeds: str, core: list[str]) -> None:
    common = [f"--n_tokens={budget}", "--evals=core", *core, f"--notes={work / 'notes.txt'}", "--overwrite"]
    tag = lambda s: s.replace(",", "-")  # noqa: E731  (folders named by their seeds: a later command adds seeds beside)
    topk = ["--variant=topk", "--set", f"topk.k={k}"]
    runs = {  # row -> (folder, flags, seeds): the defaults and the decision at every seed, what lost at --aux_seeds
        "topk": ("topk", [*topk, "--optimizer=adam"], seeds),  # each optimizer at its default rate (lr 0: the rule)
        "topk_signum": ("topk_signum", [*topk, "--optimizer=signum"], aux_seeds),
        # the recipe before this benchmark: Adam at 4e-4 (the shared rule was 2e-4 x sqrt(16384 / 4096)), AuxK 1/32
        "previous": ("topk_previous", [*topk, f"--lr={PREVIOUS_ADAM_LR}", "--set", "topk.aux_loss_coefficient=0.03125"],
                     aux_seeds),
        "topk_aux": ("topk_aux", [*topk, "--sweep", "topk.aux_loss_coefficient=0,0.03125"], aux_seeds),
        "relu": ("relu", ["--variant=relu", "--optimizer=adam"], seeds),
        "relu_signum": ("relu_signum", ["--variant=relu", "--optimizer=signum"], aux_seeds),
        "relu_aux": ("relu_aux", ["--variant=relu", "--set", "relu.aux_loss_coefficient=1"], seeds),  # AuxK for ReLU?
    }
    for row, (folder, flags, row_seeds) in runs.items():
        if row in only:
            experiment(f"--out_dir={work / f'{folder}_seeds{tag(row_seeds)}'}", *flags, "--sweep", f"seed={row_seeds}",
                       *common)


def sparsify_importable() -> None:
    target = ROOT / ".cache" / "sparsify"
    if not (target / "sparsify").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *SPARSIFY],
                       check=True, env={**os.environ, "PIP_CACHE_DIR": str(ROOT / ".cache" / "pip")})
    sys.path.insert(0, str(target))


def train_sparsify(work: Path, budget: int, k: int, seed: int) -> Path:
    """sparsify's TopK on the batches the harness's buffer serves with this seed (and torch seeded with it);
    returns its SAE in SAELens's format."""
    sparsify_importable()
    import experiment as ex
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    cfg = ex.parse([f"--n_tokens={budget}", "--variant=topk", f"--seed={seed}"])
    loaded = ex.load(cfg)
    buffer = loaded.buffer(cfg.training)
    buffer.mean_activation(0)  # as the harness's Training does before its first batch (the buffer's first fill)
    d_in, d_sae, settings = loaded.model.cfg.d_model, cfg.target.d_sae or 4096, cfg.training
    torch.manual_seed(settings.seed)
    sae = SparseCoder(d_in, SparseCoderConfig(k=k, num_latents=d_sae), device="cpu")
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (d_sae / 2**14) ** 0.5}]),
                              momentum=0.95)
    opt.train()
    steps_since_fired = torch.zeros(d_sae, dtype=torch.long)
    scale = float(buffer.scale[0])
    for step in tqdm(range(settings.n_steps), desc="sparsify TopK", unit="step"):
        x = buffer.next_batch(settings.batch_size).acts[:, 0].float() / scale  # raw activations, as sparsify sees
        if step == 0:
            sae.b_dec.data = x.mean(0)  # sparsify: b_dec at the first batch's mean
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=None)  # auxk_alpha 0 (its default): no dead mask, no AuxK
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        fired = torch.zeros(d_sae, dtype=torch.bool)
        fired[out.latent_indices.flatten()] = True
        steps_since_fired += 1
        steps_since_fired[fired] = 0
    opt.eval()  # sparsify saves the averaged weights (Trainer.save)
    dead = float((steps_since_fired > settings.dead_window_steps).float().mean())

    harness_cfg = json.loads(next(work.glob("topk_*/sae/cfg.json")).read_text())  # the model, hook and context
    saelens = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=True,
                                    rescale_acts_by_decoder_norm=False,  # sparsify picks the top k of raw pre-activations
                                    metadata=SAEMetadata(**harness_cfg["metadata"])))
    with torch.no_grad():
        saelens.W_enc.copy_(sae.encoder.weight.T)
        saelens.b_enc.copy_(sae.encoder.bias)
        saelens.W_dec.copy_(sae.W_dec)
        saelens.b_dec.copy_(sae.b_dec)
        x = buffer.next_batch(settings.batch_size).acts[:, 0].float() / scale
        gap = (saelens(x) - sae(x).sae_out).abs().max().item() / x.abs().max().item()
    if gap > 1e-4:
        raise SystemExit(f"error: the SAELens copy of sparsify's SAE reconstructs differently (relative gap {gap:.2e})")
    folder = work / f"sparsify_sae_{seed}"
    saelens.save_model(str(folder))
    SAE.load_from_disk(str(folder))  # it loads back
    (folder / "training.json").write_text(json.dumps({"dead_frac": dead, "n_steps": settings.n_steps, "conversion_gap": gap}))
    return folder


METRICS = {"L0": "l0", "EV": "explained_variance", "CE score": "ce_loss_score", "KL score": "kl_div_score"}


def results(work: Path) -> dict[str, list[dict]]:
    """recipe -> one row of numbers per seed."""
    from evals.core import key_numbers

    out: dict[str, list[dict]] = {}
    for f in sorted(work.glob("*/final_info.json")):
        info = json.loads(f.read_text())
        c = info["config"]
        name = (f"{info['variant'].replace('topk', 'TopK').replace('relu', 'ReLU')} {c['training']['optimizer']} "
                f"lr {info['summary']['lr']:g}"
                + (f", L1 {c['variant']['l1_coefficient']:g}" if "l1_coefficient" in c["variant"] else "")
                + (f", AuxK {c['variant']['aux_loss_coefficient']:g}"
                   if info["variant"] == "topk" or c["variant"].get("aux_loss_coefficient") else ""))
        if info["status"] != "ok":
            name += f" [FAILED: {'; '.join(info['failures'])}]"
        out.setdefault(name, []).append({**{m: info["summary"].get(k, float("nan")) for m, k in METRICS.items()},
                                         "dead": info["training"]["final"]["dead_frac"]})
    for f in sorted(work.glob("sparsify_core_*/reevaluation.json")):
        seed = f.parent.name.removeprefix("sparsify_core_")
        dead = json.loads((work / f"sparsify_sae_{seed}" / "training.json").read_text())["dead_frac"]
        numbers = key_numbers(json.loads(f.read_text())["core"])
        out.setdefault("sparsify 1.3.3 TopK (its defaults)", []).append(
            {**{m: numbers[k] for m, k in METRICS.items()}, "dead": dead})
    return out


def cell(values: list[float], digits: int) -> str:
    """mean, and the spread (max - min) over seeds when there are several."""
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f}" + (f" ± {(max(values) - min(values)) / 2:.{digits}f}" if len(values) > 1 else "")


def main(argv: list[str]) -> int:
    opts = dict(a.removeprefix("--").split("=", 1) for a in argv)
    budgets = [int(b) for b in opts.get("budgets", "100000,300000").split(",")]
    k = int(opts.get("k", 48))
    only = set(opts.get("only", ",".join(ROWS)).split(","))
    base = ROOT / opts.get("work", ".cache/quality_benchmark")
    core = core_flags(int(opts.get("core_batches", 8)))
    sys.path.insert(0, str(ROOT))
    for budget in budgets:
        work = base / str(budget)
        work.mkdir(parents=True, exist_ok=True)
        harness_runs(work, budget, k, only, opts.get("seeds", "0,1,2"), opts.get("aux_seeds", "0"), core)
        for seed in [int(s) for s in opts.get("seeds", "0,1,2").split(",")] if "sparsify" in only else []:
            folder = train_sparsify(work, budget, k, seed)
            subprocess.run([sys.executable, str(ROOT / "reevaluate.py"), str(folder), "--overwrite",
                            f"--out_dir={work / f'sparsify_core_{seed}'}", f"--notes={work / 'notes.txt'}", "--evals=core", *core], cwd=ROOT, check=True)
    for budget in budgets:
        print(f"\n{budget:,} tokens ({budget // 256} steps of 256), d_sae 4096, TopK k={k}; core on the same held-out "
              "sequences; mean ± half the range over seeds (n)")
        print("| recipe | n | L0 | explained variance | CE-loss score | KL score | dead fraction |")
        print("|---|---|---|---|---|---|---|")
        for name, rows in results(base / str(budget)).items():
            col = lambda key, d: cell([r[key] for r in rows], d)  # noqa: E731
            print(f"| {name} | {len(rows)} | {col('L0', 1)} | {col('EV', 4)} | {col('CE score', 4)} | {col('KL score', 4)} "
                  f"| {col('dead', 3)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
