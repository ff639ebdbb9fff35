"""Hardware the cost model can time a request on: peak throughput and memory bandwidth, plus a measured local profile.

Model code (it travels with remote code), because `generate(latency="150ms", hardware=...)` reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
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
        source: where the figures come from.
    """

    name: str
    bandwidth: float
    peak: dict[int, float]
    layer_overhead_s: float = 0.0
    call_overhead_s: float = 0.0
    request_overhead_s: float = 0.0
    source: str = ""
    details: dict = field(default_factory=dict, compare=False)

    def throughput(self, bits: int) -> float:
        if bits not in self.peak:
            raise ValueError(f"Hardware {self.name!r} has no {bits}-bit peak; it lists {sorted(self.peak)}.")
        return self.peak[bits]

    def op_seconds(self, ops: float, nbytes: float, bits: int) -> float:
        """Roofline time of one op: compute-bound or memory-bound, whichever is slower."""
        return max(ops / self.throughput(bits), nbytes / self.bandwidth)


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
    data = asdict(hardware)
    data["peak"] = {str(k): v for k, v in hardware.peak.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
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
    data = json.loads(path.read_text())
    data["peak"] = {int(k): float(v) for k, v in data["peak"].items()}
    return Hardware(**data)


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
