"""The training side's config sections and the one command-line parser of the harness.

A run's config is built of sections: `Target` (what to train), `trainers.trainer.TrainSettings`
(training), the variant's own `Config` and each eval's `Settings` (named sections), and `System`.
Every field of a plain section is a flag, `--n_tokens=600000` (or `--n_tokens 600000`); a named
section's field is set with `--set NAME.FIELD=VALUE`, where NAME is a variant or an eval. Each
default is written once, in its section's dataclass; `parse_into` only overrides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from trainers.data import check_local, is_local
from trainers.model import EMBEDDED_MODEL, MODEL_DEFAULTS


class UsageError(ValueError):
    """A flag or setting that cannot work (reported as one line, exit code 2)."""


@dataclass
class Target:
    """What to train: which variant, on which model's activations, from which text."""

    variant: str = "relu"  # one of trainers.VARIANTS
    model: str = EMBEDDED_MODEL  # or a TransformerLens hub name, e.g. google/gemma-2-2b
    dataset: str = "auto"  # auto: the model's default (embedded corpus offline, the Pile at full scale); or a hub
    # name, or a local .jsonl/.json/.parquet/.txt file, a folder of them or a save_to_disk folder (trainers/data.py),
    # recorded resolved (absolute)
    text_field: str = "text"  # the column holding the text (hub and local datasets; the embedded corpus ignores it)
    hook: str = "auto"  # e.g. blocks.6.hook_resid_post
    d_sae: int = 0  # 0: the model's default
    context_size: int = 128
    held_out_percent: int = 30  # documents held out of training; every eval reads only those
    data_seed: int = 0  # the order training documents are packed in (which text a run of n_tokens reads);
    # --seed changes the SAE's init and the order rows are served, not the text, so runs of any seed share
    # one activation cache
    eval_data: str = "auto"  # auto: the offline stand-in sets for the embedded model, SAEBench's own datasets and
    # sizes for a hub model; stock or embedded to choose (evals/__init__.py; README "Evals and their data")

    def resolve(self, variants: dict) -> object:
        """Check the variant's name, fill the "auto" fields from the model's defaults (a --dataset given
        replaces the model's default, a local path as well as a hub name), check a local dataset cheaply
        (`trainers.data.check_local`: it exists, its format, its --text_field column) and record it as an
        absolute path; return the variant's default settings (its `Config()`)."""
        if self.variant not in variants:
            raise UsageError(f"unknown variant {self.variant!r}; choose one of {', '.join(variants)}")
        if self.model not in MODEL_DEFAULTS and ("auto" in (self.hook, self.dataset) or self.d_sae == 0):
            raise UsageError(f"model {self.model!r} has no defaults here: give --hook, --dataset and --d_sae")
        hook, d_sae, dataset = MODEL_DEFAULTS.get(self.model, (self.hook, self.d_sae, self.dataset))
        self.hook = hook if self.hook == "auto" else self.hook
        self.d_sae = d_sae if self.d_sae == 0 else self.d_sae
        self.dataset = dataset if self.dataset == "auto" else self.dataset
        if self.eval_data not in ("auto", "stock", "embedded"):
            raise UsageError(f"--eval_data={self.eval_data}: choose auto (stock data for a hub model, the embedded "
                             "sets for the embedded one), stock (SAEBench's own hub datasets) or embedded (offline)")
        if self.eval_data == "auto":
            self.eval_data = "embedded" if self.model == EMBEDDED_MODEL else "stock"
        if is_local(self.dataset):
            self.dataset = check_local(self.dataset, self.text_field)
        return variants[self.variant].Config()


@dataclass
class System:
    """Where it runs and where results go."""

    device: str = "auto"
    dtype: str = "auto"  # model dtype: bf16 on CUDA, fp32 on CPU
    out_dir: str = "run_0"
    overwrite: bool = False
    notes: str = "notes.txt"
    eval_cache_dir: str = ".cache/evals"  # model-only activation/probe caches, keyed by model, hook and texts
    activation_cache: bool = True  # training reads the model's activations from disk once written (false: run the model)
    activation_cache_dir: str = ".cache/activations"
    activation_cache_max_gb: float = 20.0  # the whole folder's cap: least recently used caches are removed
    checkpoints: bool = True  # training checkpoints in OUT_DIR.partial/checkpoint, what --resume goes on from
    checkpoint_every_tokens: int = 0  # 0: a tenth of the run, at least 50,000 tokens (and after the last step)


BARE_FLAGS = ("overwrite", "activation_cache", "checkpoints")  # flags that may be given without a value (= true)


def split_args(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(flag, value) pairs and the --set items, in command-line order."""
    flags, sets = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if key in BARE_FLAGS:
                value = "true"
            elif not args:
                raise UsageError(f"--{key} needs a value")
            else:
                value = args.pop(0)
        if key == "set":
            sets.append(value)
        else:
            flags.append((key, value))
    return flags, sets


def set_flag(sections: list, key: str, value: str) -> None:
    """Set field `key` of whichever plain section has it."""
    for section in sections:
        if key in {f.name for f in dataclasses.fields(section)}:
            setattr(section, key, convert(value, type(getattr(section, key)), f"--{key}"))
            return
    options = sorted(f.name for s in sections for f in dataclasses.fields(s))
    raise UsageError(f"unknown option --{key}; options: {', '.join('--' + o for o in options)}, "
                     "and --set VARIANT.FIELD=VALUE / --set EVAL.FIELD=VALUE for a variant's or an eval's settings")


def set_named(named: dict[str, object], item: str, kinds: dict[str, str]) -> None:
    """Apply one `--set NAME.FIELD=VALUE` to the named section NAME. `kinds` says what each name that
    could appear is (e.g. "variant topk, which this run does not train") for the error line."""
    target, eq, value = item.partition("=")
    name, dot, attr = target.partition(".")
    if not eq or not dot:
        raise UsageError(f"--set {item!r}: write --set NAME.FIELD=VALUE, e.g. --set relu.l1_coefficient=2")
    if name not in named:
        raise UsageError(f"--set {item!r}: {kinds.get(name, f'{name!r} is neither a variant nor an eval')}")
    section = named[name]
    fields = [f.name for f in dataclasses.fields(section)]
    if attr not in fields:
        raise UsageError(f"{name!r} has no setting {attr!r}; it has: {', '.join(fields)}")
    setattr(section, attr, convert(value, type(getattr(section, attr)), f"--set {target}"))


def convert(value: str, kind: type, where: str):
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        out = kind(value)
    except ValueError:
        raise UsageError(f"{where}: {value!r} is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(out):
        raise UsageError(f"{where}: {value!r} is not a finite number")
    return out
