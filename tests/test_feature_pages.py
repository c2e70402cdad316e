"""Feature pages (evals/features.py) and the one page for all runs (plot.py's figures/index.html): the
choice of features on hand-made numbers, and, end to end, a run's pages written, opened from disk in
headless Chromium with no network, with the expected features shown and no console error."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from evals.features import Settings, choose
from tests.test_experiment import ROOT, TINY_TRAINING, run_experiment


def test_the_chosen_features_are_the_most_frequent_a_seeded_sample_the_groups_and_the_most_consistent():
    fired = torch.tensor([50., 40., 0., 30., 20., 10., 6., 2., 0., 9.])
    stats = {"firing_rate": fired / 100, "fired": fired,
             "lag1": torch.tensor([0.1, 0.2, 0.0, 0.3, 0.4, 0.5, 0.9, 0.99, 0.0, 0.05])}
    s = Settings(frequent=2, random=2, per_group=2, seed=3)
    chosen = choose(stats, {"orthogonal forget group": [8, 5, 3]}, s)
    assert [f for f, why in chosen.items() if "most frequent" in why] == [0, 1]
    sample = [f for f, why in chosen.items() if "random sample" in why]
    assert len(sample) == 2 and not set(sample) & {0, 1, 2, 8}  # only features that fire, not already chosen
    assert choose(stats, {}, s).keys() & set(sample) == set(sample)  # the same seed, the same sample
    # consistent over time: the highest lag-1 correlation among features that fired at least 5 times (7 fired 2)
    assert [f for f, why in chosen.items() if "most consistent over time" in why] == [6, 5]
    assert [f for f, why in chosen.items() if "orthogonal forget group" in why] == [5, 3]  # 8 never fires
    assert chosen[5] == ["most consistent over time", "orthogonal forget group"]


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(page):
    """(DOM after the page's scripts ran, console/network error lines) of a page opened from disk."""
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines()
              if ":ERROR:CONSOLE" in line or "Uncaught" in line or "net::ERR" in line]
    return proc.stdout, errors


@pytest.mark.slow
def test_a_run_writes_feature_pages_that_open_from_disk_and_plot_links_them_from_one_page(tmp_path):
    proc = run_experiment("--out_dir=run_0", *TINY_TRAINING, "--evals=features", "--set", "features.sequences=12",
                          "--eval_cache_dir=cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "run_0" / "features"
    rows = json.loads((folder / "features.json").read_text())
    info = json.loads((tmp_path / "run_0" / "final_info.json").read_text())
    assert info["features"]["features"] == len(rows) >= 16  # 8 frequent + 8 random + the most consistent
    for r in rows:
        page = tmp_path / "run_0" / r["page"]
        text = page.read_text()
        assert "https://" not in text and "http://" not in text  # no CDN: opens with no network
        assert len(r["nearest"]) == 5 and len(r["promotes"]) == 10 and r["firing_rate"] > 0
        assert set(r["per_topic_firing_rate"]) and max(r["per_topic_firing_rate"].values()) > 0
    assert (folder / "assets" / "d3.v6.min.js").exists() and (folder / "assets" / "plotly.min.js").exists()
    plot = subprocess.run([sys.executable, str(ROOT / "plot.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert plot.returncode == 0, plot.stderr[-2000:]
    everything = (tmp_path / "figures" / "index.html").read_text()
    assert "../run_0/features/index.html" in everything
    assert all(f"src='{p.name}'" in everything for p in (tmp_path / "figures").glob("*.png"))
    if chromium() is None:
        pytest.skip("no Chromium here (setup.sh installs the Debian package `chromium` where it can): the pages "
                    "were written and checked as files, not rendered")
    dom, errors = render(folder / "index.html")
    assert not errors, errors
    shown = {int(m) for m in re.findall(r"<tr data-id=\"(\d+)\"", dom)}
    assert shown == {r["feature"] for r in rows}
    assert f"{len(rows)} of {len(rows)} features" in dom  # the search script ran
    dom, errors = render(tmp_path / "run_0" / rows[0]["page"])
    assert not errors, errors
    assert dom.count('class="main-svg"') >= 2  # plotly drew the activation and logit histograms
    assert "TOP ACTIVATIONS" in dom.upper() and "POSITIVE LOGITS" in dom.upper()
    dom, errors = render(tmp_path / "figures" / "index.html")
    assert not errors, errors
    assert "run_0: relu" in dom
