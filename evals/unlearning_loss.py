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


@torch.no_grad()
def mean_next_token_loss(model, tokens: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over real targets (BOS/EOS/pad targets excluded)."""
    tok = model.tokenizer
    special = torch.tensor([t for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if t is not None])
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size].to(model.cfg.device)
        loss = model(batch, return_type="loss", loss_per_token=True).cpu()  # [B, L-1]
        keep = ~torch.isin(batch[:, 1:].cpu(), special)
        total += float(loss[keep].sum())
        count += int(keep.sum())
    return total / max(count, 1)


def loss_sweep(model, sae, interventions: list[dict], forget_tokens: torch.Tensor, retain_tokens: torch.Tensor,
               batch_size: int, desc: str = "unlearning sweep (loss)") -> tuple[dict, list[dict]]:
    """(baseline losses, one row per intervention with its forget and retain loss). Each intervention
    is a dict with its selected `features` and `multiplier` (see evals.unlearning)."""
    model.reset_hooks()
    baseline = {"forget_loss": mean_next_token_loss(model, forget_tokens, batch_size),
                "retain_loss": mean_next_token_loss(model, retain_tokens, batch_size)}
    rows = []
    for iv in tqdm(interventions, desc=desc):
        row = {k: iv[k] for k in ("retain_threshold", "n_features", "multiplier")}
        row.update(n_features_selected=len(iv["features"]), features=[int(f) for f in iv["features"]])
        if len(iv["features"]):
            with features_clamped(model, sae, iv["features"], iv["multiplier"]):
                row["forget_loss"] = mean_next_token_loss(model, forget_tokens, batch_size)
                row["retain_loss"] = mean_next_token_loss(model, retain_tokens, batch_size)
        else:  # nothing passes the retain threshold: the intervention is the identity
            row.update(baseline)
        rows.append(row)
    return baseline, rows
