"""The four variants: each loss term on hand-made input equals a hand-computed value, its gradient
reaches only the parameters it should, pairs/windows are true neighbours, and the EMA / margin /
percentile / grouping logic gives known values."""

import math
from types import SimpleNamespace

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

from tests.conftest import make_sequences
from trainers import VARIANTS, adversarial, contrastive, orthogonal, relu, temporal
from trainers.buffer import ActivationBuffer
from trainers.data import Document
from trainers.labelled_data import FORGET_TOPIC
from trainers.metrics import domain_groups
from trainers.trainer import StepData, TrainSettings, train_sae
from trainers.variant_sae import TextPool, VariantSettingError, ema, exp_ramp, info_nce, linear_ramp, neighbour_pairs

HOOK = "blocks.1.hook_resid_post"
META = dict(model_name="tiny", hook_name=HOOK, hook_layer=1, context_size=9, prepend_bos=True)
LOG1PE = math.log(1 + math.exp(-1))  # InfoNCE of two candidates whose logits differ by 1


def identity_sae(variant, d=2, **cfg):
    """d_in = d_sae = d, W_enc = W_dec = I, biases 0: features = relu(x)."""
    mod = VARIANTS[variant]
    sae = mod.build_sae(mod.Config(l1_coefficient=0.0, **cfg), d, d, 10, decoder_init_norm=1.0,
                        metadata=SAEMetadata(**META))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def step_input(x, step=0):
    return TrainStepInput(sae_in=x, coefficients={"l1": 0.0}, dead_neuron_mask=None, n_training_steps=step,
                          is_logging_step=False)


class FakeBuffer:
    """Stands in for ActivationBuffer's neighbour lookup: fixed neighbour activations."""

    def __init__(self, acts, valid=None, forget=None):
        self.acts, self.valid = acts, torch.ones(len(acts), dtype=torch.bool) if valid is None else valid
        self.forget = forget
        self.sequences = SimpleNamespace(documents=[Document("f", topic=FORGET_TOPIC), Document("r", topic="Arts")])

    def neighbours(self, batch, offset):
        return self.acts[:, None, :], self.valid

    def has_topic(self, batch, topic):
        return self.forget


def attach(sae, buffer, n, doc=None, step=0):
    """Hand the SAE its step data the way the trainer does (`begin_step`); returns it. Each row its own
    sequence; documents as given (default: each row its own)."""
    batch = SimpleNamespace(rows=torch.arange(n), seq=torch.arange(n), pos=torch.ones(n, dtype=torch.long),
                            doc=torch.arange(n) if doc is None else doc)
    data = StepData(batch=batch, step=step, source=buffer)
    sae.begin_step(data)
    return data


def grads_of(sae, term, extra=()):
    sae.zero_grad()
    term.backward()
    return {n: (p.grad is not None and p.grad.abs().sum().item() > 0) for n, p in list(sae.named_parameters()) + list(extra)}


# ---- shared pieces ----------------------------------------------------------------------------

