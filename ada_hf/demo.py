"""Offline demo of `model.generate(..., latency=b)`: a trained tiny AdaLLaVA answering questions about a picture.

Tooling, not remote code: this module is never copied next to a checkpoint. Run it with `ada-hf demo --text` (or
`bash run.sh demo` on a fresh machine); `ada-hf demo` serves the same models in the web app.

By default the demo loads the tiny AdaLLaVA models shipped in `ada_hf/demo_model/` (L and H, 4 MB each), trained on
the synthetic shapes-and-colours VQA task of `ada_hf/synthetic_vqa.py` by `benchmarks/e2e_synthetic_vqa.py
--save-demo`, and asks them one question of each family about a held-out picture under several budgets: the answers,
the plans and the timings are real (the models are weak: see `ada_hf/demo_model/README.md`). With `random_weights`
(`--random`) it builds instead a model shaped like LLaVA-1.5-7B where budgets are concerned (32 decoder layers of 32
heads, 16 prefix layers, scheduler rank 8, a 336px/patch-14 CLIP tower giving 576 image tokens), narrow (hidden size
256) and with random weights: its answers are gibberish, its plans and timings are real at that depth.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image, ImageDraw

from .modeling_ada_llava import AdaLlavaForConditionalGeneration
from .processing_ada_llava import AdaLlavaProcessor
from .synthetic_vqa import Question, SceneObject, candidate_questions, draw_scene, is_test_scene, random_scene
from .tiny_model import build_tiny_model, tiny_config
from .tiny_processor import IMAGE_TOKEN, LATENCY_TOKEN, build_tiny_processor, build_tiny_tokenizer
from .visualize import _prompt  # the one prompt builder of the tooling (the processor's chat template)

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
DEMO_MAX_NEW_TOKENS = 12  # the random-weight model
TRAINED_MAX_NEW_TOKENS = 3  # the trained models answer one word, then </s>
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_SCENE_SEED = 3

RANDOM_WEIGHTS_NOTICE = (
    "NOTE: --random builds a model with RANDOM weights, so its answers are gibberish. The execution plans (layers and "
    "heads run per budget) and the timings are real. Without --random the demo runs the trained tiny models."
)
TRAINED_NOTICE = (
    "The demo models are tiny AdaLLaVA models (10 decoder layers, 32 px pictures) trained on 2 CPU cores on a "
    "synthetic task: 1-4 coloured shapes in a 2x2 grid, questions such as 'How many red objects are there?'. They know "
    "nothing else, and even there they are often wrong: their accuracy per budget is in ada_hf/demo_model/README.md. "
    "The plans and timings are real."
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


def load_trained_demo(scheduler_type: str = "L"):
    """Load the trained tiny demo model of a variant and its processor from `ada_hf/demo_model/<variant>`.

    Returns:
        `(AdaLlavaForConditionalGeneration, AdaLlavaProcessor)`: the model (eval mode, float32) and the processor.
    """
    if scheduler_type not in DEMO_VARIANTS:
        raise ValueError(f"scheduler_type={scheduler_type!r}: the demo models are 'L' and 'H'.")
    path = DEMO_MODEL_DIR / scheduler_type
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No trained demo model at {path}: regenerate it with `python benchmarks/e2e_synthetic_vqa.py "
            "--save-demo`, or run the random-weight demo (--random)."
        )
    # float32: the weights are stored in float16; the budget quantisation and the CPU kernels expect float32.
    model = AdaLlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, AdaLlavaProcessor.from_pretrained(path)


def demo_task(scheduler_type: str = "L") -> dict:
    """The synthetic task the demo model was trained on (`synthetic_task.json` next to its weights): `image_size`,
    `grid`, `colors`, `families`."""
    path = DEMO_MODEL_DIR / scheduler_type / "synthetic_task.json"
    if not path.is_file():
        raise FileNotFoundError(f"No {path}: regenerate the demo models with `python benchmarks/e2e_synthetic_vqa.py "
                                "--save-demo`.")  # fmt: skip
    return json.loads(path.read_text())


def demo_scene(task: dict, seed: int = DEMO_SCENE_SEED, min_objects: int = 3) -> tuple[SceneObject, ...]:
    """A scene of the task with at least `min_objects` objects whose content is in the held-out test split."""
    rng = random.Random(seed)
    while True:
        objects = random_scene(rng, task["image_size"], task["grid"], tuple(task["colors"]))
        if len(objects) >= min(min_objects, task["grid"] ** 2) and is_test_scene(objects):
            return objects


def demo_questions(objects, task: dict, seed: int = DEMO_SCENE_SEED) -> list[Question]:
    """One question of each of the task's families about the scene (those that can be asked), chosen by `seed`."""
    rng = random.Random(seed)
    questions = []
    for kind in task["families"]:
        options = candidate_questions(objects, kind, tuple(task["colors"]), task["grid"])
        if options:
            questions.append(rng.choice(options))
    return questions


