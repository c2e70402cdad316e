"""The embedded Gemma 3 270M, wrapped by TransformerLens, computes what transformers computes."""

import pytest
import torch

from trainers.model import ModelError, load_hf_embedded, load_model


def test_embedded_model_logits_match_transformers_and_it_is_a_sane_lm():
    model = load_model()
    hf, tok = load_hf_embedded()
    text = "The capital of France is Paris. The largest planet in the solar system is Jupiter."
    tokens = tok(text, return_tensors="pt")["input_ids"]
    assert tokens[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
        loss = model(tokens, return_type="loss").item()
    assert model.cfg.n_layers == 18 and model.cfg.d_model == 640
    rel = (ours - theirs).norm() / theirs.norm()
    assert rel < 1e-4
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()
    assert loss < 4.0  # a real LM on plain English (uniform over 262k words would be 12.5)


def test_unknown_model_name_is_refused_clearly():
    with pytest.raises(ModelError, match="unknown model"):
        load_model("not/a-model")
