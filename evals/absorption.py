"""SAEBench feature absorption (first letter), run by SAEBench's own `run_eval` with the loaded model.

SAEBench trains a linear "first letter" probe on the model's activations at the word position of
in-context prompts ("{word} has the first letter:"), finds the SAE latents that k-sparse probes pick
for each letter, and measures how much of the probe direction other latents absorb on words where
the main latents stay silent.

What we change, and why (each is a patch for the duration of one call):
- `run_eval` loads the model by name from the hub: it is handed the already loaded model instead.
- Its activations are read at the hook layer only, but it runs full forward passes through the
  262k-word unembedding: we stop the forward right after the hook layer (same activations, ~20x
  faster on a CPU).
- The vocabulary is every purely alphabetic token (139,585 for Gemma 3: hours on a CPU). We use a
  seeded sample of `words_per_letter` words per letter (150 is about the least with which SAEBench's
  default 20 letters pass its probe-quality threshold), restricted to words that stay one token
  inside the prompt, so all prompts have equal length, as SAEBench's calculator requires. At full
  scale (`words_per_letter=0`) the whole vocabulary is used, as published.
- It writes relative to the working directory and under site-packages: every path is redirected
  into the run's own artifacts folder; the ground-truth probe, which depends only on model, layer
  and vocabulary, goes to a shared cache folder keyed by exactly those.
"""

from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evals.context import EvalContext
from evals.saebench_glue import formatted_sae, patched, write_json_atomic

RESULT_FILE = "absorption_eval_results.json"
TEMPLATE_PROBE = "\n{w} has the first letter:"
SEED = 42  # SAEBench's default


@dataclass
class Settings:
    words_per_letter: int = 150  # sampled vocabulary on the embedded default (at full scale: the whole vocabulary)
    batch_size: int = 32  # prompts per LM forward pass
    seed: int = 0  # eval reseed: another vocabulary sample, and every generator SAEBench draws from at 42 + seed


def working_dirs(ctx: EvalContext, probes_dir) -> tuple:
    """The run's absorption artifacts folder (made), its results folder (made) and the probes cache, all
    absolute: SAEBench is run inside the artifacts folder (it writes there relative to the working
    directory), and a path relative to the caller's folder (run_0.partial/..., RUN.adding/...) would
    no longer point where it should once inside it."""
    artifacts_dir = (ctx.out_dir / "artifacts" / "absorption").resolve()
    results_dir = artifacts_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    return artifacts_dir, results_dir, Path(probes_dir).resolve()


def sample_vocabulary(tokenizer, words_per_letter: int, seed: int) -> list[str]:
    from sae_bench.evals.absorption.vocab import LETTERS, get_alpha_tokens

    words = get_alpha_tokens(tokenizer)
    if words_per_letter <= 0:
        return words
    n_template = len(tokenizer(TEMPLATE_PROBE.format(w="a"), add_special_tokens=False)["input_ids"])
    ids = tokenizer([TEMPLATE_PROBE.format(w=w) for w in words], add_special_tokens=False)["input_ids"]
    by_letter: dict[str, list[str]] = {c: [] for c in LETTERS}
    for w, i in zip(words, ids):
        if len(i) == n_template:  # one token inside the prompt: all prompts the same length
            by_letter.setdefault(w.strip()[0].lower(), []).append(w)
    rng = random.Random(seed)
    vocab = []
    for c in LETTERS:
        pool = sorted(set(by_letter[c]))
        vocab += rng.sample(pool, min(words_per_letter, len(pool)))
    rng.shuffle(vocab)
    return vocab


class _LoadedModel:
    """Stands where SAEBench's main module expects the HookedTransformer class."""

    def __init__(self, model):
        self.model = model

    def from_pretrained_no_processing(self, *args, **kwargs):
        return self.model


def data_plan(target, settings: Settings) -> dict:
    """SAEBench builds absorption's prompts from the model's own vocabulary: a sample per letter on
    embedded data, the whole vocabulary (SAEBench's stock) otherwise. No dataset is fetched."""
    embedded = target.eval_data == "embedded"
    return {"source": "the model's vocabulary" + (" (sampled)" if embedded else " (SAEBench stock: all of it)"),
            "datasets": [], "words_per_letter": settings.words_per_letter if embedded else "all"}