def demo_examples(task: dict, count: int = 3) -> list[tuple[Image.Image, str]]:
    """`count` held-out pictures of the task, each with one of its questions (the web app's examples)."""
    examples = []
    for k in range(count):
        objects = demo_scene(task, DEMO_SCENE_SEED + k, min_objects=2)
        questions = demo_questions(objects, task, DEMO_SCENE_SEED + k)
        examples.append((draw_scene(objects, task["image_size"]), questions[k % len(questions)].text))
    return examples


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
    return processor(images=demo_image(), text=_prompt(processor, question), return_tensors="pt")


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
    max_new_tokens: int | None = None,
    save_dir: str | Path | None = None,
    stream: TextIO | None = None,
    random_weights: bool = False,
) -> list[dict]:
    """Generate answers under each budget, for each variant, and print a table of answers, plans and times.

    Args:
        variants (`Sequence[str]`): `"L"` and/or `"H"`.
        budgets (`Sequence[float | None]`): Budgets in (0, 1]; `None` generates without a budget (no `<latency>`
            token, the scheduler does not run: the plain LLaVA forward).
        max_new_tokens (`int`, *optional*): Tokens to generate per answer (greedy); defaults to 3 for the trained
            models (one-word answers) and 12 with `random_weights`.
        save_dir (`str` or `Path`, *optional*): Also save each model and the processor there with `save_pretrained`
            (a remote-code checkpoint). With one variant the checkpoint is `save_dir`; with several,
            `save_dir/<variant>`.
        stream (`TextIO`, *optional*): Where to print; defaults to `sys.stdout`.
        random_weights (`bool`): Run the 7B-shaped random-weight model of [`build_demo`] on one open question
            instead of the trained tiny models of `ada_hf/demo_model` on questions of their task.

    Returns:
        `list[dict]`: one row per (variant, budget) with `variant`, `budget`, `latency_effective`, `layers_run`,
        `num_layers`, `heads_run`, `seconds`, `answers` (one per question) and `correct` (how many are right; None
        with random weights).
    """
    stream = stream if stream is not None else sys.stdout
    if max_new_tokens is None:
        max_new_tokens = DEMO_MAX_NEW_TOKENS if random_weights else TRAINED_MAX_NEW_TOKENS

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    if random_weights:
        say(RANDOM_WEIGHTS_NOTICE)
        shape = DEMO_SHAPE
        image_tokens = (shape["image_size"] // shape["patch_size"]) ** 2
        say(
            f"Demo model: {shape['num_layers']} decoder layers x {shape['num_heads']} heads, "
            f"{shape['num_prefix_layers']} prefix layers, scheduler rank {shape['scheduler_rank']}, hidden size "
            f"{shape['hidden_size']}, {image_tokens} image tokens ({shape['image_size']}px, patch "
            f"{shape['patch_size']}); seed {DEMO_SEED}, float32, {torch.get_num_threads()} CPU threads."
        )
    else:
        say(TRAINED_NOTICE)
    questions: list[Question] = []
    rows: list[dict] = []
    for variant in variants:
        if random_weights:
            model, processor = build_demo(variant)
            inputs = demo_inputs(processor)
        else:
            model, processor = load_trained_demo(variant)
            task = demo_task(variant)
            objects = demo_scene(task)
            questions = demo_questions(objects, task)
            image = draw_scene(objects, task["image_size"])
            prompts = [_prompt(processor, q.text) for q in questions]
            inputs = processor(images=[image] * len(prompts), text=prompts, padding=True, return_tensors="pt")
            text = model.config.get_text_config()
            say(
                f"Model {variant}: {text.num_hidden_layers} decoder layers x {text.num_attention_heads} heads (hidden "
                f"size {text.hidden_size}), {model.config.num_prefix_layers} prefix layers, "
                f"{model.config.image_seq_length} image tokens ({task['image_size']} px); float32, "
                f"{torch.get_num_threads()} CPU threads; from {DEMO_MODEL_DIR / variant}."
            )
        input_len = inputs["input_ids"].shape[1]
        if not rows:
            if random_weights:
                width, height = demo_image().size
                say(
                    f'Question: "{DEMO_QUESTION}" about a synthetic {width}x{height} picture; prompt {input_len} '
                    f"tokens; greedy, max_new_tokens={max_new_tokens}."
                )
            else:
                scene = "; ".join(f"{o.color} {o.shape} at row {o.row}, column {o.col}" for o in objects)
                say(f"Picture (held out from training): {scene}. Greedy, max_new_tokens={max_new_tokens}.")
                for number, q in enumerate(questions, 1):
                    say(f"  Q{number}: {q.text}  (right answer: {q.answer})")
        # One untimed warm-up call, so the first timed row does not pay for one-off start-up costs.
        model.generate(**inputs, latency=1.0, max_new_tokens=2, do_sample=False)
        for budget in budgets:
            start = time.perf_counter()
            out = model.generate(
                **inputs, latency=budget, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True
            )
            seconds = time.perf_counter() - start
            effective, layers_run, heads_run = _plan_summary(model, out)
            decoded = processor.batch_decode(out.sequences[:, input_len:], skip_special_tokens=True)
            answers = [a.strip() for a in decoded]
            rows.append(
                dict(
                    variant=variant,
                    budget=budget,
                    latency_effective=effective,
                    layers_run=layers_run,
                    num_layers=model.config.get_text_config().num_hidden_layers,
                    heads_run=heads_run,
                    seconds=seconds,
                    answers=answers,
                    correct=None if random_weights else sum(a == q.answer for a, q in zip(answers, questions)),
                )
            )
        if save_dir is not None:
            target = Path(save_dir) if len(variants) == 1 else Path(save_dir) / variant
            model.save_pretrained(target)
            processor.save_pretrained(target)
            say(f"Saved the {variant} demo model and its processor to {target} (load with trust_remote_code=True).")

    def answer_cell(row: dict) -> str:
        if random_weights:
            return repr(row["answers"][0])
        return f"{' | '.join(row['answers'])}  ({row['correct']}/{len(row['answers'])} right)"

    text = model.config.get_text_config()
    full_heads = text.num_hidden_layers * text.num_attention_heads
    answer_header = "answer (random weights)" if random_weights else f"answers to Q1..Q{len(questions)}"
    say()
    say(
        format_table(
            ["variant", "budget", "effective", "layers run", "heads run", "time (s)", answer_header],
            [
                [
                    r["variant"],
                    "none" if r["budget"] is None else f"{r['budget']:.2f}",
                    f"{r['latency_effective']:.3f}",
                    f"{r['layers_run']}/{r['num_layers']}",
                    f"{r['heads_run']}/{full_heads}",
                    f"{r['seconds']:.2f}" if random_weights else f"{r['seconds']:.3f}",
                    answer_cell(r),
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
        "the heads executed over all layers (of the first question's plan). Times are wall-clock for the whole "
        "generate call on this CPU (all questions in one batch); another busy process makes them erratic "
        "(OMP_WAIT_POLICY=PASSIVE steadies them, at some cost in speed)."
    )
    say(RANDOM_WEIGHTS_NOTICE if random_weights else TRAINED_NOTICE)
    return rows


__all__ = [
    "DEMO_BUDGETS",
    "DEMO_MODEL_DIR",
    "DEMO_SHAPE",
    "build_demo",
    "demo_examples",
    "demo_image",
    "demo_inputs",
    "demo_questions",
    "demo_scene",
    "demo_task",
    "format_table",
    "load_trained_demo",
    "run_demo",
]
