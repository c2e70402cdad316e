"""SAEBench SCR (spurious correlation removal) and TPP (targeted probe perturbation).

SAEBench's code does the work: it trains a probe on a deliberately biased set (SCR) or one-vs-rest
probes (TPP) on the model's activations, ranks SAE latents by their effect on each probe, zero-ablates
the top N and measures how the probes' accuracies move.

Offline data (evals.labelled_data): bias_in_bios's profession x gender is not possible here (only 132
of 1,828 English biographies are about women, too few per profession), so SCR uses topic x language:
Wikipedia summaries about People or Geography, in English or French. The biased probe is trained on
People-in-English vs Geography-in-French, so it can pick up language instead of topic; SCR measures
how much ablating the SAE latents of the spurious attribute recovers the intended one. TPP uses the
English topic set. At full scale SAEBench's own datasets (bias_in_bios, amazon reviews) are used.

Probes and model activations depend only on (model, hook, context length, texts); they are cached in a
folder keyed by exactly those and shared across runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from evals.context import EvalContext
from evals.saebench_glue import formatted_sae, grad_mode_restored, output_common, patched, save_output
from trainers import labelled_data

N_VALUES = [2, 5, 10, 20, 50]
SCR_SET = "wiki_topic_x_language"
SCR_TOPICS = ("People", "Geography")
SCR_LANGUAGES = ("en", "fr")
TPP_SET = "wiki_topic"
SEED = 42  # SAEBench's default


@dataclass
class Settings:
    texts_per_cell: int = 150  # SCR: texts per (topic, language) cell; TPP: per topic
    context_length: int = 64  # tokens per text (SAEBench pads to it)
    seed: int = 0  # eval reseed: another sample of the offline set's texts, and SAEBench's random_seed 42 + seed


def _frame(rows, languages):
    import pandas as pd

    return pd.DataFrame({"text": [t for t, _ in rows], "topic": [c for _, c in rows], "language": languages})


def run_scr_or_tpp(kind: str, ctx: EvalContext, settings: Settings) -> dict:
    """kind "scr" or "tpp". Writes {kind}_eval_results.json; returns a summary."""
    import sae_bench.evals.scr_and_tpp.dataset_creation as dataset_creation
    import sae_bench.evals.scr_and_tpp.main as scr_main
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    from sae_bench.evals.scr_and_tpp import eval_output as eo

    if kind not in ("scr", "tpp"):
        raise ValueError(kind)
    model, model_name, device = ctx.model, ctx.model_name, ctx.device
    n_per_cell, context_length = settings.texts_per_cell, settings.context_length
    sae_id, sae = formatted_sae(ctx.sae, device)
    config = saebench_config(kind, settings, ctx.embedded, model_name=model_name, llm_dtype=ctx.llm_dtype,
                             llm_batch_size=ctx.model_batch_size)
    data_description = {"stands_in_for": None}
    metadata, column2, classes = {}, {}, {}
    original = dataset_creation.get_train_test_data
    if ctx.embedded:
        if kind == "scr":
            s = ctx.labelled(labelled_data.topic_language_set, n_per_cell, n_per_cell // 2, SCR_TOPICS, SCR_LANGUAGES,
                             seed=settings.seed)
            train = _frame(s.train, s.extra_train["language"])
            test = _frame(s.test, s.extra_test["language"])
            metadata[SCR_SET] = {"text_column_name": "text", "column1_name": "topic", "column2_name": "language",
                                 "column1_mapping": {t: t for t in SCR_TOPICS},
                                 "column2_mapping": {lang: lang for lang in SCR_LANGUAGES}}
            column2[SCR_SET] = SCR_LANGUAGES
            texts = s.train, s.test
            data_description = {**s.describe(), "attribute_1": "topic", "attribute_1_values": list(SCR_TOPICS),
                                "attribute_2_spurious": "language", "attribute_2_values": list(SCR_LANGUAGES),
                                "biased_probe": f"{SCR_TOPICS[0]}+{SCR_LANGUAGES[0]} vs {SCR_TOPICS[1]}+{SCR_LANGUAGES[1]}"}
        else:
            s = ctx.labelled(labelled_data.topic_set, n_per_cell, n_per_cell // 2, seed=settings.seed)
            classes[TPP_SET] = list(s.classes)
            column2[TPP_SET] = ("unused", "unused")  # SAEBench reads this entry for TPP too
            config.train_set_size, config.test_set_size = len(s.train), len(s.test)
            texts = s.train, s.test
            data_description = s.describe()

        def offline_get_train_test_data(dataset_name, spurious_corr, train_set_size, test_set_size, random_seed,
                                        column1_vals=None, column2_vals=None):
            if dataset_name == SCR_SET and spurious_corr:
                return tuple(dataset_creation.get_spurious_corr_data(df, column1_vals, column2_vals, dataset_name,
                                                                     size // 4, random_seed)
                             for df, size in ((train, train_set_size), (test, test_set_size)))
            if dataset_name == TPP_SET and not spurious_corr:
                return s.by_class(s.train), s.by_class(s.test)
            return original(dataset_name, spurious_corr, train_set_size, test_set_size, random_seed,
                            column1_vals, column2_vals)

        folder = ctx.cache_path(kind, sae.cfg.hook_name, context_length, config.train_set_size, texts, config.random_seed)
    else:
        offline_get_train_test_data = original  # SAEBench's stock hub data and sizes
        folder = ctx.cache_path(f"{kind}-hub", sae.cfg.hook_name, config.context_length, config.train_set_size,
                                config.dataset_names, config.random_seed)

    with patched(dataset_creation, "get_train_test_data", offline_get_train_test_data), \
            patched(dataset_info, "dataset_metadata", {**dataset_info.dataset_metadata, **metadata}), \
            patched(dataset_info, "chosen_classes_per_dataset", {**dataset_info.chosen_classes_per_dataset, **classes}), \
            patched(scr_main, "COLUMN2_VALS_LOOKUP", {**scr_main.COLUMN2_VALS_LOOKUP, **column2}), \
            grad_mode_restored():
        results, per_class = scr_main.run_eval_single_sae(config, sae, model, device, str(folder),
                                                          save_activations=True)
    flat = {k: v for k, v in results.items() if not isinstance(v, dict)}
    details = {k: v for k, v in results.items() if isinstance(v, dict)}
    if kind == "scr":
        output = eo.ScrEvalOutput(
            eval_result_metrics=eo.ScrMetricCategories(scr_metrics=eo.ScrMetrics(**flat)),
            eval_result_details=[eo.ScrResultDetail(dataset_name=k, **v) for k, v in details.items()],
            **output_common(config, sae_id, sae))
        headline = {n: flat.get(f"scr_metric_threshold_{n}") for n in N_VALUES}
    else:
        output = eo.TppEvalOutput(
            eval_result_metrics=eo.TppMetricCategories(tpp_metrics=eo.TppMetrics(**flat)),
            eval_result_details=[eo.TppResultDetail(dataset_name=k, **v) for k, v in details.items()],
            eval_result_unstructured=per_class,
            **output_common(config, sae_id, sae))
        headline = {n: flat.get(f"tpp_threshold_{n}_total_metric") for n in N_VALUES}
    result_file = f"{kind}_eval_results.json"
    save_output(output, ctx.out_dir / result_file)
    return {"metric_by_n_latents": headline, "metrics": flat, "data": data_description,
            "datasets": config.dataset_names, "context_length": config.context_length, "result_file": result_file}


def saebench_config(kind: str, settings: Settings, embedded: bool, **fields):
    """SAEBench's config for SCR or TPP: its stock datasets, sizes and context length (the hub data it
    would fetch), or the offline set's name, context length and, for SCR, the sizes its quadrants allow
    (TPP's are set from the set once built)."""
    from sae_bench.evals.scr_and_tpp.eval_config import ScrAndTppEvalConfig

    config = ScrAndTppEvalConfig(perform_scr=kind == "scr", n_values=N_VALUES, random_seed=SEED + settings.seed, **fields)
    if embedded:
        config.context_length = settings.context_length
        config.dataset_names = [SCR_SET if kind == "scr" else TPP_SET]
        if kind == "scr":
            # SAEBench puts train_set_size // 4 texts in each quadrant and needs strictly more than twice
            # that in the two aligned quadrants: with n per cell, train_set_size < 2n.
            n = settings.texts_per_cell
            config.train_set_size, config.test_set_size = 2 * (n // 2 - 1), 2 * (n // 4 - 1)
            config.column1_vals_lookup = {SCR_SET: [SCR_TOPICS]}
    return config


def data_plan(kind: str, target, settings: Settings) -> dict:
    """The data SCR or TPP would request, from the same config `run_scr_or_tpp` uses (nothing is fetched)."""
    embedded = target.eval_data == "embedded"
    config = saebench_config(kind, settings, embedded)
    sizes = ({"texts_per_cell": settings.texts_per_cell} if embedded and kind == "tpp" else
             {"train_set_size": config.train_set_size, "test_set_size": config.test_set_size})
    return {"source": "embedded (evals.labelled_data)" if embedded else "SAEBench stock (hub)",
            "datasets": list(config.dataset_names), **sizes, "context_length": config.context_length}


def headline(r: dict) -> str:
    return ", ".join(f"top-{n} {'n/a' if v is None else f'{v:.3g}'}" for n, v in r["metric_by_n_latents"].items())
