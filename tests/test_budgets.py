"""Budget quantisation and scheduling, measured through the model (ADALLAVA.md sections 2.4, 4.1, 6)."""

import pytest
import torch

from ada_hf.planned_layer import mlp_group_sizes
from conftest import make_model, make_pixels, make_prompt


def run_plan(model, latency=None, num_units=None):
    ids = make_prompt(0, latency=True)[None]
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=make_pixels(1).to(model.dtype), latency=latency, num_units=num_units)
    return out.execution_plan


def seven_b_shaped(scheduler_type, dtype):
    # Vicuna-7B's geometry (32 layers, 32 heads, P = 16, r = 8), two dimensions per head.
    return make_model(
        scheduler_type, dtype=dtype, num_layers=32, num_heads=32, hidden_size=64, intermediate_size=96, scheduler_rank=8
    )


# The original's fp16 tables: layers run for L-7b, suffix units u for H-7b.
L7B = {1.0: 32, 0.95: 30, 0.9: 28, 0.85: 27, 0.8: 25, 0.75: 24, 0.7: 22, 0.65: 20, 0.6: 19, 0.55: 17, 0.5: 16, 0.3: 16}
H7B = {1.0: 64, 0.95: 57, 0.9: 51, 0.85: 44, 0.8: 38, 0.75: 32, 0.7: 25, 0.65: 19, 0.6: 12, 0.55: 6, 0.5: 0, 0.3: 0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_layer_table_7b(dtype):
    model = seven_b_shaped("L", dtype)
    for budget, layers in L7B.items():
        plan = run_plan(model, budget)
        assert int((plan.heads_executed() > 0).sum()) == layers, budget
        assert int(plan.executed_units()[0]) == layers


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_head_table_7b(dtype):
    model = seven_b_shaped("H", dtype)
    for budget, units in H7B.items():
        plan = run_plan(model, budget)
        heads = plan.heads_executed()[0]
        groups = plan.mlp_groups_executed()[0]
        assert int(plan.units[0]) == units, budget
        assert int(heads.clamp(min=0).sum()) == 16 * 32 + 8 * units  # head slots run, prefix included
        assert torch.equal(heads, groups)  # as many MLP groups as heads in every layer
        assert bool(((heads.clamp(min=0)) % 8 == 0).all())  # whole r-head slices


def test_budget_is_quantised_in_the_model_dtype():
    # 13B-H geometry (40 layers, 40 heads, P = 20, r = 8): 0.55 buys 9 units in fp16 but 10 in fp32.
    kwargs = dict(num_layers=40, num_heads=40, hidden_size=80, intermediate_size=96, scheduler_rank=8)
    assert int(run_plan(make_model("H", dtype=torch.float16, **kwargs), 0.55).units[0]) == 9
    assert int(run_plan(make_model("H", dtype=torch.float32, **kwargs), 0.55).units[0]) == 10


def test_mlp_groups_13b_layout():
    sizes = mlp_group_sizes(13824, 40)
    assert sizes[:24] == [346] * 24 and sizes[24:] == [345] * 16 and sum(sizes) == 13824
    assert mlp_group_sizes(11008, 32) == [344] * 32


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_num_units_matches_latency(scheduler_type):
    model = make_model(scheduler_type)
    for budget in (1.0, 0.8, 0.6, 0.5):
        by_budget = run_plan(model, budget)
        by_units = run_plan(model, num_units=int(by_budget.units[0]))
        assert by_budget.same_schedule(by_units)


def test_int_one_means_full_budget(model_l):
    assert run_plan(model_l, 1).same_schedule(run_plan(model_l, 1.0))


def test_budget_below_prefix_runs_prefix_only(model_l):
    plan = run_plan(model_l, 0.2)
    assert plan.heads_executed()[0].tolist() == [4, 4, 4, -1, -1, -1]
    assert float(plan.latency_effective()[0]) == 0.5


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_budget_table_rows_run_what_they_say(scheduler_type):
    model = make_model(scheduler_type)
    table = model.budget_table()
    assert [row["units"] for row in table] == list(range(model.scheduler.max_units + 1))
    for row in table:
        if row["min_latency"] is None:
            continue
        plan = run_plan(model, row["min_latency"])
        assert int(plan.executed_units()[0]) == row["executed_units"]
        if row["units"] > 0:  # just below the threshold buys one unit less
            below = run_plan(model, row["min_latency"] - 1e-3)
            assert int(below.units[0]) == row["units"] - 1


def test_scheduler_picks_depend_on_content(model_h):
    # Same budget, different images: the plan reads the latency token's hidden state, so it may differ;
    # the count may not.
    plans = []
    for seed in range(4):
        ids = make_prompt(seed, latency=True)[None]
        with torch.no_grad():
            plans.append(model_h(input_ids=ids, pixel_values=make_pixels(1, seed), latency=0.75).execution_plan)
    assert len({int(p.units[0]) for p in plans}) == 1
    assert len({tuple(p.heads_executed()[0].tolist()) for p in plans}) > 1
