"""SAE training: models, text and labelled data, the activation buffer, the training loop, and one
file per variant, registered here. Nothing in trainers/ imports evals/.

A variant module has:
- `Config`: a dataclass of its settings with their defaults (`--set NAME.FIELD=VALUE` sets one);
- `check(cfg)`: raise `variant_sae.VariantSettingError` for settings that cannot work (called once,
  when the command line is parsed, before anything loads);
- `build_sae(cfg, d_in, d_sae, n_steps, **common)`: its SAELens training SAE; one that needs more
  than its input rows (neighbours, domain tags, labelled text) defines `begin_step(StepData)`;
- `LOSS_TERM`: (name in the training curves, what it is) of the term it adds to the loss, or None;
- `SPARSITY`: (the setting that sets its sparsity, the values compare.py trains it at, sparsest first);
- optionally `TARGET_METRICS`: ((label, path in final_info.json), ...), what its term aims to move, drawn
  against L0 beside the baseline by plot.py;
- optionally `LEARNING_RATES`: {optimizer: rate at d_sae 16384}, its own measured default rates, over
  trainers/trainer.py's OPTIMIZERS (scaled by sqrt(16384 / d_sae) alike).
Adding a variant is its file plus one line below; plot.py and the tests take their lists from here.
"""

from importlib import import_module

VARIANTS = {
    "relu": import_module("trainers.relu"),
    "topk": import_module("trainers.topk"),
    "batchtopk": import_module("trainers.batchtopk"),
    "jumprelu": import_module("trainers.jumprelu"),
    "matryoshka": import_module("trainers.matryoshka"),
    "contrastive": import_module("trainers.contrastive"),
    "orthogonal": import_module("trainers.orthogonal"),
    "adversarial": import_module("trainers.adversarial"),
    "temporal": import_module("trainers.temporal"),
}
