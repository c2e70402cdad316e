from collections import Counter

import pytest

from trainers import labelled_data as L
from trainers.data import DataError


def test_balanced_split_equal_classes_and_no_group_on_both_sides():
    # 3 classes; class "c" is small, so every class is cut to its size. Groups g0..g59 shared by a/b.
    examples = [(f"a{i}", "a", f"g{i}") for i in range(60)] + [(f"b{i}", "b", f"g{i}") for i in range(60)]
    examples += [(f"c{i}", "c", f"c{i}") for i in range(24)] + [("a0", "a", "g0")]  # a duplicate text
    train, test = L.balanced_split(examples, ("a", "b", "c"), n_train=100, n_test=100, test_percent=25)
    tr, te = Counter(c for _, c in train), Counter(c for _, c in test)
    assert len(set(tr.values())) == 1 and len(set(te.values())) == 1, (tr, te)
    assert set(tr) == set(te) == {"a", "b", "c"}
    assert not {t for t, _ in train} & {t for t, _ in test}
    group = {t: g for t, _, g in examples}
    assert not {group[t] for t, _ in train} & {group[t] for t, _ in test}
    assert len({t for t, _ in train}) == len(train)  # duplicate text used once
    # fixed seed: same result again
    assert (train, test) == L.balanced_split(examples, ("a", "b", "c"), n_train=100, n_test=100, test_percent=25)


def test_balanced_split_refuses_a_class_with_no_examples():
    with pytest.raises(DataError):
        L.balanced_split([("x", "a", "x"), ("y", "a", "y")], ("a", "b"), 10, 10)


PCT = 30  # the default --held_out_percent


@pytest.mark.parametrize("name", sorted(L.PROBING_SETS))
def test_probing_sets_are_balanced_disjoint_and_labelled(name):
    s = L.PROBING_SETS[name](held_out_percent=PCT)
    for part in (s.train, s.test):
        counts = Counter(c for _, c in part)
        assert set(counts) == set(s.classes) and len(set(counts.values())) == 1, counts
        assert all(text.strip() for text, _ in part)
    assert not {t for t, _ in s.train} & {t for t, _ in s.test}
    assert len(s.test) >= 10 * len(s.classes) and len(s.train) >= 25 * len(s.classes)


def test_labels_are_right_on_known_examples():
    source_topic = {d.text: d.topic for d in L.all_wiki_documents("en")}
    lake = next(t for t in source_topic if t.startswith("Lake Victoria is"))
    assert source_topic[lake] == "Geography"
    s = L.topic_set(held_out_percent=PCT)
    assert all(source_topic[t] == c for t, c in s.train + s.test)
    code = L.code_set()
    for text, lang in code.train[:50]:
        if lang == "python":
            assert "def " in text
        if lang == "php":
            assert "<?php" in text or "function" in text
    lang = L.language_set(held_out_percent=PCT)
    for text, c in lang.test[:60]:
        words = set(text.lower().split())
        if c == "fr":
            assert words & {"le", "la", "les", "est", "des", "du"}, text[:80]
        if c == "en":
            assert words & {"the", "is", "of", "and", "was"}, text[:80]
    subj = dict(L.mmlu_subject_set().test)
    assert all(c in L.MMLU_SUBJECTS for c in subj.values())


def test_profession_and_gender_from_biography_text():
    assert L.profession_of("Ludwig van Beethoven was a German composer and pianist. He wrote music.") == "performer"
    assert L.profession_of("Goethe was a German poet, playwright and novelist. More text.") == "writer"
    assert L.profession_of("Churchill was a British statesman and writer. He led.") is None  # two classes
    assert L.profession_of("Lake Victoria is a lake. It is big.") is None
    assert L.gender_of("She was born in Paris. Her work is known.") == "female"
    assert L.gender_of("He was born in Paris. His work is known.") == "male"
    assert L.gender_of("He met her in Paris. His work is known.") is None


def test_topic_language_set_has_all_four_cells_balanced():
    s = L.topic_language_set(held_out_percent=PCT)
    cells = Counter(zip((c for _, c in s.train), s.extra_train["language"]))
    assert set(cells) == {(t, lang) for t in ("People", "Geography") for lang in ("en", "fr")}
    assert len(set(cells.values())) == 1
    assert len(s.extra_test["language"]) == len(s.test)


