"""Train AdaLLaVA on LLaVA-1.5 instruction data with `AdaLlavaTrainer` (the released recipe: ADALLAVA.md section 8).

Every `transformers.TrainingArguments` flag is accepted (plus `--group_by_modality_length` and `--warmup_ratio`, see
`ada_hf.trainer.AdaLlavaTrainingArguments`). The defaults are the recipe's (`train_script.sh`, per device): lr 1e-5,
cosine schedule, warmup ratio 0.03, weight decay 0, batch 2, gradient accumulation 4, one epoch, model_max_length
2048, group_by_modality_length, save every 500 steps keeping 1, log every 10 steps, 4 data workers, `--train_preset
full` (scheduler + projector + LLM; the CLIP tower frozen). bf16 and gradient checkpointing are off by default (this
must also run on a CPU): the recipe turns them on with `--bf16 True --gradient_checkpointing True` (add `--tf32 True`
on Ampere or newer GPUs; transformers 5 names the second `--activation_checkpointing` and warns on the old name). The
model architecture flags of the original (`--vision_tower`, `--num_prefix_layers`, `--scheduler_type`, ...) belong to
the converted checkpoint (`ada-hf convert`); the template is always vicuna_v1.

    # A LLaVA-1.5 checkpoint converted with a new, untrained scheduler:
    ada-hf convert liuhaotian/llava-v1.5-7b llava-ada-L --scheduler-type L --num-prefix-layers 16

    # One process (one GPU):
    python examples/train_scheduler.py --model_name_or_path llava-ada-L \
        --data_path llava_v1_5_mix665k.json --image_folder LLaVA-Finetune/images \
        --output_dir checkpoints/ada-llava-L-v1.5-7b --bf16 True --gradient_checkpointing True

    # Data parallel on the 8 GPUs of one node (global batch 2 x 4 x 8 = 64):
    torchrun --nproc_per_node 8 examples/train_scheduler.py --model_name_or_path llava-ada-L \
        --data_path llava_v1_5_mix665k.json --image_folder LLaVA-Finetune/images \
        --output_dir checkpoints/ada-llava-L-v1.5-7b --bf16 True --gradient_checkpointing True

    # The same with accelerate:
    accelerate launch --multi_gpu --num_processes 8 examples/train_scheduler.py --model_name_or_path llava-ada-L \
        --data_path llava_v1_5_mix665k.json --image_folder LLaVA-Finetune/images \
        --output_dir checkpoints/ada-llava-L-v1.5-7b --bf16 True --gradient_checkpointing True

    # DeepSpeed ZeRO-3 as the original, with LLaVA's config (`pip install deepspeed`; GPUs only: NOT tested on this
    # project's CPU machines). With --bf16 the weights load in bf16 (DeepSpeed keeps fp32 master weights).
    deepspeed examples/train_scheduler.py --deepspeed examples/zero3.json --model_name_or_path llava-ada-L \
        --data_path llava_v1_5_mix665k.json --image_folder LLaVA-Finetune/images \
        --output_dir checkpoints/ada-llava-L-v1.5-7b --bf16 True --tf32 True --gradient_checkpointing True
    # (torchrun --nproc_per_node 8 / accelerate launch --multi_gpu --num_processes 8 take the same --deepspeed flag)

    # Offline smoke runs on a CPU: a tiny random model and a few generated samples, 4 steps, saved to --output_dir.
    python examples/train_scheduler.py --tiny --output_dir /tmp/ada-tiny
    torchrun --nproc_per_node 2 examples/train_scheduler.py --tiny --output_dir /tmp/ada-tiny-ddp
    accelerate launch --multi_gpu --num_processes 2 examples/train_scheduler.py --tiny --output_dir /tmp/ada-tiny-acc
    # (--tiny trains on the CPU, gloo, even under --multi_gpu; `accelerate launch --cpu` starts one process only
    # unless given an mpirun hostfile)

Options of this script beyond `TrainingArguments`: `--train_preset scheduler|full|lora` (`--lora_r`, `--lora_alpha`,
`--lora_dropout`), `--tau_anneal 5,1,exponential` (anneal the Gumbel temperature from 5 to 1; the recipe keeps 5),
`--llavolta_schedule 4stage|heavy|light|START:LAYER:STRIDE,...` (LLaVolta's staged token pooling), `--tiny`.

The final model is saved to `--output_dir` with its code files (loads with `AutoModelForImageTextToText` and
`trust_remote_code=True`) and the processor. With `--train_preset lora` the adapter goes to `OUTPUT_DIR/adapter` and
the merged model to `OUTPUT_DIR` (under DeepSpeed only the adapter: merge it afterwards with peft).
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from transformers import HfArgumentParser, set_seed

from ada_hf import AdaLlavaForConditionalGeneration, AdaLlavaProcessor
from ada_hf.llava_data import AdaLlavaDataCollator, LlavaSupervisedDataset, load_llava_dataset
from ada_hf.llavolta_schedule import LLAVOLTA_SCHEDULES, LlavoltaScheduleCallback
from ada_hf.trainer import (
    DEFAULT_LORA_TARGETS,
    TAU_SCHEDULES,
    AdaLlavaTrainer,
    AdaLlavaTrainingArguments,
    TemperatureAnnealingCallback,
)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An ada_hf checkpoint with a latency scheduler (scheduler_type L or H)."}
    )
    train_preset: Literal["scheduler", "full", "lora"] = field(
        default="full",
        metadata={"help": "What to train: the scheduler only, scheduler + projector + LLM (the recipe), or LoRA."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--train_preset lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (--train_preset lora)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (--train_preset lora)."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "`sdpa` (the model's default), `eager`, `flash_attention_2`, ..."}
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = field(
        default=None,
        metadata={"help": "Dtype of the loaded weights. Default: bfloat16 under DeepSpeed with --bf16 (DeepSpeed "
                          "keeps fp32 master weights), else float32 (--bf16 then trains in autocast)."},
    )  # fmt: skip
    tau_anneal: str | None = field(
        default=None,
        metadata={"help": f"START,END[,SCHEDULE]: anneal the scheduler's Gumbel temperature over training, SCHEDULE "
                          f"one of {', '.join(TAU_SCHEDULES)} (default exponential). Default: a fixed "
                          f"config.scheduler_tau."},
    )  # fmt: skip
    llavolta_schedule: str | None = field(
        default=None,
        metadata={"help": f"LLaVolta's staged token pooling: {', '.join(sorted(LLAVOLTA_SCHEDULES))}, or stages "
                          f"START:LAYER:STRIDE,... (START a fraction of the steps, STRIDE 1 = no pooling)."},
    )  # fmt: skip
    tiny: bool = field(
        default=False, metadata={"help": "Offline smoke run on a CPU: a tiny random model and generated data."}
    )


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "LLaVA instruction JSON (or .jsonl)."})
    image_folder: str | None = field(default=None, metadata={"help": "The folder image paths are relative to."})
    model_max_length: int = field(default=2048, metadata={"help": "Longer samples are cut from the end."})
    skip_bad_samples: bool = field(default=False, metadata={"help": "Skip and count bad samples instead of failing."})
    check_images: bool = field(default=False, metadata={"help": "Decode every image before training (slow)."})


# The recipe (train_script.sh), as defaults of the TrainingArguments flags; the command line overrides them.
RECIPE_DEFAULTS = dict(
    learning_rate=1e-5,
    lr_scheduler_type="cosine",
    warmup_steps=0.03,  # a float below 1 is a ratio of the training steps (LLaVA's --warmup_ratio 0.03)
    weight_decay=0.0,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=4,
    num_train_epochs=1.0,
    save_strategy="steps",
    save_steps=500,
    save_total_limit=1,
    logging_steps=10,
    dataloader_num_workers=4,
    group_by_modality_length=True,
    remove_unused_columns=False,  # the collator builds exactly the model's inputs
    report_to="none",
)

# --tiny: a few steps on a CPU, nothing saved on the way; explicit flags still override these.
TINY_DEFAULTS = dict(
    max_steps=4,
    learning_rate=1e-3,
    use_cpu=True,
    logging_steps=1,
    dataloader_num_workers=0,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    save_strategy="no",
    output_dir="ada-tiny",
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(tiny: bool = False) -> HfArgumentParser:
    """The script's parser: `ModelArguments`, `DataArguments`, `AdaLlavaTrainingArguments` with the recipe defaults."""
    parser = HfArgumentParser((ModelArguments, DataArguments, AdaLlavaTrainingArguments), description=__doc__,
                              formatter_class=_HelpFormatter)  # fmt: skip
    parser.set_defaults(**{**RECIPE_DEFAULTS, **(TINY_DEFAULTS if tiny else {})})
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, AdaLlavaTrainingArguments]:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A plain namespace first (no TrainingArguments yet, which would set up devices): is this a --tiny run?
    tiny = build_parser().parse_known_args(argv)[0].tiny
    parser = build_parser(tiny=tiny)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    if not tiny and not (model_args.model_name_or_path and data_args.data_path):
        parser.error("--model_name_or_path and --data_path are needed (or --tiny)")
    return model_args, data_args, training_args


