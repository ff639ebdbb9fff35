"""iLLaVA's vision-encoder merging on CLIP (arXiv 2412.06263; LLAVOLTA_ILLAVA.md B.3, B.8).

At each listed CLIP layer, after attention and its residual and before the MLP, the `r + 1` patch tokens that receive
the least attention collapse into one (weights `r + 1, ..., 1`, the least attended weighing most, as the original);
CLS is never merged. Layers after the one whose output is the feature are not run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ILLAVA_VIT_FIELDS = ("enable_illava_vit", "illava_vit_k", "illava_vit_r")


@dataclass(frozen=True)
class IllavaVitSettings:
    layers: tuple[int, ...]
    remove: int | float  # tokens removed per listed layer, or a fraction of the current patch count


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """The 0-based encoder layer whose output `hidden_states[vision_feature_layer]` is (-2 -> 22 of 24)."""
    index = vision_feature_layer % (num_layers + 1) - 1
    if index < 0:
        raise ValueError(f"vision_feature_layer={vision_feature_layer} reads the embeddings: nothing to merge in.")
    return index


def illava_vit_settings(config, overrides: dict | None = None) -> IllavaVitSettings | None:
    """The settings in force (config, then per-call overrides), validated; None when vision merging is off."""
    from .token_reduction import parse_layers

    values = {name: getattr(config, name, None) for name in ILLAVA_VIT_FIELDS}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not values["enable_illava_vit"]:
        return None
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError("iLLaVA vision merging needs a single vision_feature_layer, not a list.")
    layers = parse_layers(values["illava_vit_k"])
    last = feature_layer_index(config.vision_feature_layer, config.vision_config.num_hidden_layers)
    if not layers or any(not 0 <= k <= last for k in layers):
        raise ValueError(
            f"illava_vit_k={values['illava_vit_k']!r} must list CLIP layers in [0, {last}]: layer {last} produces the "
            f"feature (vision_feature_layer={config.vision_feature_layer}), later layers are not run."
        )
    remove = values["illava_vit_r"]
    if isinstance(remove, bool) or not isinstance(remove, (int, float)):
        raise ValueError(f"illava_vit_r={remove!r} must be a token count (int >= 0) or a fraction in [0, 1).")
    if (isinstance(remove, int) and remove < 0) or (isinstance(remove, float) and not 0.0 <= remove < 1.0):
        raise ValueError(f"illava_vit_r={remove!r} must be a token count (int >= 0) or a fraction in [0, 1).")
    settings = IllavaVitSettings(layers, remove)
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    if merged_patch_count(settings, patches) < 1:
        raise ValueError(
            f"illava_vit_r={remove!r} at layers {list(layers)} would remove all {patches} patches: keep at least one."
        )
    return settings


def image_token_counts(config, vit: IllavaVitSettings | None, pool_stride: int | None = None) -> tuple[int, int]:
    """Image placeholders the processor writes per image, and the features the LLM receives per image after vision
    merging and pooling before the LLM (CLS counted when the strategy keeps it)."""
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    cls = 1 if config.vision_feature_select_strategy == "full" else 0
    merged = merged_patch_count(vit, patches) + cls
    if pool_stride is not None:
        if merged % pool_stride:
            raise ValueError(f"llavolta_stride={pool_stride} does not divide the {merged} image tokens.")
        merged //= pool_stride
    return patches + cls, merged


def removed_at(settings: IllavaVitSettings, patches: int) -> int:
    return settings.remove if isinstance(settings.remove, int) else int(settings.remove * patches)


def merged_patch_count(settings: IllavaVitSettings | None, patches: int) -> int:
    """Patch tokens left after every listed layer (the image tokens the LLM receives, CLS excluded)."""
    if settings is None:
        return patches
    for _ in settings.layers:
        patches -= removed_at(settings, patches)
    return patches


def clip_forward_with_merging(vision_tower, pixel_values: torch.Tensor, last_layer: int, settings: IllavaVitSettings):
    """Run CLIP up to `last_layer` merging at `settings.layers`. Returns the output of `last_layer` (CLS first) and,
    per merge layer, the original patch indices that survive it (`[B, patches]`)."""
    hidden = vision_tower.pre_layrnorm(vision_tower.embeddings(pixel_values))
    batch = hidden.shape[0]
    sources = torch.arange(hidden.shape[1] - 1, device=hidden.device).expand(batch, -1)
    history = []
    for index, layer in enumerate(vision_tower.encoder.layers[: last_layer + 1]):
        if index not in settings.layers:
            hidden = layer(hidden, attention_mask=None)
            continue
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        shape = (batch, hidden.shape[1], -1, attention.head_dim)
        q, k, v = (proj(normed).view(shape).transpose(1, 2) for proj in (attention.q_proj, attention.k_proj,
                                                                          attention.v_proj))  # fmt: skip
        probs = (q @ k.transpose(-1, -2) * attention.scale).softmax(dim=-1, dtype=torch.float32)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(batch, hidden.shape[1], -1)
        hidden = hidden + attention.out_proj(out)
        removed = removed_at(settings, hidden.shape[1] - 1)
        if removed > 0:
            received = probs.mean(dim=(1, 2))  # the attention each token receives, over heads and queries
            received[:, 0] = float("inf")  # CLS is never merged
            group = received.argsort(dim=1, stable=True)[:, : removed + 1]  # least attended first
            weights = torch.arange(removed + 1, 0, -1, dtype=torch.float64, device=hidden.device)
            members = hidden.gather(1, group[..., None].expand(-1, -1, hidden.shape[-1]))
            merged = (members.double() * weights[None, :, None]).sum(1) / weights.sum()
            rows = torch.arange(batch, device=hidden.device)
            hidden = hidden.index_put((rows, group[:, -1]), merged.to(hidden.dtype))
            keep = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            keep = keep.scatter(1, group[:, :-1], False)
            hidden = hidden[keep].view(batch, -1, hidden.shape[-1])
            sources = sources[keep[:, 1:]].view(batch, -1)
        history.append(sources)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return hidden, history


def collapse_image_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int,
    tokens_per_image: int,
    merged_tokens: int | list[int],
    pad_token_id: int,
):
    """Shorten each run of `tokens_per_image` image placeholders to `merged_tokens` (one count, or one per image in
    order, as PruMerge gives), re-padding rows on the left, so prompts made for the full grid fit merged features."""
    rows, masks = [], []
    counts = iter(merged_tokens) if isinstance(merged_tokens, (list, tuple)) else None
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        mask = attention_mask[b] if attention_mask is not None else torch.ones_like(ids)
        is_image = ids == image_token_id
        count = int(is_image.sum())
        if count % tokens_per_image:
            raise ValueError(
                f"Row {b} holds {count} image tokens, not a multiple of {tokens_per_image} per image: cannot collapse."
            )
        starts = is_image & ~torch.cat([is_image.new_zeros(1), is_image[:-1]])
        run_start = torch.cummax(torch.where(starts, torch.arange(len(ids)), torch.zeros_like(ids)), 0).values
        offset = torch.arange(len(ids)) - run_start
        if counts is None:
            keep = ~is_image | (offset % tokens_per_image < merged_tokens)
        else:  # one count per image, images in order along the row
            image_number = (is_image & (offset % tokens_per_image == 0)).cumsum(0) - 1
            per_image = torch.tensor([next(counts) for _ in range(count // tokens_per_image)] or [0])
            keep = ~is_image | (offset % tokens_per_image < per_image[image_number.clamp(min=0)])
        rows.append(ids[keep])
        masks.append(mask[keep])
    width = max(len(r) for r in rows)
    new_ids = input_ids.new_full((len(rows), width), pad_token_id)
    new_mask = input_ids.new_zeros((len(rows), width))
    for b, (ids, mask) in enumerate(zip(rows, masks)):
        new_ids[b, width - len(ids) :] = ids
        new_mask[b, width - len(ids) :] = mask
    return new_ids, new_mask


# ---------------------------------------------------------------------------------------------------------------------
# PruMerge / PruMerge+ (ADALLAVA.md 10.3): the token selection the -prumerge AdaLLaVA checkpoints were trained with.
PRUMERGE_MODES = ("none", "prumerge", "prumerge+")
PRUMERGE_NEIGHBOURS = 32


def prumerge(features: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, plus: bool) -> list[torch.Tensor]:
    """Per image: keep the patches whose CLS attention is an outlier (above Q3 + 1.5 IQR; PruMerge+ adds a uniform
    grid), add to each kept patch the CLS-attention-weighted sum of its 32 nearest patches by key cosine similarity,
    and append one token: the attention-weighted sum of every patch not kept. `features` `[B, N, C]` are the patch
    features; `queries`/`keys` `[B, 1 + N, C]` come from the last CLIP layer's projections (CLS first)."""
    out = []
    width = features.shape[-1]
    for feats, q, k in zip(features.float(), queries.float(), keys.float()):
        cls_attention = ((q[:1] @ k.T) * width**-0.5).softmax(dim=-1)[0, 1:]  # [N]
        count = cls_attention.shape[0]
        q1, q3 = torch.quantile(cls_attention, torch.tensor([0.25, 0.75], device=feats.device))
        ratio = float((cls_attention > q3 + 1.5 * (q3 - q1)).float().mean())
        kept = cls_attention.topk(int(count * ratio)).indices  # most attended first, as the original
        if plus and ratio > 0:
            step = max(int(int(1 / ratio) / 3), 1)
            grid = torch.arange(0, count - 1, step, device=feats.device)
            kept = torch.cat([kept, grid[~torch.isin(grid, kept)]])
        patch_keys = torch.nn.functional.normalize(k[1:], dim=-1)
        similarity = patch_keys[kept] @ patch_keys.T  # [kept, N]
        similarity[torch.arange(len(kept)), kept] = float("-inf")  # a patch is not its own neighbour
        neighbours = similarity.topk(min(PRUMERGE_NEIGHBOURS, count - 1), dim=-1).indices
        merged = feats[kept] + (feats[neighbours] * cls_attention[neighbours][..., None]).sum(1)
        rest = torch.ones(count, dtype=torch.bool, device=feats.device)
        rest[kept] = False
        extra = (feats[rest] * cls_attention[rest][:, None]).sum(0, keepdim=True)
        out.append(torch.cat([merged, extra]).to(features.dtype))
    return out


def check_token_selecting(config, overrides: dict | None = None) -> str:
    """The PruMerge mode in force ("none", "prumerge", "prumerge+"), refusing combinations that cannot work."""
    values = {k: getattr(config, k, None) for k in ("token_selecting", "enable_illava_vit", "llavolta_grouping")}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    mode = values["token_selecting"] or "none"
    if mode not in PRUMERGE_MODES:
        raise ValueError(f"token_selecting={mode!r} is not supported: use one of {PRUMERGE_MODES}.")
    if mode != "none" and values["enable_illava_vit"]:
        raise ValueError("PruMerge needs CLIP's full 24x24 grid: it cannot be combined with iLLaVA vision merging.")
    if mode != "none" and values["llavolta_grouping"] not in (None, "none"):
        raise ValueError("PruMerge gives each image its own token count, which LLaVolta's fixed windows cannot pool.")
    return mode
