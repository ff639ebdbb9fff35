"""Efficiency benchmark: transformers' Llava and AdaLLaVA (L, H) on the same weights, measured against the cost model.

One process run measures, for `LlavaForConditionalGeneration` and `AdaLlavaForConditionalGeneration` at latency None,
1.0, 0.85, 0.75, 0.6, 0.5 and two time targets (`latency="<N>ms", hardware="local"`, `--ms-targets` shares of the full
model's predicted time) for variants L and H, the token-reduction presets (ada-L, no budget) and each preset with the
scheduler at latency 0.6 (L and H), all on the same prompt (one image + short text):

* prefill ms (`generate` call to its first token: image encoder, projector, scheduler, LLM, LM head, and `generate`'s
  own set-up) and decode ms/token (first to last token, divided by the steps; decoding follows the prefill's plan);
* predicted prefill ms and decode ms/token: the cost model (`ada_hf.cost_model`) on the calibrated "local" hardware
  profile (`ada-hf calibrate`; when there is none, this script calibrates first and says so), and their ratio to the
  measurement; target: within 15% for the ada budgets (the `generate(latency="150ms", hardware="local")` promise);
* measured FLOPs (FlopCounterMode over the whole `generate` call, the CPU sdpa kernel registered by `harness`) and
  modelled FLOPs (the request's `EfficiencyReport`; for Llava, `CostModel.request` without a scheduler);
* KV-cache bytes: the report's figure and the bytes of the returned cache's tensors;
* peak memory: one subprocess per configuration (a process's peak RSS only grows, so configurations cannot share one)
  loads the shared weights and runs the request once; it reports the peak RSS of the request (VmHWM, reset after the
  load; `ru_maxrss` is kept in the JSON but not used: on Linux it carries the parent's RSS across fork and exec) and
  on CUDA the allocator's peak;
* for information, the modelled time on a GPU of the hardware table (`--gpu-model`, 16-bit).

Timings are taken in this process, configurations interleaved in a fresh random order per repetition after warm-up
(medians and IQR reported); the subprocesses measure memory only. On CUDA (used when present: same command) the
models run in float16 and `generate`'s streamer copies each token to the host, which synchronises the device.

    ada-hf calibrate --threads 2                       # once, on idle cores: the "local" profile
    python benchmarks/bench_efficiency.py              # full run, ~10 minutes on 2 idle cores (CPU)
    python benchmarks/bench_efficiency.py --quick      # smoke run, a few minutes
    python benchmarks/bench_efficiency.py --tiny       # seconds: a tiny model, for tests (writes efficiency_tiny_*)

Writes `results/efficiency_<device>.{json,md,png}` (`_quick` / `_tiny` suffixes for those runs).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, when run from elsewhere
import harness  # noqa: E402  (also puts the repo root on sys.path and registers the CPU sdpa FLOP formula)
from harness import ForeignCpu, code_state, environment, fmt_ms, md_table, pf, stats  # noqa: E402

from ada_hf.calibrate import TokenClock, calibrate  # noqa: E402
from ada_hf.cost_model import CostModel, dtype_bits  # noqa: E402
from ada_hf.hardware import Hardware, get_hardware, local_profile_path  # noqa: E402
from ada_hf.modeling_ada_llava import AdaLlavaForConditionalGeneration  # noqa: E402
from ada_hf.token_reduction import TOKEN_REDUCTION_PRESETS  # noqa: E402

BUDGETS = (None, 1.0, 0.85, 0.75, 0.6, 0.5)
PRESET_LATENCY = 0.6  # the budget each token-reduction preset is combined with
TOL_PREDICTION = 0.15  # |predicted / measured - 1| for the ada budgets
TOL_FLOPS = 0.02  # |modelled / measured - 1|
TINY = dict(layers=18, heads=4, prefix_layers=9, scheduler_rank=1, hidden_size=32, intermediate_size=64,
            vision_hidden_size=16, vision_layers=10, prefix_tokens=4, question_tokens=4)  # fmt: skip
# LLaVolta-light pools at decoder layer 16 and iLLaVA merges in CLIP layers 5-8: the tiny shape keeps 18 decoder and 10
# CLIP layers (narrow) and the 576-token image (each preset's stride and merge sizes are set for it).


# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One configuration: the model ("llava", "L", "H"), the budget and the token-reduction preset."""

    name: str
    kind: str
    latency: float | str | None = None  # a share of compute, or a time target such as "800ms"
    preset: str | None = None
    prefill: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def spec(self) -> dict:
        return dict(name=self.name, kind=self.kind, latency=self.latency, preset=self.preset)


