"""AdaLLaVA's latency encoder and scheduler (arXiv 2503.10905, ADALLAVA.md sections 4 and 6).

A budget `b` in (0, 1] is quantised to `u` suffix units, encoded as one embedding (the latency token), and, after the
first `P` decoder layers, the scheduler reads the latency token's hidden state and picks exactly `u` units:
whole layers (variant L) or `r` heads plus `r` MLP neuron groups of one layer (variant H).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .execution_plan import ExecutionPlan


class LatencyEncoder(nn.Module):
    """Maps a quantised budget `q` in [0, 1) to a `hidden_size` embedding: sinusoid, LayerNorm-Linear-GELU-Linear."""

    def __init__(self, embed_dim: int, hidden_size: int, freq_base: float = 10000.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.freq_base = freq_base
        # Index layout (0 LayerNorm, 1 Linear, 2 GELU, 3 Linear) matches the original `scheduler_up_proj.net`.
        self.net = nn.Sequential(
            nn.LayerNorm(embed_dim, eps=1e-5),
            nn.Linear(embed_dim, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def sinusoid(self, q: torch.Tensor) -> torch.Tensor:
        """`[sin(2*pi*q*f_i), cos(2*pi*q*f_i)]` with `f_i = base^(-i/half)`; the angle is formed in `q`'s dtype."""
        half = self.embed_dim // 2
        theta = 2 * math.pi * q  # in q's dtype (fp16 for fp16 models), as the original does
        freqs = self.freq_base ** (-torch.arange(half, dtype=torch.float32, device=q.device) / half)
        angles = theta[:, None] * freqs[None, :]  # promoted to float32
        return torch.cat([angles.sin(), angles.cos()], dim=-1).to(q.dtype)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.net(self.sinusoid(q))


def _straight_through(y_hard: torch.Tensor, y_soft: torch.Tensor) -> torch.Tensor:
    return y_hard - y_soft.detach() + y_soft


def _gumbel(like: torch.Tensor) -> torch.Tensor:
    return -torch.empty_like(like).exponential_().log()


