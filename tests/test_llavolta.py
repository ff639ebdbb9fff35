"""LLaVolta's visual context compression: exact math, a hand-written reference, caching, batching, the scheduler."""

import pytest
import torch
from transformers.cache_utils import DummyLayer
from transformers.masking_utils import create_causal_mask

from ada_hf.token_reduction import TOKEN_REDUCTION_PRESETS, plan_pooling
from conftest import IMAGE_ID, LATENCY_ID, left_pad, make_model

IMAGE_TOKENS = 16  # a 56px image in 14px patches


def model_with_images(scheduler_type=None, attn="sdpa", **kwargs):
    return make_model(scheduler_type, attn=attn, image_size=56, **kwargs)


def prompt(seed=0, before=3, after=4, latency=False):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(3, 90, (before,), generator=g), torch.full((IMAGE_TOKENS,), IMAGE_ID),
             torch.randint(3, 90, (after,), generator=g)]  # fmt: skip
    if latency:
        parts.append(torch.tensor([LATENCY_ID]))
    return torch.cat(parts)


def pixels(batch=1, seed=0):
    return torch.randn(batch, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# Exact math
def test_pooling_is_a_windowed_mean_and_text_passes():
    image = torch.tensor([[0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    layout = plan_pooling(image, stride=2)
    hidden = torch.randn(1, 11, 3)
    pooled = layout.pool(hidden)
    expected = torch.stack([hidden[0, 0], hidden[0, 1:3].mean(0), hidden[0, 3:5].mean(0), hidden[0, 5],
                            hidden[0, 6:8].mean(0), hidden[0, 8:10].mean(0), hidden[0, 10]])  # fmt: skip
    torch.testing.assert_close(pooled[0], expected)
    assert layout.first.tolist() == [[0, 1, 3, 5, 6, 8, 10]]


def test_position_modes():
    layout = plan_pooling(torch.tensor([[0] + [1] * 8 + [0]], dtype=torch.bool), stride=8)
    positions = torch.arange(34, 44)[None]  # the image covers ids 35..42
    assert layout.positions(positions, "trunc_mean", None).tolist() == [[34, 38, 43]]  # floor(38.5)
    assert layout.positions(positions, "float_mean", None).tolist() == [[34.0, 38.5, 43.0]]
    assert layout.positions(positions, "first", None).tolist() == [[34, 35, 43]]
    assert layout.positions(positions, "renumber", None).tolist() == [[0, 1, 2]]
    # Past 1024 the original's float16 average rounds half to even before truncating (LLAVOLTA_ILLAVA.md A.3).
    far = plan_pooling(torch.ones(1, 32, dtype=torch.bool), stride=4)
    ids = torch.arange(1024, 1056)[None]
    assert far.positions(ids, "trunc_mean", None)[0, :2].tolist() == [1025, 1029]
    assert far.positions(ids, "trunc_mean_fp16", None)[0, :2].tolist() == [1026, 1030]
    near = torch.arange(100, 132)[None]
    assert torch.equal(far.positions(near, "trunc_mean_fp16", None), far.positions(near, "trunc_mean", None))


# ---------------------------------------------------------------------------------------------------------------------
# Against a hand-written reference on transformers' own Llama layers
def reference_logits(model, ids, pix, layer, stride):
    lm = model.model.language_model
    embeds = model.get_input_embeddings()(ids)
    feats = torch.cat(model.model.get_image_features(pixel_values=pix).pooler_output)
    h = embeds.masked_scatter((ids == IMAGE_ID)[..., None], feats)
    pos = torch.arange(ids.shape[1])[None]
    for i, block in enumerate(lm.layers):
        if i == layer:
            start = int((ids[0] == IMAGE_ID).nonzero()[0])
            img = h[:, start : start + IMAGE_TOKENS].reshape(1, IMAGE_TOKENS // stride, stride, -1).mean(2)
            img_pos = pos[:, start : start + IMAGE_TOKENS].reshape(1, -1, stride).double().mean(-1).floor().long()
            h = torch.cat([h[:, :start], img, h[:, start + IMAGE_TOKENS :]], 1)
            pos = torch.cat([pos[:, :start], img_pos, pos[:, start + IMAGE_TOKENS :]], 1)
        # One causal sequence: no position ids here, or their gaps would read as packed sequences.
        mask = create_causal_mask(config=lm.config, inputs_embeds=h, attention_mask=None, past_key_values=None)
        h = block(h, attention_mask=mask, position_embeddings=lm.rotary_emb(h, pos), position_ids=pos)
    return model.lm_head(lm.norm(h))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layer, stride", [(0, 4), (2, 2), (5, 16)])
def test_pooled_forward_matches_a_hand_written_reference(attn, layer, stride):
    model = model_with_images(None, attn=attn)
    ids, pix = prompt()[None], pixels()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pix, llavolta_grouping="avgpool1d", llavolta_layer=layer,
                     llavolta_stride=stride)  # fmt: skip
        ref = reference_logits(model, ids, pix, layer, stride)
    assert ours.logits.shape[1] == ids.shape[1] - IMAGE_TOKENS + IMAGE_TOKENS // stride
    torch.testing.assert_close(ours.logits, ref, atol=1e-5, rtol=0)


def test_off_and_identity_settings_are_the_plain_path():
    model = model_with_images(None)
    ids, pix = prompt()[None], pixels()
    with torch.no_grad():
        plain = model(input_ids=ids, pixel_values=pix).logits
        for kwargs in (dict(llavolta_grouping="none", llavolta_stride=4), dict(llavolta_grouping="avgpool1d",
                                                                               llavolta_stride=1)):  # fmt: skip
            assert torch.equal(model(input_ids=ids, pixel_values=pix, **kwargs).logits, plain)


# ---------------------------------------------------------------------------------------------------------------------
# Generation, batching, the scheduler
POOL = dict(llavolta_grouping="avgpool1d", llavolta_layer=2, llavolta_stride=4)


@pytest.mark.parametrize("scheduler_type, latency", [(None, None), ("L", 0.6), ("H", 0.7)])
@pytest.mark.parametrize("mode", ["trunc_mean", "renumber"])
def test_cached_generation_equals_recomputation(scheduler_type, latency, mode):
    model = model_with_images(scheduler_type, num_prefix_layers=3 if scheduler_type else None)
    kw = dict(pixel_values=pixels(), max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
              output_logits=True, llavolta_position_mode=mode, **POOL)  # fmt: skip
    if latency is not None:
        kw["latency"] = latency
    ids = prompt()[None]
    cached = model.generate(input_ids=ids, use_cache=True, **kw)
    uncached = model.generate(input_ids=ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Layers before K cache every prompt position; the pooled layers (the ones that ran) cache 12 fewer.
    lengths = [layer.get_seq_length() for layer in cached.past_key_values.layers if not isinstance(layer, DummyLayer)]
    assert lengths[0] - lengths[-1] == IMAGE_TOKENS - IMAGE_TOKENS // 4


@pytest.mark.parametrize("scheduler_type", [None, "H"])
def test_left_padded_batch_equals_each_row_alone(scheduler_type):
    model = model_with_images(scheduler_type)
    rows = [prompt(0, 3, 4), prompt(1, 1, 2), prompt(2, 5, 1)]
    pix = pixels(3)
    ids, mask = left_pad(rows)
    budgets = {} if scheduler_type is None else {"latency": torch.tensor([1.0, 0.75, 0.5])}
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True, **POOL)
    batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, **kw, **budgets)
    for i, row in enumerate(rows):
        solo_budget = {} if scheduler_type is None else {"latency": float(budgets["latency"][i])}
        alone = model.generate(input_ids=row[None], pixel_values=pix[i : i + 1], **kw, **solo_budget)
        assert torch.equal(batch.sequences[i, ids.shape[1] :], alone.sequences[0, row.shape[0] :])
        for a, b in zip(batch.logits, alone.logits):
            torch.testing.assert_close(a[i], b[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [1, 4])  # before and after the scheduler (P = 3)
def test_scheduler_reads_the_latency_token_through_the_pooling(layer):
    model = model_with_images("L")
    ids, pix = prompt(latency=True)[None], pixels()
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pix, latency=0.8, llavolta_grouping="avgpool1d",
                    llavolta_layer=layer, llavolta_stride=4, output_hidden_states=True)  # fmt: skip
    hidden_at_p = out.hidden_states[3][0, -1]  # the <latency> token is the last one, pooled or not
    logits = model.scheduler.mlp_head(hidden_at_p)
    units = int(out.execution_plan.units[0])
    chosen = sorted(logits.topk(units).indices.tolist())
    assert [i for i in range(3) if out.execution_plan.heads_executed()[0, 3 + i] > 0] == chosen


def test_training_pools_the_labels():
    model = model_with_images("L").train()
    ids = prompt(latency=True)
    answer = torch.tensor([5, 6, 7])
    ids = torch.cat([ids, answer])[None]
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = answer
    out = model(input_ids=ids, pixel_values=pixels(), labels=labels, **POOL)
    assert out.logits.shape[1] == ids.shape[1] - IMAGE_TOKENS + IMAGE_TOKENS // 4
    out.loss.backward()
    assert model.scheduler.mlp_head.weight.grad.abs().sum() > 0
    # The loss is the unpooled loss over the same answer tokens (the text positions and their labels are kept).
    pooled_labels = labels.gather(1, out.token_reductions[0].kept)
    assert pooled_labels[0, -3:].tolist() == answer.tolist() and (pooled_labels != -100).sum() == 3


def test_presets_and_config_defaults(tmp_path):
    model = model_with_images(None, num_layers=6)
    assert TOKEN_REDUCTION_PRESETS["llavolta-heavy"] == dict(llavolta_grouping="avgpool1d", llavolta_layer=2,
                                                             llavolta_stride=8)  # fmt: skip
    model.save_pretrained(tmp_path)
    from ada_hf import AdaLlavaForConditionalGeneration

    heavy = AdaLlavaForConditionalGeneration.from_pretrained(tmp_path, **TOKEN_REDUCTION_PRESETS["llavolta-heavy"])
    assert heavy.config.llavolta_stride == 8
    with torch.no_grad():
        out = heavy(input_ids=prompt()[None], pixel_values=pixels())
    assert out.token_reductions[0].length == prompt().shape[0] - IMAGE_TOKENS + 2


# ---------------------------------------------------------------------------------------------------------------------
# Bad settings
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(llavolta_grouping="maxpool"), "llavolta_grouping='maxpool' is not supported"),
        (
            dict(llavolta_grouping="avgpool1d", llavolta_stride=3),
            "llavolta_stride=3 must be a positive integer dividing",
        ),
        (dict(llavolta_grouping="avgpool1d", llavolta_stride=4, llavolta_layer=6), r"llavolta_layer=6 must be"),
        (dict(llavolta_grouping="avgpool1d", llavolta_stride=4, llavolta_layer=-2), r"must be -1 \(pool the projector"),
        (dict(llavolta_grouping="avgpool1d", llavolta_stride=4, llavolta_position_mode="mean"), "position_mode"),
    ],
)
def test_bad_settings(kwargs, message):
    model = model_with_images(None)
    with pytest.raises(ValueError, match=message):
        model(input_ids=prompt()[None], pixel_values=pixels(), **kwargs)
    with pytest.raises(ValueError, match=message):
        make_model(None, image_size=56, **kwargs)


