"""SAE training: the buffer, the trainer, and one file per variant, registered here."""

from trainers import adversarial, contrastive, orthogonal, relu, temporal, topk

# name -> module with `Config` (its hyperparameters and defaults) and `build_sae(...)`.
VARIANTS = {
    "relu": relu,
    "topk": topk,
    "contrastive": contrastive,
    "orthogonal": orthogonal,
    "adversarial": adversarial,
    "temporal": temporal,
}
