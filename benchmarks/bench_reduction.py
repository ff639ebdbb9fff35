"""Token-reduction CPU benchmark: LLaVolta visual-token pooling, the latency scheduler, and both together.

Same "7B-shaped narrow" model as `bench_core.py` (32 decoder layers of 32 heads, 16 prefix layers, 576 image tokens,
hidden 512), variant ada-L only. One process run measures, interleaved in random order per repetition after warm-up:

* plain: no budget, no pooling (the reference for every ratio);
* llavolta-heavy (K=2, s=8) and llavolta-light (K=16, s=8), no budget (`TOKEN_REDUCTION_PRESETS`);
* scheduler alone: latency 0.6;
* combined: llavolta-heavy + latency 0.6, llavolta-light + latency 0.6.

For each: the image tokens entering layers >= K (read from the prefill output's pooling record), the spec's "visual
token x layer" units per image (LLAVOLTA_ILLAVA.md A.3 "Compute model", counted over the layers the execution plan
actually ran), prefill time, decode time per token (manual cached decode loop, as in `bench_core.run_request`: the
plan is passed back with `execution_plan=`, the pooling record travels on the cache), prefill FLOPs (FlopCounterMode,
CPU sdpa op registered by `bench_core`), total and under the language model, and the FLOPs and time ratios against
plain. The decoder FLOPs attributable to the image are estimated as decoder FLOPs(prompt with the image) minus decoder
FLOPs(the same prompt with the 576 image tokens left out, same budget and settings); the same difference is timed for
the prefill. Each pooled configuration is also checked for identical greedy tokens between a cached `generate` and a
`use_cache=False` `generate` (full recompute, pooling every step). A separate, hooked pass splits each prefill into
phases (vision tower, decoder layers before K and from K on, the rest) with their FLOPs, to show where any gap between
the time ratio and the FLOPs ratio comes from.

    python benchmarks/bench_reduction.py            # full run, ~4 minutes on 2 idle cores
    python benchmarks/bench_reduction.py --quick    # ~1 minute smoke run (writes reduction_quick.*)

Targets (from the issue): every reduced configuration's prefill time ratio is within 15% of its measured-FLOPs ratio
(|t_ratio / f_ratio - 1| <= 0.15), and with the heavy preset the LLM's image-token work falls by at least 5x
(visual token x layer units: 576*32 / (576*2 + 72*30) = 5.6x).

Timings are wall-clock and the machine may be shared: the report prints the load average at start, per repetition and
at end (as bench_core does), and the ratio checks also show the ratio computed from the per-configuration minima.
Because the 1-minute load average lags and counts this process too, each repetition also measures the CPU time other
processes used (system busy time minus this process's); by default the run waits for them to go quiet before a
repetition, and a measured repetition they disturbed (> --foreign-max cores) is discarded whole and run again (at most
--max-redo times, and only during the first --redo-budget seconds of timing, so a busy machine cannot stretch the run
without bound; --no-redo-disturbed turns this off). The report says how many were discarded. Each run also appends
its ratios to `<name>_history.jsonl` beside the report, and the report lists every recorded run: the machine's speed
drifts between runs, so a target near its tolerance is also checked over all recorded quiet runs of the same ada_hf
sources.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_core and harness, when run from elsewhere
# Importing harness registers the CPU sdpa FLOP formula and puts the repo root on sys.path.
from bench_core import plan_summary, run_request  # noqa: E402
from harness import (  # noqa: E402
    IMAGE_TOKEN,
    LATENCY_TOKEN,
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

TOL_TIME_VS_FLOPS = 0.15  # |t_ratio / f_ratio - 1|
MIN_HEAVY_IMAGE_WORK_FACTOR = 5.0

# name, latency, LLaVolta preset
CONFIGS = (
    ("plain", None, None),
    ("llavolta-heavy", None, "llavolta-heavy"),
    ("llavolta-light", None, "llavolta-light"),
    ("latency=0.6", 0.6, None),
    ("llavolta-heavy + latency=0.6", 0.6, "llavolta-heavy"),
    ("llavolta-light + latency=0.6", 0.6, "llavolta-light"),
)


# --------------------------------------------------------------------------------------------------------------------
def text_only_inputs(args):
    """The benchmark prompt with the 576 image tokens left out (same text tokens, same <latency> token), no pixels."""
    ids, ids_lat, _ = make_inputs(args)
    keep = ids[0] != IMAGE_TOKEN
    keep_lat = ids_lat[0] != IMAGE_TOKEN
    return ids[:, keep], ids_lat[:, keep_lat], None


def pooling_info(reductions, input_ids: torch.Tensor) -> dict:
    """K, s and the image tokens entering layers >= K, read from the prefill's pooling record (one image)."""
    pooled = [r for r in reductions if getattr(r, "kind", "llavolta") == "llavolta"]
    others = [getattr(r, "kind", "?") for r in reductions if getattr(r, "kind", "llavolta") != "llavolta"]
    assert not others, f"unexpected reductions {others}"
    n_img = int((input_ids == IMAGE_TOKEN).sum())
    if not pooled:
        return dict(K=None, stride=None, image_tokens_in=n_img, image_tokens_after=n_img, sequence_after=None)
    assert len(pooled) == 1, pooled
    rec = pooled[0]
    layout = rec.layout
    first = layout.first[0].cpu()
    image_entries = input_ids[0].cpu()[first] == IMAGE_TOKEN
    strides = layout.counts[0].cpu()[image_entries].unique().tolist()
    return dict(
        K=int(rec.layer),
        stride=int(strides[0]) if len(strides) == 1 else strides,
        image_tokens_in=n_img,
        image_tokens_after=int(image_entries.sum()),
        sequence_in=int(layout.source_length),
        sequence_after=int(layout.length),
    )