def parse_llavolta_schedule(text: str) -> str | list[tuple[float, int, int]]:
    """A preset name, or `START:LAYER:STRIDE,...` as a list of stages."""
    if text in LLAVOLTA_SCHEDULES:
        return text
    try:
        return [(float(start), int(layer), int(stride)) for start, layer, stride in
                (stage.split(":") for stage in text.split(","))]  # fmt: skip
    except ValueError:
        raise ValueError(f"--llavolta_schedule {text!r}: use one of {sorted(LLAVOLTA_SCHEDULES)} or "
                         f"START:LAYER:STRIDE,... such as 0:2:8,0.5:0:1.") from None  # fmt: skip


def parse_tau_anneal(text: str) -> TemperatureAnnealingCallback:
    """`START,END[,SCHEDULE]` as a `TemperatureAnnealingCallback`."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise ValueError(f"--tau_anneal {text!r}: use START,END[,SCHEDULE] such as 5,1,exponential.")
    return TemperatureAnnealingCallback(float(parts[0]), float(parts[1]), *parts[2:])


TINY_TEXT_SAMPLES = [
    ("Why is the sky blue?", "It is the light of the sun."),
    ("What is water?", "Water is water."),
    ("Can a dog read?", "No."),
]


def tiny_setup(folder: str, seed: int = 0):
    """A tiny random model, its processor, and a small LLaVA-style JSON with images, written under `folder`.

    Writes the data only if it is not there yet: under a launcher, call it on the main process first.
    """
    from ada_hf.tiny_model import build_tiny_model, tiny_config
    from ada_hf.tiny_processor import build_tiny_processor

    processor = build_tiny_processor(image_size=28, patch_size=14)
    tokenizer = processor.tokenizer
    config = tiny_config(
        vocab_size=len(tokenizer),
        image_token_id=processor.image_token_id,
        latency_token_id=processor.latency_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = build_tiny_model(config, seed=seed)  # the same weights in every process
    data_path, image_folder = os.path.join(folder, "data.json"), os.path.join(folder, "images")
    if os.path.exists(data_path):
        return model, processor, data_path, image_folder
    os.makedirs(image_folder, exist_ok=True)
    records = []
    colors = [((200, 30, 30), "red"), ((30, 30, 200), "blue"), ((30, 160, 30), "green")]
    for i in range(6):
        color, name = colors[i % 3]
        Image.new("RGB", (40 + 8 * i, 30), color).save(os.path.join(image_folder, f"{i}.png"))
        turns = [("<image>\nWhat color is the image?", f"It is {name}.")] + [("Is it a photo?", "No.")] * (i % 2)
        records.append({"id": i, "image": f"{i}.png", "conversations": _conversation(turns)})
    for i, (question, answer) in enumerate(TINY_TEXT_SAMPLES):
        records.append({"id": f"text-{i}", "conversations": _conversation([(question, answer)])})
    with open(data_path + ".tmp", "w") as f:
        json.dump(records, f)
    os.replace(data_path + ".tmp", data_path)
    return model, processor, data_path, image_folder


def _conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [message for q, a in turns for message in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_args(argv)
    callbacks = []
    if model_args.tau_anneal:
        callbacks.append(parse_tau_anneal(model_args.tau_anneal))
    if model_args.llavolta_schedule:
        callbacks.append(LlavoltaScheduleCallback(parse_llavolta_schedule(model_args.llavolta_schedule)))

    if model_args.tiny:
        with training_args.main_process_first(desc="tiny data"):
            model, processor, data_path, image_folder = tiny_setup(
                os.path.join(training_args.output_dir, "tiny-data"), seed=training_args.seed
            )
    else:
        set_seed(training_args.seed)
        dtype = model_args.dtype or ("bfloat16" if training_args.deepspeed and training_args.bf16 else "float32")
        kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
        # Created after the TrainingArguments: under ZeRO-3 the weights load partitioned.
        model = AdaLlavaForConditionalGeneration.from_pretrained(
            model_args.model_name_or_path, dtype=getattr(torch, dtype), **kwargs
        )
        processor = AdaLlavaProcessor.from_pretrained(model_args.model_name_or_path)
        data_path, image_folder = data_args.data_path, data_args.image_folder

    dataset = LlavaSupervisedDataset(
        load_llava_dataset(data_path),
        processor,
        image_folder,
        latency_token_id=model.config.latency_token_id,
        max_length=data_args.model_max_length,
        on_bad_sample="skip" if data_args.skip_bad_samples else "raise",
        check_images=data_args.check_images,
    )
    images = sum(length > 0 for length in dataset.modality_lengths)
    print(f"{len(dataset)} samples ({images} with an image), {len(dataset.skipped)} skipped")

    lora_config = None
    if model_args.train_preset == "lora":
        from peft import LoraConfig

        lora_config = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                                 lora_dropout=model_args.lora_dropout, target_modules=DEFAULT_LORA_TARGETS,
                                 task_type="CAUSAL_LM")  # fmt: skip
    trainer = AdaLlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=AdaLlavaDataCollator(pad_token_id=processor.tokenizer.pad_token_id),
        train_preset=model_args.train_preset,
        lora_config=lora_config,
        callbacks=callbacks,
    )
    trainer.train()

    output_dir = training_args.output_dir
    if model_args.train_preset == "lora":
        trainer.save_model(os.path.join(output_dir, "adapter"))
        if not training_args.deepspeed:  # ZeRO-3 partitions the weights: merge the saved adapter offline
            merged = trainer.model.merge_and_unload()
            if training_args.should_save:
                merged.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if training_args.should_save:
        processor.save_pretrained(output_dir)
        print("saved to", output_dir)


if __name__ == "__main__":
    main()
