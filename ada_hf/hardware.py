"""Hardware the cost model can time a request on: peak throughput and memory bandwidth, plus a measured local profile.

Model code (it travels with remote code), because `generate(latency="150ms", hardware=...)` reads it.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

LOCAL = "local"


@dataclass(frozen=True)
class Hardware:
    """
    A roofline: an op takes `max(ops / peak, bytes / bandwidth)` seconds, plus the fixed costs a measured profile adds.

    Attributes:
        name: the key in `HARDWARE` (or "local").
        bandwidth: memory bandwidth, bytes/s.
        peak: dense peak throughput in operations/s by operand width in bits (32, 16, 8); 16 is FP16/BF16 tensor cores
            and 8 is INT8 on GPUs.
        layer_overhead_s: fixed time per decoder/vision layer run (framework dispatch, small kernels); 0 in the vendor
            table (a pure roofline), measured by `ada-hf calibrate` for "local".
        call_overhead_s: fixed time per model forward call (embeddings, masks, sampling), idem.
        request_overhead_s: fixed time per `generate` request (its set-up and bookkeeping), idem.
        cache_bandwidth: bytes/s at which the key/value cache moves: attention reading it, and its append by
            concatenation (transformers' `DynamicCache` reads the cache and writes it anew at every call). Measured by
            `ada-hf calibrate` with sdpa at one query (per-head blocks run below a copy's bandwidth on a CPU); 0:
            `bandwidth`.
        matmul: measured linear-layer throughput by operand width: `[rows, width, FLOP/s]` points of `x @ w.T`
            (x: rows x width, w: width x width) on a grid; narrow or short matmuls run far below `peak`, so a
            measured profile times each linear layer from these (see `matmul_throughput`). Empty in the vendor table.
        attention: measured fused-attention (sdpa) throughput by operand width: `[head_dim, FLOP/s]` points, FLOPs
            counted as the cost model counts them (full query x key products, softmax included). Empty: roofline.
        prefill_factor / decode_factor: measured over modelled time of a reference Llama's prefill and decode steps
            (fixed overheads aside), by which the modelled time of many-token forwards and of decode steps is
            multiplied. They hold what single-op timings miss: the page faults of freshly allocated activations and
            of the key/value cache's concatenation, the small ops between kernels, caches shared by consecutive ops.
            1 in the vendor table.
        source: where the figures come from.
    """

    name: str
    bandwidth: float
    peak: dict[int, float]
    layer_overhead_s: float = 0.0
    call_overhead_s: float = 0.0
    request_overhead_s: float = 0.0
    cache_bandwidth: float = 0.0
    matmul: dict[int, list[list[float]]] = field(default_factory=dict)
    attention: dict[int, list[list[float]]] = field(default_factory=dict)
    prefill_factor: float = 1.0
    decode_factor: float = 1.0
    source: str = ""
    details: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready fields (integer keys as strings); `from_dict` reads them back."""
        data = asdict(self)
        for key in ("peak", "matmul", "attention"):
            data[key] = {str(k): v for k, v in data[key].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Hardware:
        data = dict(data)
        data["peak"] = {int(k): float(v) for k, v in data["peak"].items()}
        for key in ("matmul", "attention"):  # absent from profiles written before they were measured
            data[key] = {int(k): v for k, v in data.get(key, {}).items()}
        return cls(**data)

    def throughput(self, bits: int) -> float:
        if bits not in self.peak:
            raise ValueError(f"Hardware {self.name!r} has no {bits}-bit peak; it lists {sorted(self.peak)}.")
        return self.peak[bits]

    def op_seconds(self, ops: float, nbytes: float, bits: int, throughput: float | None = None,
                   bandwidth: float | None = None) -> float:  # fmt: skip
        """Roofline time of one op: compute-bound (at `throughput`, default the peak) or memory-bound (at `bandwidth`,
        default the memory bandwidth), whichever is slower."""
        return max(ops / (throughput or self.throughput(bits)), nbytes / (bandwidth or self.bandwidth))

    def matmul_throughput(self, bits: int, rows: int, fan_in: int, fan_out: int) -> float:
        """FLOP/s of a linear layer on `rows` tokens: the measured grid interpolated in log space (rows, and the
        geometric mean of the two widths; clamped to the grid's edges), or the peak when none was measured."""
        grid = self._log_grids[0].get(bits)
        if grid is None:
            return self.throughput(bits)
        rows_axis, width_axis, table = grid
        (m0, m1, a), (w0, w1, b) = _bracket(rows_axis, rows), _bracket(width_axis, math.sqrt(fan_in * fan_out))
        low = (1 - b) * table[m0, w0] + b * table[m0, w1]
        high = (1 - b) * table[m1, w0] + b * table[m1, w1]
        return math.exp((1 - a) * low + a * high)

    def attention_throughput(self, bits: int, head_dim: int) -> float | None:
        """FLOP/s of the fused attention kernel at `head_dim`, interpolated in log space; None when not measured."""
        curve = self._log_grids[1].get(bits)
        if curve is None:
            return None
        axis, logs = curve
        d0, d1, a = _bracket(axis, head_dim)
        return math.exp((1 - a) * logs[d0] + a * logs[d1])

    @cached_property
    def _log_grids(self) -> tuple[dict, dict]:
        """The measured points as sorted axes and log throughputs, built once: the cost model asks for every linear
        layer and attention of every request it prices."""
        matmul = {}
        for bits, points in self.matmul.items():
            if points:
                table = {(m, w): math.log(f) for m, w, f in points}
                matmul[bits] = (sorted({m for m, _ in table}), sorted({w for _, w in table}), table)
        attention = {bits: (sorted(d for d, _ in points), {d: math.log(f) for d, f in points})
                     for bits, points in self.attention.items() if points}  # fmt: skip
        return matmul, attention


def _bracket(axis: list[float], x: float) -> tuple[float, float, float]:
    """The grid points around `x` and its position between them in log space (0..1, clamped at the ends)."""
    if x <= axis[0] or len(axis) == 1:
        return axis[0], axis[0], 0.0
    if x >= axis[-1]:
        return axis[-1], axis[-1], 0.0
    i = bisect_right(axis, x)
    lo, hi = axis[i - 1], axis[i]
    return lo, hi, (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))


_T = 1e12
_G = 1e9
_VENDOR = "vendor datasheet, dense (no sparsity)"
# 32-bit: plain FP32 (no TF32, torch's default for matmuls); 16: FP16/BF16 tensor cores; 8: INT8 tensor cores.
HARDWARE: dict[str, Hardware] = {
    h.name: h
    for h in (
        Hardware(
            "nvidia_V100", 900 * _G, {32: 15.7 * _T, 16: 112 * _T, 8: 62 * _T}, source=_VENDOR + "; INT8 as LLM-Viewer"
        ),
        Hardware("nvidia_A100_40G", 1555 * _G, {32: 19.5 * _T, 16: 312 * _T, 8: 624 * _T}, source=_VENDOR),
        Hardware("nvidia_A100_80G", 2039 * _G, {32: 19.5 * _T, 16: 312 * _T, 8: 624 * _T}, source=_VENDOR),
        Hardware("nvidia_H100_SXM", 3350 * _G, {32: 67 * _T, 16: 989 * _T, 8: 1979 * _T}, source=_VENDOR),
        Hardware("nvidia_H100_PCIe", 2000 * _G, {32: 51 * _T, 16: 756 * _T, 8: 1513 * _T}, source=_VENDOR),
        Hardware("nvidia_H200", 4800 * _G, {32: 67 * _T, 16: 989 * _T, 8: 1979 * _T}, source=_VENDOR),
        Hardware("nvidia_L40", 864 * _G, {32: 90.5 * _T, 16: 181 * _T, 8: 362 * _T}, source=_VENDOR),
        Hardware("nvidia_A6000", 768 * _G, {32: 38.7 * _T, 16: 154.8 * _T, 8: 309.7 * _T}, source=_VENDOR),
        # 8 P-cores x 5.4 GHz x 2 AVX2 FMA ports x 8 fp32 lanes x 2; no native FP16/INT8 matmul speed-up assumed.
        Hardware(
            "intel_13900k",
            89.6 * _G,
            {32: 1.38 * _T, 16: 1.38 * _T, 8: 1.38 * _T},
            source="estimate: P-cores, AVX2, DDR5-5600 x2",
        ),
    )
}
ALIASES = {"nvidia_A100": "nvidia_A100_40G", "nvidia_H100": "nvidia_H100_SXM", "cpu": "intel_13900k"}


def local_profile_path() -> Path:
    """Where `ada-hf calibrate` stores this machine's profile: under the Hugging Face cache folder."""
    from huggingface_hub import constants

    # The environment first: huggingface_hub resolves HF_HOME once, at import.
    return Path(os.environ.get("HF_HOME") or constants.HF_HOME) / "ada_hf" / "hardware_local.json"


def save_local_profile(hardware: Hardware, path: Path | None = None) -> Path:
    """Write the profile atomically (a half-written profile is never read)."""
    path = path or local_profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(hardware.to_dict(), indent=2))
    os.replace(tmp, path)
    return path


def load_local_profile(path: Path | None = None) -> Hardware:
    path = path or local_profile_path()
    if not path.is_file():
        raise ValueError(
            f"hardware='local' needs this machine's profile, and {path} does not exist: run `ada-hf calibrate` once "
            f"(it measures matmul throughput, memory bandwidth and per-layer overhead), or name a table entry: "
            f"{sorted(HARDWARE)}."
        )
    return Hardware.from_dict(json.loads(path.read_text()))


def get_hardware(hardware: str | Hardware) -> Hardware:
    """A `Hardware` by table name, alias, or "local" (the calibrated profile of this machine)."""
    if isinstance(hardware, Hardware):
        return hardware
    if not isinstance(hardware, str):
        raise ValueError(f"hardware={hardware!r} must be a name: one of {sorted(HARDWARE)}, 'local', or a Hardware.")
    if hardware == LOCAL:
        return load_local_profile()
    name = ALIASES.get(hardware, hardware)
    if name not in HARDWARE:
        raise ValueError(
            f"Unknown hardware {hardware!r}: use one of {sorted(HARDWARE)} (aliases {sorted(ALIASES)}), or 'local' "
            "after `ada-hf calibrate`."
        )
    return HARDWARE[name]