def visual_units(layers_executed: list[int], K: int | None, before: int, after: int) -> int:
    """The spec's compute model, per image: sum over the layers that ran of the image tokens each one processes."""
    return sum(before if K is None or layer < K else after for layer in layers_executed)


def executed_layers(plan, num_layers: int) -> list[int]:
    if plan is None:
        return list(range(num_layers))
    heads = plan.heads_executed()[0]
    return [i for i in range(num_layers) if int(heads[i]) >= 0]


# --------------------------------------------------------------------------------------------------------------------
# Where the prefill time goes: forward hooks time the vision tower, the projector, the language model and each decoder
# layer that runs as a module (ada-L runs whole layers as modules; skipped ones are not called), in a separate pass so
# the main timing stays uninstrumented; a FLOP-counted prefill gives the same split of the FLOPs.
class PhaseTimer:
    def __init__(self, model):
        inner = model.model
        self.spans: dict[str, list[float]] = {}
        self.handles = []
        modules = {"vision": inner.vision_tower, "projector": inner.multi_modal_projector, "lm": inner.language_model,
                   "lm_head": model.lm_head}  # fmt: skip
        modules.update({f"layer{i}": layer for i, layer in enumerate(inner.language_model.layers)})
        for key, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._start(key)))
            self.handles.append(module.register_forward_hook(self._stop(key)))
        self.open: dict[str, float] = {}

    def _start(self, key):
        def hook(module, args):
            self.open[key] = time.perf_counter()

        return hook

    def _stop(self, key):
        def hook(module, args, output):
            self.spans.setdefault(key, []).append(time.perf_counter() - self.open.pop(key))

        return hook

    def take(self) -> dict[str, float]:
        spans, self.spans = self.spans, {}
        return {k: sum(v) for k, v in spans.items()}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layer_flops(cfg: Config, ins) -> dict[str, float]:
    """Prefill FLOPs per decoder layer (`layer{i}`), under the vision tower and projector, and in total."""
    fc = FlopCounterMode(display=False)
    with fc:
        r = run_request(cfg, ins, n_new=0)
    if r["plan"] is not None:
        r["plan"].release()
    per_module = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    out = {"total": fc.get_total_flops()}
    for key, value in per_module.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == "language_model" and parts[-2] == "layers":
            out[f"layer{parts[-1]}"] = value
        elif key.endswith(".model.vision_tower"):
            out["vision"] = value
        elif key.endswith(".model.multi_modal_projector"):
            out["projector"] = value
    return out


def breakdown(configs, inputs, reps: int, seed: int) -> None:
    """Median per-phase prefill times (hooked pass, configurations interleaved) and FLOPs, into `cfg.info`."""
    for cfg in configs:
        cfg.info["phase_flops"] = layer_flops(cfg, inputs)
    timer = PhaseTimer(configs[0].model)
    samples = {c.name: [] for c in configs}
    rng = random.Random(seed + 7)
    order = list(configs)
    try:
        for _ in tqdm(range(reps + 1), desc="phase breakdown", file=sys.stderr):
            rng.shuffle(order)
            for cfg in order:
                gc.disable()
                try:
                    r = run_request(cfg, inputs, n_new=0)
                finally:
                    gc.enable()
                spans = timer.take()
                spans["prefill"] = r["prefill_s"]
                samples[cfg.name].append(spans)
                del r
    finally:
        timer.remove()
    for cfg in configs:
        runs = samples[cfg.name][1:]  # the first repetition warms up
        K = cfg.info["pooling"]["K"]
        flops = cfg.info["phase_flops"]
        layers = cfg.info["layers_executed"]
        before = [i for i in layers if K is None or i < K]
        after = [i for i in layers if K is not None and i >= K]

        def med(fn):
            return statistics.median(fn(s) for s in runs)

        def layer_sum(s, idx):
            return sum(s.get(f"layer{i}", 0.0) for i in idx)

        ph = dict(
            prefill=med(lambda s: s["prefill"]),
            vision=med(lambda s: s.get("vision", 0.0) + s.get("projector", 0.0)),
            layers_before=med(lambda s: layer_sum(s, before)),
            layers_after=med(lambda s: layer_sum(s, after)),
            lm_other=med(lambda s: s["lm"] - layer_sum(s, layers)),
            rest=med(lambda s: s["prefill"] - s["lm"] - s.get("vision", 0.0) - s.get("projector", 0.0)),
            n_before=len(before),
            n_after=len(after),
            flops_before=sum(flops.get(f"layer{i}", 0) for i in before),
            flops_after=sum(flops.get(f"layer{i}", 0) for i in after),
            flops_vision=flops.get("vision", 0) + flops.get("projector", 0),
            flops_total=flops["total"],
        )
        assert all(f"layer{i}" in flops for i in layers), (cfg.name, sorted(flops))
        cfg.info["phases"] = ph


def layer_scaling(model, lengths=(8, 24, 96, 192, 600), reps: int = 7, seed: int = 0) -> dict:
    """Median time per decoder layer when all of them run in turn on the same input (causal, no cache: each layer's
    weights come through the caches as in a forward), per sequence length, lengths interleaved: how much of a short
    (pooled) layer's time does not scale with its tokens."""
    lm = model.model.language_model
    layers = list(lm.layers)
    hidden = model.config.text_config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for T in lengths:
        h = torch.randn(1, T, hidden, generator=gen)
        pos = torch.arange(T)[None]
        data[T] = (h, pos, lm.rotary_emb(h, position_ids=pos))
    times = {T: [] for T in lengths}
    order = list(lengths)
    rng = random.Random(seed)
    for rep in range(reps + 1):
        rng.shuffle(order)
        for T in order:
            h, pos, pe = data[T]
            t0 = time.perf_counter()
            for layer in layers:
                layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos, use_cache=False)
            if rep:
                times[T].append((time.perf_counter() - t0) / len(layers))
    out = {}
    for T in lengths:
        h, pos, pe = data[T]
        fc = FlopCounterMode(display=False)
        with fc:
            layers[0](h, attention_mask=None, position_embeddings=pe, position_ids=pos, use_cache=False)
        out[T] = dict(ms=1e3 * statistics.median(times[T]), gflops=fc.get_total_flops() / 1e9)
    return out


