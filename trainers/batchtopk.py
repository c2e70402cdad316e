"""Reference: BatchTopK SAE (Bussmann et al. 2024; SAELens's BatchTopKTrainingSAE): the k x batch largest
activations of the whole batch are kept, so k is the mean L0 and a token may use more or fewer. During
training a global threshold is tracked (an EMA of the smallest kept activation); the SAE is saved as
SAELens saves it, a JumpReLU SAE with that threshold, and the harness evaluates it as saved (as SAEBench
would), not with the batch-dependent training activation.

The threshold's EMA starts from the first batch's value, not from 0 as SAELens's does: from 0, after n
steps it is only 1 - 0.99^n of the kept activations' minimum (0.39 after 50 steps, 0.98 after 390), so a
short run's saved SAE fires far more than it trained to (measured, a 50-step Matryoshka run: L0 48 in
training, 400 as saved, explained variance 0.71 -> -0.03)."""

from dataclasses import dataclass

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

from trainers.topk import Config as TopKConfig
from trainers.variant_sae import require

LOSS_TERM = ("auxiliary_reconstruction_loss", "AuxK loss for dead features")
SPARSITY = ("k", (10, 25, 60, 150))  # the comparison's grid (compare.py): the mean L0 in training is k


@dataclass
class Config:
    k: int = TopKConfig.k  # here the mean L0 over the batch
    aux_loss_coefficient: float = TopKConfig.aux_loss_coefficient  # TopK's AuxK weight (measured there)
    topk_threshold_lr: float = 0.01  # the threshold's EMA rate (SAELens's default)


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    require(cfg.k >= 1 and cfg.aux_loss_coefficient >= 0 and 0 < cfg.topk_threshold_lr <= 1,
            "batchtopk: k >= 1, aux_loss_coefficient >= 0 and 0 < topk_threshold_lr <= 1 are required")


class ThresholdFromFirstBatch:
    """Mixed in before SAELens's BatchTopK training SAE: the threshold's EMA starts at the first batch's minimum
    kept activation (module doc). The threshold is 0 only before the first update (a kept activation is > 0),
    so this needs no state of its own (and checkpoints and the saved SAE are SAELens's)."""

    @torch.no_grad()
    def update_topk_threshold(self, acts_topk: torch.Tensor) -> None:
        positive = acts_topk > 0
        if float(self.topk_threshold) == 0.0 and positive.any():
            self.topk_threshold = acts_topk[positive].min().to(self.topk_threshold.dtype)
        else:
            super().update_topk_threshold(acts_topk)


class HarnessBatchTopKSAE(ThresholdFromFirstBatch, BatchTopKTrainingSAE):
    pass


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> BatchTopKTrainingSAE:
    return HarnessBatchTopKSAE(BatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
        topk_threshold_lr=cfg.topk_threshold_lr, **common))