def test_info_nce_and_schedules_match_hand_values():
    eye = torch.eye(2)
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(LOG1PE)
    assert info_nce(eye, eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert linear_ramp(5, 10) == 0.5 and linear_ramp(20, 10) == 1.0 and linear_ramp(3, 0) == 1.0
    assert exp_ramp(0, 10) == 0.0 and exp_ramp(10, 10) == pytest.approx(1 - math.exp(-1))
    assert ema(None, 0.2, 0.95) == 0.2 and ema(0.2, 0.4, 0.95) == pytest.approx(0.21)


def test_neighbour_pairs_are_same_sequence_within_window_never_bos(tiny_model):
    seqs = make_sequences(n_seq=8, ctx=9)
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    torch.manual_seed(0)
    seen = 0
    for step in range(6):
        batch = buf.next_batch(8)
        idx, acts, offset = neighbour_pairs(StepData(batch=batch, step=step, source=buf), window=3)
        assert ((offset.abs() >= 1) & (offset.abs() <= 3)).all()
        _, cache = tiny_model.run_with_cache(seqs.tokens[batch.seq[idx]])
        pos = batch.pos[idx] + offset
        assert (pos >= 1).all() and (pos <= 8).all()  # never BOS (position 0), inside the sequence
        want = cache[HOOK][torch.arange(len(idx)), pos] * buf.scale[0]
        torch.testing.assert_close(acts, want, rtol=1e-4, atol=1e-5)
        seen += len(idx)
    assert seen > 20


# ---- contrastive --------------------------------------------------------------------------------

def contrastive_sae(**cfg):
    sae = identity_sae("contrastive", head_dim=2, temperature=1.0, weight=0.5, curriculum_frac=0.0, max_rescale=1.0,
                       **cfg)
    with torch.no_grad():
        sae.head.weight.copy_(torch.eye(2))
        sae.head.bias.zero_()
    buffer = FakeBuffer(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    attach(sae, buffer, 2)
    return sae, buffer


def test_contrastive_loss_equals_hand_value_and_reaches_encoder_and_head_not_decoder():
    sae, buffer = contrastive_sae()
    # anchors f = [[1,0],[0,2]], neighbours f = [[2,0],[0,1]]: unit head outputs are e1, e2 for both,
    # logits [[1,0],[0,1]] -> InfoNCE = log(1 + e^-1); term = weight 0.5 x that
    out = sae.training_forward_pass(step_input(torch.tensor([[1.0, 0.0], [0.0, 2.0]])))
    assert out.losses["contrastive_loss"].item() == pytest.approx(0.5 * LOG1PE, rel=1e-5)
    assert out.loss.item() == pytest.approx(out.losses["mse_loss"].item() + 0.5 * LOG1PE, rel=1e-5)
    # hand values sit where relu is flat; gradients are checked off that point
    buffer.acts = torch.tensor([[2.0, 0.4], [0.2, 1.0]])
    out = sae.training_forward_pass(step_input(torch.tensor([[1.0, 0.5], [0.3, 2.0]])))
    g = grads_of(sae, out.losses["contrastive_loss"])
    assert g["W_enc"] and g["b_enc"] and g["head.weight"] and not g["W_dec"]
    assert not any(k.startswith("head") for k in sae.state_dict())  # the head is not saved with the SAE


def test_contrastive_masks_negatives_from_the_anchors_own_document():
    sae, buffer = contrastive_sae()
    attach(sae, buffer, 2, doc=torch.tensor([5, 5]))  # both rows from one document: no negative left
    out = sae.training_forward_pass(step_input(torch.tensor([[1.0, 0.0], [0.0, 2.0]])))
    assert out.losses["contrastive_loss"].item() == pytest.approx(0.0, abs=1e-6)  # log(e^1 / e^1)
    attach(sae, buffer, 2, doc=torch.tensor([5, 6]))  # two documents: the hand value of the test above
    out = sae.training_forward_pass(step_input(torch.tensor([[1.0, 0.0], [0.0, 2.0]])))
    assert out.losses["contrastive_loss"].item() == pytest.approx(0.5 * LOG1PE, rel=1e-5)


def test_feature_mixing_negatives_match_hand_value():
    assert contrastive.mix_top_features(torch.tensor([[3.0, 0, 1, 2]]), torch.tensor([[0.0, 5, 0, 4]]), 2).tolist() \
        == [[0.0, 5, 1, 4]]
    sae, _ = contrastive_sae(mix_negatives=True, mix_k=1)
    # mixed twins: [[0,2],[1,0]] -> candidates e1, e2, e2, e1: row logits [1,0,0,1] -> log(2 + 2/e)
    out = sae.training_forward_pass(step_input(torch.tensor([[1.0, 0.0], [0.0, 2.0]])))
    assert out.losses["contrastive_loss"].item() == pytest.approx(0.5 * math.log(2 + 2 / math.e), rel=1e-5)


def test_contrastive_dynamic_weight_ramps_and_keeps_its_share():
    sae = identity_sae("contrastive", weight=0.1, target_share=0.05, max_rescale=10.0, curriculum_frac=1.0)
    sae.n_steps = 10
    # share-keeping factor 0.05/0.95 x 19 / (0.1 x 5) = 2; ramp 5/10 -> 0.1 x 0.5 x 2
    assert sae.coefficient(5, rest=19.0, nce=5.0) == pytest.approx(0.1)
    sae = identity_sae("contrastive", weight=0.1, target_share=0.05, max_rescale=10.0, curriculum_frac=0.0)
    assert sae.coefficient(5, rest=1e6, nce=5.0) == pytest.approx(1.0)  # clamped at 10x the weight


# ---- orthogonal ---------------------------------------------------------------------------------

def test_threshold_grouping_and_cross_group_penalty_match_hand_values():
    f, r = torch.tensor([0.9, 0.1, 0.5, 0.0, 0.6]), torch.tensor([0.1, 0.9, 0.5, 0.0, 0.4])
    forget, retain = domain_groups(f, r, alpha=0.3)
    assert forget.tolist() == [True, False, False, False, False]
    assert retain.tolist() == [False, True, False, False, False]
    w = torch.tensor([[1.0, 0], [0, 1], [2, 2]])  # cos(0,1) = 0, cos(0,2) = 1/sqrt2
    p = orthogonal.cross_group_penalty(w, torch.tensor([True, False, False]), torch.tensor([False, True, True]))
    assert p.item() == pytest.approx(0.25, rel=1e-6)  # mean of cos^2 (0, 0.5)
    assert torch.isfinite(orthogonal.cross_group_penalty(torch.zeros(3, 2), forget[:3], retain[:3]))


def test_orthogonal_ema_statistics_grouping_and_gradient_only_on_grouped_decoder_rows():
    sae = identity_sae("orthogonal", d=4, weight=1.0, warmup_frac=0.1, stats_decay=0.5, alpha=0.3)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 1]]))
    forget = torch.tensor([True, False])
    buffer = FakeBuffer(torch.zeros(2, 4), forget=forget)
    attach(sae, buffer, 2, step=1)
    x = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0]])  # feature 0 fires on forget, 1 on retain, 2 on both
    out = sae.training_forward_pass(step_input(x, step=1))
    assert sae.stats["forget"]["freq"].tolist() == [1, 0, 1, 0]
    assert sae.stats["retain"]["freq"].tolist() == [0, 1, 1, 0]
    # groups: forget {0}, retain {1}; cos(row0, row1) = 1/sqrt2 -> cos^2 0.5; ramp 1 - e^(-1/1)
    assert out.losses["orthogonality_loss"].item() == pytest.approx(0.5 * (1 - math.exp(-1)), rel=1e-5)
    g = grads_of(sae, out.losses["orthogonality_loss"])
    assert g["W_dec"] and not g["W_enc"] and not g["b_enc"] and not g["b_dec"]
    assert sae.W_dec.grad[2:].abs().sum() == 0  # rows of ungrouped features get nothing
    attach(sae, buffer, 2, step=2)
    sae.training_forward_pass(step_input(torch.zeros(2, 4), step=2))  # nothing fires: EMA halves the freqs
    assert sae.stats["forget"]["freq"].tolist() == [0.5, 0, 0.5, 0]


