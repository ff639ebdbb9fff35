"""LLaVolta's visual context compression (NeurIPS 2024; LLAVOLTA_ILLAVA.md part A): at the input of decoder layer K,
each image's visual tokens are average-pooled in 1-D windows of `stride` tokens; text tokens pass unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import torch

LLAVOLTA_GROUPINGS = ("none", "avgpool1d")
LLAVOLTA_POSITION_MODES = ("trunc_mean", "trunc_mean_fp16", "float_mean", "first", "renumber")
# The published single-stage settings (LLaVolta's heavy- and light-compression variants).
TOKEN_REDUCTION_PRESETS = {
    "llavolta-heavy": {"llavolta_grouping": "avgpool1d", "llavolta_layer": 2, "llavolta_stride": 8},
    "llavolta-light": {"llavolta_grouping": "avgpool1d", "llavolta_layer": 16, "llavolta_stride": 8},
}
LLAVOLTA_FIELDS = ("llavolta_grouping", "llavolta_layer", "llavolta_stride", "llavolta_position_mode")


@dataclass(frozen=True)
class LlavoltaSettings:
    """Pool each image's tokens by `stride` at the input of decoder layer `layer`."""

    layer: int
    stride: int
    position_mode: str = "trunc_mean"


def llavolta_settings(config, overrides: dict | None = None) -> LlavoltaSettings | None:
    """The settings in force (config values, then per-call overrides), validated; None when pooling is off."""
    values = {name: getattr(config, name, None) for name in LLAVOLTA_FIELDS}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    validate_llavolta(values, config.text_config.num_hidden_layers, config.image_seq_length)
    if values["llavolta_grouping"] in (None, "none") or values["llavolta_stride"] in (None, 1):
        return None
    return LlavoltaSettings(values["llavolta_layer"], values["llavolta_stride"], values["llavolta_position_mode"])


def validate_llavolta(values: dict, num_layers: int, image_tokens: int) -> None:
    """Refuse settings that cannot describe a pooling, naming the value and why."""
    grouping = values.get("llavolta_grouping") or "none"
    if grouping not in LLAVOLTA_GROUPINGS:
        raise ValueError(f"llavolta_grouping={grouping!r} is not supported: use one of {LLAVOLTA_GROUPINGS}.")
    mode = values.get("llavolta_position_mode") or "trunc_mean"
    if mode not in LLAVOLTA_POSITION_MODES:
        raise ValueError(f"llavolta_position_mode={mode!r} is not supported: use one of {LLAVOLTA_POSITION_MODES}.")
    if grouping == "none":
        return
    stride, layer = values.get("llavolta_stride"), values.get("llavolta_layer")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1 or image_tokens % stride:
        raise ValueError(
            f"llavolta_stride={stride!r} must be a positive integer dividing the {image_tokens} tokens of an image "
            "(each image is pooled in windows of `stride` tokens)."
        )
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < num_layers:
        raise ValueError(
            f"llavolta_layer={layer!r} must be a decoder layer in [0, {num_layers}): tokens are pooled at that "
            "layer's input (0 pools the embeddings). Pooling before the LLM (-1) is not supported yet."
        )


@dataclass
class PooledLayout:
    """Where each entry of the pooled sequence comes from, per row."""

    group: torch.Tensor  # [B, L] index of the pooled entry each source position falls into
    first: torch.Tensor  # [B, L'] first source position of each pooled entry
    counts: torch.Tensor  # [B, L'] source positions per pooled entry
    source_length: int

    @property
    def length(self) -> int:
        return self.first.shape[1]

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Mean of each entry's source tokens (text entries are a single token: unchanged)."""
        index = self.group[..., None].expand_as(hidden)
        total = hidden.new_zeros(hidden.shape[0], self.length, hidden.shape[-1]).scatter_add(1, index, hidden)
        return total / self.counts[..., None].to(hidden.dtype)

    def select(self, values: torch.Tensor) -> torch.Tensor:
        """The value at each entry's first source position (masks, labels: an image window's label is ignored)."""
        return values.gather(1, self.first)

    def positions(self, position_ids: torch.Tensor, mode: str, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Position ids of the pooled entries (see LLAVOLTA_ILLAVA.md A.3, "Position ids")."""
        position_ids = position_ids.expand(self.group.shape[0], -1)
        if mode == "first":
            return self.select(position_ids)
        if mode == "renumber":
            if attention_mask is None:
                return torch.arange(self.length, device=position_ids.device)[None].expand(self.group.shape[0], -1)
            return (self.select(attention_mask).long().cumsum(-1) - 1).clamp(min=0)
        if mode == "trunc_mean_fp16":
            # The original: average-pool the ids cast to float16, then truncate (rounds past position 1024).
            half = position_ids.to(torch.float16)
            total = half.new_zeros(self.first.shape).scatter_add(1, self.group, half)
            return (total / self.counts.to(torch.float16)).long()
        total = position_ids.new_zeros(self.first.shape, dtype=torch.float64).scatter_add(
            1, self.group, position_ids.double()
        )
        mean = total / self.counts
        return mean.floor().long() if mode == "trunc_mean" else mean.float()


def plan_pooling(image_mask: torch.Tensor, stride: int) -> PooledLayout:
    """Group each run of image tokens into windows of `stride` consecutive tokens; every other token stays alone."""
    batch, length = image_mask.shape
    steps = torch.arange(length, device=image_mask.device).expand(batch, -1)
    # Offset of each token inside its run of image tokens: distance to the last non-image token before it.
    last_text = torch.where(image_mask, torch.full_like(steps, -1), steps).cummax(dim=1).values
    offset = steps - last_text - 1
    starts = ~image_mask | (offset % stride == 0)
    group = starts.long().cumsum(dim=1) - 1
    lengths = group[:, -1] + 1
    if (lengths != lengths[0]).any():
        raise ValueError(
            f"LLaVolta pooling needs the same number of image tokens in every row; the pooled rows would have "
            f"{lengths.tolist()} entries. Batch rows with the same number of images."
        )
    run_ends = image_mask & ~torch.cat([image_mask[:, 1:], image_mask.new_zeros(batch, 1)], dim=1)
    if (((offset + 1) % stride != 0) & run_ends).any():
        raise ValueError(f"A run of image tokens is not a multiple of llavolta_stride={stride}.")
    pooled = int(lengths[0])
    counts = torch.zeros(batch, pooled, dtype=torch.long, device=image_mask.device).scatter_add(
        1, group, torch.ones_like(group)
    )
    first = torch.full((batch, pooled), length, dtype=torch.long, device=image_mask.device).scatter_reduce(
        1, group, steps, reduce="amin"
    )
    return PooledLayout(group=group, first=first, counts=counts, source_length=length)


@dataclass
class PoolingRecord:
    """What decoding needs after a pooled prefill: where pooling happened and how the prefill was shortened."""

    layer: int
    position_mode: str
    layout: PooledLayout

    @property
    def removed(self) -> int:
        return self.layout.source_length - self.layout.length

    def compress_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """A full-length 2-D mask (prefill + decoded tokens) -> the pooled layers' mask."""
        prefill = self.layout.select(attention_mask[:, : self.layout.source_length])
        return torch.cat([prefill, attention_mask[:, self.layout.source_length :]], dim=1)


@dataclass
class PoolingState:
    """Handed to the decoder loop: the settings in force, this input's image tokens, and the record of the pooled
    prefill (set by the loop at prefill, read back from the cache when decoding)."""

    settings: LlavoltaSettings | None
    image_mask: torch.Tensor | None = None
    record: PoolingRecord | None = None
