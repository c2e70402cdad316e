"""The activation cache: a buffer reading it serves what a buffer running the model serves; a cache of
other text is never read; one left by a run that died is rebuilt, never read; the cap holds."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_sequences
from trainers.activation_cache import ACTS, MARKER, describe, open_complete, open_or_build
from trainers.buffer import ActivationBuffer

HOOK = "blocks.1.hook_resid_post"
ROOT = Path(__file__).resolve().parent.parent


def cached(model, seqs, tmp_path, max_gb=1.0, hooks=(HOOK,), data_seed=0):
    desc = describe("tiny", next(model.parameters()).dtype, "cpu", list(hooks), seqs, "train", data_seed)
    return open_or_build(model, seqs, list(hooks), desc, tmp_path, max_gb, batch_size=5)


def test_a_buffer_reading_the_cache_serves_the_rows_neighbours_and_documents_the_model_gives(tiny_model, tmp_path,
                                                                                            monkeypatch):
    seqs = make_sequences(n_seq=40, ctx=9)
    cache, report = cached(tiny_model, seqs, tmp_path)
    assert report.status == "built" and report.bytes >= 40 * 8 * 16 * 4
    live = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4, model_batch_size=3, seed=7)
    live_batches = [live.next_batch(10) for _ in range(9)]  # across several refills
    live_neighbours = [live.neighbours(b, 2) for b in live_batches[-1:]]

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the cache holds these activations")

    monkeypatch.setattr(tiny_model, "run_with_cache", no_model)
    from_disk = ActivationBuffer(tiny_model, seqs, [HOOK], seqs_per_fill=4, model_batch_size=3, seed=7, cache=cache)
    disk_batches = [from_disk.next_batch(10) for _ in range(9)]
    for a, b in zip(live_batches, disk_batches):
        for field in ("seq", "pos", "rows", "doc"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        torch.testing.assert_close(a.acts, b.acts, rtol=1e-6, atol=1e-6)
    acts, valid = from_disk.neighbours(disk_batches[-1], 2)
    assert torch.equal(valid, live_neighbours[0][1])
    torch.testing.assert_close(acts, live_neighbours[0][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(from_disk.scale, live.scale)
    assert from_disk.n_model_tokens == 0 and live.n_model_tokens > 0


def test_the_cache_holds_the_models_activations_tokens_and_documents_of_every_sequence(tiny_model, tmp_path):
    seqs = make_sequences(n_seq=11, ctx=9)
    cache, _ = cached(tiny_model, seqs, tmp_path, hooks=(HOOK, "blocks.0.hook_resid_post"))
    _, run = tiny_model.run_with_cache(seqs.tokens)
    ids = torch.tensor([10, 0, 3])  # any order, as the buffer asks
    got = cache.fetch(ids)
    assert got.shape == (3, 8, 2, 16)
    torch.testing.assert_close(got[:, :, 0], run[HOOK][ids, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, :, 1], run["blocks.0.hook_resid_post"][ids, 1:], rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.tokens, seqs.tokens) and torch.equal(cache.doc_index, seqs.doc_index)


def test_a_bfloat16_model_is_cached_bit_for_bit_in_its_own_dtype(tiny_model, tmp_path):
    import copy

    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    seqs = make_sequences(n_seq=6, ctx=9)
    cache, _ = cached(model, seqs, tmp_path)
    _, run = model.run_with_cache(seqs.tokens, names_filter=[HOOK], stop_at_layer=2)
    got = cache.fetch(torch.arange(6))
    assert got.dtype == torch.bfloat16 and torch.equal(got[:, :, 0], run[HOOK][:, 1:])


def test_a_cache_of_other_text_another_hook_or_another_data_seed_is_never_read(tiny_model, tmp_path):
    seqs = make_sequences(n_seq=8, ctx=9)
    _, first = cached(tiny_model, seqs, tmp_path)
    assert cached(tiny_model, seqs, tmp_path)[1].status == "read"
    other_text = make_sequences(n_seq=8, ctx=9, seed=1)
    for report in (cached(tiny_model, other_text, tmp_path)[1],
                   cached(tiny_model, seqs, tmp_path, hooks=("blocks.2.hook_resid_post",))[1],
                   cached(tiny_model, seqs, tmp_path, data_seed=1)[1]):
        assert report.status == "built" and report.path != first.path
    # the key is the content: a folder whose marker describes something else is not opened
    desc = json.loads((Path(first.path) / MARKER).read_text())["description"]
    assert open_complete(Path(first.path), {**desc, "hooks": ["blocks.2.hook_resid_post"]}) is None


def test_a_cache_a_run_left_incomplete_is_removed_and_rebuilt_never_read(tiny_model, tmp_path):
    seqs = make_sequences(n_seq=8, ctx=9)
    cache, report = cached(tiny_model, seqs, tmp_path)
    good = cache.fetch(torch.arange(8)).clone()
    root = Path(report.path)
    # 1. a file shorter than the marker says (a copy cut short, a disk that filled up)
    with open(root / ACTS, "r+b") as f:
        f.truncate(100)
    cache, report = cached(tiny_model, seqs, tmp_path)
    assert report.status == "built" and "incomplete" in report.note
    assert torch.equal(cache.fetch(torch.arange(8)), good)
    # 2. no completion marker (the writer died before the last step)
    (root / MARKER).unlink()
    assert cached(tiny_model, seqs, tmp_path)[1].status == "built"
    # 3. a writer's temporary folder whose process is gone is removed, and never read
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f"{root.name}.tmp-{dead.pid}"
    leftover.mkdir()
    (leftover / ACTS).write_bytes(b"\0" * 64)
    assert cached(tiny_model, seqs, tmp_path)[1].status == "read"
    assert not leftover.exists()


def test_the_cap_removes_the_least_recently_used_cache_and_refuses_one_that_cannot_fit(tiny_model, tmp_path):
    a, b = make_sequences(n_seq=20, ctx=9, seed=1), make_sequences(n_seq=20, ctx=9, seed=2)
    size = cached(tiny_model, a, tmp_path)[1].bytes
    cap_gb = 1.5 * size / 1e9  # room for one cache, not two
    report_b = cached(tiny_model, b, tmp_path, max_gb=cap_gb)[1]
    assert report_b.status == "built"
    assert [p.name for p in tmp_path.iterdir()] == [Path(report_b.path).name]  # a was removed
    report = cached(tiny_model, a, tmp_path, max_gb=0.5 * size / 1e9)[1]
    assert report.status == "over_cap" and "over --activation_cache_max_gb" in report.note
    assert cached(tiny_model, b, tmp_path, max_gb=cap_gb)[1].status == "read"


@pytest.mark.slow
def test_a_cache_writer_killed_with_sigkill_leaves_nothing_that_is_read(tmp_path):
    """A real process building a cache is killed mid-way; the next one rebuilds it whole."""
    script = f"""
import sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import make_sequences
from transformer_lens import HookedTransformer, HookedTransformerConfig
from trainers.activation_cache import describe, open_or_build
torch.manual_seed(0)
model = HookedTransformer(HookedTransformerConfig(n_layers=3, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=16,
                                                  d_vocab=40, act_fn="gelu", normalization_type="LN", seed=0)).eval()
slow = model.run_with_cache
def run_slowly(*a, **k):
    time.sleep(0.5)
    return slow(*a, **k)
model.run_with_cache = run_slowly
seqs = make_sequences(n_seq=40, ctx=9)
desc = describe("tiny", torch.float32, "cpu", [{HOOK!r}], seqs, "train", 0)
print("building", flush=True)
open_or_build(model, seqs, [{HOOK!r}], desc, __import__("pathlib").Path({str(tmp_path)!r}), 1.0, batch_size=1)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAXTYPING_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "building"
    deadline = time.time() + 120
    while not any(p.name.count(".tmp-") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # a few sequences written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and ".tmp-" in left[0].name  # nothing under the final name
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=3, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=16,
                                                      d_vocab=40, act_fn="gelu", normalization_type="LN", seed=0)).eval()
    seqs = make_sequences(n_seq=40, ctx=9)
    cache, report = cached(model, seqs, tmp_path)
    assert report.status == "built" and [p.name for p in tmp_path.iterdir()] == [Path(report.path).name]
    _, run = model.run_with_cache(seqs.tokens, names_filter=[HOOK])
    torch.testing.assert_close(cache.fetch(torch.arange(40))[:, :, 0], run[HOOK][:, 1:], rtol=1e-5, atol=1e-5)
    assert np.isfinite(cache.fetch(torch.arange(40)).numpy()).all()
