"""LLaVolta's visual context compression (NeurIPS 2024; LLAVOLTA_ILLAVA.md part A): at the input of decoder layer K,
each image's visual tokens are average-pooled in 1-D windows of `stride` tokens; text tokens pass unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LLAVOLTA_GROUPINGS = ("none", "avgpool1d")
LLAVOLTA_POSITION_MODES = ("trunc_mean", "trunc_mean_fp16", "float_mean", "first", "renumber")
# Published settings, selectable by name (`token_reduction="..."`): LLaVolta's heavy- and light-compression variants
# (LLAVOLTA_ILLAVA.md A.2.3), and iLLaVA's image and video settings mapped to CLIP-L/336 (B.2.2, B.8: 92 of 729 SigLIP
# tokens per layer becomes 72 of 576 CLIP patches, half the image tokens after four layers).
TOKEN_REDUCTION_PRESETS = {
    "llavolta-heavy": {"llavolta_grouping": "avgpool1d", "llavolta_layer": 2, "llavolta_stride": 8},
    "llavolta-light": {"llavolta_grouping": "avgpool1d", "llavolta_layer": 16, "llavolta_stride": 8},
    "illava-image": {
        "enable_illava_vit": True, "illava_vit_k": "5-6-7-8", "illava_vit_r": 72,
        "enable_illava_llm": True, "illava_llm_k": 8, "illava_llm_r": 0.7,
    },
    "illava-video": {
        "enable_illava_vit": True, "illava_vit_k": "3-4-5-6", "illava_vit_r": 72,
        "enable_illava_llm": True, "illava_llm_k": 2, "illava_llm_r": 0.7,
    },
}  # fmt: skip


def expand_preset(name: str | None, flags: dict) -> dict:
    """`flags` with the preset's values filled in where a flag was not given explicitly."""
    if name is None:
        return flags
    if name not in TOKEN_REDUCTION_PRESETS:
        raise ValueError(f"token_reduction={name!r} is not a preset: use one of {sorted(TOKEN_REDUCTION_PRESETS)}.")
    return {**TOKEN_REDUCTION_PRESETS[name], **{k: v for k, v in flags.items() if v is not None}}


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
    if not isinstance(layer, int) or isinstance(layer, bool) or not -1 <= layer < num_layers:
        raise ValueError(
            f"llavolta_layer={layer!r} must be -1 (pool the projector output before the LLM, positions renumbered) "
            f"or a decoder layer in [0, {num_layers}) (pool at that layer's input; 0 pools the embeddings)."
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
class ReductionRecord:
    """One reduction of the LLM sequence at a layer's input, as decoding needs it: which entries of the stage's input
    survive (for a pooled window, its first token), and whether positions were renumbered."""

    kind: str  # "llavolta" or "illava"
    layer: int
    kept: torch.Tensor  # [B, L_out] index into the stage's input sequence
    source_length: int
    renumber: bool = False
    layout: PooledLayout | None = None  # LLaVolta: how windows were pooled (labels are pooled the same way)

    @property
    def length(self) -> int:
        return self.kept.shape[1]

    @property
    def removed(self) -> int:
        return self.source_length - self.length

    def compress_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """A 2-D mask over the stage's input (prefill, then decoded tokens) -> the mask after this reduction."""
        prefill = attention_mask[:, : self.source_length].gather(1, self.kept.to(attention_mask.device))
        return torch.cat([prefill, attention_mask[:, self.source_length :]], dim=1)


@dataclass
class ReductionState:
    """Handed to the decoder loop: the settings in force and this input's image tokens; the loop appends a record per
    reduction at prefill, and decoding reads the records back from the cache."""

    llavolta: LlavoltaSettings | None = None
    illava_llm: IllavaLlmSettings | None = None
    image_mask: torch.Tensor | None = None
    records: list[ReductionRecord] = field(default_factory=list)
    prompt_length: int | None = None


# ---------------------------------------------------------------------------------------------------------------------
# iLLaVA, LLM stage (LLAVOLTA_ILLAVA.md B.4, B.8)
ILLAVA_LLM_FIELDS = ("enable_illava_llm", "illava_llm_k", "illava_llm_r")


@dataclass(frozen=True)
class IllavaLlmSettings:
    """Before each decoder layer in `layers`, the image tokens least attended by the last prompt token (in the layer
    before) collapse into one; `keep` is a keep ratio (float) or a count of tokens removed (int > 1)."""

    layers: tuple[int, ...]
    keep: float | int


def parse_layers(value) -> tuple[int, ...]:
    """`8`, `[6, 7, 8]` or iLLaVA's string form `"6-7-8"` -> a sorted tuple of layer indices."""
    if isinstance(value, str):
        try:
            return tuple(sorted(int(part) for part in value.split("-")))
        except ValueError:
            raise ValueError(f"Cannot read the layer list {value!r}: use e.g. 8, [6, 7, 8] or '6-7-8'.") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(sorted(value))
    raise ValueError(f"Cannot read the layer list {value!r}: use e.g. 8, [6, 7, 8] or '6-7-8'.")


def illava_llm_settings(config, overrides: dict | None = None) -> IllavaLlmSettings | None:
    values = {name: getattr(config, name, None) for name in ILLAVA_LLM_FIELDS}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not values["enable_illava_llm"]:
        return None
    layers = parse_layers(values["illava_llm_k"])
    num_layers = config.text_config.num_hidden_layers
    if not layers or any(not 1 <= k < num_layers for k in layers):
        raise ValueError(
            f"illava_llm_k={values['illava_llm_k']!r} must list decoder layers in [1, {num_layers}): tokens are "
            "merged at a layer's input, scored by the attention of the layer before it."
        )
    keep = values["illava_llm_r"]
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ValueError(f"illava_llm_r={keep!r} must be a keep ratio in (0, 1] or a count (int > 1) to remove.")
    if isinstance(keep, int) and keep == 1:
        raise ValueError("illava_llm_r=1 is ambiguous: write 1.0 to keep every token, or an int > 1 to remove.")
    if (isinstance(keep, float) and not 0.0 < keep <= 1.0) or (isinstance(keep, int) and keep < 1):
        raise ValueError(f"illava_llm_r={keep!r} must be a keep ratio in (0, 1] or a count (int > 1) to remove.")
    return IllavaLlmSettings(layers, keep)


def tokens_to_remove(keep: float | int, count: int) -> int:
    removed = round(count * (1 - keep)) if isinstance(keep, float) else keep
    if removed >= count:
        raise ValueError(f"illava_llm_r={keep!r} would remove {removed} of {count} image tokens: keep at least one.")
    return removed


def last_token_attention(
    attention, hidden: torch.Tensor, position_embeddings, attention_mask: torch.Tensor | None, query: torch.Tensor
) -> torch.Tensor:
    """`[B, L]`: attention from token `query[b]` to every token in `attention` (a LlamaAttention), averaged over
    heads; one query row computed directly (the causal row sees every earlier key), whatever kernel the layer uses."""
    from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

    batch, length, _ = hidden.shape
    rows = torch.arange(batch, device=hidden.device)
    q = attention.q_proj(hidden[rows, query]).view(batch, -1, 1, attention.head_dim)
    k = attention.k_proj(hidden).view(batch, length, -1, attention.head_dim).transpose(1, 2)
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    q = q * cos[rows, query][:, None, None] + rotate_half(q) * sin[rows, query][:, None, None]
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    k = repeat_kv(k, attention.num_key_value_groups)
    scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attention.scaling  # [B, H, L]
    visible = torch.arange(length, device=hidden.device)[None] <= query[:, None]
    if attention_mask is not None:
        visible = visible & attention_mask.bool()
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)


