"""The seeds' diagnostics on hand-made inputs whose values are known."""

import math

import pytest
import torch

from evals import diagnostics as d


def test_mutual_information_is_one_bit_for_a_copy_and_zero_for_independent_codes():
    labels = torch.tensor([0, 0, 1, 1])
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])  # column 0 copies the label, column 1 is independent
    mi = d.mutual_information_bits(codes, 2, labels, 2)
    assert mi.tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    a = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    assert d.binary_mi_bits(a, a[:, [0, 0]]).tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    assert d.entropy_bits(torch.tensor([0, 1, 2, 3])) == pytest.approx(2.0)


def test_mig_is_one_when_one_feature_encodes_the_factor_and_no_other_does():
    labels = ["a", "b"] * 10
    latents = torch.zeros(20, 3)
    latents[:, 0] = torch.tensor([0.0, 1.0] * 10)  # encodes the label
    latents[:, 2] = torch.arange(20.0) // 10  # splits the rows in halves: independent of the label
    r = d.mig(latents, labels)
    assert r["mig"] == pytest.approx(1.0) and r["top_feature"] == 0 and r["entropy_bits"] == pytest.approx(1.0)
    latents[:, 1] = latents[:, 0] * 2  # a second feature with the same information: gap 0
    assert d.mig(latents, labels)["mig"] == pytest.approx(0.0)


def test_mig_null_is_the_mig_of_permuted_labels_and_far_below_an_informative_features_mig():
    g = torch.Generator().manual_seed(0)
    labels = ["a", "b"] * 200
    latents = torch.rand(400, 50, generator=g)
    latents[:, 0] = torch.tensor([0.0, 1.0] * 200)  # encodes the label
    assert d.mig(latents, labels)["mig"] > 0.8
    null = d.mig_null(latents, labels, n_permutations=5, seed=0)
    assert 0 <= null < 0.1
    assert null == d.mig_null(latents, labels, n_permutations=5, seed=0)  # seeded


def _two_factor_docs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    topic = ["t0", "t1"] * (n // 2)
    lang = ["en"] * (n // 2) + ["fr"] * (n // 2)
    latents = torch.rand(n, 6, generator=g) + 0.5  # four noise features that always fire
    latents[:, 0] = torch.tensor([1.0 if t == "t1" else 0.0 for t in topic]) * 3 + 0.01 * torch.rand(n, generator=g)
    latents[:, 1] = torch.tensor([1.0 if x == "fr" else 0.0 for x in lang]) * 3 + 0.01 * torch.rand(n, generator=g)
    return latents, {"topic": topic, "language": lang}


def test_factorvae_is_one_when_each_factor_has_its_own_feature_and_chance_when_permuted():
    latents, factors = _two_factor_docs()
    r = d.factorvae_score(latents, factors)
    assert r["score"] == pytest.approx(1.0) and r["chance"] == 0.5 and r["n_features_used"] == 6
    assert 0.3 < d.factorvae_null(latents, factors) < 0.7


def test_factorvae_leaves_out_rarely_firing_features_that_would_take_every_vote():
    """A feature that fires on 2 documents of 200 has zero variance in almost every subset: with it,
    the plain argmin votes for it whatever factor is fixed and the score falls to chance."""
    latents, factors = _two_factor_docs()
    rare = torch.zeros(len(latents), 1)
    rare[:2] = 5.0
    with_rare = torch.cat([latents, rare], dim=1)
    assert d.factorvae_score(with_rare, factors, min_active=0)["score"] < 0.7
    r = d.factorvae_score(with_rare, factors)
    assert r["score"] == pytest.approx(1.0) and r["n_features_used"] == 6


def test_correlation_and_decoder_cosine_statistics_match_hand_values():
    t = torch.arange(1.0, 9.0)
    feats = torch.stack([t, 2 * t, torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 1]) + 1], dim=1)  # r = 1, 0, 0
    s = d.correlation_stats(feats, min_fires=1)
    assert s["n_features"] == 3
    assert s["mean_abs_r"] == pytest.approx(1 / 3) and s["frac_abs_r_above_0.5"] == pytest.approx(1 / 3)
    w = torch.tensor([[1.0, 0], [0, 1], [1, 1]])  # |cos| pairs: 0, 1/sqrt2, 1/sqrt2
    c = d.decoder_cosine_stats(w)
    assert c["mean_abs_cos"] == pytest.approx(2 / (3 * math.sqrt(2)))
    assert c["mean_max_abs_cos"] == pytest.approx(1 / math.sqrt(2)) and c["frac_abs_cos_above_0.5"] == pytest.approx(2 / 3)


