"""LlavoltaScheduleCallback: stages at fractions of the optimizer steps, stored in the config, kept on resume."""

import json

import pytest
import torch
from transformers import TrainerCallback

from ada_hf.llavolta_schedule import LLAVOLTA_SCHEDULES, LlavoltaScheduleCallback, parse_schedule
from ada_hf.trainer import AdaLlavaTrainer
from conftest import make_model
from test_trainer import StopAt, collate, make_rows, train_args

# Fits the tiny model (6 layers, 4 image tokens): stride 4 at layer 1, stride 2 at layer 2, then off.
TINY = [(0.0, 1, 4), (0.4, 2, 2), (0.7, 0, 1)]


def test_presets_match_the_published_settings():
    assert LLAVOLTA_SCHEDULES["4stage"] == [(0.0, 2, 8), (0.25, 2, 2), (0.5, 16, 2), (0.75, 0, 1)]
    assert LLAVOLTA_SCHEDULES["heavy"] == [(0.0, 2, 8)]
    assert LLAVOLTA_SCHEDULES["light"] == [(0.0, 16, 8)]
    last = parse_schedule("4stage")[-1]
    assert last.config_values() == {"llavolta_grouping": "none", "llavolta_layer": 0, "llavolta_stride": 1}
    assert parse_schedule("heavy")[0].config_values()["llavolta_grouping"] == "avgpool1d"


@pytest.mark.parametrize(
    "max_steps, starts",
    [(8, [0, 2, 4, 6]), (10, [0, 3, 5, 8]), (5198, [0, 1300, 2599, 3899]), (3, [0, 1, 2, 3])],
)
def test_4stage_boundaries_are_fractions_of_the_optimizer_steps(max_steps, starts):
    callback = LlavoltaScheduleCallback("4stage")
    assert callback.stage_starts(max_steps) == starts
    for i, start in enumerate(starts):
        if start < max_steps:
            assert callback.stage_index(start, max_steps) == i
        if start > 0:
            assert callback.stage_index(start - 1, max_steps) < i


@pytest.mark.parametrize(
    "schedule, message",
    [([], "first stage"), ([(0.1, 2, 8)], "first stage"), ([(0.0, 2, 8), (0.5, 2, 2), (0.5, 1, 1)], "increase"),
     ([(0.0, 2, 8), (1.0, 0, 1)], "increase"), ([(0.0, 2, 0)], "Strides"), ("5stage", "not a preset")],
)  # fmt: skip
def test_bad_schedules_are_refused(schedule, message):
    with pytest.raises(ValueError, match=message):
        LlavoltaScheduleCallback(schedule)


def test_a_stage_that_does_not_fit_the_model_fails_before_training(tmp_path):
    # The tiny model has 4 image tokens and 6 layers: stride 8 (and layer 16) cannot apply.
    trainer = AdaLlavaTrainer(model=make_model("L"), args=train_args(tmp_path), train_dataset=make_rows(4),
                              callbacks=[LlavoltaScheduleCallback("4stage")])  # fmt: skip
    with pytest.raises(ValueError, match="stage 0"):
        trainer.train()


class Stages(TrainerCallback):
    """Per forward: the optimizer step and the LLaVolta settings the model ran with."""

    def __init__(self, model):
        self.seen = []
        self.step = None
        model.register_forward_pre_hook(lambda m, a: self.seen.append(
            (self.step, m.config.llavolta_stride, m.config.llavolta_layer, m.config.llavolta_grouping)))  # fmt: skip

    def on_step_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


def test_stages_switch_per_optimizer_step_not_per_forward(tmp_path):
    model = make_model("L")
    recorder = Stages(model)
    args = train_args(tmp_path, max_steps=10, gradient_accumulation_steps=2, per_device_train_batch_size=1)
    trainer = AdaLlavaTrainer(model=model, args=args, train_dataset=make_rows(20),
                              callbacks=[LlavoltaScheduleCallback(TINY), recorder])  # fmt: skip
    trainer.train()
    # Starts: ceil(0.4 * 10) = 4, ceil(0.7 * 10) = 7; two forwards per optimizer step.
    expected = [(k, 4, 1, "avgpool1d") if k < 4 else (k, 2, 2, "avgpool1d") if k < 7 else (k, 1, 0, "none")
                for k in range(10) for _ in range(2)]  # fmt: skip
    assert recorder.seen == expected
    assert model.config.llavolta_stage == 2


def test_trainer_loss_pools_labels_like_the_model(tmp_path):
    # Under pooling the sequence is shorter: the trainer's loss must align labels exactly as the model's own loss.
    model = make_model("L").train()
    model.config.llavolta_grouping, model.config.llavolta_layer, model.config.llavolta_stride = "avgpool1d", 1, 4
    trainer = AdaLlavaTrainer(model=model, args=train_args(tmp_path), train_dataset=make_rows(2))
    batch = collate(make_rows(2, answer_lengths=(2, 4)))
    batch["num_units"] = torch.tensor([0, 3])
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    out = model(**batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1] - 3  # 4 image tokens pooled into 1
    torch.testing.assert_close(loss, out.loss)


def test_resume_lands_in_the_right_stage(tmp_path):
    def run(stop=None, resume=None):
        model = make_model("L")
        recorder = Stages(model)
        callbacks = [LlavoltaScheduleCallback(TINY), recorder] + ([StopAt(stop)] if stop else [])
        args = train_args(tmp_path, max_steps=10, save_strategy="steps", save_steps=5)
        trainer = AdaLlavaTrainer(model=model, args=args, train_dataset=make_rows(8), callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return recorder.seen

    first = run(stop=5)
    config = json.loads((tmp_path / "checkpoint-5" / "config.json").read_text())
    # Step 4 (the last before the save) trained in stage 1.
    assert (config["llavolta_stage"], config["llavolta_layer"], config["llavolta_stride"]) == (1, 2, 2)
    resumed = run(resume=str(tmp_path / "checkpoint-5"))
    assert [s[0] for s in first] == [0, 1, 2, 3, 4] and [s[0] for s in resumed] == [5, 6, 7, 8, 9]
    assert resumed[:2] == [(5, 2, 2, "avgpool1d"), (6, 2, 2, "avgpool1d")]
    assert resumed[2:] == [(k, 1, 0, "none") for k in (7, 8, 9)]
