"""Training AdaLLaVA with `transformers.Trainer` (ADALLAVA.md section 8): random budgets, presets, tau annealing.

Tooling, not model code: saved checkpoints never import this module.

    trainer = AdaLlavaTrainer(model=model, args=args, train_dataset=data, train_preset="full",
                              callbacks=[TemperatureAnnealingCallback(5.0, 1.0)])
    trainer.train()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

IGNORE_INDEX = -100

# What each preset trains; everything else is frozen (the CLIP tower always is, as in LLaVA and AdaLLaVA).
TRAIN_PRESETS = {
    "scheduler": "the latency scheduler only",
    "full": "scheduler + projector + LLM (the released AdaLLaVA recipe); vision tower frozen",
    "lora": "LoRA on the LLM's linear layers (peft) + the full scheduler (modules_to_save)",
}

# LLaVA's LoRA recipe targets every linear layer of the LLM; the regex keeps LoRA out of the CLIP tower and projector.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

BUDGET_BUCKETS = 10  # loss per budget bucket of width 0.1: loss_budget_0.5-0.6, ...


def unwrap_ada_model(model: nn.Module) -> nn.Module:
    """The AdaLLaVA model under DDP (`.module`) and peft (`get_base_model()`) wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def set_scheduler_tau(model: nn.Module, tau: float) -> None:
    """Set the Gumbel temperature of training: `config.scheduler_tau`, which the model reads at every forward."""
    unwrap_ada_model(model).config.scheduler_tau = float(tau)


def apply_train_preset(model: nn.Module, preset: str, lora_config=None) -> nn.Module:
    """Freeze `model` for `preset` (see `TRAIN_PRESETS`) and return the model to train.

    Args:
        model: an `AdaLlavaForConditionalGeneration` (or a remote-code copy of it).
        preset: `"scheduler"`, `"full"` or `"lora"`.
        lora_config: a `peft.LoraConfig` for `"lora"`; by default r=8, alpha=16, dropout 0.05 on every linear layer
            of the LLM. `"scheduler"` is added to its `modules_to_save` so the scheduler is trained in full.

    Returns:
        `model` itself, or for `"lora"` the `PeftModel` wrapping it.
    """
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"train_preset={preset!r} is not a preset: use one of {sorted(TRAIN_PRESETS)}.")
    base = unwrap_ada_model(model)
    if getattr(base.model, "scheduler", None) is None:
        raise ValueError("This model has no latency scheduler (config.scheduler_type is None): nothing to train.")
    if preset == "lora":
        return _apply_lora(model, lora_config)
    model.requires_grad_(False)
    base.model.scheduler.requires_grad_(True)
    if preset == "full":
        base.model.multi_modal_projector.requires_grad_(True)
        base.model.language_model.requires_grad_(True)
        base.lm_head.requires_grad_(True)
    return model


def _apply_lora(model: nn.Module, lora_config) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if lora_config is None:
        lora_config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=DEFAULT_LORA_TARGETS, task_type="CAUSAL_LM"
        )
    saved = list(lora_config.modules_to_save or [])
    if "scheduler" not in saved:
        # The scheduler starts from random weights: a low-rank update of it would not do, train all of it.
        lora_config.modules_to_save = saved + ["scheduler"]
    return get_peft_model(model, lora_config)


def budget_seed(seed: int, global_step: int, rank: int, draw: int, stream: int = 0) -> int:
    """A well-mixed seed for one budget draw, a pure function of where training is, so a resumed run draws the same."""
    return int(np.random.SeedSequence([seed, stream, global_step, rank, draw]).generate_state(1)[0])


