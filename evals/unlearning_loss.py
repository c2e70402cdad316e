"""The loss-based unlearning score: how much clamping an intervention's SAE features raises the
model's next-token loss on held-out forget text while the loss on held-out retain text stays within a
tolerance. Works on any model (SAEBench's multiple-choice score needs one that knows the answers).

For each intervention, the relative increase of mean next-token loss on the forget text and on the
retain text; the score is the largest relative forget-loss increase among interventions whose
relative retain-loss increase is at most `tolerance` (0.01: 1%). None, with the reason, if none is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evals.saebench_glue import features_clamped


POINT = ("retain_threshold", "n_features", "multiplier")  # what names a sweep point


def sweep_point(iv: dict) -> dict:
    return {k: iv[k] for k in POINT}


def family(iv: dict) -> tuple:
    """A sweep point's family: the same clamped features (retain threshold, n features) at any multiplier."""
    return iv["retain_threshold"], iv["n_features"]


def relative_rise(loss: float, baseline: float) -> float:
    return (loss - baseline) / baseline


def loss_unlearning_score(baseline: dict, rows: list[dict], tolerance: float) -> dict:
    """baseline: {"forget_loss", "retain_loss"}; rows: one per intervention with the same keys.
    Adds the relative increases to each row and returns the score (see module doc)."""
    for r in rows:
        r["forget_loss_increase"] = relative_rise(r["forget_loss"], baseline["forget_loss"])
        r["retain_loss_increase"] = relative_rise(r["retain_loss"], baseline["retain_loss"])
    ok = [r for r in rows if r["retain_loss_increase"] <= tolerance + 1e-12]  # float slack at the boundary
    out = {"tolerance": tolerance, "n_interventions": len(rows), "n_within_tolerance": len(ok)}
    if not ok:
        return {**out, "score": None, "reason": f"no intervention kept the retain loss within +{tolerance:.0%}"}
    best = max(ok, key=lambda r: r["forget_loss_increase"])
    return {**out, "score": best["forget_loss_increase"], "best_intervention": best}


def forget_rise_at_tolerance(points: list[tuple[float, float, float]], tolerance: float) -> dict:
    """points: (multiplier, retain rise, forget rise) of one family of interventions (the same clamped
    features at several multipliers). With the origin (no clamp: no rise), in multiplier order, read
    piecewise-linearly: the forget rise where the retain rise first reaches `tolerance`, and the two
    multipliers bracketing that point (0 = the origin). When no point reaches the tolerance: the
    largest multiplier's forget rise, marked as a lower bound (the sweep stops before the tolerance)."""
    pts = [(0.0, 0.0, 0.0)] + sorted(points)
    for (m0, r0, f0), (m1, r1, f1) in zip(pts, pts[1:]):
        if r0 <= tolerance < r1:
            return {"forget_rise": f0 + (f1 - f0) * (tolerance - r0) / (r1 - r0), "bracket": [m0, m1],
                    "lower_bound": False}
    return {"forget_rise": pts[-1][2], "bracket": [pts[-1][0]], "lower_bound": True}


def interpolated_choice(rows: list[dict], tolerance: float) -> dict:
    """rows: the sweep with its relative increases (see loss_unlearning_score). Per family (retain
    threshold, n features) the forget rise at the retain tolerance (forget_rise_at_tolerance); the
    chosen family is the one with the largest. Why interpolated: SAEBench's rule takes the best sweep
    point within the tolerance, so the score jumps with where the multiplier grid happens to fall
    relative to the tolerance, and with the noise of the few points near it."""
    families: dict[tuple, list] = {}
    for r in rows:
        families.setdefault(family(r), []).append(
            (r["multiplier"], r["retain_loss_increase"], r["forget_loss_increase"]))
    table = [{"retain_threshold": k[0], "n_features": k[1], **forget_rise_at_tolerance(v, tolerance)}
             for k, v in families.items()]
    best = max(table, key=lambda t: t["forget_rise"])  # a lower bound above the others is still the best
    return {"families": table, "chosen": best}


def _special_ids(tok) -> torch.Tensor:
    return torch.tensor([t for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None])


