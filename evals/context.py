"""What every eval is handed: the trained SAE, the loaded model, held-out text, and where to write."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainers import labelled_data
from trainers.data import TokenSequences, build_sequences

# The held-out documents are read in one fixed shuffled order, whatever the training seed, so every
# run's evals read the same text.
HELD_OUT_ORDER_SEED = 0


@dataclass
class EvalContext:
    sae: object  # the trained SAE in the model's own units (SAELens SAE)
    model: object  # the loaded HookedTransformer (loaded once per process)
    model_name: str  # the TransformerLens name SAEBench's configs and the cache keys use
    embedded: bool  # True: the offline stand-in data; False: SAEBench's own hub datasets and sizes
    device: str
    llm_dtype: str  # "float32", "bfloat16", ...
    out_dir: Path  # the run's folder (being built): each eval writes its own JSON here
    cache_dir: Path  # model-only caches, shared across runs, keyed by what they depend on
    dataset: str  # the text training read from; evals read only its held-out documents
    held_out_percent: int
    context_size: int
    model_batch_size: int  # sequences per LM forward pass
    seed: int  # the run's seed
    text_field: str = "text"  # the dataset's column holding the text (--text_field)
    _held_out: TokenSequences | None = field(default=None, repr=False)
    _held_out_asked: int = field(default=0, repr=False)  # the most sequences any eval has asked for
    texts_read: set[str] = field(default_factory=set, repr=False)  # every labelled text handed to an eval
    model_only_used: dict[str, list] = field(default_factory=dict, repr=False)  # see model_only

    def labelled(self, build, *args, seed: int = 0, **kwargs):
        """A labelled set from trainers.labelled_data (`build` is one of its set builders), drawn only from
        documents training never read. The one way evals get wiki text: what it hands out is recorded,
        and checked against the training split when the run is written. `seed` (an eval's own `seed`
        setting; 0: the default sample) draws another sample of the same pools."""
        s = build(*args, held_out_percent=self.held_out_percent, part="held_out", seed=labelled_data.SEED + seed, **kwargs)
        self.texts_read.update(t for t, _ in s.train + s.test)
        return s

    def domain_texts(self, domain: str) -> list[str]:
        """Unlearning's held-out "forget" or "retain" texts (see labelled_data.domain_texts)."""
        texts = labelled_data.domain_texts(domain, held_out_percent=self.held_out_percent, part="held_out")
        self.texts_read.update(texts)
        return texts

    def held_out(self, n_sequences: int) -> torch.Tensor:
        """The first `n_sequences` held-out sequences [n, context_size], BOS first (fewer if the split
        has fewer). Tokenized on first use and shared by every eval of the run; a larger request
        tokenizes further (the first n sequences are the same whatever was asked before)."""
        if n_sequences > self._held_out_asked:
            self._held_out = build_sequences(self.dataset, self.model.tokenizer, "held_out", self.context_size,
                                             max_tokens=n_sequences * self.context_size,
                                             held_out_percent=self.held_out_percent, shuffle_seed=HELD_OUT_ORDER_SEED,
                                             text_field=self.text_field)
            self._held_out_asked = n_sequences
        return self._held_out.tokens[:n_sequences]

    def held_out_block(self, n_sequences: int, block: int = 0) -> torch.Tensor:
        """The `block`-th run of `n_sequences` held-out sequences (block 0: the first; an eval's `seed`
        setting picks its block, so a reseeded eval reads other held-out text of the same kind)."""
        return self.held_out(n_sequences * (block + 1))[n_sequences * block:]

    def held_out_documents(self, n_sequences: int) -> tuple[torch.Tensor, list]:
        """(doc_index [n, context_size] of the first `n_sequences` held-out sequences (-1 at BOS), the
        documents it indexes): which held-out document, and so which topic, each token comes from."""
        self.held_out(n_sequences)
        return self._held_out.doc_index[:n_sequences], self._held_out.documents

    def cache_path(self, kind: str, *depends_on) -> Path:
        """Where a model-only cache lives: named by everything it depends on (the model, its dtype, the
        device kind, and `depends_on`: hook, context length, the exact texts, ...), so a cache made
        under any other key is never read."""
        key = [self.model_name, self.llm_dtype, self.device.split(":")[0], *depends_on]
        return self.cache_dir / f"{kind}-{hashlib.sha1(json.dumps(key, default=str).encode()).hexdigest()[:16]}"

    def model_only(self, kind: str, compute, *depends_on):
        """The result of `compute()`, model-only work (it must not depend on the SAE), read from the cache
        named by (kind, depends_on) when a complete one exists; else computed and saved (to a temporary
        name, then renamed: a run killed while saving leaves no file that could be read). Each use is
        recorded in `model_only_used` as {kind: ["read" | "built", ...]}."""
        path = self.cache_path(kind, *depends_on).with_suffix(".pt")
        if path.exists():
            self.model_only_used.setdefault(kind, []).append("read")
            return torch.load(path)
        out = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        torch.save(out, tmp)
        os.replace(tmp, path)
        self.model_only_used.setdefault(kind, []).append("built")
        return out

    def bookkeeping(self) -> dict:
        """What the evals so far recorded (texts read, held-out sequences asked for, model-only caches
        used): saved with a resumable run's finished evals, given back by restore_bookkeeping."""
        return {"texts_read": set(self.texts_read), "held_out_asked": self._held_out_asked,
                "model_only_used": {k: list(v) for k, v in self.model_only_used.items()}}

    def restore_bookkeeping(self, state: dict) -> None:
        self.texts_read |= state["texts_read"]
        self.model_only_used.update({k: list(v) for k, v in state["model_only_used"].items()})
        if state["held_out_asked"]:
            self.held_out(state["held_out_asked"])

    def held_out_description(self, training_texts: set[str]) -> dict:
        """What the evals read (for final_info.json's data section), and how many of those texts are
        among `training_texts`, the documents training tokenized (0, or the run fails)."""
        docs = [] if self._held_out is None else [d.text for d in self._held_out.documents]
        read = self.texts_read | set(docs)
        return {"held_out_sequences": 0 if self._held_out is None else len(self._held_out),
                "held_out_documents": len(docs), "eval_texts_read": len(read),
                "eval_texts_in_training_documents": len(read & training_texts)}