# --------------------------------------------------------------------------------------------------------------------
def generate_tokens(model, inputs, latency, settings: dict, max_new_tokens: int, use_cache: bool) -> list[int]:
    ids, _, pixel_values = inputs
    kw = dict(latency=latency) if latency is not None else {}
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                         max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache, **kw,
                         **settings)  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def main(argv=None):
    # --out, --name, --quick, --reps (default 30), --warmup (default 3), --new-tokens (default 16), model shape
    p = standard_parser(__doc__)
    p.add_argument("--check-tokens", type=int, default=None, help="tokens per cached/uncached generate (default 8)")
    p.add_argument("--breakdown-reps", type=int, default=None, help="hooked prefill repetitions for the phase "
                   "breakdown (default 8)")  # fmt: skip
    p.add_argument(
        "--redo-disturbed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for other processes to go quiet before each repetition, and discard and re-run a\n"
        "measured repetition during which they used more than --foreign-max cores (default on)",
    )
    p.add_argument("--foreign-max", type=float, default=0.15, help="cores other processes may use (default 0.15)")
    p.add_argument("--max-redo", type=int, default=None, help="most repetitions re-run (default 10)")
    p.add_argument("--max-wait", type=float, default=90.0, help="most seconds spent waiting for quiet, in all")
    p.add_argument(
        "--redo-budget",
        type=float,
        default=None,
        help="no more waiting or re-running once the timing phase has run this many seconds\n"
        "(default 300; 60 with --quick): the run stays bounded on a busy machine",
    )
    args = p.parse_args(argv)
    name, out_dir = resolve_args(args, "reduction", reps=(30, 2), warmup=(3, 1), new_tokens=(16, 4),
                                 check_tokens=(8, 3), breakdown_reps=(8, 2), redo_budget=(300.0, 60.0),
                                 max_redo=(10, 2))  # fmt: skip
    with torch.inference_mode():
        run(args, name, out_dir)


