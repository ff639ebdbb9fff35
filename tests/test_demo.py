"""The offline demo: the shipped trained tiny models load, answer in their task's words, plan and time; the 7B-shaped
random-weight model still runs with --random."""

import io

import pytest
import torch

from ada_hf.cli import main
from ada_hf.demo import (
    DEMO_MODEL_DIR,
    demo_examples,
    demo_questions,
    demo_scene,
    demo_task,
    load_trained_demo,
    run_demo,
)
from ada_hf.synthetic_vqa import answer_question, family_answers, is_test_scene


@pytest.mark.parametrize("variant", ["L", "H"])
def test_shipped_demo_model_is_small_and_loads_as_float32(variant):
    files = {p.name: p.stat().st_size for p in (DEMO_MODEL_DIR / variant).iterdir()}
    assert {"config.json", "model.safetensors", "synthetic_task.json", "tokenizer.json"} <= set(files)
    assert sum(files.values()) < 5 * 2**20  # a tracked file over 5 MB would need a reason
    model, processor = load_trained_demo(variant)
    assert model.config.scheduler_type == variant and model.dtype == torch.float32 and not model.training
    assert model.config.vision_config.image_size == demo_task(variant)["image_size"]
    assert processor.tokenizer.convert_tokens_to_ids("<latency>") == model.config.latency_token_id


def test_load_trained_demo_refuses_an_unknown_variant():
    with pytest.raises(ValueError, match="'X'"):
        load_trained_demo("X")


def test_demo_scene_is_held_out_and_its_questions_are_answered_right():
    task = demo_task()
    objects = demo_scene(task)
    assert is_test_scene(objects) and len(objects) >= 3
    assert all(o.color in task["colors"] and o.row < task["grid"] and o.col < task["grid"] for o in objects)
    questions = demo_questions(objects, task)
    assert [q.kind for q in questions] == task["families"]  # every family can be asked about a 3-object scene
    assert all(answer_question(objects, q) == q.answer for q in questions)
    examples = demo_examples(task, count=3)
    assert len(examples) == 3 and all(image.size == (task["image_size"],) * 2 for image, _ in examples)
    assert len({question for _, question in examples}) == 3


def test_trained_demo_answers_in_its_task_words_under_every_budget():
    stream = io.StringIO()
    rows = run_demo(variants=("L", "H"), budgets=(None, 1.0, 0.5), stream=stream)
    assert [(r["variant"], r["budget"]) for r in rows] == [(v, b) for v in "LH" for b in (None, 1.0, 0.5)]
    task = demo_task()
    questions = demo_questions(demo_scene(task), task)
    for row in rows:
        assert len(row["answers"]) == len(questions)
        # Trained, not random: every answer is one its question's family can have (a colour, a count, yes/no...).
        for answer, question in zip(row["answers"], questions):
            assert answer in family_answers(question.kind, tuple(task["colors"]), task["grid"]), (row, question)
        assert row["correct"] == sum(a == q.answer for a, q in zip(row["answers"], questions))
    full = [r for r in rows if r["budget"] in (None, 1.0)]
    assert all(r["latency_effective"] == 1.0 and r["layers_run"] == r["num_layers"] for r in full)
    half = [r for r in rows if r["budget"] == 0.5]
    assert all(r["latency_effective"] == 0.5 for r in half)
    assert half[0]["layers_run"] == half[0]["num_layers"] // 2  # L drops whole layers
    out = stream.getvalue()
    assert "right answer:" in out and "/5 right)" in out and "RANDOM" not in out


def test_random_demo_still_runs():
    stream = io.StringIO()
    rows = run_demo(variants=("L",), budgets=(0.5,), max_new_tokens=2, stream=stream, random_weights=True)
    assert rows[0]["layers_run"] == 16 and rows[0]["num_layers"] == 32 and rows[0]["correct"] is None
    assert "RANDOM" in stream.getvalue()


def test_cli_text_demo_runs_the_trained_model_or_the_random_one(capsys):
    assert main(["demo", "--text", "--variant", "H", "--budgets", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "Model H: 10 decoder layers" in out and "right)" in out
    assert main(["demo", "--text", "--random", "--variant", "L", "--budgets", "0.5", "--max-new-tokens", "1"]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
