"""Reading checkpoint shards safely and writing sharded safetensors one shard at a time (conversion tooling)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
REFUSED_SUFFIXES = (".h5", ".msgpack", ".ckpt", ".pt", ".pth", ".pkl", ".pickle", ".gguf")


@dataclass
class WeightFiles:
    """The weight files of one checkpoint folder, in reading order, and which file holds each key (if indexed)."""

    folder: Path
    files: list[Path]
    weight_map: dict[str, str] | None
    fmt: str  # "safetensors" or "bin"

    def largest_file_bytes(self) -> int:
        return max(f.stat().st_size for f in self.files)


def find_weight_files(folder: Path) -> WeightFiles:
    """Locate safetensors (preferred) or `.bin` weights, checking that every index entry's file exists."""
    for index_name, fmt in ((SAFE_INDEX, "safetensors"), (BIN_INDEX, "bin")):
        index_path = folder / index_name
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).exists()]
            if missing:
                raise FileNotFoundError(f"{index_path} lists shards that are not in {folder}: {missing}")
            return WeightFiles(folder, [folder / n for n in names], weight_map, fmt)
    for name, fmt in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if (folder / name).exists():
            return WeightFiles(folder, [folder / name], None, fmt)
    others = sorted(p.name for p in folder.iterdir() if p.suffix in REFUSED_SUFFIXES or p.suffix == ".safetensors")
    if others:
        raise ValueError(
            f"{folder} holds weights in files this converter does not read: {others}. It reads safetensors "
            "(model.safetensors[.index.json]) or PyTorch .bin shards with their index; other formats could run code "
            "or are not supported."
        )
    raise FileNotFoundError(
        f"No weights in {folder}: expected {SAFE_INDEX}, model.safetensors, {BIN_INDEX} or pytorch_model.bin."
    )


def iter_file_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one shard, loaded one at a time for safetensors; `.bin` pickles load with `weights_only=True`,
    memory-mapped when the file allows it, so no pickled code ever runs."""
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt", device="cpu") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
        return
    if path.suffix != ".bin":
        raise ValueError(f"Refusing to read {path}: only .safetensors and .bin weights are read.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    keys = list(state)
    for key in keys:
        yield key, state.pop(key)
    del state


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file tensor by tensor, straight from each tensor's memory: unlike
    `safetensors.torch.save_file`, no serialised copy of the whole shard is built first."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored in safetensors.")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in tensors.values():
            handle.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def parse_size(text: str | int) -> int:
    """`"5GB"`, `"500MB"`, `"2GiB"` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"Cannot read the size {text!r}: use e.g. 5GB, 500MB or a number of bytes.")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(number * scale)


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes`, flushing each as soon as it is full, then
    names them `model-0000i-of-0000n.safetensors` and writes the index."""

    def __init__(self, folder: Path, max_shard_bytes: int):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.largest_shard_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.pending or any(name in keys for _, keys in self.shards):
            raise ValueError(f"Two source tensors map to {name}.")
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.folder / f"shard-{len(self.shards):05d}.tmp"
        write_safetensors(path, self.pending, metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.total_bytes += self.pending_bytes
        self.largest_shard_bytes = max(self.largest_shard_bytes, self.pending_bytes)
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Flush, give the shards their final names, write the index (or a single `model.safetensors`)."""
        self.flush()
        count = len(self.shards)
        if count == 1:
            self.shards[0][0].rename(self.folder / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (path, keys) in enumerate(self.shards):
            name = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update({key: name for key in keys})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names


@contextmanager
def atomic_output_folder(target: Path, overwrite: bool = False):
    """Yield a temporary folder next to `target`; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: choose another output folder or pass --overwrite.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    staging.rename(target)
