"""Adding AdaLLaVA's placeholder tokens (`<image>`, `<latency>`, padding) to a tokenizer and a model."""

from __future__ import annotations

import torch

from .processing_ada_llava import add_latency_token


def set_mean_rows(weight: torch.Tensor, base_rows: int, rows) -> None:
    """Set `rows` of an embedding or LM-head `weight` (in place) to the exact mean of its first `base_rows` rows,
    computed in float32: how every placeholder row starts, in a live model and in a converted checkpoint alike."""
    rows = list(rows)
    if rows:
        with torch.no_grad():
            weight[rows] = weight[:base_rows].float().mean(0).to(weight.dtype)


def add_placeholder_tokens(model, tokenizer, pad_to_multiple_of: int | None = 64) -> dict[str, int]:
    """
    Make sure `tokenizer` has `<image>`, `<latency>` and a pad token, grow the model's embeddings to match, and set
    every new row of `embed_tokens` and `lm_head` to the exact mean of the existing rows (no noise). A mean `lm_head`
    row scores the mean of the other logits, so greedy decoding can never pick it; the ids are also suppressed in
    `generation_config`, so sampling cannot either. Returns the ids and updates `model.config` with them.
    """
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    latency_id = add_latency_token(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "latency_token_id": latency_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            set_mean_rows(weight, old_rows, range(old_rows, weight.shape[0]))
    model.config.image_token_id = ids["image_token_id"]
    model.config.latency_token_id = ids["latency_token_id"]
    model.config.text_config.pad_token_id = ids["pad_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model._suppress_placeholder_tokens()
    return ids
