"""AdaLlavaTrainer: budget sampling, loss, presets, gradient accumulation, temperature, saving and resuming."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

import ada_hf.latency_scheduler as latency_scheduler
from ada_hf import AdaLlavaForConditionalGeneration
from ada_hf.llavolta_schedule import LlavoltaScheduleCallback
from ada_hf.trainer import (
    AdaLlavaTrainer,
    AdaLlavaTrainingArguments,
    ModalityLengthGroupedSampler,
    TemperatureAnnealingCallback,
    annealed_tau,
    apply_train_preset,
    budget_seed,
    sample_budget_units,
)
from conftest import make_model, make_pixels, make_prompt
from helpers import run_without_ada_hf

CODE_FILES = {"configuration_ada_llava.py", "modeling_ada_llava.py", "latency_scheduler.py", "execution_plan.py"}


def make_rows(n=8, answer_lengths=(3,)):
    """Tiny in-memory dataset: prompt, image, `<latency>`, then an answer (the only supervised tokens).

    Rows share one length; `answer_lengths` cycles how many trailing tokens are supervised, so token counts differ.
    """
    rows = []
    for i in range(n):
        answer = torch.randint(3, 90, (5,), generator=torch.Generator().manual_seed(50 + i))
        ids = torch.cat([make_prompt(i, latency=True), answer])
        labels = torch.full_like(ids, -100)
        supervised = answer_lengths[i % len(answer_lengths)]
        labels[-supervised:] = answer[-supervised:]
        rows.append({"input_ids": ids, "labels": labels, "pixel_values": make_pixels(1, i)[0]})
    return rows


def train_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2,
        lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    return TrainingArguments(**{**defaults, **kwargs})


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def changed(before, model):
    return {k for k, v in model.named_parameters() if not torch.equal(before[k], v.detach())}


@pytest.fixture
def no_gumbel_noise(monkeypatch):
    # Noise-free plans: batch composition then no longer changes the noise each row sees.
    monkeypatch.setattr(latency_scheduler, "_gumbel", torch.zeros_like)


# --------------------------------------------------------------------------------------------------------------------
# Budgets
@pytest.mark.parametrize("scheduler_type, max_units", [("L", 3), ("H", 12)])
def test_budgets_are_uniform_integer_counts_including_both_ends(tmp_path, scheduler_type, max_units):
    model = make_model(scheduler_type)
    trainer = AdaLlavaTrainer(model=model, args=train_args(tmp_path), train_dataset=make_rows(2))
    assert model.scheduler.max_units == max_units
    draws = []
    for step in range(500):
        trainer.state.global_step = step
        draws += [trainer.sample_units(16), trainer.sample_units(16)]  # two micro-batches of one optimizer step
    counts = torch.bincount(torch.cat(draws), minlength=max_units + 1).double()
    assert counts.numel() == max_units + 1 and (counts > 0).all()  # 0 and U_max included, nothing beyond
    expected = counts.sum() / (max_units + 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 99.9% quantiles of chi-square with 3 and 12 degrees of freedom.
    assert chi2 < {3: 16.27, 12: 32.91}[max_units]


def test_budget_draws_are_reproducible_per_step_rank_and_micro_batch(tmp_path):
    def draws(seed=0):
        args = train_args(tmp_path, seed=seed)
        trainer = AdaLlavaTrainer(model=make_model("L"), args=args, train_dataset=make_rows(2))
        out = []
        for step in (0, 0, 1, 1, 1, 7):
            trainer.state.global_step = step
            out.append(trainer.sample_units(64))
        return torch.stack(out)

    a = draws()
    assert torch.equal(a, draws())
    assert not torch.equal(a[0], a[1])  # the second micro-batch of a step gets its own draw
    assert not torch.equal(a, draws(seed=1))
    assert budget_seed(0, 3, 0, 0) != budget_seed(0, 3, 1, 0)  # each process rank draws its own budgets
    g = torch.Generator().manual_seed(0)
    assert sample_budget_units(0, 5, g).tolist() == [0] * 5


# --------------------------------------------------------------------------------------------------------------------
# Loss and gradients
def test_loss_is_the_answer_token_cross_entropy_and_trains_the_scheduler(tmp_path):
    model = make_model("L").train()
    trainer = AdaLlavaTrainer(model=model, args=train_args(tmp_path), train_dataset=make_rows(2))
    batch = collate(make_rows(2, answer_lengths=(2, 4)))
    batch["num_units"] = torch.tensor([1, 2])
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    reference = model(**batch).loss  # the model's own shifted mean over labels != -100
    torch.testing.assert_close(loss, reference)
    loss.backward()
    scheduler = model.scheduler
    assert scheduler.mlp_head.weight.grad.abs().sum() > 0
    assert scheduler.latency_encoder.net[1].weight.grad.abs().sum() > 0


def test_gradient_accumulation_matches_one_large_batch(tmp_path, no_gumbel_noise):
    # Rows with 2 and 5 supervised tokens: a per-micro-batch mean would weigh their tokens differently.
    rows = make_rows(2, answer_lengths=(2, 5))
    for row, units in zip(rows, (1, 3)):
        row["num_units"] = torch.tensor(units)

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    grads = []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        recorder = Grads()
        args = train_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                          max_steps=1, max_grad_norm=0.0)  # fmt: skip
        trainer = AdaLlavaTrainer(model=make_model("L"), args=args, train_dataset=rows, callbacks=[recorder])
        trainer.train()
        grads.append(recorder.grads)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4, msg=name)
    assert grads[0]["model.scheduler.mlp_head.weight"].abs().sum() > 0


def test_logs_budgets_and_loss_per_budget_bucket(tmp_path):
    trainer = AdaLlavaTrainer(model=make_model("L"), args=train_args(tmp_path, max_steps=6, logging_steps=3),
                              train_dataset=make_rows(8))  # fmt: skip
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    # Eval mode gets budgets too, the same ones at every evaluation.
    losses = [trainer.evaluate(make_rows(4))["eval_loss"] for _ in range(2)]
    assert math.isfinite(losses[0]) and losses[0] == losses[1]
    # L with N=6, P=3: budgets 3/6 .. 6/6, i.e. the buckets 0.5-0.6, 0.6-0.7, 0.8-0.9 and 0.9-1.0 (1.0 included).
    allowed = {"loss_budget_0.5-0.6", "loss_budget_0.6-0.7", "loss_budget_0.8-0.9", "loss_budget_0.9-1.0"}
    for entry in logs:
        buckets = {k for k in entry if k.startswith("loss_budget_")}
        assert buckets and buckets <= allowed
        assert all(math.isfinite(entry[k]) and entry[k] > 0 for k in buckets)
        assert 0 <= entry["units_mean"] <= 3 and entry["budget_mean"] == pytest.approx((3 + entry["units_mean"]) / 6,
                                                                                       abs=1e-3)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Presets
@pytest.mark.parametrize("preset", ["scheduler", "full", "lora"])
def test_presets_train_exactly_their_parts(tmp_path, preset):
    model = make_model("L")
    before = snapshot(model)
    trainer = AdaLlavaTrainer(model=model, args=train_args(tmp_path, max_steps=3), train_dataset=make_rows(6),
                              train_preset=preset)  # fmt: skip
    trainer.train()
    moved = changed(before, model) if preset != "lora" else set()
    if preset == "lora":
        peft_model = trainer.model
        names = dict(peft_model.named_parameters())
        trainable = {k for k, p in names.items() if p.requires_grad}
        assert trainable and all("lora_" in k or "modules_to_save" in k for k in trainable)
        assert any("scheduler.modules_to_save" in k for k in trainable)
        assert not any("vision_tower" in k or "multi_modal_projector" in k for k in trainable)
        # The frozen base (original weights, original scheduler copy) is untouched; LoRA and the scheduler copy moved.
        base = {k.replace("base_model.model.", "").replace(".base_layer", "").replace(".original_module", ""): v
                for k, v in names.items() if "lora_" not in k and "modules_to_save" not in k}  # fmt: skip
        assert base.keys() == before.keys()
        assert all(torch.equal(before[k], v.detach()) for k, v in base.items())
        assert any(not torch.equal(before[k.replace("base_model.model.", "").replace(".modules_to_save.default", "")],
                                   v.detach()) for k, v in names.items() if "modules_to_save" in k)  # fmt: skip
        assert any("lora_B" in k and v.detach().abs().sum() > 0 for k, v in names.items())
        return
    assert not any("vision_tower" in k for k in moved)
    assert any(k.startswith("model.scheduler.mlp_head") for k in moved)
    touched = {k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in moved}
    if preset == "scheduler":
        assert touched == {"scheduler"}
    else:
        assert touched == {"scheduler", "multi_modal_projector", "language_model", "lm_head"}


def test_apply_train_preset_rejects_unknown_presets_and_plain_llava():
    with pytest.raises(ValueError, match="not a preset"):
        apply_train_preset(make_model("L"), "everything")
    with pytest.raises(ValueError, match="no latency scheduler"):
        apply_train_preset(make_model(None), "full")


def test_lora_adapter_carries_the_scheduler_and_merges_into_the_model_class(tmp_path):
    from peft import PeftModel

    trainer = AdaLlavaTrainer(model=make_model("H", scheduler_rank=2), args=train_args(tmp_path / "run", max_steps=3),
                              train_dataset=make_rows(6), train_preset="lora")  # fmt: skip
    trainer.train()
    trainer.save_model(tmp_path / "adapter")
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys()
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert any(".scheduler.mlp_head.weight" in k for k in keys)
    assert any(".scheduler.latency_encoder.net.1.weight" in k for k in keys)

    ids, pixels = make_prompt(0, latency=True)[None], make_pixels(1)
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids, pixel_values=pixels, latency=0.6).logits
        reloaded = PeftModel.from_pretrained(make_model("H", scheduler_rank=2), tmp_path / "adapter").eval()
        torch.testing.assert_close(reloaded(input_ids=ids, pixel_values=pixels, latency=0.6).logits, expected)
        merged = reloaded.merge_and_unload()
        assert type(merged) is AdaLlavaForConditionalGeneration
        torch.testing.assert_close(merged(input_ids=ids, pixel_values=pixels, latency=0.6).logits, expected,
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
        # The trained scheduler, not the initial one, is what merged: another init would plan differently.
        assert not torch.equal(
            merged.scheduler.mlp_head.weight, make_model("H", scheduler_rank=2).scheduler.mlp_head.weight
        )


# --------------------------------------------------------------------------------------------------------------------
# Temperature
def test_annealed_tau_schedules():
    assert annealed_tau(5.0, 1.0, 0.0) == pytest.approx(5.0)
    assert annealed_tau(5.0, 1.0, 0.5) == pytest.approx(5.0**0.5)
    assert annealed_tau(5.0, 1.0, 1.0) == pytest.approx(1.0)
    assert annealed_tau(5.0, 1.0, 0.25, "linear") == pytest.approx(4.0)
    assert annealed_tau(5.0, 1.0, 0.5, "cosine") == pytest.approx(3.0)
    assert annealed_tau(5.0, 1.0, 0.25, "cosine") == pytest.approx(1.0 + 4.0 * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError):
        TemperatureAnnealingCallback(5.0, 1.0, "step")


@pytest.mark.parametrize("schedule", ["exponential", "linear", "cosine"])
def test_temperature_callback_sets_the_tau_the_scheduler_uses(tmp_path, schedule):
    model = make_model("L")
    seen = []
    model.scheduler.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["tau"], model.config.scheduler_tau)), with_kwargs=True
    )
    callback = TemperatureAnnealingCallback(4.0, 0.5, schedule)
    trainer = AdaLlavaTrainer(model=model, args=train_args(tmp_path, max_steps=5, gradient_accumulation_steps=2),
                              train_dataset=make_rows(20), callbacks=[callback])  # fmt: skip
    trainer.train()
    expected = [annealed_tau(4.0, 0.5, k / 4, schedule) for k in range(5)]
    assert [tau for tau, _ in seen] == pytest.approx([t for t in expected for _ in range(2)])  # per optimizer step
    assert all(a == b for a, b in seen)  # the model passes the config's tau at every forward
    assert model.config.scheduler_tau == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
def test_trainer_checkpoints_carry_code_and_load_without_ada_hf(tmp_path):
    model = make_model("L")
    trainer = AdaLlavaTrainer(model=model, args=train_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
                              train_dataset=make_rows(4), train_preset="full")  # fmt: skip
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert CODE_FILES <= {p.name for p in checkpoint.glob("*.py")}
    assert "AutoModelForImageTextToText" in json.loads((checkpoint / "config.json").read_text())["auto_map"]
    ids, pixels = make_prompt(0, latency=True)[None], make_pixels(1)
    torch.save({"ids": ids, "pixels": pixels}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model.eval()(input_ids=ids, pixel_values=pixels, latency=0.6).logits
    code = f"""
        import torch
        from transformers import AutoModelForImageTextToText
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = AutoModelForImageTextToText.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = model(input_ids=inputs["ids"], pixel_values=inputs["pixels"], latency=0.6).logits
        torch.save({{"logits": logits, "module": type(model).__module__}}, {str(tmp_path / "out.pt")!r})
    """
    result = run_without_ada_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["module"].startswith("transformers_modules.")
    torch.testing.assert_close(out["logits"], expected)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path):
    # 8 rows, batch 2, 6 steps: the run crosses an epoch boundary (shuffled data) after the resume point.
    schedule = [(0.0, 1, 4), (0.4, 2, 2), (0.7, 0, 1)]

    def run(out, stop=None, resume=None):
        model = make_model("L")
        callbacks = [TemperatureAnnealingCallback(5.0, 1.0), LlavoltaScheduleCallback(schedule)]
        if stop:
            callbacks.append(StopAt(stop))
        args = train_args(out, max_steps=6, save_strategy="steps", save_steps=3, lr_scheduler_type="linear")
        trainer = AdaLlavaTrainer(model=model, args=args, train_dataset=make_rows(8), callbacks=callbacks,
                                  train_preset="full")  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer

    straight, _ = run(tmp_path / "straight")
    run(tmp_path / "interrupted", stop=3)
    saved = json.loads((tmp_path / "interrupted" / "checkpoint-3" / "config.json").read_text())
    assert saved["llavolta_stage"] == 0 and saved["llavolta_stride"] == 4  # steps 0-2 trained in stage 0
    resumed, trainer = run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert resumed.config.llavolta_stage == straight.config.llavolta_stage == 2
    assert resumed.config.scheduler_tau == straight.config.scheduler_tau == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------------------------
# group_by_modality_length (LLaVA's modality-grouped sampler)
def mixed_modality_lengths(n=61, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 300, (n,), generator=g)
    is_image = torch.rand(n, generator=g) < 0.7
    return torch.where(is_image, lengths, -lengths).tolist()


@pytest.mark.parametrize("batch_size, world_size", [(2, 1), (2, 4), (3, 2), (4, 8)])
def test_modality_sampler_never_mixes_modalities_in_a_megabatch(batch_size, world_size):
    modality_lengths = mixed_modality_lengths()
    sampler = ModalityLengthGroupedSampler(modality_lengths, batch_size, world_size, seed=0)
    megabatches = sampler.megabatches()
    size = batch_size * world_size
    for megabatch in megabatches:
        assert len({modality_lengths[i] > 0 for i in megabatch}) == 1, megabatch
    # Full mega-batches first; at most one partial mega-batch per modality, at the end.
    sizes = [len(m) for m in megabatches]
    partial = [s for s in sizes if s != size]
    assert len(partial) <= 2 and sizes[len(sizes) - len(partial) :] == partial
    # The flat order is the mega-batches' concatenation, and every index comes exactly once.
    assert list(sampler) == [i for m in megabatches for i in m]
    assert sorted(sampler) == list(range(len(modality_lengths))) and len(sampler) == len(modality_lengths)


def test_modality_sampler_groups_lengths_within_a_megabatch():
    modality_lengths = mixed_modality_lengths(200)
    sampler = ModalityLengthGroupedSampler(modality_lengths, batch_size=4, world_size=1, seed=0)
    for megabatch in sampler.megabatches():
        lengths = [abs(modality_lengths[i]) for i in megabatch]
        assert lengths == sorted(lengths, reverse=True)  # one batch per mega-batch: longest first, as LLaVA
    # With several batches per mega-batch, the batches get similar total lengths (LLaVA's split_to_even_chunks).
    sampler = ModalityLengthGroupedSampler(modality_lengths, batch_size=4, world_size=4, seed=0)
    full = [m for m in sampler.megabatches() if len(m) == 16]
    spread = [max(t) - min(t) for m in full for t in [[sum(abs(modality_lengths[i]) for i in m[k : k + 4])
                                                       for k in range(0, 16, 4)]]]  # fmt: skip
    assert sum(spread) / len(spread) < 150  # a random split of lengths 5-300 would spread far more


def test_modality_sampler_is_deterministic_per_seed_and_epoch():
    modality_lengths = mixed_modality_lengths()

    def order(seed, epoch):
        sampler = ModalityLengthGroupedSampler(modality_lengths, 2, 2, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(123)  # the global RNG plays no part
    first = order(0, 0)
    torch.manual_seed(456)
    assert order(0, 0) == first
    assert order(0, 1) != first and order(1, 0) != first
    assert sorted(order(0, 1)) == sorted(first)


def test_modality_sampler_with_one_modality_and_bad_lengths():
    images_only = ModalityLengthGroupedSampler([5, 9, 7, 3, 8], batch_size=2, seed=0)
    assert sorted(images_only) == list(range(5))
    texts_only = ModalityLengthGroupedSampler([-5, -9, -7, -3, -8], batch_size=5, seed=0)
    assert list(texts_only) == [1, 4, 2, 0, 3]  # one mega-batch, longest first
    with pytest.raises(ValueError, match="must not contain 0"):
        ModalityLengthGroupedSampler([5, 0, -3], batch_size=2)


class IndexDataset(torch.utils.data.Dataset):
    """Items are their own index; `modality_lengths` as LlavaSupervisedDataset's."""

    def __init__(self, modality_lengths):
        self.modality_lengths = modality_lengths

    def __len__(self):
        return len(self.modality_lengths)

    def __getitem__(self, i):
        return {"index": i}