def sample_budget_units(max_units: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One integer unit count per sample, uniform over {0, ..., max_units} (both ends included).

    The original draws a float budget and quantises it; drawing the count directly trains every count equally.
    """
    return torch.randint(0, max_units + 1, (batch_size,), generator=generator)


def per_sample_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted next-token cross-entropy summed per row, and the supervised tokens per row (labels != -100)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    token_loss = F.cross_entropy(
        shift_logits.flatten(0, 1), shift_labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(shift_labels.shape)
    return token_loss.sum(1), (shift_labels != IGNORE_INDEX).sum(1)


# --------------------------------------------------------------------------------------------------------------------
# Arguments and the modality-grouped sampler
@dataclass
class AdaLlavaTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus LLaVA's `group_by_modality_length` and `warmup_ratio` flags.

    Args:
        group_by_modality_length: sample with `ModalityLengthGroupedSampler` over the dataset's `modality_lengths`
            (LLaVA's sampler: image and text-only samples never share a mega-batch).
        warmup_ratio: LLaVA's flag; transformers 5 folded it into `warmup_steps` (a float below 1 is a ratio). When
            given, it replaces `warmup_steps`.
    """

    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "Group image and text-only samples into separate mega-batches, length-grouped within "
                          "(LLaVA's sampler; needs a dataset with `modality_lengths`)."},
    )  # fmt: skip
    warmup_ratio: float | None = field(
        default=None,
        metadata={"help": "Warmup as a share of the training steps (LLaVA's flag); replaces `warmup_steps`."},
    )

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            self.warmup_steps = float(self.warmup_ratio)
        super().__post_init__()


def _split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """LLaVA's `split_to_even_chunks`: `num_chunks` equal-size chunks of similar total length (greedy)."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def length_grouped_megabatches(lengths: Sequence[int], batch_size: int, world_size: int,
                               generator: torch.Generator) -> list[list[int]]:  # fmt: skip
    """LLaVA's `get_length_grouped_indices`, as mega-batches: a random permutation cut into mega-batches of
    `world_size * batch_size`, each sorted by length (longest first) and split into `world_size` batches of similar
    total length. Returns the mega-batches, each the concatenation of its batches."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    size = world_size * batch_size
    megabatches = []
    for start in range(0, len(indices), size):
        megabatch = sorted(indices[start : start + size], key=lambda i: lengths[i], reverse=True)
        megabatches.append([i for chunk in _split_to_even_chunks(megabatch, lengths, world_size) for i in chunk])
    return megabatches


def modality_length_grouped_megabatches(modality_lengths: Sequence[int], batch_size: int, world_size: int,
                                        generator: torch.Generator) -> list[list[int]]:  # fmt: skip
    """LLaVA's `get_modality_length_grouped_indices`, as mega-batches (see `ModalityLengthGroupedSampler`)."""
    if any(length == 0 for length in modality_lengths):
        raise ValueError("modality_lengths must not contain 0 (positive: image sample, negative: text-only).")
    images = [i for i, n in enumerate(modality_lengths) if n > 0]
    texts = [i for i, n in enumerate(modality_lengths) if n < 0]
    size = world_size * batch_size
    full, partial = [], []
    for group in (images, texts):
        if not group:
            continue
        lengths = [abs(modality_lengths[i]) for i in group]
        for megabatch in length_grouped_megabatches(lengths, batch_size, world_size, generator):
            (full if len(megabatch) == size else partial).append([group[i] for i in megabatch])
    order = torch.randperm(len(full), generator=generator).tolist()
    return [full[i] for i in order] + partial


