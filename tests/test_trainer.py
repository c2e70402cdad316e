import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

from tests.conftest import make_sequences
from trainers import relu, topk
from trainers.buffer import ActivationBuffer
from trainers.metrics import explained_variance
from trainers.trainer import TrainSettings, fold_into_model_space, train_sae

HOOK = "blocks.1.hook_resid_post"
META = dict(model_name="tiny", hook_name=HOOK, hook_layer=1, context_size=9, prepend_bos=True)


def build(variant, d_sae=32, n_steps=10, **cfg):
    mod = {"relu": relu, "topk": topk}[variant]
    return mod.build_sae(mod.Config(**cfg), 16, d_sae, n_steps, decoder_init_norm=1.0, metadata=SAEMetadata(**META))


def test_relu_l1_loss_matches_hand_computation():
    sae = relu.build_sae(relu.Config(l1_coefficient=0.5, l1_warm_up_frac=0.0), 2, 2, n_steps=1, decoder_init_norm=1.0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[1.0, -1.0], [3.0, 2.0]])
    # centred: [[1,-2],[3,1]] -> f = [[1,0],[3,1]] -> x_hat = f + b_dec = [[1,1],[3,2]]
    # squared error per row: [0+4, 0+0] -> mse = mean(4, 0) = 2; L1 per row [1, 4] -> 0.5 * 2.5 = 1.25
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 0.5}, dead_neuron_mask=None,
                                                   n_training_steps=0, is_logging_step=False))
    assert out.losses["mse_loss"].item() == pytest.approx(2.0)
    assert out.losses["l1_loss"].item() == pytest.approx(1.25)
    assert out.loss.item() == pytest.approx(3.25)


def test_explained_variance_is_zero_for_the_mean_and_one_for_perfect_on_large_mean_data():
    g = torch.Generator().manual_seed(0)
    x = 1000.0 + torch.randn(500, 8, generator=g, dtype=torch.float64)
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-9)
    assert explained_variance(x, x) == pytest.approx(1.0)
    # halving the deviations from the mean leaves a quarter of the variance: EV = 0.75
    half = x.mean(0) + 0.5 * (x - x.mean(0))
    assert explained_variance(x, half) == pytest.approx(0.75)


def test_explained_variance_charges_a_constant_offset_in_the_reconstruction():
    g = torch.Generator().manual_seed(1)
    x = 50.0 + torch.randn(400, 4, generator=g, dtype=torch.float64)
    offset = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    # x + c: the error is c on every row, so FVU = |c|^2 / (total variance per row) = 1 / 4 here (unit variances)
    ev = explained_variance(x, x + offset)
    total_per_row = (x - x.mean(0)).pow(2).sum(1).mean()
    assert ev == pytest.approx(1 - 1 / float(total_per_row)) and ev < 0.8
    assert explained_variance(x, x.mean(0) + offset) < 0  # the mean off by a constant: worse than the mean


@pytest.mark.parametrize("variant", ["relu", "topk"])
def test_training_keeps_decoder_unit_norm_starts_b_dec_at_mean_and_moves_every_parameter(tiny_model, variant):
    seqs = make_sequences(n_seq=16)
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    sae = build(variant, n_steps=12, **({"k": 4} if variant == "topk" else {}))
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    mean = buf.mean_activation()
    result = train_sae(sae, buf, TrainSettings(n_tokens=12 * 8, batch_size=8, lr=1e-2, log_every=5))
    assert result.n_steps == 12
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32), rtol=1e-5, atol=1e-5)
    for name, p in sae.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not move: no gradient reached it"
    assert (sae.b_dec - mean).norm() < (sae.b_dec - before["b_dec"]).norm()  # b_dec started at the mean
    assert result.curves["step"] == [1, 6, 11, 12]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in result.curves.values())
    assert set(result.final) >= {"loss", "l0", "explained_variance", "mse_loss", "dead_frac"}


