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
- Model-only work done once (`measure_cached`): `run_evals` runs, per reconstruction batch, the clean
  model, the model with the SAE spliced in and the model with the hook zero-ablated, all through the
  262k-word unembedding, and per sparsity/variance batch the model up to the hook; of those, only the
  spliced pass depends on the SAE. We draw the same token batches from the same ActivationsStore and
  keep, per (model, dtype, device kind, hook, token batches), the clean and zero-ablated per-token CE,
  the zero-ablated per-token KL, the residual entering the hook's layer, what KL(clean || with SAE)
  needs of the clean distribution (W_U p, b_U . p and sum p log p per token: the whole distribution
  is 262k floats a token, too big to keep; see model_only_pass) and the hook's activations
  (ctx.model_only). Per SAE: one pass from the hook's layer with the SAE spliced in, and SAEBench's
  own `get_sparsity_and_variance_metrics` and `get_featurewise_weight_based_metrics` fed the cached
  activations: one partial forward instead of three full ones. That pass reads its 262k-word logits once
  for logsumexp (CE = logsumexp - the next token's logit, KL from the kept W_U p) and once for their range
  (SAEBench's softmax-underflow test only where the range allows one), instead of log_softmax, logsumexp and
  softmax (about 22% of core's time per SAE here). Its CE is closer to float64's than TransformerLens's
  log_softmax (mean error 4e-7 against 2.5e-5 nats on 1,024 Gemma 3 tokens; the CE-loss score moves by
  3.5e-6). The metrics are assembled exactly as
  `run_evals` does; tests/test_core_cached.py proves every number equals `run_evals`'s to 1e-4.
  Hooks with a head dimension (hook_q/k/v/z) take `run_evals` itself.

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
    seed: int = 0  # eval reseed: the seed-th block of held-out sequences (0: the first), other text of the same kind


class EvalFailed(RuntimeError):
    pass


HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z")  # activations with a head dimension: run_evals itself


@torch.no_grad()
def hook_activations(model, token_batches, hook_name: str, hook_layer: int) -> list[torch.Tensor]:
    """The hook's activations per batch, as SAEBench's sparsity/variance pass takes them."""
    return [model.run_with_cache(tokens, prepend_bos=False, names_filter=[hook_name],
                                 stop_at_layer=hook_layer + 1)[1][hook_name] for tokens in token_batches]


@torch.no_grad()
def _reconstruction_over(sae, acts, token_batches, ignore_tokens):
    xs, x_hats = [], []
    for a, tokens in zip(acts, token_batches):
        x = a.reshape(-1, a.shape[-1])
        keep = ~torch.isin(tokens.reshape(-1), torch.tensor(sorted(ignore_tokens), device=tokens.device))
        x = x[keep].to(sae.device, sae.dtype)
        xs.append(x.float().cpu())
        x_hats.append(sae.decode(sae.encode(x)).float().cpu())
    return torch.cat(xs), torch.cat(x_hats)


def token_batches(store, n_reconstruction: int, n_sparsity_variance: int, batch_size: int):
    """The token batches run_evals draws from `store`: the reconstruction batches, then (after its reset of
    the store) the sparsity/variance batches."""
    recon = [store.get_batch_tokens(batch_size) for _ in range(n_reconstruction)]
    store.reset_input_dataset()
    return recon, [store.get_batch_tokens(batch_size) for _ in range(n_sparsity_variance)]


def _kl(original_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(original || new), SAEBench core's formula operation for operation."""
    original_probs = torch.nn.functional.softmax(original_logits, dim=-1)
    log_original_probs = torch.log(original_probs)
    log_new_probs = torch.log(torch.nn.functional.softmax(new_logits, dim=-1))
    return (original_probs * (log_original_probs - log_new_probs)).sum(dim=-1)


def _zero_ablate(acts, hook):
    return torch.zeros_like(acts)


class _Unembed:
    """The tail of HookedTransformer.forward (ln_final where the model has one, the unembedding, the final-logit
    softcap) on the last block's output; returns (ln_final's output, logits). TransformerLens's Unembed.forward
    makes the unembedding's transposed weight contiguous at every call (262k x 640 floats for Gemma 3, about
    1 s a batch on a CPU); here it is made once. The same F.linear on the same contiguous weight: the same
    logits, bit for bit (tests/test_core_cached.py)."""

    def __init__(self, model):
        from transformer_lens.utilities import apply_softcap

        self.model, self.softcap = model, apply_softcap
        self.w_t = model.unembed.W_U.T.contiguous()

    def __call__(self, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        h = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
        logits = torch.nn.functional.linear(h, self.w_t, model.unembed.b_U)
        return h, self.softcap(logits, model.cfg.output_logits_soft_cap)


# softmax(x)_v = exp(x_v - max x) / sum_w exp(x_w - max x) >= e^-(max x - min x + log(vocab)): above the dtype's
# smallest normal (float32 and bfloat16: 1.2e-38 = e^-87.3; float16: 6.1e-5 = e^-9.7) while that exponent stays
# this margin below its log, so only a row spanning more can underflow
UNDERFLOW_MARGIN = 7.0


def softmax_underflows(logits: torch.Tensor) -> torch.Tensor:
    """(softmax(logits, -1) == 0).any(-1), SAEBench's float32 softmax: computed only for the rows whose range
    of logits could underflow (a pass for min and max instead of a softmax over 262k words per row)."""
    lo, hi = logits.amin(-1), logits.amax(-1)  # two passes, yet 5x faster than torch.aminmax on a CPU
    out = torch.zeros(lo.shape, dtype=torch.bool, device=logits.device)
    risky = (hi - lo).float() + math.log(logits.shape[-1]) >= -math.log(torch.finfo(logits.dtype).tiny) - UNDERFLOW_MARGIN
    if risky.any():
        out[risky] = (torch.nn.functional.softmax(logits[risky], dim=-1) == 0).any(-1)
    return out


@torch.no_grad()
def model_only_pass(model, hook_name: str, hook_layer: int, recon, sparsity_variance) -> dict:
    """Everything core needs that does not depend on the SAE (see the module doc), per batch.

    KL(clean || with SAE) needs the whole clean distribution p at every token. Where the logits are
    linear in the final residual h (no final-logit softcap: Gemma 3, Pythia), sum_v p_v log q_v =
    h_q . (W_U p) + b_U . p - logsumexp(logits_q) x sum_v p_v, so p is kept as W_U p (d_model floats a
    token), b_U . p, sum_v p_v, sum_v p_v log p_v and whether p underflows to 0 anywhere; with a softcap (Gemma 2), the clean final residual is kept and the
    clean logits computed again per SAE."""
    from tqdm.auto import tqdm

    entry, final = f"blocks.{hook_layer}.hook_resid_pre", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    linear = model.cfg.output_logits_soft_cap <= 0
    w_u = model.unembed.W_U.T.double() if linear else None  # once: 262k x d_model in float64
    out: dict[str, list] = {k: [] for k in ("clean_ce", "zero_ce", "zero_kl", "entry", "final", "wu_p", "b_p", "p_log_p",
                                         "p_sum", "p_zero")}
    for tokens in tqdm(recon, desc="core: clean and zero-ablated passes (model only, cached)"):
        (logits, ce), cache = model.run_with_cache(tokens, return_type="both", loss_per_token=True,
                                                   names_filter=[entry, final])
        zero_logits, zero_ce = model.run_with_hooks(cache[entry], start_at_layer=hook_layer, tokens=tokens,
                                                    return_type="both", loss_per_token=True,
                                                    fwd_hooks=[(hook_name, _zero_ablate)])
        kept = {"clean_ce": ce, "zero_ce": zero_ce, "zero_kl": _kl(logits, zero_logits), "entry": cache[entry]}
        if linear:
            p = torch.nn.functional.softmax(logits, dim=-1)
            # SAEBench's p is a float32 softmax over 262k words: it sums to 1 only to ~1e-4, and its KL
            # carries that (sum_v p_v log q_v = h_q . W_U p + b_U . p - lse_q x sum_v p_v): p's own sum is
            # kept, and W_U p and b_U . p are summed in float64 so that they add no error of their own.
            kept.update(wu_p=torch.cat([c.double() @ w_u for c in p.split(1)]),
                        b_p=p.double() @ model.unembed.b_U.double(), p_sum=p.double().sum(-1),
                        p_log_p=(p * torch.log(p)).sum(-1), p_zero=(p == 0).any(-1))
            del p
        else:
            kept["final"] = cache[final]
        for k, v in kept.items():
            out[k].append(v.cpu())
        del logits, zero_logits, cache
    out["hook_acts"] = [a.cpu() for a in hook_activations(model, sparsity_variance, hook_name, hook_layer)]
    return out


class _Served:
    """Stands in for the model and the activation store in SAEBench's get_sparsity_and_variance_metrics,
    which reads only the store's get_batch_tokens and the model's run_with_cache: serves the cached
    token batches and their cached hook activations, in order."""

    def __init__(self, batches, acts, hook_name):
        self.batches, self.acts, self.hook_name, self.i = batches, acts, hook_name, -1

    def get_batch_tokens(self, n):
        self.i += 1
        assert len(self.batches[self.i]) == n
        return self.batches[self.i]

    def run_with_cache(self, tokens, **kwargs):
        assert tokens is self.batches[self.i]
        return None, {self.hook_name: self.acts[self.i]}


@torch.no_grad()
def measure_cached(sae, model, recon, sparsity_variance, config, ignore_tokens: set, cached: dict):
    """run_evals's (scalar metrics, feature metrics) for `config` with every flag on and special tokens
    excluded from the reconstruction, from `cached` (model_only_pass on the same batches) plus the
    SAE-dependent work (module doc)."""
    from sae_bench.evals.core.main import get_featurewise_weight_based_metrics, get_sparsity_and_variance_metrics
    from tqdm.auto import tqdm
    from transformer_lens.utils import lm_cross_entropy_loss

    hook_name, layer = sae.cfg.hook_name, sae.cfg.hook_layer
    ignore = torch.tensor(sorted(ignore_tokens))
    unembed = _Unembed(model)
    per: dict[str, list] = {k: [] for k in ("kl_div_with_sae", "kl_div_with_ablation", "ce_loss_with_sae",
                                            "ce_loss_without_sae", "ce_loss_with_ablation")}
    for i, tokens in enumerate(tqdm(recon, desc="core: the SAE spliced in, from the hook's layer")):
        mask = ~torch.isin(tokens, ignore.to(tokens.device))

        def splice(acts, hook):  # SAEBench's standard_replacement_hook
            x_hat = sae.decode(sae.encode(acts.to(sae.device))).to(acts.dtype).to(acts.device)
            return torch.where(mask[..., None], x_hat, acts)

        final_resid = model.run_with_hooks(cached["entry"][i].to(tokens.device), start_at_layer=layer,
                                           stop_at_layer=model.cfg.n_layers, fwd_hooks=[(hook_name, splice)])
        h, logits = unembed(final_resid)
        lse = torch.logsumexp(logits, dim=-1)
        if logits.dtype == torch.float32:
            # TransformerLens's per-token loss, -log_softmax(logits)[next token], as lse - logit[next token]: the
            # same number to float32 rounding, without a second 262k-word pass (test_core_cached: to 1e-4)
            ce = lse[:, :-1] - logits[:, :-1].gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
        else:  # in 16 bits lse (20-40) rounds far coarser than a log-probability (2-5): TransformerLens's own way
            ce = lm_cross_entropy_loss(logits, tokens.to(logits.device), per_token=True)
        if cached["wu_p"]:  # sum_v p_v log q_v from the kept W_U p (model_only_pass)
            wu_p = cached["wu_p"][i].to(h.device)
            p_log_q = ((h.to(wu_p) * wu_p).sum(-1) + cached["b_p"][i].to(wu_p)
                       - lse.to(wu_p) * cached["p_sum"][i].to(wu_p))
            kl = (cached["p_log_p"][i].to(wu_p) - p_log_q).float()
            # where SAEBench's float32 softmax underflows to 0, its formula gives NaN (in p: 0 x -inf) or
            # inf (in q only): so does this
            q_zero = softmax_underflows(logits)
            kl = torch.where(cached["p_zero"][i].to(kl.device), torch.nan, torch.where(q_zero, torch.inf, kl)).cpu()
        else:
            clean_logits = unembed(cached["final"][i].to(tokens.device))[1]
            kl = _kl(clean_logits, logits).cpu()
            del clean_logits
        del logits, h, final_resid
        m, m_ce = mask.cpu(), mask.cpu()[:, :-1]
        per["kl_div_with_sae"].append(kl[m])
        per["kl_div_with_ablation"].append(cached["zero_kl"][i][m])
        per["ce_loss_with_sae"].append(ce.cpu()[m_ce])
        per["ce_loss_without_sae"].append(cached["clean_ce"][i][m_ce])
        per["ce_loss_with_ablation"].append(cached["zero_ce"][i][m_ce])
    r = {k: torch.cat(v).mean().item() for k, v in per.items()}
    served = _Served(sparsity_variance, [a.to(sae.device) for a in cached["hook_acts"]], hook_name)
    sv, feature_metrics = get_sparsity_and_variance_metrics(
        sae, served, served, n_batches=len(sparsity_variance), compute_l2_norms=True, compute_sparsity_metrics=True,
        compute_variance_metrics=True, compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=len(sparsity_variance[0]), model_kwargs={}, ignore_tokens=ignore_tokens, verbose=True)
    feature_metrics |= get_featurewise_weight_based_metrics(sae)
    ctx_len = recon[0].shape[1]
    metrics = {  # run_evals's assembly, key for key
        "model_behavior_preservation": {
            "kl_div_score": (r["kl_div_with_ablation"] - r["kl_div_with_sae"]) / r["kl_div_with_ablation"],
            "kl_div_with_ablation": r["kl_div_with_ablation"], "kl_div_with_sae": r["kl_div_with_sae"]},
        "model_performance_preservation": {
            "ce_loss_score": (r["ce_loss_with_ablation"] - r["ce_loss_with_sae"])
            / (r["ce_loss_with_ablation"] - r["ce_loss_without_sae"]),
            **{k: r[k] for k in ("ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae")}},
        "reconstruction_quality": {k: sv[k] for k in ("explained_variance", "explained_variance_legacy", "mse", "cossim")},
        "shrinkage": {k: sv[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")},
        "sparsity": {k: sv[k] for k in ("l0", "l1")},
        "token_stats": {
            "total_tokens_eval_reconstruction": ctx_len * config.n_eval_reconstruction_batches * config.batch_size_prompts,
            "total_tokens_eval_sparsity_variance":
                ctx_len * config.n_eval_sparsity_variance_batches * config.batch_size_prompts},
    }
    return metrics, feature_metrics


def data_plan(target, settings: Settings) -> dict:
    """What core reads, on either data: the held-out documents of the training text (never SAEBench's
    own stream of that dataset from its start, which is the text training read)."""
    return {"source": "held-out documents of the training text", "datasets": [target.dataset],
            "held_out_percent": target.held_out_percent, "context_length": target.context_size,
            "sequences": settings.batch_size_prompts * max(settings.reconstruction_batches,
                                                           settings.sparsity_variance_batches)}


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
    held_out = ctx.held_out_block(batch_size_prompts * (n_reconstruction_batches + n_sparsity_variance_batches), settings.seed)
    dataset = Dataset.from_dict({"tokens": held_out.tolist()})  # pretokenized, BOS first

    def store():
        s = ActivationsStore.from_sae(model, sae, dataset=dataset, context_size=context_size, device=device)
        s.shuffle_input_dataset(seed=42)
        return s

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
    hook_name, hook_layer = sae.cfg.hook_name, sae.cfg.hook_layer
    recon, sv_batches = token_batches(store(), n_reconstruction_batches, n_sparsity_variance_batches, batch_size_prompts)
    if any(h in hook_name for h in HEAD_HOOKS) or getattr(sae.cfg, "hook_head_index", None) is not None:
        scalar_metrics, feature_metrics = run_evals(sae=sae, activation_store=store(), model=model, eval_config=config,
                                                    ignore_tokens=ignore_tokens, verbose=True)
        sv_acts = hook_activations(model, sv_batches, hook_name, hook_layer)
    else:
        cached = ctx.model_only("core", lambda: model_only_pass(model, hook_name, hook_layer, recon, sv_batches),
                                hook_name, [b.tolist() for b in recon], [b.tolist() for b in sv_batches])
        scalar_metrics, feature_metrics = measure_cached(sae, model, recon, sv_batches, config, ignore_tokens, cached)
        sv_acts = cached["hook_acts"]
    scalar_metrics["misc_metrics"] = calculate_misc_metrics(feature_metrics)

    x, x_hat = _reconstruction_over(sae, sv_acts, sv_batches, ignore_tokens)
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
