import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("JAXTYPING_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from trainers.data import Document, TokenSequences  # noqa: E402

BOS = 1


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random HookedTransformer: 3 layers, d_model 16."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=3, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=16, d_vocab=40,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg)
    model.eval()
    return model


def make_sequences(n_seq: int = 12, ctx: int = 9, seed: int = 0) -> TokenSequences:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 40, (n_seq, ctx), generator=g)
    tokens[:, 0] = BOS
    doc_index = torch.arange(n_seq, dtype=torch.int32)[:, None].expand(n_seq, ctx).clone()
    doc_index[:, 0] = -1
    return TokenSequences(tokens=tokens, doc_index=doc_index, documents=[Document(text=str(i)) for i in range(n_seq)],
                          source="random")