def test_unlearning_corpora_are_disjoint_domains_and_splits():
    forget_train = L.domain_texts("forget", held_out_percent=10, part="train")
    forget_held = L.domain_texts("forget", held_out_percent=10)
    retain_held = L.domain_texts("retain", held_out_percent=10)
    assert len(forget_train) > 500 and len(forget_held) > 50 and len(retain_held) > 200
    assert not set(forget_train) & set(forget_held)
    assert not set(forget_held) & set(retain_held)
    assert len(L.mmlu("virology")) == 189 and {"question", "choices", "answer"} <= set(L.mmlu("virology")[0])


def test_translation_pairs_are_the_same_article_in_english_and_french_from_the_training_split():
    from trainers.data import is_held_out

    en, fr = L.translation_pairs(40, held_out_percent=10)
    assert len(en) == len(fr) == 40 and len(set(en)) == 40
    titles_en = {d.text: d.title for d in L.all_wiki_documents("en")}
    titles_fr = {d.text: d.title for d in L.all_wiki_documents("fr")}
    assert all(titles_en[e] == titles_fr[f] for e, f in zip(en, fr))
    assert not any(is_held_out(e, 10) for e in en)


def test_held_out_percent_is_honoured_by_the_unlearning_corpora_and_translation_pairs():
    from trainers.data import is_held_out

    held = L.domain_texts("forget", held_out_percent=30)
    assert len(held) > 2 * len(L.domain_texts("forget", held_out_percent=10))
    assert all(is_held_out(t, 30) for t in held)
    en, _ = L.translation_pairs(40, held_out_percent=30)
    assert not any(is_held_out(e, 30) for e in en)


def _training_side(held_out_percent: int) -> set[str]:
    return {d.text for lang in L.LANGUAGES for d in L.wiki_documents(lang, held_out_percent, "train")}


@pytest.mark.parametrize("pct", [20, 30])
def test_no_eval_text_is_a_training_document(pct):
    """Every labelled text an eval can get (through EvalContext, the only way evals reach wiki text) is
    on the held-out side of the SAE's document split; the variants' texts are on the training side."""
    from evals.context import EvalContext

    ctx = EvalContext(sae=None, model=None, model_name="m", embedded=True, device="cpu", llm_dtype="float32",
                      out_dir=None, cache_dir=None, dataset="wiki-summaries-en", held_out_percent=pct,
                      context_size=128, model_batch_size=8, seed=0)
    for build in (*L.PROBING_SETS.values(), L.topic_language_set):
        ctx.labelled(build, 40, 20)
    for domain in ("forget", "retain"):
        ctx.domain_texts(domain)
    training = _training_side(pct)
    assert len(ctx.texts_read) > 1000
    assert not ctx.texts_read & training
    held_out_english = {d.text for d in L.wiki_documents("en", pct, "held_out")}
    assert len(ctx.texts_read & held_out_english) > 500  # the wiki sets really are read from the held-out side
    from trainers.adversarial import spurious_labelled_texts

    adversary, _ = spurious_labelled_texts(20, pct)
    en, fr = L.translation_pairs(40, held_out_percent=pct)
    assert set(adversary + en + fr) <= training


def test_probe_test_split_is_independent_of_the_document_split():
    """Unsalted, every held-out document (hash below 30) would also fall below the probe's 25% test
    cut: 25 of every 30 held-out documents would be test examples instead of one in four."""
    s = L.topic_set(1000, 1000, held_out_percent=PCT)
    assert 0.15 < len(s.test) / (len(s.train) + len(s.test)) < 0.35


@pytest.mark.parametrize("name", list(L.PROBING_SETS))
def test_an_eval_seed_draws_another_sample_of_the_same_pools_and_seed_42_is_the_default(name):
    build = L.PROBING_SETS[name]
    default, same, other = build(20, 10, held_out_percent=20), build(20, 10, held_out_percent=20, seed=L.SEED), \
        build(20, 10, held_out_percent=20, seed=L.SEED + 1)
    assert default.train == same.train and default.test == same.test
    assert set(default.train) != set(other.train)  # another sample ...
    assert Counter(c for _, c in other.train) == Counter(c for _, c in default.train)  # ... as balanced
    train_side = {t for t, _ in default.train} | {t for t, _ in other.train}
    assert not train_side & ({t for t, _ in default.test} | {t for t, _ in other.test})  # test texts stay test texts
