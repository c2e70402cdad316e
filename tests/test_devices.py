"""Every device-dependent line, exercised on this CPU-only machine with the device and dtype forced:
the "auto" device and dtype choice as on a CUDA machine, the CUDA RNG streams a checkpoint and each
SAE of a sweep carry, a torchrun rank's GPU and backend, the per-device sparse-decoder choice, and a
whole run with the model in bf16 and the SAE in fp32 (the CUDA default's dtypes)."""

import json

import pytest
import torch

from tests.test_experiment import TINY_EVALS, run_experiment
from trainers import distributed, topk, trainer
from trainers.model import pick_device, pick_dtype


def test_auto_picks_cuda_and_bf16_model_where_cuda_is_visible_and_cpu_fp32_elsewhere(monkeypatch):
    assert pick_device("auto") == "cpu" and pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"
    assert pick_device("cuda:1") == "cuda:1"
    assert pick_dtype("auto", "cuda") == torch.bfloat16 and pick_dtype("auto", "cuda:1") == torch.bfloat16
    assert pick_dtype("float32", "cuda") == torch.float32


def test_rng_state_carries_the_cuda_streams_where_cuda_is_visible(monkeypatch):
    streams = {"state": [torch.tensor([1, 2, 3], dtype=torch.uint8)]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in streams["state"]])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: streams.update(state=list(states)))
    torch.manual_seed(5)
    saved = trainer.rng_state()
    assert saved[1] is not None and torch.equal(saved[1][0], torch.tensor([1, 2, 3], dtype=torch.uint8))
    first = torch.rand(3)
    streams["state"] = [torch.tensor([9], dtype=torch.uint8)]  # the CUDA stream moved on
    trainer.set_rng_state(saved)
    assert torch.equal(torch.rand(3), first)  # the CPU stream is back
    assert torch.equal(streams["state"][0], torch.tensor([1, 2, 3], dtype=torch.uint8))  # and the CUDA one


def test_a_torchrun_rank_takes_its_local_gpu_and_nccl(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.device_for("cuda") == "cuda:3" and distributed.device_for("cpu") == "cpu"
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(i))
    distributed.init("cuda")
    distributed.init("cpu")
    assert calls == [3, "nccl", "gloo"]


def test_shares_of_a_batch_and_a_fill_cover_it_once_in_order():
    for n, w in [(128, 2), (10, 3), (3, 4)]:
        spans = [distributed.bounds(n, r, w) for r in range(w)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(e - s for s, e in spans) - min(e - s for s, e in spans) <= 1


def test_the_sparse_topk_decoder_choice_reads_the_device_kind_of_any_cuda_index():
    cfg = topk.Config()
    assert topk.uses_sparse_decoder(cfg, "cuda:1") == topk.SPARSE_IS_FASTER["cuda"]
    assert topk.uses_sparse_decoder(cfg, "cpu") == topk.SPARSE_IS_FASTER["cpu"]


@pytest.mark.slow
def test_a_run_with_the_model_in_bf16_and_the_sae_in_fp32_matches_the_fp32_run(tmp_path):
    """The CUDA default's dtypes (bf16 model, fp32 SAE) end to end on the CPU: the activation cache
    stores bf16, training and the evals take bf16 activations into an fp32 SAE."""
    # core only: it is the eval whose model passes (clean, spliced, zero-ablated) all run in bf16 and read the SAE's
    # fp32 output back into the model; a bf16 forward is slow on a CPU (about 50 tokens/s here), so 50 steps
    args = ["--n_tokens=6400", "--batch_size=128", "--seqs_per_fill=32", "--log_every=10", "--eval_cache_dir=cache",
            "--evals=core"] + [a for s in TINY_EVALS["core"] for a in ("--set", f"core.{s}")]
    infos = {}
    for dtype in ("float32", "bfloat16"):
        proc = run_experiment(f"--out_dir=run_{dtype}", f"--dtype={dtype}", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        infos[dtype] = json.loads((tmp_path / f"run_{dtype}" / "final_info.json").read_text())
    bf16, fp32 = infos["bfloat16"], infos["float32"]
    assert bf16["environment"]["model_dtype"] == "torch.bfloat16" and bf16["status"] == "ok"
    caches = bf16["data"]["activation_cache"], fp32["data"]["activation_cache"]
    assert caches[0]["status"] == caches[1]["status"] == "built" and caches[0]["path"] != caches[1]["path"]
    assert abs(caches[0]["bytes"] / caches[1]["bytes"] - 0.5) < 0.01  # stored as bf16: 2 bytes a number
    sae_cfg = json.loads(next((tmp_path / "run_bfloat16" / "sae").glob("cfg.json")).read_text())
    assert sae_cfg["dtype"] == "float32"
    print({k: (fp32["summary"][k], bf16["summary"][k]) for k in ("explained_variance", "ce_loss_score", "l0")})
    # bf16 keeps 8 bits of mantissa: the numbers move, but not by much
    assert abs(bf16["summary"]["explained_variance"] - fp32["summary"]["explained_variance"]) < 0.02
    assert abs(bf16["summary"]["ce_loss_score"] - fp32["summary"]["ce_loss_score"]) < 0.05
    assert abs(bf16["summary"]["l0"] - fp32["summary"]["l0"]) < 0.1 * fp32["summary"]["l0"]
