"""Reference: TopK SAE (SAELens's TopKTrainingSAE, with its auxiliary loss for dead features).

`sparse_decoder`: with k much smaller than d_sae, the decoder product touches only each token's k
active rows of W_dec (F.embedding_bag with the k activations as weights), and so does its gradient,
as the fastest public TopK trainers do. SAELens's own `use_sparse_activations` builds a COO tensor
whose backward fails on a CPU in sae_lens 6 ("aten::view ... SparseCPU"), hence this, by hand. The
numbers are those of the dense product up to float summation order (tests/test_variants.py); the
speed of each path, per device, is measured by trainers/benchmark.py (8), and "auto" keeps the faster
measured one: dense on this 2-core CPU (d_sae 4096, k 48, batch 256: sparse/dense = 0.82; the dense
encoder and AuxK dominate the step, and embedding_bag's backward is slow there); dense on CUDA, where
it has not been measured.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

from trainers.variant_sae import require

LOSS_TERM = ("auxiliary_reconstruction_loss", "AuxK loss for dead features")
SPARSITY = ("k", (10, 25, 60, 150))  # the comparison's grid (compare.py), highest sparsity first: L0 = k


@dataclass
class Config:
    k: int = 48
    # AuxK weight. Gao et al. (2024) use 1/32 on an aux loss divided by the residual's variance (as sparsify does);
    # SAELens's aux loss is not divided (its docstring), so here 1/32 acts ~1/FVU (~16x) weaker; SAELens's own
    # default is 1 (TopKTrainingSAEConfig). Measured by
    # quality_benchmark.py on the embedded default (Adam 1.6e-3, k 48, seed 0): dead fraction at 100k tokens
    # 0.044 (1/32), 0.027 (1/4), 0.010 (1), 0.001 (4), 0.000 (8), EV 0.9448 -> 0.9445 and CE-loss score
    # 0.9242 -> 0.9238 at 4 (inside the seed spread); at 300k 0.035 -> 0.003 dead, EV 0.9620 -> 0.9619,
    # CE-loss score 0.9495 -> 0.9519 (README, quality per token)
    aux_loss_coefficient: float = 4.0
    sparse_decoder: str = "auto"  # "auto" (the faster measured path: dense on CPU and CUDA), "on", "off": module doc


def check(cfg: Config) -> None:
    """Settings that cannot work: one clear line (raised before the model is loaded)."""
    require(cfg.k >= 1 and cfg.aux_loss_coefficient >= 0, "topk: k >= 1 and aux_loss_coefficient >= 0 are required")
    require(cfg.sparse_decoder in ("auto", "on", "off"), "topk: sparse_decoder must be auto, on or off")


class SparseDecoderTopKSAE(TopKTrainingSAE):
    """TopKTrainingSAE whose training decode gathers the k active decoder rows per token (module doc).
    The encode is SAELens's (pre-activations, TopK, ReLU); the dense activations are still built, for the
    trainer's metrics, but the reconstruction does not multiply by them."""

    def encode_with_hidden_pre(self, x):
        if self.cfg.rescale_acts_by_decoder_norm:
            return super().encode_with_hidden_pre(x)
        hidden_pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        values, indices = torch.topk(hidden_pre, self.cfg.k, dim=-1, sorted=False)  # as SAELens's TopK
        values = values.relu()
        feature_acts = self.hook_sae_acts_post(torch.zeros_like(hidden_pre).scatter(-1, indices, values))
        self._active = (feature_acts, values, indices)
        return feature_acts, hidden_pre

    def decode(self, feature_acts):
        active = getattr(self, "_active", None)
        if active is None or feature_acts is not active[0]:  # any other activations: SAELens's dense decode
            return super().decode(feature_acts)
        self._active = None
        _, values, indices = active
        k = indices.shape[-1]
        out = F.embedding_bag(indices.reshape(-1, k), self.W_dec, per_sample_weights=values.reshape(-1, k), mode="sum")
        sae_out_pre = self.hook_sae_recons(out.reshape(*indices.shape[:-1], -1) + self.b_dec)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(sae_out_pre), self.d_head)


SPARSE_IS_FASTER = {"cpu": False, "cuda": False}  # per device kind, from benchmark (8); cuda: not measured


def uses_sparse_decoder(cfg: Config, device: str) -> bool:
    return cfg.sparse_decoder == "on" or (cfg.sparse_decoder == "auto"
                                          and SPARSE_IS_FASTER.get(device.split(":")[0], False))


def build_sae(cfg: Config, d_in: int, d_sae: int, n_steps: int, **common) -> TopKTrainingSAE:
    kind = SparseDecoderTopKSAE if uses_sparse_decoder(cfg, common.get("device", "cpu")) else TopKTrainingSAE
    return kind(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient,
                                      **common))
