"""On-disk cache of the model activations the buffer serves, so a later run never runs the model for training.

Written by hand: SAELens's cached-activations runner stores shuffled rows without their sequence,
position or document, so a variant that needs true neighbours (contrastive, temporal) or domain tags
(orthogonal) could not train from it. This cache stores, for every training sequence of a run (the
whole `TokenSequences`, BOS position dropped), the activations at the hooked layer(s) in the model's
own dtype (nothing narrower: no rounding beyond what the model itself did), beside the sequences'
tokens and each position's document. The buffer reads whole sequences from it exactly where it would
have run the model, so rows, neighbours, documents, scale and batch order are the same either way.

Key: model, dtype, device kind, hooks, dataset, split, context, held-out percent, document order seed,
number of sequences, and a hash of the tokens themselves (so a cache of other text is never read).

Crash safety: a cache is written under `<key>.tmp-<pid>/`, its `meta.json` (the completion marker,
with every file's size) is written last, and only then is the folder renamed to `<key>/`. A folder
without a readable marker, or whose files' sizes differ from the marker's, is removed and rebuilt,
never read; leftovers of dead writers are removed. `max_gb` bounds the whole cache folder: the least
recently used caches are removed to make room, and a cache that alone exceeds it is not written (the
run then trains from the model, as with the cache off).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from trainers.data import TokenSequences
from trainers.model import hook_layer

CACHE_FORMAT = 1
# numpy has no bfloat16: it is stored as its 16 raw bits and viewed back as bfloat16 by torch
STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16, torch.float64: np.float64}
MARKER = "meta.json"
ACTS = "acts.bin"


def describe(model_name: str, dtype: torch.dtype, device: str, hooks: list[str], sequences: TokenSequences,
             split: str, data_seed: int) -> dict:
    """Everything the cached activations depend on (the key is a hash of it)."""
    digest = hashlib.sha1(sequences.tokens.numpy().tobytes())
    digest.update(sequences.doc_index.numpy().tobytes())
    return {"format": CACHE_FORMAT, "model": model_name, "dtype": str(dtype).removeprefix("torch."),
            "device_kind": str(device).split(":")[0], "hooks": list(hooks), "dataset": sequences.source,
            "split": split, "context_size": int(sequences.tokens.shape[1]),
            "held_out_percent": sequences.held_out_percent, "data_seed": data_seed,
            "n_sequences": len(sequences), "tokens_sha1": digest.hexdigest()}


def key_of(description: dict) -> str:
    return hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class CacheReport:
    """What the cache did for this run (final_info.json: data.activation_cache)."""

    status: str  # "read", "built", "off", "over_cap"
    path: str = ""
    bytes: int = 0
    build_s: float = 0.0
    note: str = ""


class ActivationCache:
    """A complete cache, memory-mapped: `fetch(seq_ids)` gives [n, seq_len, n_hooks, d] in the model's dtype."""

    def __init__(self, root: Path):
        self.root = root
        self.meta = json.loads((root / MARKER).read_text())
        dtype = getattr(torch, self.meta["description"]["dtype"])
        self.dtype = dtype
        self.shape = tuple(self.meta["shape"])
        self._acts = np.memmap(root / ACTS, dtype=STORAGE[dtype], mode="r", shape=self.shape)
        self.tokens = torch.from_numpy(np.load(root / "tokens.npy"))
        self.doc_index = torch.from_numpy(np.load(root / "doc_index.npy"))

    @property
    def nbytes(self) -> int:
        return int(sum(self.meta["file_bytes"].values()))

    def fetch(self, seq_ids: torch.Tensor) -> torch.Tensor:
        ids = seq_ids.cpu().numpy()
        order = np.argsort(ids, kind="stable")  # read the file forwards; put rows back in the asked order
        block = np.ascontiguousarray(self._acts[ids[order]])
        out = torch.empty(block.shape, dtype=self.dtype)
        out[torch.from_numpy(order)] = torch.from_numpy(block).view(self.dtype)
        return out


def _sizes_match(root: Path, meta: dict) -> bool:
    return all((root / name).is_file() and (root / name).stat().st_size == size
               for name, size in meta.get("file_bytes", {}).items())


