"""The seeds' own diagnostics, for every run (baseline included): how the SAE's features organise
labelled text, how entangled they are, how they split the forget/retain domains, how stable they
are over time. None of these is in SAEBench; all are computed here on held-out text.

- clustering (seed 000): per labelled set (the sparse-probing sets, plus topic x language), the
  document vectors are the SAE features mean-pooled over each text's first `context_length` tokens,
  L2-normalized. NMI between the class labels and a k-means clustering (k = number of classes), and
  the silhouette score of the documents grouped by class (euclidean on unit vectors, i.e. cosine
  geometry). The same two numbers on the raw model activations are given as the reference.
- MIG (seed 001): per label factor (each set's label, plus language on the topic x language set),
  mutual information between the factor and every feature (document vectors, 20 equal-width bins
  per feature), gap between the two most informative features / entropy of the factor; beside it
  its null value, the same computation with the labels permuted (mean of 5 permutations).
- FactorVAE score (seed 001; Kim & Mnih 2018), on the one set with two factors (topic x language):
  each vote fixes one factor at one value, draws `FVAE_SUBSET` documents with that value, and votes
  for (the feature whose variance over them, divided by its variance over all documents, is
  smallest; the fixed factor); the score is the accuracy of the majority-vote classifier fitted on
  one set of votes and tested on another. Sparse codes make the plain argmin degenerate (a feature
  that rarely fires has zero variance in almost every subset, whatever is fixed: every vote lands on
  it and the score sits at chance), so, like the paper's pruning of collapsed dimensions, only
  features that fire on at least `FVAE_MIN_ACTIVE` of the documents take part. Chance is 1 / number of
  factors; the null (labels permuted) is given beside it.
- correlation (seed 001): Pearson r between every pair of features that fire on >= `min_fires`
  held-out tokens: mean |r| and fraction of pairs with |r| > 0.5. Decoder: |cos| between decoder
  rows: mean over pairs, mean over features of the largest one, fraction above 0.5.
- domains (seed 002): firing frequency of each feature on held-out forget-domain text (biology and
  health) and retain-domain text (the rest); a feature is forget-specific (retain-specific) when its
  forget share s of firing has s - (1 - s) > alpha (resp. < -alpha): the orthogonal variant's rule.
  Share of domain-specific features among active ones, and |cos| / cos^2 between the decoder rows of
  the two groups.
- temporal (seed 004): on held-out training-corpus sequences, per-feature Pearson auto-correlation
  of activations at lags 1, 2, 4, 8 (mean over features active in the sample), and the mutual
  information (bits) between a feature firing at t and at t+1.

Model activations depend only on the model (and its dtype and device kind), hook and texts: they are
cached under a name made of exactly those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, silhouette_score
from tqdm.auto import tqdm

from evals.context import EvalContext
from evals.saebench_glue import write_json_atomic
from trainers import labelled_data
from trainers.metrics import cosines, domain_groups, masked_mean, normalize
from trainers.model import text_activations, token_activations

LAGS = (1, 2, 4, 8)
FVAE_SUBSET = 20  # documents per vote
FVAE_VOTES = 400  # votes to fit the classifier, and as many again to test it
FVAE_MIN_ACTIVE = 0.1  # features firing on fewer documents than this share are left out
MIG_BINS = 20
RESULT_FILE = "diagnostics.json"


@dataclass
class Settings:
    docs_per_class: int = 30  # labelled texts per class (NMI, silhouette, MIG)
    sequences: int = 32  # held-out sequences (feature correlation, temporal consistency)
    domain_texts: int = 64  # held-out forget / retain texts each (domain separation)
    alpha: float = 0.3  # relative threshold for domain-specific features
    context_length: int = 64  # tokens per labelled text
    seed: int = 0  # eval reseed: other samples of the labelled sets, the next block of held-out sequences and
    #                of domain texts (where the corpus has them), and the clustering / null seeds


# ---- metrics on plain tensors (unit-tested on hand-made inputs) -----------------------------

def clustering_scores(doc_vectors: torch.Tensor, labels: list[str], seed: int = 0) -> dict:
    x = normalize(doc_vectors.double()).numpy()
    k = len(set(labels))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
            "silhouette": float(silhouette_score(x, labels)) if len(set(labels)) > 1 else None}


def mutual_information_bits(codes: torch.Tensor, n_codes: int, labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """MI (bits) between each column of `codes` [n, d] (ints < n_codes) and `labels` [n] (ints < n_labels)."""
    n, d = codes.shape
    joint = torch.zeros(d, n_codes * n_labels, dtype=torch.float64)
    joint.scatter_add_(1, (codes * n_labels + labels[:, None]).T, torch.ones(d, n, dtype=torch.float64))
    p = (joint / n).reshape(d, n_codes, n_labels)
    p_code, p_label = p.sum(2, keepdim=True), p.sum(1, keepdim=True)
    ratio = torch.where(p > 0, p / (p_code * p_label).clamp_min(1e-300), torch.ones_like(p))
    return (p * torch.log2(ratio)).sum((1, 2))


def binary_mi_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MI (bits) between boolean columns a[:, j] and b[:, j], for every j: [d]."""
    a, b = a.double(), b.double()
    n = len(a)
    mi = torch.zeros(a.shape[1], dtype=torch.float64)
    for pa, pb in ((a, b), (a, 1 - b), (1 - a, b), (1 - a, 1 - b)):
        p = (pa * pb).sum(0) / n
        ratio = p / (pa.mean(0) * pb.mean(0)).clamp_min(1e-300)
        mi += torch.where(p > 0, p * torch.log2(ratio.clamp_min(1e-300)), torch.zeros_like(p))
    return mi


