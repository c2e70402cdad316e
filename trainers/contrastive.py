"""Contrastive SAE (seeds 000, 001): ReLU + L1 plus an InfoNCE loss on a small contrastive head.

Head: one linear layer, feature activations -> `head_dim`, L2-normalized. Positive pair: a training
row and another position of the same document at most `max_offset` tokens away (true neighbours,
from the buffer's (sequence, position, document) bookkeeping; never BOS, never across the boundary of
two documents packed into one sequence). Negatives: the other rows' positives in the batch, except
those from the anchor's own document, plus, with `mix_negatives`, each row's "feature-mixed" twin (its top-`mix_k` features
replaced by another row's top-`mix_k` features). With `semantic_positives`, a second InfoNCE term
pairs the English and French summaries of the same Wikipedia article (features mean-pooled per
document), negatives the other articles of the minibatch.

Dynamic weighting: coefficient = weight x ramp x rescale. The ramp goes linearly 0 -> 1 over the
first `curriculum_frac` of training; the rescale (clamped to [1/max_rescale, max_rescale]) keeps the
term's share of the total loss near `target_share`, using EMAs of the reconstruction+L1 loss and of
the raw InfoNCE. max_rescale = 1 switches the rescaling off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainers import relu
from trainers.labelled_data import translation_pairs
from trainers.metrics import normalize
from trainers.trainer import StepData
from trainers.variant_sae import TextPool, VariantSAE, ema, info_nce, linear_ramp, neighbour_pairs, require

LOSS_TERM = ("contrastive_loss", "InfoNCE x dynamic weight")
SPARSITY = relu.SPARSITY
TARGET_METRICS = (("silhouette", ("diagnostics", "silhouette")), ("NMI", ("diagnostics", "nmi")))  # what it aims to raise


@dataclass
class Config(relu.Config):
    weight: float = 0.1
    temperature: float = 0.1
    head_dim: int = 128
    max_offset: int = 4  # positive = same sequence, 1..max_offset tokens before or after
    curriculum_frac: float = 0.2  # weight ramps linearly from 0 over this fraction of the steps
    target_share: float = 0.05  # dynamic weighting: the term's target share of the total loss
    max_rescale: float = 10.0  # bound on the dynamic rescaling (1: off)
    loss_ema_decay: float = 0.9
    mix_negatives: bool = False
    mix_k: int = 8
    semantic_positives: bool = False  # en/fr summaries of the same article as extra positives
    semantic_pairs: int = 256  # article pairs in the pool (training split)
    semantic_pairs_per_step: int = 16
    semantic_tokens: int = 32  # tokens per summary


def mix_top_features(h: torch.Tensor, partner: torch.Tensor, k: int) -> torch.Tensor:
    """h with its k largest features set to 0 and `partner`'s k largest features written in at the
    partner's indices (the partner's value wins where both have one)."""
    k = min(k, h.shape[-1])
    own = h.topk(k, dim=-1).indices
    theirs = partner.topk(k, dim=-1)
    return h.scatter(-1, own, 0.0).scatter(-1, theirs.indices, theirs.values)


class ContrastiveSAE(VariantSAE):
    extra_loss_name = "contrastive_loss"
    training_only = ("head",)

    def __init__(self, cfg, variant_cfg: Config, n_steps: int):
        super().__init__(cfg, variant_cfg, n_steps)
        self.head = nn.Linear(cfg.d_sae, variant_cfg.head_dim, device=cfg.device)
        self.rest_ema = self.nce_ema = None
        self.semantic_pool: tuple[TextPool, TextPool] | None = None

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return normalize(self.head(feats))

    def neighbour_nce(self, data: StepData, feature_acts: torch.Tensor) -> torch.Tensor | None:
        c = self.variant_cfg
        idx, pos_acts, _ = neighbour_pairs(data, c.max_offset)
        if len(idx) < 2:
            return None
        anchors = feature_acts[idx]
        candidates = [self.project(self.encode(pos_acts))]
        # another anchor's positive from the anchor's own document is no negative: masked
        doc = data.batch.doc[idx]
        mask = [(doc[:, None] != doc[None, :]) | torch.eye(len(idx), dtype=torch.bool, device=doc.device)]
        if c.mix_negatives:
            candidates.append(self.project(mix_top_features(anchors, anchors.roll(1, 0), c.mix_k)))
            mask.append(torch.ones_like(mask[0]))
        return info_nce(self.project(anchors), torch.cat(candidates), c.temperature, torch.cat(mask, dim=1))

    def semantic_nce(self, data: StepData) -> torch.Tensor:
        c = self.variant_cfg
        if self.semantic_pool is None:
            en, fr = translation_pairs(c.semantic_pairs, data.held_out_percent)
            self.semantic_pool = (TextPool.build(data, en, c.semantic_tokens),
                                  TextPool.build(data, fr, c.semantic_tokens))
        en, fr = self.semantic_pool
        idx = torch.randperm(len(en.acts))[: c.semantic_pairs_per_step].to(en.acts.device)
        return info_nce(self.project(en.pooled_features(self, idx)), self.project(fr.pooled_features(self, idx)),
                        c.temperature)

    def coefficient(self, step: int, rest: float, nce: float) -> float:
        """weight x curriculum ramp x share-keeping rescale (EMAs updated here)."""
        c = self.variant_cfg
        self.rest_ema = ema(self.rest_ema, rest, c.loss_ema_decay)
        self.nce_ema = ema(self.nce_ema, nce, c.loss_ema_decay)
        rescale = 1.0
        if c.max_rescale > 1 and self.nce_ema > 0 and c.weight > 0:
            wanted = c.target_share / (1 - c.target_share) * self.rest_ema / (c.weight * self.nce_ema)
            rescale = min(max(wanted, 1 / c.max_rescale), c.max_rescale)
        return c.weight * linear_ramp(step, int(c.curriculum_frac * self.n_steps)) * rescale

    def feature_groups(self) -> dict[str, list[int]]:
        """The contrastive head's strongest inputs (its weight columns by norm), most first (features pages)."""
        return {"contrastive head's strongest inputs": self.head.weight.detach().norm(dim=0).argsort(descending=True).tolist()}

    def extra_loss(self, data: StepData, step_input, feature_acts, sae_out, losses) -> torch.Tensor:
        c = self.variant_cfg
        nce = self.neighbour_nce(data, feature_acts)
        if nce is None:
            return self.zero_term()
        self.step_metrics["infonce_neighbours"] = nce.item()
        if c.semantic_positives:
            sem = self.semantic_nce(data)
            self.step_metrics["infonce_semantic"] = sem.item()
            nce = nce + sem
        with torch.no_grad():
            rest = (sae_out - step_input.sae_in).pow(2).sum(-1).mean() + sum(losses.values())
        coef = self.coefficient(data.step, rest.item(), nce.item())
        self.step_metrics["contrastive_coefficient"] = coef
        return coef * nce


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    relu.check(cfg)
    require(cfg.weight >= 0 and cfg.temperature > 0 and cfg.head_dim > 0 and cfg.max_offset >= 1,
            "contrastive: weight >= 0, temperature > 0, head_dim > 0 and max_offset >= 1 are required")
    require(0 <= cfg.target_share < 1 and cfg.max_rescale >= 1 and cfg.mix_k >= 1,
            "contrastive: 0 <= target_share < 1, max_rescale >= 1 and mix_k >= 1 are required")


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> ContrastiveSAE:
    return ContrastiveSAE(relu.standard_config(cfg, d_in, d_sae, n_steps, **common), cfg, n_steps)