class LatencyScheduler(nn.Module):
    """
    Everything AdaLLaVA adds to LLaVA, under one module (`model.scheduler`): the latency encoder and the linear
    scheduler head. Variant L scores the `S = N - P` suffix layers; variant H scores, for every suffix layer, its `H`
    attention heads and `H` MLP neuron groups (output index `s * 2H + k * H + h`, as in the original).
    """

    def __init__(self, config):
        super().__init__()
        text = config.text_config
        self.scheduler_type = config.scheduler_type
        self.num_layers = text.num_hidden_layers
        self.num_heads = text.num_attention_heads
        self.num_prefix_layers = config.num_prefix_layers
        self.rank = config.scheduler_rank
        self.num_suffix_layers = self.num_layers - self.num_prefix_layers
        if self.scheduler_type == "L":
            self.num_total_units = self.num_layers
            self.num_prefix_units = self.num_prefix_layers
            head_size = self.num_suffix_layers
        else:
            self.num_total_units = self.num_layers * self.num_heads // self.rank
            self.num_prefix_units = self.num_prefix_layers * self.num_heads // self.rank
            head_size = self.num_suffix_layers * 2 * self.num_heads
        self.latency_encoder = LatencyEncoder(config.latency_embed_dim, text.hidden_size, config.latency_freq_base)
        self.mlp_head = nn.Linear(text.hidden_size, head_size)
        self.tau = config.scheduler_tau  # used when `forward` is not given one (the model passes its config's)

    @property
    def max_units(self) -> int:
        """`U_max`, the suffix units a budget of 1.0 executes."""
        return self.num_total_units - self.num_prefix_units

    # ----------------------------------------------------------------------------------------------------------------
    # Budgets
    def quantize(self, latency: torch.Tensor) -> torch.Tensor:
        """`u = max(0, floor(U_tot * b) - U_pre)`, computed in `latency`'s dtype (the model dtype, as the original)."""
        units = torch.floor(self.num_total_units * latency) - self.num_prefix_units
        return units.clamp(min=0).long()

    def resolve_units(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        latency=None,
        num_units=None,
    ) -> torch.Tensor:
        """Validate a budget (`latency` in (0, 1] or an integer `num_units` in [0, U_max]) and return `u` per row."""
        if latency is not None and num_units is not None:
            raise ValueError("Pass either `latency` or `num_units`, not both.")
        if num_units is not None:
            units = _as_row_tensor(num_units, batch_size, "num_units")
            if units.is_floating_point():
                if torch.isnan(units).any() or (units != units.round()).any():
                    raise ValueError(f"num_units={_show(num_units)} must hold whole numbers of suffix units.")
            elif units.dtype == torch.bool:
                raise ValueError(f"num_units={_show(num_units)} must be integers, not booleans.")
            units = units.long()
            bad = (units < 0) | (units > self.max_units)
            if bad.any():
                rows = bad.nonzero().flatten().tolist()
                raise ValueError(
                    f"num_units={_show(num_units)} is out of range in rows {rows}: each must lie in "
                    f"[0, {self.max_units}] (U_max for this model)."
                )
            return units.to(device)
        latency_t = _as_row_tensor(latency, batch_size, "latency")
        if latency_t.dtype == torch.bool:
            raise ValueError(f"latency={_show(latency)} must be a number in (0, 1], not a boolean.")
        latency_t = latency_t.double()
        bad = torch.isnan(latency_t) | (latency_t <= 0) | (latency_t > 1)
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"latency={_show(latency)} is invalid in rows {rows}: a budget is the share of compute to run, "
                "a number in (0, 1] (1.0 runs the whole model)."
            )
        return self.quantize(latency_t.to(device=device, dtype=dtype))

    def budget_table(self, dtype: torch.dtype = torch.float32) -> list[dict]:
        """
        For each suffix unit count `u`: the lowest `latency` that buys it when quantised in `dtype` (None if no budget
        does), the units executed (prefix included), the effective budget, and the layers (L) or head slots (H) run.
        Needs no weights, so it also works on a scheduler built on the meta device.
        """
        steps = 4 * self.num_total_units
        grid = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        units = self.quantize(grid.to(dtype))
        rows = []
        for u in range(self.max_units + 1):
            hits = (units == u).nonzero().flatten()
            executed = self.num_prefix_units + u
            row = {
                "units": u,
                "min_latency": float(grid[hits[0]]) if len(hits) else None,
                "executed_units": executed,
                "latency_effective": executed / self.num_total_units,
            }
            if self.scheduler_type == "L":
                row["layers_run"] = executed
            else:
                row["head_slots_run"] = executed * self.rank
            rows.append(row)
        return rows

    def sample_units(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Training budgets: `u` uniform over {0, ..., U_max} per row (drawn as integers, so every count is trained)."""
        return torch.randint(0, self.max_units + 1, (batch_size,), device=device)

    def encode(self, units: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The latency token embedding for `u` units: the encoder applied to `q = u / (U_max + 1)`."""
        q = units.to(dtype) / (self.max_units + 1)
        return self.latency_encoder(q)

    # ----------------------------------------------------------------------------------------------------------------
    # Plans
    def forward(self, hidden: torch.Tensor, units: torch.Tensor, tau: float | None = None) -> ExecutionPlan:
        """Pick `units[b]` suffix units for each row from the latency token's hidden state `hidden` `[B, d]`; in
        training with Gumbel noise at temperature `tau` (default `self.tau`)."""
        logits = self.mlp_head(hidden)
        tau = self.tau if tau is None else tau
        if self.scheduler_type == "L":
            suffix = self._select_layers(logits, units, tau)  # [B, S]
            heads = suffix[:, :, None].expand(-1, -1, self.num_heads)
            groups = heads
        else:
            shaped = logits.view(-1, self.num_suffix_layers, 2 * self.num_heads)
            suffix = self._select_head_groups(shaped, units, tau)
            heads, groups = suffix[..., : self.num_heads], suffix[..., self.num_heads :]
        prefix = heads.new_ones(heads.shape[0], self.num_prefix_layers, self.num_heads)
        return ExecutionPlan(
            heads=torch.cat([prefix, heads], dim=1),
            mlp_groups=torch.cat([prefix, groups], dim=1),
            units=units,
            num_prefix_layers=self.num_prefix_layers,
            num_prefix_units=self.num_prefix_units,
            num_total_units=self.num_total_units,
        )

    def _scores(self, logits: torch.Tensor, tau: float) -> torch.Tensor:
        if self.training:
            return (logits + _gumbel(logits)) / tau
        return logits

    def _select_layers(self, logits: torch.Tensor, units: torch.Tensor, tau: float) -> torch.Tensor:
        """`n_times_gumbel`: `u` sequential masked (Gumbel-)argmax picks without replacement, straight-through."""
        picked = torch.zeros_like(logits, dtype=torch.bool)
        mask = torch.zeros_like(logits)
        for step in range(int(units.max().item()) if units.numel() else 0):
            active = (units > step)[:, None]
            y_soft = self._scores(logits, tau).masked_fill(picked, float("-inf")).softmax(dim=-1)
            y_hard = F.one_hot(y_soft.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
            y = _straight_through(y_hard, y_soft) if self.training else y_hard
            mask = mask + y * active
            picked = picked | (y_hard.bool() & active)
        return mask

    def _select_head_groups(self, logits: torch.Tensor, units: torch.Tensor, tau: float) -> torch.Tensor:
        """
        Variant H: each unit first picks one layer (the one holding the best unselected entry over its 2H logits),
        then `r` new attention heads and `r` new MLP groups inside it. Returns the `[B, S, 2H]` mask.
        """
        batch, num_suffix, width = logits.shape
        heads = self.num_heads
        picked = torch.zeros_like(logits, dtype=torch.bool)
        mask = torch.zeros_like(logits)
        for step in range(int(units.max().item()) if units.numel() else 0):
            active = (units > step)[:, None, None]
            flat = self._scores(logits.flatten(1), tau).masked_fill(picked.flatten(1), float("-inf"))
            y_soft = flat.softmax(dim=-1)
            y_hard = F.one_hot(y_soft.argmax(dim=-1), num_suffix * width).to(logits.dtype)
            entry = _straight_through(y_hard, y_soft) if self.training else y_hard
            layer = entry.view(batch, num_suffix, width).sum(-1)  # [B, S] one-hot (straight-through)
            layer_hard = y_hard.view(batch, num_suffix, width).sum(-1).bool()
            layer_logits = (logits * layer[:, :, None]).sum(1).view(batch, 2, heads)
            layer_picked = (picked & layer_hard[:, :, None]).any(1).view(batch, 2, heads)
            chosen, chosen_hard = [], []
            for kind in range(2):  # 0: attention heads, 1: MLP neuron groups
                scores = self._scores(layer_logits[:, kind], tau).masked_fill(layer_picked[:, kind], float("-inf"))
                k_soft = scores.softmax(dim=-1)
                top = k_soft.topk(self.rank, dim=-1).indices
                k_hard = torch.zeros_like(k_soft).scatter(-1, top, 1.0)
                chosen.append(_straight_through(k_hard, k_soft) if self.training else k_hard)
                chosen_hard.append(k_hard.bool())
            update = layer[:, :, None] * torch.cat(chosen, dim=-1)[:, None, :]
            mask = mask + update * active
            picked = picked | (layer_hard[:, :, None] & torch.cat(chosen_hard, dim=-1)[:, None, :] & active)
        return mask


def _as_row_tensor(value, batch_size: int, name: str) -> torch.Tensor:
    """A scalar or one value per row, as a 1-D tensor of `batch_size` elements."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a number, not a boolean.")
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{name}={value!r} must be a number or one number per row.") from error
    value = value.detach().cpu()
    if value.ndim == 0:
        return value.expand(batch_size)
    if value.ndim != 1:
        raise ValueError(f"{name} has shape {tuple(value.shape)}: pass a scalar or a 1-D tensor of one value per row.")
    if value.shape[0] != batch_size:
        raise ValueError(f"{name} has {value.shape[0]} values for a batch of {batch_size} rows: pass one per row.")
    return value


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return repr(value.tolist())
    return repr(value)