def test_trainer_samples_by_modality_with_group_by_modality_length(tmp_path):
    modality_lengths = mixed_modality_lengths(40)
    args = AdaLlavaTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, use_cpu=True,
        report_to="none", group_by_modality_length=True, remove_unused_columns=False, seed=7,
        dataloader_num_workers=0,
    )  # fmt: skip
    trainer = AdaLlavaTrainer(model=make_model("L"), args=args, train_dataset=IndexDataset(modality_lengths),
                              data_collator=lambda rows: [r["index"] for r in rows])  # fmt: skip
    loader = trainer.get_train_dataloader()
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, ModalityLengthGroupedSampler)
    assert (sampler.batch_size, sampler.world_size, sampler.seed) == (2, 2, 7)  # world = processes x accumulation

    def epoch_batches(epoch):
        loader.set_epoch(epoch)  # what Trainer does at the start of every epoch
        return list(loader)

    first = epoch_batches(0)
    assert [i for batch in first for i in batch] == list(sampler)
    mixed = [batch for batch in first if len({modality_lengths[i] > 0 for i in batch}) > 1]
    assert len(mixed) <= 1  # at most the batch that straddles the two trailing partial mega-batches
    assert sorted(i for batch in first for i in batch) == list(range(40))
    assert epoch_batches(0) == first and epoch_batches(1) != first


