"""SAEBench sparse probing: k-sparse linear probes on SAE latents vs on the model's residual stream.

SAEBench's own code does everything (activation collection stopped at the hook layer, mean pooling,
full-width probes, top-k feature selection by class-mean difference, logistic-regression k-sparse
probes, k = 1, 2, 5, 10, 20, 50). On the embedded default its hub datasets are replaced by the offline
sets of evals.labelled_data, each named with the SAEBench set it stands in for; at full scale
SAEBench's own dataset list and sizes are used.

Model activations depend only on (model, hook, context length, the exact texts): they are cached in
a folder keyed by exactly those, shared across runs. Everything SAE-dependent is recomputed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from evals.context import EvalContext
from evals.saebench_glue import formatted_sae, output_common, patched, save_output
from trainers import labelled_data

RESULT_FILE = "sparse_probing_eval_results.json"
K_VALUES = [1, 2, 5, 10, 20, 50]
OFFLINE_SETS = ("wiki_topic", "wiki_language", "mt_mbpp_language", "mmlu_subject", "wiki_bio_profession")
SEED = 42  # SAEBench's default


@dataclass
class Settings:
    train_per_class: int = 40  # offline sets: texts per class
    test_per_class: int = 20
    context_length: int = 64  # tokens per text (SAEBench pads to it)
    seed: int = 0  # eval reseed: another sample of the offline sets' texts, and SAEBench's random_seed 42 + seed


def run(ctx: EvalContext, settings: Settings) -> dict:
    """Run sparse probing; write sparse_probing_eval_results.json; return a summary."""
    import sae_bench.evals.sparse_probing.main as sp_main
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.evals.sparse_probing.eval_output import (
        SparseProbingEvalOutput,
        SparseProbingLlmMetrics,
        SparseProbingMetricCategories,
        SparseProbingResultDetail,
        SparseProbingSaeMetrics,
    )
    from sae_bench.sae_bench_utils.general_utils import average_results_dictionaries

    model, model_name, device = ctx.model, ctx.model_name, ctx.device
    sae_id, sae = formatted_sae(ctx.sae, device)
    base = saebench_config(settings, ctx.embedded, model_name=model_name, llm_dtype=ctx.llm_dtype,
                           llm_batch_size=ctx.model_batch_size)
    names = list(base.dataset_names)
    sets = {}
    if ctx.embedded:
        sets = {n: ctx.labelled(labelled_data.PROBING_SETS[n], settings.train_per_class, settings.test_per_class,
                              seed=settings.seed)
                for n in names}
        base.probe_train_set_size = sum(len(s.train) for s in sets.values())
        base.probe_test_set_size = sum(len(s.test) for s in sets.values())
    original_loader = dataset_utils.get_multi_label_train_test_data

    def offline_loader(dataset_name, train_set_size, test_set_size, random_seed):
        if dataset_name in sets:
            s = sets[dataset_name]
            return s.by_class(s.train), s.by_class(s.test)
        return original_loader(dataset_name, train_set_size, test_set_size, random_seed)

    per_dataset, per_class = {}, {}
    with patched(dataset_utils, "get_multi_label_train_test_data", offline_loader), \
            patched(dataset_info, "chosen_classes_per_dataset",
                    {**dataset_info.chosen_classes_per_dataset, **{n: list(s.classes) for n, s in sets.items()}}):
        for name in names:
            config = SparseProbingEvalConfig(**{**dataclasses.asdict(base), "dataset_names": [name]})
            texts = (sets[name].train, sets[name].test) if name in sets else "SAEBench's own split"
            cache = ctx.cache_path(f"sparse-probing-{name.replace('/', '_')}", sae.cfg.hook_name, config.context_length,
                                   config.probe_train_set_size, config.probe_test_set_size, texts)
            results, classes = sp_main.run_eval_single_sae(config, sae, model, device, str(cache),
                                                           save_activations=True)
            per_dataset[f"{name}_results"] = results[f"{name}_results"]
            per_class.update(classes)
    results = average_results_dictionaries(per_dataset, names)
    base.dataset_names = names
    output = SparseProbingEvalOutput(
        eval_result_metrics=SparseProbingMetricCategories(
            llm=SparseProbingLlmMetrics(**{k: v for k, v in results.items() if k.startswith("llm_")}),
            sae=SparseProbingSaeMetrics(**{k: v for k, v in results.items() if k.startswith("sae_")}),
        ),
        eval_result_details=[SparseProbingResultDetail(dataset_name=n, **r) for n, r in per_dataset.items()],
        eval_result_unstructured=per_class,
        **output_common(base, sae_id, sae),
    )
    save_output(output, ctx.out_dir / RESULT_FILE)
    return {
        "datasets": [s.describe() for s in sets.values()] or [{"name": n, "stands_in_for": None} for n in names],
        "chance_accuracy": 0.5,  # every probe is one-vs-rest on a balanced sample
        "llm_test_accuracy": results["llm_test_accuracy"],
        "sae_test_accuracy": results["sae_test_accuracy"],
        "llm_top_k_test_accuracy": {str(k): results[f"llm_top_{k}_test_accuracy"] for k in K_VALUES},
        "sae_top_k_test_accuracy": {str(k): results[f"sae_top_{k}_test_accuracy"] for k in K_VALUES},
        "per_dataset": {n.removesuffix("_results"): {"llm_test_accuracy": r["llm_test_accuracy"],
                                                     "sae_test_accuracy": r["sae_test_accuracy"],
                                                     "sae_top_1_test_accuracy": r["sae_top_1_test_accuracy"],
                                                     "sae_top_5_test_accuracy": r["sae_top_5_test_accuracy"]}
                        for n, r in per_dataset.items()},
        "context_length": base.context_length,
        "result_file": RESULT_FILE,
    }


def saebench_config(settings: Settings, embedded: bool, **fields):
    """SAEBench's config for this run: its stock dataset list, sizes and context length (the hub data it
    would fetch), or, on embedded data, the offline sets and `settings.context_length` (their sizes are
    set from the sets once built)."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    config = SparseProbingEvalConfig(k_values=K_VALUES, random_seed=SEED + settings.seed, **fields)
    if embedded:
        config.dataset_names = list(OFFLINE_SETS)
        config.context_length = settings.context_length
    return config


def data_plan(target, settings: Settings) -> dict:
    """The data this eval would request, read from the same config `run` uses (nothing is fetched)."""
    embedded = target.eval_data == "embedded"
    config = saebench_config(settings, embedded)
    sizes = ({"train_per_class": settings.train_per_class, "test_per_class": settings.test_per_class} if embedded
             else {"probe_train_set_size": config.probe_train_set_size, "probe_test_set_size": config.probe_test_set_size})
    return {"source": "embedded (evals.labelled_data)" if embedded else "SAEBench stock (hub)",
            "datasets": list(config.dataset_names), **sizes, "context_length": config.context_length}


def headline(r: dict) -> str:
    return (f"LLM acc {r['llm_test_accuracy']:.3g}, SAE acc {r['sae_test_accuracy']:.3g}, SAE top-1 "
            f"{r['sae_top_k_test_accuracy']['1']:.3g} (LLM top-1 {r['llm_top_k_test_accuracy']['1']:.3g}), "
            f"SAE top-5 {r['sae_top_k_test_accuracy']['5']:.3g}")