def illava_merge(hidden: torch.Tensor, image_mask: torch.Tensor, scores: torch.Tensor, keep: float | int):
    """iLLaVA's LLM-stage merge, per row: the `r + 1` least attended image tokens collapse into the most attended of
    them with weights 1..r+1 (the least attended weighs most, as the original); the other `r` are dropped.
    Returns the reduced hidden states and the kept indices (sorted), or None when nothing is removed."""
    counts = image_mask.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError(f"iLLaVA merging needs the same number of image tokens per row, got {counts.tolist()}.")
    count = int(counts[0])
    removed = tokens_to_remove(keep, count)
    if removed == 0 or count == 0:
        return None
    batch, length = image_mask.shape
    positions = torch.arange(length, device=hidden.device).expand(batch, -1)
    image_index = positions[image_mask].view(batch, count)  # image tokens in order
    order = scores.gather(1, image_index).argsort(dim=1, descending=True, stable=True)  # most attended first
    group = order[:, count - removed - 1 :]  # the r + 1 least attended, from most to least attended
    weights = torch.arange(1, removed + 2, dtype=torch.float64, device=hidden.device)
    members = hidden.gather(1, image_index.gather(1, group)[..., None].expand(-1, -1, hidden.shape[-1]))
    merged = (members.double() * weights[None, :, None]).sum(1) / weights.sum()
    anchor = image_index.gather(1, group[:, :1])[:, 0]
    rows = torch.arange(batch, device=hidden.device)
    hidden = hidden.index_put((rows, anchor), merged.to(hidden.dtype))
    dropped = torch.zeros_like(image_mask).scatter(1, image_index.gather(1, group[:, 1:]), True)
    kept = positions[~dropped].view(batch, length - removed)
    return hidden.gather(1, kept[..., None].expand(-1, -1, hidden.shape[-1])), kept
