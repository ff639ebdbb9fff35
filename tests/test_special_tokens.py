"""New placeholder rows are exact means and never generated."""

import torch

from ada_hf.special_tokens import add_placeholder_tokens
from ada_hf.tiny_model import build_tiny_model, tiny_config
from ada_hf.tiny_processor import build_tiny_tokenizer


def test_placeholder_rows_are_exact_means_and_suppressed():
    tokenizer = build_tiny_tokenizer()
    words = len(tokenizer) - 3  # the tiny tokenizer ends with <image>, <pad>, <latency>
    # A model trained before the placeholders existed: its vocabulary stops at the words.
    model = build_tiny_model(tiny_config(words, image_token_id=0, latency_token_id=None, scheduler_type="L"))
    old_head = model.lm_head.weight.detach().clone()
    ids = add_placeholder_tokens(model, tokenizer, pad_to_multiple_of=64)
    assert model.lm_head.weight.shape[0] % 64 == 0 and model.lm_head.weight.shape[0] >= len(tokenizer)
    assert ids["latency_token_id"] == tokenizer.convert_tokens_to_ids("<latency>") == model.config.latency_token_id
    for row in ids.values():
        assert torch.equal(model.lm_head.weight[row], old_head.mean(0))
    assert set(ids.values()) <= set(model.generation_config.suppress_tokens)
    hidden = torch.randn(5, model.config.text_config.hidden_size)
    logits = model.lm_head(hidden)
    torch.testing.assert_close(logits[:, ids["image_token_id"]], logits[:, :words].mean(-1), atol=1e-5, rtol=0)
    # Generation with a budget works on the grown model and never emits a placeholder.
    model.generation_config.eos_token_id = None
    prompt = tokenizer("What is in the picture ?", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**prompt, latency=0.6, max_new_tokens=20, do_sample=True, top_k=0)
    assert not torch.isin(out[:, prompt["input_ids"].shape[1] :], torch.tensor(list(ids.values()))).any()
