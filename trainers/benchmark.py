"""Throughput benchmark of the training stage (a script that prints numbers, not a test).

    python -m trainers.benchmark [--n_tokens=40000] [--model=...] [--hook=...] [--variant=... --set VARIANT.FIELD=V]
    python -m trainers.benchmark --repeat_default_run [experiment.py flags]   (two whole runs: see repeat_default_run)

It takes experiment.py's flags for what to train, training and the system (same sections, same
defaults). In one process, on the same model, hook and batch shapes as experiment.py, it measures
tokens/s of (1) the bare LM forward pass stopped right after the hooked layer, (2) for contrast the
full forward pass through the unembedding, which the training path never runs, (3) the SAE
training step alone on activations already in memory, (4) the whole training stage (buffer
refills + SAE steps) running the model, as with `--activation_cache=false`, (5) a first run's
training stage with the activation cache on: writing the cache (the model over every training
sequence) and training from it, (6) a later run's training stage, reading that cache, (7) four
SAEs trained together on the cache (what --sweep does), and (8) the TopK SAE step with the dense and
the sparse decoder product; and prints the ratios (4)/(1), (6)/(5), the 4-SAE sweep's time against
one first run and against four single runs, and sparse/dense.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # offline, before transformers/datasets are imported (they read it at import)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from trainers import VARIANTS  # noqa: E402
from trainers.activation_cache import describe, open_or_build  # noqa: E402
from trainers.buffer import ActivationBuffer  # noqa: E402
from trainers.config import System, Target, UsageError, set_flag, set_named, split_args  # noqa: E402
from trainers.data import DataError, build_sequences  # noqa: E402
from trainers.model import hook_layer, load_model, pick_device, pick_dtype  # noqa: E402
from trainers.trainer import Training, TrainSettings, train_sae, train_saes  # noqa: E402


def timed(fn, n_tokens: int) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n_tokens / (time.perf_counter() - start)


def parse(argv: list[str]):
    """experiment.py's sections for what to train, training and the system; --n_tokens is the
    benchmark's budget per measurement (default 40,000)."""
    flags, sets = split_args(argv)
    target, training, system = Target(), TrainSettings(n_tokens=40_000), System()
    for key, value in flags:
        set_flag([target, training, system], key, value)
    variant_cfg = target.resolve(VARIANTS)
    for item in sets:
        set_named({target.variant: variant_cfg}, item, {})
    VARIANTS[target.variant].check(variant_cfg)
    return target, training, system, variant_cfg


