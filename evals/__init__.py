"""Evaluations, one file each, registered here (they run in this order). evals/ imports trainers/,
never the other way round.

An eval module has:
- `Settings`: a dataclass of its settings with their defaults; `--set NAME.FIELD=VALUE` sets one and
  they are recorded in final_info.json under config.evals.NAME;
- `run(context: EvalContext, settings) -> dict`: measure (the context holds the SAE, the loaded
  model, held-out text, the output and cache folders), write its own JSON into context.out_dir, and
  return the summary that goes into final_info.json under its name;
- `headline(summary) -> str`: the one line of numbers notes.txt gets;
and, where it has them, `data_plan(target, settings) -> dict` (the datasets and sizes it will request
for this run's `target.eval_data`, "stock" or "embedded", read from the config its `run` uses: printed by
--dry_run, recorded in final_info.json under data.eval_data), `key_numbers(summary) -> dict` (numbers lifted into final_info.json's
summary) and `failures(summary) -> list[str]` (why this SAE is not a result: the run is marked failed).
Adding an eval is its file plus one line below.

Autointerp is not offered: it needs an external LLM API. `diagnostics` are the seeds' own measures.
"""

from importlib import import_module

EVALS = {
    "core": import_module("evals.core"),
    "diagnostics": import_module("evals.diagnostics"),
    "sparse_probing": import_module("evals.sparse_probing"),
    "unlearning": import_module("evals.unlearning"),
    "scr": import_module("evals.scr"),
    "tpp": import_module("evals.tpp"),
    "absorption": import_module("evals.absorption"),
    "features": import_module("evals.features"),
}
DEFAULT_EVALS = ("core", "diagnostics", "sparse_probing", "unlearning", "features")
