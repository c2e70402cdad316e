"""Which data each eval would request, read through `--dry_run` (nothing is loaded or fetched): a hub
model gets SAEBench's own datasets and sizes, the embedded model the offline stand-in sets, and
`--eval_data` overrides either."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHIA = "EleutherAI/pythia-70m-deduped"


def plan(*flags):
    proc = subprocess.run([sys.executable, str(ROOT / "experiment.py"), "--dry_run", "--evals=all", *flags],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    return out["target"]["eval_data"], out["eval_data"]


def test_a_hub_model_makes_every_eval_request_saebenchs_own_datasets_and_sizes():
    mode, p = plan(f"--model={PYTHIA}")
    assert mode == "stock"
    bias_in_bios = ["LabHC/bias_in_bios_class_set1", "LabHC/bias_in_bios_class_set2", "LabHC/bias_in_bios_class_set3"]
    assert p["sparse_probing"]["datasets"] == bias_in_bios + [
        "canrager/amazon_reviews_mcauley_1and5", "canrager/amazon_reviews_mcauley_1and5_sentiment",
        "codeparrot/github-code", "fancyzhx/ag_news", "Helsinki-NLP/europarl"]
    assert (p["sparse_probing"]["probe_train_set_size"], p["sparse_probing"]["probe_test_set_size"],
            p["sparse_probing"]["context_length"]) == (4000, 1000, 128)
    for kind in ("scr", "tpp"):
        assert p[kind]["datasets"] == ["LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5"]
        assert (p[kind]["train_set_size"], p[kind]["test_set_size"], p[kind]["context_length"]) == (4000, 1000, 128)
    assert p["unlearning"]["datasets"][0] == "wmdp-bio" and p["unlearning"]["dataset_size"] == 1024
    assert p["absorption"]["words_per_letter"] == "all"
    assert p["core"]["datasets"] == ["monology/pile-uncopyrighted"]  # held-out documents of the training text
    assert all(v["source"].startswith("SAEBench stock") for k, v in p.items() if k in ("sparse_probing", "scr", "tpp",
                                                                                       "unlearning"))


def test_the_embedded_model_routes_every_eval_to_the_offline_sets_with_its_settings():
    mode, p = plan("--set", "sparse_probing.train_per_class=12", "--set", "scr.texts_per_cell=40")
    assert mode == "embedded"
    assert p["sparse_probing"]["datasets"] == ["wiki_topic", "wiki_language", "mt_mbpp_language", "mmlu_subject",
                                               "wiki_bio_profession"]
    assert p["sparse_probing"]["train_per_class"] == 12 and p["sparse_probing"]["context_length"] == 64
    assert p["scr"]["datasets"] == ["wiki_topic_x_language"]
    assert (p["scr"]["train_set_size"], p["scr"]["test_set_size"]) == (2 * (20 - 1), 2 * (10 - 1))  # from 40 per cell
    assert p["tpp"]["datasets"] == ["wiki_topic"]
    assert p["absorption"]["words_per_letter"] == 150
    assert "wmdp-bio" not in p["unlearning"]["datasets"]
    assert p["core"]["datasets"] == ["wiki-summaries-en"]


def test_eval_data_overrides_the_routing_either_way():
    mode, p = plan(f"--model={PYTHIA}", "--eval_data=embedded")
    assert mode == "embedded" and p["sparse_probing"]["datasets"][0] == "wiki_topic"
    mode, p = plan("--eval_data=stock")
    assert mode == "stock" and p["scr"]["datasets"][0] == "LabHC/bias_in_bios_class_set1"
