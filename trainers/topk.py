"""Reference: TopK SAE (SAELens's TopKTrainingSAE, with its auxiliary loss for dead features)."""

from dataclasses import dataclass

from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

from trainers.variant_sae import require

LOSS_TERM = ("auxiliary_reconstruction_loss", "AuxK loss for dead features")


@dataclass
class Config:
    k: int = 48
    aux_loss_coefficient: float = 1.0 / 32  # the AuxK weight of Gao et al. (2024)


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    require(cfg.k >= 1 and cfg.aux_loss_coefficient >= 0, "topk: k >= 1 and aux_loss_coefficient >= 0 are required")


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> TopKTrainingSAE:
    return TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient, **common
        )
    )