def test_kmeans_grouping_separates_forget_and_retain_features():
    n = 30
    forget_feats, retain_feats = torch.arange(0, 10), torch.arange(10, 20)
    def stats(active):
        mean = torch.full((n,), 0.1)
        mean[active] = 3.0
        return {"freq": mean / 3, "mean": mean, "sq": mean.pow(2) * 1.5, "max": mean * 2}
    forget, retain = orthogonal.kmeans_groups({"forget": stats(forget_feats), "retain": stats(retain_feats)})
    assert forget.nonzero().squeeze(1).tolist() == forget_feats.tolist()
    assert retain.nonzero().squeeze(1).tolist() == retain_feats.tolist()


def test_orthogonal_refuses_data_without_the_forget_domain():
    sae = identity_sae("orthogonal")
    buffer = FakeBuffer(torch.zeros(1, 2), forget=torch.tensor([False]))
    buffer.sequences.documents = [Document("r", topic="Arts")]
    attach(sae, buffer, 1)
    with pytest.raises(VariantSettingError, match="domain-tagged"):
        sae.training_forward_pass(step_input(torch.ones(1, 2)))


# ---- adversarial --------------------------------------------------------------------------------

def test_adversarial_scale_percentile_set_and_margin_penalty_match_hand_values():
    assert adversarial.adversarial_scale(0.55) == 0.1 and adversarial.adversarial_scale(0.9) == pytest.approx(0.4)
    attribution = torch.arange(20.0)
    threshold = torch.quantile(attribution, 0.85).item()
    assert threshold == pytest.approx(16.15)
    assert adversarial.spurious_set(attribution, threshold).nonzero().squeeze(1).tolist() == [17, 18, 19]
    sims = torch.tensor([[0.5, 0.1], [0.3, 0.2]])
    assert adversarial.margin_penalty(sims, 0.25).item() == pytest.approx((0.25**2 + 0.05**2) / 2)
    w = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    s = adversarial.similarity_to_others(w, torch.tensor([False, False, True]))
    torch.testing.assert_close(s, torch.tensor([[2**-0.5, 2**-0.5]]))


