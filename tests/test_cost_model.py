"""The cost model: hand-computed cases, FlopCounterMode on every plan and reduction, the report, millisecond budgets."""

import copy
import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ada_hf.cost_model import CostModel, LayerWork, original_metrics
from ada_hf.efficiency import costliest_counts, parse_time_target
from ada_hf.hardware import HARDWARE, Hardware, get_hardware, load_local_profile, save_local_profile
from conftest import IMAGE_ID, LATENCY_ID, PAD_ID, VOCAB, left_pad, make_model, make_pixels, make_prompt


def counted_generate(model, ids, pixels, new_tokens=4, mask=None, **kwargs):
    with FlopCounterMode(display=False) as counter:
        out = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new_tokens,
            return_dict_in_generate=True, **kwargs,
        )  # fmt: skip
    return out, counter.get_total_flops()


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed cases
def test_decoder_layer_by_hand():
    model = make_model("L")  # d 32, 4 heads of 8, MLP 70, vocab 100
    cm = CostModel(model.config, bits=16)
    cost = cm.decoder_layer(LayerWork(tokens=5, context=7, heads=2, kv_heads=2, neurons=35))
    projections = 2 * 5 * 32 * 16 * 3 + 2 * 5 * 16 * 32  # q, k, v to 2 heads of 8, o back to 32
    attention = 2 * (2 * 5 * 7 * 8 * 2)  # scores and weighted values, 2 heads over 7 keys
    mlp = 3 * 2 * 5 * 32 * 35
    assert cost.flops == projections + attention + mlp
    assert cm.decoder_layer(LayerWork(5, 7, 0, 0, 0)).flops == 0  # a skipped layer costs nothing
    assert cm.lm_head(3).flops == 2 * 3 * 32 * VOCAB


def test_roofline_takes_the_slower_bound():
    hw = Hardware("toy", bandwidth=100.0, peak={16: 1000.0})
    assert hw.op_seconds(ops=1000, nbytes=10, bits=16) == 1.0  # compute-bound
    assert hw.op_seconds(ops=10, nbytes=1000, bits=16) == 10.0  # memory-bound
    with pytest.raises(ValueError, match="no 8-bit peak"):
        hw.op_seconds(1, 1, 8)


def test_decode_closed_form_equals_step_by_step():
    model = make_model("H", scheduler_rank=1)
    cm = CostModel(model.config, hardware="nvidia_A100", bits=16)
    heads, neurons = [4, 4, 4, 2, -1, 3], [70, 70, 70, 35, 0, 52]
    steps, prompt = 9, 13
    expected_flops, expected_seconds = 0, 0.0
    for step in range(steps):
        for h, n in zip(heads, neurons):
            work = cm.layer_works([1], [prompt + step + 1], [h], [n])[0]
            cost = cm.decoder_layer(work)
            expected_flops += cost.flops
            expected_seconds += cost.seconds
    got = cm.request(prompt, steps + 1, heads=heads, neurons=neurons).stages["llm_decode"]
    assert got.flops == expected_flops
    assert got.seconds == pytest.approx(expected_seconds, rel=1e-9)


def test_kv_cache_bytes_by_hand():
    model = make_model("L")
    cm = CostModel(model.config, bits=16)
    heads = [4, 4, 4, -1, 4, -1]
    cost = cm.request(20, 6, heads=heads, neurons=[70 if h > 0 else 0 for h in heads])
    assert cost.kv_cache_bytes == 4 * 2 * 32 * (20 + 5) * 2  # 4 layers ran, k and v of width 32, 25 positions


