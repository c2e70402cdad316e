"""Checkpoints: a training stopped after any step and resumed from its checkpoint in fresh objects ends
bit-identical to one that never stopped; damaged checkpoints are refused; the guards stop or flag
degenerate training."""

import json

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata

from tests.conftest import make_sequences
from trainers.data import Document
from trainers import VARIANTS, checkpoint
from trainers.buffer import ActivationBuffer
from trainers.trainer import Flags, NonFiniteTraining, Training, TrainSettings, train_saes

HOOK = "blocks.1.hook_resid_post"
META = dict(model_name="tiny", hook_name=HOOK, hook_layer=1, context_size=9, prepend_bos=True)


def _batches_equal(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("acts", "seq", "pos", "rows", "doc"))


@pytest.mark.parametrize("with_cache", [False, True])
def test_a_buffer_restored_from_its_state_serves_the_same_batches_and_neighbours(tiny_model, tmp_path, with_cache):
    from trainers.activation_cache import describe, open_or_build

    seqs = make_sequences(n_seq=30, ctx=9)
    cache = None
    if with_cache:
        desc = describe("tiny", torch.float32, "cpu", [HOOK], seqs, "train", 0)
        cache, _ = open_or_build(tiny_model, seqs, [HOOK], desc, tmp_path, 1.0, 4)
    make = lambda: ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4, seed=5, cache=cache)  # noqa: E731
    a = make()
    for _ in range(7):  # past several refills and into a second pass over the 30 sequences
        a.next_batch(12)
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    for _ in range(15):
        x, y = a.next_batch(12), b.next_batch(12)
        assert _batches_equal(x, y)
        for offset in (-2, 3):
            for u, v in zip(a.neighbours(x, offset), b.neighbours(y, offset)):
                assert torch.equal(u, v)
    assert a.served_description() == b.served_description()


def test_a_buffer_state_from_other_sequences_is_refused(tiny_model):
    from trainers.buffer import BufferError_

    a = ActivationBuffer(tiny_model, make_sequences(n_seq=30), [HOOK], seqs_per_fill=4)
    a.next_batch(8)
    b = ActivationBuffer(tiny_model, make_sequences(n_seq=20), [HOOK], seqs_per_fill=4)
    with pytest.raises(BufferError_, match="n_sequences 30"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("variant,optimizer", [(v, "adam") for v in VARIANTS] + [("relu", "signum"), ("topk", "signum")])
def test_training_resumed_from_a_checkpoint_in_fresh_objects_ends_bit_identical(tiny_model, tmp_path, variant, optimizer):
    """Every piece of state: the SAE, Adam (or schedule-free signum's z and average weights), the LR and L1 schedules, dead-feature counters, the
    variant's own (temporal's queue and RNG draws, orthogonal's EMAs), the buffer's position and the
    RNG streams; contrastive's and adversarial's probes and their optimizers."""
    from trainers.variant_sae import TextPool

    mod = VARIANTS[variant]
    settings = TrainSettings(n_tokens=30 * 16, batch_size=16, log_every=4, seqs_per_fill=6, seed=2, optimizer=optimizer)
    seqs = make_sequences(n_seq=60, ctx=9)
    forget = mod.Config().forget_topic if variant == "orthogonal" else "x"  # orthogonal groups by domain
    seqs.documents = [Document(d.text, topic=forget if i % 3 == 0 else "Arts") for i, d in enumerate(seqs.documents)]

    def fresh():
        torch.manual_seed(settings.seed)
        cfg = mod.Config(k=8) if hasattr(mod.Config(), "k") else mod.Config()  # the TopK family: k < d_sae 32
        sae = mod.build_sae(cfg, 16, 32, settings.n_steps, decoder_init_norm=1.0, metadata=SAEMetadata(**META))
        if variant == "adversarial":  # its labelled text pool, made here: the tiny model has no tokenizer
            g = torch.Generator().manual_seed(5)
            sae.pool = TextPool(torch.rand(12, 4, 16, generator=g), torch.ones(12, 4, dtype=torch.bool))
            sae.labels = torch.tensor([0.0, 1.0] * 6)
        return sae, ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6, seed=settings.seed)

    sae, buffer = fresh()
    whole = train_saes([Training(sae, buffer, settings)])[0]

    sae2, buffer2 = fresh()
    first = [Training(sae2, buffer2, settings)]
    saved = []

    def save(steps):
        if steps == 13:
            saved.append(checkpoint.save(tmp_path, first, {settings.seed: buffer2}, steps, [{"x": 1}]))
            raise KeyboardInterrupt  # the process dies right after the checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_saes(first, checkpoint=save, checkpoint_every=1)
    state = checkpoint.load(checkpoint.find(tmp_path), "cpu")
    assert state["steps_done"] == 13 and state["config"] == [{"x": 1}]
    buffer3 = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6, seed=settings.seed)
    buffer3.load_state_dict(state["buffers"][settings.seed])
    resumed = Training(state["saes"][0], buffer3, settings, resumed=state["trainings"][0])
    result = train_saes([resumed], start_step=13)[0]
    for name, p in sae.state_dict().items():
        assert torch.equal(p, resumed.sae.state_dict()[name]), name
    assert result.curves["loss"] == whole.curves["loss"] and result.final == whole.final
    assert result.n_steps == whole.n_steps and buffer3.served_description() == buffer.served_description()
    # the gradient projection is active again: decoder rows stay unit norm (at the training point: schedule-free's
    # average of unit rows, which the SAE holds after training, is not itself unit norm)
    resumed.trainer.optimizer.train() if optimizer == "signum" else None
    torch.testing.assert_close(resumed.sae.W_dec.norm(dim=-1), torch.ones(32))