def run(args, name: str, out_dir: Path) -> None:
    started = time.time()
    load_start = os.getloadavg()
    repo = Path(__file__).resolve().parents[1]
    code = code_state(repo)
    print(f"building ada-L ({args.layers} layers x {args.heads} heads, hidden {args.hidden_size}) ...", file=sys.stderr)
    model = build_ada(args, "L")
    assert model.config.text_config._attn_implementation == "sdpa"
    n_layers = args.layers
    inputs = make_inputs(args)
    text_inputs = text_only_inputs(args)

    configs = []
    for cname, latency, preset in CONFIGS:
        settings = dict(TOKEN_REDUCTION_PRESETS[preset]) if preset else {}
        cfg = Config(cname, "L", latency, model, kwargs=settings)
        cfg.info.update(preset=preset, settings=settings)
        configs.append(cfg)
    # The image-free counterparts (timed prefill only): no image -> nothing to pool, so only the budget matters.
    text_cfgs = {
        None: Config("text only (no image)", "L", None, model),
        0.6: Config("text only (no image), latency=0.6", "L", 0.6, model),
    }

    # ---- FLOPs, plans, pooling records (one untimed request each, under FlopCounterMode) ----
    for cfg in tqdm(configs + list(text_cfgs.values()), desc="FLOPs/plans", file=sys.stderr):
        text = cfg in text_cfgs.values()
        ins = text_inputs if text else inputs
        r = run_request(cfg, ins, n_new=1, flops=True)
        prompt = ins[1] if cfg.latency is not None else ins[0]
        pool = pooling_info(r["reductions"], prompt)
        layers = executed_layers(r["plan"], n_layers)
        cfg.info.update(
            prefill_flops=r["prefill_flops"],
            decode_flops=r.get("decode_flops"),
            plan=plan_summary(r["plan"], "L", n_layers, args.heads),
            layers_executed=layers,
            pooling=pool,
            prompt_tokens=int(prompt.shape[1]),
            visual_units=visual_units(layers, pool["K"], pool["image_tokens_in"], pool["image_tokens_after"]),
        )
        if r["plan"] is not None:
            r["plan"].release()
        del r

    # ---- correctness smoke check: cached generate == use_cache=False generate (pooled configs) ----
    for cfg in tqdm([c for c in configs if c.kwargs], desc="generate cached/uncached", file=sys.stderr):
        cached = generate_tokens(model, inputs, cfg.latency, cfg.kwargs, args.check_tokens, use_cache=True)
        uncached = generate_tokens(model, inputs, cfg.latency, cfg.kwargs, args.check_tokens, use_cache=False)
        cfg.info.update(generate_cached=cached, generate_uncached=uncached, cached_equals_uncached=cached == uncached)

    # ---- interleaved timing ----
    # Every repetition runs every configuration once, in a fresh random order. With --redo-disturbed, a measured
    # repetition during which other processes kept more than --foreign-max cores busy is discarded whole and run
    # again (at most --max-redo times), after waiting for the other processes to go quiet.
    rng = random.Random(args.seed)
    order = [(c, inputs, args.new_tokens) for c in configs] + [(c, text_inputs, 0) for c in text_cfgs.values()]
    total = args.warmup + args.reps
    bar = tqdm(total=total * len(order), desc="timing", file=sys.stderr)
    loads, foreign, kept_foreign, waited, discarded = [], [], [], 0.0, []
    monitor = ForeignCpu()
    rep = kept = 0
    timing_start = time.perf_counter()
    while kept < args.reps:
        rng.shuffle(order)
        gc.collect()
        redo = args.redo_disturbed and time.perf_counter() - timing_start < args.redo_budget
        if redo:
            waited += monitor.wait_quiet(args.foreign_max, max_wait=min(20.0, max(args.max_wait - waited, 0.0)))
        loads.append(os.getloadavg()[0])
        monitor.mark()
        samples = []
        for cfg, ins, n_new in order:
            bar.set_postfix_str(f"rep {rep + 1} ({kept} kept) {cfg.name}")
            gc.disable()
            try:
                r = run_request(cfg, ins, n_new=n_new)
            finally:
                gc.enable()
            samples.append((cfg, r["prefill_s"], r["decode_s_per_token"] if n_new else None, r["tokens"]))
            del r
            bar.update(1)
        foreign.append(monitor.cores())
        rep += 1
        if rep <= args.warmup:
            continue
        if redo and foreign[-1] > args.foreign_max and len(discarded) < args.max_redo:
            discarded.append(dict(rep=rep, foreign_cores=foreign[-1], load=loads[-1]))
            bar.total += len(order)
            continue
        kept += 1
        kept_foreign.append(foreign[-1])
        for cfg, prefill_s, decode_s, tokens in samples:
            cfg.prefill.append(prefill_s)
            if decode_s is not None:
                cfg.decode.append(decode_s)
                cfg.info.setdefault("tokens", tokens)
    bar.close()
    load_end = os.getloadavg()

    # ---- where the prefill time goes (hooked, separate from the timing above) ----
    monitor.mark()
    breakdown(configs, inputs, reps=args.breakdown_reps, seed=args.seed)
    scaling = layer_scaling(model, reps=3 if args.quick else 7, seed=args.seed)
    breakdown_foreign = monitor.cores()

    # ---- analysis ----
    for c in configs + list(text_cfgs.values()):
        c.info["prefill"] = stats(c.prefill)
        c.info["decode"] = stats(c.decode)
    ref = configs[0].info
    for c in configs:
        i = c.info
        text = text_cfgs[c.latency].info
        i["flops_ratio"] = i["prefill_flops"]["total"] / ref["prefill_flops"]["total"]
        i["decoder_flops_ratio"] = i["prefill_flops"]["decoder"] / ref["prefill_flops"]["decoder"]
        i["time_ratio"] = i["prefill"]["median"] / ref["prefill"]["median"]
        i["time_ratio_min"] = i["prefill"]["min"] / ref["prefill"]["min"]
        i["ratio_of_ratios"] = i["time_ratio"] / i["flops_ratio"]
        # Diagnostic only: the counted FLOPs include the full TxT attention score matrix, which the causal CPU kernel
        # computes about half of; counting attention at half gives the other bound of the work actually done.
        causal = lambda f: f["total"] - f["attention"] / 2  # noqa: E731
        i["flops_ratio_causal"] = causal(i["prefill_flops"]) / causal(ref["prefill_flops"])
        i["ratio_of_ratios_causal"] = i["time_ratio"] / i["flops_ratio_causal"]
        i["decode_time_ratio"] = i["decode"]["median"] / ref["decode"]["median"]
        i["decode_flops_ratio"] = i["decode_flops"]["total"] / ref["decode_flops"]["total"]
        i["visual_units_factor"] = ref["visual_units"] / i["visual_units"]
        # Image-attributable work: with the image minus without it (same budget; text-only runs never pool).
        assert text["plan"]["layers_run"] == i["plan"]["layers_run"], (c.name, text["plan"], i["plan"])
        i["image_decoder_flops"] = i["prefill_flops"]["decoder"] - text["prefill_flops"]["decoder"]
        i["image_prefill_s"] = i["prefill"]["median"] - text["prefill"]["median"]
    for c in configs:
        i = c.info
        i["image_decoder_flops_factor"] = ref["image_decoder_flops"] / i["image_decoder_flops"]
        i["image_prefill_time_factor"] = ref["image_prefill_s"] / i["image_prefill_s"]

    by = {c.name: c for c in configs}
    checks = []
    for c in configs[1:]:
        i = c.info
        i["ratio_pass"] = abs(i["ratio_of_ratios"] - 1) <= TOL_TIME_VS_FLOPS
        checks.append(dict(target=f"{c.name}: prefill time ratio vs measured-FLOPs ratio",
                           value=f"{i['time_ratio']:.3f} vs {i['flops_ratio']:.3f} ({i['ratio_of_ratios'] - 1:+.1%}; "
                                 f"from minima: {i['time_ratio_min'] / i['flops_ratio'] - 1:+.1%}; against the "
                                 f"causal-attention FLOPs ratio {i['flops_ratio_causal']:.3f}: "
                                 f"{i['ratio_of_ratios_causal'] - 1:+.1%})",
                           tolerance=f"within {TOL_TIME_VS_FLOPS:.0%}", passed=i["ratio_pass"]))  # fmt: skip
    heavy = by["llavolta-heavy"].info
    K, s = heavy["pooling"]["K"], heavy["pooling"]["stride"]
    checks.append(dict(target=f"llavolta-heavy (K={K}, s={s}): LLM image-token work falls (visual token x layer units)",
                       value=f"{ref['visual_units']} / {heavy['visual_units']} = {heavy['visual_units_factor']:.2f}x",
                       tolerance=f">= {MIN_HEAVY_IMAGE_WORK_FACTOR:.0f}x",
                       passed=heavy["visual_units_factor"] >= MIN_HEAVY_IMAGE_WORK_FACTOR))  # fmt: skip
    checks.append(dict(target="llavolta-heavy: same, measured as decoder prefill FLOPs attributable to the image "
                              "(with image - without)",
                       value=f"{ref['image_decoder_flops'] / 1e9:.2f} / {heavy['image_decoder_flops'] / 1e9:.2f} "
                             f"GFLOPs = {heavy['image_decoder_flops_factor']:.2f}x",
                       tolerance=f">= {MIN_HEAVY_IMAGE_WORK_FACTOR:.0f}x",
                       passed=heavy["image_decoder_flops_factor"] >= MIN_HEAVY_IMAGE_WORK_FACTOR))  # fmt: skip
    checks.append(dict(target="llavolta-heavy: same, measured as prefill time attributable to the image "
                              "(with image - without; informational)",
                       value=f"{1e3 * ref['image_prefill_s']:.1f} / {1e3 * heavy['image_prefill_s']:.1f} ms = "
                             f"{heavy['image_prefill_time_factor']:.2f}x",
                       tolerance=f">= {MIN_HEAVY_IMAGE_WORK_FACTOR:.0f}x",
                       passed=heavy["image_prefill_time_factor"] >= MIN_HEAVY_IMAGE_WORK_FACTOR))  # fmt: skip
    for c in configs:
        if c.kwargs:
            i = c.info
            same = i["cached_equals_uncached"]
            value = f"{same} ({args.check_tokens} tokens: {i['generate_cached']}"
            value += ")" if same else f" vs {i['generate_uncached']})"
            # The timed manual loop should decode what generate does (unless generate suppressed a placeholder id).
            manual = i.get("tokens", [])[: args.check_tokens]
            if len(manual) == args.check_tokens and not {IMAGE_TOKEN, LATENCY_TOKEN} & set(manual):
                i["manual_loop_equals_generate"] = manual == i["generate_cached"]
                value += f"; timed manual loop decodes the same tokens: {i['manual_loop_equals_generate']}"
            checks.append(dict(target=f"{c.name}: greedy tokens, cached generate == use_cache=False generate",
                               value=value, tolerance="identical", passed=same))  # fmt: skip

    # ---- run-to-run spread: this run joins the earlier runs recorded under the same name ----
    history_path = out_dir / f"{name}_history.jsonl"
    record = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        source="bench_reduction.py",
        head=code["head"],
        ada_hf_sha256=code["ada_hf_sha256"],
        ada_hf_modified=bool(code["ada_hf_modified_files"]),
        reps=args.reps,
        foreign_cores_max_kept=max(kept_foreign),
        discarded_reps=len(discarded),
        plain_prefill_ms=1e3 * ref["prefill"]["median"],
        configs={c.name: dict(time_ratio=c.info["time_ratio"], flops_ratio=c.info["flops_ratio"],
                              ratio_of_ratios=c.info["ratio_of_ratios"],
                              ratio_of_ratios_min=c.info["time_ratio_min"] / c.info["flops_ratio"])
                 for c in configs[1:]},
    )  # fmt: skip
    history = []
    if history_path.exists():
        history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
    history.append(record)
    comparable = [h for h in history if h["ada_hf_sha256"] == record["ada_hf_sha256"]
                  and h["foreign_cores_max_kept"] <= args.foreign_max]  # fmt: skip
    if len(comparable) > 1:
        for c in configs[1:]:
            devs = [h["configs"][c.name]["ratio_of_ratios"] - 1 for h in comparable if c.name in h["configs"]]
            ok = sum(abs(d) <= TOL_TIME_VS_FLOPS for d in devs)
            checks.append(dict(target=f"{c.name}: prefill time vs FLOPs ratio in every recorded quiet run of these "
                                      "ada_hf sources (see Run-to-run spread)",
                               value=f"{ok} of {len(devs)} runs within: " + ", ".join(f"{d:+.1%}" for d in devs),
                               tolerance=f"within {TOL_TIME_VS_FLOPS:.0%} in every run",
                               passed=ok == len(devs)))  # fmt: skip

    # ---- report ----
    wall = time.time() - started
    load = dict(start=load_start, end=load_end, max_during_timing=max(loads), per_rep=loads,
                foreign_cores_per_rep=foreign, foreign_cores_max_kept=max(kept_foreign), discarded_reps=discarded,
                waited_s=waited, foreign_cores_breakdown=breakdown_foreign)  # fmt: skip
    load["layer_scaling"] = scaling
    md = render_markdown(args, configs, text_cfgs, checks, load, wall, code, history)
    print(md)
    (out_dir / f"{name}.md").write_text(md)
    with history_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    result = dict(
        args=vars(args),
        env=dict(
            torch=torch.__version__,
            transformers=__import__("transformers").__version__,
            python=platform.python_version(),
            cpu=platform.processor() or platform.machine(),
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
        ),  # fmt: skip
        code=code,
        configs=[
            dict(name=c.name, latency=c.latency, prefill_s=c.prefill, decode_s_per_token=c.decode, **c.info)
            for c in configs + list(text_cfgs.values())
        ],  # fmt: skip
        checks=checks,
        layer_scaling=load.pop("layer_scaling"),
        loadavg=load,
        wall_s=wall,
    )
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    plot(configs, out_dir / f"{name}.png", args)
    print(f"\nwrote {out_dir / name}.md/.json/.png in {time.time() - started:.0f}s", file=sys.stderr)