@pytest.mark.parametrize("variant", ["relu", "topk"])
def test_folded_sae_reconstructs_raw_activations_like_the_trained_one_and_loads_back(tmp_path, variant):
    torch.manual_seed(0)
    sae = build(variant, **({"k": 4} if variant == "topk" else {}))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        sae.W_dec.data /= sae.W_dec.data.norm(dim=-1, keepdim=True)
    scale = 0.05
    x_raw = 40 * torch.randn(20, 16)
    with torch.no_grad():
        expected = sae(x_raw * scale) / scale
        fold_into_model_space(sae, scale)
        torch.testing.assert_close(sae(x_raw), expected, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    sae.save_inference_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_raw), expected, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(loaded.encode(x_raw), sae.encode(x_raw))
    assert loaded.cfg.metadata.hook_name == HOOK


@pytest.mark.parametrize("variant,field,values", [("relu", "l1_coefficient", (0.5, 2.0)),
                                                  ("temporal", "weight", (0.1, 1.0))])
def test_saes_trained_together_on_shared_batches_equal_each_trained_alone(tiny_model, variant, field, values):
    """train_saes hands every SAE the same batch; each keeps its own RNG stream (temporal draws its
    offsets and negatives at random), so each ends bit-identical to the same SAE trained alone."""
    from trainers import VARIANTS
    from trainers.trainer import Training, train_saes

    mod = VARIANTS[variant]
    settings = TrainSettings(n_tokens=24 * 16, batch_size=16, log_every=5, seqs_per_fill=6, seed=3)
    seqs = make_sequences(n_seq=60, ctx=9)

    def sae_with(value):
        torch.manual_seed(settings.seed)  # as experiment.build_sae does before building
        cfg = mod.Config(**{field: value})
        return mod.build_sae(cfg, 16, 32, settings.n_steps, decoder_init_norm=1.0, metadata=SAEMetadata(**META))

    def buffer():
        return ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6, seed=settings.seed)

    shared = buffer()
    together = [sae_with(v) for v in values]
    results = train_saes([Training(sae, shared, settings) for sae in together])
    for value, sae, result in zip(values, together, results):
        alone = sae_with(value)
        alone_result = train_sae(alone, buffer(), settings)
        for name, p in alone.state_dict().items():
            assert torch.equal(p, sae.state_dict()[name]), (value, name)
        assert result.curves["loss"] == alone_result.curves["loss"]
    assert not torch.equal(together[0].W_enc, together[1].W_enc)


def test_sign_sgd_moves_each_parameter_by_lr_against_the_sign_of_its_gradient():
    from trainers.trainer import SignSGD

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    p.grad = torch.tensor([0.3, -1e-6, 0.0, -40.0])
    SignSGD([p], lr=0.1).step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 3.0, 0.6]))


def test_learning_rate_rule_scales_with_d_sae_and_an_explicit_lr_wins():
    from trainers.trainer import learning_rate

    assert learning_rate(TrainSettings(), 4096) == pytest.approx(1.6e-3)  # adam: 8e-4 x sqrt(16384 / 4096)
    assert learning_rate(TrainSettings(optimizer="signum"), 16384) == pytest.approx(5e-3)
    assert learning_rate(TrainSettings(optimizer="signum"), 65536) == pytest.approx(2.5e-3)
    assert learning_rate(TrainSettings(optimizer="signum", lr=1e-3), 4096) == 1e-3
    rates = {"adam": 2e-4}  # a variant's own rule (its LEARNING_RATES) replaces the shared one for its optimizers only
    assert learning_rate(TrainSettings(), 4096, rates) == pytest.approx(4e-4)
    assert learning_rate(TrainSettings(optimizer="signum"), 4096, rates) == pytest.approx(1e-2)
    assert learning_rate(TrainSettings(lr=1e-4), 4096, rates) == 1e-4


