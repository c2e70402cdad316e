"""A local stand-in for a hub model: EleutherAI/pythia-70m-deduped's exact architecture (its real
config.json values: GPTNeoX, 6 layers, d_model 512, 8 heads, vocab 50304, rotary on a quarter of each
head, parallel residual) with random weights, and a byte-level BPE tokenizer trained here on the
embedded Wikipedia text, written into a Hugging Face cache laid out as `huggingface_hub` leaves a
download: `hub/models--EleutherAI--pythia-70m-deduped/{blobs,refs/main,snapshots/<commit>/}`, each
snapshot file a symlink to its blob.

With `HF_HOME=<folder>` and `HF_HUB_OFFLINE=1`, transformers and TransformerLens read it exactly as
they read a real download, so `python experiment.py --model=EleutherAI/pythia-70m-deduped` goes
through the project's one hub loading path (trainers.model.load_model) with no test-only branch.

    python -m tests.hub_standin /tmp/hf_home    # build it by hand
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

NAME = "EleutherAI/pythia-70m-deduped"
# The real model's config.json (revision main), field by field.
PYTHIA_70M_CONFIG = dict(
    architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", hidden_size=512, intermediate_size=2048,
    num_attention_heads=8, num_hidden_layers=6, vocab_size=50304, max_position_embeddings=2048,
    rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, layer_norm_eps=1e-5, hidden_act="gelu",
    initializer_range=0.02, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False, attention_dropout=0.0,
    hidden_dropout=0.0, use_cache=True,
)
SPECIAL = "<|endoftext|>"  # pythia's BOS = EOS = PAD, id 0


def train_tokenizer(vocab_size: int = 8192, n_docs: int = 3000):
    """A byte-level BPE (the kind pythia uses) trained on embedded text, `<|endoftext|>` at id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainers.data import load_wiki_summaries

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((d.text for d in load_wiki_summaries()[:n_docs]), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL,
                                   pad_token=SPECIAL, model_max_length=2048)


def build(hf_home: Path, seed: int = 0) -> Path:
    """Write the stand-in under `hf_home`/hub; return the snapshot folder."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_70M_CONFIG))
    repo = Path(hf_home) / "hub" / ("models--" + NAME.replace("/", "--"))
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.float16).save_pretrained(tmp)  # the real checkpoint is fp16 too
        train_tokenizer().save_pretrained(tmp)
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        commit = hashlib.sha1(b"".join(hashlib.sha1(p.read_bytes()).digest() for p in files)).hexdigest()
        snapshot = repo / "snapshots" / commit
        shutil.rmtree(repo, ignore_errors=True)
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        for p in files:  # as huggingface_hub stores a download: content-addressed blobs, relative symlinks
            blob = repo / "blobs" / hashlib.sha256(p.read_bytes()).hexdigest()
            shutil.move(str(p), blob)
            (snapshot / p.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
