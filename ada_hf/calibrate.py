"""`ada-hf calibrate`: measure this machine once (matmul throughput, memory bandwidth, per-layer and per-call overhead
of a Llama decoder) and store it as the "local" hardware profile that `generate(latency="150ms", hardware="local")`
predicts with."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from .hardware import Hardware, save_local_profile


MATMUL_ROWS = (1, 16, 64, 256, 1024)
MATMUL_WIDTHS = (64, 256, 1024, 4096)
ATTENTION_HEAD_DIMS = (16, 32, 64, 128)
WORKING_SET_BYTES = 128 * 2**20  # beyond any CPU's last-level cache and a GPU's L2


def _median_seconds(fn: Callable[[], object], repeats: int | None = None, warmup: int = 2, budget_s: float = 0.1
                    ) -> float:  # fmt: skip
    """Median time of `fn`; without `repeats`, as many runs (3 to 50) as fit in about `budget_s`."""
    for _ in range(warmup):
        fn()
    if repeats is None:
        start = time.perf_counter()
        fn()
        repeats = int(min(max(budget_s / max(time.perf_counter() - start, 1e-9), 3), 50))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def measure_matmul(dtype: torch.dtype, device: torch.device, rows: int = 1024, width: int = 1024,
                   working_set: int = WORKING_SET_BYTES) -> float:  # fmt: skip
    """Throughput, FLOP/s, of a linear layer as a model runs it: `x @ w.T` with x `rows` x `width` and w `width`
    square, each run on the next of as many distinct weights as fill `working_set` bytes, since a model's layers have
    distinct weights that do not stay in the caches (with one reused weight, a decode-sized matmul would run from
    cache)."""
    copies = max(1, -(-working_set // (width * width * dtype.itemsize)))
    weights = torch.empty(copies, width, width, dtype=dtype, device=device).uniform_(-1, 1)
    x = torch.randn(rows, width, dtype=dtype, device=device)
    sync = _sync(device)
    turn = iter(range(1 << 62))

    def run():
        torch.nn.functional.linear(x, weights[next(turn) % copies])
        sync()

    return 2 * rows * width**2 / _median_seconds(run)


def measure_matmul_grid(dtype: torch.dtype, device: torch.device) -> list[list[float]]:
    """`[rows, width, FLOP/s]` for every rows x width of the grid (what `Hardware.matmul_throughput` reads)."""
    return [[m, w, measure_matmul(dtype, device, m, w)] for m in MATMUL_ROWS for w in MATMUL_WIDTHS]


def measure_attention(dtype: torch.dtype, device: torch.device, tokens: int = 512, width: int = 512
                      ) -> list[list[float]]:  # fmt: skip
    """`[head_dim, FLOP/s]` of causal `scaled_dot_product_attention` (the sdpa kernel the models run) on `tokens`
    tokens and `width / head_dim` heads, FLOPs counted as the cost model counts them: both products over the full
    query x key matrix (4 per score and head dimension) plus 5 per score for the softmax."""
    sync = _sync(device)
    points = []
    for head_dim in ATTENTION_HEAD_DIMS:
        heads = width // head_dim
        q, k, v = (torch.randn(1, heads, tokens, head_dim, dtype=dtype, device=device) for _ in range(3))

        def run():
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            sync()

        scores = heads * tokens * tokens
        points.append([head_dim, (4 * head_dim + 5) * scores / _median_seconds(run)])
    return points


def measure_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 10) -> float:
    """Streaming bandwidth, bytes/s: a copy reads and writes each byte once."""
    x = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    y = torch.empty_like(x)
    sync = _sync(device)

    def run():
        y.copy_(x)
        sync()

    return 2 * x.numel() * 4 / _median_seconds(run, repeats)


def measure_cache_bandwidth(device: torch.device, heads: int = 8, head_dim: int = 64, context: int = 1024,
                            layers: int = 32) -> float:  # fmt: skip
    """Bytes/s at which a decode step reads the key/value cache: causal sdpa of one query over `context` cached keys
    and values, each run on the next of `layers` distinct caches (so that they come from memory, as a decode step's
    do). Below the copy bandwidth on a CPU (per-head blocks, not one stream)."""
    caches = torch.randn(layers, 2, 1, heads, context, head_dim, device=device)
    query = torch.randn(1, heads, 1, head_dim, device=device)
    sync = _sync(device)
    turn = iter(range(1 << 62))

    def run():
        keys, values = caches[next(turn) % layers]
        torch.nn.functional.scaled_dot_product_attention(query, keys, values)
        sync()

    return 2 * heads * context * head_dim * 4 / _median_seconds(run, budget_s=0.3)


def _llama(device: torch.device, layers: int, hidden: int = 64, heads: int = 4, intermediate: int = 128,
           vocab: int = 128) -> LlamaForCausalLM:  # fmt: skip
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048, eos_token_id=None,
        pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(device).eval()


def _generate_seconds(model: LlamaForCausalLM, prompt: int, tokens: int, repeats: int | None = None,
                      warmup: int = 2) -> float:  # fmt: skip
    """Median seconds of one greedy `generate` of exactly `tokens` tokens after a `prompt`-token prompt."""
    device = model.device
    ids = torch.zeros(1, prompt, dtype=torch.long, device=device)

    def run():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                       do_sample=False)  # fmt: skip
        _sync(device)()

    return _median_seconds(run, repeats, warmup=warmup, budget_s=1.0)


@torch.no_grad()
def measure_overheads(device: torch.device, repeats: int = 15) -> tuple[float, float, float]:
    """Fixed seconds per decoder layer run, per forward call, and per `generate` request: `generate` on a narrow
    Llama (hidden 64, where the arithmetic is negligible and what remains is framework dispatch, small kernels and
    generate's own bookkeeping) with 1 and 9 layers, producing 1 and 17 tokens. With `c` calls (1 prefill + steps)
    and `n` layers: `t = request + c * call + c * n * layer`."""
    few, many, short, long = 1, 9, 1, 17
    times = {}
    for layers in (few, many):
        model = _llama(device, layers)
        for calls in (short, long):
            times[layers, calls] = _generate_seconds(model, 8, calls, repeats, warmup=3)
    per_layer = (times[many, long] - times[few, long] + times[many, short] - times[few, short]) / (
        (many - few) * (long + short)
    )
    per_layer = max(per_layer, 0.0)
    per_call = max((times[few, long] - times[few, short]) / (long - short) - few * per_layer, 0.0)
    per_request = max(times[few, short] - short * (per_call + few * per_layer), 0.0)
    return per_layer, per_call, per_request


class TokenClock(BaseStreamer):
    """A `generate` streamer that timestamps every `put` (the prompt first, then each new token), after the device's
    work so far. With a `FlopCounterMode`, it also reads the running FLOP total at each put, which splits the count
    into prefill and decode."""

    def __init__(self, device: torch.device | str = "cpu", counter=None):
        self.sync, self.counter = _sync(torch.device(device)), counter
        self.times: list[float] = []
        self.flops: list[int] = []

    def put(self, value) -> None:
        self.sync()
        self.times.append(time.perf_counter())
        if self.counter is not None:
            self.flops.append(self.counter.get_total_flops())

    def end(self) -> None:
        pass


@torch.no_grad()
def measure_factors(hardware: Hardware, device: torch.device, prompt: int = 512, steps: int = 24, repeats: int = 5
                    ) -> tuple[float, float]:  # fmt: skip
    """(prefill_factor, decode_factor): measured over modelled time, fixed overheads aside, of transformers' Llama
    (6 layers, hidden 768, 12 heads of 64, MLP 2048: weights beyond the caches) on a `prompt`-token prompt, for the
    prefill (call to first token) and for each of `steps` decode steps (first to last token, so that no difference of
    two noisy timings is taken); medians of `repeats` requests after a warm-up, modelled with `hardware` (its factors
    ignored)."""
    from transformers import LlavaConfig

    from .cost_model import CostModel, dtype_bits

    model = _llama(device, layers=6, hidden=768, heads=12, intermediate=2048, vocab=1024)
    ids = torch.zeros(1, prompt, dtype=torch.long, device=device)
    prefills, decodes = [], []
    for _ in range(1 + repeats):
        clock = TokenClock(device)
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                       do_sample=False, streamer=clock)  # fmt: skip
        prefills.append(clock.times[1] - start)
        decodes.append((clock.times[-1] - clock.times[1]) / steps)
    prefill, decode = statistics.median(prefills[1:]), statistics.median(decodes[1:])
    config = LlavaConfig(text_config=model.config.to_dict())
    config.text_config._attn_implementation = model.config._attn_implementation
    bits = dtype_bits(model.dtype)
    plain = replace(hardware, prefill_factor=1.0, decode_factor=1.0)
    inf = float("inf")
    free = replace(plain, bandwidth=inf, cache_bandwidth=inf, peak=dict.fromkeys(plain.peak, inf), matmul={},
                   attention={})  # fmt: skip
    modelled, fixed = (CostModel(config, h, bits).request(prompt, new_tokens=steps + 1) for h in (plain, free))
    prefill_factor = (prefill - fixed.prefill.seconds) / (modelled.prefill.seconds - fixed.prefill.seconds)
    decode_factor = (decode - fixed.decode.seconds / steps) / ((modelled.decode.seconds - fixed.decode.seconds) / steps)
    return max(prefill_factor, 0.1), max(decode_factor, 0.1)


def calibrate(device: str | torch.device = "cpu", save: bool = True) -> Hardware:
    """Measure this machine and (by default) store the profile under the Hugging Face cache folder."""
    device = torch.device(device)
    steps: dict[str, Callable[[], object]] = {
        "matmul fp32": lambda: measure_matmul_grid(torch.float32, device),
        "matmul bf16": lambda: measure_matmul_grid(torch.bfloat16, device),
        "attention fp32": lambda: measure_attention(torch.float32, device),
        "attention bf16": lambda: measure_attention(torch.bfloat16, device),
        "bandwidth": lambda: measure_bandwidth(device),
        "cache bandwidth": lambda: measure_cache_bandwidth(device),
        "overheads": lambda: measure_overheads(device),
    }
    results = {}
    bar = tqdm(total=len(steps) + 1, desc="calibrating", leave=False)
    for step, measure in steps.items():
        bar.set_postfix_str(step)
        results[step] = measure()
        bar.update()
    layer_overhead, call_overhead, request_overhead = results["overheads"]
    full, half = results["matmul fp32"], results["matmul bf16"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    hardware = Hardware(
        name="local",
        bandwidth=results["bandwidth"],
        cache_bandwidth=results["cache bandwidth"],
        # 8-bit: no int8 kernels are measured; 16-bit figures stand in for them.
        peak={32: max(f for *_, f in full), 16: max(f for *_, f in half), 8: max(f for *_, f in half)},
        layer_overhead_s=layer_overhead,
        call_overhead_s=call_overhead,
        request_overhead_s=request_overhead,
        matmul={32: full, 16: half, 8: half},
        attention={32: results["attention fp32"], 16: results["attention bf16"], 8: results["attention bf16"]},
        source=f"ada-hf calibrate on {platform.node()} ({name}), device {device}, {torch.get_num_threads()} threads",
        details={"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)},
    )
    bar.set_postfix_str("reference Llama")
    prefill_factor, decode_factor = measure_factors(hardware, device)
    hardware = replace(hardware, prefill_factor=prefill_factor, decode_factor=decode_factor)
    bar.update()
    bar.close()
    if save:
        save_local_profile(hardware)
    return hardware
