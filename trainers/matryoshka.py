"""Reference: Matryoshka BatchTopK SAE (Bussmann et al. 2025, Nabeshima 2024; SAELens's
MatryoshkaBatchTopKTrainingSAE): BatchTopK whose first d_sae x f features must also reconstruct the input
on their own, for each nested fraction f, each prefix's MSE added to the loss; against feature absorption.
Saved, like BatchTopK, as a JumpReLU SAE, and evaluated as saved; its threshold's EMA starts as BatchTopK's."""

from dataclasses import dataclass

from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                     MatryoshkaBatchTopKTrainingSAEConfig)

from trainers.batchtopk import Config as BatchTopKConfig
from trainers.batchtopk import ThresholdFromFirstBatch
from trainers.batchtopk import check as batchtopk_check
from trainers.variant_sae import VariantSettingError, require

LOSS_TERM = ("auxiliary_reconstruction_loss", "AuxK loss for dead features")
SPARSITY = ("k", (10, 25, 60, 150))  # the comparison's grid (compare.py): the mean L0 in training is k


@dataclass
class Config(BatchTopKConfig):
    # the nested prefixes, as fractions of d_sae (so one setting serves any width), the last one 1 (the whole
    # SAE); 1/16 .. 1: five levels, as SAELens's and the paper's examples nest by factors of 2-4
    levels: str = "0.0625,0.125,0.25,0.5,1"
    use_matryoshka_aux_loss: bool = False  # SAELens's: dead features reconstruct their own level's error


def widths(cfg: Config, d_sae: int) -> list[int]:
    try:
        fractions = [float(f) for f in cfg.levels.split(",")]
    except ValueError:
        raise VariantSettingError(f"matryoshka: levels must be comma-separated fractions, not {cfg.levels!r}") from None
    require(fractions[-1] == 1 and fractions[0] > 0 and all(a < b for a, b in zip(fractions, fractions[1:])),
            f"matryoshka: levels must rise strictly from above 0 to 1: {cfg.levels!r}")
    return sorted({max(1, round(f * d_sae)) for f in fractions})  # a tiny d_sae merges levels that round alike


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    batchtopk_check(cfg)
    widths(cfg, 2 ** 20)


class HarnessMatryoshkaSAE(ThresholdFromFirstBatch, MatryoshkaBatchTopKTrainingSAE):
    pass


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> MatryoshkaBatchTopKTrainingSAE:
    return HarnessMatryoshkaSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
        topk_threshold_lr=cfg.topk_threshold_lr, matryoshka_widths=widths(cfg, d_sae),
        use_matryoshka_aux_loss=cfg.use_matryoshka_aux_loss, **common))
