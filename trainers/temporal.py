"""Temporal contrastive SAE (seed 004): ReLU + L1 plus InfoNCE over time.

For each training row (anchor, position t), the positive is another position of the same document
within `window` tokens (the seed's ablation: 8, 16, 32; never across the boundary of two documents
packed into one sequence); negatives are `negatives_per_step` feature vectors drawn from a circular
buffer of the `queue_size` (16,384) most recent earlier anchors, excluding any from the anchor's own
document. Similarity is the dot product of L2-normalized
feature activations, divided by `temperature`. Anchors whose features are all zero carry no
direction and are left out of the term and of the queue. Term = weight x InfoNCE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainers import relu
from trainers.metrics import normalize
from trainers.trainer import StepData
from trainers.variant_sae import VariantSAE, neighbour_pairs, require

LOSS_TERM = ("temporal_loss", "InfoNCE over time x weight")
SPARSITY = relu.SPARSITY
TARGET_METRICS = (("autocorr lag 1", ("diagnostics", "autocorrelation", "1")),)  # what it aims to raise


@dataclass
class Config(relu.Config):
    weight: float = 0.1
    temperature: float = 0.1
    window: int = 16  # positives within this many tokens (seed 004: 8, 16 or 32)
    queue_size: int = 16384  # circular buffer of earlier feature vectors (negatives)
    negatives_per_step: int = 1024  # drawn from the buffer each step


class NegativeQueue:
    """Circular buffer of detached, normalized feature vectors and the document each came from."""

    def __init__(self, size: int, dim: int, device):
        self.vectors = torch.zeros(size, dim, device=device)
        self.doc = torch.full((size,), -1, dtype=torch.long, device=device)
        self.next = 0
        self.filled = 0

    def push(self, vectors: torch.Tensor, doc: torch.Tensor) -> None:
        vectors, doc = vectors[-len(self.doc):], doc[-len(self.doc):]
        idx = (self.next + torch.arange(len(vectors), device=self.doc.device)) % len(self.doc)
        self.vectors[idx] = vectors.detach().to(self.vectors)
        self.doc[idx] = doc.to(self.doc)
        self.next = int((self.next + len(vectors)) % len(self.doc))
        self.filled = min(len(self.doc), self.filled + len(vectors))

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(self.filled)[:n].to(self.doc.device)
        return self.vectors[idx], self.doc[idx]


def temporal_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, anchor_doc: torch.Tensor,
                 negative_doc: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the positive in column 0 and queue negatives after it; a negative from the
    anchor's own document is masked out. Inputs are normalized vectors."""
    pos = (anchor * positive).sum(-1, keepdim=True)
    neg = (anchor @ negatives.T).masked_fill(anchor_doc[:, None] == negative_doc[None, :], float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


class TemporalSAE(VariantSAE):
    extra_loss_name = "temporal_loss"

    def __init__(self, cfg, variant_cfg: Config, n_steps: int):
        super().__init__(cfg, variant_cfg, n_steps)
        self.queue = NegativeQueue(variant_cfg.queue_size, cfg.d_sae, cfg.device)

    def extra_loss(self, data: StepData, step_input, feature_acts, sae_out, losses) -> torch.Tensor:
        c = self.variant_cfg
        batch = data.batch
        idx, pos_acts, _ = neighbour_pairs(data, c.window)
        keep = feature_acts[idx].detach().abs().sum(-1) > 0
        idx, pos_acts = idx[keep], pos_acts[keep]
        term = self.zero_term()
        if self.queue.filled > 0 and len(idx) > 0:
            negatives, negative_doc = self.queue.sample(c.negatives_per_step)
            anchor = normalize(feature_acts[idx])
            nce = temporal_nce(anchor, normalize(self.encode(pos_acts)), negatives, batch.doc[idx], negative_doc,
                               c.temperature)
            self.step_metrics["infonce_temporal"] = nce.item()
            term = c.weight * nce
        fired = feature_acts.detach().abs().sum(-1) > 0
        self.queue.push(normalize(feature_acts.detach()[fired]), batch.doc[fired])
        return term


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    relu.check(cfg)
    require(cfg.weight >= 0 and cfg.temperature > 0 and cfg.window >= 1 and cfg.queue_size >= 1
            and cfg.negatives_per_step >= 1,
            "temporal: weight >= 0, temperature > 0, window >= 1, queue_size >= 1, negatives_per_step >= 1 are required")


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> TemporalSAE:
    return TemporalSAE(relu.standard_config(cfg, d_in, d_sae, n_steps, **common), cfg, n_steps)