def test_domain_separation_counts_domain_specific_features_and_cross_group_cosine():
    forget = torch.tensor([[1.0, 0, 1, 0]] * 5)  # feature 0 only on forget text, 2 on both, 3 never
    retain = torch.tensor([[0.0, 1, 1, 0]] * 5)  # feature 1 only on retain text
    w = torch.tensor([[1.0, 0], [1, 1], [0, 1], [1, 0]])
    r = d.domain_separation(forget, retain, w, alpha=0.3, min_fires=1)
    assert (r["n_active"], r["n_forget_specific"], r["n_retain_specific"]) == (3, 1, 1)
    assert r["domain_specific_share"] == pytest.approx(2 / 3)
    assert r["cross_group_mean_abs_cos"] == pytest.approx(1 / math.sqrt(2))
    assert r["cross_group_mean_cos2"] == pytest.approx(0.5)


def test_temporal_statistics_of_an_alternating_and_a_constant_run_feature():
    alternating = torch.tensor([1.0, 0] * 8)  # fires every other token
    runs = torch.tensor([1.0] * 8 + [0.0] * 8)  # fires on one long run
    feats = torch.stack([alternating, runs], dim=-1)[None]  # [1 seq, 16 tokens, 2 features]
    r = d.temporal_stats(feats, lags=(1, 2), min_fires=1)
    # lag 1: alternating r = -1; runs: pairs (1,1) x7, (1,0) x1, (0,0) x7 -> cov 49/225, var 56/225 each
    # -> r = 49/56. Mean over the two features:
    assert r["autocorrelation"]["1"] == pytest.approx((-1 + 49 / 56) / 2)
    assert r["autocorrelation"]["2"] > 0.5  # alternating has +1 at lag 2
    # MI(fire_t, fire_t+1): alternating: next = not current -> H(7/15); runs: from the joint above
    h = -(7 / 15 * math.log2(7 / 15) + 8 / 15 * math.log2(8 / 15))
    runs_mi = 2 * 7 / 15 * math.log2(15 / 8) + 1 / 15 * math.log2(15 / 64)
    assert r["firing_mi_bits_t_to_t1"] == pytest.approx((h + runs_mi) / 2)


def test_clustering_scores_are_perfect_for_separated_classes():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor([5.0, 0, 0]) + 0.1 * torch.randn(10, 3, generator=g),
                   torch.tensor([0.0, 5, 0]) + 0.1 * torch.randn(10, 3, generator=g)])
    s = d.clustering_scores(x, ["a"] * 10 + ["b"] * 10)
    assert s["nmi"] == pytest.approx(1.0) and s["silhouette"] > 0.9


def test_domain_block_takes_the_next_run_of_texts_per_eval_seed_and_the_last_run_when_the_corpus_is_short():
    texts = [f"t{i}" for i in range(10)]
    assert d.domain_block(texts, 4, 0) == texts[:4]
    assert d.domain_block(texts, 4, 1) == texts[4:8]
    assert d.domain_block(texts, 4, 2) == texts[6:]  # 8..12 would run past the end: the last 4
    assert d.domain_block(texts, 20, 1) == texts  # fewer texts than asked: all of them
