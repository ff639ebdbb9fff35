"""iLLaVA's vision-encoder merging on CLIP: the merge against a hand-written reference, placeholders, generation."""

import pytest
import torch

from ada_hf.vision_merging import clip_forward_with_merging, collapse_image_tokens, illava_vit_settings
from conftest import IMAGE_ID, PAD_ID, left_pad, make_model
from test_llavolta import IMAGE_TOKENS, pixels, prompt

VIT = dict(enable_illava_vit=True, illava_vit_k="1-2", illava_vit_r=3)
MERGED = IMAGE_TOKENS - 6


def vit_model(scheduler_type=None, **kwargs):
    return make_model(scheduler_type, attn="eager", image_size=56, vision_layers=4, **kwargs)


def reference_features(model, pix, layers, r):
    tower = model.model.vision_tower
    h = tower.pre_layrnorm(tower.embeddings(pix))
    for i, layer in enumerate(tower.encoder.layers[:3]):  # feature layer -2 of 4: layer 2's output
        if i not in layers:
            h = layer(h, attention_mask=None)
            continue
        attn_out, probs = layer.self_attn(layer.layer_norm1(h), attention_mask=None)  # eager: explicit probs
        h = h + attn_out
        received = probs.mean(1).mean(1)
        received[:, 0] = float("inf")
        order = received.argsort(dim=1, stable=True)[0, : r + 1].tolist()
        weights = torch.arange(r + 1, 0, -1, dtype=torch.float64)
        h[0, order[-1]] = (h[0, order].double() * weights[:, None]).sum(0).float() / weights.sum().float()
        keep = [t for t in range(h.shape[1]) if t not in order[:-1]]
        h = h[:, keep]
        h = h + layer.mlp(layer.layer_norm2(h))
    return h


def test_merge_matches_a_hand_written_reference_and_r0_is_a_no_op():
    model = vit_model()
    pix = pixels()
    settings = illava_vit_settings(model.config, VIT)
    with torch.no_grad():
        ours, sources = clip_forward_with_merging(model.model.vision_tower, pix, 2, settings)
        ref = reference_features(model, pix, (1, 2), 3)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
        assert ours.shape[1] == 1 + MERGED and [s.shape[1] for s in sources] == [13, 10]
        assert all(torch.equal(s, s.sort().values) for s in sources)  # raster order is kept
        stock = model.model.vision_tower(pix, output_hidden_states=True).hidden_states[-2]
        none = illava_vit_settings(model.config, {**VIT, "illava_vit_r": 0})
        torch.testing.assert_close(clip_forward_with_merging(model.model.vision_tower, pix, 2, none)[0], stock)


def test_forward_needs_the_merged_placeholder_count():
    model = vit_model()
    ids = prompt()[None]
    with pytest.raises(ValueError, match="use generate"):
        model(input_ids=ids, pixel_values=pixels(), **VIT)
    short, mask = collapse_image_tokens(ids, None, IMAGE_ID, IMAGE_TOKENS, MERGED, PAD_ID)
    assert int((short == IMAGE_ID).sum()) == MERGED and mask.all()
    with torch.no_grad():
        out = model(input_ids=short, pixel_values=pixels(), **VIT)
    assert out.logits.shape[1] == ids.shape[1] - 6


@pytest.mark.parametrize(
    "scheduler_type, extra",
    [
        (None, {}),
        ("L", {"latency": 0.6}),
        ("H", {"latency": 0.7, "enable_illava_llm": True, "illava_llm_k": 2, "illava_llm_r": 0.5}),
    ],  # fmt: skip
)
def test_generate_collapses_placeholders_and_caching_is_exact(scheduler_type, extra):
    model = vit_model(scheduler_type)
    kw = dict(pixel_values=pixels(), max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
              output_logits=True, **VIT, **extra)  # fmt: skip
    cached = model.generate(input_ids=prompt()[None], **kw)
    uncached = model.generate(input_ids=prompt()[None], use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert int((cached.sequences == IMAGE_ID).sum()) == MERGED  # the returned prompt holds the merged placeholders
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_left_padded_batch_equals_each_row_alone():
    model = vit_model("L")
    rows = [prompt(0, 3, 4), prompt(1, 1, 2)]
    ids, mask = left_pad(rows)
    kw = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True, **VIT)
    batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels(2), latency=0.8, **kw)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], pixel_values=pixels(2)[i : i + 1], latency=0.8, **kw)
        for a, b in zip(batch.logits, alone.logits):
            torch.testing.assert_close(a[i], b[0], atol=1e-5, rtol=0)


def test_tracking_returns_the_surviving_patches():
    model = vit_model(illava_track_vit_source=True)
    short, _ = collapse_image_tokens(prompt()[None], None, IMAGE_ID, IMAGE_TOKENS, MERGED, PAD_ID)
    with torch.no_grad():
        out = model(input_ids=short, pixel_values=pixels(), **VIT)
    assert [s.shape for s in out.vit_sources] == [(1, 13), (1, 10)]
    assert set(out.vit_sources[1][0].tolist()) <= set(out.vit_sources[0][0].tolist()) <= set(range(IMAGE_TOKENS))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(illava_vit_k=3), r"must list CLIP layers in \[0, 2\]"),
        (dict(illava_vit_r=8), "would remove all 16 patches"),
        (dict(illava_vit_r=-1), "token count"),
        (dict(illava_vit_r=1.5), "fraction in"),
    ],
)
def test_bad_settings(kwargs, message):
    model = vit_model()
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=prompt()[None], pixel_values=pixels(), max_new_tokens=1, **{**VIT, **kwargs})


def test_presets_by_name():
    from ada_hf.token_reduction import TOKEN_REDUCTION_PRESETS

    assert set(TOKEN_REDUCTION_PRESETS) == {"llavolta-heavy", "llavolta-light", "illava-image", "illava-video"}
    model = vit_model()
    # The published layers do not exist in the tiny tower: the preset's values reach the validation.
    with pytest.raises(ValueError, match=r"illava_vit_k='5-6-7-8' must list CLIP layers"):
        model.generate(
            input_ids=prompt()[None], pixel_values=pixels(), max_new_tokens=1, token_reduction="illava-image"
        )
    with pytest.raises(ValueError, match="is not a preset"):
        model(input_ids=prompt()[None], pixel_values=pixels(), token_reduction="fastv")
    # Explicit flags win over the preset's.
    out = model.generate(
        input_ids=prompt()[None],
        pixel_values=pixels(),
        max_new_tokens=1,
        token_reduction="illava-image",
        illava_vit_k="1-2",
        illava_vit_r=3,
        illava_llm_k=2,
        return_dict_in_generate=True,
    )
    assert int((out.sequences == IMAGE_ID).sum()) == MERGED


def test_training_with_vision_merging_is_refused():
    model = vit_model().train()
    with pytest.raises(ValueError, match="inference-only"):
        model(input_ids=prompt()[None], pixel_values=pixels(), **VIT)


def test_generate_reports_the_reductions():
    model = vit_model(illava_track_vit_source=True)
    llm = dict(enable_illava_llm=True, illava_llm_k=2, illava_llm_r=0.5)
    out = model.generate(
        input_ids=prompt()[None], pixel_values=pixels(), max_new_tokens=2, return_dict_in_generate=True, **llm, **VIT
    )
    assert [s.shape[1] for s in out.vit_sources] == [13, 10]
    (record,) = out.token_reductions
    assert record.kind == "illava" and record.removed == MERGED // 2
    assert out.execution_plan is None  # no scheduler, no plan
