"""Offline demo of `model.generate(..., latency=b)` on a small, deterministic AdaLLaVA model.

Tooling, not remote code: this module is never copied next to a checkpoint. Run it with `ada-hf demo` (or
`python -m ada_hf demo`, or `bash run.sh demo` on a fresh machine).

The demo model is shaped like LLaVA-1.5-7B where budgets are concerned (32 decoder layers of 32 heads, 16 prefix
layers, scheduler rank 8, a 336px/patch-14 CLIP tower giving 576 image tokens) but is narrow (hidden size 256) and its
weights are random: the answers are gibberish, the execution plans and the timings are real.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image, ImageDraw

from .tiny_model import build_tiny_model, tiny_config
from .tiny_processor import IMAGE_TOKEN, LATENCY_TOKEN, build_tiny_processor, build_tiny_tokenizer

# 7B-shaped where budgets are concerned, narrow everywhere else.
DEMO_SHAPE = dict(
    num_layers=32,
    num_heads=32,
    num_prefix_layers=16,
    scheduler_rank=8,
    hidden_size=256,
    intermediate_size=688,
    image_size=336,
    patch_size=14,
    vision_hidden_size=16,
    vision_layers=24,  # CLIP-L's depth, so the published iLLaVA layers exist (narrow: 16 wide)
)
DEMO_SEED = 0
DEMO_VARIANTS = ("L", "H")
DEMO_BUDGETS: tuple[float | None, ...] = (None, 1.0, 0.85, 0.75, 0.6, 0.5)
DEMO_QUESTION = "What is in the picture?"
DEMO_MAX_NEW_TOKENS = 12

RANDOM_WEIGHTS_NOTICE = (
    "NOTE: the demo model has RANDOM weights, so its answers are gibberish. The execution plans (layers and heads "
    "run per budget) and the timings are real. A trained demo model does not exist yet."
)


def build_demo(scheduler_type: str = "L", seed: int = DEMO_SEED):
    """Build the demo model and its processor, offline and deterministically.

    Args:
        scheduler_type (`str`): `"L"` (whole layers) or `"H"` (groups of heads and MLP neurons).
        seed (`int`, *optional*): Seed of the random weights.

    Returns:
        `(AdaLlavaForConditionalGeneration, AdaLlavaProcessor)`: the model (eval mode, float32) and the processor.
    """
    if scheduler_type not in DEMO_VARIANTS:
        raise ValueError(f"scheduler_type={scheduler_type!r}: the demo builds 'L' or 'H'.")
    tokenizer = build_tiny_tokenizer()
    processor = build_tiny_processor(
        tokenizer, image_size=DEMO_SHAPE["image_size"], patch_size=DEMO_SHAPE["patch_size"]
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    latency_token_id = tokenizer.convert_tokens_to_ids(LATENCY_TOKEN)
    config = tiny_config(
        vocab_size=len(tokenizer),
        image_token_id=image_token_id,
        latency_token_id=latency_token_id,
        scheduler_type=scheduler_type,
        pad_token_id=tokenizer.pad_token_id,
        **DEMO_SHAPE,
    )
    model = build_tiny_model(config, seed=seed)
    generation_config = model.generation_config
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


def demo_image(width: int = 480, height: int = 360) -> Image.Image:
    """A synthetic picture drawn with PIL, the same on every call: sky, grass, a sun, a house and a tree."""
    image = Image.new("RGB", (width, height), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    ground = int(height * 0.68)
    draw.rectangle([0, ground, width, height], fill=(70, 150, 60))
    draw.ellipse([width - 110, 25, width - 30, 105], fill=(250, 210, 40))
    draw.rectangle([60, ground - 110, 210, ground], fill=(190, 60, 50))
    draw.polygon([(45, ground - 110), (135, ground - 180), (225, ground - 110)], fill=(110, 70, 40))
    draw.rectangle([115, ground - 60, 155, ground], fill=(80, 50, 30))
    draw.rectangle([300, ground - 90, 322, ground], fill=(100, 65, 35))
    draw.ellipse([262, ground - 170, 360, ground - 70], fill=(40, 120, 45))
    return image


def demo_inputs(processor, question: str = DEMO_QUESTION):
    """The vicuna_v1 prompt for `question` about [`demo_image`], processed into tensors."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return processor(images=demo_image(), text=prompt, return_tensors="pt")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """A plain-text table: columns padded to their widest cell; `right[i]` right-aligns column `i`."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = list(right) if right is not None else [False] * len(headers)

    def line(row):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(row) for row in cells[1:]])


def _plan_summary(model, out) -> tuple[float, int, int]:
    """(effective budget, layers run, heads run) of row 0; the full model when no plan was made (no budget)."""
    text = model.config.get_text_config()
    plan = getattr(out, "execution_plan", None)
    if plan is None:
        return 1.0, text.num_hidden_layers, text.num_hidden_layers * text.num_attention_heads
    heads = plan[0]
    return float(out.latency_effective[0]), int((heads != -1).sum()), int(heads.clamp(min=0).sum())


