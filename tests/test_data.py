"""Text as token sequences: documents shuffled by seed before packing, train and held-out apart; and
the evals' model-only caches named by everything they depend on."""

from pathlib import Path

import pytest

from evals.context import EvalContext
from trainers.data import build_sequences, is_held_out
from trainers.model import embedded_model_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


def titles(seqs):
    used = {int(i) for i in seqs.doc_index.unique() if i >= 0}
    return [seqs.documents[i].title for i in sorted(used)]


def test_training_documents_are_shuffled_by_seed_so_a_short_run_spans_the_corpus(tokenizer):
    a = build_sequences("wiki-summaries-en", tokenizer, "train", 128, max_tokens=60 * 128, shuffle_seed=0)
    b = build_sequences("wiki-summaries-en", tokenizer, "train", 128, max_tokens=60 * 128, shuffle_seed=1)
    again = build_sequences("wiki-summaries-en", tokenizer, "train", 128, max_tokens=60 * 128, shuffle_seed=0)
    assert a.tokens.equal(again.tokens) and not a.tokens.equal(b.tokens)
    # the corpus is stored sorted by title: read in that order, 60 sequences would hold titles "0".."A" only
    first_letters = {t[0].upper() for t in titles(a)}
    assert len(first_letters) >= 12, sorted(first_letters)
    assert not any(is_held_out(d.text, 10) for d in a.documents)


def test_held_out_sequences_hold_only_held_out_documents(tokenizer):
    held = build_sequences("wiki-summaries-en", tokenizer, "held_out", 128, max_tokens=40 * 128, held_out_percent=20)
    assert len(held) == 40 and all(is_held_out(d.text, 20) for d in held.documents)


def context(**changes):
    base = dict(sae=None, model=None, model_name="google/gemma-3-270m", embedded=True, device="cpu",
                llm_dtype="float32", out_dir=Path("run"), cache_dir=Path("cache"), dataset="wiki-summaries-en",
                held_out_percent=10, context_size=128, model_batch_size=16, seed=0)
    return EvalContext(**{**base, **changes})


def test_a_model_only_cache_is_named_by_model_dtype_device_kind_and_what_it_read():
    path = context().cache_path("probe", "blocks.6.hook_resid_post", 64, ["a text"])
    assert path == context(device="cpu", seed=3).cache_path("probe", "blocks.6.hook_resid_post", 64, ["a text"])
    assert path.parent == Path("cache") and path.name.startswith("probe-")
    others = [context(model_name="other").cache_path("probe", "blocks.6.hook_resid_post", 64, ["a text"]),
              context(llm_dtype="bfloat16").cache_path("probe", "blocks.6.hook_resid_post", 64, ["a text"]),
              context(device="cuda:0").cache_path("probe", "blocks.6.hook_resid_post", 64, ["a text"]),
              context().cache_path("probe", "blocks.7.hook_resid_post", 64, ["a text"]),
              context().cache_path("probe", "blocks.6.hook_resid_post", 32, ["a text"]),
              context().cache_path("probe", "blocks.6.hook_resid_post", 64, ["another text"])]
    assert len({path, *others}) == 7
    assert context(device="cuda:0").cache_path("p") == context(device="cuda:1").cache_path("p")  # the kind, not the index
