"""Selective orthogonality SAE (seed 002): ReLU + L1 plus an orthogonality penalty between the
decoder rows of "forget"-domain features and "retain"-domain features.

Every training row is tagged with its domain by the buffer (its document's topic: `forget_topic`,
biology and health text by default, the stand-in for WMDP-bio; everything else is "retain"). Per
feature and per domain, EMAs (decay `stats_decay`) of firing frequency, mean, mean square and max
activation are kept from each batch. Grouping, "threshold" (default): with the forget share of
firing s = freq_forget / (freq_forget + freq_retain), a feature joins the forget group when
s - (1 - s) > alpha and the retain group when (1 - s) - s > alpha. "kmeans": 3-means on the
standardized (mean, max, std) statistics of both domains; the cluster with the highest mean forget
share is the forget group, the lowest the retain group. Penalty: mean over (forget, retain) feature
pairs of cos^2 between their decoder rows (eps in every norm), weighted by
weight x (1 - exp(-step / warmup)), warmup = warmup_frac x steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers import relu
from trainers.labelled_data import FORGET_TOPIC
from trainers.metrics import EPS, cosines, domain_groups, forget_share
from trainers.trainer import StepData
from trainers.variant_sae import VariantSAE, VariantSettingError, ema, exp_ramp, require

LOSS_TERM = ("orthogonality_loss", "forget x retain decoder cos^2 x ramp")
SPARSITY = relu.SPARSITY
# what it aims to move: forget and retain features' decoder directions apart (lower is more separated)
TARGET_METRICS = (("forget x retain abs cos", ("diagnostics", "cross_group_decoder_abs_cos")),)

STATS = ("freq", "mean", "sq", "max")


@dataclass
class Config(relu.Config):
    weight: float = 0.1
    warmup_frac: float = 0.1  # penalty ramp 1 - exp(-step / (warmup_frac x steps))
    alpha: float = 0.3  # relative threshold for the forget/retain groups
    grouping: str = "threshold"  # or "kmeans"
    stats_decay: float = 0.95  # EMA decay of the per-feature, per-domain statistics (time constant ~20 steps: the
    # dense first steps, when every feature fires in both domains, are forgotten once L1 has warmed up)
    kmeans_iters: int = 10
    forget_topic: str = FORGET_TOPIC


def batch_stats(f: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-feature statistics of feature activations f [n, d_sae]."""
    return {"freq": (f > 0).float().mean(0), "mean": f.mean(0), "sq": f.pow(2).mean(0), "max": f.max(0).values}


def kmeans_groups(stats: dict[str, dict[str, torch.Tensor]], iters: int = 10):
    """(forget mask, retain mask) from 3-means on standardized (mean, max, std) of both domains."""
    cols = []
    for dom in ("forget", "retain"):
        s = stats[dom]
        cols += [s["mean"], s["max"], (s["sq"] - s["mean"].pow(2)).clamp_min(0).sqrt()]
    x = torch.stack(cols, dim=1)
    x = (x - x.mean(0)) / (x.std(0) + EPS)
    share = forget_share(stats["forget"]["freq"], stats["retain"]["freq"])
    order = share.argsort()
    centroids = x[order[torch.tensor([0, len(order) // 2, len(order) - 1])]].clone()  # deterministic init
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        for c in range(3):
            if (assign == c).any():
                centroids[c] = x[assign == c].mean(0)
    cluster_share = torch.stack([share[assign == c].mean() if (assign == c).any() else share.new_tensor(0.5)
                                 for c in range(3)])
    fired = (stats["forget"]["freq"] + stats["retain"]["freq"]) > 0
    return fired & (assign == cluster_share.argmax()), fired & (assign == cluster_share.argmin())


def cross_group_penalty(w_dec: torch.Tensor, forget: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """Mean cos^2 between decoder rows of forget-group and retain-group features (0 if a group is empty)."""
    if not forget.any() or not retain.any():
        return w_dec.sum() * 0.0
    return cosines(w_dec[forget], w_dec[retain]).pow(2).mean()


class OrthogonalSAE(VariantSAE):
    extra_loss_name = "orthogonality_loss"

    def __init__(self, cfg, variant_cfg: Config, n_steps: int):
        super().__init__(cfg, variant_cfg, n_steps)
        self.stats: dict[str, dict[str, torch.Tensor]] = {"forget": {}, "retain": {}}

    @torch.no_grad()
    def update_stats(self, feature_acts: torch.Tensor, is_forget: torch.Tensor) -> None:
        for dom, rows in (("forget", is_forget), ("retain", ~is_forget)):
            if rows.any():
                new = batch_stats(feature_acts[rows].detach().float())
                old = self.stats[dom]
                self.stats[dom] = {k: ema(old.get(k), new[k], self.variant_cfg.stats_decay) for k in STATS}

    def groups(self):
        c = self.variant_cfg
        if not self.stats["forget"] or not self.stats["retain"]:
            return None
        if c.grouping == "kmeans":
            return kmeans_groups(self.stats, c.kmeans_iters)
        return domain_groups(self.stats["forget"]["freq"], self.stats["retain"]["freq"], c.alpha)

    def feature_groups(self) -> dict[str, list[int]]:
        """Its forget and retain groups, each by forget (retain) firing frequency, most first (features pages)."""
        groups = self.groups()
        if groups is None:
            return {}
        out = {}
        for name, mask, domain in (("orthogonal forget group", groups[0], "forget"), ("orthogonal retain group", groups[1], "retain")):
            freq = self.stats[domain]["freq"]
            out[name] = [i for i in freq.argsort(descending=True).tolist() if mask[i]]
        return out

    def extra_loss(self, data: StepData, step_input, feature_acts, sae_out, losses) -> torch.Tensor:
        c = self.variant_cfg
        if data.step == 0 and c.forget_topic not in data.topics():
            raise VariantSettingError(f"orthogonal needs domain-tagged text: no training document has topic "
                                      f"{c.forget_topic!r} (set --set orthogonal.forget_topic=...)")
        is_forget = data.has_topic(c.forget_topic).to(feature_acts.device)
        self.update_stats(feature_acts, is_forget)
        self.step_metrics["forget_rows_frac"] = is_forget.float().mean().item()
        groups = self.groups()
        if groups is None:
            return self.zero_term()
        forget, retain = groups
        self.step_metrics.update(forget_group=float(forget.sum()), retain_group=float(retain.sum()))
        penalty = cross_group_penalty(self.W_dec, forget, retain)
        self.step_metrics["cross_group_cos2"] = penalty.item()
        return c.weight * exp_ramp(data.step, c.warmup_frac * self.n_steps) * penalty


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    relu.check(cfg)
    require(cfg.grouping in ("threshold", "kmeans"),
            f"orthogonal.grouping must be 'threshold' or 'kmeans', not {cfg.grouping!r}")
    require(cfg.weight >= 0 and 0 <= cfg.alpha < 1 and 0 <= cfg.stats_decay < 1,
            "orthogonal: weight >= 0, 0 <= alpha < 1 and 0 <= stats_decay < 1 are required")


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> OrthogonalSAE:
    return OrthogonalSAE(relu.standard_config(cfg, d_in, d_sae, n_steps, **common), cfg, n_steps)
