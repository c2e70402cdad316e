"""Core computed around SAEBench's run_evals (model-only work cached, the SAE's spliced pass from the hook's
layer) gives run_evals's own numbers."""

import pytest
import torch

BOS, PAD = 1, 0


def _tiny_sae(model, hook_layer=1, d_sae=24, seed=0):
    from sae_lens.saes.sae import SAEMetadata

    from evals.saebench_glue import formatted_sae
    from trainers import relu

    meta = SAEMetadata(model_name="tiny", hook_name=f"blocks.{hook_layer}.hook_resid_post", hook_layer=hook_layer,
                       context_size=16, prepend_bos=True, dataset_path="x", model_from_pretrained_kwargs={})
    sae = relu.build_sae(relu.Config(), 16, d_sae, 10, decoder_init_norm=1.0, metadata=meta)
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.fill_(-0.5)  # some features off: L0 well below d_sae
    return formatted_sae(sae.eval(), "cpu")[1]


def _store(model, sae, tokens):
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore

    store = ActivationsStore.from_sae(model, sae, dataset=Dataset.from_dict({"tokens": tokens.tolist()}),
                                      context_size=tokens.shape[1], device="cpu")
    store.shuffle_input_dataset(seed=42)
    return store


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("softcap", [-1.0, 5.0])
def test_cached_core_equals_saebench_run_evals_to_1e_4(softcap):
    """Without a final-logit softcap KL comes from the kept W_U p; with one (Gemma 2), from the clean
    logits computed again."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals

    from evals.core import measure_cached, model_only_pass, token_batches

    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(2, 40, (40, 16), generator=g)
    tokens[:, 0] = BOS
    tokens[::5, 7:9] = PAD  # special tokens inside rows: excluded from every metric
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(
        n_layers=3, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=16, d_vocab=40, act_fn="gelu",
        normalization_type="LN", seed=0, output_logits_soft_cap=softcap)).eval()
    with torch.no_grad():
        model.unembed.b_U.normal_()  # a nonzero unembedding bias, which KL's formula must include
    sae = _tiny_sae(model)
    config = CoreEvalConfig(model_name="tiny", batch_size_prompts=4, n_eval_reconstruction_batches=3,
                            n_eval_sparsity_variance_batches=5, context_size=16, compute_kl=True, compute_ce_loss=True,
                            compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
                            compute_featurewise_density_statistics=True, compute_featurewise_weight_based_metrics=True,
                            exclude_special_tokens_from_reconstruction=True)
    ignore = {BOS, PAD}
    theirs, their_features = run_evals(sae, _store(model, sae, tokens), model, config, ignore_tokens=ignore)
    recon, sv = token_batches(_store(model, sae, tokens), 3, 5, 4)
    cached = model_only_pass(model, sae.cfg.hook_name, sae.cfg.hook_layer, recon, sv)
    assert bool(cached["wu_p"]) == (softcap <= 0) and bool(cached["final"]) == (softcap > 0)
    ours, our_features = measure_cached(sae, model, recon, sv, config, ignore, cached)

    theirs, ours = dict(_flat(theirs)), dict(_flat(ours))
    assert set(ours) == set(theirs)
    assert 0 < theirs["sparsity.l0"] < 24 and theirs["model_performance_preservation.ce_loss_score"] != 0
    assert theirs["model_behavior_preservation.kl_div_with_sae"] > 1e-4  # the SAE changes the output
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-4, rel=1e-4), k
    assert set(our_features) == set(their_features)
    for k, v in their_features.items():
        assert torch.allclose(torch.as_tensor(our_features[k]).float(), torch.as_tensor(v).float(), atol=1e-4,
                              equal_nan=True), k


@pytest.mark.slow
def test_cached_core_equals_saebench_run_evals_on_the_embedded_gemma():
    """The same on Gemma 3 (final-logit softcap, 262k vocabulary, its own attention), held-out text."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_lens.saes.sae import SAEMetadata

    from evals.core import measure_cached, model_only_pass, token_batches
    from evals.saebench_glue import formatted_sae
    from trainers import relu
    from trainers.data import EMBEDDED_DATASET, build_sequences
    from trainers.model import load_model

    model = load_model()
    tok = model.tokenizer
    tokens = build_sequences(EMBEDDED_DATASET, tok, "held_out", 64, max_tokens=12 * 64, held_out_percent=30,
                             shuffle_seed=0).tokens[:12]
    meta = SAEMetadata(model_name="google/gemma-3-270m", hook_name="blocks.6.hook_resid_post", hook_layer=6,
                       context_size=64, prepend_bos=True, dataset_path="x", model_from_pretrained_kwargs={})
    config = CoreEvalConfig(model_name="google/gemma-3-270m", batch_size_prompts=2, n_eval_reconstruction_batches=2,
                            n_eval_sparsity_variance_batches=3, context_size=64, compute_kl=True, compute_ce_loss=True,
                            compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
                            compute_featurewise_density_statistics=True, compute_featurewise_weight_based_metrics=True,
                            exclude_special_tokens_from_reconstruction=True)
    ignore = {t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if t is not None}
    _, cache = model.run_with_cache(tokens[:4], names_filter=["blocks.6.hook_resid_post"], stop_at_layer=7)
    mean = cache["blocks.6.hook_resid_post"][:, 1:].reshape(-1, 640).mean(0)
    cached = None
    # a random SAE near the data (b_dec at the mean): finite numbers; one far from it: the clean model's
    # softmax stays positive where the spliced model's underflows to 0, and SAEBench's KL is inf, its score -inf
    for encoder_scale, decoder_scale, finite in ((1e-3, 1.0, True), (1.0, 300.0, False)):
        sae = relu.build_sae(relu.Config(), 640, 64, 10, decoder_init_norm=1.0, metadata=meta)
        torch.manual_seed(0)
        with torch.no_grad():
            sae.W_enc.normal_().mul_(encoder_scale)
            sae.W_dec.mul_(decoder_scale)
            sae.b_dec.copy_(mean if finite else torch.zeros(640))
        _, sae = formatted_sae(sae.eval(), "cpu")
        theirs, _ = run_evals(sae, _store(model, sae, tokens), model, config, ignore_tokens=ignore)
        recon, sv = token_batches(_store(model, sae, tokens), 2, 3, 2)
        cached = cached or model_only_pass(model, sae.cfg.hook_name, 6, recon, sv)
        ours, _ = measure_cached(sae, model, recon, sv, config, ignore, cached)
        theirs, ours = dict(_flat(theirs)), dict(_flat(ours))
        kl = theirs["model_behavior_preservation.kl_div_with_sae"]
        assert (1e-3 < kl < float("inf")) if finite else kl == float("inf"), (decoder_scale, kl)
        for k, v in theirs.items():
            assert ours[k] == pytest.approx(v, abs=1e-4, rel=1e-4), (decoder_scale, k)