@pytest.mark.parametrize("variant", ["relu", "topk"])
def test_signum_trains_and_leaves_the_schedule_free_average_to_evaluate(tiny_model, variant):
    """Schedule-free takes its gradients at y and keeps the average x: after training the SAE must hold x
    (x = (y - (1 - m) z) / m, with y the last training point and z the optimizer's iterate)."""
    from trainers.trainer import Training, train_saes

    seqs = make_sequences(n_seq=16)
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    sae = build(variant, n_steps=12, **({"k": 4} if variant == "topk" else {}))
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    training = Training(sae, buf, TrainSettings(n_tokens=12 * 8, batch_size=8, log_every=5, optimizer="signum"))
    last_y = {}
    step = training.step

    def step_and_keep_y(i, batch):
        step(i, batch)
        last_y.update({n: p.detach().clone() for n, p in sae.named_parameters()})

    training.step = step_and_keep_y
    result = train_saes([training])[0]
    assert result.optimizer == "signum" and result.lr == pytest.approx(5e-3 * (16384 / 32) ** 0.5)
    opt = training.trainer.optimizer
    m = opt.momentum
    # the biases, in activation units, step lr x the buffer's normalization scale: lr in model units
    weights, biases = opt.param_groups
    assert weights["lr"] == pytest.approx(result.lr) and biases["lr"] == pytest.approx(result.lr * float(buf.scale[0]))
    assert {id(p) for p in biases["params"]} == {id(sae.b_enc), id(sae.b_dec)}
    for name, p in sae.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not move"
        z = opt.state[p]["z"]
        torch.testing.assert_close(p.detach(), (last_y[name] - (1 - m) * z) / m, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(p, last_y[name])
    x = {n: p.detach().clone() for n, p in sae.named_parameters()}
    training.eval_weights()  # idempotent
    assert all(torch.equal(p, x[n]) for n, p in sae.named_parameters())
    assert result.final["explained_variance"] > 0


def test_saes_with_different_optimizers_trained_together_equal_each_trained_alone(tiny_model):
    """`--sweep optimizer=adam,signum`: each SAE keeps its own optimizer on the shared batches."""
    from trainers.trainer import Training, train_saes

    seqs = make_sequences(n_seq=60, ctx=9)
    runs = {o: TrainSettings(n_tokens=20 * 16, batch_size=16, log_every=5, seqs_per_fill=6, seed=1, optimizer=o)
            for o in ("adam", "signum")}

    def sae():
        torch.manual_seed(1)
        return build("topk", n_steps=20, k=4)

    shared = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6, seed=1)
    together = {o: sae() for o in runs}
    train_saes([Training(together[o], shared, s) for o, s in runs.items()])
    for o, s in runs.items():
        alone = sae()
        train_sae(alone, ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6, seed=1), s)
        for name, p in alone.state_dict().items():
            assert torch.equal(p, together[o].state_dict()[name]), (o, name)
    assert not torch.equal(together["adam"].W_enc, together["signum"].W_enc)


@pytest.mark.parametrize("variant", ["relu", "topk"])
def test_pre_activations_start_centred_on_the_training_data(tiny_model, variant):
    """b_dec starts at the data mean and is subtracted before the encoder (b_enc 0): each feature's
    pre-activation averages 0 over the data the buffer holds, whatever the random encoder."""
    from trainers.trainer import Training

    buf = ActivationBuffer(tiny_model, make_sequences(n_seq=16), [HOOK], seqs_per_fill=4)
    sae = build(variant, n_steps=12, **({"k": 4} if variant == "topk" else {}))
    Training(sae, buf, TrainSettings(n_tokens=12 * 8, batch_size=8))
    filled = buf.slot_seq.repeat_interleave(buf.seq_len) >= 0
    x = buf.storage[filled, 0].float()  # the rows the buffer holds, normalized as training sees them
    with torch.no_grad():
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    scale = pre.abs().mean()
    assert pre.mean(0).abs().max() < 1e-4 * scale + 1e-5


def test_encoder_init_norm_sets_each_encoder_row_norm_along_its_decoder_row(tiny_model):
    """--encoder_init_norm scales the tied init: every encoder row (a W_enc column) starts with that norm
    and the direction of its decoder row; 1 leaves SAELens's init as it was."""
    from trainers.trainer import Training

    buf = ActivationBuffer(tiny_model, make_sequences(n_seq=16), [HOOK], seqs_per_fill=4)
    for norm in (1.0, 0.58):
        sae = build("topk", n_steps=12, k=4)
        Training(sae, buf, TrainSettings(n_tokens=12 * 8, batch_size=8, encoder_init_norm=norm))
        rows = sae.W_enc.detach().T
        assert torch.allclose(rows.norm(dim=1), torch.full((rows.shape[0],), norm), atol=1e-5)
        assert torch.allclose(rows / norm, sae.W_dec.detach(), atol=1e-5)
