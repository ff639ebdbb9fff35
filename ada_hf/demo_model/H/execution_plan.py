"""The execution plan: which attention heads and MLP neuron groups of every decoder layer run, per row."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ExecutionPlan:
    """
    A plan is fixed once per request, at prefill, and reused on every decoding step.

    Attributes:
        heads (`torch.Tensor` of shape `[batch, num_layers, num_heads]`):
            1 where an attention head runs. In training the values carry straight-through gradients to the scheduler.
        mlp_groups (`torch.Tensor` of shape `[batch, num_layers, num_heads]`):
            1 where an MLP neuron group runs (the intermediate dimension is split into `num_heads` contiguous groups).
        units (`torch.LongTensor` of shape `[batch]`):
            Suffix units the budget bought (`u`): layers for variant L, `r`-head slices for variant H.
    """

    heads: torch.Tensor
    mlp_groups: torch.Tensor
    units: torch.Tensor
    num_prefix_layers: int
    num_prefix_units: int
    num_total_units: int
    # Per-layer execution recipes (sliced weights included), built on first use and reused on every decode step.
    layer_plans: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.heads.shape[0]

    @property
    def num_layers(self) -> int:
        return self.heads.shape[1]

    def heads_executed(self) -> torch.LongTensor:
        """`[batch, num_layers]`: attention heads each row runs per layer, -1 for a skipped layer."""
        return _count_or_skip(self.heads)

    def mlp_groups_executed(self) -> torch.LongTensor:
        """`[batch, num_layers]`: MLP neuron groups each row runs per layer, -1 for a skipped layer."""
        return _count_or_skip(self.mlp_groups)

    def heads_computed(self) -> torch.LongTensor:
        """`[num_layers]`: heads actually computed for the whole batch (the union over rows), -1 if skipped."""
        return _count_or_skip(self.heads.detach().amax(dim=0, keepdim=True))[0]

    def mlp_groups_computed(self) -> torch.LongTensor:
        """`[num_layers]`: MLP groups actually computed for the whole batch (the union over rows), -1 if skipped."""
        return _count_or_skip(self.mlp_groups.detach().amax(dim=0, keepdim=True))[0]

    def executed_units(self) -> torch.LongTensor:
        """`[batch]`: all units executed, prefix included (`U_pre + u`)."""
        return self.units.detach().cpu() + self.num_prefix_units

    def latency_effective(self) -> torch.Tensor:
        """`[batch]`: the budget actually run, `(U_pre + u) / U_tot` (below the prefix share, the prefix runs)."""
        return self.executed_units().double() / self.num_total_units

    def same_schedule(self, other: ExecutionPlan) -> bool:
        """Whether two plans run the same heads and groups in every row."""
        return (
            self.heads.shape == other.heads.shape
            and torch.equal(self.heads.detach().cpu() > 0.5, other.heads.detach().cpu() > 0.5)
            and torch.equal(self.mlp_groups.detach().cpu() > 0.5, other.mlp_groups.detach().cpu() > 0.5)
        )

    def sliced_weight_bytes(self) -> int:
        """Memory held by weights sliced for partially executed layers."""
        return sum(lp.weight_bytes() for lp in self.layer_plans.values() if lp is not None and lp is not SKIP)

    def release(self) -> None:
        """Drop the per-layer recipes and their sliced weights (they are rebuilt on demand)."""
        self.layer_plans.clear()


def _count_or_skip(mask: torch.Tensor) -> torch.LongTensor:
    counts = (mask.detach() > 0.5).sum(dim=-1).cpu()
    return torch.where(counts == 0, torch.full_like(counts, -1), counts)


class _Skip:
    """Marks a layer that no row of the batch runs."""

    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()
