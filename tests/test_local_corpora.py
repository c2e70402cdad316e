"""--dataset as a user's own local corpus: .jsonl, .json, .parquet, .txt, a folder of files, a folder
written by save_to_disk; read through the same streaming code as a hub name (trainers.data.stream_rows);
--text_field; bad local input as one line and exit code 2 before any model loads."""

import json

import pytest

from tests.test_experiment import check_bad_inputs
from trainers.data import (DataError, build_sequences, check_local, is_held_out, is_local, iter_documents,
                           load_wiki_summaries, stream_rows)

HELD_OUT = 30  # percent: 14 of the 30 documents below are held out
CTX = 32


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from trainers.model import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


@pytest.fixture(scope="module")
def corpus():
    """30 distinct real documents (none holds a blank line, so a .txt of them splits back into them)."""
    texts = [d.text for d in load_wiki_summaries()[:30]]
    assert len(set(texts)) == 30 and not any("\n\n" in t or t != t.strip() for t in texts)
    return texts


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_corpus(kind, folder, texts):
    """The corpus in format `kind`: (the --dataset path, the --text_field)."""
    from datasets import Dataset, DatasetDict

    rows = [{"text": t, "title": f"doc {i}"} for i, t in enumerate(texts)]
    if kind == "jsonl":
        write_jsonl(folder / "corpus.jsonl", rows)
        return folder / "corpus.jsonl", "text"
    if kind == "json":  # one JSON list of objects
        (folder / "corpus.json").write_text(json.dumps(rows), encoding="utf-8")
        return folder / "corpus.json", "text"
    if kind == "parquet":
        Dataset.from_list(rows).to_parquet(str(folder / "corpus.parquet"))
        return folder / "corpus.parquet", "text"
    if kind == "txt":  # documents between blank lines
        (folder / "corpus.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        return folder / "corpus.txt", "text"
    if kind == "saved":
        Dataset.from_list(rows).save_to_disk(str(folder / "saved"))
        return folder / "saved", "text"
    if kind == "saved_dict":  # a DatasetDict: its "train" split is read
        DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:3])}).save_to_disk(
            str(folder / "saved_dict"))
        return folder / "saved_dict", "text"
    if kind == "jsonl_folder":  # three files, the text in a column named "content", and a file that is ignored
        (folder / "shards").mkdir()
        for i in range(3):
            write_jsonl(folder / "shards" / f"part-{i}.jsonl",
                        [{"id": 10 * i + j, "content": t} for j, t in enumerate(texts[10 * i:10 * i + 10])])
        (folder / "shards" / "README.md").write_text("not data")
        return folder / "shards", "content"
    raise ValueError(kind)