def entropy_bits(labels: torch.Tensor) -> float:
    p = torch.bincount(labels).double() / len(labels)
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())


def mig(latents: torch.Tensor, labels: list[str], bins: int = MIG_BINS) -> dict:
    """Mutual information gap of one factor over latents [n, d] (constant latents carry 0 MI)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    lo, hi = latents.min(0).values, latents.max(0).values
    codes = ((latents - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp(0, bins - 1)
    mi = mutual_information_bits(codes, bins, y, len(classes))
    top = mi.topk(2).values
    h = entropy_bits(y)
    return {"mig": float((top[0] - top[1]) / h), "top_mi_bits": float(top[0]), "entropy_bits": h,
            "top_feature": int(mi.argmax())}


def mig_null(latents: torch.Tensor, labels: list[str], n_permutations: int = 5, seed: int = 0,
             bins: int = MIG_BINS) -> float:
    """MIG of the same latents against randomly permuted labels, averaged: what MIG reads when the
    latents carry no information about the factor (its small-sample bias). A MIG is a finding only
    well above this."""
    g = torch.Generator().manual_seed(seed)
    return float(sum(mig(latents, [labels[i] for i in torch.randperm(len(labels), generator=g).tolist()], bins)["mig"]
                     for _ in range(n_permutations)) / n_permutations)


def factorvae_score(latents: torch.Tensor, factors: dict[str, list[str]], seed: int = 0,
                    subset: int = FVAE_SUBSET, votes: int = FVAE_VOTES, min_active: float = FVAE_MIN_ACTIVE) -> dict:
    """FactorVAE score of latents [n, d] (document vectors) for two or more factors (see module doc)."""
    active = (latents > 0).double().mean(0) >= min_active if min_active > 0 else torch.ones(latents.shape[1], dtype=torch.bool)
    z = latents[:, active].double()
    scale = z.std(0)
    keep = scale > 1e-12
    z = z[:, keep] / scale[keep]
    names = list(factors)
    out = {"n_features_used": int(z.shape[1]), "chance": 1 / len(names)}
    if z.shape[1] == 0:
        return {**out, "score": None}
    rng = np.random.default_rng(seed)
    columns = {k: np.array(v) for k, v in factors.items()}

    def vote_table():
        table = np.zeros((z.shape[1], len(names)))
        for _ in range(votes):
            k = int(rng.integers(len(names)))
            values = np.unique(columns[names[k]])
            rows = np.flatnonzero(columns[names[k]] == values[rng.integers(len(values))])
            pick = rng.choice(rows, size=min(subset, len(rows)), replace=False)
            table[int(z[pick].var(0, unbiased=False).argmin()), k] += 1
        return table

    fit, test = vote_table(), vote_table()
    guess = fit.argmax(1)  # the factor each feature votes for (ties: the first)
    return {**out, "score": float(test[np.arange(len(guess)), guess].sum() / test.sum())}


def factorvae_null(latents: torch.Tensor, factors: dict[str, list[str]], n_permutations: int = 5, seed: int = 0) -> float:
    """FactorVAE score with the documents' label rows permuted (all factors together), averaged."""
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(factors.values())))
    scores = []
    for i in range(n_permutations):
        perm = torch.randperm(n, generator=g).tolist()
        scores.append(factorvae_score(latents, {k: [v[j] for j in perm] for k, v in factors.items()}, seed=i)["score"])
    return None if None in scores else float(np.mean(scores))


