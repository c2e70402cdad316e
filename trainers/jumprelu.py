"""Reference: JumpReLU SAE (Rajamanoharan et al. 2024, Gemma Scope; SAELens's JumpReLUTrainingSAE): a
per-feature threshold below which a feature is 0, trained through straight-through estimators, and an L0
penalty (DeepMind's "step" loss by default) instead of L1."""

from dataclasses import dataclass

from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

from trainers.variant_sae import require

LOSS_TERM = ("l0_loss", "L0 penalty, straight-through")
# the comparison's grid (compare.py), highest sparsity first: a sweep of l0_coefficient 3, 1, 0.3, 0.1, 0.03, 0.01 at
# 100k tokens ended training at L0 18, 18, 23, 34, 78, 197 (seed 0): above ~0.3 the threshold cannot rise further in
# 390 steps, so at this budget JumpReLU's frontier starts near L0 18, not 10
SPARSITY = ("l0_coefficient", (1.0, 0.1, 0.03, 0.014))


@dataclass
class Config:
    # on normalized activations (E||x|| = sqrt(d_model)), where the reconstruction's MSE is the squared
    # error summed over d_model
    l0_coefficient: float = 0.3
    l0_warm_up_frac: float = 0.05  # fraction of steps over which the L0 coefficient ramps from 0 (as relu's L1)
    init_threshold: float = 0.01  # SAELens's default
    bandwidth: float = 0.05  # the straight-through estimators' kernel width (SAELens's default)
    sparsity_loss_mode: str = "step"  # "step" (DeepMind), "tanh" (Anthropic)
    pre_act_loss_coefficient: float = 0.0  # Anthropic's loss pulling dead features' pre-activations up; 0: off


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    require(cfg.l0_coefficient >= 0 and 0 <= cfg.l0_warm_up_frac <= 1 and cfg.init_threshold >= 0
            and cfg.bandwidth > 0 and cfg.pre_act_loss_coefficient >= 0,
            "jumprelu: l0_coefficient >= 0, 0 <= l0_warm_up_frac <= 1, init_threshold >= 0, bandwidth > 0 and "
            "pre_act_loss_coefficient >= 0 are required")
    require(cfg.sparsity_loss_mode in ("step", "tanh"), "jumprelu: sparsity_loss_mode must be step or tanh")


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> JumpReLUTrainingSAE:
    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, l0_coefficient=cfg.l0_coefficient, l0_warm_up_steps=int(cfg.l0_warm_up_frac * n_steps),
        jumprelu_init_threshold=cfg.init_threshold, jumprelu_bandwidth=cfg.bandwidth,
        jumprelu_sparsity_loss_mode=cfg.sparsity_loss_mode,
        pre_act_loss_coefficient=cfg.pre_act_loss_coefficient or None, **common))