def test_group_by_modality_length_needs_modality_lengths(tmp_path):
    args = AdaLlavaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                     group_by_modality_length=True)  # fmt: skip
    trainer = AdaLlavaTrainer(model=make_model("L"), args=args, train_dataset=make_rows(4))
    with pytest.raises(ValueError, match="modality_lengths"):
        trainer.get_train_dataloader()
    # Without the flag the dataset needs no such attribute (Trainer's random sampler).
    plain = AdaLlavaTrainer(model=make_model("L"), args=train_args(tmp_path), train_dataset=make_rows(4))
    assert not isinstance(plain._get_train_sampler(), ModalityLengthGroupedSampler)


def test_training_arguments_take_llava_warmup_ratio(tmp_path):
    args = AdaLlavaTrainingArguments(output_dir=str(tmp_path), warmup_ratio=0.03)
    assert args.warmup_steps == 0.03 and not args.group_by_modality_length
    assert AdaLlavaTrainingArguments(output_dir=str(tmp_path), warmup_steps=10, warmup_ratio=0.1).warmup_steps == 0.1
    with pytest.raises(ValueError, match="warmup_ratio"):
        AdaLlavaTrainingArguments(output_dir=str(tmp_path), warmup_ratio=1.5)


class RowsWithModalityLengths(torch.utils.data.Dataset):
    def __init__(self, rows, modality_lengths):
        self.rows, self.modality_lengths = rows, modality_lengths

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_resuming_with_group_by_modality_length_continues_exactly(tmp_path):
    # The sampler only orders indices: made-up modality lengths over same-shaped rows. 8 rows, batch 2, 6 steps: the
    # resumed run skips into epoch 0's order and then crosses into epoch 1's.
    modality_lengths = [5, -3, 7, -2, 9, 4, -6, 8]

    def run(out, stop=None, resume=None):
        model = make_model("L")
        args = AdaLlavaTrainingArguments(
            output_dir=str(out), per_device_train_batch_size=2, max_steps=6, learning_rate=1e-2, report_to="none",
            use_cpu=True, save_strategy="steps", save_steps=3, logging_steps=1, disable_tqdm=True, seed=0,
            dataloader_num_workers=0, group_by_modality_length=True, remove_unused_columns=False,
        )  # fmt: skip
        callbacks = [StopAt(stop)] if stop else []
        dataset = RowsWithModalityLengths(make_rows(8), modality_lengths)
        trainer = AdaLlavaTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                                  callbacks=callbacks, train_preset="full")  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return model

    straight = run(tmp_path / "straight")
    run(tmp_path / "interrupted", stop=3)
    resumed = run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
