"""Token-merging CPU benchmark: iLLaVA presets and PruMerge(+), alone and with the latency scheduler.

The companion of `bench_reduction.py` (LLaVolta pooling) for the reductions that change the number of image tokens
before or inside the LLM by merging: `illava-image`, `illava-video` (TOKEN_REDUCTION_PRESETS), `prumerge`, `prumerge+`
(`token_selecting`), each alone and with `latency=0.6`. The model is `bench_core`'s 7B-shaped narrow decoder (32 layers
of 32 heads, hidden 512, 16 prefix layers) with a CLIP tower of LLaVA-1.5's depth (24 layers, 336/14 = 576 patches,
narrow: 64 wide), so the published iLLaVA layers exist. Weights are random: PruMerge's outlier selection keeps
whatever a random CLIP's attention makes outliers, so its token count here says nothing about real images.

Each configuration gets its prompt with the placeholder count the LLM receives (`model.image_tokens_per_image`, or the
per-image count PruMerge chooses), as the processor writes it with `num_image_tokens=`. One process run measures,
interleaved in random order per repetition after warm-up: prefill time, decode time per token (manual cached loop, as
`bench_core.run_request`), prefill FLOPs (FlopCounterMode, CPU sdpa registered by `bench_core`; the total includes
the vision tower's explicit attention at the merge layers), the image tokens entering the LLM and after the LLM-stage
merge, and the ratios against plain. Each configuration is also checked for identical greedy tokens between a cached
`generate` on the full-grid prompt and a `use_cache=False` `generate`.

    python benchmarks/bench_merging.py            # ~4 minutes on 2 idle cores
    python benchmarks/bench_merging.py --quick    # ~1 minute smoke run (writes merging_quick.*)

Target (from the token-reduction issue): each configuration's prefill time ratio is within 15% of its measured-FLOPs
ratio. CPU time other processes used during each repetition is recorded (see `bench_reduction.ForeignCpu`).
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import run_request  # noqa: E402
from harness import (  # noqa: E402
    IMAGE_TOKEN,
    Config,
    ForeignCpu,
    build_ada,
    code_state,
    fmt_ms,
    make_inputs,
    pf,
    resolve_args,
    standard_parser,
    stats,
)

from ada_hf.token_reduction import TOKEN_REDUCTION_PRESETS  # noqa: E402
from ada_hf.vision_merging import collapse_image_tokens  # noqa: E402

TOL_TIME_VS_FLOPS = 0.15
PRUMERGE_NOTE = """
## Reading the PruMerge rows