def test_adversarial_probe_sees_stopped_gradient_and_term_reaches_only_the_decoder():
    torch.manual_seed(0)
    d = 6
    sae = identity_sae("adversarial", d=d, weight=1.0, texts_per_step=4, percentile=50.0, margin_std=0.0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d, d))
    acts = torch.rand(4, 3, d)
    sae.pool = TextPool(acts, torch.ones(4, 3, dtype=torch.bool))
    sae.labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    attach(sae, FakeBuffer(torch.zeros(2, d)), 2)
    assert not any(p is q for p in sae.parameters() for q in sae.probe.linear.parameters())  # own optimizer
    probe_before = sae.probe.linear.weight.detach().clone()
    out = sae.training_forward_pass(step_input(torch.rand(2, d)))
    assert not torch.equal(sae.probe.linear.weight, probe_before)  # the probe took its step
    m = sae.step_metrics
    assert m["spurious_features"] == 3  # above the 50th percentile of 6 attributions
    assert m["margin"] == pytest.approx(sae.sim_mean)  # first step: margin = mean + 0 x std
    assert out.losses["adversarial_loss"].item() > 0
    sae.probe.optimizer.zero_grad(set_to_none=True)  # clear the probe's own update; the SAE term must add nothing
    g = grads_of(sae, out.losses["adversarial_loss"], extra=sae.probe.linear.named_parameters())
    assert g["W_dec"] and not g["W_enc"] and not g["b_enc"] and not g["b_dec"] and not g["weight"]


def test_adversarial_similarity_ema_tracks_mean_and_std():
    sae = identity_sae("adversarial", ema_decay=0.5)
    sae.sim_mean = ema(None, 0.2, 0.5)
    sae.sim_mean = ema(sae.sim_mean, 0.4, 0.5)
    assert sae.sim_mean == pytest.approx(0.3)


# ---- temporal -----------------------------------------------------------------------------------

def test_temporal_nce_masks_same_document_negatives_and_matches_hand_value():
    anchor, positive = torch.tensor([[1.0, 0]]), torch.tensor([[1.0, 0]])
    negatives = torch.tensor([[0.0, 1], [1.0, 0]])
    # the second negative is from the anchor's own document (7): masked; logits [1, 0]
    loss = temporal.temporal_nce(anchor, positive, negatives, torch.tensor([7]), torch.tensor([5, 7]), 1.0)
    assert loss.item() == pytest.approx(LOG1PE)


def test_negative_queue_is_circular():
    q = temporal.NegativeQueue(4, 1, "cpu")
    q.push(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1, 2, 3]))
    q.push(torch.tensor([[4.0], [5.0], [6.0]]), torch.tensor([4, 5, 6]))
    assert q.filled == 4 and q.next == 2
    assert q.vectors.squeeze(1).tolist() == [5.0, 6.0, 3.0, 4.0] and q.doc.tolist() == [5, 6, 3, 4]


def test_temporal_term_uses_queue_negatives_and_reaches_encoder_not_decoder():
    sae = identity_sae("temporal", weight=1.0, temperature=1.0, window=2, queue_size=8, negatives_per_step=8)
    buffer = FakeBuffer(torch.tensor([[2.0, 0.0]]))
    attach(sae, buffer, 1, doc=torch.tensor([3]))
    x = torch.tensor([[1.0, 0.0]])
    out = sae.training_forward_pass(step_input(x))
    assert out.losses["temporal_loss"].item() == 0.0 and sae.queue.filled == 1  # empty queue: no term yet
    sae.queue.push(torch.tensor([[0.0, 1.0]]), torch.tensor([9]))  # one negative from another document
    out = sae.training_forward_pass(step_input(x))
    # positive cos 1, negatives: [0,1] (other document) -> 0; [1,0] (own document 3) masked
    assert out.losses["temporal_loss"].item() == pytest.approx(LOG1PE, rel=1e-5)
    buffer.acts = torch.tensor([[2.0, 0.5]])  # off the flat point of relu, for the gradient check
    out = sae.training_forward_pass(step_input(torch.tensor([[1.0, 0.3]])))
    g = grads_of(sae, out.losses["temporal_loss"])
    assert g["W_enc"] and not g["W_dec"]


# ---- every variant through the shared trainer ---------------------------------------------------

SEED_VARIANTS = [name for name, m in VARIANTS.items() if m.LOSS_TERM and issubclass(m.Config, relu.Config)]  # VariantSAE


def test_a_variant_that_was_not_handed_its_step_data_says_so():
    sae = identity_sae("temporal")
    with pytest.raises(RuntimeError, match="begin_step"):
        sae.training_forward_pass(step_input(torch.ones(1, 2)))


