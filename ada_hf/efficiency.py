"""From a batch of prompts (and, after generation, what ran) to each row's modelled cost: the efficiency report and
millisecond budgets of `generate`. Model code: it travels with remote code."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import torch

from .cost_model import CostModel, EfficiencyReport, RequestCost, original_metrics, plan_counts
from .planned_layer import mlp_group_sizes
from .token_reduction import tokens_to_remove
from .vision_merging import feature_layer_index, merged_patch_count, removed_at

_TIME = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*$")


def parse_time_target(value: str) -> float:
    """`"150ms"`, `"0.2 s"` -> seconds."""
    match = _TIME.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"latency={value!r} is neither a share of compute in (0, 1] nor a positive time like '150ms' or '0.2s'."
        )
    return float(match.group(1)) / (1000.0 if match.group(2) == "ms" else 1.0)


@dataclass
class RowWorkload:
    """What one row asks of the model before any plan: its tokens, its images and the token reductions in force."""

    prompt_tokens: int
    llm_tokens: int
    images: int
    image_tokens: int
    projector_tokens: int
    vision_last_layer: int | None = None
    vision_merges: dict[int, int] = field(default_factory=dict)
    prumerge_kept: int | None = None
    reductions: dict[int, int] = field(default_factory=dict)
    illava_scoring_layers: tuple[int, ...] = ()

    def request(self, cost_model: CostModel, heads=None, neurons=None, new_tokens: int = 1, scheduler=None):
        return cost_model.request(
            self.llm_tokens,
            new_tokens,
            images=self.images,
            image_tokens=self.image_tokens,
            projector_tokens=self.projector_tokens,
            heads=heads,
            neurons=neurons,
            reductions=self.reductions,
            illava_scoring_layers=self.illava_scoring_layers,
            vision_last_layer=self.vision_last_layer,
            vision_merges=self.vision_merges,
            prumerge_kept=self.prumerge_kept,
            scheduler=scheduler,
        )


def row_workloads(config, input_ids, attention_mask, prompt_tokens, vit, pool_stride, selecting, llavolta, illava,
                  records=None) -> list[RowWorkload]:  # fmt: skip
    """
    Per row of `input_ids` (as the LLM receives them: image placeholders collapsed, `<latency>` appended), what it
    costs to run. `records` (the prefill's `ReductionRecord`s) give the exact lengths after reductions in the LLM;
    without them they are predicted from the settings `llavolta` (in the LLM) / `illava`.
    """
    image = input_ids == config.image_token_id
    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(image)
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    cls = 1 if config.vision_feature_select_strategy == "full" else 0
    merges, last = {}, None
    if vit is not None:
        last = feature_layer_index(config.vision_feature_layer, config.vision_config.num_hidden_layers)
        remaining = patches
        for layer in vit.layers:
            merges[layer] = removed_at(vit, remaining)
            remaining -= merges[layer]
    per_image_projected = merged_patch_count(vit, patches) + cls
    rows = []
    for row in range(input_ids.shape[0]):
        images, tokens = int(starts[row].sum()), int(image[row].sum())
        length = int(mask[row].sum())
        work = RowWorkload(
            prompt_tokens=int(prompt_tokens[row]),
            llm_tokens=length,
            images=images,
            image_tokens=tokens,
            projector_tokens=tokens if selecting != "none" else images * per_image_projected,
            vision_last_layer=last,
            vision_merges=merges,
        )
        if selecting != "none" and images:
            work.prumerge_kept = tokens // images - 1  # PruMerge appends one token for everything not kept
        if records is not None:
            row_mask = mask[row]
            for record in records:
                row_mask = row_mask[: record.source_length].gather(0, record.kept[row].to(row_mask.device))
                work.reductions[record.layer] = int(row_mask.sum())
                if record.kind == "illava":
                    work.illava_scoring_layers += (record.layer - 1,)
        elif tokens:
            if llavolta is not None:
                work.reductions[llavolta.layer] = length - tokens + images * -(-(tokens // images) // llavolta.stride)
            if illava is not None:
                for layer in illava.layers:
                    removed = tokens_to_remove(illava.keep, tokens)
                    length, tokens = length - removed, tokens - removed
                    work.reductions[layer] = length
                    work.illava_scoring_layers += (layer - 1,)
        if pool_stride is not None:
            work.projector_tokens = tokens * pool_stride  # the projector runs before pooling
        rows.append(work)
    return rows


def costliest_counts(config, units: int) -> tuple[list[int], list[int]]:
    """Heads and neurons per layer of the costliest plan of `units` suffix units (the prefix in full): the placement a
    millisecond budget is predicted with, before the scheduler has chosen. Variant L: the earliest suffix layers
    (token reductions only ever shorten later ones). Variant H: the units dealt round-robin over the suffix layers,
    earliest first, so that as many layers as possible run (each costs a fixed overhead, and its own reads)."""
    text = config.text_config
    heads_total, layers, prefix = text.num_attention_heads, text.num_hidden_layers, config.num_prefix_layers
    heads = [heads_total] * prefix + [-1] * (layers - prefix)
    neurons = [text.intermediate_size] * prefix + [0] * (layers - prefix)
    if config.scheduler_type == "L":
        for layer in range(prefix, prefix + units):
            heads[layer], neurons[layer] = heads_total, text.intermediate_size
        return heads, neurons
    rank, suffix = config.scheduler_rank, layers - prefix
    sizes = mlp_group_sizes(text.intermediate_size, heads_total)
    for layer in range(prefix, layers):
        taken = units // suffix + (1 if layer - prefix < units % suffix else 0)
        if taken:
            heads[layer] = taken * rank
            neurons[layer] = sum(sizes[: taken * rank])
    return heads, neurons


def choose_units(config, cost_model: CostModel, work: RowWorkload, max_units: int, new_tokens: int,
                 target: float) -> tuple[int, float]:  # fmt: skip
    """The most suffix units whose predicted time (prefill + `new_tokens - 1` decode steps) fits `target` seconds,
    and that prediction. More units never cost less, so a binary search finds it."""

    @functools.cache  # the search's last answer is asked again
    def predicted(units: int) -> float:
        heads, neurons = costliest_counts(config, units)
        return work.request(cost_model, heads, neurons, new_tokens, scheduler=True).total.seconds

    fastest = predicted(0)
    if fastest > target:
        raise ValueError(
            f"No budget meets {target * 1e3:.3g} ms on {cost_model.hardware.name} for this request "
            f"({work.llm_tokens} prompt tokens, max_new_tokens={new_tokens}): the fastest plan (the "
            f"{config.num_prefix_layers} prefix layers only) is predicted at {fastest * 1e3:.4g} ms. Raise the "
            "target, lower max_new_tokens, or turn on token reduction."
        )
    low, high = 0, max_units
    while low < high:
        mid = (low + high + 1) // 2
        if predicted(mid) <= target:
            low = mid
        else:
            high = mid - 1
    return low, predicted(low)


def generated_counts(sequences: torch.Tensor, prompt_width: int, eos_token_id) -> list[int]:
    """Tokens each row generated, up to and including its first end-of-sequence token."""
    new = sequences[:, prompt_width:]
    if eos_token_id is None or new.shape[1] == 0:
        return [new.shape[1]] * new.shape[0]
    eos = torch.as_tensor(eos_token_id, device=new.device).flatten()
    hits = torch.isin(new, eos)
    first = torch.where(
        hits.any(1), hits.int().argmax(1) + 1, torch.full_like(hits[:, 0], new.shape[1], dtype=torch.long)
    )
    return first.tolist()


def efficiency_reports(config, cost_model: CostModel, workloads: list[RowWorkload], source_rows: list[int],
                       plan, plan_rows: list[int] | None, new_tokens: list[int], measured_peak: int | None,
                       targets: dict[int, float] | None = None) -> list[EfficiencyReport]:  # fmt: skip
    """One report per output row: `source_rows[i]` is its input row, `plan_rows[i]` its row of the plan."""
    reports = []
    for i, source in enumerate(source_rows):
        work = workloads[source]
        heads = neurons = None
        executed = total = None
        if plan is not None:
            heads, neurons = plan_counts(plan, plan_rows[i], config.text_config.intermediate_size)
            executed = int(plan.executed_units()[plan_rows[i]])
            total = plan.num_total_units
        cost: RequestCost = work.request(cost_model, heads, neurons, new_tokens[i], scheduler=plan is not None)
        full_heads = heads if heads is not None else [config.text_config.num_attention_heads] * len(cost.layer_tokens)
        # The original's prefill_time needs a hardware: its default (V100) when the call names none.
        hardware = cost_model.hardware if cost_model.hardware is not None else "nvidia_V100"
        original = original_metrics(config, full_heads, work.llm_tokens, new_tokens[i], hardware)
        reports.append(
            EfficiencyReport(
                cost=cost,
                prompt_tokens=work.prompt_tokens,
                executed_units=executed,
                total_units=total,
                original=original,
                measured_peak_memory_bytes=measured_peak,
                target_seconds=(targets or {}).get(source),
                config=config,
                workload=work,
                plan=(heads, neurons) if plan is not None else None,
            )
        )
    return reports
