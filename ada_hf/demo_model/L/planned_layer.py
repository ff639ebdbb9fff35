"""Running one Llama decoder layer under an execution plan: skipped, sliced (eval) or masked (training, fallbacks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward

from .execution_plan import SKIP, ExecutionPlan


def mlp_group_sizes(intermediate_size: int, num_groups: int) -> list[int]:
    """Contiguous neuron groups: `I // G` neurons each, the first `I % G` groups one more (13B: 24 x 346, 16 x 345)."""
    size, remainder = divmod(intermediate_size, num_groups)
    return [size + 1 if group < remainder else size for group in range(num_groups)]


def expand_groups(group_mask: torch.Tensor, intermediate_size: int) -> torch.Tensor:
    """`[B, G]` group mask -> `[B, I]` neuron mask (differentiable)."""
    sizes = torch.tensor(mlp_group_sizes(intermediate_size, group_mask.shape[-1]), device=group_mask.device)
    return group_mask.repeat_interleave(sizes, dim=-1)


@dataclass
class LayerPlan:
    """
    How one decoder layer runs for the current request. Heads and neurons listed in `*_index` (the union over rows)
    are computed, with sliced weights when `weights` holds them; `*_mask` zeroes, per row, the ones a row did not
    pick; rows outside `rows` leave the residual stream untouched. `None` means "all" everywhere.
    """

    head_index: torch.Tensor | None = None
    head_mask: torch.Tensor | None = None
    neuron_index: torch.Tensor | None = None
    neuron_mask: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    weights: dict[str, torch.Tensor] | None = None

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weights or {}).values())


def _can_slice(layer: nn.Module, cache_layer) -> bool:
    """Slicing needs plain, materialised Linear weights and a cache that stores any number of heads per layer."""
    if cache_layer is not None and type(cache_layer) is not DynamicLayer:
        return False
    projections = (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj,
    )  # fmt: skip
    return all(
        type(module) is nn.Linear and module.weight.device.type != "meta" and not hasattr(module, "_hf_hook")
        for module in projections
    )


def build_layer_plan(plan: ExecutionPlan, idx: int, layer: nn.Module, training: bool, cache_layer=None):
    """The recipe for layer `idx`: `None` (run the stock layer), `SKIP`, or a `LayerPlan`."""
    intermediate_size = layer.mlp.intermediate_size
    if training:
        # Masks over every head and neuron, carrying the straight-through gradients back to the scheduler.
        return LayerPlan(
            head_mask=plan.heads[:, idx], neuron_mask=expand_groups(plan.mlp_groups[:, idx], intermediate_size)
        )
    heads = plan.heads[:, idx].detach() > 0.5
    groups = plan.mlp_groups[:, idx].detach() > 0.5
    rows = heads.any(-1) | groups.any(-1)
    if not rows.any():
        return SKIP
    if heads.all() and groups.all():
        return None
    dtype = layer.mlp.down_proj.weight.dtype
    union_heads, union_groups = heads.any(0), groups.any(0)
    if not _can_slice(layer, cache_layer):
        # Documented fallback (quantised/offloaded weights, static or quantised caches): full width, masked.
        return LayerPlan(
            head_mask=heads.to(dtype),
            neuron_mask=expand_groups(groups.to(dtype), intermediate_size),
            rows=None if rows.all() else rows,
        )
    lp = LayerPlan(rows=None if rows.all() else rows, weights={})
    if not union_heads.all():
        lp.head_index = union_heads.nonzero().flatten()
        _slice_attention(layer.self_attn, lp.head_index, lp.weights)
    if not union_groups.all():
        neurons = expand_groups(union_groups[None].long(), intermediate_size)[0].bool()
        lp.neuron_index = neurons.nonzero().flatten()
        _slice_mlp(layer.mlp, lp.neuron_index, lp.weights)
    running = heads[rows]
    if not running[:, union_heads].all():
        lp.head_mask = heads[:, union_heads].to(dtype)
    running_groups = groups[rows]
    if not running_groups[:, union_groups].all():
        lp.neuron_mask = expand_groups(groups.to(dtype), intermediate_size)
        if lp.neuron_index is not None:
            lp.neuron_mask = lp.neuron_mask[:, lp.neuron_index]
    return lp


def _slice_attention(attn: nn.Module, head_index: torch.Tensor, out: dict) -> None:
    hd = attn.head_dim
    for name in ("q", "k", "v"):
        proj = getattr(attn, f"{name}_proj")
        out[name] = proj.weight.view(-1, hd, proj.in_features)[head_index].reshape(-1, proj.in_features)
        if proj.bias is not None:
            out[f"{name}_bias"] = proj.bias.view(-1, hd)[head_index].reshape(-1)
    o = attn.o_proj.weight
    out["o"] = o.view(o.shape[0], -1, hd)[:, head_index].reshape(o.shape[0], -1)


def _slice_mlp(mlp: nn.Module, neuron_index: torch.Tensor, out: dict) -> None:
    for name in ("gate", "up"):
        proj = getattr(mlp, f"{name}_proj")
        out[name] = proj.weight[neuron_index]
        if proj.bias is not None:
            out[f"{name}_bias"] = proj.bias[neuron_index]
    out["down"] = mlp.down_proj.weight[:, neuron_index].contiguous()


def _project(x: torch.Tensor, weights: dict, name: str, module: nn.Module) -> torch.Tensor:
    if name in weights:
        return F.linear(x, weights[name], weights.get(f"{name}_bias"))
    return module(x)


def planned_attention(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    lp: LayerPlan,
    head_mask: torch.Tensor | None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    past_key_values=None,
    **kwargs,
) -> torch.Tensor:
    """`LlamaAttention` over the plan's heads only; only those heads' keys and values enter the cache."""
    weights = lp.weights or {}
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, attn.head_dim)
    query = _project(hidden_states, weights, "q", attn.q_proj).view(hidden_shape).transpose(1, 2)
    key = _project(hidden_states, weights, "k", attn.k_proj).view(hidden_shape).transpose(1, 2)
    value = _project(hidden_states, weights, "v", attn.v_proj).view(hidden_shape).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, attn.layer_idx)
    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, eager_attention_forward
    )
    output, _ = attention_interface(
        attn,
        query,
        key,
        value,
        attention_mask,
        dropout=0.0 if not attn.training else attn.attention_dropout,
        scaling=attn.scaling,
        **kwargs,
    )  # [B, T, heads, head_dim]
    if head_mask is not None:
        # Before o_proj, as the original: a masked head contributes exactly nothing.
        output = output * head_mask[:, None, :, None].to(output.dtype)
    output = output.reshape(*input_shape, -1)
    if "o" in weights:
        return F.linear(output, weights["o"], attn.o_proj.bias)
    return attn.o_proj(output)


def planned_mlp(mlp: nn.Module, hidden_states: torch.Tensor, lp: LayerPlan, neuron_mask: torch.Tensor | None):
    """SiLU-GLU over the plan's neurons only."""
    weights = lp.weights or {}
    inner = mlp.act_fn(_project(hidden_states, weights, "gate", mlp.gate_proj)) * _project(
        hidden_states, weights, "up", mlp.up_proj
    )
    if neuron_mask is not None:
        inner = inner * neuron_mask[:, None, :].to(inner.dtype)
    if "down" in weights:
        return F.linear(inner, weights["down"], mlp.down_proj.bias)
    return mlp.down_proj(inner)


def _gate_rows(update: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    if rows is None:
        return update
    return torch.where(rows[:, None, None], update, torch.zeros((), dtype=update.dtype, device=update.device))


def planned_decoder_layer(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    head_mask: torch.Tensor | None,
    neuron_mask: torch.Tensor | None,
    *,
    lp: LayerPlan,
    attention_mask: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    past_key_values=None,
    **kwargs,
) -> torch.Tensor:
    """A pre-norm Llama decoder layer under `lp`; masks are positional so gradient checkpointing sees them."""
    kwargs.pop("use_cache", None)
    residual = hidden_states
    attn_out = planned_attention(
        layer.self_attn,
        layer.input_layernorm(hidden_states),
        lp,
        head_mask,
        position_embeddings,
        attention_mask,
        past_key_values,
        **kwargs,
    )
    hidden_states = residual + _gate_rows(attn_out, lp.rows)
    residual = hidden_states
    mlp_out = planned_mlp(layer.mlp, layer.post_attention_layernorm(hidden_states), lp, neuron_mask)
    return residual + _gate_rows(mlp_out, lp.rows)