@pytest.mark.parametrize("variant", SEED_VARIANTS)
def test_variant_trains_with_the_shared_trainer_logs_its_term_and_saves_a_standard_sae(tiny_model, variant, tmp_path):
    seqs = make_sequences(n_seq=16)
    seqs.documents = [Document(d.text, topic=FORGET_TOPIC if i % 3 == 0 else "Arts") for i, d in enumerate(seqs.documents)]
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    mod = VARIANTS[variant]
    cfg = mod.Config()
    cfg.weight = 1.0  # a term strong enough to move the SAE in 12 steps
    if variant == "adversarial":
        cfg.texts_per_step = 4
    sae = mod.build_sae(cfg, 16, 32, 12, decoder_init_norm=1.0, metadata=SAEMetadata(**META))
    if variant == "adversarial":  # the tiny model has no tokenizer: a labelled pool of random activations
        sae.pool = TextPool(torch.randn(8, 4, 16) * 4, torch.ones(8, 4, dtype=torch.bool))
        sae.labels = torch.tensor([0.0, 1.0] * 4)
    result = train_sae(sae, buf, TrainSettings(n_tokens=12 * 8, batch_size=8, lr=1e-2, log_every=5))
    term = sae.extra_loss_name
    assert len(result.curves[term]) == len(result.curves["step"]) == 4
    assert all(math.isfinite(v) for v in result.curves["loss"])
    assert any(v for v in result.curves[term][1:]), f"{term} stayed 0"
    sae.save_inference_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    torch.testing.assert_close(loaded.W_dec, sae.W_dec)


def test_topk_sparse_decoder_gives_the_dense_products_outputs_and_gradients():
    from trainers import topk

    torch.manual_seed(0)
    x = torch.randn(12, 16) * 3
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True  # AuxK active: it decodes other activations, densely, through the same W_dec
    results = {}
    for mode in ("off", "on"):
        torch.manual_seed(1)
        sae = topk.build_sae(topk.Config(k=5, sparse_decoder=mode), 16, 64, 10, device="cpu")
        with torch.no_grad():
            sae.b_dec.normal_()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        results[mode] = (type(sae).__name__, out.sae_out.detach(), out.feature_acts.detach(),
                         {n: p.grad.clone() for n, p in sae.named_parameters()})
    assert results["off"][0] == "TopKTrainingSAE" and results["on"][0] == "SparseDecoderTopKSAE"
    assert (results["on"][2] > 0).sum(-1).le(5).all() and (results["on"][2] > 0).sum() > 30
    assert torch.allclose(results["on"][1], results["off"][1], atol=1e-5)
    assert torch.equal(results["on"][2], results["off"][2])
    for name, grad in results["off"][3].items():
        assert grad.abs().sum() > 0, name  # every parameter learns, W_dec's rows beyond the k active included (AuxK)
        assert torch.allclose(results["on"][3][name], grad, atol=1e-5), name
    assert topk.uses_sparse_decoder(topk.Config(sparse_decoder="on"), "cpu")
    assert not topk.uses_sparse_decoder(topk.Config(sparse_decoder="off"), "cpu")


def test_relu_auxk_equals_saelens_topk_aux_loss_and_teaches_only_dead_features():
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    from trainers import relu

    torch.manual_seed(0)
    x = torch.randn(12, 16) * 3
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True  # 22 dead: more than k_aux = 8, so the top 8 dead pre-activations per row, scale 1
    sae = relu.build_sae(relu.Config(aux_loss_coefficient=0.5), 16, 64, 10, device="cpu")
    reference = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=16, d_sae=64, k=5, aux_loss_coefficient=0.5, device="cpu",
                                                      rescale_acts_by_decoder_norm=False))  # a plain W_dec, as ReLU's
    reference.load_state_dict(sae.state_dict())
    for mask in (dead, dead & (torch.arange(64) < 9)):  # 22 dead, then 3 (fewer than k_aux: scaled by 3 / 8)
        feature_acts, hidden_pre = sae.encode_with_hidden_pre(x)
        sae_out = sae.decode(feature_acts)
        ours = sae.auxk_loss(x, sae_out, hidden_pre, mask)
        theirs = reference.calculate_topk_aux_loss(x, sae_out, hidden_pre, mask)
        assert ours.item() > 0 and ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    # in a training step it is one more term of the loss; its gradient reaches only the dead features' rows
    sae.zero_grad()
    feature_acts, hidden_pre = sae.encode_with_hidden_pre(x)
    sae.auxk_loss(x, sae.decode(feature_acts), hidden_pre, dead).backward()
    assert sae.W_enc.grad[:, dead].abs().sum() > 0 and sae.W_enc.grad[:, ~dead].abs().sum() == 0
    assert sae.W_dec.grad[dead].abs().sum() > 0 and sae.W_dec.grad[~dead].abs().sum() == 0
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 1.0}, dead_neuron_mask=dead,
                                                   n_training_steps=0, is_logging_step=False))
    assert set(out.losses) == {"mse_loss", "l1_loss", "auxiliary_reconstruction_loss"}
    off = relu.build_sae(relu.Config(), 16, 64, 10, device="cpu")  # the default: off, SAELens's two terms only
    assert set(off.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 1.0}, dead_neuron_mask=dead,
                                                        n_training_steps=0, is_logging_step=False)).losses) == {
        "mse_loss", "l1_loss"}


