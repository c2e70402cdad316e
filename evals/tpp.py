"""SAEBench TPP (targeted probe perturbation): ablating the SAE latents of one class should hurt
that class's probe and no other. The machinery, shared with SCR, is in evals/scr_tpp.py.
"""

from evals.context import EvalContext
from evals.scr_tpp import Settings, data_plan as _data_plan, headline, run_scr_or_tpp

__all__ = ["Settings", "data_plan", "headline", "run"]


def run(ctx: EvalContext, settings: Settings) -> dict:
    return run_scr_or_tpp("tpp", ctx, settings)


def data_plan(target, settings: Settings) -> dict:
    return _data_plan("tpp", target, settings)