With random CLIP weights, few patches are CLS-attention outliers, so PruMerge keeps 2 image tokens and PruMerge+ 6 (the
published models keep about 32 and 144 of 576). The prefill is then about 30 tokens long, and at that length a decoder
layer's time on a CPU is mostly a fixed cost (operator dispatch and bringing the layer's weights through the caches;
`bench_reduction.py` measures about 1.2 ms per layer at 8 tokens), which FLOPs do not see: the same gap appears for a
text-only prompt of the same length in `reduction.md`. The time ratio therefore stays at about twice the FLOPs ratio,
and the 15% target fails for these rows. That is a property of tiny sequences on this CPU, not of the selection code
(cached and uncached generation agree).
"""

# name, latency, settings
CONFIGS = [("plain", None, {})]
for _name, _settings in (
    ("illava-image", TOKEN_REDUCTION_PRESETS["illava-image"]),
    ("illava-video", TOKEN_REDUCTION_PRESETS["illava-video"]),
    ("prumerge", {"token_selecting": "prumerge"}),
    ("prumerge+", {"token_selecting": "prumerge+"}),
):
    CONFIGS.append((_name, None, dict(_settings)))
CONFIGS.append(("latency=0.6", 0.6, {}))
CONFIGS += [(f"{name} + latency=0.6", 0.6, s) for name, lat, s in CONFIGS[1:5]]


def llm_image_tokens(model, settings: dict, pixel_values: torch.Tensor) -> int:
    """Image tokens the LLM receives per image with these settings (PruMerge: what it keeps of this image)."""
    if settings.get("token_selecting", "none") != "none":
        features = model.model.get_image_features(pixel_values, token_selecting=settings["token_selecting"])
        return int(features.pooler_output[0].shape[0])
    return model.image_tokens_per_image(**settings)


def prompts_for(inputs, count: int, pad_id: int):
    """The benchmark prompt (without and with <latency>) with `count` image placeholders, as the processor writes it."""
    ids, ids_lat, pixel_values = inputs
    short = [collapse_image_tokens(x, None, IMAGE_TOKEN, 576, count, pad_id)[0] for x in (ids, ids_lat)]
    return short[0], short[1], pixel_values


def after_llm_merge(reductions) -> int | None:
    merged = [r for r in reductions if getattr(r, "kind", None) == "illava"]
    return int(merged[-1].kept.shape[1]) if merged else None


def main(argv=None):
    p = standard_parser(__doc__)
    p.set_defaults(vision_layers=24, vision_hidden_size=64)
    args = p.parse_args(argv)
    name, out = resolve_args(args, "merging", reps=(20, 2), warmup=(2, 1), new_tokens=(16, 4))
    with torch.inference_mode():
        run(args, name, out)


def run(args, name: str, out: Path) -> None:
    started = time.time()
    code = code_state(Path(__file__).resolve().parents[1])
    model = build_ada(args, "L")
    pad_id = model.generation_config.pad_token_id = 0  # any id: the benchmark prompts are never padded
    inputs = make_inputs(args)
    configs = []
    for cname, latency, settings in CONFIGS:
        cfg = Config(cname, "L", latency, model, kwargs=settings)
        count = llm_image_tokens(model, settings, inputs[2])
        cfg.info.update(settings=settings, image_tokens_llm=count)
        cfg.inputs = prompts_for(inputs, count, pad_id) if count != 576 else inputs
        configs.append(cfg)

    for cfg in tqdm(configs, desc="FLOPs / records", file=sys.stderr):
        r = run_request(cfg, cfg.inputs, n_new=1, flops=True)
        cfg.info.update(prefill_flops=r["prefill_flops"], after_llm_merge=after_llm_merge(r["reductions"]))
        if r["plan"] is not None:
            cfg.info["layers_run"] = int((r["plan"].heads_executed()[0] > 0).sum())
            r["plan"].release()

    for cfg in tqdm(configs[1:], desc="generate cached/uncached", file=sys.stderr):
        ids, _, pixel_values = inputs  # the full-grid prompt: generate collapses it
        kw = dict(cfg.kwargs, **({"latency": cfg.latency} if cfg.latency is not None else {}))
        runs = [
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                           max_new_tokens=6, do_sample=False, use_cache=use_cache, **kw)[0, -6:].tolist()
            for use_cache in (True, False)
        ]  # fmt: skip
        cfg.info["cached_equals_uncached"] = runs[0] == runs[1]

    rng = random.Random(args.seed)
    monitor, foreign = ForeignCpu(), []
    order = list(configs)
    for rep in tqdm(range(args.warmup + args.reps), desc="timing", file=sys.stderr):
        rng.shuffle(order)
        monitor.mark()
        for cfg in order:
            r = run_request(cfg, cfg.inputs, n_new=args.new_tokens)
            if rep >= args.warmup:
                cfg.prefill.append(r["prefill_s"])
                cfg.decode.append(r["decode_s_per_token"])
        if rep >= args.warmup:
            foreign.append(monitor.cores())

    ref = configs[0]
    ref_time, ref_flops = stats(ref.prefill)["median"], ref.info["prefill_flops"]["total"]
    checks = []
    for cfg in configs:
        i = cfg.info
        i["prefill"], i["decode"] = stats(cfg.prefill), stats(cfg.decode)
        i["flops_ratio"] = i["prefill_flops"]["total"] / ref_flops
        i["time_ratio"] = i["prefill"]["median"] / ref_time
        i["time_vs_flops"] = i["time_ratio"] / i["flops_ratio"] - 1
        if cfg is not ref:
            ok = abs(i["time_vs_flops"]) <= TOL_TIME_VS_FLOPS
            measured = f"{i['time_ratio']:.3f} vs {i['flops_ratio']:.3f} ({i['time_vs_flops']:+.1%})"
            checks.append((f"{cfg.name}: prefill time ratio within 15% of the FLOPs ratio", measured, pf(ok)))
            checks.append((f"{cfg.name}: cached generate == use_cache=False generate",
                           str(i["cached_equals_uncached"]), pf(i["cached_equals_uncached"])))  # fmt: skip
    wall = time.time() - started
    report = render(args, configs, checks, foreign, wall, code)
    (out / f"{name}.md").write_text(report)
    (out / f"{name}.json").write_text(json.dumps(dict(
        args=vars(args), code=code, wall_s=wall, foreign_cores=foreign,
        configs={c.name: c.info for c in configs}, checks=checks), indent=1, default=str))  # fmt: skip
    print(report)
    if any(result == "FAIL" for *_, result in checks):
        sys.exit(1)


def render(args, configs, checks, foreign, wall, code) -> str:
    lines = [
        "# Token-merging benchmark: iLLaVA presets and PruMerge (CPU)",
        "",
        f"Model: ada-L, {args.layers} layers x {args.heads} heads, hidden {args.hidden_size}, P={args.prefix_layers}; "
        f"CLIP {args.vision_layers} layers x {args.vision_hidden_size} wide at 336/14 = 576 patches (random weights); "
        f"prompt {args.prefix_tokens} + image + {args.question_tokens} tokens; fp32, sdpa, {args.threads} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}. {args.reps} measured reps after "
        f"{args.warmup} warm-up, interleaved in random order; decode = {args.new_tokens} greedy steps with the cache. "
        f"Times: median [IQR] ms. Ratios against **plain**, whole prefill (vision tower included). Code: ada_hf at "
        f"{code.get('head', '?')}. Wall time {wall:.0f} s. CPU used by other processes per repetition: at most "
        f"{max(foreign):.2f} cores (median {stats(foreign)['median']:.2f}).",
        "",
        "*image tokens* = placeholders the LLM receives per image -> tokens left after iLLaVA's LLM-stage merge.",
        "",
        "| config | layers run | image tokens | prefill ms | decode ms/token | prefill GFLOPs (decoder) | FLOPs ratio "
        "| time ratio | time/FLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        i = c.info
        after = f" -> {i['after_llm_merge']}" if i.get("after_llm_merge") is not None else ""
        f = i["prefill_flops"]
        rel = "–" if c is configs[0] else None
        lines.append(
            f"| {c.name} | {i.get('layers_run', args.layers)}/{args.layers} | {i['image_tokens_llm']}{after} | "
            f"{fmt_ms(i['prefill'])} | {fmt_ms(i['decode'])} | {f['total'] / 1e9:.2f} ({f['decoder'] / 1e9:.2f}) | "
            f"{rel or format(i['flops_ratio'], '.3f')} | {rel or format(i['time_ratio'], '.3f')} | "
            f"{rel or format(i['time_vs_flops'], '+.1%')} |"
        )
    lines += ["", "## Targets", "", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {r} |" for t, m, r in checks]
    return "\n".join(lines) + "\n" + PRUMERGE_NOTE


if __name__ == "__main__":
    main()
