"""SAEBench SCR (spurious correlation removal): ablating the SAE latents of a spurious attribute
should recover a biased probe's accuracy on the intended one. The machinery, shared with TPP, is in
evals/scr_tpp.py.
"""

from evals.context import EvalContext
from evals.scr_tpp import Settings, data_plan as _data_plan, headline, run_scr_or_tpp

__all__ = ["Settings", "data_plan", "headline", "run"]


def run(ctx: EvalContext, settings: Settings) -> dict:
    return run_scr_or_tpp("scr", ctx, settings)


def data_plan(target, settings: Settings) -> dict:
    return _data_plan("scr", target, settings)
