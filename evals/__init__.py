"""Evaluations: SAEBench wrappers fed with the harness's loaded model and data.

EVAL_NAMES lists what `--evals` accepts, in the order they run. Autointerp is left out: it needs an
external LLM API. `diagnostics` are the seeds' own measures (evals/diagnostics.py), not SAEBench's.
"""

EVAL_NAMES = ("core", "diagnostics", "sparse_probing", "unlearning", "scr", "tpp", "absorption")
DEFAULT_EVALS = ("core", "diagnostics", "sparse_probing", "unlearning")
