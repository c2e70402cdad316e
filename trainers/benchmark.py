"""Throughput benchmark of the training stage (a script that prints numbers, not a test).

    python -m trainers.benchmark [--n_tokens=40000] [--model=...] [--hook=...] [--variant=... --set VARIANT.FIELD=V]

It takes experiment.py's flags for what to train, training and the system (same sections, same
defaults). In one process, on the same model, hook and batch shapes as experiment.py, it measures
tokens/s of (1) the bare LM forward pass stopped right after the hooked layer, (2) for contrast the
full forward pass through the unembedding, which the training path never runs, (3) the SAE
training step alone on activations already in memory, (4) the whole training stage (buffer
refills + SAE steps) running the model, as with `--activation_cache=false`, (5) a first run's
training stage with the activation cache on: writing the cache (the model over every training
sequence) and training from it, (6) a later run's training stage, reading that cache, and (7) four
SAEs trained together on the cache (what --sweep does); and prints the ratios (4)/(1), (6)/(5) and
the 4-SAE sweep's time against one first run and against four single runs.
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
from trainers.data import build_sequences  # noqa: E402
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


def main(argv: list[str]) -> int:
    target, training, system, variant_cfg = parse(argv)
    bench_tokens = training.n_tokens
    device = pick_device(system.device)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(target.model, device=device, dtype=pick_dtype(system.dtype, device))
    layer = hook_layer(target.hook, model.cfg.n_layers)
    seqs = build_sequences(target.dataset, model.tokenizer, "train", target.context_size, max_tokens=4 * bench_tokens,
                           held_out_percent=target.held_out_percent)
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
        def first_run():
            desc = describe(target.model, dtype, device, [hook], run_seqs, "train", target.data_seed)
            cache, _ = open_or_build(model, run_seqs, [hook], desc, Path(folder), 1e6, mb)
            train_sae(new_sae(), ActivationBuffer(model, run_seqs, [hook], seqs_per_fill=settings.seqs_per_fill,
                                                  model_batch_size=mb, cache=cache), settings)

        def later_run():
            desc = describe(target.model, dtype, device, [hook], run_seqs, "train", target.data_seed)
            cache, report = open_or_build(model, run_seqs, [hook], desc, Path(folder), 1e6, mb)
            assert report.status == "read"
            train_sae(new_sae(), ActivationBuffer(model, run_seqs, [hook], seqs_per_fill=settings.seqs_per_fill,
                                                  model_batch_size=mb, cache=cache), settings)

        first = timed(first_run, settings.n_steps * batch_size)
        print(f"(5) training stage, first run (writes the cache over {len(run_seqs)} sequences, then trains from it): "
              f"{first:8.0f} tokens/s")
        later = timed(later_run, settings.n_steps * batch_size)
        print(f"(6) training stage, reading the cache  : {later:10.0f} tokens/s")

        def sweep_of_4():
            desc = describe(target.model, dtype, device, [hook], run_seqs, "train", target.data_seed)
            cache, _ = open_or_build(model, run_seqs, [hook], desc, Path(folder), 1e6, mb)
            shared = ActivationBuffer(model, run_seqs, [hook], seqs_per_fill=settings.seqs_per_fill,
                                      model_batch_size=mb, cache=cache)
            train_saes([Training(new_sae(), shared, settings) for _ in range(4)])

        four = timed(sweep_of_4, settings.n_steps * batch_size)
        print(f"(7) 4 SAEs trained together (--sweep), reading the cache: {four:8.0f} tokens/s of data "
              f"({4 * four:.0f} SAE-tokens/s)")
    print(f"ratio (6)/(5) = {later / first:.2f}   (6)/(4) = {later / whole:.2f}")
    print(f"time of the 4-SAE sweep / one SAE's first run = {first / four:.2f};  / 4 single runs (one first, three "
          f"on the cache) = {(1 / four) / (1 / first + 3 / later):.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