def test_a_truncated_or_unmarked_checkpoint_is_refused_and_a_kill_between_renames_falls_back(tiny_model, tmp_path):
    settings = TrainSettings(n_tokens=4 * 16, batch_size=16, seqs_per_fill=6)
    seqs = make_sequences(n_seq=30, ctx=9)
    buffer = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6)
    sae = VARIANTS["relu"].build_sae(VARIANTS["relu"].Config(), 16, 32, 4, decoder_init_norm=1.0,
                                     metadata=SAEMetadata(**META))
    t = Training(sae, buffer, settings)
    assert checkpoint.find(tmp_path) is None  # none at all: nothing to resume, no error
    path = checkpoint.save(tmp_path, [t], {0: buffer}, 0, [])
    assert checkpoint.find(tmp_path) == path
    path.rename(tmp_path / "checkpoint.old")  # killed between the two renames
    assert checkpoint.find(tmp_path) == tmp_path / "checkpoint.old"
    (tmp_path / "checkpoint.old").rename(path)
    with open(path / "sae_0.pt", "r+b") as f:  # truncated
        f.truncate(100)
    with pytest.raises(checkpoint.CheckpointError, match="incomplete or damaged"):
        checkpoint.find(tmp_path)
    checkpoint.save(tmp_path, [t], {0: buffer}, 0, [])
    (path / checkpoint.MARKER).unlink()  # written up to, not including, its marker
    with pytest.raises(checkpoint.CheckpointError, match="incomplete or damaged"):
        checkpoint.find(tmp_path)
    checkpoint.save(tmp_path, [t], {0: buffer}, 0, [])
    meta = json.loads((path / checkpoint.MARKER).read_text())
    (path / "buffers.pt").write_bytes(b"x" * meta["files"]["buffers.pt"])  # right size, garbage inside
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(checkpoint.find(tmp_path), "cpu")


def _poison_l1_at_step(sae, step: int):
    """The SAE's L1 term becomes NaN at optimizer step `step` (0-based)."""
    original = sae.calculate_aux_loss

    def poisoned(step_input, *args, **kwargs):
        losses = original(step_input, *args, **kwargs)
        if step_input.n_training_steps == step:
            losses["l1_loss"] = losses["l1_loss"] * float("nan")
        return losses

    sae.calculate_aux_loss = poisoned
    return sae


