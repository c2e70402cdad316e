"""Self-aligning adversarial SAE with dynamic margin (seed 003): ReLU + L1 plus an orthogonality
penalty on the features a spurious-attribute probe relies on.

Spurious attribute: the language (en vs fr) of the SCR eval's labelled text (topic x language
Wikipedia summaries, training split; the attribute is named in the results). Each step:
1. `texts_per_step` labelled texts are encoded; their features, mean-pooled per text and detached
   (stop_gradient(h)), train the linear probe P_spurious (its own Adam; no gradient reaches the
   SAE). A_spurious = EMA (decay `ema_decay`) of the probe's accuracy on each minibatch, measured
   before the probe's update on it.
2. Attribution of feature i = |w_i| x mean pooled activation of i. The moving 85th percentile is an
   EMA of each step's 85th percentile; features above it are the spurious set S.
3. Similarities |cos(W_dec_i, W_dec_j)| for i in S and j not in S: their mean and std are tracked by
   EMA (decay 0.95) and margin = EMA mean + `margin_std` x EMA std.
4. Term = weight x max(A_spurious - 0.5, 0.1) x penalty, penalty = sum over pairs of
   relu(|cos| - margin)^2 / |S| (the orthogonality each spurious feature is pushed to gain).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers import relu
from trainers.labelled_data import topic_language_set
from trainers.metrics import cosines
from trainers.trainer import StepData
from trainers.variant_sae import TextPool, VariantSAE, ema, require

LOSS_TERM = ("adversarial_loss", "margin penalty x lambda x max(A-0.5, 0.1)")
SPARSITY = relu.SPARSITY
TARGET_METRICS = (("SCR top-20", ("scr", "metric_by_n_latents", "20")),)  # what it aims to raise (needs --evals=scr)
SPURIOUS_ATTRIBUTE = "language"  # of the SCR set: en vs fr


@dataclass
class Config(relu.Config):
    weight: float = 0.1  # lambda_adv, scaled by max(A_spurious - 0.5, min_scale)
    min_scale: float = 0.1
    ema_decay: float = 0.95  # probe accuracy, attribution percentile, similarity mean/std
    margin_std: float = 2.0  # margin = EMA mean similarity + margin_std x EMA std
    percentile: float = 85.0
    probe_lr: float = 1e-3
    texts_per_step: int = 16
    tokens_per_text: int = 32
    texts_per_cell: int = 100  # labelled pool: texts per (topic, language) cell, training split


def adversarial_scale(accuracy: float, min_scale: float = 0.1) -> float:
    return max(accuracy - 0.5, min_scale)


def spurious_set(attribution: torch.Tensor, threshold: float) -> torch.Tensor:
    return attribution > threshold


def similarity_to_others(w_dec: torch.Tensor, spurious: torch.Tensor) -> torch.Tensor:
    """|cos| between decoder rows of spurious features [|S|] and the other features: [|S|, n - |S|]."""
    return cosines(w_dec[spurious], w_dec[~spurious]).abs()


def margin_penalty(sims: torch.Tensor, margin: float) -> torch.Tensor:
    return torch.relu(sims - margin).pow(2).sum() / max(1, sims.shape[0])


def spurious_labelled_texts(texts_per_cell: int, held_out_percent: int) -> tuple[list[str], torch.Tensor]:
    """Training-side documents only (the evals read the held-out side)."""
    s = topic_language_set(n_train=texts_per_cell, n_test=2, held_out_percent=held_out_percent, part="train")
    texts = [t for t, _ in s.train]
    labels = torch.tensor([lang == "fr" for lang in s.extra_train[SPURIOUS_ATTRIBUTE]], dtype=torch.float32)
    return texts, labels


class SpuriousProbe:
    """P_spurious: a linear probe with its own Adam. A plain object, not a submodule, so the SAE's
    optimizer (and its gradient clipping) never sees it, and it is never saved with the SAE."""

    def __init__(self, d_sae: int, lr: float, device):
        self.linear = nn.Linear(d_sae, 1, device=device)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One update on stop_gradient(features); returns (accuracy before the update, loss)."""
        with torch.enable_grad():
            logits = self.linear(features.detach()).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            self.optimizer.zero_grad()
            loss.backward()
        self.optimizer.step()
        return ((logits.detach() > 0).float() == labels).float().mean().item(), loss.item()

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight.detach()[0]


class AdversarialSAE(VariantSAE):
    extra_loss_name = "adversarial_loss"

    def __init__(self, cfg, variant_cfg: Config, n_steps: int):
        super().__init__(cfg, variant_cfg, n_steps)
        self.probe = SpuriousProbe(cfg.d_sae, variant_cfg.probe_lr, cfg.device)
        self.pool: TextPool | None = None
        self.labels: torch.Tensor | None = None
        self.accuracy = self.threshold = self.sim_mean = self.sim_std = None

    def feature_groups(self) -> dict[str, list[int]]:
        """The features the spurious probe weighs most, most first (features pages): the spurious set's
        candidates (the set itself is recomputed from each batch's attributions)."""
        return {"adversarial spurious set (largest probe weight)": self.probe.weight.abs().argsort(descending=True).tolist()}

    def extra_loss(self, data: StepData, step_input, feature_acts, sae_out, losses) -> torch.Tensor:
        c = self.variant_cfg
        if self.pool is None:
            texts, labels = spurious_labelled_texts(c.texts_per_cell, data.held_out_percent)
            self.pool = TextPool.build(data, texts, c.tokens_per_text)
            self.labels = labels.to(self.pool.acts.device)
        idx = torch.randperm(len(self.labels))[: c.texts_per_step].to(self.labels.device)
        with torch.no_grad():
            pooled = self.pool.pooled_features(self, idx)
        accuracy, probe_loss = self.probe.step(pooled, self.labels[idx])
        self.accuracy = ema(self.accuracy, accuracy, c.ema_decay)
        self.step_metrics["probe_loss"] = probe_loss
        with torch.no_grad():
            attribution = self.probe.weight.abs() * pooled.mean(0)
            self.threshold = ema(self.threshold, torch.quantile(attribution, c.percentile / 100).item(), c.ema_decay)
            spurious = spurious_set(attribution, self.threshold)
        self.step_metrics.update(probe_accuracy=self.accuracy, spurious_features=float(spurious.sum()))
        if not spurious.any() or spurious.all():
            return self.zero_term()
        sims = similarity_to_others(self.W_dec, spurious)
        with torch.no_grad():
            self.sim_mean = ema(self.sim_mean, sims.mean().item(), c.ema_decay)
            self.sim_std = ema(self.sim_std, sims.std().item(), c.ema_decay)
        margin = self.sim_mean + c.margin_std * self.sim_std
        penalty = margin_penalty(sims, margin)
        scale = adversarial_scale(self.accuracy, c.min_scale)
        self.step_metrics.update(margin=margin, adversarial_scale=scale, pairs_over_margin=float((sims > margin).sum()))
        return c.weight * scale * penalty


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    relu.check(cfg)
    require(cfg.weight >= 0 and 0 < cfg.percentile < 100 and 0 <= cfg.ema_decay < 1 and cfg.texts_per_step >= 2,
            "adversarial: weight >= 0, 0 < percentile < 100, 0 <= ema_decay < 1 and texts_per_step >= 2 are required")


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> AdversarialSAE:
    return AdversarialSAE(relu.standard_config(cfg, d_in, d_sae, n_steps, **common), cfg, n_steps)
