"""The loss-based unlearning score: how much clamping an intervention's SAE features raises the
model's next-token loss on held-out forget text while the loss on held-out retain text stays within a
tolerance. Works on any model (SAEBench's multiple-choice score needs one that knows the answers).

For each intervention, the relative increase of mean next-token loss on the forget text and on the
retain text; the score is the largest relative forget-loss increase among interventions whose
relative retain-loss increase is at most `tolerance` (0.01: 1%). None, with the reason, if none is.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from evals.saebench_glue import features_clamped
from trainers.model import token_activations


def loss_unlearning_score(baseline: dict, rows: list[dict], tolerance: float) -> dict:
    """baseline: {"forget_loss", "retain_loss"}; rows: one per intervention with the same keys.
    Adds the relative increases to each row and returns the score (see module doc)."""
    for r in rows:
        r["forget_loss_increase"] = (r["forget_loss"] - baseline["forget_loss"]) / baseline["forget_loss"]
        r["retain_loss_increase"] = (r["retain_loss"] - baseline["retain_loss"]) / baseline["retain_loss"]
    ok = [r for r in rows if r["retain_loss_increase"] <= tolerance + 1e-12]  # float slack at the boundary
    out = {"tolerance": tolerance, "n_interventions": len(rows), "n_within_tolerance": len(ok)}
    if not ok:
        return {**out, "score": None, "reason": f"no intervention kept the retain loss within +{tolerance:.0%}"}
    best = max(ok, key=lambda r: r["forget_loss_increase"])
    return {**out, "score": best["forget_loss_increase"], "best_intervention": best}


def _special_ids(tok) -> torch.Tensor:
    return torch.tensor([t for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None])


@torch.no_grad()
def row_losses(model, tokens: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token losses, number of targets) per row, over real targets (BOS/EOS/pad targets
    excluded)."""
    special = _special_ids(model.tokenizer)
    sums, counts = [], []
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size].to(model.cfg.device)
        loss = model(batch, return_type="loss", loss_per_token=True).double().cpu()  # [B, L-1]
        keep = ~torch.isin(batch[:, 1:].cpu(), special)
        sums.append((loss * keep).sum(1))
        counts.append(keep.sum(1))
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def features_firing_per_row(model, sae, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[rows, d_sae] bool: does the feature fire anywhere in the row after BOS (SAEBench's clamp zeroes
    position 0, so BOS never counts)."""
    acts = token_activations(model, sae.cfg.hook_name, tokens, batch_size)  # BOS position dropped
    return torch.stack([(sae.encode(a.to(sae.W_dec.device, sae.W_dec.dtype)) > 0).any(0).cpu() for a in acts])


def loss_sweep(model, sae, interventions: list[dict], forget_tokens: torch.Tensor, retain_tokens: torch.Tensor,
               batch_size: int, desc: str = "unlearning sweep (loss)", skip_unaffected: bool = True) -> tuple[dict, list[dict]]:
    """(baseline losses, one row per intervention with its forget and retain loss). Each intervention
    is a dict with its selected `features` and `multiplier` (see evals.unlearning).

    Why computed by hand around SAEBench's clamp: it changes the residual only at positions where one of
    the clamped features fires (elsewhere it adds back exactly the reconstruction error it took out), so
    a row where none of them fires keeps its baseline loss. Only the rows where one fires are run again
    under the intervention: the same numbers (tests/test_unlearning_loss_exact.py) for a fraction of the
    forward passes, which is what lets the score use enough tokens (the retain rows rarely hold one).
    `skip_unaffected=False` runs every row again."""
    model.reset_hooks()
    corpora = {"forget": forget_tokens, "retain": retain_tokens}
    base = {name: row_losses(model, t, batch_size) for name, t in corpora.items()}
    firing = {name: features_firing_per_row(model, sae, t, batch_size) for name, t in corpora.items()} if skip_unaffected else None
    baseline = {f"{name}_loss": float(s.sum() / c.sum().clamp_min(1)) for name, (s, c) in base.items()}
    rows = []
    for iv in tqdm(interventions, desc=desc):
        row = {k: iv[k] for k in ("retain_threshold", "n_features", "multiplier")}
        features = [int(f) for f in iv["features"]]
        row.update(n_features_selected=len(features), features=features)
        for name, tokens in corpora.items():
            sums, counts = base[name]
            affected = (firing[name][:, features].any(1) if skip_unaffected else torch.ones(len(tokens), dtype=torch.bool)) \
                if features else torch.zeros(len(tokens), dtype=torch.bool)
            sums = sums.clone()
            if affected.any():
                with features_clamped(model, sae, features, iv["multiplier"]):
                    sums[affected] = row_losses(model, tokens[affected], batch_size)[0]
            row[f"{name}_loss"] = float(sums.sum() / counts.sum().clamp_min(1))
            row[f"{name}_rows_rerun"] = int(affected.sum())
        rows.append(row)
    return baseline, rows
