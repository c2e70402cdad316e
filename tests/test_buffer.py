import math

import pytest
import torch

from tests.conftest import make_sequences
from trainers.data import Document
from trainers.buffer import ActivationBuffer
from trainers.model import ModelError, hook_layer

HOOK = "blocks.1.hook_resid_post"


def model_acts(model, tokens, hook):
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return cache[hook]


def test_rows_are_the_models_activations_at_their_sequence_and_position_scaled(tiny_model):
    seqs = make_sequences()
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4, model_batch_size=3)
    batch = buf.next_batch(10)
    assert batch.acts.shape == (10, 1, 16)
    full = model_acts(tiny_model, seqs.tokens, HOOK)
    expected = full[batch.seq, batch.pos] * buf.scale[0]
    torch.testing.assert_close(batch.acts[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_bos_is_never_served_and_no_row_is_served_twice_or_lost(tiny_model):
    seqs = make_sequences(n_seq=48, ctx=9)  # enough that the corpus does not wrap around
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)  # 32 rows per fill
    seen = []
    for _ in range(12):
        b = buf.next_batch(8)
        assert (b.pos >= 1).all() and (b.pos <= 8).all()
        seen += list(zip(b.seq.tolist(), b.pos.tolist()))
    assert len(set(seen)) == 96
    # every row computed is either served or still waiting
    assert buf.n_fills * 32 == 96 + len(buf.queue) + len(buf.leftover)


def test_scale_makes_mean_norm_sqrt_d_on_the_first_fill(tiny_model):
    seqs = make_sequences()
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=12)
    batch = buf.next_batch(12 * 8 // 2)
    rest = buf.next_batch(12 * 8 // 2)
    norms = torch.cat([batch.acts, rest.acts])[:, 0].norm(dim=-1)
    assert norms.mean().item() == pytest.approx(math.sqrt(16), rel=1e-4)


def test_neighbours_are_true_neighbours_in_the_same_sequence(tiny_model):
    seqs = make_sequences()
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    buf.ensure_started()
    full = model_acts(tiny_model, seqs.tokens, HOOK) * buf.scale[0]
    for _ in range(5):  # across refills too
        batch = buf.next_batch(7)
        for offset in (1, -2, 3):
            acts, valid = buf.neighbours(batch, offset)
            target = batch.pos + offset
            assert torch.equal(valid, (batch.rows >= 0) & (target >= 1) & (target <= 8))
            ok = valid.nonzero().flatten()
            torch.testing.assert_close(acts[ok, 0], full[batch.seq[ok], target[ok]], rtol=1e-4, atol=1e-5)
        # an offset that lands on BOS (position 0) is never valid
        _, valid = buf.neighbours(batch, -batch.pos)
        assert not valid.any()


def test_several_hooks_come_from_one_forward_pass_that_stops_after_the_deepest(tiny_model):
    seqs = make_sequences()
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]
    buf = ActivationBuffer(tiny_model, seqs, hooks, seqs_per_fill=4)
    assert buf.stop_at_layer == 2
    batch = buf.next_batch(6)
    assert batch.acts.shape == (6, 2, 16)
    for i, hook in enumerate(hooks):
        full = model_acts(tiny_model, seqs.tokens, hook)
        torch.testing.assert_close(batch.acts[:, i], full[batch.seq, batch.pos] * buf.scale[i], rtol=1e-4, atol=1e-5)


def test_hook_outside_the_model_is_refused():
    with pytest.raises(ModelError, match="out of range"):
        hook_layer("blocks.7.hook_resid_post", n_layers=3)
    with pytest.raises(ModelError, match="not a residual-block hook"):
        hook_layer("embed", n_layers=3)


def test_mean_activation_is_the_mean_of_what_the_buffer_holds(tiny_model):
    seqs = make_sequences(n_seq=4)
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    mean = buf.mean_activation()
    full = model_acts(tiny_model, seqs.tokens, HOOK)[:, 1:] * buf.scale[0]
    torch.testing.assert_close(mean, full.reshape(-1, 16).mean(0), rtol=1e-4, atol=1e-5)


def test_neighbours_never_cross_into_another_document_packed_into_the_same_sequence(tiny_model):
    seqs = make_sequences(n_seq=6, ctx=9)
    # each sequence packs documents of 3 and 5 tokens: positions 1-3 document 2i, 4-8 document 2i+1
    for i in range(6):
        seqs.doc_index[i, 1:4], seqs.doc_index[i, 4:] = 2 * i, 2 * i + 1
    seqs.documents = [Document(str(j)) for j in range(12)]
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=6)
    batch = buf.next_batch(24)
    full = model_acts(tiny_model, seqs.tokens, HOOK) * buf.scale[0]
    assert torch.equal(batch.doc, seqs.doc_index[batch.seq, batch.pos].long())
    n_valid = 0
    for offset in (-4, -2, -1, 1, 2, 4):
        acts, valid = buf.neighbours(batch, offset)
        target = batch.pos + offset
        inside = (target >= 1) & (target <= 8)
        same_doc = inside & (seqs.doc_index[batch.seq, target.clamp(0, 8)].long() == batch.doc)
        assert torch.equal(valid, same_doc), offset
        ok = valid.nonzero().flatten()
        torch.testing.assert_close(acts[ok, 0], full[batch.seq[ok], target[ok]], rtol=1e-4, atol=1e-5)
        n_valid += len(ok)
    assert n_valid > 20


def test_the_buffer_reports_what_it_served_and_how_many_rows_it_served_again(tiny_model):
    seqs = make_sequences(n_seq=8, ctx=9)  # 64 rows
    buf = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4)
    for _ in range(6):
        buf.next_batch(8)  # 48 rows: one pass, nothing twice
    d = buf.served_description()
    assert d["rows_served"] == 48 and d["rows_repeated"] == 0 and d["sequences_available"] == 8
    for _ in range(10):
        buf.next_batch(8)  # 128 rows from 64: a second pass
    d = buf.served_description()
    assert d["rows_served"] == 128 and d["rows_repeated"] == 128 - 64 and d["passes_started"] >= 2
    assert d["sequences_served"] == 8 and d["documents_served"] == 8
