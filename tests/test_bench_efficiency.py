"""The efficiency benchmark's quick path on a tiny model: it runs, writes its three outputs with the expected
configurations and columns, and its modelled FLOPs and KV-cache bytes equal the measured ones."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_efficiency  # noqa: E402

from ada_hf.hardware import Hardware, save_local_profile  # noqa: E402

# Llava, ada with the scheduler and a vision-encoder merging preset (generate shortens the prompt's image run), and ada
# with a time target: the benchmark's code paths; peak memory (one subprocess each, in parallel) for Llava and the
# time target (whose subprocess needs the hardware profile to choose the same plan).
CONFIGS = r"^llava|^ada-L illava-image \+ latency|^ada-H latency=\d+ms"


def test_settings_cover_the_issue():
    names = [s.name for s in bench_efficiency.settings()]
    assert names[0] == "llava (transformers)"
    for kind in ("L", "H"):
        for budget in (None, 1.0, 0.85, 0.75, 0.6, 0.5):
            assert f"ada-{kind} latency={budget}" in names
    for preset in ("llavolta-heavy", "llavolta-light", "illava-image", "illava-video"):
        assert f"ada-L {preset}" in names
        assert f"ada-L {preset} + latency=0.6" in names and f"ada-H {preset} + latency=0.6" in names


@pytest.fixture
def local_profile(tmp_path, monkeypatch):
    """A stored "local" profile in a private HF_HOME: the benchmark reads it instead of calibrating."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    save_local_profile(Hardware("local", 5e9, {32: 5e10, 16: 5e10, 8: 5e10}, 1e-4, 1e-3, source="test",
                                details={"device": "cpu"}))  # fmt: skip


def test_tiny_run_writes_table_json_and_plot(tmp_path, local_profile):
    out = tmp_path / "results"
    threads = torch.get_num_threads()
    try:
        # One thread: on a shared machine, two threads waiting on each other cost far more than they gain here.
        bench_efficiency.main(["--tiny", "--device", "cpu", "--out", str(out), "--configs", CONFIGS, "--reps", "1",
                               "--warmup", "0", "--new-tokens", "2", "--ms-targets", "0.9", "--jobs", "2",
                               "--threads", "1", "--memory-configs", "^llava|ms$"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    stem = out / "efficiency_tiny_cpu"
    for suffix in (".json", ".md", ".png"):
        assert stem.with_suffix(suffix).is_file(), suffix
    result = json.loads(stem.with_suffix(".json").read_text())
    names = [c["name"] for c in result["configs"]]
    assert names[0] == "llava (transformers)" and names[2] == "ada-L illava-image + latency=0.6", names
    assert re.fullmatch(r"ada-H latency=\d+ms", names[1]), names
    target = next(c for c in result["configs"] if c["name"].endswith("ms"))
    assert target["kind"] == "H" and target["report"]["target_seconds"] > 0
    for c in result["configs"]:
        assert c["modelled_prefill_flops"] == c["measured_prefill_flops"], c["name"]
        assert c["modelled_decode_flops"] == c["measured_decode_flops"], c["name"]
        assert c["kv_cache_bytes_model"] == c["kv_cache_bytes_tensors"] > 0, c["name"]
        assert c["predicted_prefill_s"] > 0 and c["prefill"]["median"] > 0 and c["decode"]["median"] > 0
        assert c["gpu_prefill_s"] > 0
        if c["name"] == "ada-L illava-image + latency=0.6":
            assert "memory" not in c  # not asked for
            continue
        memory = c["memory"]
        assert memory["peak_rss_is_request_only"] and memory["peak_rss"] > 0.9 * memory["rss_after_load"] > 0, memory
    tokens = {c["name"]: c["llm_prompt_tokens"] for c in result["configs"]}
    assert tokens["ada-L illava-image + latency=0.6"] < tokens["llava (transformers)"]  # merged in the vision encoder
    assert "units" in result["configs"][1]["plan"]
    checks = {c["target"].split(",")[0]: c["passed"] for c in result["checks"]}
    assert checks["modelled / measured prefill FLOPs"] and checks["modelled / measured decode FLOPs"]
    assert checks["KV-cache bytes: cost model == the returned cache's tensors"]
    md = stem.with_suffix(".md").read_text()
    for column in ("prefill ms", "decode ms/token", "predicted prefill ms (pred/meas)", "peak RSS MiB",
                   "KV cache MiB model / tensors", "prefill GFLOPs measured / modelled", "nvidia_A100"):  # fmt: skip
        assert column in md, column
    assert "## Checks" in md and "## Time targets" in md and ("PASS" in md or "FAIL" in md)
