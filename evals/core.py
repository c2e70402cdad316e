"""SAEBench core eval (reconstruction, sparsity, shrinkage, CE-loss and KL preservation).

SAEBench's own `run_evals` does the measuring, with the already loaded model and a SAELens
ActivationsStore over the held-out token sequences (documents training never read, on both paths: SAEBench
itself would stream the hub dataset from its start, the same text training read). What we add, and why:
- sae_bench 0.6.0's `explained_variance` measures variance about zero (it squares the mean of x^2
  per dimension instead of the mean of x), so on a residual stream with a large mean it comes out
  near or above 1 whatever the SAE does. We record every token batch the eval's sparsity/variance
  half reads and compute 1 - FVU = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the same
  tokens (same BOS/EOS/pad mask; the error is not centred, as in SAELens since its fix). It replaces `explained_variance` in the saved result;
  SAEBench's number is kept as `explained_variance_saebench_about_zero`.
- SAEBench's `mse` is the per-token squared-error sum divided by the tokens in the batch; we add
  `mse_per_element` (mean over tokens and dimensions) and `mse_per_token_sum`, in model units.
- `multiple_evals` swallows exceptions and writes nothing; we call the narrow functions, and
  raise if no result file exists afterwards.

The summary in final_info.json is SAEBench's whole result (as in core_eval_results.json).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

from evals.context import EvalContext
from trainers.metrics import explained_variance

RESULT_FILE = "core_eval_results.json"


@dataclass
class Settings:
    reconstruction_batches: int = 8  # CE/KL: full forward passes through the unembedding, the slow part on a CPU
    sparsity_variance_batches: int = 16
    batch_size_prompts: int = 8


class EvalFailed(RuntimeError):
    pass


@torch.no_grad()
def _reconstruction_over(sae, model, token_batches, hook_name, hook_layer, ignore_tokens):
    xs, x_hats = [], []
    for tokens in token_batches:
        _, cache = model.run_with_cache(tokens, prepend_bos=False, names_filter=[hook_name], stop_at_layer=hook_layer + 1)
        x = cache[hook_name].reshape(-1, cache[hook_name].shape[-1])
        keep = ~torch.isin(tokens.reshape(-1), torch.tensor(sorted(ignore_tokens), device=tokens.device))
        x = x[keep].to(sae.device, sae.dtype)
        xs.append(x.float().cpu())
        x_hats.append(sae.decode(sae.encode(x)).float().cpu())
    return torch.cat(xs), torch.cat(x_hats)


def run(ctx: EvalContext, settings: Settings) -> dict:
    """Run SAEBench core on the SAE; write core_eval_results.json; return its contents."""
    from datasets import Dataset
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import (
        calculate_misc_metrics,
        get_eval_uuid,
        get_sae_bench_version,
        get_sae_lens_version,
        replace_nans_with_negative_one,
        run_evals,
        save_single_eval_result,
    )
    from sae_bench.sae_bench_utils import general_utils
    from sae_lens.training.activations_store import ActivationsStore

    model, device, dataset_name = ctx.model, ctx.device, ctx.dataset
    n_reconstruction_batches = settings.reconstruction_batches
    n_sparsity_variance_batches = settings.sparsity_variance_batches
    batch_size_prompts = settings.batch_size_prompts
    _, sae, _ = general_utils.load_and_format_sae("harness", ctx.sae, device)
    context_size = ctx.context_size
    # Held-out documents only, on both paths: SAEBench would stream the hub dataset by name from its
    # start, the very text training read. ctx.held_out streams it too (at full scale) but keeps only
    # the documents the split holds out of training.
    held_out = ctx.held_out(batch_size_prompts * (n_reconstruction_batches + n_sparsity_variance_batches))
    dataset = Dataset.from_dict({"tokens": held_out.tolist()})  # pretokenized, BOS first
    store = ActivationsStore.from_sae(model, sae, dataset=dataset, context_size=context_size, device=device)
    store.shuffle_input_dataset(seed=42)
    recorded: list[torch.Tensor] = []
    original_get_batch_tokens = store.get_batch_tokens

    def recording_get_batch_tokens(*args, **kwargs):
        tokens = original_get_batch_tokens(*args, **kwargs)
        recorded.append(tokens)
        return tokens

    store.get_batch_tokens = recording_get_batch_tokens

    config = CoreEvalConfig(
        model_name=ctx.model_name,
        llm_dtype=ctx.llm_dtype,
        batch_size_prompts=batch_size_prompts,
        n_eval_reconstruction_batches=n_reconstruction_batches,
        n_eval_sparsity_variance_batches=n_sparsity_variance_batches,
        dataset=dataset_name,
        context_size=context_size,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        exclude_special_tokens_from_reconstruction=True,
    )
    tok = model.tokenizer
    ignore_tokens = {t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if t is not None}
    scalar_metrics, feature_metrics = run_evals(
        sae=sae, activation_store=store, model=model, eval_config=config, ignore_tokens=ignore_tokens, verbose=True
    )
    scalar_metrics["misc_metrics"] = calculate_misc_metrics(feature_metrics)

    sv_batches = recorded[-n_sparsity_variance_batches:]
    x, x_hat = _reconstruction_over(sae, model, sv_batches, sae.cfg.hook_name, sae.cfg.hook_layer, ignore_tokens)
    recon = scalar_metrics["reconstruction_quality"]
    ours = {
        "explained_variance": explained_variance(x, x_hat),
        "explained_variance_saebench_about_zero": recon["explained_variance"],
        "mse_per_element": float((x - x_hat).pow(2).mean()),
        "mse_per_token_sum": float((x - x_hat).pow(2).sum(-1).mean()),
        "n_tokens_explained_variance": int(x.shape[0]),
    }
    recon["explained_variance"] = ours["explained_variance"]

    path = ctx.out_dir / RESULT_FILE
    tmp = ctx.out_dir / (RESULT_FILE + ".tmp")
    result = {
        "unique_id": "harness_custom_sae",
        "sae_set": "harness",
        "sae_id": "custom_sae",
        "eval_cfg": config,
        "metrics": scalar_metrics,
        "feature_metrics": feature_metrics,
    }
    # SAEBench's pydantic schema has no field for our extra numbers: save with its writer, then
    # add them to the JSON it wrote.
    # As SAEBench's multiple_evals does: per-feature ratios of features that never fired (0/0) -> -1.
    result = replace_nans_with_negative_one(result)
    save_single_eval_result(result, get_eval_uuid(), get_sae_lens_version(), get_sae_bench_version(), str(tmp), sae)
    if not tmp.exists():
        raise EvalFailed("SAEBench core wrote no result file")
    data = json.loads(tmp.read_text())
    data["eval_result_metrics"]["reconstruction_quality"].update(ours)
    data["eval_result_unstructured"] = {
        "note": "explained_variance is 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (uncentred error, total "
        "variance about the mean), computed by the harness over the sparsity/variance tokens; explained_variance_saebench_about_zero is sae_bench 0.6.0's value (variance about zero)."
    }
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return data


def key_numbers(result: dict) -> dict:
    """The headline numbers final_info.json's summary carries."""
    m = result["eval_result_metrics"]
    recon = m["reconstruction_quality"]
    perf = m["model_performance_preservation"]
    return dict(
        l0=m["sparsity"]["l0"],
        l1=m["sparsity"]["l1"],
        explained_variance=recon["explained_variance"],
        explained_variance_saebench_about_zero=recon["explained_variance_saebench_about_zero"],
        mse_per_element=recon["mse_per_element"],
        mse_saebench=recon["mse"],
        cossim=recon["cossim"],
        ce_loss_score=perf["ce_loss_score"],
        ce_loss_without_sae=perf["ce_loss_without_sae"],
        ce_loss_with_sae=perf["ce_loss_with_sae"],
        kl_div_score=m["model_behavior_preservation"]["kl_div_score"],
        # fired at least once on the sparsity pass's tokens: with ~16k tokens, rare features look dead
        frac_fired_on_eval_tokens=m["misc_metrics"]["frac_alive"],
        eval_sparsity_tokens=recon["n_tokens_explained_variance"],
    )


def failures(result: dict) -> list[str]:
    """Why this SAE is not a result: every feature off, worse than the mean, a non-finite number."""
    m = result["eval_result_metrics"]
    bad = []
    if m["sparsity"]["l0"] <= 0:
        bad.append(f"L0 = {m['sparsity']['l0']} (every feature is off)")
    ev = m["reconstruction_quality"]["explained_variance"]
    if not math.isfinite(ev) or ev < 0:
        bad.append(f"explained variance = {ev} (worse than predicting the mean)")
    for group in m.values():
        for k, v in group.items():
            if isinstance(v, float) and not math.isfinite(v):
                bad.append(f"core {k} is {v}")
    return bad


def headline(result: dict) -> str:
    n = key_numbers(result)
    return (f"L0 {n['l0']:.4g}, explained variance {n['explained_variance']:.4g}, CE-loss score {n['ce_loss_score']:.4g}, "
            f"KL score {n['kl_div_score']:.4g}, MSE/element {n['mse_per_element']:.4g}, "
            f"fired on the {n['eval_sparsity_tokens']:,} eval tokens {n['frac_fired_on_eval_tokens']:.4g}")