def run_demo(
    variants: Sequence[str] = DEMO_VARIANTS,
    budgets: Sequence[float | None] = DEMO_BUDGETS,
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS,
    save_dir: str | Path | None = None,
    stream: TextIO | None = None,
) -> list[dict]:
    """Generate an answer about a synthetic image under each budget, for each variant, and print a table.

    Args:
        variants (`Sequence[str]`): `"L"` and/or `"H"`.
        budgets (`Sequence[float | None]`): Budgets in (0, 1]; `None` generates without a budget (no `<latency>`
            token, the scheduler does not run: the plain LLaVA forward).
        max_new_tokens (`int`): Tokens to generate per answer (greedy).
        save_dir (`str` or `Path`, *optional*): Also save each model and the processor there with `save_pretrained`
            (a remote-code checkpoint). With one variant the checkpoint is `save_dir`; with several,
            `save_dir/<variant>`.
        stream (`TextIO`, *optional*): Where to print; defaults to `sys.stdout`.

    Returns:
        `list[dict]`: one row per (variant, budget) with `variant`, `budget`, `latency_effective`, `layers_run`,
        `heads_run`, `seconds` and `answer`.
    """
    stream = stream if stream is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    say(RANDOM_WEIGHTS_NOTICE)
    shape = DEMO_SHAPE
    image_tokens = (shape["image_size"] // shape["patch_size"]) ** 2
    say(
        f"Demo model: {shape['num_layers']} decoder layers x {shape['num_heads']} heads, "
        f"{shape['num_prefix_layers']} prefix layers, scheduler rank {shape['scheduler_rank']}, hidden size "
        f"{shape['hidden_size']}, {image_tokens} image tokens ({shape['image_size']}px, patch {shape['patch_size']}); "
        f"seed {DEMO_SEED}, float32, {torch.get_num_threads()} CPU threads."
    )
    rows: list[dict] = []
    for variant in variants:
        model, processor = build_demo(variant)
        inputs = demo_inputs(processor)
        input_len = inputs["input_ids"].shape[1]
        if not rows:
            width, height = demo_image().size
            say(
                f'Question: "{DEMO_QUESTION}" about a synthetic {width}x{height} picture; prompt {input_len} tokens; '
                f"greedy, max_new_tokens={max_new_tokens}."
            )
        # One untimed warm-up call, so the first timed row does not pay for one-off start-up costs.
        model.generate(**inputs, latency=1.0, max_new_tokens=2, do_sample=False)
        for budget in budgets:
            start = time.perf_counter()
            out = model.generate(
                **inputs,
                latency=budget,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
            )
            seconds = time.perf_counter() - start
            effective, layers_run, heads_run = _plan_summary(model, out)
            answer = processor.batch_decode(out.sequences[:, input_len:], skip_special_tokens=True)[0]
            rows.append(
                dict(
                    variant=variant,
                    budget=budget,
                    latency_effective=effective,
                    layers_run=layers_run,
                    heads_run=heads_run,
                    seconds=seconds,
                    answer=answer,
                )
            )
        if save_dir is not None:
            target = Path(save_dir) if len(variants) == 1 else Path(save_dir) / variant
            model.save_pretrained(target)
            processor.save_pretrained(target)
            say(f"Saved the {variant} demo model and its processor to {target} (load with trust_remote_code=True).")

    text = model.config.get_text_config()
    full_heads = text.num_hidden_layers * text.num_attention_heads
    say()
    say(
        format_table(
            ["variant", "budget", "effective", "layers run", "heads run", "time (s)", "answer (random weights)"],
            [
                [
                    r["variant"],
                    "none" if r["budget"] is None else f"{r['budget']:.2f}",
                    f"{r['latency_effective']:.3f}",
                    f"{r['layers_run']}/{text.num_hidden_layers}",
                    f"{r['heads_run']}/{full_heads}",
                    f"{r['seconds']:.2f}",
                    repr(r["answer"]),
                ]
                for r in rows
            ],
            right=[False, True, True, True, True, True, False],
        )
    )
    say()
    say(
        "effective = (U_pre + u) / U_tot with u = max(0, floor(U_tot * budget) - U_pre); 'none' runs the plain LLaVA "
        "forward (no <latency> token, no scheduler). Layers run counts layers with at least one head; heads run sums "
        "the heads executed over all layers. Times are wall-clock for the whole generate call on this CPU; another "
        "busy process makes them erratic (OMP_WAIT_POLICY=PASSIVE steadies them, at some cost in speed)."
    )
    say(RANDOM_WEIGHTS_NOTICE)
    return rows


__all__ = ["DEMO_BUDGETS", "DEMO_SHAPE", "build_demo", "demo_image", "demo_inputs", "format_table", "run_demo"]
