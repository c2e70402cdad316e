"""The full-scale path without the hub: `--model=EleutherAI/pythia-70m-deduped` read from a local
Hugging Face cache laid out as a download leaves it (tests/hub_standin.py: the real architecture,
random weights, a tokenizer trained here), on a user's own jsonl corpus, through the same loading code
a real hub model takes (HF_HUB_OFFLINE=1, HF_HOME pointing at the cache: no test-only branch)."""

import json
import os
import subprocess
import sys

import pytest

from tests import hub_standin
from tests.test_experiment import ROOT, TINY_EVALS
from trainers.data import load_wiki_summaries

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pythia_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("full_scale")
    hub_standin.build(cwd / "hf_home")
    corpus = cwd / "corpus.jsonl"  # a user's own corpus, its text in a column named "content"
    corpus.write_text("".join(json.dumps({"id": i, "content": d.text}) + "\n"
                              for i, d in enumerate(load_wiki_summaries()[:2500])))
    env = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [f"--model={hub_standin.NAME}", f"--dataset={corpus}", "--text_field=content", "--eval_data=embedded",
            "--n_tokens=12800", "--batch_size=128", "--seqs_per_fill=32", "--log_every=10", "--d_sae=1024",
            "--eval_cache_dir=cache", "--activation_cache_dir=acts", "--evals=core,sparse_probing"]
    for name in ("core", "sparse_probing"):
        args += [a for s in TINY_EVALS[name] for a in ("--set", f"{name}.{s}")]
    proc = subprocess.run([sys.executable, str(ROOT / "experiment.py"), "--out_dir=run_0", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)
    return cwd, proc


def test_a_hub_named_model_from_a_local_hub_cache_trains_and_runs_core_and_sparse_probing(pythia_run):
    cwd, proc = pythia_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((cwd / "run_0" / "final_info.json").read_text())
    assert info["status"] == "ok", info["failures"]
    target = info["config"]["target"]
    assert target["model"] == hub_standin.NAME and target["hook"] == "blocks.3.hook_resid_post"  # pythia's default
    assert target["dataset"] == str(cwd / "corpus.jsonl") and target["text_field"] == "content"
    assert info["training"]["n_steps"] == 100 and info["training"]["final"]["explained_variance"] > 0
    core = info["core"]
    assert "status" not in core or core["status"] != "error", core
    assert 0 < info["summary"]["l0"] < 1024 and info["summary"]["explained_variance"] > 0
    sp = info["sparse_probing"]
    assert sp.get("status") != "error", sp
    assert 0.5 <= sp["llm_test_accuracy"] <= 1 and 0.5 <= sp["sae_test_accuracy"] <= 1
    assert info["data"]["eval_data"]["sparse_probing"]["datasets"][0] == "wiki_topic"


def test_the_saved_sae_names_the_hub_model_and_hook_and_reloads_with_saelens(pythia_run):
    cwd, _ = pythia_run
    from sae_lens import SAE

    folder = cwd / "run_0" / "sae"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == hub_standin.NAME
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    sae = SAE.load_from_disk(str(folder), device="cpu")
    assert sae.cfg.d_in == 512 and sae.cfg.d_sae == 1024
    assert sae.cfg.metadata.model_name == hub_standin.NAME