def run(ctx: EvalContext, settings: Settings) -> dict:
    """Writes absorption_eval_results.json (SAEBench schema) and returns a summary; if too few
    letters have a usable probe, the summary says not applicable, with SAEBench's threshold."""
    import sae_bench.evals.absorption.common as abs_common
    import sae_bench.evals.absorption.feature_absorption as abs_fa
    import sae_bench.evals.absorption.main as abs_main
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    model, model_name, device, seed = ctx.model, ctx.model_name, ctx.device, SEED + settings.seed
    words_per_letter = settings.words_per_letter if ctx.embedded else 0
    sae_id, sae = formatted_sae(ctx.sae, device)
    layer = sae.cfg.hook_layer
    if sae.cfg.hook_name != f"blocks.{layer}.hook_resid_post":
        return {"status": "not_applicable", "reason": "SAEBench absorption reads hook_resid_post only"}
    vocab = sample_vocabulary(model.tokenizer, words_per_letter, seed)
    artifacts_dir, results_dir, probes_dir = working_dirs(
        ctx, ctx.cache_path("absorption-probe", sae.cfg.hook_name, TEMPLATE_PROBE, vocab,
                            *([seed] if seed != SEED else [])))
    config = AbsorptionEvalConfig(model_name=model_name, random_seed=seed, llm_batch_size=settings.batch_size,
                                  llm_dtype=ctx.llm_dtype, k_sparse_probe_batch_size=128,
                                  precalc_k_sparse_probe_sae_acts=True)
    full_forward = model.run_with_cache

    def run_with_cache_to_hook_layer(*args, **kwargs):
        kwargs.setdefault("stop_at_layer", layer + 1)
        return full_forward(*args, **kwargs)

    # SAEBench ignores config.random_seed: seed every generator it draws from.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    vocabulary = lambda tokenizer, *a, **k: list(vocab)  # noqa: E731
    with patched(model, "run_with_cache", run_with_cache_to_hook_layer), \
            patched(abs_common, "get_alpha_tokens", vocabulary), patched(abs_fa, "get_alpha_tokens", vocabulary), \
            patched(abs_main, "HookedTransformer", _LoadedModel(model)), \
            patched(abs_main, "run_k_sparse_probing_experiment",
                    functools.partial(abs_main.run_k_sparse_probing_experiment,
                                      experiment_dir=str(artifacts_dir / "k_sparse_probing"),
                                      probes_dir=str(probes_dir))), \
            patched(abs_main, "run_feature_absortion_experiment",
                    functools.partial(abs_main.run_feature_absortion_experiment,
                                      experiment_dir=str(artifacts_dir / "feature_absorption"),
                                      sparse_probing_experiment_dir=str(artifacts_dir / "k_sparse_probing"),
                                      probes_dir=str(probes_dir))), \
            contextlib.chdir(artifacts_dir):
        results = abs_main.run_eval(config, [("harness", sae)], device, str(results_dir), force_rerun=True)
    base = {"vocabulary_size": len(vocab), "words_per_letter": words_per_letter,
            "vocabulary_source": "the model's own tokenizer (SAEBench get_alpha_tokens)"}
    if not results:
        return {"status": "not_applicable", **base,
                "reason": f"fewer than {config.min_feats_for_eval} letters have a first-letter probe with "
                          f"F1 > {config.min_GT_probe_f1} (SAEBench's threshold); more words per letter may help"}
    data = next(iter(results.values()))
    write_json_atomic(ctx.out_dir / RESULT_FILE, data)
    m = data["eval_result_metrics"]["mean"]
    return {"status": "ok", **base, **m, "n_letters": len(data["eval_result_details"]), "result_file": RESULT_FILE}


def headline(r: dict) -> str:
    if r.get("status") != "ok":
        return f"n/a ({r.get('reason')})"
    return (f"mean absorption fraction {r['mean_absorption_fraction_score']:.3g}, full absorption "
            f"{r['mean_full_absorption_score']:.3g}")
