"""generate(latency=...): the latency token, per-row budgets, batching, beams, sampling, streamers, outputs."""

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from conftest import LATENCY_ID, PAD_ID, left_pad, make_model, make_pixels, make_prompt


def generate(model, ids, mask=None, pixels=None, **kwargs):
    kwargs.setdefault("max_new_tokens", 5)
    kwargs.setdefault("do_sample", False)
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    return model.generate(**inputs, return_dict_in_generate=True, output_logits=True, **kwargs)


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_batch_with_per_row_budgets_equals_one_by_one(scheduler_type):
    model = make_model(scheduler_type)
    rows = [make_prompt(0, 3, 4), make_prompt(1, 1, 2), make_prompt(2, 5, 6)]
    pixels = make_pixels(3)
    budgets = torch.tensor([1.0, 0.75, 0.5])
    ids, mask = left_pad(rows)
    batch = generate(model, ids, mask, pixels, latency=budgets)
    for i, row in enumerate(rows):
        alone = generate(model, row[None], None, pixels[i : i + 1], latency=float(budgets[i]))
        assert torch.equal(batch.execution_plan[i], alone.execution_plan[0])
        assert torch.equal(batch.mlp_groups_executed[i], alone.mlp_groups_executed[0])
        new = batch.sequences[i, ids.shape[1] :]
        assert torch.equal(new, alone.sequences[0, row.shape[0] :])
        for step_batch, step_alone in zip(batch.logits, alone.logits):
            torch.testing.assert_close(step_batch[i], step_alone[0], atol=1e-5, rtol=0)
    # What the batch computed is the union of the rows' plans.
    union = batch.execution_plan.clamp(min=0).amax(0)
    assert torch.equal(batch.heads_computed.clamp(min=0), union)


def test_generate_appends_and_drops_the_latency_token(model_l):
    ids = make_prompt(0)[None]
    pixels = make_pixels(1)
    out = generate(model_l, ids, None, pixels, latency=0.6)
    assert out.sequences.shape[1] == ids.shape[1] + 5
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)  # `out[:, input_len:]` is the answer
    assert not (out.sequences == LATENCY_ID).any()
    # Rows that already end with the token are left alone (and keep it).
    with_token = torch.cat([ids, torch.tensor([[LATENCY_ID]])], 1)
    again = generate(model_l, with_token, None, pixels, latency=0.6)
    assert torch.equal(again.sequences[:, with_token.shape[1] :], out.sequences[:, ids.shape[1] :])
    plain = model_l.generate(input_ids=ids, pixel_values=pixels, latency=0.6, max_new_tokens=5, do_sample=False)
    assert torch.equal(plain, out.sequences)


def test_generate_output_reports_the_plan(model_h):
    out = generate(model_h, make_prompt(0)[None], None, make_pixels(1), latency=0.75)
    n = model_h.config.text_config.num_hidden_layers
    assert out.execution_plan.shape == (1, n) and out.execution_plan.dtype == torch.long
    assert out.mlp_groups_executed.shape == (1, n)
    assert int(out.executed_units[0]) == model_h.scheduler.num_prefix_units + int(
        model_h.scheduler.quantize(torch.tensor([0.75]))[0]
    )
    assert float(out.latency_effective[0]) == int(out.executed_units[0]) / model_h.scheduler.num_total_units
    assert type(out).__name__ == "AdaLlavaGenerateDecoderOnlyOutput"


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_beam_search_with_skipped_layers(scheduler_type):
    model = make_model(scheduler_type)
    ids = make_prompt(0)[None]
    kw = dict(num_beams=3, num_return_sequences=2, latency=0.6, max_new_tokens=5, early_stopping=True)
    cached = generate(model, ids, None, make_pixels(1), **kw)
    uncached = generate(model, ids, None, make_pixels(1), use_cache=False, **kw)
    assert type(cached).__name__ == "AdaLlavaGenerateBeamDecoderOnlyOutput"
    assert cached.sequences.shape[0] == 2 and cached.execution_plan.shape[0] == 2
    assert (cached.execution_plan < 0).any()
    assert torch.equal(cached.sequences, uncached.sequences)


def test_sampling_with_num_return_sequences_and_per_row_budgets(model_l):
    ids, mask = left_pad([make_prompt(0), make_prompt(1, 2, 2)])
    torch.manual_seed(0)
    out = generate(
        model_l,
        ids,
        mask,
        make_pixels(2),
        latency=torch.tensor([1.0, 0.5]),
        do_sample=True,
        num_return_sequences=3,
        top_k=0,
    )
    assert out.sequences.shape[0] == 6
    assert (out.execution_plan[:3] > 0).all() and (out.execution_plan[3:] < 0).any()
    assert out.latency_effective.tolist() == [1.0] * 3 + [0.5] * 3


def test_streamer_receives_the_generated_tokens(model_l):
    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.chunks.append(None)

    streamer = Collect()
    ids = make_prompt(0)[None]
    out = model_l.generate(
        input_ids=ids, pixel_values=make_pixels(1), latency=0.6, max_new_tokens=4, do_sample=False, streamer=streamer
    )
    streamed = torch.cat([c.reshape(-1) for c in streamer.chunks[1:-1]])
    assert torch.equal(streamed, out[0, ids.shape[1] :]) and streamer.chunks[-1] is None


def test_default_latency_applies_when_no_budget_is_given():
    model = make_model("L", default_latency=0.5)
    out = generate(model, make_prompt(0)[None], None, make_pixels(1))
    assert float(out.latency_effective[0]) == 0.5
    model.config.default_latency = None
    out = generate(model, make_prompt(0)[None], None, make_pixels(1))
    assert not hasattr(out, "latency_effective") or out.latency_effective is None


def test_generate_without_image(model_l):
    ids = torch.randint(3, 90, (1, 7))
    out = generate(model_l, ids, latency=0.5)
    assert out.sequences.shape == (1, 12)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_backends_agree(attn):
    model = make_model("H", attn=attn)
    ref = make_model("H", attn="eager")
    ids = make_prompt(0)[None]
    a = generate(model, ids, None, make_pixels(1), latency=0.7)
    b = generate(ref, ids, None, make_pixels(1), latency=0.7)
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_pad_token_never_confused_with_latency():
    assert PAD_ID != LATENCY_ID