def correlation_stats(feats: torch.Tensor, min_fires: int = 5) -> dict:
    """Pairwise Pearson r between features [n, d] that fire on >= min_fires rows."""
    active = (feats > 0).sum(0) >= min_fires
    x = feats[:, active].double()
    if x.shape[1] < 2:
        return {"n_features": int(x.shape[1]), "mean_abs_r": None, "frac_abs_r_above_0.5": None}
    z = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-12)
    r = (z.T @ z / len(z)).abs()
    off = ~torch.eye(len(r), dtype=torch.bool)
    return {"n_features": int(x.shape[1]), "mean_abs_r": float(r[off].mean()),
            "frac_abs_r_above_0.5": float((r[off] > 0.5).double().mean())}


def decoder_cosine_stats(w_dec: torch.Tensor) -> dict:
    w = normalize(w_dec.detach().double())
    c = (w @ w.T).abs()
    c.fill_diagonal_(0)
    n = len(c)
    return {"mean_abs_cos": float(c.sum() / (n * (n - 1))), "mean_max_abs_cos": float(c.max(1).values.mean()),
            "frac_abs_cos_above_0.5": float(((c > 0.5).sum()) / (n * (n - 1)))}


def domain_separation(forget_feats: torch.Tensor, retain_feats: torch.Tensor, w_dec: torch.Tensor, alpha: float,
                      min_fires: int = 5) -> dict:
    """forget_feats/retain_feats: token-level features [n, d] of held-out text of each domain."""
    freq_f, freq_r = (forget_feats > 0).double().mean(0), (retain_feats > 0).double().mean(0)
    active = ((forget_feats > 0).sum(0) + (retain_feats > 0).sum(0)) >= min_fires
    forget, retain = domain_groups(freq_f, freq_r, alpha)
    forget, retain = forget & active, retain & active
    n_active = int(active.sum())
    out = {"alpha": alpha, "n_active": n_active, "n_forget_specific": int(forget.sum()),
           "n_retain_specific": int(retain.sum()),
           "domain_specific_share": (int(forget.sum()) + int(retain.sum())) / n_active if n_active else None,
           "cross_group_mean_abs_cos": None, "cross_group_mean_cos2": None}
    if forget.any() and retain.any():
        w = w_dec.detach().double()
        c = cosines(w[forget], w[retain])
        out.update(cross_group_mean_abs_cos=float(c.abs().mean()), cross_group_mean_cos2=float(c.pow(2).mean()))
    return out


def temporal_stats(feats: torch.Tensor, lags=LAGS, min_fires: int = 5) -> dict:
    """feats [n_seq, T, d]: per-feature auto-correlation at each lag (mean over features active in
    the sample) and MI (bits) between firing at t and t+1."""
    active = (feats > 0).sum((0, 1)) >= min_fires
    x = feats[..., active].double()
    out = {"n_features": int(active.sum()), "autocorrelation": {}}
    for lag in lags:
        a, b = x[:, :-lag].reshape(-1, x.shape[-1]), x[:, lag:].reshape(-1, x.shape[-1])
        a, b = a - a.mean(0), b - b.mean(0)
        denom = (a.pow(2).sum(0) * b.pow(2).sum(0)).sqrt()
        ok = denom > 0
        out["autocorrelation"][str(lag)] = float(((a * b).sum(0)[ok] / denom[ok]).mean()) if ok.any() else None
    fire = x > 0
    now, nxt = fire[:, :-1].reshape(-1, fire.shape[-1]), fire[:, 1:].reshape(-1, fire.shape[-1])
    mi = binary_mi_bits(now, nxt)
    out["firing_mi_bits_t_to_t1"] = float(mi.mean()) if len(mi) else None
    return out