# ---- SAELens's reference architectures (BatchTopK, Matryoshka, JumpReLU) ---------------------------

def test_matryoshka_levels_are_fractions_of_d_sae_merged_when_tiny_and_unordered_or_open_ones_are_refused():
    from trainers import matryoshka

    assert matryoshka.widths(matryoshka.Config(), 4096) == [256, 512, 1024, 2048, 4096]
    assert matryoshka.widths(matryoshka.Config(levels="0.25,1"), 64) == [16, 64]
    for bad in ("0.5,0.25,1", "0.25,0.5", "0,1", "a,1"):
        with pytest.raises(VariantSettingError, match="matryoshka: levels"):
            matryoshka.check(matryoshka.Config(levels=bad))
    assert matryoshka.widths(matryoshka.Config(), 8) == [1, 2, 4, 8]  # 1/16 and 1/8 of 8 both round to 1 (at least)


@pytest.mark.parametrize("variant,optimizer", [(v, o) for v in ("batchtopk", "matryoshka", "jumprelu")
                                               for o in ("adam", "signum")])
def test_saelens_reference_variants_train_and_are_evaluated_as_the_jumprelu_sae_they_are_saved_as(tiny_model, variant,
                                                                                                  optimizer, tmp_path):
    import experiment

    mod = VARIANTS[variant]
    cfg = mod.Config(k=6, levels="0.25,0.5,1") if variant == "matryoshka" else (
        mod.Config(k=6) if variant == "batchtopk" else mod.Config(l0_coefficient=0.05))
    buf = ActivationBuffer(tiny_model, make_sequences(n_seq=40), [HOOK], seqs_per_fill=10)
    sae = mod.build_sae(cfg, 16, 32, 12, decoder_init_norm=1.0, metadata=SAEMetadata(**META))
    result = train_sae(sae, buf, TrainSettings(n_tokens=12 * 32, batch_size=32, lr=1e-2, log_every=5, optimizer=optimizer))
    curves = result.curves
    assert result.optimizer == optimizer
    assert all(math.isfinite(v) for v in curves["loss"])
    if variant != "jumprelu":  # BatchTopK keeps k x batch activations of the batch: the mean L0 is k
        assert result.final["l0"] == pytest.approx(6.0)
    if variant == "matryoshka":  # each inner prefix's own reconstruction is part of the loss
        assert {"inner_mse_loss_8", "inner_mse_loss_16"} <= set(curves) and "inner_mse_loss_32" not in curves
    sae.eval()
    sae.save_inference_model(tmp_path / "sae")
    evaluated = experiment.as_saved(sae, tmp_path / "sae", "cpu")
    assert evaluated.cfg.architecture() == "jumprelu"
    assert (evaluated is sae) == (variant == "jumprelu")  # the others are evaluated as saved, not as trained
    x = buf.next_batch(32).acts[:, 0].float()
    threshold = sae.topk_threshold.float() if variant != "jumprelu" else sae.threshold.detach()
    sae_in = x - sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else x
    pre = sae_in @ sae.W_enc.detach() + sae.b_enc.detach()  # the saved JumpReLU by hand: pre-activation where above
    if variant != "jumprelu":
        pre = pre * sae.W_dec.detach().norm(dim=-1)  # BatchTopK ranks pre-activations x decoder norm (SAELens default)
    by_hand = pre * (pre > threshold)
    with torch.no_grad():
        torch.testing.assert_close(evaluated.encode(x), by_hand, atol=1e-5, rtol=1e-5)
    assert float(threshold.min()) > 0  # a threshold was learned (BatchTopK: from the kept activations' minimum)
