"""Peak memory of `ada-hf convert` on a synthetic multi-GB original LLaVA-1.5 checkpoint (several .bin shards).

    python benchmarks/bench_convert.py [--layers 8] [--shards 4] [--out-shard 1GB] [--workdir DIR]

The checkpoint has LLaVA-1.5-7B's layer shapes (hidden 4096, MLP 11008, 32 heads) with fewer layers, fp16 `.bin`
shards as the original repo, and a small CLIP tower with the right width. The conversion runs in a child process and
its peak RSS (ru_maxrss) is compared with the target: largest source shard + largest output shard + 1 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny-format writers live with the tests

from checkpoint_fixtures import TinyDims, write_clip_tower, write_sentencepiece_tokenizer  # noqa: E402


GB = 10**9


def write_big_original_llava(folder: Path, layers: int, shards: int, vocab: int) -> None:
    """LLaVA-1.5-7B-shaped layers in fp16 .bin shards (torch.save of plain dicts) with the original index."""
    d, inter, heads = 4096, 11008, 32
    dims = TinyDims(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        vision_hidden=1024,
        vision_intermediate=64,
        vision_layers=2,
        vision_heads=16,
    )
    folder.mkdir(parents=True)
    write_sentencepiece_tokenizer(folder, dims)
    names = ["model.embed_tokens.weight"]
    for i in range(layers):
        names += [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        names += [f"model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")]
        names.append(f"model.layers.{i}.self_attn.rotary_emb.inv_freq")
    names += [
        "model.norm.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
        "lm_head.weight",
    ]

    def shape(name: str) -> tuple:
        if "embed_tokens" in name or "lm_head" in name:
            return (vocab, d)
        if "inv_freq" in name:
            return (d // heads // 2,)
        if "gate_proj" in name or "up_proj" in name:
            return (inter, d)
        if "down_proj" in name:
            return (d, inter)
        if name.endswith("_proj.weight") or "mm_projector.2.weight" in name:
            return (d, d)
        if "mm_projector.0.weight" in name:
            return (d, 1024)
        return (d,)

    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for s in tqdm(range(shards), desc="writing source shards"):
        file = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        chunk = {}
        for name in names[s * per_shard : (s + 1) * per_shard]:
            dtype = torch.float32 if "inv_freq" in name else torch.float16
            chunk[name] = torch.randn(shape(name), dtype=torch.float32).mul_(0.02).to(dtype)
            weight_map[name] = file
            total += chunk[name].numel() * chunk[name].element_size()
        torch.save(chunk, folder / file)
        del chunk
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": d,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "torch_dtype": "float16", "mm_vision_tower": "openai/clip-vit-large-patch14-336",
              "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
              "mm_use_im_patch_token": False}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_clip_tower(folder.parent / "clip", dims, fmt="bin")


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would inherit this process's peak.
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"
CHILD = """
import json, sys, time
from ada_hf.conversion import convert
start = time.perf_counter()
report = convert(sys.argv[1], sys.argv[2], vision_tower=sys.argv[3], max_shard_size=sys.argv[4], progress=True)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": PEAK,
                  "largest_source": report.largest_source_shard_bytes, "largest_output": report.largest_output_shard_bytes,
                  "shards": report.shards}))
""".replace("PEAK", PEAK_RSS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=64, help="tokenizer size (the layers dominate the size)")
    parser.add_argument("--out-shard", default="1GB")
    parser.add_argument("--workdir", help="where to write the synthetic checkpoint (default: a temporary folder)")
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "results" / "convert.md"))
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        write_big_original_llava(work / "llava", args.layers, args.shards, args.vocab)
        source_bytes = sum(p.stat().st_size for p in (work / "llava").glob("*.bin"))
        baseline = subprocess.run(
            [sys.executable, "-c", f"import ada_hf.conversion; print({PEAK_RSS})"],
            capture_output=True,
            text=True,
            check=True,
        )
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(work / "llava"), str(work / "out"), str(work / "clip"), args.out_shard],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            sys.exit(result.stderr[-3000:])
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    target = measured["largest_source"] + measured["largest_output"] + GB
    rows = [
        ("source checkpoint", f"{source_bytes / GB:.2f} GB in {args.shards} .bin shards"),
        ("largest source shard", f"{measured['largest_source'] / GB:.2f} GB"),
        (
            "largest output shard",
            f"{measured['largest_output'] / GB:.2f} GB ({len(measured['shards'])} shards, "
            f"--max-shard-size {args.out_shard})",
        ),
        ("process RSS after imports", f"{int(baseline.stdout) / GB:.2f} GB"),
        ("peak RSS of the conversion", f"{measured['peak_rss'] / GB:.2f} GB"),
        ("target (largest source + largest output + 1 GB)", f"{target / GB:.2f} GB"),
        ("result", "PASS" if measured["peak_rss"] < target else "FAIL"),
        ("time", f"{measured['seconds']:.1f} s"),
    ]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    text = (
        f"# Conversion memory\n\n`python benchmarks/bench_convert.py --layers {args.layers} --shards {args.shards}"
        f" --out-shard {args.out_shard}` (torch {torch.__version__}, 2 CPU cores)\n\n{table}\n"
    )
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