def render_markdown(args, configs, text_cfgs, checks, load, wall, code, history) -> str:
    L = []
    L.append("# Token-reduction benchmark: LLaVolta pooling and the latency scheduler (CPU)\n")
    dirty = code["ada_hf_modified_files"]
    L.append(
        f"Model (as `bench_core.py`): ada-L, {args.layers} layers x {args.heads} heads (head_dim "
        f"{args.hidden_size // args.heads}), hidden {args.hidden_size}, intermediate {args.intermediate_size}, "
        f"P={args.prefix_layers} prefix layers; CLIP {args.vision_layers}x{args.vision_hidden_size} at 336/14 = 576 "
        f"image tokens; prompt {args.prefix_tokens} + 576 + {args.question_tokens} tokens (+1 <latency> token with a "
        f"budget); fp32, sdpa, {torch.get_num_threads()} threads, torch {torch.__version__}. {args.reps} measured reps "
        f"after {args.warmup} warm-up, configurations interleaved in random order; decode = {args.new_tokens} greedy "
        f"steps with the cache (manual loop, `execution_plan=` passed back). Times: median [IQR] in ms. FLOPs: "
        f"FlopCounterMode with the CPU sdpa op registered (full TxT attention counted). Ratios are against **plain**; "
        f"total prefill FLOPs (vision tower included) and total prefill time. Code: ada_hf at {code['head']}"
        + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else "")
        + f" (sources sha256 {code['ada_hf_sha256']}). Wall time {wall:.0f} s; 1-min load average "
        f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end, at most {load['max_during_timing']:.1f} during "
        f"the timed reps (this run uses {torch.get_num_threads()} threads; more means other processes shared the "
        f"cores; absolute times also vary between runs on this shared VM: the same plain prefill has measured "
        f"640-760 ms at different times, so compare ratios, which are measured within one run). CPU used by other "
        f"processes (system busy time minus this process's), per repetition: at most "
        f"{load['foreign_cores_max_kept']:.2f} cores in the kept repetitions"
        + (f"; {len(load['discarded_reps'])} disturbed repetitions (> {args.foreign_max} cores: "
           + ", ".join(f"{d['foreign_cores']:.2f}" for d in load["discarded_reps"]) + ") were discarded and re-run"
           if load["discarded_reps"] else "")
        + (f"; {load['waited_s']:.0f} s spent waiting for them to go quiet" if load["waited_s"] > 1 else "")
        + ".\n"
    )  # fmt: skip
    if load["foreign_cores_max_kept"] > args.foreign_max:
        L.append(
            f"**Warning: other processes used up to {load['foreign_cores_max_kept']:.2f} cores during kept "
            "repetitions, so they competed for the cores; medians may be skewed (compare the ratios from minima in "
            "the Targets table) and the time targets should be re-checked on an idle machine.**\n"
        )
    L.append(
        "Columns: *K, s* = pooling layer and stride read from the prefill's pooling record; *image tokens* = image "
        "tokens entering layers < K -> layers >= K (counted in the pooled sequence); *units* = visual token x layer "
        "units per image (LLAVOLTA_ILLAVA.md A.3 compute model, summed over the layers the plan executed) and the "
        "factor plain/config; *image GFLOPs* = decoder prefill FLOPs with the image minus without it (same text, "
        "budget and settings; text-to-image attention included) and the factor plain/config; *time/FLOPs* = "
        "time ratio / FLOPs ratio - 1 (target within 15%).\n"
    )
    L.append("| config | plan | K, s | image tokens | units (factor) | prefill ms | decode ms/token | "
             "prefill GFLOPs (decoder) | image GFLOPs (factor) | FLOPs ratio | time ratio | time/FLOPs | "
             "decode time ratio (FLOPs) |")  # fmt: skip
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        i = c.info
        pool = i["pooling"]
        ks = f"{pool['K']}, {pool['stride']}" if pool["K"] is not None else "–"
        tokens = (f"{pool['image_tokens_in']} -> {pool['image_tokens_after']}" if pool["K"] is not None
                  else f"{pool['image_tokens_in']}")  # fmt: skip
        if c is configs[0]:
            ratios = "– | – | – | –"
        else:
            ratios = (f"{i['flops_ratio']:.3f} | {i['time_ratio']:.3f} | {i['ratio_of_ratios'] - 1:+.1%} "
                      f"{pf(i['ratio_pass'])} | {i['decode_time_ratio']:.3f} "
                      f"({i['decode_flops_ratio']:.3f})")  # fmt: skip
        L.append(
            f"| {c.name} | {i['plan']['summary']} | {ks} | {tokens} | {i['visual_units']} "
            f"({i['visual_units_factor']:.2f}x) | {fmt_ms(i['prefill'])} | {fmt_ms(i['decode'])} | "
            f"{i['prefill_flops']['total'] / 1e9:.2f} ({i['prefill_flops']['decoder'] / 1e9:.2f}) | "
            f"{i['image_decoder_flops'] / 1e9:.2f} ({i['image_decoder_flops_factor']:.2f}x) | {ratios} |"
        )
    L.append("")
    L.append("Image-free counterparts (prefill only; used for the image-attributable columns): "
             + "; ".join(f"{c.name}: {fmt_ms(c.info['prefill'])} ms, {c.info['prefill_flops']['decoder'] / 1e9:.2f} "
                         f"decoder GFLOPs, {c.info['plan']['summary']}, {c.info['prompt_tokens']} tokens"
                         for c in text_cfgs.values())
             + ". Prefill time attributable to the image (median with image - median without): "
             + ", ".join(f"{c.name} {1e3 * c.info['image_prefill_s']:.1f} ms "
                         f"({c.info['image_prefill_time_factor']:.2f}x)" for c in configs) + ".\n")  # fmt: skip
    L.append("## Where the prefill time goes\n")
    L.append(
        f"A separate pass ({args.breakdown_reps} interleaved repetitions after one warm-up, medians) times the phases "
        "with forward hooks: the vision tower + projector, the decoder layers that ran before K (full length) and "
        "from K on (pooled), the rest of the language model's forward (causal masks, RoPE, the pooling itself, "
        "final norm: *decoder other*), and everything else in the prefill (embeddings, image merge, latency "
        "encoder and scheduler, lm_head: *rest*). GFLOP/s = the layers' counted FLOPs / their time. *Excess* = "
        "prefill - FLOPs ratio x plain's prefill (hooked pass), i.e. the time above FLOPs-proportional; *pooled "
        "layers' share* = how much of it the layers from K on would save at the full-length layers' GFLOP/s. Other "
        f"processes used {load['foreign_cores_breakdown']:.2f} cores on average during this pass.\n"
    )
    L.append("| config | prefill ms | vision + projector ms | layers < K: n, ms, GFLOP/s | layers >= K: n, ms, "
             "GFLOP/s | decoder other ms | rest ms | excess ms (pooled layers' share) | layers only: time ratio vs "
             "FLOPs ratio |")  # fmt: skip
    L.append("|---|---|---|---|---|---|---|---|---|")
    plain = configs[0].info["phases"]
    for c in configs:
        ph = c.info["phases"]
        rate = lambda f, t: f"{f / t / 1e9:.0f}" if t > 0 else "–"  # noqa: E731
        before = f"{ph['n_before']}, {1e3 * ph['layers_before']:.1f}, {rate(ph['flops_before'], ph['layers_before'])}"
        after = (f"{ph['n_after']}, {1e3 * ph['layers_after']:.1f}, {rate(ph['flops_after'], ph['layers_after'])}"
                 if ph["n_after"] else "–")  # fmt: skip
        excess = layers_only = "–"
        if c is not configs[0]:
            t_layers = (ph["layers_before"] + ph["layers_after"]) / (plain["layers_before"] + plain["layers_after"])
            f_layers = (ph["flops_before"] + ph["flops_after"]) / (plain["flops_before"] + plain["flops_after"])
            ph["layers_time_ratio"], ph["layers_flops_ratio"] = t_layers, f_layers
            layers_only = f"{t_layers:.3f} vs {f_layers:.3f} ({t_layers / f_layers - 1:+.1%})"
            ph["excess"] = ph["prefill"] - c.info["flops_ratio"] * plain["prefill"]
            full_rate = ph["flops_before"] / ph["layers_before"] if ph["layers_before"] > 0 else float("nan")
            ph["pooled_layers_excess"] = ph["layers_after"] - ph["flops_after"] / full_rate if ph["n_after"] else 0.0
            excess = f"{1e3 * ph['excess']:+.1f} ({1e3 * ph['pooled_layers_excess']:+.1f})"
        L.append(
            f"| {c.name} | {1e3 * ph['prefill']:.1f} | {1e3 * ph['vision']:.1f} | {before} | {after} | "
            f"{1e3 * ph['lm_other']:.1f} | {1e3 * ph['rest']:.1f} | {excess} | {layers_only} |"
        )
    L.append("")
    scaling = load["layer_scaling"]
    short = min(scaling)
    layer_mb = sum(p.numel() * p.element_size() for p in configs[0].model.model.language_model.layers[0].parameters())
    L.append(
        "Time per decoder layer against the sequence length, outside the model (all layers in turn on one input, "
        "causal, no cache; median of interleaved repetitions): "
        + ", ".join(f"{T} tokens {v['ms']:.2f} ms ({v['gflops'] / v['ms'] * 1e3:.0f} GFLOP/s)"
                    for T, v in scaling.items())
        + f". About {scaling[short]['ms']:.1f} ms per layer (the {short}-token time) does not scale with the tokens: "
        f"dispatching the layer's operators and bringing its {layer_mb / 2**20:.1f} MiB of weights through the caches; "
        f"a narrow model (hidden {args.hidden_size}) makes that large against a short layer's work.\n"
    )  # fmt: skip
    fixed_share = scaling[short]["ms"] / scaling[96]["ms"] if 96 in scaling else float("nan")
    L.append("### Reading the time/FLOPs gap\n")
    L.append(
        "Three things move the prefill time ratio off the counted-FLOPs ratio: (1) the counted FLOPs include the full "
        "TxT attention score matrix, which the causal CPU kernel computes about half of (see bench_core), and "
        "attention is a larger share of the long plain prefill than of a pooled one: *causal* counts attention at "
        "half, the other bound of the work done; (2) phases that pooling does not shrink (*fixed*: vision tower + "
        "projector, decoder other, rest, from the hooked pass; compared with plain's times the FLOPs ratio); (3) the "
        "pooled layers' short sequences run at fewer GFLOP/s than the full-length layers of the same request (the "
        f"per-layer cost that does not scale with the tokens, measured above, is {fixed_share:.0%} of a 96-token "
        "layer's time), shown with the time that costs.\n"
    )
    L.append("| config | time ratio | FLOPs ratio (time/FLOPs) | causal FLOPs ratio (time/FLOPs) | excess ms "
             "(hooked) | fixed ms: this / plain (vs proportional) | pooled layers: GFLOP/s vs full-length "
             "(ms) |")  # fmt: skip
    L.append("|---|---|---|---|---|---|---|")
    for c in configs[1:]:
        i, ph = c.info, c.info["phases"]
        fixed = ph["vision"] + ph["lm_other"] + ph["rest"]
        fixed_plain = plain["vision"] + plain["lm_other"] + plain["rest"]
        pooled = "–"
        if ph["n_after"]:
            rate_after = ph["flops_after"] / ph["layers_after"] / 1e9
            rate_before = ph["flops_before"] / ph["layers_before"] / 1e9
            pooled = (f"{ph['n_after']} x {i['pooling']['sequence_after']} tokens: {rate_after:.0f} vs "
                      f"{rate_before:.0f} ({1e3 * ph['pooled_layers_excess']:+.1f})")  # fmt: skip
        L.append(
            f"| {c.name} | {i['time_ratio']:.3f} | {i['flops_ratio']:.3f} ({i['ratio_of_ratios'] - 1:+.1%}) | "
            f"{i['flops_ratio_causal']:.3f} ({i['ratio_of_ratios_causal'] - 1:+.1%}) | {1e3 * ph['excess']:+.1f} | "
            f"{1e3 * fixed:.1f} / {1e3 * fixed_plain:.1f} ({1e3 * (fixed - i['flops_ratio'] * fixed_plain):+.1f}) | "
            f"{pooled} |"
        )
    L.append("")
    history_name = f"{args.name or ('reduction_quick' if args.quick else 'reduction')}_history.jsonl"
    L.append("## Run-to-run spread\n")
    L.append(
        "The time/FLOPs deviation of every reduced configuration in each run recorded under this name "
        f"(`{history_name}`, this run last). Absolute speed drifts between runs on this "
        "shared VM (see plain's prefill), and it moves the long full-length layers more than the short pooled ones, "
        "so a target near its tolerance can pass in one run and fail in the next. Runs with other ada_hf sources or "
        f"with other processes above {args.foreign_max} cores are listed but not counted in the Targets.\n"
    )
    names = [c.name for c in configs[1:]]
    L.append("| run | ada_hf (sources) | other processes, max cores | plain prefill ms | " + " | ".join(names) + " |")
    L.append("|---|---|---|---|" + "---|" * len(names))
    for k, h in enumerate(history):
        cells = []
        for n in names:
            c = h["configs"].get(n)
            cells.append("–" if c is None else f"{c['ratio_of_ratios'] - 1:+.1%} "
                         f"{pf(abs(c['ratio_of_ratios'] - 1) <= TOL_TIME_VS_FLOPS)}")  # fmt: skip
        tag = " (this run)" if k == len(history) - 1 else ""
        note = "" if h.get("source") == "bench_reduction.py" else f" [{h['source']}]"
        L.append(f"| {h['date']}{tag}{note} | {h['head']} ({h['ada_hf_sha256'][:8]}"
                 f"{', modified' if h['ada_hf_modified'] else ''}) | {h['foreign_cores_max_kept']:.2f} | "
                 f"{h['plain_prefill_ms']:.1f} | " + " | ".join(cells) + " |")  # fmt: skip
    L.append("")
    L.append("## Targets\n")
    L.append("| target | measured | tolerance | result |")
    L.append("|---|---|---|---|")
    for ch in checks:
        L.append(f"| {ch['target']} | {ch['value']} | {ch['tolerance']} | {pf(ch['passed'])} |")
    L.append("")
    return "\n".join(L)


