"""What the CPU/GPU benchmarks share: the command-line boilerplate, the 7B-shaped narrow model (AdaLLaVA L and H and
transformers' Llava on the same weights), the benchmark prompt, FLOP counting of the CPU sdpa kernel, statistics,
markdown helpers, and what a report says about the code and the machine it measured.

Importing this module puts the repository root on `sys.path` (so `ada_hf` imports without PYTHONPATH) and registers
the CPU sdpa FLOP formula with `torch.utils.flop_counter`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the repo root, for `ada_hf` without PYTHONPATH

from torch.utils.flop_counter import register_flop_formula, sdpa_flop_count  # noqa: E402
from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from ada_hf.tiny_model import build_tiny_model, tiny_config  # noqa: E402

VOCAB, IMAGE_TOKEN, LATENCY_TOKEN = 1000, 998, 999


# --------------------------------------------------------------------------------------------------------------------
# FLOP counting: make the CPU sdpa kernel visible to FlopCounterMode.
#
# On CPU, sdpa dispatches to `aten._scaled_dot_product_flash_attention_for_cpu`, which `torch.utils.flop_counter` does
# not know, so attention would silently be left out of the count. The standard sdpa formula counts the full T x T score
# matrix, as eager attention (and the cost model) does, although the causal kernel skips about half of it.
_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in torch.utils.flop_counter.flop_registry:

    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)


# --------------------------------------------------------------------------------------------------------------------
# Command line
def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model shape, prompt, threads and seed options (the 7B-shaped narrow model by default)."""
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--prefix-layers", type=int, default=16)
    p.add_argument("--scheduler-rank", type=int, default=8)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--intermediate-size", type=int, default=1376)
    p.add_argument("--vision-hidden-size", type=int, default=32)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=336, help="CLIP input side (336/14: 576 image tokens)")
    p.add_argument("--patch-size", type=int, default=14)
    p.add_argument("--prefix-tokens", type=int, default=8, help="text tokens before the image")
    p.add_argument("--question-tokens", type=int, default=16, help="text tokens after the image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)


def standard_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --out, --name, --quick, --reps, --warmup, --new-tokens and the model shape.
    The defaults that depend on --quick are left None and filled in by `resolve_args`."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(RESULTS), help="output directory")
    p.add_argument("--name", default=None, help="file stem for the outputs (default: per script, *_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="short smoke run (few reps and tokens)")
    p.add_argument("--reps", type=int, default=None, help="measured repetitions per configuration")
    p.add_argument("--warmup", type=int, default=None, help="discarded warm-up repetitions")
    p.add_argument("--new-tokens", type=int, default=None, help="greedy decode steps per timed request")
    add_model_args(p)
    return p


def resolve_args(args: argparse.Namespace, stem: str, **defaults: tuple) -> tuple[str, Path]:
    """Fill every option left None from `defaults` (name -> (full-run value, --quick value)), set torch's thread count,
    create the output directory; returns (file stem, output directory)."""
    for key, (full, quick) in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, quick if args.quick else full)
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return args.name or (f"{stem}_quick" if args.quick else stem), out_dir


# --------------------------------------------------------------------------------------------------------------------
# Models and prompt
def image_tokens(args) -> int:
    """Image tokens per image of the benchmark's CLIP grid."""
    return (args.image_size // args.patch_size) ** 2


def model_config_kwargs(args) -> dict:
    """`tiny_config` arguments of the benchmark model (from the options `add_model_args` defines)."""
    return dict(
        vocab_size=VOCAB,
        image_token_id=IMAGE_TOKEN,
        latency_token_id=LATENCY_TOKEN,
        num_layers=args.layers,
        hidden_size=args.hidden_size,
        num_heads=args.heads,
        intermediate_size=args.intermediate_size,
        image_size=args.image_size,
        patch_size=args.patch_size,
        vision_hidden_size=args.vision_hidden_size,
        vision_layers=args.vision_layers,
        scheduler_rank=args.scheduler_rank,
        num_prefix_layers=args.prefix_layers,
    )


def build_ada(args, scheduler_type: str):
    """One AdaLLaVA model (variant "L" or "H") with the benchmark's shape and seed."""
    return build_tiny_model(tiny_config(scheduler_type=scheduler_type, **model_config_kwargs(args)), seed=args.seed)


def llava_config(cfg) -> LlavaConfig:
    """transformers' `LlavaConfig` with the same text and vision towers as an `AdaLlavaConfig`."""
    return LlavaConfig(
        text_config=cfg.text_config.to_dict(),
        vision_config=cfg.vision_config.to_dict(),
        image_token_index=cfg.image_token_id,
        image_seq_length=cfg.image_seq_length,
        projector_hidden_act=cfg.projector_hidden_act,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        vision_feature_layer=cfg.vision_feature_layer,
        multimodal_projector_bias=cfg.multimodal_projector_bias,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def build_models(args):
    """Ada-L, Ada-H and transformers' Llava sharing every weight except the (ada-only) scheduler; returns
    (llava, ada_l, ada_h)."""
    ada_l = build_ada(args, "L")
    ada_h = build_ada(args, "H")
    shared = {k: v for k, v in ada_l.state_dict().items() if not k.startswith("model.scheduler.")}
    missing, unexpected = ada_h.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith("model.scheduler.") for k in missing), (missing, unexpected)

    llava = LlavaForConditionalGeneration(llava_config(ada_l.config)).float().eval()
    missing, unexpected = llava.load_state_dict(shared, strict=True)
    assert not missing and not unexpected
    for m in (ada_l, ada_h, llava):
        assert m.config.text_config._attn_implementation == "sdpa", m.config.text_config._attn_implementation
    return llava, ada_l, ada_h


def make_inputs(args):
    """The benchmark prompt: (ids, ids with a trailing <latency> token, pixel values); one image between a text prefix
    and a question, random token ids from the seed."""
    g = torch.Generator().manual_seed(args.seed + 1)
    prefix = torch.randint(1, 900, (1, args.prefix_tokens), generator=g)
    question = torch.randint(1, 900, (1, args.question_tokens), generator=g)
    image = torch.full((1, image_tokens(args)), IMAGE_TOKEN)
    ids = torch.cat([prefix, image, question], dim=1)  # Llava and ada at latency None
    ids_lat = torch.cat([ids, torch.full((1, 1), LATENCY_TOKEN)], dim=1)  # ada with a budget: <latency> ends the prompt
    pixel_values = torch.randn(1, 3, args.image_size, args.image_size, generator=g)
    return ids, ids_lat, pixel_values


@dataclass
class Config:
    """One benchmarked configuration and what was measured of it."""

    name: str
    kind: str  # "llava", "L", "H", "vision"
    latency: float | None
    model: torch.nn.Module = field(repr=False)
    kwargs: dict = field(default_factory=dict)  # extra prefill arguments (e.g. LLaVolta settings)
    prefill: list = field(default_factory=list)
    decode: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------------
# Statistics and formatting
def stats(xs: list[float]) -> dict:
    """Median, quartiles, min, max and count of a sample (NaN when empty)."""
    xs = sorted(xs)
    if not xs:
        return dict(median=float("nan"), q1=float("nan"), q3=float("nan"), min=float("nan"), max=float("nan"), n=0)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return dict(median=statistics.median(xs), q1=q1, q3=q3, min=xs[0], max=xs[-1], n=len(xs))


def fmt_ms(s: dict) -> str:
    """A `stats` dict of seconds as "median [q1–q3]" in ms."""
    return f"{1e3 * s['median']:.1f} [{1e3 * s['q1']:.1f}–{1e3 * s['q3']:.1f}]"


def pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def md_table(headers: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


# --------------------------------------------------------------------------------------------------------------------
# What was measured, and on what
def code_state(repo: Path = REPO) -> dict:
    """Which ada_hf was measured: HEAD, whether ada_hf/ differs from it, and a hash of the sources as imported."""
    import ada_hf

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=repo, capture_output=True, text=True, timeout=20).stdout
        except Exception:  # noqa: BLE001
            return ""

    src = Path(ada_hf.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(src.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    dirty = git("status", "--porcelain", "--", "ada_hf")
    return dict(
        head=git("rev-parse", "--short", "HEAD").strip(),
        ada_hf_modified_files=[line[3:] for line in dirty.splitlines()],
        ada_hf_sha256=h.hexdigest()[:16],
        ada_hf_path=str(src),
    )


def environment(device: torch.device | str = "cpu") -> dict:
    """Library versions, threads and the device, for the report."""
    import transformers

    device = torch.device(device)
    env = dict(
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        device=str(device),
    )
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


class ForeignCpu:
    """CPU time used by everything but this process (system busy time minus ours), in cores over an interval: a
    direct measure of competition for the cores, unlike the 1-minute load average, which lags and counts us."""

    def __init__(self):
        self.proc = psutil.Process()
        self.mark()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _own(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def mark(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def cores(self) -> float:
        """Foreign cores busy on average since the last `mark()`."""
        wall = time.perf_counter() - self.t0
        return max(self._busy() - self.busy0 - (self._own() - self.own0), 0.0) / max(wall, 1e-9)

    def wait_quiet(self, threshold: float, window: float = 0.25, max_wait: float = 60.0) -> float:
        """Wait (up to max_wait s) until other processes use less than `threshold` cores over `window` s; returns
        the seconds waited beyond the first window."""
        start = time.perf_counter()
        while True:
            self.mark()
            time.sleep(window)
            if self.cores() < threshold or time.perf_counter() - start > max_wait:
                return time.perf_counter() - start - window