def open_complete(root: Path, description: dict) -> ActivationCache | None:
    """The cache at `root` if it is complete, holds exactly `description`, and every file has its size."""
    try:
        meta = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not meta.get("complete") or meta.get("description") != description or not _sizes_match(root, meta):
        return None
    return ActivationCache(root)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_writers(cache_dir: Path) -> None:
    for tmp in cache_dir.glob("*.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _make_room(cache_dir: Path, needed: int, max_bytes: int, keep: Path) -> bool:
    """Remove least recently used caches until `needed` more bytes fit under `max_bytes` (none if it never could)."""
    if needed > max_bytes:
        return False
    caches = [p for p in cache_dir.iterdir() if p.is_dir() and p != keep and ".tmp-" not in p.name]
    used = sum(_folder_bytes(p) for p in caches)
    for old in sorted(caches, key=lambda p: (p / MARKER).stat().st_mtime if (p / MARKER).exists() else 0):
        if used + needed <= max_bytes:
            break
        used -= _folder_bytes(old)
        print(f"[cache] removing the least recently used activation cache {old} to stay under the cap")
        shutil.rmtree(old, ignore_errors=True)
    return used + needed <= max_bytes


@torch.no_grad()
def build(model, sequences: TokenSequences, hooks: list[str], description: dict, root: Path,
          batch_size: int) -> ActivationCache:
    """Run the model once over every sequence (only up to the deepest hooked layer) and write the cache."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    stop = max(hook_layer(h, model.cfg.n_layers) for h in hooks) + 1
    n, seq_len = len(sequences), sequences.tokens.shape[1] - 1
    shape = (n, seq_len, len(hooks), model.cfg.d_model)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    acts = np.memmap(tmp / ACTS, dtype=STORAGE[dtype], mode="w+", shape=shape)
    bar = tqdm(total=n, desc="caching training activations", unit="seq")
    for start in range(0, n, batch_size):
        chunk = sequences.tokens[start : start + batch_size]
        _, cache = model.run_with_cache(chunk.to(device), names_filter=hooks, stop_at_layer=stop)
        block = torch.stack([cache[h][:, 1:] for h in hooks], dim=2).to(dtype).cpu()
        acts[start : start + len(chunk)] = block.view(torch.uint16).numpy() if dtype == torch.bfloat16 else block.numpy()
        bar.update(len(chunk))
    bar.close()
    acts.flush()
    del acts
    np.save(tmp / "tokens.npy", sequences.tokens.numpy())
    np.save(tmp / "doc_index.npy", sequences.doc_index.numpy())
    files = {name: (tmp / name).stat().st_size for name in (ACTS, "tokens.npy", "doc_index.npy")}
    meta = {"complete": True, "description": description, "shape": list(shape), "file_bytes": files,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    marker = tmp / MARKER
    with open(marker, "w") as f:  # the completion marker, written last and flushed to disk
        f.write(json.dumps(meta, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, root)
    return ActivationCache(root)


def open_or_build(model, sequences: TokenSequences, hooks: list[str], description: dict, cache_dir: Path,
                  max_gb: float, batch_size: int) -> tuple[ActivationCache | None, CacheReport]:
    """A complete cache for `description`: read if one exists, else built (None if it would not fit the cap)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / key_of(description)
    _remove_dead_writers(cache_dir)
    cache = open_complete(root, description)
    if cache is not None:
        os.utime(root / MARKER)  # its last use, for the least-recently-used cap
        print(f"[cache] training activations read from {root} ({cache.nbytes / 1e9:.2f} GB): the model is not run for training")
        return cache, CacheReport("read", str(root), cache.nbytes)
    note = ""
    if root.exists():
        note = "an incomplete cache (a run died while writing it, or its files were changed) was removed and rebuilt"
        print(f"[cache] {root}: {note}")
        shutil.rmtree(root)
    itemsize = np.dtype(STORAGE[getattr(torch, description["dtype"])]).itemsize
    needed = (len(sequences) * (sequences.tokens.shape[1] - 1) * len(hooks) * model.cfg.d_model * itemsize
              + 2 * sequences.tokens.numel() * 8)
    max_bytes = int(max_gb * 1e9)
    if not _make_room(cache_dir, needed, max_bytes, keep=root):
        note = (f"not cached: it would take {needed / 1e9:.2f} GB, over --activation_cache_max_gb={max_gb:g}; "
                "training runs the model")
        print(f"[cache] {note}")
        return None, CacheReport("over_cap", "", 0, 0.0, note)
    t0 = time.perf_counter()
    cache = build(model, sequences, hooks, description, root, batch_size)
    took = time.perf_counter() - t0
    print(f"[cache] training activations written to {root} ({cache.nbytes / 1e9:.2f} GB in {took:.0f} s); "
          "later runs on the same model, hook and text read them")
    return cache, CacheReport("built", str(root), cache.nbytes, took, note)