def settings(ms_targets: tuple[str, ...] = ()) -> list[Setting]:
    """Every configuration of the benchmark, in report order; `ms_targets` ("800ms", ...) add time budgets."""
    out = [Setting("llava (transformers)", "llava")]
    for kind in ("L", "H"):
        out += [Setting(f"ada-{kind} latency={b}", kind, b) for b in BUDGETS]
        out += [Setting(f"ada-{kind} latency={t}", kind, t) for t in ms_targets]
    out += [Setting(f"ada-L {p}", "L", None, p) for p in TOKEN_REDUCTION_PRESETS]
    for p in TOKEN_REDUCTION_PRESETS:
        out += [Setting(f"ada-{k} {p} + latency={PRESET_LATENCY}", k, PRESET_LATENCY, p) for k in ("L", "H")]
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def request(model, setting: Setting, inputs, new_tokens: int, streamer=None, hardware=None):
    """One `generate` call of `setting` on the benchmark prompt (greedy, exactly `new_tokens` tokens)."""
    ids, pixel_values = inputs
    kwargs = {}
    if setting.kind != "llava":
        if setting.latency is not None:
            kwargs["latency"] = setting.latency
        if setting.preset is not None:
            kwargs["token_reduction"] = setting.preset
        if hardware is not None:
            kwargs["hardware"] = hardware
        elif isinstance(setting.latency, str):
            raise ValueError(f"{setting.name}: a time target needs the hardware to predict with")
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          return_dict_in_generate=True, streamer=streamer, **kwargs)  # fmt: skip


def cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a cache holds (skipped layers hold none)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------------------------------------------------
# Memory: one subprocess per configuration
def peak_rss() -> int:
    """This process's peak resident set size in bytes: VmHWM of /proc/self/status where there is one (Linux), else
    `ru_maxrss`. Not `ru_maxrss` on Linux: it survives fork and exec, so a child started by this benchmark would report
    at least the parent's RSS at the fork (the parent holds three models)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs), so that the request's
    own peak can be told from the weights' load; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_main(spec_path: str) -> None:
    """Load the shared weights, run the configuration's request once, print its peak memory as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    setting = Setting(**spec["setting"])
    proc = psutil.Process()
    with torch.inference_mode():
        if setting.kind == "llava":
            from transformers import LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration.from_pretrained(spec["weights"]["llava"], dtype=dtype)
        else:
            model = AdaLlavaForConditionalGeneration.from_pretrained(spec["weights"][setting.kind], dtype=dtype)
        model = model.to(device).eval()
        ids, pixel_values = torch.load(spec["inputs"])
        inputs = (ids.to(device), pixel_values.to(device=device, dtype=dtype))
        sync(device)
        result = dict(rss_after_load=proc.memory_info().rss, peak_rss_load=peak_rss())
        reset = reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            result["cuda_after_load"] = torch.cuda.memory_allocated(device)
        hardware = None
        if spec.get("hardware"):  # a time target: the parent's profile, so the child runs the same plan
            hardware = Hardware.from_dict(spec["hardware"])
        request(model, setting, inputs, spec["new_tokens"], hardware=hardware)
        sync(device)
    # With the reset, the peak from here on is the request's (weights included, as they stay resident); without it,
    # the process's peak (the load's, if higher).
    result.update(peak_rss=peak_rss(), peak_rss_is_request_only=reset,
                  ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # fmt: skip
    if device.type == "cuda":
        result["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    print("RESULT " + json.dumps(result), flush=True)


def measure_memory(all_settings: list[Setting], weights: dict, inputs_path: Path, args, device, dtype, tmp: Path,
                   hw: Hardware) -> None:  # fmt: skip
    """Run every configuration's memory child (`--jobs` at a time); each adds `info["memory"]`."""
    jobs = max(1, args.jobs if device.type == "cpu" else 1)
    threads = max(1, args.threads // jobs)
    pending = list(all_settings)
    running: list[tuple[Setting, subprocess.Popen]] = []
    bar = tqdm(total=len(pending), desc="memory (1 subprocess each)", file=sys.stderr)
    while pending or running:
        while pending and len(running) < jobs:
            s = pending.pop(0)
            spec = dict(setting=s.spec(), weights=weights, inputs=str(inputs_path), device=str(device),
                        dtype=str(dtype).removeprefix("torch."), threads=threads,
                        new_tokens=args.new_tokens, hardware=None)  # fmt: skip
            if isinstance(s.latency, str):
                spec["hardware"] = hw.to_dict()
            path = tmp / f"spec_{len(pending)}_{s.kind}.json"
            path.write_text(json.dumps(spec))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path)]
            running.append((s, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        s, proc = running.pop(0)
        out, err = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            s.info["memory"] = dict(error=(err or out).strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
        else:
            s.info["memory"] = json.loads(lines[-1][len("RESULT ") :])
        s.info["memory"]["child_threads"] = threads
        bar.update(1)
    bar.close()


# --------------------------------------------------------------------------------------------------------------------
def local_hardware(device: torch.device, recalibrate: bool) -> tuple[Hardware, str]:
    """The calibrated profile of this machine, and a sentence on where it came from. Calibrates (and stores the
    profile) when there is none or `recalibrate`; a profile measured on another device type (a CPU profile on a GPU
    run) is replaced by one measured now, for this run only."""
    path = local_profile_path()
    if recalibrate or not path.is_file():
        why = "--recalibrate" if recalibrate else f"no profile at {path}"
        print(f"calibrating this machine ({why}) ...", file=sys.stderr)
        hw = calibrate(device, save=True)
        return hw, f"calibrated by this run ({why}) on {device}, stored at {path}"
    hw = get_hardware("local")
    measured_on = torch.device(hw.details.get("device", "cpu")).type
    if measured_on != device.type:
        print(f"the stored profile was measured on {measured_on}; calibrating {device} for this run ...",
              file=sys.stderr)  # fmt: skip
        hw = calibrate(device, save=False)
        return hw, f"calibrated by this run on {device} (the stored profile at {path} is for {measured_on}; kept)"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    return hw, f"stored profile {path} (written {stamp}; {hw.source})"


def main(argv=None) -> None:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    p = harness.standard_parser(__doc__)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--dtype", default=None, help="model dtype (default float32 on CPU, float16 on CUDA)")
    p.add_argument("--tiny", action="store_true", help="tiny model and few tokens, for tests (seconds)")
    p.add_argument("--jobs", type=int, default=2, help="memory subprocesses at a time on CPU (default 2)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-configs", default=None, help="peak memory only for the configurations matching this\n"
                   "regular expression (default: all)")  # fmt: skip
    p.add_argument("--recalibrate", action="store_true", help="calibrate the local hardware profile first")
    p.add_argument("--gpu-model", default="nvidia_A100", help="hardware table entry for the modelled GPU time")
    p.add_argument("--ms-targets", type=lambda v: tuple(float(x) for x in v.split(",") if x), default=(0.8, 0.65),
                   help="time budgets ('<N>ms', ada-L and ada-H) as shares of the full model's predicted request time\n"
                   "on the local profile (default 0.8,0.65; empty: none). A target no plan meets is\n"
                   "reported and left out")  # fmt: skip
    p.add_argument("--configs", default=None, help="only the configurations whose name matches this regular expression")
    p.set_defaults(vision_layers=24, vision_hidden_size=64)  # CLIP of LLaVA-1.5's depth: iLLaVA's merge layers exist
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    stem = f"efficiency_{device.type}"
    if args.tiny:
        stem = f"efficiency_tiny_{device.type}"
    name, out_dir = harness.resolve_args(
        args, stem, reps=(10, 1) if not args.tiny else (2, 2), warmup=(2, 1) if not args.tiny else (1, 1),
        new_tokens=(16, 4) if not args.tiny else (3, 3),
    )  # fmt: skip
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode time per token needs one decode step)")
    with torch.inference_mode():
        run(args, name, out_dir, device, dtype)


def run(args, name: str, out_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
    started = time.time()
    load_start = os.getloadavg()
    code = code_state()
    hw, hw_note = local_hardware(device, args.recalibrate)
    print(f"hardware: {hw_note}", file=sys.stderr)
    gpu = get_hardware(args.gpu_model)

    shape = f"{args.layers} layers x {args.heads} heads, hidden {args.hidden_size}"
    print(f"building models ({shape}) on {device} ({dtype}) ...", file=sys.stderr)
    llava, ada_l, ada_h = harness.build_models(args)
    models = {"llava": llava, "L": ada_l, "H": ada_h}
    for key, model in models.items():
        models[key] = model.to(device=device, dtype=dtype).eval()
        # Every request generates exactly --new-tokens (no early stop); a pad id lets generate re-pad collapsed prompts.
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
    ids, _, pixel_values = harness.make_inputs(args)
    inputs = (ids.to(device), pixel_values.to(device=device, dtype=dtype))
    bits = dtype_bits(dtype)
    llava_cost = CostModel(ada_l.config, hw, bits).request(
        llm_tokens=ids.shape[1], new_tokens=args.new_tokens, images=1, image_tokens=harness.image_tokens(args),
        scheduler=False,
    )  # fmt: skip
    # Time targets as shares of the full model's predicted request time on this machine, so that they fall inside the
    # range the scheduler can meet whatever the machine's speed.
    ms_targets = tuple(f"{1e3 * share * llava_cost.total.seconds:.0f}ms" for share in args.ms_targets)
    all_settings = settings(ms_targets)
    if args.configs:
        all_settings = [s for s in all_settings if re.search(args.configs, s.name)]
        if not all_settings:
            raise SystemExit(f"--configs {args.configs!r} matches no configuration: {[s.name for s in settings()]}")

    # ---- modelled and measured FLOPs, KV cache, predictions (one untimed request each, under FlopCounterMode) ----
    llava_gpu = CostModel(ada_l.config, gpu, 16).request(
        llm_tokens=ids.shape[1], new_tokens=args.new_tokens, images=1, image_tokens=harness.image_tokens(args),
        scheduler=False,
    )  # fmt: skip
    steps = args.new_tokens - 1
    unmet: dict[str, str] = {}
    for s in tqdm(list(all_settings), desc="FLOPs / reports", file=sys.stderr):
        counter = FlopCounterMode(display=False)
        clock = TokenClock(device, counter)
        try:
            with counter:
                out = request(models[s.kind], s, inputs, args.new_tokens, streamer=clock, hardware=hw)
        except ValueError as e:
            if not isinstance(s.latency, str):
                raise
            # Below the fastest plan's predicted time (the prefix layers alone): generate refuses, as it should.
            unmet[s.name] = str(e)
            all_settings.remove(s)
            print(f"left out {s.name}: {e}", file=sys.stderr)
            continue
        i = s.info
        i["measured_prefill_flops"] = clock.flops[1]
        i["measured_decode_flops"] = clock.flops[-1] - clock.flops[1]
        i["tokens"] = out.sequences[0, ids.shape[1] :].tolist()
        i["kv_cache_bytes_tensors"] = cache_bytes(out.past_key_values)
        if s.kind == "llava":
            cost, gpu_cost = llava_cost, llava_gpu
            i["report"] = None
            i["plan"] = "all layers"
        else:
            report = out.efficiency[0]
            cost, gpu_cost = report.cost, report.on(gpu, 16)
            i["report"] = report.to_dict()
            if report.executed_units is None:
                i["plan"] = "all layers"
            else:
                heads = out.execution_plan[0]
                layers = int((heads >= 0).sum())
                i["plan"] = f"{report.executed_units}/{report.total_units} units, {layers}/{heads.numel()} layers"
        i.update(
            llm_prompt_tokens=cost.llm_prompt_tokens,
            image_tokens=cost.image_tokens,
            modelled_prefill_flops=cost.prefill.flops,
            modelled_decode_flops=cost.decode.flops,
            kv_cache_bytes_model=cost.kv_cache_bytes,
            modelled_peak_memory_bytes=cost.peak_memory_bytes,
            predicted_prefill_s=cost.prefill.seconds,
            predicted_decode_s_per_token=cost.decode.seconds / steps,
            gpu_prefill_s=gpu_cost.prefill.seconds,
            gpu_decode_s_per_token=gpu_cost.decode.seconds / steps,
        )
        del out

    # ---- interleaved timing ----
    rng = random.Random(args.seed)
    order = list(all_settings)
    total = args.warmup + args.reps
    bar = tqdm(total=total * len(order), desc="timing", file=sys.stderr)
    loads, foreign = [], []
    monitor = ForeignCpu()
    for rep in range(total):
        rng.shuffle(order)
        loads.append(os.getloadavg()[0])
        monitor.mark()
        for s in order:
            bar.set_postfix_str(f"rep {rep + 1}/{total} {s.name}")
            clock = TokenClock(device)
            sync(device)
            start = time.perf_counter()
            # Time targets need the hardware: choosing the budget is part of the request (and of its prefill time).
            request(models[s.kind], s, inputs, args.new_tokens, streamer=clock,
                    hardware=hw if isinstance(s.latency, str) else None)  # fmt: skip
            # times[0] is the prompt's put; times[1] the first generated token (the end of the prefill).
            if rep >= args.warmup:
                s.prefill.append(clock.times[1] - start)
                s.decode.append((clock.times[-1] - clock.times[1]) / steps)
            bar.update(1)
        if rep >= args.warmup:
            foreign.append(monitor.cores())
    bar.close()

    # ---- peak memory, one subprocess per configuration ----
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="bench_efficiency_") as tmp_dir:
            tmp = Path(tmp_dir)
            weights = {}
            for key, model in models.items():
                model.save_pretrained(tmp / key)
                weights[key] = str(tmp / key)
            inputs_path = tmp / "inputs.pt"
            torch.save((ids, pixel_values), inputs_path)
            chosen = [s for s in all_settings if args.memory_configs is None or re.search(args.memory_configs, s.name)]
            measure_memory(chosen, weights, inputs_path, args, device, dtype, tmp, hw)

    # ---- analysis ----
    for s in all_settings:
        i = s.info
        i["prefill"], i["decode"] = stats(s.prefill), stats(s.decode)
        i["prefill_prediction_ratio"] = i["predicted_prefill_s"] / i["prefill"]["median"]
        i["decode_prediction_ratio"] = i["predicted_decode_s_per_token"] / i["decode"]["median"]
        i["prefill_flops_ratio"] = i["modelled_prefill_flops"] / i["measured_prefill_flops"]
        i["decode_flops_ratio"] = i["modelled_decode_flops"] / max(i["measured_decode_flops"], 1)
        i["measured_total_s"] = i["prefill"]["median"] + (args.new_tokens - 1) * i["decode"]["median"]
    checks = analyse(all_settings)
    load = dict(start=load_start, end=os.getloadavg(), max_during_timing=max(loads), per_rep=loads,
                foreign_cores=foreign)  # fmt: skip
    wall = time.time() - started
    env = environment(device)
    env["dtype"] = str(dtype).removeprefix("torch.")
    md = render_markdown(args, all_settings, checks, env, hw, hw_note, gpu, load, wall, code, unmet)
    (out_dir / f"{name}.md").write_text(md)
    result = dict(
        args=vars(args), env=env, code=code, hardware=dict(hw.to_dict(), note=hw_note),
        gpu_model=dict(name=gpu.name, bits=16),
        configs=[dict(**s.spec(), prefill_s=s.prefill, decode_s_per_token=s.decode, **s.info) for s in all_settings],
        unmet_time_targets=unmet,
        checks=checks, loadavg=load, wall_s=wall,
    )  # fmt: skip
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    plot(all_settings, out_dir / f"{name}.png", env, args)
    print(md)
    print(f"\nwrote {out_dir / name}.md/.json/.png in {wall:.0f}s", file=sys.stderr)


def budget_settings(all_settings: list[Setting]) -> list[Setting]:
    """The ada configurations of the latency sweep (no token reduction)."""
    return [s for s in all_settings if s.kind != "llava" and s.preset is None]


def time_targets(all_settings: list[Setting]) -> list[Setting]:
    """The configurations with a time target ("<N>ms")."""
    return [s for s in all_settings if isinstance(s.latency, str)]


def analyse(all_settings: list[Setting]) -> list[dict]:
    """The report's checks: prediction within 15% over the ada budgets, FLOPs within 2%, KV-cache bytes agree."""
    checks = []

    def ratio_check(settings: list[Setting], key: str, target: str, tolerance: float, digits: int) -> None:
        ratios = {s.name: s.info[key] for s in settings}
        if not ratios:  # --configs left these out
            return
        worst = max(ratios, key=lambda n: abs(ratios[n] - 1))
        checks.append(dict(
            target=target,
            value=f"{min(ratios.values()):.{digits}f} to {max(ratios.values()):.{digits}f} (worst: {worst})",
            tolerance=f"within {tolerance:.0%}",
            passed=all(abs(r - 1) <= tolerance for r in ratios.values()),
        ))  # fmt: skip

    for phase in ("prefill", "decode"):
        ratio_check(budget_settings(all_settings), f"{phase}_prediction_ratio",
                    f"predicted / measured {phase} time, local profile, ada-L and ada-H at every budget",
                    TOL_PREDICTION, 3)  # fmt: skip
    for phase in ("prefill", "decode"):
        ratio_check(all_settings, f"{phase}_flops_ratio", f"modelled / measured {phase} FLOPs, every configuration",
                    TOL_FLOPS, 4)  # fmt: skip
    targeted = time_targets(all_settings)
    if targeted:
        over = {s.name: s.info["measured_total_s"] / s.info["report"]["target_seconds"] for s in targeted}
        checks.append(dict(
            target="time targets (latency='<N>ms', hardware=local): measured request time / target",
            value=", ".join(f"{name}: {r:.2f}" for name, r in over.items()),
            tolerance=f"at most {1 + TOL_PREDICTION:.2f}",
            passed=all(r <= 1 + TOL_PREDICTION for r in over.values()),
        ))  # fmt: skip
    differ = [s.name for s in all_settings if s.info["kv_cache_bytes_model"] != s.info["kv_cache_bytes_tensors"]]
    checks.append(dict(target="KV-cache bytes: cost model == the returned cache's tensors, every configuration",
                       value="all equal" if not differ else "differ: " + ", ".join(differ), tolerance="equal",
                       passed=not differ))  # fmt: skip
    memory = [s.info.get("memory", {}) for s in all_settings]
    failed = [s.name for s, m in zip(all_settings, memory) if "error" in m]
    if failed:
        checks.append(dict(target="memory subprocesses ran", value="failed: " + ", ".join(failed), tolerance="all ran",
                           passed=False))  # fmt: skip
    return checks


# --------------------------------------------------------------------------------------------------------------------
def _mib(nbytes) -> str:
    return f"{nbytes / 2**20:.1f}" if isinstance(nbytes, (int, float)) else "–"


def render_markdown(args, all_settings, checks, env, hw, hw_note, gpu, load, wall, code, unmet: dict) -> str:
    cuda = env["device"].startswith("cuda")
    L = [f"# Efficiency benchmark: AdaLLaVA vs transformers' Llava ({env['device']})\n"]
    L.append(
        f"Model: {args.layers} layers x {args.heads} heads (head_dim {args.hidden_size // args.heads}), hidden "
        f"{args.hidden_size}, intermediate {args.intermediate_size}, {args.prefix_layers} prefix layers, H rank "
        f"{args.scheduler_rank}; CLIP {args.vision_layers}x{args.vision_hidden_size} at {args.image_size}/"
        f"{args.patch_size} = {harness.image_tokens(args)} image tokens; prompt {args.prefix_tokens} + "
        f"{harness.image_tokens(args)} + {args.question_tokens} tokens (+1 <latency> token with a budget); "
        f"{env['dtype']}, sdpa. Each request is one `generate` call of {args.new_tokens} greedy tokens; prefill = call "
        f"to first token, decode = per token after it. {args.reps} measured reps after {args.warmup} warm-up, "
        f"configurations interleaved in random order; times are medians [IQR] in ms.\n"
    )
    L.append(
        f"Environment: torch {env['torch']}, transformers {env['transformers']}, python {env['python']}, "
        f"{env['threads']} threads of {env['cpu_count']} CPUs" + (f", GPU {env['gpu']}" if cuda else "")
        + f"; ada_hf at {code['head']}" + (f" + local changes to {', '.join(code['ada_hf_modified_files'])}"
                                          if code["ada_hf_modified_files"] else "")
        + f" (sources sha256 {code['ada_hf_sha256']}). Wall time {wall:.0f} s. 1-min load average "
        f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end, at most {load['max_during_timing']:.1f} "
        "during the timed reps; other "
        f"processes used up to {max(load['foreign_cores'], default=0):.2f} cores during a measured repetition.\n"
    )  # fmt: skip
    if max(load["foreign_cores"], default=0) > 0.25:
        L.append("**Warning: other processes competed for the cores while timing; times (and the prediction check) "
                 "should be re-measured on an idle machine.**\n")  # fmt: skip
    L.append(
        f"Predicted times: the cost model on the `local` hardware profile ({hw_note}: matmul at best "
        f"{hw.peak[32] / 1e9:.1f} GFLOP/s fp32 and {hw.peak[16] / 1e9:.1f} GFLOP/s 16-bit, measured on a grid of "
        f"{len(hw.matmul.get(32, []))} shapes; sdpa measured at {len(hw.attention.get(32, []))} head sizes; "
        f"{hw.bandwidth / 1e9:.1f} GB/s, key/value cache {hw.cache_bandwidth / 1e9:.1f} GB/s; "
        f"{1e6 * hw.layer_overhead_s:.0f} us/layer, "
        f"{1e6 * hw.call_overhead_s:.0f} us/call, {1e6 * hw.request_overhead_s:.0f} us/request; reference-Llama "
        f"factors x{hw.prefill_factor:.2f} prefill, x{hw.decode_factor:.2f} decode). "
        f'"{gpu.name}": the same '
        f"requests modelled on that GPU at 16 bits (roofline, for information). FLOPs: measured with FlopCounterMode "
        f"over the whole `generate` call (CPU sdpa registered; full TxT attention counted, as the cost model does); "
        f"modelled: the request's `EfficiencyReport` (Llava: `CostModel.request` without a scheduler). Peak memory: "
        + ("the CUDA allocator's peak" if cuda else "the peak RSS (VmHWM, reset once the weights are loaded)")
        + " of a subprocess that loads the weights and then runs the one request, weights included; in brackets the "
        "RSS after the load, before the request.\n"
    )
    if hw.details.get("threads") not in (None, env["threads"]):
        L.append(f"**Warning: the local profile was calibrated with {hw.details['threads']} threads and this run "
                 f"uses {env['threads']}: predictions do not hold (`ada-hf calibrate --threads N`).**\n")  # fmt: skip
    L.append("## Results\n")
    rows = []
    for s in all_settings:
        i = s.info
        mem = i.get("memory", {})
        peak = mem.get("cuda_peak" if cuda else "peak_rss")  # the request's peak (see child_main)
        base = mem.get("cuda_after_load" if cuda else "rss_after_load")
        rows.append([
            s.name, i["plan"], i["llm_prompt_tokens"], fmt_ms(i["prefill"]),
            f"{1e3 * i['predicted_prefill_s']:.1f} ({i['prefill_prediction_ratio']:.2f})", fmt_ms(i["decode"]),
            f"{1e3 * i['predicted_decode_s_per_token']:.2f} ({i['decode_prediction_ratio']:.2f})",
            f"{i['measured_prefill_flops'] / 1e9:.3f} / {i['modelled_prefill_flops'] / 1e9:.3f}",
            f"{i['measured_decode_flops'] / steps_of(args) / 1e6:.2f} / "
            f"{i['modelled_decode_flops'] / steps_of(args) / 1e6:.2f}",
            f"{_mib(i['kv_cache_bytes_model'])} / {_mib(i['kv_cache_bytes_tensors'])}",
            f"{_mib(peak)} ({_mib(base)})" if "error" not in mem else "error",
            _mib(i["modelled_peak_memory_bytes"]),
            f"{1e3 * i['gpu_prefill_s']:.2f} / {1e3 * i['gpu_decode_s_per_token']:.3f}",
        ])  # fmt: skip
    L += md_table(
        ["config", "plan", "LLM prompt tokens", "prefill ms", "predicted prefill ms (pred/meas)", "decode ms/token",
         "predicted decode ms/token (pred/meas)", "prefill GFLOPs measured / modelled",
         "decode MFLOPs/token measured / modelled", "KV cache MiB model / tensors",
         ("CUDA peak MiB (after load)" if cuda else "peak RSS MiB of the request (after load)"), "modelled peak MiB",
         f"{gpu.name} fp16 modelled prefill ms / decode ms/token"],
        rows,
    )  # fmt: skip
    L.append("")
    targeted = time_targets(all_settings)
    if targeted or unmet:
        L.append("## Time targets\n")
        L.append(f"`generate(..., latency='<N>ms', hardware=local, max_new_tokens={args.new_tokens})`: the targets are "
                 f"shares ({', '.join(f'{x:g}' for x in args.ms_targets)}) of the full model's predicted request time; "
                 "generate runs the largest budget predicted to fit (request time: prefill + decode).\n")  # fmt: skip
        L += md_table(
            ["config", "plan chosen", "predicted request ms", "measured request ms", "measured / target"],
            [[s.name, s.info["plan"],
              f"{1e3 * (s.info['report']['prefill_seconds'] + s.info['report']['decode_seconds']):.0f}",
              f"{1e3 * s.info['measured_total_s']:.0f}",
              f"{s.info['measured_total_s'] / s.info['report']['target_seconds']:.2f}"] for s in targeted],
        )  # fmt: skip
        L += [f"\nLeft out: {name}: {message}" for name, message in unmet.items()]
        L.append("")
    L.append("## Checks\n")
    L += md_table(["target", "measured", "tolerance", "result"],
                  [[c["target"], c["value"], c["tolerance"], pf(c["passed"])] for c in checks])  # fmt: skip
    L.append("")
    return "\n".join(L)


def steps_of(args) -> int:
    return args.new_tokens - 1


def plot(all_settings: list[Setting], path: Path, env: dict, args) -> None:
    """Prefill time, decode time per token and prefill FLOPs against the budget (L, H; measured and predicted), with
    Llava and latency=None as horizontal lines, and the token-reduction presets' prefill times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(s.kind, s.latency, s.preset): s.info for s in all_settings}
    colors = {"L": "tab:blue", "H": "tab:orange"}
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    panels = (
        ("prefill", lambda i: 1e3 * i["prefill"]["median"], lambda i: 1e3 * i["predicted_prefill_s"], "prefill ms"),
        ("decode", lambda i: 1e3 * i["decode"]["median"], lambda i: 1e3 * i["predicted_decode_s_per_token"],
         "decode ms/token"),
        ("FLOPs", lambda i: i["measured_prefill_flops"] / 1e9, lambda i: i["modelled_prefill_flops"] / 1e9,
         "prefill GFLOPs"),
    )  # fmt: skip
    for ax, (title, measured, modelled, ylabel) in zip(axes, panels):
        for kind in ("L", "H"):
            budgets = [b for b in BUDGETS if b is not None and (kind, b, None) in by]  # all but with --configs
            ax.plot(budgets, [measured(by[(kind, b, None)]) for b in budgets], "o-", color=colors[kind],
                    label=f"ada-{kind} measured")  # fmt: skip
            ax.plot(budgets, [modelled(by[(kind, b, None)]) for b in budgets], "x--", color=colors[kind],
                    label=f"ada-{kind} {'modelled' if title == 'FLOPs' else 'predicted (local)'}")  # fmt: skip
            if (kind, None, None) in by:
                ax.axhline(measured(by[(kind, None, None)]), color=colors[kind], linestyle=":", lw=1,
                           label=f"ada-{kind} latency=None")  # fmt: skip
        if ("llava", None, None) in by:
            ax.axhline(measured(by[("llava", None, None)]), color="black", lw=1.2, label="Llava (transformers)")
        ax.set_xlabel("latency budget")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: measured and {'modelled' if title == 'FLOPs' else 'predicted'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[3]
    presets = [s for s in all_settings if s.preset is not None]
    y = range(len(presets))
    ax.barh([k - 0.2 for k in y], [1e3 * s.info["prefill"]["median"] for s in presets], height=0.4, label="measured")
    ax.barh([k + 0.2 for k in y], [1e3 * s.info["predicted_prefill_s"] for s in presets], height=0.4,
            label="predicted (local)")  # fmt: skip
    if ("llava", None, None) in by:
        ax.axvline(1e3 * by[("llava", None, None)]["prefill"]["median"], color="black", lw=1.2, label="Llava")
    ax.set_yticks(list(y), [s.name.removeprefix("ada-") for s in presets], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("prefill ms")
    ax.set_title("token-reduction presets")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"AdaLLaVA vs Llava on {env['device']} ({env['dtype']}, {args.layers}L x {args.heads}H, hidden "
                 f"{args.hidden_size}, {env['threads']} threads, {args.reps} reps, "
                 f"{args.new_tokens} tokens)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