def test_rows_with_different_image_counts_and_continuations_are_refused():
    model = model_with_images(None)
    text_only = torch.randint(3, 90, (prompt().shape[0],))
    ids = torch.stack([prompt(), text_only])
    with pytest.raises(ValueError, match="same number of image tokens in every row"):
        model(input_ids=ids, pixel_values=pixels(1), **POOL)
    with torch.no_grad():
        first = model(input_ids=prompt()[None], pixel_values=pixels(), use_cache=True, **POOL)
    with pytest.raises(ValueError, match="continue a non-empty cache"):
        model(input_ids=prompt()[None], pixel_values=pixels(), past_key_values=first.past_key_values, **POOL)


def test_pooling_before_the_llm():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from ada_hf.vision_merging import collapse_image_tokens

    model = model_with_images(None)
    before = dict(llavolta_grouping="avgpool1d", llavolta_layer=-1, llavolta_stride=4)
    with pytest.raises(ValueError, match="use generate"):
        model(input_ids=prompt()[None], pixel_values=pixels(), **before)
    short, _ = collapse_image_tokens(prompt()[None], None, IMAGE_ID, IMAGE_TOKENS, IMAGE_TOKENS // 4, 98)
    with torch.no_grad():
        ours = model(input_ids=short, pixel_values=pixels(), **before)
        features = model.model.get_image_features(pixels(), pool_stride=None).pooler_output[0]
        pooled = BaseModelOutputWithPooling(pooler_output=[features.view(-1, 4, features.shape[-1]).mean(1)])
        ref = model(input_ids=short, mm_encoder_outputs={"image": pooled})
    torch.testing.assert_close(ours.logits, ref.logits)
    kw = dict(pixel_values=pixels(), max_new_tokens=4, do_sample=False, return_dict_in_generate=True, **before)
    cached = model.generate(input_ids=prompt()[None], **kw)
    uncached = model.generate(input_ids=prompt()[None], use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert int((cached.sequences == IMAGE_ID).sum()) == IMAGE_TOKENS // 4