def test_a_nonfinite_loss_term_stops_that_sae_at_its_step_naming_the_term(tiny_model):
    from trainers.trainer import train_sae

    settings = TrainSettings(n_tokens=20 * 16, batch_size=16, log_every=4, seqs_per_fill=6)
    seqs = make_sequences(n_seq=60, ctx=9)
    relu = VARIANTS["relu"]
    new = lambda: relu.build_sae(relu.Config(), 16, 32, settings.n_steps, decoder_init_norm=1.0,  # noqa: E731
                                 metadata=SAEMetadata(**META))
    buffer = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6)
    failed = []
    results = train_saes([Training(new(), buffer, settings), Training(_poison_l1_at_step(new(), 5), buffer, settings)],
                         on_failure=failed.append)
    assert failed == [1]
    assert results[1].failed.startswith("step 6: the loss term l1_loss is nan") and results[1].n_steps == 5
    assert results[0].failed is None and results[0].n_steps == 20  # the other SAE of the sweep went on
    with pytest.raises(NonFiniteTraining, match="step 6: the loss term l1_loss"):
        train_sae(_poison_l1_at_step(new(), 5), ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6), settings)


def test_degenerate_training_is_flagged_once_it_lasts_a_tenth_of_the_run(capsys):
    flags = Flags(n_steps=200, log_every=10, d_sae=100)  # window: 20 steps
    for step in range(0, 60, 10):
        flags.update(step, {"l0": 0.0 if step >= 20 else 5.0, "dead_frac": 0.1})
    assert [f["condition"] for f in flags.flagged] == ["L0 is 0 (every feature silent)"]
    assert flags.flagged[0]["from_step"] == 21 and flags.flagged[0]["flagged_at_step"] == 41
    flags.update(60, {"l0": 60.0, "dead_frac": 0.95})  # two other conditions start: not yet sustained
    assert len(flags.flagged) == 1
    for step in (70, 80):
        flags.update(step, {"l0": 60.0, "dead_frac": 0.95})
    assert [(f["condition"], f["from_step"], f["flagged_at_step"]) for f in flags.flagged[1:]] == [
        ("L0 is above half of d_sae (50): no sparsity", 61, 81), ("more than 90% of features are dead", 61, 81)]
    err = capsys.readouterr().err
    assert "[guard] step 41: L0 is 0" in err and "[guard] step 81: L0 is above half" in err
    assert "[guard] step 81: more than 90% of features are dead" in err


def test_the_final_gate_fails_degenerate_training_whichever_evals_ran():
    from experiment import training_failures

    final = {"loss": 1.0, "l0": 30.0, "dead_frac": 0.1}
    ok = {"n_steps": 10, "final": final}
    assert training_failures(ok, 100) == []
    assert "L0 is 0" in training_failures({**ok, "final": {**final, "l0": 0.0}}, 100)[0]
    assert "above half of d_sae" in training_failures({**ok, "final": {**final, "l0": 51.0}}, 100)[0]
    assert "dead" in training_failures({**ok, "final": {**final, "dead_frac": 0.91}}, 100)[0]
    assert "training stopped: step 6" in training_failures({**ok, "failed": "step 6: ..."}, 100)[0]
    assert "worse than predicting the mean" in training_failures({**ok, "final": {**final, "explained_variance": -0.2}},
                                                                 100)[0]
    assert training_failures({**ok, "final": {**final, "explained_variance": 0.01}}, 100) == []


@pytest.mark.parametrize("killed_after", ["record", "rename", "notes"])
def test_a_run_killed_while_being_put_in_place_is_finished_on_resume_with_one_notes_section(tmp_path, killed_after):
    from experiment import commit

    stage, out, notes = tmp_path / "run_1.partial" / "run_1", tmp_path / "run_1", tmp_path / "notes.txt"
    stage.mkdir(parents=True)
    (stage / "final_info.json").write_text("{}")
    (stage / "evals_done.pt").write_text("x")
    notes.write_text("## Run 0\n")
    (tmp_path / "notes.txt.tmp").write_text("## Run 0\n## Run 1\n")
    if killed_after in ("rename", "notes"):  # the kill came after the stage folder was renamed
        stage.rename(out)
    if killed_after == "notes":  # ... and after the notes were replaced
        (tmp_path / "notes.txt.tmp").replace(notes)
    commit(stage, out, notes)  # what --resume does for a run listed in written.json
    commit(stage, out, notes)  # and again: nothing more happens
    assert notes.read_text() == "## Run 0\n## Run 1\n"
    assert (out / "final_info.json").exists() and not stage.exists() and not (tmp_path / "notes.txt.tmp").exists()
    assert killed_after != "record" or not (out / "evals_done.pt").exists()
