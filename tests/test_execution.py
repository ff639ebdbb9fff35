"""Plans are really applied: skipped layers do no work, sliced layers compute only their heads and neurons."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.cache_utils import DummyLayer, DynamicCache, StaticCache

from conftest import LATENCY_ID, make_model, make_pixels, make_prompt


def prefill(model, latency, cache=None, **kwargs):
    ids = make_prompt(0, latency=True)[None]
    with torch.no_grad():
        return model(
            input_ids=ids, pixel_values=make_pixels(1), latency=latency, past_key_values=cache, use_cache=True, **kwargs
        )


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_skipped_layers_are_not_run(scheduler_type):
    model = make_model(scheduler_type)
    calls = []
    for idx, layer in enumerate(model.model.language_model.layers):
        layer.input_layernorm.register_forward_hook(lambda *_, idx=idx: calls.append(idx))
    plan = prefill(model, 0.6).execution_plan
    ran = [i for i, h in enumerate(plan.heads_executed()[0].tolist()) if h > 0]
    assert sorted(calls) == ran and len(ran) < 6


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_decoder_flops_are_exactly_the_planned_ones(scheduler_type):
    model = make_model(scheduler_type, attn="eager")  # eager: attention matmuls are visible to the counter
    text = model.config.text_config
    d, hd, inter, vocab = (
        text.hidden_size,
        text.hidden_size // text.num_attention_heads,
        text.intermediate_size,
        text.vocab_size,
    )
    seq = make_prompt(0, latency=True).shape[0]
    for budget in (1.0, 0.75, 0.6, 0.5):
        with FlopCounterMode(display=False) as counter:
            plan = prefill(model, budget).execution_plan
        flops = counter.get_flop_counts()
        measured = sum(flops["AdaLlavaForConditionalGeneration.model.language_model"].values())
        expected = 0
        heads = plan.heads_executed()[0].clamp(min=0)
        groups = plan.mlp_groups_executed()[0].clamp(min=0)
        sizes = [inter // text.num_attention_heads] * text.num_attention_heads  # 70 = 4 * 17 + 2
        for g in range(inter % text.num_attention_heads):
            sizes[g] += 1
        masks = plan.mlp_groups[0] > 0.5
        for layer, (h, _) in enumerate(zip(heads.tolist(), groups.tolist())):
            neurons = sum(s for s, on in zip(sizes, masks[layer].tolist()) if on)
            expected += 4 * 2 * seq * d * h * hd  # q, k, v, o projections of the heads run
            expected += 2 * 2 * seq * seq * h * hd  # scores and weighted values
            expected += 3 * 2 * seq * d * neurons  # gate, up, down over the neurons run
        expected += 2 * d * model.scheduler.mlp_head.out_features  # the scheduler runs inside the decoder loop
        assert measured == expected, budget
        lm_head = sum(flops["AdaLlavaForConditionalGeneration.lm_head"].values())
        assert lm_head == 2 * seq * d * vocab


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_cache_holds_only_what_ran(scheduler_type):
    model = make_model(scheduler_type)
    out = prefill(model, 0.6)
    heads = out.execution_plan.heads_executed()[0].tolist()
    for layer, h in zip(out.past_key_values.layers, heads):
        if h < 0:
            assert isinstance(layer, DummyLayer)
        else:
            assert layer.keys.shape[1] == h


def test_sliced_equals_masked_fallback(model_h):
    # A static cache cannot hold a varying number of heads, so partial layers fall back to full-width masking.
    sliced = prefill(model_h, 0.7)
    assert sliced.execution_plan.sliced_weight_bytes() > 0
    static = StaticCache(config=model_h.config.text_config, max_cache_len=64)
    masked = prefill(model_h, 0.7, cache=static)
    assert masked.execution_plan.same_schedule(sliced.execution_plan)
    assert masked.execution_plan.sliced_weight_bytes() == 0
    torch.testing.assert_close(sliced.logits, masked.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_cached_generation_equals_recomputation(scheduler_type):
    model = make_model(scheduler_type)
    ids = make_prompt(0)[None]
    pixels = make_pixels(1)
    kw = dict(
        pixel_values=pixels,
        latency=0.6,
        max_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    cached = model.generate(input_ids=ids, use_cache=True, **kw)
    uncached = model.generate(input_ids=ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # And a hand-written loop that recomputes the whole sequence (latency token in place) at every step.
    seq = torch.cat([ids, torch.tensor([[LATENCY_ID]])], dim=1)
    with torch.no_grad():
        for step in range(6):
            logits = model(input_ids=seq, pixel_values=pixels, latency=0.6, use_cache=False).logits[:, -1]
            torch.testing.assert_close(logits, cached.logits[step], atol=1e-5, rtol=0)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(torch.cat([seq[:, : ids.shape[1]], seq[:, ids.shape[1] + 1 :]], 1), cached.sequences)


def test_continuing_a_cache_keeps_its_plan(model_l):
    out = prefill(model_l, 0.6)
    plan, cache = out.execution_plan, out.past_key_values
    nxt = out.logits[:, -1:].argmax(-1)
    with torch.no_grad():
        step = model_l(input_ids=nxt, past_key_values=cache)  # the plan travels on the cache
    assert step.execution_plan.same_schedule(plan)
    with torch.no_grad(), pytest.raises(ValueError, match="fixed at prefill"):
        model_l(input_ids=nxt, past_key_values=cache, latency=1.0)
    other = prefill(model_l, 1.0).execution_plan
    with torch.no_grad(), pytest.raises(ValueError, match="differs from the plan"):
        model_l(input_ids=nxt, past_key_values=cache, execution_plan=other)


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_hidden_states_have_one_entry_per_layer(scheduler_type):
    model = make_model(scheduler_type)
    out = prefill(model, 0.6, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == model.config.text_config.num_hidden_layers + 1
    heads = out.execution_plan.heads_executed()[0].tolist()
    for layer, h in enumerate(heads[:-1]):
        if h < 0:  # a skipped layer's output is its input
            assert torch.equal(hs[layer + 1], hs[layer])


def test_skipping_really_saves_sliced_memory_only_during_a_request(model_h):
    out = model_h.generate(
        input_ids=make_prompt(0)[None],
        pixel_values=make_pixels(1),
        latency=0.7,
        max_new_tokens=3,
        do_sample=False,
        return_dict_in_generate=True,
    )
    plan = out.past_key_values.ada_execution_plan
    assert plan.sliced_weight_bytes() == 0 and not plan.layer_plans  # released after generate


def test_dynamic_cache_without_config_grows_with_dummy_layers(model_l):
    out = prefill(model_l, 0.6, cache=DynamicCache())
    assert len(out.past_key_values.layers) == 6
    skipped = int((out.execution_plan.heads_executed()[0] < 0).sum())
    assert skipped > 0
    assert sum(isinstance(layer, DummyLayer) for layer in out.past_key_values.layers) == skipped