def plot(configs, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reduced = configs[1:]
    ref = configs[0].info["prefill"]["median"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.6), gridspec_kw=dict(width_ratios=[1, 1.35]))

    ax = axes[0]
    xs = [0.1, 1.1]
    ax.plot(xs, xs, color="black", lw=1, label="time ratio = FLOPs ratio")
    ax.fill_between(xs, [x * (1 - TOL_TIME_VS_FLOPS) for x in xs], [x * (1 + TOL_TIME_VS_FLOPS) for x in xs],
                    color="grey", alpha=0.2, label=f"±{TOL_TIME_VS_FLOPS:.0%} (target)")  # fmt: skip
    for k, c in enumerate(reduced):
        i = c.info
        lo = i["time_ratio"] - i["prefill"]["q1"] / ref
        hi = i["prefill"]["q3"] / ref - i["time_ratio"]
        ax.errorbar([i["flops_ratio"]], [i["time_ratio"]], yerr=[[lo], [hi]], fmt="o", color=colors[k], capsize=3,
                    label=f"{c.name} ({i['ratio_of_ratios'] - 1:+.1%} {pf(i['ratio_pass'])})")  # fmt: skip
        ax.plot([i["flops_ratio"], i["flops_ratio_causal"]], [i["time_ratio"]] * 2, color=colors[k], lw=0.8)
        ax.plot([i["flops_ratio_causal"]], [i["time_ratio"]], "o", mfc="none", color=colors[k])
    ax.plot([], [], "o", mfc="none", color="grey", label="same, attention FLOPs counted at half (causal)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        axis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}" for t in ticks]))
        axis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(*xs)
    ax.set_ylim(*xs)
    ax.set_aspect("equal")
    ax.set_xlabel("prefill FLOPs ratio vs plain (measured; log)")
    ax.set_ylabel("prefill time ratio vs plain (median, IQR; log)")
    ax.set_title("Prefill: time ratio vs FLOPs ratio")
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3)

    ax = axes[1]
    names = [c.name.replace(" + ", "\n+ ") for c in configs]
    series = (
        ("visual token x layer units", [c.info["visual_units"] / configs[0].info["visual_units"] for c in configs]),
        ("image-attributable decoder FLOPs",
         [c.info["image_decoder_flops"] / configs[0].info["image_decoder_flops"] for c in configs]),
        ("prefill FLOPs (total)",
         [c.info["prefill_flops"]["total"] / configs[0].info["prefill_flops"]["total"] for c in configs]),
        ("prefill time (median)", [c.info["prefill"]["median"] / ref for c in configs]),
        ("decode time / token", [c.info["decode"]["median"] / configs[0].info["decode"]["median"] for c in configs]),
    )  # fmt: skip
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        pos = [j + (k - (len(series) - 1) / 2) * width for j in range(len(configs))]
        ax.bar(pos, values, width, label=label)
        for x, v in zip(pos, values):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("relative to plain")
    ax.set_ylim(0, 1.25)
    ax.set_title("Work and time relative to plain")
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"LLaVolta pooling and the latency scheduler on CPU (ada-L, {args.layers}L x {args.heads}H, hidden "
        f"{args.hidden_size}, 576 image tokens, {torch.get_num_threads()} threads, {args.reps} reps)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