class ModalityLengthGroupedSampler(torch.utils.data.Sampler):
    """LLaVA's `LengthGroupedSampler(group_by_modality=True)`, seeded per epoch.

    Image samples (positive `modality_lengths`) and text-only samples (negative) are each shuffled and cut into
    mega-batches of `world_size * batch_size` indices (`Trainer` passes the per-device batch and
    `world_size = processes * gradient_accumulation_steps`, so a mega-batch is one optimizer step of every process),
    sorted by length within and split into batches of similar total length; the full mega-batches of both modalities
    are then shuffled together. Every index comes once per epoch.

    The order is a pure function of `seed + epoch` (`set_epoch`, which `Trainer` calls every epoch): every process
    computes the same order without synchronising RNGs, and a resumed run sees the same batches.

    Differences from LLaVA: its inner shuffles use torch's global RNG, here one seeded generator; LLaVA merges the
    last, partial mega-batch of each modality into one mixed mega-batch (sorted by index, and even when a modality's
    last mega-batch is full); here only partial mega-batches trail, image then text-only, so no mega-batch mixes
    modalities (one per-device batch can still straddle the two when the image remainder is not a multiple of the
    batch size).
    """

    def __init__(self, modality_lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0):
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}.")
        self.modality_lengths = [int(n) for n in modality_lengths]
        if any(n == 0 for n in self.modality_lengths):
            raise ValueError("modality_lengths must not contain 0 (positive: image sample, negative: text-only).")
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def megabatches(self) -> list[list[int]]:
        """This epoch's mega-batches, in order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return modality_length_grouped_megabatches(self.modality_lengths, self.batch_size, self.world_size, generator)

    def __len__(self) -> int:
        return len(self.modality_lengths)

    def __iter__(self):
        return iter([i for megabatch in self.megabatches() for i in megabatch])


class AdaLlavaTrainer(Trainer):
    """`Trainer` for AdaLLaVA: one random budget per sample, LM loss on the answer tokens, per-budget loss logs.

    Each sample gets an integer unit count `u` uniform over `0..U_max`, passed to the model as `num_units` (the
    model then runs straight-through Gumbel plans in train mode). A batch that already carries `num_units` or
    `latency` is trained at those budgets. Draws come from a generator seeded by (`args.seed`, global step, process
    rank, micro-batch), so runs are reproducible and a resumed run continues with the same budgets. The Gumbel noise
    comes from torch's global RNG, which `Trainer` checkpoints and restores.

    The loss is the token-level cross-entropy of the labels (`-100` elsewhere, so the answer tokens only), summed and
    divided by `num_items_in_batch`, the supervised tokens of the whole accumulated (and, by default, global) batch:
    gradient accumulation then gives the same gradients as one large batch.

    Logged with the loss: `budget_mean` (executed share of the units), `units_mean`, and `loss_budget_a-b`, the mean
    per-sample token loss of the samples whose budget fell in [a, b), over the logging window and all processes.

    With `AdaLlavaTrainingArguments(group_by_modality_length=True)` the training data is sampled with
    `ModalityLengthGroupedSampler` over the dataset's `modality_lengths` (`LlavaSupervisedDataset` has them).

    Args:
        train_preset: if given, `apply_train_preset(model, train_preset, lora_config)` runs before `Trainer` sets up.
        lora_config: the `peft.LoraConfig` for `train_preset="lora"`.
        Everything else as `transformers.Trainer`.
    """

    def __init__(self, model: nn.Module | None = None, *args, train_preset: str | None = None, lora_config=None,
                 **kwargs):  # fmt: skip
        if train_preset is not None:
            model = apply_train_preset(model, train_preset, lora_config)
        base = unwrap_ada_model(model)
        if getattr(base.model, "scheduler", None) is None:
            raise ValueError("AdaLlavaTrainer needs a model with a latency scheduler (config.scheduler_type L or H).")
        # save_pretrained copies the code files (so checkpoints load with trust_remote_code) only when the class is
        # registered for an Auto class; ada_hf registers it on import, a subclass or a foreign copy may not be.
        if getattr(type(base), "_auto_class", None) is None:
            type(base).register_for_auto_class("AutoModelForImageTextToText")
        if getattr(type(base.config), "_auto_class", None) is None:
            type(base.config).register_for_auto_class()
        super().__init__(model, *args, **kwargs)
        self._draw_step, self._draws = -1, 0
        self._eval_draws = 0
        # Per budget bucket: loss sum, samples with answer tokens, units sum, samples.
        self._budget_stats: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------------------------------------
    # Sampling
    def _get_train_sampler(self, train_dataset=None):
        """LLaVA's modality-grouped sampler when `args.group_by_modality_length`, else `Trainer`'s."""
        if not getattr(self.args, "group_by_modality_length", False):
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "random":
            raise ValueError(f"group_by_modality_length replaces the sampler: it cannot be combined with "
                             f"train_sampling_strategy={self.args.train_sampling_strategy!r}.")  # fmt: skip
        modality_lengths = getattr(dataset, "modality_lengths", None)
        if modality_lengths is None:
            raise ValueError(f"group_by_modality_length needs a training dataset with a `modality_lengths` attribute "
                             f"(positive lengths for image samples, negative for text-only), as "
                             f"LlavaSupervisedDataset has; {type(dataset).__name__} has none.")  # fmt: skip
        if len(modality_lengths) != len(dataset):
            raise ValueError(f"modality_lengths has {len(modality_lengths)} entries for {len(dataset)} samples.")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ModalityLengthGroupedSampler(
            modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=seed,
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Budgets
    def _next_generator(self, training: bool) -> torch.Generator:
        step = self.state.global_step
        if training:
            if step != self._draw_step:
                self._draw_step, self._draws = step, 0
            draw, stream = self._draws, 0
            self._draws += 1
        else:  # a stream of their own, restarted by every evaluate(): each evaluation sees the same budgets
            step, draw, stream = 0, self._eval_draws, 1
            self._eval_draws += 1
        seed = budget_seed(self.args.seed, step, self.args.process_index, draw, stream)
        return torch.Generator().manual_seed(seed)

    def sample_units(self, batch_size: int, training: bool = True) -> torch.Tensor:
        """The next batch's unit counts (CPU `LongTensor`), from the reproducible budget generator."""
        scheduler = unwrap_ada_model(self.model).model.scheduler
        return sample_budget_units(scheduler.max_units, batch_size, self._next_generator(training))

    def evaluate(self, *args, **kwargs):
        """`Trainer.evaluate`, with the evaluation budgets restarted so evaluations are comparable across steps."""
        self._eval_draws = 0
        return super().evaluate(*args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Sample budgets (unless the batch has them), run the model, return the answer-token LM loss."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("AdaLlavaTrainer needs `labels` (-100 except on the answer tokens) in every batch.")
        batch_size = labels.shape[0]
        if inputs.get("num_units") is None and inputs.get("latency") is None:
            inputs["num_units"] = self.sample_units(batch_size, training=model.training).to(labels.device)
        outputs = model(**inputs)
        for record in getattr(outputs, "token_reductions", None) or ():
            # LLaVolta pooling shortens the sequence; the model keeps a window's first label (as its own loss does).
            if labels.shape[1] == record.source_length:
                labels = labels.gather(1, record.kept.to(labels.device))
        loss_sum, tokens = per_sample_token_loss(outputs.logits, labels)

        if num_items_in_batch is not None:
            loss = loss_sum.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                # num_items_in_batch counts every process's tokens and DDP averages gradients: undo the average.
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss_sum.sum() / tokens.sum().clamp(min=1)
        # Tell training_step whether it must still divide by the accumulation steps.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None

        if model.training:
            self._record_budgets(outputs, loss_sum.detach(), tokens)
        return (loss, outputs) if return_outputs else loss

    def _record_budgets(self, outputs, loss_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        """Accumulate per-bucket loss sums on the device; nothing is synchronised until the next log."""
        plan = getattr(outputs, "execution_plan", None)
        if plan is None:
            return
        units = plan.units.to(loss_sum.device)
        budget = (units + plan.num_prefix_units).double() / plan.num_total_units
        bucket = torch.floor(budget * BUDGET_BUCKETS + 1e-6).long().clamp(0, BUDGET_BUCKETS - 1)
        has_tokens = tokens > 0
        per_sample = torch.where(has_tokens, loss_sum / tokens.clamp(min=1), torch.zeros_like(loss_sum))
        if self._budget_stats is None:
            self._budget_stats = torch.zeros(4, BUDGET_BUCKETS, dtype=torch.float64, device=loss_sum.device)
        stats = self._budget_stats
        stats[0].index_add_(0, bucket, per_sample.double())
        stats[1].index_add_(0, bucket, has_tokens.double())
        stats[2].index_add_(0, bucket, units.double())  # every sample counts for the budget/unit means
        stats[3].index_add_(0, bucket, torch.ones_like(budget))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the budget statistics of the logging window to the training logs."""
        if "loss" in logs and self._budget_stats is not None:
            logs = {**logs, **self._budget_logs()}
        super().log(logs, start_time)

    def _budget_logs(self) -> dict[str, float]:
        stats = self._budget_stats
        # Training logs are written from a step every process reaches, so the collective is safe here.
        if self.args.world_size > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        stats = stats.cpu().clone()  # .cpu() is a no-op on CPU: copy before zeroing the window
        self._budget_stats.zero_()
        logs = {}
        samples = stats[3].sum()
        if samples > 0:
            scheduler = unwrap_ada_model(self.model).model.scheduler
            units_mean = float(stats[2].sum() / samples)
            logs["units_mean"] = round(units_mean, 4)
            logs["budget_mean"] = round((units_mean + scheduler.num_prefix_units) / scheduler.num_total_units, 4)
        for i in range(BUDGET_BUCKETS):
            if stats[1, i] > 0:
                logs[f"loss_budget_{i / BUDGET_BUCKETS:.1f}-{(i + 1) / BUDGET_BUCKETS:.1f}"] = round(
                    float(stats[0, i] / stats[1, i]), 4
                )
        return logs


# --------------------------------------------------------------------------------------------------------------------
# Temperature
TAU_SCHEDULES = ("exponential", "linear", "cosine")


def annealed_tau(start: float, end: float, progress: float, schedule: str = "exponential") -> float:
    """The temperature at `progress` in [0, 1] going from `start` to `end`."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "exponential":
        return start * (end / start) ** progress
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule={schedule!r} is not one of {TAU_SCHEDULES}.")


class TemperatureAnnealingCallback(TrainerCallback):
    """Anneal the scheduler's Gumbel temperature from `start` (first optimizer step) to `end` (last one).

    Before each optimizer step `k` of `max_steps` it sets `config.scheduler_tau` (saved with checkpoints) and the
    schedulers' own copy to `annealed_tau(start, end, k / (max_steps - 1), schedule)`. A pure function of the step, so
    a resumed run continues on the same curve.
    """

    def __init__(self, start: float, end: float, schedule: str = "exponential"):
        if start <= 0 or end <= 0:
            raise ValueError(f"Temperatures must be positive, got start={start}, end={end}.")
        if schedule not in TAU_SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is not one of {TAU_SCHEDULES}.")
        self.start, self.end, self.schedule = float(start), float(end), schedule

    def tau_at(self, global_step: int, max_steps: int) -> float:
        """The temperature used by optimizer step `global_step` (0-based) of `max_steps`."""
        return annealed_tau(self.start, self.end, global_step / max(max_steps - 1, 1), self.schedule)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def _apply(self, state, model) -> None:
        if model is not None:
            set_scheduler_tau(model, self.tau_at(state.global_step, state.max_steps))


__all__ = [
    "AdaLlavaTrainer",
    "AdaLlavaTrainingArguments",
    "ModalityLengthGroupedSampler",
    "TRAIN_PRESETS",
    "TemperatureAnnealingCallback",
    "annealed_tau",
    "apply_train_preset",
    "sample_budget_units",
    "set_scheduler_tau",
    "unwrap_ada_model",
]
