"""iLLaVA's LLM-stage merging: the score row, the merge, a hand-written reference, caching, batching, the scheduler."""

import pytest
import torch
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ada_hf.token_reduction import illava_merge, last_token_attention
from conftest import IMAGE_ID, left_pad, make_model
from test_llavolta import IMAGE_TOKENS, model_with_images, pixels, prompt

MERGE = dict(enable_illava_llm=True, illava_llm_k=2, illava_llm_r=0.5)


def full_attention_last_row(attn, hidden, cos, sin):
    """The whole eager attention matrix with an explicit causal mask; its last row, averaged over heads."""
    b, length, _ = hidden.shape
    q = attn.q_proj(hidden).view(b, length, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, length, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores = q @ k.transpose(-1, -2) * attn.scaling
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return probs[:, :, -1].mean(1)


def test_one_query_row_equals_the_full_causal_attention_matrix():
    model = model_with_images(None)
    lm = model.model.language_model
    hidden = torch.randn(1, 12, 32)
    pos = torch.arange(12)[None]
    cos, sin = lm.rotary_emb(hidden, pos)
    attn = lm.layers[1].self_attn
    with torch.no_grad():
        row = last_token_attention(attn, hidden, (cos, sin), None, torch.tensor([11]))
        full = full_attention_last_row(attn, hidden, cos, sin)
    torch.testing.assert_close(row, full, atol=1e-6, rtol=0)


def test_merge_weights_and_kept_tokens():
    image = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    hidden = torch.arange(7, dtype=torch.float32)[None, :, None].repeat(1, 1, 2)
    scores = torch.tensor([[0.0, 0.5, 0.1, 0.4, 0.2, 0.3, 0.0]])  # image tokens 1..5: most attended 1, then 3, 5, 4, 2
    merged, kept = illava_merge(hidden, image, scores, keep=0.6)  # remove round(5 * 0.4) = 2 tokens
    # The 3 least attended, most attended first: 5 (anchor, weight 1), 4 (weight 2), 2 (weight 3).
    assert kept.tolist() == [[0, 1, 3, 5, 6]]
    assert merged[0, 3, 0].item() == pytest.approx((5 * 1 + 4 * 2 + 2 * 3) / 6)
    assert merged[0, :3, 0].tolist() == [0.0, 1.0, 3.0]
    assert illava_merge(hidden, image, scores, keep=1.0) is None  # keep everything: a no-op


def reference_logits(model, ids, pix, k, keep):
    lm = model.model.language_model
    feats = torch.cat(model.model.get_image_features(pixel_values=pix).pooler_output)
    h = model.get_input_embeddings()(ids).masked_scatter((ids == IMAGE_ID)[..., None], feats)
    pos = torch.arange(ids.shape[1])[None]
    image = ids == IMAGE_ID
    for i, block in enumerate(lm.layers):
        cos, sin = lm.rotary_emb(h, pos)
        if i == k - 1:
            scores = full_attention_last_row(block.self_attn, block.input_layernorm(h), cos, sin)
        if i == k:
            h, kept = illava_merge(h, image, scores, keep)
            pos, image = pos.gather(1, kept), image.gather(1, kept)
            cos, sin = lm.rotary_emb(h, pos)
        mask = create_causal_mask(config=lm.config, inputs_embeds=h, attention_mask=None, past_key_values=None)
        h = block(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
    return model.lm_head(lm.norm(h))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_merged_forward_matches_a_hand_written_reference(attn):
    model = model_with_images(None, attn=attn)
    ids, pix = prompt()[None], pixels()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pix, **MERGE)
        ref = reference_logits(model, ids, pix, k=2, keep=0.5)
    assert ours.logits.shape[1] == ids.shape[1] - IMAGE_TOKENS // 2
    torch.testing.assert_close(ours.logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler_type, latency", [(None, None), ("L", 0.6), ("H", 0.7)])
def test_cached_generation_equals_recomputation(scheduler_type, latency):
    model = model_with_images(scheduler_type)
    kw = dict(pixel_values=pixels(), max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
              output_logits=True, enable_illava_llm=True, illava_llm_k="2-4", illava_llm_r=0.75)  # fmt: skip
    if latency is not None:
        kw["latency"] = latency
    cached = model.generate(input_ids=prompt()[None], use_cache=True, **kw)
    uncached = model.generate(input_ids=prompt()[None], use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_left_padded_batch_equals_each_row_alone():
    model = model_with_images("H")
    rows = [prompt(0, 3, 4), prompt(1, 1, 2), prompt(2, 5, 1)]
    ids, mask = left_pad(rows)
    budgets = torch.tensor([1.0, 0.75, 0.5])
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True, **MERGE)
    batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels(3), latency=budgets, **kw)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], pixel_values=pixels(3)[i : i + 1], latency=float(budgets[i]), **kw)
        assert torch.equal(batch.sequences[i, ids.shape[1] :], alone.sequences[0, row.shape[0] :])
        for a, b in zip(batch.logits, alone.logits):
            torch.testing.assert_close(a[i], b[0], atol=1e-5, rtol=0)


def test_scores_come_from_the_token_before_latency():
    # With a <latency> token appended, the merge must equal the merge of the same prompt scored at its last token.
    model = model_with_images("L")
    ids, pix = prompt(latency=True)[None], pixels()
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pix, latency=1.0, **MERGE)
        plain = model(input_ids=ids[:, :-1], pixel_values=pix, **MERGE)
    assert torch.equal(out.token_reductions[0].kept[:, :-1], plain.token_reductions[0].kept)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(illava_llm_r=1), "ambiguous"),
        (dict(illava_llm_r=1.5), r"keep ratio in \(0, 1\]"),
        (dict(illava_llm_r=16), "would remove 16 of 16"),
        (dict(illava_llm_k=0), r"must list decoder layers in \[1, 6\)"),
        (dict(illava_llm_k="2-x"), "Cannot read the layer list"),
        (dict(llavolta_grouping="avgpool1d", llavolta_stride=4), "cannot be combined"),
    ],
)
def test_bad_settings(kwargs, message):
    model = model_with_images(None)
    with pytest.raises(ValueError, match=message):
        model(input_ids=prompt()[None], pixel_values=pixels(), **{**MERGE, **kwargs})


def test_training_is_refused_and_keep_one_is_a_no_op():
    model = model_with_images(None)
    with torch.no_grad():
        plain = model(input_ids=prompt()[None], pixel_values=pixels()).logits
        same = model(input_ids=prompt()[None], pixel_values=pixels(), **{**MERGE, "illava_llm_r": 1.0}).logits
    assert torch.equal(plain, same)
    with pytest.raises(ValueError, match="inference-only"):
        model.train()(input_ids=prompt()[None], pixel_values=pixels(), **MERGE)
    with pytest.raises(ValueError, match="illava_llm_r=1 is ambiguous"):
        make_model(None, image_size=56, enable_illava_llm=True, illava_llm_k=2, illava_llm_r=1)