# ---------------------------------------------------------------------------------------------------------------------
# Against torch's FlopCounterMode (eager attention: the CPU sdpa kernel is invisible to the counter)
REDUCTIONS = {
    "none": {},
    "llavolta-in-llm": dict(llavolta_grouping="avgpool1d", llavolta_layer=2, llavolta_stride=2),
    "llavolta-before-llm": dict(llavolta_grouping="avgpool1d", llavolta_layer=-1, llavolta_stride=4),
    "illava-vit": dict(enable_illava_vit=True, illava_vit_k="0", illava_vit_r=4),
    "illava-llm": dict(enable_illava_llm=True, illava_llm_k="2-4", illava_llm_r=0.5),
    "illava-both": dict(enable_illava_vit=True, illava_vit_k="0", illava_vit_r=4, enable_illava_llm=True,
                        illava_llm_k=3, illava_llm_r=0.5),  # fmt: skip
    "prumerge+": dict(token_selecting="prumerge+"),
}


@pytest.fixture(scope="module")
def counted_models():
    # 56px images, patch 14: 16 patches, so every reduction has tokens to work on.
    return {
        kind: make_model(kind, attn="eager", image_size=56, **({"scheduler_rank": 1} if kind == "H" else {}))
        for kind in ("L", "H", None)
    }


def _prompt(seed=0):
    ids = torch.cat([torch.tensor([5, 6, 7]), torch.full((16,), IMAGE_ID), torch.tensor([8, 9, 10, 11])])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(seed))
    return ids[None], pixels


@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@pytest.mark.parametrize("kind,latency", [("L", 1.0), ("L", 0.5), ("H", 0.6), (None, None)])
def test_generate_flops_match_the_counter(counted_models, kind, latency, reduction):
    model = counted_models[kind]
    ids, pixels = _prompt()
    budget = {} if kind is None else {"latency": latency}
    out, measured = counted_generate(model, ids, pixels, **budget, **REDUCTIONS[reduction])
    report = out.efficiency[0]
    assert abs(report.total_flops - measured) <= 0.02 * measured, (report.total_flops, measured)
    assert report.cost.generated_tokens == 4
    assert report.prompt_tokens == ids.shape[1]
    assert report.cost.llm_prompt_tokens == ids.shape[1] - 16 + report.cost.image_tokens + (kind is not None)


def test_gqa_and_per_row_plans(counted_models):
    model = make_model("L", attn="eager", num_kv_heads=2)
    rows = [make_prompt(0), make_prompt(1, text_before=6)]
    ids, mask = left_pad(rows)
    pixels = make_pixels(2)
    latency = torch.tensor([1.0, 0.5])
    out, measured = counted_generate(model, ids, pixels, mask=mask, latency=latency)
    units = out.executed_units.tolist()
    assert units[0] > units[1]
    # Each row's report is what that row alone costs: run alone, the counter agrees.
    for row, seq in enumerate(rows):
        alone, measured = counted_generate(model, seq[None], pixels[row : row + 1], latency=float(latency[row]))
        assert out.efficiency[row].total_flops == alone.efficiency[0].total_flops == measured


@pytest.mark.parametrize("kind", ["L", "H"])
def test_7b_shaped_layers_match_the_counter(kind):
    """LLaVA-1.5-7B widths (Vicuna 4096 x 32 heads, MLP 11008, vocab 32000; CLIP-L/336), with few layers."""
    from ada_hf.tiny_model import build_tiny_model, tiny_config

    config = tiny_config(
        32000, 31999, 31998, scheduler_type=kind, num_layers=3, hidden_size=4096, num_heads=32,
        intermediate_size=11008, image_size=336, patch_size=14, vision_hidden_size=1024, vision_layers=2,
        num_prefix_layers=1, scheduler_rank=8 if kind == "H" else 1, pad_token_id=0,
    )  # fmt: skip
    config.vision_config.num_attention_heads = 16
    config.vision_config.intermediate_size = 4096
    config._attn_implementation = "eager"
    model = build_tiny_model(config)
    ids = torch.cat([torch.tensor([1, 5, 6]), torch.full((576,), 31999), torch.tensor([8, 9])])[None]
    pixels = torch.randn(1, 3, 336, 336)
    out, measured = counted_generate(model, ids, pixels, new_tokens=2, latency=0.7)
    assert abs(out.efficiency[0].total_flops - measured) <= 0.02 * measured


