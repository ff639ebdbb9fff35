"""LLaVolta's staged training schedule (LLAVOLTA_ILLAVA.md A.4) as a `TrainerCallback`.

The released code switches compression after absolute counts of forward calls; here a stage starts at a fraction of
the total optimizer steps, so the schedule does not change with GPU count, batch size or gradient accumulation.

    trainer = AdaLlavaTrainer(..., callbacks=[LlavoltaScheduleCallback("4stage")])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import TrainerCallback

from .token_reduction import validate_llavolta
from .trainer import unwrap_ada_model


@dataclass(frozen=True)
class LlavoltaStage:
    """From `start` (a fraction of the optimizer steps) on, pool image tokens by `stride` at decoder layer `layer`."""

    start: float
    layer: int
    stride: int

    @property
    def grouping(self) -> str:
        return "none" if self.stride == 1 else "avgpool1d"

    def config_values(self) -> dict:
        return {"llavolta_grouping": self.grouping, "llavolta_layer": self.layer, "llavolta_stride": self.stride}


# (fraction of total optimizer steps, K, s). A.4: the 4-stage LLaVolta; A.2.3: heavy and light never leave stage 1.
LLAVOLTA_SCHEDULES: dict[str, list[tuple[float, int, int]]] = {
    "4stage": [(0.0, 2, 8), (0.25, 2, 2), (0.5, 16, 2), (0.75, 0, 1)],
    "heavy": [(0.0, 2, 8)],
    "light": [(0.0, 16, 8)],
}


def parse_schedule(schedule: str | Sequence[tuple[float, int, int]]) -> list[LlavoltaStage]:
    """A preset name or a list of `(start fraction, layer, stride)`; the first stage starts at 0, starts increase."""
    if isinstance(schedule, str):
        if schedule not in LLAVOLTA_SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is not a preset: use one of {sorted(LLAVOLTA_SCHEDULES)}.")
        schedule = LLAVOLTA_SCHEDULES[schedule]
    stages = [LlavoltaStage(float(start), int(layer), int(stride)) for start, layer, stride in schedule]
    if not stages or stages[0].start != 0.0:
        raise ValueError(f"The first stage must start at fraction 0.0, got {[s.start for s in stages]}.")
    starts = [s.start for s in stages]
    if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= 1.0:
        raise ValueError(f"Stage starts must increase strictly within [0, 1), got {starts}.")
    if any(s.stride < 1 for s in stages):
        raise ValueError(f"Strides must be >= 1, got {[s.stride for s in stages]}.")
    return stages


class LlavoltaScheduleCallback(TrainerCallback):
    """Switch LLaVolta's compression (`config.llavolta_*`) at fractions of the total optimizer steps.

    Stage `i` is in force for optimizer step `k` (0-based, `state.global_step` before the step) of `max_steps` when
    `k >= ceil(start_i * max_steps)`, the first step at which that share of training is done. The stage is written
    into the model config before each step, with its index as `config.llavolta_stage`, so checkpoints carry the
    stage their last step trained with; being a pure function of the step, it is recomputed exactly on resume.

    Args:
        schedule: `"4stage"`, `"heavy"`, `"light"` (`LLAVOLTA_SCHEDULES`) or a list of `(start, layer, stride)`;
            stride 1 turns compression off.
    """

    def __init__(self, schedule: str | Sequence[tuple[float, int, int]] = "4stage"):
        self.stages = parse_schedule(schedule)

    def stage_starts(self, max_steps: int) -> list[int]:
        """The optimizer step (0-based) at which each stage begins."""
        # The small epsilon keeps 0.75 * 4 == 3.0000000000000004-style rounding from delaying a stage by a step.
        return [math.ceil(s.start * max_steps - 1e-9) for s in self.stages]

    def stage_index(self, global_step: int, max_steps: int) -> int:
        """The stage in force for optimizer step `global_step` of `max_steps`."""
        return max(i for i, start in enumerate(self.stage_starts(max_steps)) if global_step >= start)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            config = unwrap_ada_model(model).config
            # Fail before the first step rather than inside a forward, naming the stage at fault.
            for i, stage in enumerate(self.stages):
                try:
                    validate_llavolta(stage.config_values(), config.text_config.num_hidden_layers,
                                      config.image_seq_length)  # fmt: skip
                except ValueError as error:
                    raise ValueError(f"LLaVolta stage {i} {stage} does not fit this model: {error}") from error
        self._apply(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def _apply(self, state, model) -> None:
        if model is None:
            return
        config = unwrap_ada_model(model).config
        index = self.stage_index(state.global_step, state.max_steps)
        for name, value in self.stages[index].config_values().items():
            setattr(config, name, value)
        config.llavolta_stage = index


__all__ = ["LLAVOLTA_SCHEDULES", "LlavoltaScheduleCallback", "LlavoltaStage", "parse_schedule"]
