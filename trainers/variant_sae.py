"""What every seed variant shares: the baseline's ReLU + L1 SAE (SAELens's StandardTrainingSAE, trained by
trainers.trainer exactly like `relu`) plus one extra loss term, and the small pieces of maths the
variants have in common (neighbour pairs, InfoNCE, schedules, EMAs, pooled labelled text).

A variant subclasses `VariantSAE`, sets `extra_loss_name` and implements
`extra_loss(data, step_input, feature_acts, sae_out, losses)`. `data` is the trainer's `StepData`
for this step (the batch and its provenance, the step number, true neighbours, domain tags, extra
text activations): the trainer hands it over through `begin_step` before every step, and it is the
only thing a variant reads from the trainer. The term is added to SAELens's loss dict, so it is
summed into the loss the optimizer sees and logged in the training curves under that name;
`self.step_metrics` (floats) is logged beside it. Modules and state used only in training (a
contrastive head, a probe, a queue) are dropped when the SAE is saved: the saved SAE is a plain
SAELens "standard" SAE, loadable and evaluable like the baseline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import calculate_topk_aux_acts

from trainers.metrics import masked_mean
from trainers.trainer import StepData


class VariantSettingError(ValueError):
    """A variant hyperparameter that cannot work (reported as one line, exit code 2)."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise VariantSettingError(message)


class ReluSAE(StandardTrainingSAE):
    """The baseline's SAE: SAELens's StandardTrainingSAE, plus, when `aux_loss_coefficient` > 0, the AuxK loss for
    dead features that SAELens gives only its TopK SAE (TopKTrainingSAE.calculate_topk_aux_loss, which reads
    TopK-only config fields, hence these lines; the same number: tests/test_variants.py): the top d_in / 2 dead
    features' pre-activations reconstruct the live features' residual, scaled down when fewer are dead."""

    def __init__(self, cfg: StandardTrainingSAEConfig, aux_loss_coefficient: float = 0.0):
        super().__init__(cfg)
        self.aux_loss_coefficient = aux_loss_coefficient

    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        if self.aux_loss_coefficient > 0:
            losses["auxiliary_reconstruction_loss"] = self.auxk_loss(step_input.sae_in, sae_out, hidden_pre,
                                                                     step_input.dead_neuron_mask)
        return losses

    def auxk_loss(self, sae_in, sae_out, hidden_pre, dead_neuron_mask) -> torch.Tensor:
        if dead_neuron_mask is None or (n_dead := int(dead_neuron_mask.sum())) == 0:
            return self.zero_term()
        k_aux = sae_in.shape[-1] // 2
        acts = calculate_topk_aux_acts(min(k_aux, n_dead), hidden_pre, dead_neuron_mask)
        error = (acts @ self.W_dec - (sae_in - sae_out).detach()).pow(2).sum(dim=-1).mean()
        return self.aux_loss_coefficient * min(n_dead / k_aux, 1.0) * error

    def zero_term(self) -> torch.Tensor:
        """A 0 that is still part of the graph (so every step's loss has the same structure)."""
        return self.W_dec.sum() * 0.0


class VariantSAE(ReluSAE):
    extra_loss_name = "extra_loss"
    training_only: tuple[str, ...] = ()  # submodule names not saved with the SAE

    def __init__(self, cfg: StandardTrainingSAEConfig, variant_cfg, n_steps: int):
        super().__init__(cfg, variant_cfg.aux_loss_coefficient)
        self.variant_cfg = variant_cfg
        self.n_steps = max(1, n_steps)
        self.step_metrics: dict[str, float] = {}
        self._step_data: StepData | None = None

    def begin_step(self, data: StepData) -> None:
        """The trainer's hand-over before each step (see trainers.trainer.StepData)."""
        self._step_data = data

    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        self.step_metrics = {}
        if self._step_data is None:
            raise RuntimeError(f"{type(self).__name__} needs begin_step(StepData) before each training step")
        term = self.extra_loss(self._step_data, step_input, feature_acts, sae_out, losses)
        if not torch.isfinite(term):  # never hand a NaN to the optimizer: drop the term this step
            self.step_metrics[f"{self.extra_loss_name}_nonfinite"] = 1.0
            term = self.zero_term()
        losses[self.extra_loss_name] = term
        return losses

    def extra_loss(self, data: StepData, step_input, feature_acts, sae_out, losses) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self, *args, **kwargs):  # what is saved: the SAE without its training-only parts
        out = super().state_dict(*args, **kwargs)
        for key in [k for k in out if k.split(".")[0] in self.training_only]:
            del out[key]
        return out


# ---- shared maths ------------------------------------------------------------------------------

def neighbour_pairs(data: StepData, window: int):
    """For each row of the batch, another position of the same sequence at a random offset in
    [-window, -1] U [1, window]. Returns (anchor_index [n], neighbour_acts [n, d], offset [n]) for the
    n rows whose neighbour exists: inside the sequence, not BOS, storage still resident."""
    rows = data.batch.rows
    n = len(rows)
    magnitude = torch.randint(1, window + 1, (n,))
    sign = torch.randint(0, 2, (n,)) * 2 - 1
    offset = (magnitude * sign).to(rows.device)
    acts, valid = data.neighbours(offset)
    idx = valid.nonzero().squeeze(1)
    return idx, acts[idx], offset[idx]


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: row i of `anchors` [n, k] should pick candidate i of `candidates` [m >= n, k] (the
    rest are negatives). Similarity is the dot product (inputs already normalized) / temperature.
    `mask` [n, m] False removes a candidate for that anchor."""
    logits = anchors @ candidates.T / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))


def linear_ramp(step: int, ramp_steps: int) -> float:
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)


def exp_ramp(step: int, warmup_steps: float) -> float:
    """1 - exp(-step / warmup): 0 at step 0, 0.63 at `warmup`, -> 1."""
    return 1.0 if warmup_steps <= 0 else 1.0 - math.exp(-step / warmup_steps)


def ema(old: torch.Tensor | float | None, new, decay: float):
    """Exponential moving average; the first observation initializes it (no bias toward 0)."""
    return new if old is None else decay * old + (1 - decay) * new


@dataclass
class TextPool:
    """Model activations of a fixed set of texts (normalized like the training rows), to draw
    per-step minibatches from: labelled text for the adversarial probe, translation pairs for the
    contrastive variant's semantic positives."""

    acts: torch.Tensor  # [n_texts, n_tokens, d]
    mask: torch.Tensor  # [n_texts, n_tokens]

    @classmethod
    def build(cls, data: StepData, texts: list[str], n_tokens: int) -> "TextPool":
        return cls(*data.text_activations(texts, n_tokens))

    def pooled_features(self, sae, idx: torch.Tensor) -> torch.Tensor:
        """Mean SAE feature vector over each selected text's tokens: [len(idx), d_sae]."""
        acts, mask = self.acts[idx], self.mask[idx]
        feats = sae.encode(acts.reshape(-1, acts.shape[-1])).reshape(*acts.shape[:2], -1)
        return masked_mean(feats, mask)