# ---------------------------------------------------------------------------------------------------------------------
# The report
def test_report_fields_and_original_metrics(model_l):
    ids = make_prompt(0)[None]
    out = model_l.generate(
        input_ids=ids, pixel_values=make_pixels(1), latency=0.6, max_new_tokens=5, return_dict_in_generate=True,
        hardware="nvidia_A100",
    )  # fmt: skip
    report = out.efficiency[0]
    d = report.to_dict()
    assert d["generated_tokens"] == 5 and d["prompt_tokens"] == ids.shape[1]
    assert d["llm_prompt_tokens"] == ids.shape[1] + 1  # the <latency> token, once
    assert d["executed_units"] == int(out.executed_units[0])
    assert d["total_flops"] == d["prefill_flops"] + d["decode_flops"]
    assert d["flops_per_generated_token"] == pytest.approx(d["total_flops"] / 5)
    assert d["prefill_seconds"] > 0 and d["decode_seconds"] > 0 and d["hardware"] == "nvidia_A100_40G"
    # Peak memory is a peak: the weights plus the final cache plus one transient, never a sum over steps.
    assert d["modelled_peak_memory_bytes"] < d["prefill_bytes"] + d["decode_bytes"]
    original = report.original_metrics()
    assert set(original) == {"flops", "avg_flops", "prefill_flops", "prefill_time", "memory_consumption",
                             "prefill_memory_consumption"}  # fmt: skip
    heads = out.execution_plan[0].tolist()
    assert original == original_metrics(model_l.config, heads, ids.shape[1] + 1, 5, "nvidia_A100")
    assert original["avg_flops"] == pytest.approx(original["flops"] / 5)
    # The original counts one multiply per LM-head weight and token, scales the MLP activation by d.
    d_model, vocab, T = 32, VOCAB, ids.shape[1] + 1
    per_layer = 0
    for h in (h for h in heads if h > 0):
        linear = sum(2 * i * o * T * h // 4 for i, o in [(32, 32)] * 4 + [(32, 70)] * 2 + [(70, 32)])
        per_layer += linear + 2 * 2 * T * T * 8 * h + 5 * h * T * T + 2 * 7 * d_model * T + 2 * d_model * T
        per_layer += 2 * d_model * T * h // 4
    assert original["prefill_flops"] == per_layer + d_model * vocab


def test_report_recosts_the_same_request_elsewhere(model_h):
    out = model_h.generate(input_ids=make_prompt(0)[None], pixel_values=make_pixels(1), latency=0.6, max_new_tokens=4,
                           return_dict_in_generate=True, hardware="nvidia_A100")  # fmt: skip
    report = out.efficiency[0]
    assert report.on("nvidia_A100").total == report.cost.total
    elsewhere = report.on("nvidia_H100", bits=16)
    assert elsewhere.total.flops == report.total_flops
    assert 2 * elsewhere.kv_cache_bytes == report.cost.kv_cache_bytes  # 16-bit cache vs the fp32 model
    assert 0 < elsewhere.total.seconds < report.cost.total.seconds  # fp32 on an A100 vs 16 bits on an H100


def test_report_counts_tokens_up_to_eos(model_l):
    ids = make_prompt(0)[None]
    free = model_l.generate(input_ids=ids, pixel_values=make_pixels(1), max_new_tokens=6)
    eos = int(free[0, ids.shape[1] + 2])  # the third generated token becomes the end of sequence
    out = model_l.generate(
        input_ids=ids, pixel_values=make_pixels(1), max_new_tokens=6, eos_token_id=eos, return_dict_in_generate=True
    )
    assert out.efficiency[0].cost.generated_tokens == 3


def test_plain_llava_reports_too(counted_models):
    ids, pixels = _prompt()
    out = counted_models[None].generate(input_ids=ids, pixel_values=pixels, max_new_tokens=2,
                                        return_dict_in_generate=True)  # fmt: skip
    report = out.efficiency[0]
    assert report.executed_units is None and report.cost.stages["scheduler"].flops == 0
    assert report.prefill_seconds is None  # no hardware named: no times


# ---------------------------------------------------------------------------------------------------------------------
# Millisecond budgets
TOY = Hardware("toy", bandwidth=1e9, peak={32: 1e10, 16: 1e10, 8: 1e10}, layer_overhead_s=1e-4, call_overhead_s=2e-4)


def _predicted_ms(model, ids, units, new_tokens):
    from ada_hf.efficiency import row_workloads

    cm = CostModel(model.config, TOY, bits=32)
    full = torch.cat([ids, torch.tensor([[LATENCY_ID]])], 1)
    work = row_workloads(model.config, full, None, [ids.shape[1]], None, None, "none", None, None)[0]
    heads, neurons = costliest_counts(model.config, units)
    return work.request(cm, heads, neurons, new_tokens, scheduler=True).total.seconds * 1e3


@pytest.mark.parametrize("kind", ["L", "H"])
def test_millisecond_budget_picks_the_largest_that_fits(kind):
    model = make_model(kind, **({"scheduler_rank": 1} if kind == "H" else {}))
    ids = make_prompt(0)[None]
    times = [_predicted_ms(model, ids, u, 4) for u in range(model.scheduler.max_units + 1)]
    assert times == sorted(times) and times[0] < times[-1]
    for units in (0, model.scheduler.max_units // 2, model.scheduler.max_units):
        target = (times[units] + (times[units + 1] if units + 1 < len(times) else times[units] * 2)) / 2
        out = model.generate(
            input_ids=ids, pixel_values=make_pixels(1), latency=f"{target}ms", hardware=TOY, max_new_tokens=4,
            return_dict_in_generate=True,
        )  # fmt: skip
        executed = int(out.executed_units[0]) - model.scheduler.num_prefix_units
        assert executed == units
        report = out.efficiency[0]
        assert report.target_seconds == pytest.approx(target / 1e3)
        assert report.cost.total.seconds * 1e3 <= target * (1 + 1e-9)


def test_unreachable_target_names_the_fastest_time(model_l):
    ids = make_prompt(0)[None]
    fastest = _predicted_ms(model_l, ids, 0, 4)
    with pytest.raises(ValueError, match=f"predicted at {fastest:.4g} ms"):
        model_l.generate(input_ids=ids, pixel_values=make_pixels(1), latency=f"{fastest / 2}ms", hardware=TOY,
                         max_new_tokens=4)  # fmt: skip


@pytest.mark.parametrize("bad", ["150", "ms", "-3ms", "0ms", "1.5 h", "fast"])
def test_malformed_time_strings(bad, model_l):
    with pytest.raises(ValueError, match="neither a share of compute"):
        parse_time_target(bad)
    with pytest.raises(ValueError, match="neither a share of compute"):
        model_l.generate(input_ids=make_prompt(0)[None], pixel_values=make_pixels(1), latency=bad, hardware=TOY)


def test_time_strings():
    assert parse_time_target("150ms") == pytest.approx(0.15)
    assert parse_time_target(" 0.2 s") == pytest.approx(0.2)


def test_unknown_hardware(model_l):
    with pytest.raises(ValueError, match="Unknown hardware 'nvidia_A1000'.*nvidia_A100_40G"):
        get_hardware("nvidia_A1000")
    with pytest.raises(ValueError, match="Unknown hardware"):
        model_l.generate(input_ids=make_prompt(0)[None], pixel_values=make_pixels(1), latency="20ms",
                         hardware="tpu")  # fmt: skip
    assert get_hardware("nvidia_H100") is HARDWARE["nvidia_H100_SXM"]


def test_local_profile_round_trip_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="ada-hf calibrate"):
        get_hardware("local")
    measured = Hardware("local", 2e10, {32: 5e10}, layer_overhead_s=3e-5, matmul={32: GRID}, attention={32: FUSED},
                        prefill_factor=1.2, decode_factor=1.3, cache_bandwidth=9e9, source="test")  # fmt: skip
    path = save_local_profile(measured)
    assert path.parent.parent == tmp_path and not list(path.parent.glob("*.tmp"))
    assert load_local_profile() == get_hardware("local") == measured
    # A profile written before the curves and factors were measured still loads, as a plain roofline.
    new_fields = ("matmul", "attention", "prefill_factor", "decode_factor", "cache_bandwidth")
    old = {k: v for k, v in measured.to_dict().items() if k not in new_fields}
    path.write_text(json.dumps(old))
    assert get_hardware("local") == Hardware("local", 2e10, {32: 5e10}, layer_overhead_s=3e-5, source="test")


# rows x width -> FLOP/s: twice as fast per step of rows, and per 4x of width
GRID = [[m, w, 1e9 * (1 + i) * (1 + j)] for i, m in enumerate((1, 16, 256)) for j, w in enumerate((64, 256))]
FUSED = [[16, 1e9], [64, 4e9]]


def test_measured_matmul_and_attention_speeds_interpolate_in_log_space():
    hw = Hardware("toy", 1e9, {32: 9e9}, matmul={32: GRID}, attention={32: FUSED})
    assert hw.matmul_throughput(32, 16, 256, 256) == pytest.approx(4e9)  # a grid point
    assert hw.matmul_throughput(32, 16, 64, 1024) == pytest.approx(4e9)  # widths by their geometric mean
    assert hw.matmul_throughput(32, 4, 64, 64) == pytest.approx(1e9 * 2**0.5)  # halfway (log) between 1 and 16
    assert hw.matmul_throughput(32, 10**6, 10**4, 10**4) == pytest.approx(6e9)  # clamped at the far corner
    assert hw.matmul_throughput(32, 0.5, 8, 8) == pytest.approx(1e9)  # and at the near one
    assert Hardware("toy", 1e9, {32: 9e9}).matmul_throughput(32, 16, 256, 256) == 9e9  # not measured: the peak
    assert hw.attention_throughput(32, 32) == pytest.approx(2e9)
    assert hw.attention_throughput(32, 256) == pytest.approx(4e9)
    assert Hardware("toy", 1e9, {32: 9e9}).attention_throughput(32, 32) is None


def test_measured_speeds_time_linear_layers_and_fused_attention(model_l):
    config = model_l.config
    assert config.text_config._attn_implementation == "sdpa"
    d, hd = config.text_config.hidden_size, config.text_config.head_dim
    work = LayerWork(tokens=16, context=16, heads=4, kv_heads=4, neurons=70)
    plain = Hardware("toy", 1e30, {32: 1e9})  # compute-bound everywhere: time = FLOPs / speed
    slow_matmul = Hardware("toy", 1e30, {32: 1e9}, matmul={32: [[1, 1, 5e8]]})
    slow_attention = Hardware("toy", 1e30, {32: 1e9}, attention={32: [[hd, 2.5e8]]})
    base = CostModel(config, plain, 32).decoder_layer(work)
    linear_flops = 2 * 16 * (4 * d * d + 3 * d * 70)
    attention_ops = 4 * 16 * 16 * 4 * hd + 5 * 16 * 16 * 4
    timed = CostModel(config, slow_matmul, 32).decoder_layer(work).seconds
    assert timed == pytest.approx(base.seconds + linear_flops / 1e9)
    assert CostModel(config, slow_attention, 32).decoder_layer(work).seconds == pytest.approx(
        base.seconds + 3 * attention_ops / 1e9
    )
    # The key/value cache (its append, and attention reading it) moves at the measured cache bandwidth.
    memory_bound = Hardware("toy", 1e9, {32: 1e30}, attention={32: [[hd, 1e30]]}, matmul={32: [[1, 1, 1e30]]})
    slow_cache = dataclasses.replace(memory_bound, cache_bandwidth=5e8)
    cache_bytes = 4 * (2 * (2 * 16 - 16) * 4 * hd + (2 * 16 * 4 * hd + 2 * 16 * 4 * hd))  # append + attention reads
    slower = CostModel(config, slow_cache, 32).decoder_layer(work).seconds
    assert slower == pytest.approx(CostModel(config, memory_bound, 32).decoder_layer(work).seconds + cache_bytes / 1e9)
    # FLOPs and bytes do not depend on the hardware; eager attention is not timed by the sdpa measurement.
    assert CostModel(config, slow_attention, 32).decoder_layer(work).bytes == base.bytes
    eager = copy.deepcopy(config)
    eager.text_config._attn_implementation = "eager"
    assert CostModel(eager, slow_attention, 32).decoder_layer(work).seconds == pytest.approx(base.seconds)


def test_profile_factors_scale_prefill_and_decode():
    config = make_model("L").config
    plain = Hardware("toy", 1e9, {32: 1e10}, layer_overhead_s=1e-4, call_overhead_s=2e-4, request_overhead_s=3e-4)
    scaled = dataclasses.replace(plain, prefill_factor=2.0, decode_factor=3.0)
    fixed = dataclasses.replace(plain, layer_overhead_s=0.0, call_overhead_s=0.0, request_overhead_s=0.0)
    a, b, c = (CostModel(config, hw, 32).request(20, 5, images=1, image_tokens=8) for hw in (plain, scaled, fixed))
    prefill_overheads = a.prefill.seconds - c.prefill.seconds
    decode_overheads = a.decode.seconds - c.decode.seconds
    assert b.prefill.seconds == pytest.approx(2 * c.prefill.seconds + prefill_overheads)
    assert b.decode.seconds == pytest.approx(3 * c.decode.seconds + decode_overheads)


def test_batched_target_chooses_per_row(model_l):
    rows = [make_prompt(0), make_prompt(1, text_before=40)]
    ids, mask = left_pad(rows)
    short = _predicted_ms(model_l, rows[0][None], model_l.scheduler.max_units, 3)
    out = model_l.generate(
        input_ids=ids, attention_mask=mask, pixel_values=make_pixels(2), latency=f"{short}ms", hardware=TOY,
        max_new_tokens=3, return_dict_in_generate=True,
    )  # fmt: skip
    units = out.executed_units.tolist()
    assert units[0] == model_l.scheduler.num_total_units and units[1] < units[0]  # the long prompt gets fewer
    assert PAD_ID not in out.sequences[0, -3:].tolist()


def test_calibrate_stores_a_usable_profile(tmp_path, monkeypatch):
    from ada_hf.calibrate import MATMUL_ROWS, MATMUL_WIDTHS
    from ada_hf.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert main(["calibrate", "--threads", "1"]) == 0
    hw = get_hardware("local")
    assert hw.bandwidth > 0 and hw.peak[32] > 0 and hw.layer_overhead_s >= 0 and hw.call_overhead_s >= 0
    assert len(hw.matmul[32]) == len(MATMUL_ROWS) * len(MATMUL_WIDTHS) and len(hw.attention[16]) == 4
    assert hw.peak[32] == max(f for *_, f in hw.matmul[32])
    assert hw.prefill_factor > 0 and hw.decode_factor > 0 and hw.cache_bandwidth > 0
    model = make_model("L")
    out = model.generate(input_ids=make_prompt(0)[None], pixel_values=make_pixels(1), latency=0.5, max_new_tokens=2,
                         return_dict_in_generate=True, hardware="local")  # fmt: skip
    assert out.efficiency[0].prefill_seconds > 0
