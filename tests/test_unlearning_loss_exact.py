"""The loss sweep reruns only the rows and positions a clamp can change, from the residual entering the
SAE's layer, and gets the numbers of rerunning every row through the model's own forward."""

import pytest
import torch

from trainers.model import load_model

pytestmark = pytest.mark.slow  # loads the embedded model


@pytest.fixture(scope="module")
def model():
    return load_model()


def _sparse_sae(model, d_sae=12, fire_rate=0.004, seed=0):
    """A random SAE on blocks.6 whose features each fire on about `fire_rate` of the tokens, so that a
    row of 64 tokens holds a firing of a given feature about a fifth of the time."""
    from sae_lens.saes.sae import SAEMetadata

    from evals.saebench_glue import formatted_sae
    from trainers import relu

    meta = SAEMetadata(model_name="google/gemma-3-270m", hook_name="blocks.6.hook_resid_post", hook_layer=6,
                       context_size=64, prepend_bos=True, dataset_path="x", model_from_pretrained_kwargs={})
    sae = relu.build_sae(relu.Config(), 640, d_sae, 10, decoder_init_norm=1.0, metadata=meta)
    torch.manual_seed(seed)
    tokens = torch.randint(1000, 20000, (8, 64))
    tokens[:, 0] = model.tokenizer.bos_token_id
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(640, d_sae))
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.6.hook_resid_post"], stop_at_layer=7)
        pre = cache["blocks.6.hook_resid_post"][:, 1:].reshape(-1, 640) @ sae.W_enc
        sae.b_enc.copy_(-torch.quantile(pre, 1 - fire_rate, dim=0))
    return formatted_sae(sae.eval(), "cpu")[1]


def test_rerunning_only_positions_after_the_first_firing_gives_the_full_rerun_numbers(model):
    from evals.unlearning_loss import clean_pass, loss_sweep, row_losses

    sae = _sparse_sae(model)
    g = torch.Generator().manual_seed(1)
    forget, retain = (torch.randint(1000, 20000, (12, 64), generator=g) for _ in range(2))
    forget[:, 0] = retain[:, 0] = model.tokenizer.bos_token_id
    clean = clean_pass(model, sae, retain, 4)
    first = clean.first_firing[:, [0, 1, 2]].amin(1)
    assert 0 < (first < 64).sum() < len(retain)  # some rows are skipped, some rerun
    assert (first[first < 64] > 1).any()  # some rerun rows keep clean losses before their first firing
    sums, counts = row_losses(model, retain, 4)  # the clean pass's losses are the model's own
    assert torch.allclose((clean.losses * clean.keep).sum(1), sums, rtol=1e-6)
    assert torch.equal(clean.keep.sum(1), counts)
    interventions = [{"retain_threshold": 0.01, "n_features": 3, "multiplier": 2000.0, "features": [0, 1, 2]},
                     {"retain_threshold": 0.01, "n_features": 0, "multiplier": 2000.0, "features": []}]
    base_fast, fast = loss_sweep(model, sae, interventions, forget, retain, 4)
    base_full, full = loss_sweep(model, sae, interventions, forget, retain, 4, skip_unaffected=False)
    assert base_fast == base_full
    for a, b in zip(fast, full):
        for key in ("forget_loss", "retain_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)
    assert fast[0]["retain_rows_rerun"] < full[0]["retain_rows_rerun"] == len(retain)
    assert fast[0]["retain_positions_rerun"] < fast[0]["retain_rows_rerun"] * 63
    assert fast[0]["retain_loss"] != pytest.approx(base_fast["retain_loss"], rel=1e-4)  # the clamp did act
    assert fast[1]["retain_loss"] == base_fast["retain_loss"] and fast[1]["retain_rows_rerun"] == 0


def test_stopping_a_family_past_the_tolerance_keeps_its_interpolated_reading(model):
    from evals.unlearning_loss import interpolated_choice, loss_sweep, loss_unlearning_score

    sae = _sparse_sae(model)
    g = torch.Generator().manual_seed(2)
    forget, retain = (torch.randint(1000, 20000, (12, 64), generator=g) for _ in range(2))
    forget[:, 0] = retain[:, 0] = model.tokenizer.bos_token_id
    family = [{"retain_threshold": 0.01, "n_features": 3, "multiplier": m, "features": [0, 1, 2]}
              for m in (500.0, 2000.0, 8000.0)]
    base, full = loss_sweep(model, sae, family, forget, retain, 4)
    loss_unlearning_score(base, full, 0.0)
    rises = [r["retain_loss_increase"] for r in full]
    assert rises == sorted(rises) and rises[0] < rises[1]
    tolerance = (rises[0] + rises[1]) / 2  # the family passes it at its second multiplier
    _, stopped = loss_sweep(model, sae, family, forget, retain, 4, stop_past=tolerance)
    assert [r["multiplier"] for r in stopped] == [500.0, 2000.0]  # the third is not measured
    loss_unlearning_score(base, stopped, tolerance)
    assert stopped == full[:2]
    assert interpolated_choice(stopped, tolerance) == interpolated_choice(full, tolerance)
    with pytest.raises(ValueError, match="ascending"):
        loss_sweep(model, sae, family[::-1], forget, retain, 4, stop_past=tolerance)