KINDS = ["jsonl", "json", "parquet", "txt", "saved", "saved_dict", "jsonl_folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_local_format_gives_exactly_its_documents_on_each_side_of_the_split(tokenizer, corpus, tmp_path, kind):
    path, text_field = write_corpus(kind, tmp_path, corpus)
    dataset = str(path)
    assert is_local(dataset) and check_local(dataset, text_field) == str(path.resolve())

    def build(split, seed):
        return build_sequences(dataset, tokenizer, split, CTX, held_out_percent=HELD_OUT, shuffle_seed=seed,
                               text_field=text_field)

    train, held = build("train", 0), build("held_out", 0)
    assert {d.text for d in train.documents} == {t for t in corpus if not is_held_out(t, HELD_OUT)}
    assert {d.text for d in held.documents} == {t for t in corpus if is_held_out(t, HELD_OUT)}
    assert len(train.documents) == 16 and len(held.documents) == 14
    for seqs in (train, held):
        assert seqs.tokens.shape[1] == CTX and (seqs.tokens[:, 0] == tokenizer.bos_token_id).all()
        assert (seqs.doc_index[:, 0] == -1).all() and seqs.source == dataset
    again, other = build("train", 0), build("train", 1)
    assert again.tokens.equal(train.tokens) and [d.text for d in again.documents] == [d.text for d in train.documents]
    assert [d.text for d in other.documents] != [d.text for d in train.documents]  # another order
    assert {d.text for d in other.documents} == {d.text for d in train.documents}  # of the same documents


def test_a_local_file_is_streamed_like_a_hub_dataset(corpus, tmp_path, monkeypatch):
    """One code path: stream_rows gives a datasets.IterableDataset for a local file as for a hub name, and a hub
    name's rows go through the same shuffle to the same documents (datasets.load_dataset faked: no hub here)."""
    import datasets

    path, _ = write_corpus("jsonl", tmp_path, corpus)
    assert isinstance(stream_rows(str(path), 0), datasets.IterableDataset)
    saved, _ = write_corpus("saved", tmp_path, corpus)
    assert isinstance(stream_rows(str(saved), 0), datasets.IterableDataset)

    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list([{"text": t} for t in corpus]).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub = [d.text for d in iter_documents("someone/corpus", 3)]
    assert calls == [("someone/corpus", {"split": "train", "streaming": True})]
    assert hub == [d.text for d in iter_documents(str(saved), 3)] and sorted(hub) == sorted(corpus)
    assert hub != corpus  # shuffled


def test_local_files_are_read_with_the_hub_offline(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, _ = write_corpus("jsonl", tmp_path, corpus)
    assert sorted(d.text for d in iter_documents(str(path), 0)) == sorted(corpus)
    with pytest.raises(DataError, match="needs the Hugging Face hub"):
        next(iter_documents("someone/corpus", 0))


def test_a_local_path_is_recorded_absolute_and_replaces_the_models_default(corpus, tmp_path, monkeypatch):
    from trainers import VARIANTS
    from trainers.config import Target

    write_corpus("jsonl", tmp_path, corpus)
    monkeypatch.chdir(tmp_path)
    target = Target(dataset="corpus.jsonl")
    target.resolve(VARIANTS)
    assert target.dataset == str(tmp_path.resolve() / "corpus.jsonl") and target.hook != "auto"
    assert Target(dataset="./corpus.jsonl", text_field="text").resolve(VARIANTS) is not None


def test_blank_or_empty_local_corpora_say_so_when_read(tokenizer, tmp_path):
    write_jsonl(tmp_path / "blank.jsonl", [{"text": "  "}, {"text": ""}, {"text": None}])
    (tmp_path / "empty.jsonl").write_text("")
    for name in ("blank.jsonl", "empty.jsonl"):
        with pytest.raises(DataError, match="holds no non-empty text in column 'text'"):
            build_sequences(str(tmp_path / name), tokenizer, "train", CTX)
    with pytest.raises(DataError, match="is empty: it holds no rows"):
        check_local(str(tmp_path / "empty.jsonl"))


def test_names_that_are_paths_are_local_and_hub_names_are_not(tmp_path, monkeypatch):
    import experiment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "corpus").mkdir()
    names = {"/data/x.jsonl": True, "./x": True, "../x": True, "~/x": True, "x.parquet": True, "X.TXT": True,
             "owner/corpus": True, "monology/pile-uncopyrighted": False, "Skylion007/openwebtext": False,
             "wiki-summaries-en": False, "x.csv": False}
    for name, local in names.items():
        assert is_local(name) == local, name
        # experiment.py decides whether to stay offline before it may import trainers.data: the same rule
        assert experiment.names_local_path(name) == local, name


BAD_LOCAL = [  # (arguments, what the one line must say[, setup(cwd)]), each run with --dry_run: no model loads
    (["--dataset=/nonexistent.jsonl"], "dataset path /nonexistent.jsonl does not exist"),
    (["--dataset=empty.jsonl"], "empty.jsonl is empty: it holds no rows", lambda cwd: (cwd / "empty.jsonl").write_text("")),
    (["--dataset=no_data"], "no_data holds no .jsonl, .json, .parquet or .txt file",
     lambda cwd: ((cwd / "no_data").mkdir(), (cwd / "no_data" / "notes.md").write_text("x"))),
    (["--dataset=corpus.jsonl", "--text_field=missing"], "has no column 'missing' (--text_field); its columns: text",
     lambda cwd: write_jsonl(cwd / "corpus.jsonl", [{"text": "a document"}])),
    (["--dataset=corpus.csv"], "unsupported file type '.csv'", lambda cwd: (cwd / "corpus.csv").write_text("text\na\n")),
]


def test_bad_local_corpora_get_one_clear_line_and_exit_code_2(tmp_path):
    check_bad_inputs([([*args, "--dry_run"], message, *setup) for args, message, *setup in BAD_LOCAL], tmp_path)
