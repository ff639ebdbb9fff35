"""`ada-hf calibrate`: measure this machine once (matmul throughput, memory bandwidth, per-layer and per-call overhead
of a Llama decoder) and store it as the "local" hardware profile that `generate(latency="150ms", hardware="local")`
predicts with."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from .hardware import Hardware, save_local_profile


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_matmul(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """Dense matmul throughput, FLOP/s, on `size`-square operands."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        a @ b
        sync()

    return 2 * size**3 / _median_seconds(run, repeats)


def measure_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 10) -> float:
    """Streaming bandwidth, bytes/s: a copy reads and writes each byte once."""
    x = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    y = torch.empty_like(x)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        y.copy_(x)
        sync()

    return 2 * x.numel() * 4 / _median_seconds(run, repeats)


@torch.no_grad()
def measure_overheads(device: torch.device, repeats: int = 15) -> tuple[float, float, float]:
    """Fixed seconds per decoder layer run, per forward call, and per `generate` request: `generate` on a narrow
    Llama (hidden 64, where the arithmetic is negligible and what remains is framework dispatch, small kernels and
    generate's own bookkeeping) with 1 and 5 layers, producing 1 and 9 tokens. With `c` calls (1 prefill + steps):
    `t = request + c * call + c * layers * layer`."""
    times = {}
    for layers in (1, 5):
        config = LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        model = LlamaForCausalLM(config).to(device).eval()
        ids = torch.zeros(1, 8, dtype=torch.long, device=device)
        for calls in (1, 9):

            def run():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=calls, min_new_tokens=calls,
                               do_sample=False)  # fmt: skip
                if device.type == "cuda":
                    torch.cuda.synchronize()

            times[layers, calls] = _median_seconds(run, repeats, warmup=3)
    per_layer = max((times[5, 9] - times[1, 9] + times[5, 1] - times[1, 1]) / (4 * (9 + 1)), 0.0)
    per_call = max((times[1, 9] - times[1, 1]) / 8 - per_layer, 0.0)
    per_request = max(times[1, 1] - per_call - per_layer, 0.0)
    return per_layer, per_call, per_request


def calibrate(device: str | torch.device = "cpu", save: bool = True) -> Hardware:
    """Measure this machine and (by default) store the profile under the Hugging Face cache folder."""
    device = torch.device(device)
    steps = ["matmul fp32", "matmul bf16", "bandwidth", "overheads"]
    results = {}
    for step in tqdm(steps, desc="calibrating", leave=False):
        if step == "matmul fp32":
            results[step] = measure_matmul(torch.float32, device)
        elif step == "matmul bf16":
            results[step] = measure_matmul(torch.bfloat16, device)
        elif step == "bandwidth":
            results[step] = measure_bandwidth(device)
        else:
            results[step] = measure_overheads(device)
    layer_overhead, call_overhead, request_overhead = results["overheads"]
    half = results["matmul bf16"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    hardware = Hardware(
        name="local",
        bandwidth=results["bandwidth"],
        peak={32: results["matmul fp32"], 16: half, 8: half},
        layer_overhead_s=layer_overhead,
        call_overhead_s=call_overhead,
        request_overhead_s=request_overhead,
        source=f"ada-hf calibrate on {platform.node()} ({name}), device {device}, {torch.get_num_threads()} threads",
        details={"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)},
    )
    if save:
        save_local_profile(hardware)
    return hardware