def repeat_default_run(argv: list[str]) -> int:
    """`--repeat_default_run`: experiment.py's run (its defaults, plus `argv`) twice in a row, both caches
    (activations, evals' model-only work) starting empty in a fresh folder: the first run fills them,
    the repeat reads them. Prints each run's wall time and stage times and the ratio repeat/first."""
    import json
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="default-run-bench-") as folder:
        walls, infos = [], []
        for name in ("first", "repeat"):
            cmd = [sys.executable, str(repo / "experiment.py"), f"--out_dir={folder}/{name}",
                   f"--activation_cache_dir={folder}/activations", f"--eval_cache_dir={folder}/evals",
                   f"--notes={folder}/notes.txt", *argv]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=repo)
            walls.append(time.perf_counter() - start)
            infos.append(json.loads(Path(folder, name, "final_info.json").read_text()))
            stages = {"training": infos[-1]["training"]["wall_time_s"],
                      **{e: infos[-1][e]["wall_time_s"] for e in infos[-1]["config"]["evals"] if e in infos[-1]}}
            print(f"[{name} run] {walls[-1] / 60:.1f} min wall: " +
                  ", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items()), flush=True)
        same = all(infos[0]["summary"][k] == infos[1]["summary"][k] for k in infos[0]["summary"]
                   if k not in ("train_tokens_per_s",) and not k.endswith("wall_time_s"))
    print(f"repeat / first wall time = {walls[1] / walls[0]:.2f}; summaries identical: {same}")
    return 0


def main(argv: list[str]) -> int:
    if "--repeat_default_run" in argv:
        return repeat_default_run([a for a in argv if a != "--repeat_default_run"])
    target, training, system, variant_cfg = parse(argv)
    bench_tokens = training.n_tokens
    device = pick_device(system.device)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(target.model, device=device, dtype=pick_dtype(system.dtype, device))
    layer = hook_layer(target.hook, model.cfg.n_layers)
    seqs = build_sequences(target.dataset, model.tokenizer, "train", target.context_size, max_tokens=4 * bench_tokens,
                           held_out_percent=target.held_out_percent, text_field=target.text_field)
    mb, ctx, hook = training.model_batch_size, target.context_size, target.hook
    print(f"model {target.model} on {device}, hook {hook} (stop_at_layer={layer + 1} of {model.cfg.n_layers}), "
          f"LM batch {mb} x {ctx} tokens, SAE batch {training.batch_size} x d_in {model.cfg.d_model} -> "
          f"d_sae {target.d_sae}, {torch.get_num_threads()} threads")

    n_fwd = max(1, bench_tokens // (mb * ctx))
    batches = [seqs.tokens[i * mb:(i + 1) * mb].to(device) for i in range(n_fwd)]
    with torch.no_grad():
        model.run_with_cache(batches[0], names_filter=[hook], stop_at_layer=layer + 1)  # warm-up
        fwd = timed(lambda: [model.run_with_cache(b, names_filter=[hook], stop_at_layer=layer + 1) for b in batches],
                    n_fwd * mb * ctx)
        full = timed(lambda: model(batches[0]), mb * ctx)
    print(f"(1) LM forward up to the hooked layer : {fwd:10.0f} tokens/s")
    print(f"(2) LM full forward, for contrast      : {full:10.0f} tokens/s (the training path never runs it)")

    variant = VARIANTS[target.variant]
    settings = dataclasses.replace(training, log_every=10**9)
    batch_size = settings.batch_size

    def new_sae():
        return variant.build_sae(variant_cfg, model.cfg.d_model, target.d_sae, settings.n_steps,
                                 decoder_init_norm=1.0, device=device)

    # (3) SAE step alone: the buffer is pre-filled with enough rows, so no LM work is timed
    class Prefilled:
        def __init__(self, buffer, n_rows):
            self.inner = buffer
            self.batches = [buffer.next_batch(batch_size) for _ in range(n_rows // batch_size)]
            self.i = 0

        def next_batch(self, _):
            self.i += 1
            return self.batches[(self.i - 1) % len(self.batches)]

        def __getattr__(self, name):
            return getattr(self.inner, name)

    pre = Prefilled(ActivationBuffer(model, seqs, [hook], seqs_per_fill=settings.seqs_per_fill,
                                     model_batch_size=mb), 8 * batch_size)
    step = timed(lambda: train_sae(new_sae(), pre, settings), settings.n_steps * batch_size)
    print(f"(3) SAE training step alone            : {step:10.0f} tokens/s")

    buffer = ActivationBuffer(model, seqs, [hook], seqs_per_fill=settings.seqs_per_fill, model_batch_size=mb)
    whole = timed(lambda: train_sae(new_sae(), buffer, settings), settings.n_steps * batch_size)
    print(f"(4) whole training stage               : {whole:10.0f} tokens/s")
    print(f"ratio (4)/(1) = {whole / fwd:.2f}   (1/(1/(1)+1/(3)) = {1 / (1 / fwd + 1 / step) / fwd:.2f} if the two "
          f"simply add up; BOS tokens are computed but not trained on: {(ctx - 1) / ctx:.3f})")

    # (5) and (6): the activation cache, in a fresh folder, over the sequences experiment.py would build
    run_seqs = dataclasses.replace(seqs, tokens=seqs.tokens[: settings.sequences_needed(ctx)],
                                   doc_index=seqs.doc_index[: settings.sequences_needed(ctx)])
    dtype = next(model.parameters()).dtype
    with tempfile.TemporaryDirectory(prefix="activation-cache-bench-") as folder:
        def on_the_cache(n_saes: int, expect: str):
            """A training stage through the activation cache in `folder`: `expect` "built" (a first run
            writes it, then trains from it) or "read" (a later run)."""
            desc = describe(target.model, dtype, device, [hook], run_seqs, "train", target.data_seed)
            cache, report = open_or_build(model, run_seqs, [hook], desc, Path(folder), 1e6, mb)
            assert report.status == expect, report
            shared = ActivationBuffer(model, run_seqs, [hook], seqs_per_fill=settings.seqs_per_fill,
                                      model_batch_size=mb, cache=cache)
            train_saes([Training(new_sae(), shared, settings) for _ in range(n_saes)])

        first = timed(lambda: on_the_cache(1, "built"), settings.n_steps * batch_size)
        print(f"(5) training stage, first run (writes the cache over {len(run_seqs)} sequences, then trains from it): "
              f"{first:8.0f} tokens/s")
        later = timed(lambda: on_the_cache(1, "read"), settings.n_steps * batch_size)
        print(f"(6) training stage, reading the cache  : {later:10.0f} tokens/s")
        four = timed(lambda: on_the_cache(4, "read"), settings.n_steps * batch_size)
        print(f"(7) 4 SAEs trained together (--sweep), reading the cache: {four:8.0f} tokens/s of data "
              f"({4 * four:.0f} SAE-tokens/s)")
    print(f"ratio (6)/(5) = {later / first:.2f}   (6)/(4) = {later / whole:.2f}")
    print(f"time of the 4-SAE sweep / one SAE's first run = {first / four:.2f};  / 4 single runs (one first, three "
          f"on the cache) = {(1 / four) / (1 / first + 3 / later):.2f}")
    topk_decoders(model.cfg.d_model, target.d_sae, pre, settings, device,
                  variant_cfg if target.variant == "topk" else None)
    return 0


def topk_decoders(d_in: int, d_sae: int, prefilled, settings: TrainSettings, device: str, cfg=None) -> None:
    """(8) The TopK SAE's training step with the dense decoder product and with the sparse one
    (trainers/topk.py), alternated three times on the same pre-filled batches; the median of each."""
    from trainers import topk

    cfg = cfg or topk.Config()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        for mode in rates:
            sae = topk.build_sae(dataclasses.replace(cfg, sparse_decoder=mode), d_in, d_sae, settings.n_steps,
                                 decoder_init_norm=1.0, device=device)
            rates[mode].append(timed(lambda: train_sae(sae, prefilled, settings), settings.n_steps * settings.batch_size))
    med = {m: sorted(r)[1] for m, r in rates.items()}
    print(f"(8) TopK (k={cfg.k}) SAE training step, median of 3: dense decoder {med['off']:8.0f} tokens/s, sparse "
          f"decoder {med['on']:8.0f} tokens/s, ratio sparse/dense = {med['on'] / med['off']:.2f}")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
