"""Train AdaLLaVA on LLaVA-1.5 instruction data with `AdaLlavaTrainer` (the released recipe: ADALLAVA.md section 8).

    # From a LLaVA-1.5 checkpoint converted with a new, untrained scheduler:
    #   ada-hf convert liuhaotian/llava-v1.5-7b llava-ada-L --scheduler-type L --num-prefix-layers 16
    python examples/train_scheduler.py --model llava-ada-L --data_path llava_v1_5_mix665k.json \\
        --image_folder LLaVA-Finetune/images --output_dir checkpoints/ada-llava-L-v1.5-7b --bf16

    # Offline smoke run on a CPU: a tiny random model and a few generated samples.
    python examples/train_scheduler.py --tiny --output_dir /tmp/ada-tiny

Defaults follow `train_script.sh` per device (batch 2, accumulation 4, lr 1e-5, one epoch, cosine, 3% warmup,
model_max_length 2048, `--preset full`: scheduler + projector + LLM, CLIP frozen). Not reproduced: DeepSpeed ZeRO-3
(pass `--deepspeed` through your own launcher) and LLaVA's `group_by_modality_length` sampler (the dataset exposes
`modality_lengths` for one; the collator handles batches that mix image and text-only samples).
"""

import argparse
import json
import os

import torch
from PIL import Image
from transformers import TrainingArguments

from ada_hf import AdaLlavaForConditionalGeneration, AdaLlavaProcessor
from ada_hf.llava_data import AdaLlavaDataCollator, LlavaSupervisedDataset, load_llava_dataset
from ada_hf.trainer import TRAIN_PRESETS, AdaLlavaTrainer


def tiny_setup(folder: str):
    """A tiny random model, its processor, and a small LLaVA-style JSON with images, written under `folder`."""
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
    model = build_tiny_model(config)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    records = []
    for i, (color, name) in enumerate([((200, 30, 30), "red"), ((30, 30, 200), "blue"), ((30, 160, 30), "green")]):
        Image.new("RGB", (40 + 8 * i, 30), color).save(os.path.join(folder, "images", f"{i}.png"))
        records.append(
            {
                "id": i,
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the image?"},
                    {"from": "gpt", "value": f"It is {name}."},
                    {"from": "human", "value": "Is it a photo?"},
                    {"from": "gpt", "value": "No."},
                ],
            }
        )
    records.append(
        {
            "id": "text-0",
            "conversations": [
                {"from": "human", "value": "Why is the sky blue?"},
                {"from": "gpt", "value": "It is the light of the sun."},
            ],
        }
    )
    data_path = os.path.join(folder, "data.json")
    with open(data_path, "w") as f:
        json.dump(records, f)
    return model, processor, data_path, os.path.join(folder, "images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an ada_hf checkpoint with a scheduler (scheduler_type L or H)")
    parser.add_argument("--data_path", help="LLaVA instruction JSON (or .jsonl)")
    parser.add_argument("--image_folder", help="folder the samples' image paths are relative to")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="full", help="what to train")
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--skip_bad_samples", action="store_true", help="skip and count bad samples, do not stop")
    parser.add_argument("--check_images", action="store_true", help="decode every image before training (slow)")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--grad_accum", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="offline smoke run with a tiny random model on CPU")
    args = parser.parse_args()

    if args.tiny:
        model, processor, data_path, image_folder = tiny_setup(os.path.join(args.output_dir, "tiny-data"))
        overrides = dict(max_steps=4, learning_rate=1e-3, use_cpu=True, logging_steps=1, dataloader_num_workers=0)
        overrides.update(per_device_train_batch_size=2, gradient_accumulation_steps=1, save_strategy="no")
    else:
        if not (args.model and args.data_path):
            parser.error("--model and --data_path are needed (or --tiny)")
        dtype = torch.bfloat16 if args.bf16 else None
        model = AdaLlavaForConditionalGeneration.from_pretrained(args.model, dtype=dtype)
        processor = AdaLlavaProcessor.from_pretrained(args.model)
        data_path, image_folder, overrides = args.data_path, args.image_folder, {}

    dataset = LlavaSupervisedDataset(
        load_llava_dataset(data_path),
        processor,
        image_folder,
        latency_token_id=model.config.latency_token_id,
        max_length=args.max_length,
        on_bad_sample="skip" if args.skip_bad_samples else "raise",
        check_images=args.check_images,
    )
    print(f"{len(dataset)} samples, {len(dataset.skipped)} skipped")

    training_args = TrainingArguments(
        **{
            **dict(
                output_dir=args.output_dir,
                per_device_train_batch_size=args.batch_size,
                gradient_accumulation_steps=args.grad_accum,
                learning_rate=args.lr,
                weight_decay=0.0,
                warmup_steps=0.03,  # a float below 1 is a ratio of the training steps
                lr_scheduler_type="cosine",
                num_train_epochs=args.epochs,
                max_steps=args.max_steps,
                bf16=args.bf16,
                activation_checkpointing=args.gradient_checkpointing,
                save_strategy="steps",
                save_steps=500,
                save_total_limit=1,
                logging_steps=10,
                dataloader_num_workers=args.workers,
                remove_unused_columns=False,  # the collator builds exactly the model's inputs
                report_to="none",
            ),
            **overrides,
        }
    )
    trainer = AdaLlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=AdaLlavaDataCollator(pad_token_id=processor.tokenizer.pad_token_id),
        train_preset=args.preset,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print("saved to", args.output_dir)


if __name__ == "__main__":
    main()