# ---- data and model side ----------------------------------------------------------------------

def labelled_sets(ctx: EvalContext, docs_per_class: int, seed: int = 0) -> dict[str, dict]:
    """{set name: {"texts": [...], "factors": {factor: labels}}}: train and test texts together
    (no probe is fitted here)."""
    half = max(2, docs_per_class // 2)
    out = {}
    for name, build in labelled_data.PROBING_SETS.items():
        s = ctx.labelled(build, n_train=half, n_test=half, seed=seed)
        rows = s.train + s.test
        out[name] = {"texts": [t for t, _ in rows], "factors": {s.label: [y for _, y in rows]}}
    s = ctx.labelled(labelled_data.topic_language_set, n_train=half, n_test=half, seed=seed)
    rows = s.train + s.test
    out[s.name] = {"texts": [t for t, _ in rows], "factors": {
        s.label: [y for _, y in rows], "language": s.extra_train["language"] + s.extra_test["language"]}}
    return out


def domain_block(texts: list[str], n: int, block: int) -> list[str]:
    """The `block`-th run of n texts (block 0: the first n), or the last n where the corpus is too short for it."""
    start = min(n * block, max(0, len(texts) - n))
    return texts[start:start + n]


def model_activations(model, hook: str, sets: dict, domains: dict[str, list[str]], sequences: torch.Tensor,
                      context_length: int, batch_size: int) -> dict:
    out = {"sets": {}, "domains": {}}
    jobs = [("sets", n, s["texts"]) for n, s in sets.items()] + [("domains", n, t) for n, t in domains.items()]
    for kind, name, texts in tqdm(jobs, desc="diagnostics: model activations", unit="set"):
        out[kind][name] = text_activations(model, hook, texts, context_length, batch_size)
    out["sequences"] = token_activations(model, hook, sequences, batch_size)
    return out


@torch.no_grad()
def encode(sae, acts: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    flat = acts.reshape(-1, acts.shape[-1])
    device = sae.W_dec.device
    out = torch.cat([sae.encode(c.to(device, sae.W_dec.dtype)).float().cpu() for c in flat.split(batch)])
    return out.reshape(*acts.shape[:-1], -1)


def data_plan(target, settings: Settings) -> dict:
    """The seeds' own measures read the packaged labelled sets (on any model: no SAEBench counterpart)
    and held-out documents of the training text."""
    return {"source": "embedded (evals.labelled_data) + held-out documents of the training text",
            "datasets": list(labelled_data.PROBING_SETS) + ["wiki_topic_x_language", target.dataset],
            "docs_per_class": settings.docs_per_class, "sequences": settings.sequences,
            "domain_texts": settings.domain_texts, "context_length": settings.context_length}


def run(ctx: EvalContext, settings: Settings) -> dict:
    """Writes diagnostics.json (the breakdown) and returns the headline numbers."""
    sae, context_length, alpha = ctx.sae, settings.context_length, settings.alpha
    hook = sae.cfg.metadata.hook_name
    seed, n_texts = settings.seed, settings.domain_texts
    held_out_tokens = ctx.held_out_block(settings.sequences, seed)
    sets = labelled_sets(ctx, settings.docs_per_class, seed)
    domains = {d: domain_block(ctx.domain_texts(d), n_texts, seed) for d in ("forget", "retain")}
    acts = ctx.model_only("diagnostics", lambda: model_activations(ctx.model, hook, sets, domains, held_out_tokens,
                                                                    context_length, ctx.model_batch_size),
                          hook, context_length, {n: s["texts"] for n, s in sets.items()}, domains, held_out_tokens.tolist())

    per_set, per_factor, factorvae = {}, {}, {}
    for name, s in tqdm(sets.items(), desc="diagnostics: labelled sets", unit="set"):
        a, mask = acts["sets"][name]
        docs = masked_mean(encode(sae, a), mask)
        label = next(iter(s["factors"].values()))
        per_set[name] = {**clustering_scores(docs, label, seed),
                         **{f"llm_{k}": v for k, v in clustering_scores(masked_mean(a, mask), label, seed).items()},
                         "n_docs": len(label), "n_classes": len(set(label))}
        for factor, labels in s["factors"].items():
            per_factor[f"{name}:{factor}"] = {**mig(docs, labels), "mig_null": mig_null(docs, labels, seed=seed)}
        if len(s["factors"]) >= 2:
            factorvae[name] = {**factorvae_score(docs, s["factors"], seed=seed),
                               "null": factorvae_null(docs, s["factors"], seed=seed),
                               "llm": factorvae_score(masked_mean(a, mask), s["factors"], seed=seed, min_active=0)["score"]}
    seq_feats = encode(sae, acts["sequences"])
    (f_acts, f_mask), (r_acts, r_mask) = acts["domains"]["forget"], acts["domains"]["retain"]
    result = {
        "clustering": per_set,
        "mig": per_factor,
        "factorvae": factorvae,
        "feature_correlation": correlation_stats(seq_feats.reshape(-1, seq_feats.shape[-1])),
        "decoder_cosine": decoder_cosine_stats(sae.W_dec),
        "domains": domain_separation(encode(sae, f_acts)[f_mask], encode(sae, r_acts)[r_mask], sae.W_dec, alpha),
        "temporal": temporal_stats(seq_feats),
        "data": {"labelled_sets": {n: len(s["texts"]) for n, s in sets.items()}, "context_length": context_length,
                 "domain_texts": {d: len(t) for d, t in domains.items()},
                 "held_out_sequences": int(held_out_tokens.shape[0]),
                 "held_out_tokens_per_sequence": int(held_out_tokens.shape[1] - 1)},
    }
    write_json_atomic(ctx.out_dir / RESULT_FILE, result)
    return summarize(result)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def summarize(r: dict) -> dict:
    """The headline numbers for final_info.json (the full breakdown is in diagnostics.json)."""
    c = r["clustering"].values()
    return {
        "status": "ok",
        "nmi": _mean(s["nmi"] for s in c),
        "silhouette": _mean(s["silhouette"] for s in c),
        "llm_nmi": _mean(s["llm_nmi"] for s in c),
        "llm_silhouette": _mean(s["llm_silhouette"] for s in c),
        "mig": _mean(m["mig"] for m in r["mig"].values()),
        "mig_null": _mean(m["mig_null"] for m in r["mig"].values()),
        "factorvae": _mean(f["score"] for f in r["factorvae"].values()),
        "factorvae_null": _mean(f["null"] for f in r["factorvae"].values()),
        "factorvae_llm": _mean(f["llm"] for f in r["factorvae"].values()),
        "feature_corr_mean_abs": r["feature_correlation"]["mean_abs_r"],
        "feature_corr_frac_above_0.5": r["feature_correlation"]["frac_abs_r_above_0.5"],
        "decoder_cos_mean_abs": r["decoder_cosine"]["mean_abs_cos"],
        "decoder_cos_mean_max": r["decoder_cosine"]["mean_max_abs_cos"],
        "domain_specific_share": r["domains"]["domain_specific_share"],
        "forget_specific": r["domains"]["n_forget_specific"],
        "retain_specific": r["domains"]["n_retain_specific"],
        "cross_group_decoder_abs_cos": r["domains"]["cross_group_mean_abs_cos"],
        "autocorrelation": r["temporal"]["autocorrelation"],
        "firing_mi_bits": r["temporal"]["firing_mi_bits_t_to_t1"],
    }


def headline(r: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    ac = r["autocorrelation"]
    return (f"NMI {fmt(r['nmi'])} (LLM {fmt(r['llm_nmi'])}), silhouette {fmt(r['silhouette'])} "
            f"(LLM {fmt(r['llm_silhouette'])}), MIG {fmt(r['mig'])} (null {fmt(r['mig_null'])}), FactorVAE "
            f"{fmt(r.get('factorvae'))} (null {fmt(r.get('factorvae_null'))}), feature |r| "
            f"{fmt(r['feature_corr_mean_abs'])}, decoder |cos| {fmt(r['decoder_cos_mean_abs'])}, "
            f"domain-specific {fmt(r['domain_specific_share'])}, autocorr lag1/8 {fmt(ac['1'])}/"
            f"{fmt(ac['8'])}, firing MI {fmt(r['firing_mi_bits'])} bits")