@torch.no_grad()
def token_losses(model, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[rows, ctx - 1] float64 next-token losses from the model's own forward, every position: the
    reference the fast path is tested against."""
    return torch.cat([model(chunk.to(model.cfg.device), return_type="loss", loss_per_token=True).double().cpu()
                      for chunk in tokens.split(batch_size)])


def row_losses(model, tokens: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token losses, number of targets) per row, over real targets (BOS/EOS/pad targets
    excluded), from token_losses."""
    keep = ~torch.isin(tokens[:, 1:], _special_ids(model.tokenizer))
    return (token_losses(model, tokens, batch_size) * keep).sum(1), keep.sum(1)


@dataclass
class Clean:
    """One corpus's clean pass: what every intervention's rerun starts from."""
    tokens: torch.Tensor  # [rows, ctx]
    losses: torch.Tensor  # [rows, ctx - 1] float64 next-token losses, unmodified model
    keep: torch.Tensor  # [rows, ctx - 1] bool: real targets (not BOS/EOS/pad)
    resid: torch.Tensor  # [rows, ctx, d_model] the residual entering the SAE's layer
    first_firing: torch.Tensor  # [rows, d_sae] int32: first position (>= 1) where the feature fires; ctx if none

    def totals(self, losses: torch.Tensor | None = None) -> float:
        losses = self.losses if losses is None else losses
        return float((losses * self.keep).sum() / self.keep.sum().clamp_min(1))


@torch.no_grad()
def clean_model_pass(model, hook_name: str, layer: int, tokens: torch.Tensor, batch_size: int) -> dict:
    """clean_pass's model-only work, the same for every SAE on this hook (cached by the caller): per-token
    clean losses, the residual entering the hook's layer, and the hook's activations after BOS."""
    entry = f"blocks.{layer}.hook_resid_pre"
    out: dict[str, list] = {"losses": [], "resid": [], "hook_acts": []}
    for chunk in tokens.split(batch_size):
        loss, cache = model.run_with_cache(chunk.to(model.cfg.device), names_filter=[entry, hook_name],
                                           return_type="loss", loss_per_token=True)
        out["losses"].append(loss.double().cpu())
        out["resid"].append(cache[entry].cpu())
        out["hook_acts"].append(cache[hook_name][:, 1:].cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def clean_pass(model, sae, tokens: torch.Tensor, batch_size: int, model_only=None) -> Clean:
    """Per-token clean losses, the residual entering the SAE's layer, and where each SAE feature first
    fires in each row (after BOS: SAEBench's clamp zeroes position 0). `model_only(tokens, compute)`, if
    given, returns clean_model_pass's result from a cache (or computes it with `compute()`)."""
    compute = lambda: clean_model_pass(model, sae.cfg.hook_name, sae.cfg.hook_layer, tokens, batch_size)  # noqa: E731
    m = model_only(tokens, compute) if model_only else compute()
    ctx = tokens.shape[1]
    positions = torch.arange(1, ctx, dtype=torch.int32)
    first = []
    for acts in m["hook_acts"].split(batch_size):
        fires = (sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)) > 0).cpu()  # [B, ctx-1, d_sae]
        first.append(torch.where(fires, positions[None, :, None], ctx).amin(1).int())
    return Clean(tokens, m["losses"], ~torch.isin(tokens[:, 1:], _special_ids(model.tokenizer)), m["resid"],
                 torch.cat(first))


