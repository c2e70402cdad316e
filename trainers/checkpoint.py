"""Checkpoints of a training in progress: what a run killed at any moment resumes from.

A checkpoint holds everything the next step depends on, for every SAE the command trains together:
- each SAE as a whole object (its weights and the variant's own state: EMAs, queues, heads, probes and
  their optimizers; pickled, because that state is plain Python attributes no state_dict lists);
- SAELens's trainer state (`SAETrainer.save_trainer_state`: Adam, the LR and coefficient schedules, the
  dead-feature counters);
- each Training's own (curves, per-step numbers, its random-number state, the guards' flags);
- each buffer's position in the data, its queue and its random-number state (the resident activations
  are computed again on load: trainers/buffer.py, `load_state_dict`);
- the steps done, and the command's config, so a resume cannot continue someone else's run.

Written atomically: everything goes into `checkpoint.tmp/`, a marker with every file's size last, then
`checkpoint.tmp/` replaces `checkpoint/` by renames (a run killed between the two renames leaves
`checkpoint.old/`, which `load` falls back to). A folder without its marker, or with a file of another
size, is not a checkpoint: `load` says so in one line and nothing is resumed from it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from trainers.trainer import Training

NAME = "checkpoint"
MARKER = "complete.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (reported as one line, exit code 2)."""


def save(folder: Path, trainings: list[Training], buffers: dict, steps_done: int, config: list[dict]) -> Path:
    """Write the checkpoint of `trainings` (and the `buffers` they read, keyed by seed) after
    `steps_done` steps into folder/checkpoint, atomically; returns its path."""
    final, tmp, old = folder / NAME, folder / f"{NAME}.tmp", folder / f"{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    buffer_keys = {id(b): str(seed) for seed, b in buffers.items()}
    for i, t in enumerate(trainings):
        _save_sae(t.sae, tmp / f"sae_{i}.pt")
        t.trainer.save_trainer_state(tmp / f"trainer_{i}")
        torch.save({**t.state_dict(), "buffer": buffer_keys[id(t.buffer)]}, tmp / f"training_{i}.pt")
    torch.save({key: buffers[int(key)].state_dict() for key in buffer_keys.values()}, tmp / "buffers.pt")
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_json(tmp / MARKER, {"steps_done": steps_done, "n_saes": len(trainings), "config": config, "files": files})
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# functions SAELens sets on an SAE from its config (local functions: not picklable), set again on load
RUNTIME_FUNCTIONS = ("run_time_activation_norm_fn_in", "run_time_activation_norm_fn_out", "reshape_fn_in", "reshape_fn_out")


def _save_sae(sae, path: Path) -> None:
    """The whole SAE object, without what belongs to the step in flight (the trainer's StepData, which
    points at the buffer and the model; a TopK step's active indices) and SAELens's functions made
    from its config."""
    held = {k: getattr(sae, k) for k in ("_step_data", "_active", *RUNTIME_FUNCTIONS) if k in sae.__dict__}
    try:
        for k in held:
            setattr(sae, k, None)
        with warnings.catch_warnings():  # the decoder's gradient projection hook is registered again on load
            warnings.filterwarnings("ignore", message=".*backward hook.*")
            torch.save(sae, path)
    finally:
        for k, v in held.items():
            setattr(sae, k, v)


def _load_sae(path: Path, device: str):
    """_save_sae's SAE, with SAELens's functions set again as its constructor sets them."""
    sae = torch.load(path, map_location=device, weights_only=False)
    if sae.cfg.reshape_activations == "hook_z":
        sae.turn_on_forward_pass_hook_z_reshaping()
    else:
        sae.turn_off_forward_pass_hook_z_reshaping()
    sae._setup_activation_normalization()
    return sae


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


READ_ORDER = (NAME, f"{NAME}.old")  # where a resume looks: checkpoint.old/ is left by a kill between save's renames


def present(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint a resume could read (checkpoint/, or checkpoint.old/ alone when
    the run stopped between save's two renames): a folder holding one is never removed."""
    return any((folder / name).is_dir() for name in READ_ORDER)


def find(folder: Path) -> Path | None:
    """The complete checkpoint in `folder` (checkpoint/, else checkpoint.old/ left by a kill between
    the two renames), or None if there is none at all; CheckpointError if there is one but it is
    incomplete or damaged."""
    for name in READ_ORDER:
        path = folder / name
        if not path.is_dir():
            continue
        try:
            meta = json.loads((path / MARKER).read_text())
            sizes_ok = all((path / f).is_file() and (path / f).stat().st_size == n for f, n in meta["files"].items())
        except (OSError, ValueError, KeyError, TypeError):
            sizes_ok = False
        if not sizes_ok:
            raise CheckpointError(f"{path} is incomplete or damaged (its marker is missing or a file has another "
                                  "size); start the run again without --resume")
        return path
    return None


def load(path: Path, device: str) -> dict:
    """{"steps_done", "config", "saes": [...], "trainings": [...], "buffers": {seed: state}} of a
    checkpoint `find` returned."""
    meta = json.loads((path / MARKER).read_text())
    try:
        out = {"steps_done": meta["steps_done"], "config": meta["config"], "path": path,
               "saes": [_load_sae(path / f"sae_{i}.pt", device) for i in range(meta["n_saes"])],
               "trainings": [torch.load(path / f"training_{i}.pt", weights_only=False) for i in range(meta["n_saes"])],
               "buffers": {int(k): v for k, v in torch.load(path / "buffers.pt", weights_only=False).items()}}
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a damaged checkpoint: one line
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}); start the run again "
                              "without --resume") from None
    for i, t in enumerate(out["trainings"]):
        t["trainer_dir"] = path / f"trainer_{i}"
    return out
