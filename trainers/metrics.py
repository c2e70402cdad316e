"""Pure metrics on tensors that training, the variants and the evals all use: explained variance,
row normalisation, masked pooling, cosines between rows, and the forget/retain domain rule.

Nothing here touches a model or a file; every function is unit-tested on hand-made inputs.
"""

from __future__ import annotations

import torch

EPS = 1e-8


@torch.no_grad()
def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - FVU = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the rows of x [n, d].

    The error is not centred (as SAELens computes it since its fix, PR #665): a reconstruction that is
    off by a constant vector loses explained variance. The total is variance about the mean, so
    predicting the per-dimension mean explains 0 and a perfect reconstruction 1 (sae_bench 0.6.0's
    own value measures variance about zero instead)."""
    x, x_hat = x.double(), x_hat.double()
    error = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - error / total.clamp_min(1e-30))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (a zero row stays zero: eps, never NaN)."""
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)] cosine between every row of a and every row of b."""
    return normalize(a) @ normalize(b).T


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x [n, T, d] where mask [n, T] is True: [n, d] (a text with no token gives 0)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def forget_share(freq_forget: torch.Tensor, freq_retain: torch.Tensor) -> torch.Tensor:
    """Per feature: the share of its firing that happens on forget-domain text."""
    return freq_forget / (freq_forget + freq_retain + EPS)


def domain_groups(freq_forget: torch.Tensor, freq_retain: torch.Tensor, alpha: float):
    """(forget mask, retain mask): a feature is forget-specific when its forget share s has
    s - (1 - s) > alpha, retain-specific when (1 - s) - s > alpha; features that never fire join neither.
    The orthogonal variant groups its features by this rule and the diagnostics measure with it."""
    s = forget_share(freq_forget, freq_retain)
    fired = (freq_forget + freq_retain) > 0
    return fired & (s - (1 - s) > alpha), fired & ((1 - s) - s > alpha)