def unembed_chunk(d_vocab: int, max_bytes: int = 1 << 31) -> int:
    """Positions per unembedding product: its fp32 logits and their log-softmax fit in 2 x max_bytes
    (2,048 positions for a 262k vocabulary)."""
    return max(1, max_bytes // (4 * d_vocab))


@torch.no_grad()
def _rerun_losses(model, clean: Clean, rows: torch.Tensor, start: torch.Tensor, layer: int, batch_size: int,
                  w_u: torch.Tensor) -> torch.Tensor:
    """[len(rows), ctx - 1] losses under the hooks now on the model (the clamp): rows start again from
    the cached residual entering the SAE's layer, and only positions >= the row's first firing go through
    the final norm and the unembedding (earlier positions cannot change in a causal model: their clean
    losses are kept). Same arithmetic as the model's own forward (ln_final, unembed, softcap,
    log-softmax) on fewer positions. w_u: W_U.T made contiguous (TransformerLens's Unembed.forward
    copies it on every call, 671 MB for Gemma 3's 262k vocabulary; made once per sweep here, then
    F.linear as Unembed does it: the same numbers)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    out = clean.losses[rows].clone()
    finals, where, targets = [], [], []
    for i in range(0, len(rows), batch_size):  # the layers after the hook, batch_size rows at a time
        idx, first = rows[i:i + batch_size], start[i:i + batch_size]
        final = model(clean.resid[idx].to(model.cfg.device), start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
        pos = torch.arange(final.shape[1] - 1)
        r, t = torch.nonzero(pos[None, :] >= first[:, None], as_tuple=True)  # (row in batch, position)
        finals.append(final[r, t])
        where.append((i + r, t))
        targets.append(clean.tokens[idx][r, t + 1])
    if not finals:
        return out
    final, target = torch.cat(finals), torch.cat(targets).to(model.cfg.device)
    rr, tt = (torch.cat(w) for w in zip(*where))
    # The unembedding pooled over every row's positions, in chunks as large as the memory bound allows:
    # a [chunk, d_model] x [d_model, d_vocab] product runs ~20% faster per position at 2,048 rows than
    # at 256 on this CPU (each row's numbers are the same; ln_final is per position).
    chunk = unembed_chunk(model.cfg.d_vocab)
    for j in range(0, len(final), chunk):
        x = model.ln_final(final[j:j + chunk][None])
        logits = apply_softcap(F.linear(x, w_u, model.unembed.b_U), model.cfg.output_logits_soft_cap)[0]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target[j:j + chunk, None])[:, 0]
        out[rr[j:j + chunk], tt[j:j + chunk]] = -logp.double().cpu()
    return out


def loss_sweep(model, sae, interventions: list[dict], forget_tokens: torch.Tensor, retain_tokens: torch.Tensor,
               batch_size: int, desc: str = "unlearning sweep (loss)", skip_unaffected: bool = True,
               model_only=None, stop_past: float | None = None) -> tuple[dict, list[dict]]:
    """(baseline losses, one row per intervention with its forget and retain loss). Each intervention
    is a dict with its selected `features` and `multiplier` (see evals.unlearning).

    Why computed by hand around SAEBench's clamp: it changes the residual only at positions where one of
    the clamped features fires (elsewhere it adds back exactly the reconstruction error it took out), so
    in a causal model every position before a row's first firing keeps its clean loss, and a row where
    none fires keeps all of them. Only those positions are recomputed, starting from the residual that
    enters the SAE's layer: the same numbers (tests/test_unlearning_loss_exact.py) for a fraction of the
    work, which is what lets the score use enough tokens. `skip_unaffected=False` runs every row through
    the model's own forward under the clamp instead (the reference). `model_only`: see clean_pass.

    `stop_past`: once an intervention raises the retain loss by more than this (relative), the larger
    multipliers of its family (same retain threshold and n features; they must come in ascending
    multiplier order) are not measured and get no row. Why: the interpolated choice reads each family
    only up to its first point past the tolerance (forget_rise_at_tolerance), so the larger ones cannot
    change it; on the embedded default they were 10 of the select half's 16 interventions."""
    if stop_past is not None:
        multipliers: dict[tuple, list] = {}
        for iv in interventions:
            multipliers.setdefault(family(iv), []).append(iv["multiplier"])
        if any(m != sorted(m) for m in multipliers.values()):
            raise ValueError("stop_past needs each family's multipliers in ascending order")
    model.reset_hooks()
    corpora = {"forget": forget_tokens, "retain": retain_tokens}
    clean = {name: clean_pass(model, sae, t, batch_size, model_only) for name, t in corpora.items()}
    baseline = {f"{name}_loss": c.totals() for name, c in clean.items()}
    w_u = model.unembed.W_U.T.contiguous() if skip_unaffected else None
    rows, stopped = [], set()
    for iv in tqdm(interventions, desc=desc):
        if family(iv) in stopped:
            continue
        row = sweep_point(iv)
        features = [int(f) for f in iv["features"]]
        row.update(n_features_selected=len(features), features=features)
        for name, c in clean.items():
            n, ctx = c.tokens.shape
            start = c.first_firing[:, features].amin(1) if features else torch.full((n,), ctx)
            if not skip_unaffected and features:
                start = torch.ones(n, dtype=start.dtype)
            affected = torch.nonzero(start < ctx)[:, 0]
            losses = c.losses
            if len(affected):
                with features_clamped(model, sae, features, iv["multiplier"]):
                    if skip_unaffected:
                        losses = losses.clone()
                        losses[affected] = _rerun_losses(model, c, affected, start[affected], sae.cfg.hook_layer,
                                                         batch_size, w_u)
                    else:
                        losses = token_losses(model, c.tokens, batch_size)
            row[f"{name}_loss"] = c.totals(losses)
            row[f"{name}_rows_rerun"] = int(len(affected))
            row[f"{name}_positions_rerun"] = int((ctx - 1 - start[affected]).sum())  # loss positions recomputed
        rows.append(row)
        if stop_past is not None and relative_rise(row["retain_loss"], baseline["retain_loss"]) > stop_past:
            stopped.add(family(iv))
    return baseline, rows
