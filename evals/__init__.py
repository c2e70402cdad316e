"""Evaluations: SAEBench wrappers fed with the harness's loaded model and data.

EVAL_NAMES lists what `--evals` accepts, in the order they run. Autointerp is left out: it needs an
external LLM API.
"""

EVAL_NAMES = ("core", "sparse_probing", "unlearning", "scr", "tpp", "absorption")
DEFAULT_EVALS = ("core", "sparse_probing", "unlearning")