def test_softmax_underflow_check_equals_float32_softmax_equal_zero():
    """The range test skips only rows whose softmax cannot reach 0; the others get the softmax itself."""
    from evals.core import softmax_underflows

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=g) * 3
    logits[1, 5] = 120.0   # span ~130: exp(-130) underflows to 0
    logits[2, 5] = 70.0    # span ~80 + log(1000): checked by softmax, nothing underflows
    logits[3, :] = -200.0
    logits[3, 7] = 0.0     # every other word 200 below: all but one underflow
    logits[4, 0] = 95.0    # span ~105: exp(-105) is a float32 denormal, maybe 0 after the division
    expected = (torch.nn.functional.softmax(logits, dim=-1) == 0).any(-1)
    assert expected[1] and expected[3] and not expected[0] and not expected[2]
    assert torch.equal(softmax_underflows(logits), expected)
    # 16 bits: bfloat16 has float32's range; float16 underflows past about 17 nats, so its rows are checked
    for dtype in (torch.bfloat16, torch.float16):
        low = (logits / 8).to(dtype)  # spans of about 2 to 25 nats
        expected = (torch.nn.functional.softmax(low, dim=-1) == 0).any(-1)
        assert torch.equal(softmax_underflows(low), expected), dtype
        assert dtype == torch.bfloat16 or expected.any()


def test_unembed_made_once_gives_transformer_lens_logits_bit_for_bit():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from evals.core import _Unembed

    for softcap in (-1.0, 5.0):
        model = HookedTransformer(HookedTransformerConfig(
            n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=8, d_vocab=50, act_fn="gelu",
            normalization_type="LN", seed=0, output_logits_soft_cap=softcap)).eval()
        resid = torch.randn(3, 8, 16)
        with torch.no_grad():
            theirs = model(resid, start_at_layer=model.cfg.n_layers)
            h, ours = _Unembed(model)(resid)
        assert torch.equal(ours, theirs) and torch.equal(h, model.ln_final(resid))
