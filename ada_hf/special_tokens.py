"""Adding AdaLLaVA's placeholder tokens (`<image>`, `<latency>`, padding) to a tokenizer and a model."""

from __future__ import annotations

import torch

from .processing_ada_llava import add_latency_token


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
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    old_rows = embed.weight.shape[0]
    if len(tokenizer) > old_rows:
        mean_embed = embed.weight.detach().mean(0)
        mean_head = head.weight.detach().mean(0)
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old_rows:] = mean_embed
            model.get_output_embeddings().weight[old_rows:] = mean_head
    model.config.image_token_id = ids["image_token_id"]
    model.config.latency_token_id = ids["latency_token_id"]
    model.config.text_config.pad_token_id = ids["pad_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model._suppress_placeholder_tokens()
    return ids
