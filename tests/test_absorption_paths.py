"""Absorption runs SAEBench inside the run's artifacts folder: every path handed to it must still point
at the run (and at the shared probe cache) from there, whatever folder the command was started in."""
import contextlib
from pathlib import Path

from evals.absorption import working_dirs
from tests.test_data import context


def test_absorption_results_and_probe_cache_land_in_the_run_and_cache_when_out_dir_is_relative(tmp_path, monkeypatch):
    from sae_bench.sae_bench_utils import general_utils

    monkeypatch.chdir(tmp_path)
    ctx = context(out_dir=Path("comparison/relu_3.adding"), cache_dir=Path("cache"))
    artifacts, results, probes = working_dirs(ctx, ctx.cache_path("absorption-probe", "blocks.6.hook_resid_post"))
    with contextlib.chdir(artifacts):  # as run() calls SAEBench's run_eval
        path = general_utils.get_results_filepath(str(results), "harness", "custom_sae")
        Path(path).write_text("{}")  # what run_eval does at the end (it failed here on a relative out_dir)
        Path(probes).mkdir(parents=True)
    assert (tmp_path / "comparison/relu_3.adding/artifacts/absorption/results" / Path(path).name).is_file()
    assert probes.parent == tmp_path / "cache" and probes.is_dir()  # the shared cache, not inside the run
