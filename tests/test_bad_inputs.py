"""Every bad input gets a ValueError that names the bad value and what to do."""

import pytest
import torch

from ada_hf import AdaLlavaConfig
from ada_hf.tiny_model import tiny_config
from conftest import IMAGE_ID, LATENCY_ID, VOCAB, left_pad, make_model, make_pixels, make_prompt


def forward(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=make_pixels(ids.shape[0]), **kwargs)


@pytest.mark.parametrize(
    "latency, message",
    [
        (0.0, r"latency=0.0 is invalid in rows \[0\]"),
        (-0.1, "latency=-0.1 is invalid"),
        (1.5, "latency=1.5 is invalid"),
        (float("nan"), "latency=nan is invalid"),
        (torch.tensor([[0.5]]), "shape"),
        (torch.tensor([0.5, 0.6, 0.7]), "3 values for a batch of 1"),
        (True, "not a boolean"),
        ("fast", "must be a number|neither a share of compute"),
    ],
)
def test_bad_latency(model_l, latency, message):
    ids = make_prompt(0, latency=True)[None]
    with pytest.raises(ValueError, match=message):
        forward(model_l, ids, latency=latency)
    with pytest.raises(ValueError, match=message):
        model_l.generate(input_ids=make_prompt(0)[None], pixel_values=make_pixels(1), latency=latency)


@pytest.mark.parametrize("units, message", [(-1, "out of range"), (4, "out of range"), (1.5, "whole numbers")])
def test_bad_num_units(model_l, units, message):
    with pytest.raises(ValueError, match=message):
        forward(model_l, make_prompt(0, latency=True)[None], num_units=units)


def test_latency_and_num_units_together(model_l):
    with pytest.raises(ValueError, match="either `latency` or `num_units`"):
        forward(model_l, make_prompt(0, latency=True)[None], latency=0.5, num_units=1)


def test_budget_without_latency_token(model_l):
    with pytest.raises(ValueError, match=r"rows \[0, 1\] lack it"):
        forward(model_l, torch.stack([make_prompt(0), make_prompt(1)]), latency=0.5)


def test_latency_token_without_budget_in_eval(model_l):
    with pytest.raises(ValueError, match=r"Rows \[0\] hold a <latency> token but no budget"):
        forward(model_l, make_prompt(0, latency=True)[None])


def test_two_latency_tokens_in_a_row(model_l):
    ids = torch.cat([make_prompt(0, latency=True), torch.tensor([LATENCY_ID])])[None]
    with pytest.raises(ValueError, match=r"Rows \[0\] of input_ids hold \[2\]"):
        forward(model_l, ids, latency=0.5)


def test_generate_with_a_mix_of_rows(model_l):
    ids = torch.stack([make_prompt(0, latency=True), torch.cat([make_prompt(1), torch.tensor([5])])])
    with pytest.raises(ValueError, match=r"Rows \[1\]"):
        model_l.generate(input_ids=ids, pixel_values=make_pixels(2), latency=0.5)


def test_generate_right_padded(model_l):
    ids, mask = left_pad([make_prompt(0), make_prompt(1, 1, 1)])
    ids, mask = ids.flip(1), mask.flip(1)  # right padding
    with pytest.raises(ValueError, match=r"Rows \[1\] are right-padded"):
        model_l.generate(input_ids=ids, attention_mask=mask, pixel_values=make_pixels(2), latency=0.5)


def test_inputs_embeds_only_with_budget(model_l):
    embeds = torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match="only `inputs_embeds`"):
        model_l(inputs_embeds=embeds, latency=0.5)
    with pytest.raises(ValueError, match="needs `input_ids`"):
        model_l.generate(inputs_embeds=embeds, latency=0.5)


def test_plain_llava_refuses_budgets():
    model = make_model(None)
    with pytest.raises(ValueError, match="no latency scheduler"):
        forward(model, make_prompt(0)[None], latency=0.5)
    with pytest.raises(ValueError, match="no latency scheduler"):
        model.generate(input_ids=make_prompt(0)[None], pixel_values=make_pixels(1), latency=0.5)
    with pytest.raises(ValueError, match="no latency scheduler"):
        model.budget_table()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scheduler_type="X"), "scheduler_type='X' is not supported"),
        (dict(scheduler_type="L", num_prefix_layers=0), r"num_prefix_layers=0 must lie in \[1, 6\)"),
        (dict(scheduler_type="L", num_prefix_layers=6), r"num_prefix_layers=6 must lie in \[1, 6\)"),
        (dict(scheduler_type="H", scheduler_rank=3), "scheduler_rank=3 must divide num_attention_heads=4"),
        (dict(scheduler_type="H", num_kv_heads=2, scheduler_rank=2), "grouped-query attention"),
        (dict(scheduler_type="L", scheduler_tau=0.0), "scheduler_tau=0.0 must be positive"),
        (dict(scheduler_type="L", default_latency=1.5), r"default_latency=1.5 must lie in \(0, 1\]"),
        (dict(scheduler_type=None, default_latency=1.0), "needs a scheduler"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(VOCAB, IMAGE_ID, LATENCY_ID, **kwargs)


def test_gqa_works_with_layer_scheduling():
    model = make_model("L", num_kv_heads=2)
    out = forward(model, make_prompt(0, latency=True)[None], latency=0.6)
    assert (out.execution_plan.heads_executed() < 0).any()


def test_default_prefix_is_half_the_layers():
    assert AdaLlavaConfig(scheduler_type="L").num_prefix_layers == 16
