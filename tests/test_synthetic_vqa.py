"""The synthetic VQA task generator and a smoke run of the end-to-end benchmark."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ada_hf.synthetic_vqa import (
    ANSWERS,
    COLORS,
    Question,
    answer_question,
    balanced_question,
    cell_name,
    draw_scene,
    family_answers,
    generate_split,
    is_test_scene,
    scene_signature,
    task_words,
    vocabulary,
    write_llava_dataset,
)
from ada_hf.tiny_processor import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
NUMBERS = ["zero", "one", "two", "three", "four"]


def _samples(split, n, seed=0, per_image=2, size=48):
    return list(generate_split(split, n, per_image, seed=seed, image_size=size))


def test_generation_is_deterministic_and_seeded():
    a = [(scene, [s.question for s in samples]) for scene, samples in _samples("train", 30)]
    b = [(scene, [s.question for s in samples]) for scene, samples in _samples("train", 30)]
    c = [(scene, [s.question for s in samples]) for scene, samples in _samples("train", 30, seed=1)]
    assert a == b and a != c
    scene = a[0][0]
    assert draw_scene(scene, 48).tobytes() == draw_scene(scene, 48).tobytes()


def test_answers_rederive_from_the_scene_and_the_pixels():
    for scene, samples in _samples("train", 200, per_image=3) + _samples("test", 100, per_image=3):
        assert 1 <= len(scene) <= 4
        cells = {(o.row, o.col) for o in scene}
        assert len(cells) == len(scene)  # one object per grid cell: no overlaps
        image = draw_scene(scene, 48)
        for o in scene:  # the object's colour is drawn at its centre
            assert image.getpixel((int(o.cx), int(o.cy))) == COLORS[o.color]
        for sample in samples:
            q = sample.question
            assert q.answer in ANSWERS
            assert answer_question(scene, q) == q.answer
            # An independent re-derivation from the scene description.
            if q.kind == "color":
                assert [o.color for o in scene if o.shape == q.shape] == [q.answer]
            elif q.kind == "count_color":
                assert NUMBERS.index(q.answer) == [o.color for o in scene].count(q.color)
            elif q.kind == "count_shape":
                assert NUMBERS.index(q.answer) == [o.shape for o in scene].count(q.shape)
            elif q.kind == "position":
                axis, sign = {"left": ("col", 1), "right": ("col", -1), "top": ("row", 1), "bottom": ("row", -1)}[
                    q.direction
                ]
                ordered = sorted(scene, key=lambda o: sign * getattr(o, axis))
                assert ordered[0].shape == q.answer
                assert len(scene) == 1 or getattr(ordered[0], axis) != getattr(ordered[1], axis)
            else:
                present = any(o.shape == q.shape and o.color == q.color for o in scene)
                assert q.answer == ("yes" if present else "no")


def test_smaller_worlds():
    colors = ("red", "green", "blue", "yellow")
    for scene, samples in generate_split("train", 200, 3, image_size=32, grid=2, colors=colors):
        assert all(o.row < 2 and o.col < 2 and o.color in colors for o in scene)
        image = draw_scene(scene, 32)
        for o in scene:
            assert image.getpixel((int(o.cx), int(o.cy))) == COLORS[o.color]
        for s in samples:
            assert answer_question(scene, s.question) == s.question.answer
            assert s.question.color in colors + (None,)


LOOKUPS = ("color_at", "shape_at", "count_color", "count_shape", "exists")


def test_lookup_questions_name_their_cell():
    assert cell_name(0, 0, 2) == "top left" and cell_name(1, 1, 2) == "bottom right"
    assert cell_name(1, 1, 3) == "middle" and cell_name(2, 1, 3) == "bottom middle"
    names = {(r, c): cell_name(r, c, 2) for r in range(2) for c in range(2)}
    for scene, samples in generate_split("train", 300, 3, image_size=32, grid=2, families=("color_at", "shape_at")):
        image = draw_scene(scene, 32)
        for s in samples:
            q = s.question
            assert q.kind in ("color_at", "shape_at") and names[q.cell] in q.text
            (obj,) = [o for o in scene if (o.row, o.col) == q.cell]
            assert q.answer == (obj.color if q.kind == "color_at" else obj.shape)
            assert image.getpixel((int(obj.cx), int(obj.cy))) == COLORS[obj.color]


def test_balanced_split_has_uniform_answers_per_family():
    colors = ("red", "green", "blue", "yellow")
    samples = [s for _, ss in generate_split("test", 1000, 1, image_size=32, grid=2, colors=colors, families=LOOKUPS,
                                             balanced=True) for s in ss]  # fmt: skip
    kinds = [s.question.kind for s in samples]
    assert kinds[:10] == list(LOOKUPS) * 2  # the families take turns
    for kind in LOOKUPS:
        answers = [s.question.answer for s in samples if s.question.kind == kind]
        choices = family_answers(kind, colors, grid=2)
        assert set(answers) == set(choices)
        assert max(answers.count(a) for a in choices) / len(answers) < 1.6 / len(choices)  # 200 draws per family
    for s in samples:
        assert answer_question(s.objects, s.question) == s.question.answer
        assert is_test_scene(s.objects)


def test_one_object_scenes_and_impossible_worlds():
    for scene, samples in generate_split("train", 50, 3, grid=2, families=LOOKUPS, balanced=True, max_objects=1):
        assert len(scene) == 1
        assert all(s.question.answer in ("zero", "one") for s in samples if s.question.kind.startswith("count"))
    with pytest.raises(ValueError, match="No test scene"):
        # A world too small for its test split (one colour, one object: 12 scenes, none of them in the test split)
        # makes the balanced generator give up instead of drawing forever.
        balanced_question(random.Random(0), "test", "shape_at", 32, grid=2, colors=("red",), test_fraction=1e-9,
                          max_objects=1)  # fmt: skip


def test_unaskable_questions_are_refused():
    scene = _samples("train", 50)
    for objects, _ in scene:
        shapes = [o.shape for o in objects]
        for shape in set(shapes):
            q = Question("color", "", "", shape=shape)
            assert (answer_question(objects, q) is None) == (shapes.count(shape) != 1)


def test_split_is_held_out_by_scene_content():
    train = _samples("train", 600, per_image=1)
    test = _samples("test", 200, per_image=1)
    train_sigs = {scene_signature(scene) for scene, _ in train}
    test_sigs = {scene_signature(scene) for scene, _ in test}
    assert not train_sigs & test_sigs
    assert all(is_test_scene(scene) for scene, _ in test)
    assert not any(is_test_scene(scene) for scene, _ in train)
    train_pairs = {(scene_signature(sc), s.question.text) for sc, ss in train for s in ss}
    assert not any((scene_signature(sc), s.question.text) in train_pairs for sc, ss in test for s in ss)


def test_answers_are_balanced_enough():
    answers = [s.question.answer for _, ss in _samples("train", 1500, per_image=1) for s in ss]
    kinds = [s.question.kind for _, ss in _samples("train", 1500, per_image=1) for s in ss]
    assert len(set(kinds)) == 5
    assert 0.35 < answers.count("yes") / (answers.count("yes") + answers.count("no")) < 0.65
    assert max(answers.count(a) for a in set(answers)) / len(answers) < 0.3  # no answer dominates


def test_every_question_and_answer_tokenizes_without_unk():
    tok = build_tiny_tokenizer(words=vocabulary())
    for word in task_words():
        assert tok.convert_tokens_to_ids(word) != tok.unk_token_id, word
    for _, samples in _samples("train", 100, per_image=3):
        for s in samples:
            ids = tok(s.question.text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert len(tok(s.question.answer, add_special_tokens=False)["input_ids"]) == 1  # one token per answer


def test_written_dataset_reads_through_llava_data(tmp_path):
    from ada_hf.llava_data import LlavaSupervisedDataset, load_llava_dataset
    from ada_hf.tiny_processor import build_tiny_processor

    paths = write_llava_dataset(tmp_path, 20, 10, questions_per_image=2, image_size=48, progress=False)
    records = json.load(open(paths["train"]))
    assert len(records) == 40 and len(json.load(open(paths["test"]))) == 10
    assert records[0]["conversations"][0]["value"].startswith("<image>\n")
    processor = build_tiny_processor(build_tiny_tokenizer(words=vocabulary()), image_size=48, patch_size=8)
    data = LlavaSupervisedDataset(load_llava_dataset(paths["train"], cache_dir=tmp_path / "cache"), processor,
                                  paths["images"], latency_token_id=processor.latency_token_id)  # fmt: skip
    sample = data[0]
    tok = processor.tokenizer
    supervised = sample["labels"][sample["labels"] != -100].tolist()
    assert tok.decode(supervised[:1]) == records[0]["conversations"][1]["value"]
    assert sample["pixel_values"].shape == (1, 3, 48, 48)
    # The evaluation prompt (the processor's chat template + the <latency> token generate appends) is exactly the
    # training prompt up to the answer.
    question = records[0]["conversations"][0]["value"].replace("<image>", "").strip()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    from PIL import Image

    image = Image.open(Path(paths["images"]) / records[0]["image"]).convert("RGB")
    ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
    first_label = next(i for i, label in enumerate(sample["labels"].tolist()) if label != -100)
    assert ids + [processor.latency_token_id] == sample["input_ids"][:first_label].tolist()


def test_dataset_is_reused_when_unchanged(tmp_path):
    write_llava_dataset(tmp_path, 5, 5, progress=False)
    stamp = (tmp_path / "train.json").stat().st_mtime_ns
    write_llava_dataset(tmp_path, 5, 5, progress=False)
    assert (tmp_path / "train.json").stat().st_mtime_ns == stamp
    write_llava_dataset(tmp_path, 6, 5, progress=False)
    assert (tmp_path / "train.json").stat().st_mtime_ns != stamp


def test_plans_have_the_budgeted_size():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from e2e_synthetic_vqa import first_k_plan, random_plan

    from ada_hf.tiny_model import build_tiny_model, tiny_config

    for variant, rank in (("L", 8), ("H", 2)):
        config = tiny_config(100, 97, 99, scheduler_type=variant, num_layers=6, num_heads=4, scheduler_rank=rank)
        sched = build_tiny_model(config).scheduler
        for units in range(sched.max_units + 1):
            for plan in (first_k_plan(sched, 3, units), random_plan(sched, 3, units, torch.Generator().manual_seed(0))):
                slots = plan.heads.sum((1, 2)) if variant == "H" else (plan.heads[:, :, 0] > 0).sum(1)
                per_unit = rank if variant == "H" else 1
                assert torch.equal(slots, torch.full((3,), float((sched.num_prefix_units + units) * per_unit)))
                assert torch.equal(plan.heads.sum(-1), plan.mlp_groups.sum(-1))  # as many MLP groups as heads
                assert plan.heads[:, : sched.num_prefix_layers].all()
        first = first_k_plan(sched, 1, 1)
        assert first.heads[0, sched.num_prefix_layers, 0] == 1  # the first unit goes to the first suffix layer


@pytest.mark.slow
def test_quick_pipeline_runs(tmp_path):
    """Every step of the benchmark at toy scale: data, base, AdaLLaVA-L/H, the 4 systems x 5 budgets, the report."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "e2e_synthetic_vqa.py"), "--quick", "--out", str(out),
           "--work", str(tmp_path / "work"), "--jobs", "1"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, timeout=300)
    report = json.loads((out / "e2e_vqa.json").read_text())
    for variant in ("L", "H"):
        for system in ("base-cut", "learned", "random", "first-k"):
            row = report["summary"][variant][system]
            assert set(row) == {"1.0", "0.85", "0.75", "0.6", "0.5"}
            assert all(0 <= cell["mean"] <= 100 for cell in row.values())
    assert (out / "e2e_vqa.md").exists() and (out / "e2e_vqa.png").stat().st_size > 1000
    random.seed(0)
