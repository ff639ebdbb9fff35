"""The scheduler's parameters and output layout are the original AdaLLaVA's (ADALLAVA.md sections 3.2, 4.2, 6)."""

import math

import torch

from conftest import make_model, make_pixels, make_prompt


def original_shapes(model):
    """Shapes of the original checkpoint's scheduler keys, mapped to ours (a rename, no reshaping)."""
    text = model.config.text_config
    d, n, p, h = text.hidden_size, text.num_hidden_layers, model.config.num_prefix_layers, text.num_attention_heads
    head = (n - p) if model.config.scheduler_type == "L" else (n - p) * h * 2
    return {
        "scheduler.mlp_head.weight": (head, d),
        "scheduler.mlp_head.bias": (head,),
        "scheduler.scheduler_up_proj.net.0.weight": (256,),
        "scheduler.scheduler_up_proj.net.0.bias": (256,),
        "scheduler.scheduler_up_proj.net.1.weight": (d, 256),
        "scheduler.scheduler_up_proj.net.1.bias": (d,),
        "scheduler.scheduler_up_proj.net.3.weight": (d, d),
        "scheduler.scheduler_up_proj.net.3.bias": (d,),
    }


def test_parameters_map_losslessly_from_the_original():
    for scheduler_type in ("L", "H"):
        model = make_model(scheduler_type)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("model.scheduler.")}
        mapped = {
            "model." + k.replace("scheduler_up_proj", "latency_encoder"): shape
            for k, shape in original_shapes(model).items()
        }
        assert ours == mapped


def forced_plan(model, bias_entries, units):
    """Zero the head's weights and put large biases on chosen outputs: the plan must pick exactly those."""
    with torch.no_grad():
        model.scheduler.mlp_head.weight.zero_()
        model.scheduler.mlp_head.bias.zero_()
        for index, value in bias_entries.items():
            model.scheduler.mlp_head.bias[index] = value
        ids = make_prompt(0, latency=True)[None]
        return model(input_ids=ids, pixel_values=make_pixels(1), num_units=units).execution_plan


def test_layer_output_index_is_the_suffix_layer():
    model = make_model("L")  # 6 layers, P = 3
    plan = forced_plan(model, {2: 5.0, 0: 4.0}, units=2)
    assert plan.heads_executed()[0].tolist() == [4, 4, 4, 4, -1, 4]


def test_head_output_index_is_layer_kind_head():
    model = make_model("H", scheduler_rank=1)  # 6 layers, P = 3, 4 heads: index s * 8 + k * 4 + h
    plan = forced_plan(model, {1 * 8 + 0 * 4 + 2: 5.0, 1 * 8 + 1 * 4 + 3: 4.0}, units=1)
    heads = plan.heads[0, 4].tolist()
    groups = plan.mlp_groups[0, 4].tolist()
    assert heads == [0, 0, 1, 0] and groups == [0, 0, 0, 1]
    assert plan.heads_executed()[0].tolist() == [4, 4, 4, -1, 1, -1]


def test_latency_encoding_is_the_documented_sinusoid():
    model = make_model("L")
    encoder = model.scheduler.latency_encoder
    q = torch.tensor([0.0, 1 / 4, 3 / 4])
    features = encoder.sinusoid(q)
    i = torch.arange(128, dtype=torch.float64)
    angles = 2 * math.pi * q.double()[:, None] * 10000 ** (-i / 128)
    torch.testing.assert_close(features.double(), torch.cat([angles.sin(), angles.cos()], -1), atol=1e-6, rtol=0)
    # The token embedding is the up-projection of the features of q = u / (U_max + 1).
    units = torch.tensor([1])
    expected = encoder.net(encoder.sinusoid(torch.tensor([1 / (model.scheduler.max_units + 1)])))
    torch.testing.assert_close(model.scheduler.encode(units, torch.float32), expected)
