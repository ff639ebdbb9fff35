"""The web demo's functions (ada_hf/web_demo.py) on tiny random-weight models, without a browser.

The browser test (test_web_demo_browser.py) drives the real app; here every function the page calls is checked on
its own: validation messages, streaming, the plan and metrics against generate's own report, token reduction, budget
comparison, timeouts and cancellation (no generate thread left behind), model loading.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ada_hf import web_demo as wd
from ada_hf.demo import demo_image
from ada_hf.tiny_model import build_tiny_model, tiny_config
from ada_hf.tiny_processor import IMAGE_TOKEN, LATENCY_TOKEN, build_tiny_processor, build_tiny_tokenizer

# Small enough for 2 CPU cores, shaped so that every feature of the page has something to show: 336px / patch 14
# (576 image tokens, the iLLaVA presets' token counts), 10 CLIP layers (iLLaVA's vision layers 5-8 exist), 10 decoder
# layers of which 4 are prefix layers (llavolta-light's layer 16 does not exist: an unsupported preset).
TINY_WEB_SHAPE = dict(
    num_layers=10,
    num_heads=4,
    num_prefix_layers=4,
    scheduler_rank=2,
    hidden_size=32,
    intermediate_size=64,
    image_size=336,
    patch_size=14,
    vision_layers=10,
)
QUESTION = "What is in the picture?"


def tiny_web_models(variants=("L", "H"), seed: int = 0) -> dict[str, wd.DemoModel]:
    """Tiny random-weight models with a real processor (LLaVA-1.5 pre-processing at 336 px), labelled by variant;
    `None` in `variants` builds a model without a scheduler (label "plain")."""
    tokenizer = build_tiny_tokenizer()
    processor = build_tiny_processor(tokenizer, image_size=336, patch_size=14)
    models = {}
    for variant in variants:
        config = tiny_config(
            vocab_size=len(tokenizer),
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            latency_token_id=tokenizer.convert_tokens_to_ids(LATENCY_TOKEN),
            scheduler_type=variant,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_WEB_SHAPE,
        )
        model = build_tiny_model(config, seed=seed)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        label = variant or "plain"
        models[label] = wd.DemoModel(label, model, processor, "tests")
    return models


@pytest.fixture(scope="module")
def models():
    return tiny_web_models()


def _generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ada-hf-web-demo-generate" and t.is_alive()]


def _wait_no_generate_thread(seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while _generate_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _generate_threads(), "a generate thread was left running"


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
def test_load_image_accepts_paths_pil_and_arrays(tmp_path):
    path = tmp_path / "house.png"
    demo_image().save(path)
    from_path = wd.load_image(str(path))
    assert from_path.mode == "RGB" and from_path.size == (480, 360)
    assert wd.load_image(demo_image().convert("L")).mode == "RGB"
    from_array = wd.load_image(np.zeros((20, 30, 3), dtype=np.uint8))
    assert from_array.size == (30, 20)


def test_load_image_refuses_what_it_cannot_decode(tmp_path, monkeypatch):
    # Pillow's default; lmms-eval (imported by other tests) turns on loading truncated files process-wide.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(wd.DemoInputError, match="'broken.png' could not be decoded") as refused:
        wd.load_image(str(broken))
    assert str(tmp_path) not in str(refused.value)  # the upload's temporary folder is noise to the reader
    truncated = tmp_path / "truncated.png"
    demo_image().save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(wd.DemoInputError, match="could not be decoded"):
        wd.load_image(str(truncated))
    with pytest.raises(wd.DemoInputError, match="upload an image"):
        wd.load_image(None)
    with pytest.raises(wd.DemoInputError, match="could not be decoded"):
        wd.load_image(str(tmp_path / "missing.png"))


def test_budgets_are_checked_with_clear_messages():
    assert wd.parse_budgets("1.0, 0.75 0.5") == [1.0, 0.75, 0.5]
    assert wd.check_budget("0.6") == 0.6
    for bad, message in [("0", "outside"), ("1.5", "outside"), ("-0.2", "outside"), ("abc", "not a number")]:
        with pytest.raises(wd.DemoInputError, match=message):
            wd.check_budget(bad)
    with pytest.raises(wd.DemoInputError, match="Give the budgets"):
        wd.parse_budgets(" , ")
    with pytest.raises(wd.DemoInputError, match="not a number"):
        wd.parse_budgets("1.0, fast")
    with pytest.raises(wd.DemoInputError, match="At most"):
        wd.parse_budgets(", ".join(["0.5"] * (wd.MAX_COMPARE_BUDGETS + 1)))


def test_validate_request_messages(models):
    image = demo_image()
    with pytest.raises(wd.DemoInputError, match="type a question"):
        wd.validate_request(models, image, "   ", 0.6, "L")
    with pytest.raises(wd.DemoInputError, match="type a question"):
        wd.validate_request(models, image, None, 0.6, "L")
    with pytest.raises(wd.DemoInputError, match="keep it under"):
        wd.validate_request(models, image, "x" * (wd.MAX_QUESTION_CHARS + 1), 0.6, "L")
    with pytest.raises(wd.DemoInputError, match="upload an image"):
        wd.validate_request(models, None, QUESTION, 0.6, "L")
    with pytest.raises(wd.DemoInputError, match="'Z' is not loaded"):
        wd.validate_request(models, image, QUESTION, 0.6, "Z")
    with pytest.raises(wd.DemoInputError, match="No model is loaded"):
        wd.validate_request({}, image, QUESTION, 0.6)
    with pytest.raises(wd.DemoInputError, match="outside"):
        wd.validate_request(models, image, QUESTION, 0.0, "L")
    with pytest.raises(wd.DemoInputError, match="max new tokens"):
        wd.validate_request(models, image, QUESTION, 0.6, "L", max_new_tokens=0)
    with pytest.raises(wd.DemoInputError, match="Unknown token reduction"):
        wd.validate_request(models, image, QUESTION, 0.6, "L", token_reduction="magic")
    # The model's own reason: llavolta-light pools at decoder layer 16, the tiny model has 10.
    with pytest.raises(wd.DemoInputError, match="cannot run llavolta-light: llavolta_layer=16"):
        wd.validate_request(models, image, QUESTION, 0.6, "L", token_reduction="llavolta-light")

    request = wd.validate_request(models, image, f"  {QUESTION} ", 0.6, "L", "none", "8")
    assert request.question == QUESTION and request.token_reduction is None and request.max_new_tokens == 8
    assert request.notes == []
    assert request.entry is models["L"]  # no variant given: the first model
    assert wd.validate_request(models, image, QUESTION, 0.6).entry is models["L"]


def test_supported_reductions_follow_the_models_validation(models):
    verdicts = wd.supported_reductions(models["L"].model)
    assert verdicts["illava-image"] is None and verdicts["illava-video"] is None
    assert verdicts["llavolta-heavy"] is None
    assert "llavolta_layer=16" in verdicts["llavolta-light"]


def test_a_budget_below_the_prefix_runs_at_the_smallest_budget_with_a_note(models):
    smallest = wd.min_budget(models["L"].model)
    assert smallest == pytest.approx(0.4)  # 4 prefix layers of 10
    request = wd.validate_request(models, demo_image(), QUESTION, 0.1, "L", max_new_tokens=2)
    assert len(request.notes) == 1 and "smallest budget is 0.40" in request.notes[0]
    result = wd.run_request(request)
    assert result.latency_effective == pytest.approx(smallest)
    assert result.layers_run == 4 and result.notes == request.notes


# ---------------------------------------------------------------------------------------------------------------------
# Running a request
@pytest.mark.parametrize("variant", ["L", "H"])
def test_stream_request_matches_generate(models, variant):
    entry = models[variant]
    request = wd.validate_request(models, demo_image(), QUESTION, 0.7, variant, max_new_tokens=6)
    updates = list(wd.stream_request(request))
    assert all(result is None for _, result in updates[:-1])
    answer, result = updates[-1]
    assert isinstance(result, wd.DemoResult) and answer == result.answer
    for (partial, _), (longer, _) in zip(updates, updates[1:]):
        assert longer.startswith(partial.rstrip())  # the answer only grows while streaming

    # The same request through plain generate: the same tokens, plan and cost report.
    processor = entry.processor
    inputs = processor(images=demo_image(), text=wd._prompt(processor, QUESTION), return_tensors="pt")
    out = entry.model.generate(**inputs, latency=0.7, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    new_tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
    assert result.answer == processor.decode(new_tokens, skip_special_tokens=True).strip()
    assert result.heads == out.execution_plan[0].tolist()
    assert result.mlp_groups == out.mlp_groups_executed[0].tolist()
    assert result.latency_effective == pytest.approx(float(out.latency_effective[0]))
    assert result.executed_units == int(out.executed_units[0])
    assert result.efficiency == out.efficiency[0].to_dict()
    assert result.generated_tokens == new_tokens.numel()
    assert result.prefill_seconds > 0 and result.decode_seconds >= 0

    metrics = result.metrics()
    assert metrics["image_tokens"] == 576 and metrics["model"] == variant
    assert metrics["layers_run"] == f"{result.layers_run}/10"
    assert metrics["total_gflops"] == pytest.approx(out.efficiency[0].total_flops / 1e9)
    if result.generated_tokens > 1:
        decode_rate = (result.generated_tokens - 1) / result.decode_seconds
        assert metrics["decode_tokens_per_second"] == pytest.approx(decode_rate)
    seconds = result.prefill_seconds + result.decode_seconds
    assert metrics["tokens_per_second"] == pytest.approx(result.generated_tokens / seconds)
    _wait_no_generate_thread()


def test_token_reduction_shows_fewer_image_tokens_and_the_kept_patches(models):
    request = wd.validate_request(models, demo_image(), QUESTION, 1.0, "L", "illava-image", max_new_tokens=2)
    result = wd.run_request(request)
    assert result.token_reduction == "illava-image"
    assert result.efficiency["image_tokens"] == 576 - 4 * 72  # four vision merge layers removing 72 tokens each
    assert isinstance(result.kept_patches, Image.Image) and result.kept_patches.width > result.kept_patches.height
    # LLaVolta pools windows and drops no patch: no picture, and a note says why.
    pooled = wd.run_request(
        wd.validate_request(models, demo_image(), QUESTION, 1.0, "L", "llavolta-heavy", max_new_tokens=2)
    )
    assert pooled.kept_patches is None
    assert any("drops no patch" in note for note in pooled.notes)


def test_a_model_refusal_is_a_clear_message_and_leaves_nothing_running(models):
    request = wd.validate_request(models, demo_image(), QUESTION, 0.6, "L", max_new_tokens=2)
    request.token_reduction = "no-such-preset"  # past validation: generate itself refuses it
    with pytest.raises(wd.DemoInputError, match="The model refused the request: token_reduction='no-such-preset'"):
        wd.run_request(request)
    _wait_no_generate_thread()


def test_timeout_stops_the_request(models):
    request = wd.validate_request(models, demo_image(), QUESTION, 1.0, "L", max_new_tokens=200)
    with pytest.raises(TimeoutError, match="did not finish within"):
        wd.run_request(request, timeout_s=0.05)
    _wait_no_generate_thread()


def test_closing_the_stream_cancels_generation(models):
    request = wd.validate_request(models, demo_image(), QUESTION, 1.0, "L", max_new_tokens=200)
    models["L"].model.generation_config.eos_token_id = None  # no early end: only the cancel can stop it
    try:
        stream = wd.stream_request(request)
        next(stream)  # the first words
        stream.close()  # the page went away
        _wait_no_generate_thread()
    finally:
        models["L"].model.generation_config.eos_token_id = models["L"].processor.tokenizer.eos_token_id


def test_a_model_without_scheduler_ignores_the_budget_with_a_note():
    plain = tiny_web_models((None,))
    request = wd.validate_request(plain, demo_image(), QUESTION, 0.5, max_new_tokens=2)
    assert "no latency scheduler" in request.notes[0]
    result = wd.run_request(request)
    assert result.latency_effective == 1.0 and result.layers_run == 10 and result.executed_units is None
    assert result.efficiency["image_tokens"] == 576


def test_compare_budgets_runs_each_budget(models):
    results = wd.compare_budgets(models, demo_image(), QUESTION, "1.0, 0.5", "H", max_new_tokens=2)
    assert [r.budget for r in results] == [1.0, 0.5]
    assert results[0].latency_effective == 1.0 and results[1].latency_effective <= 0.5
    assert results[0].efficiency["total_flops"] > results[1].efficiency["total_flops"]
    page = wd.compare_html(results)
    assert page.count('class="ada-compare-card"') == 2 and 'data-budget="0.5"' in page
    with pytest.raises(wd.DemoInputError, match="not a number"):
        wd.compare_budgets(models, demo_image(), QUESTION, "1.0, x", "H")


# ---------------------------------------------------------------------------------------------------------------------
# Drawing and page updates
def _result(heads, groups, prefix=2, num_heads=4) -> wd.DemoResult:
    return wd.DemoResult(
        variant="H", question=QUESTION, answer="a <b>", budget=0.5, latency_effective=0.5, executed_units=3,
        total_units=6, heads=heads, mlp_groups=groups, num_heads=num_heads, mlp_groups_total=num_heads,
        num_prefix_layers=prefix, prefill_seconds=0.2, decode_seconds=0.3, generated_tokens=4,
        efficiency={"total_flops": 2e9, "prefill_flops": 1e9, "image_tokens": 576, "llm_prompt_tokens": 600},
    )  # fmt: skip


def test_plan_html_draws_every_layer():
    result = _result([4, 4, 2, -1, 4, -1], [4, 4, 1, -1, 4, -1])
    page = wd.plan_html(result)
    assert page.count('class="ada-layer"') == 6
    assert page.count('data-state="prefix"') == 2 and page.count('data-state="skipped"') == 2
    assert page.count('data-state="run"') == 2
    assert 'data-layer="2" data-state="run" data-heads="2" data-mlp="1"' in page
    assert "4/6 layers, 14/24 heads, 13/24 MLP groups run" in page
    assert result.decode_tokens_per_second == pytest.approx(3 / 0.3)
    assert result.tokens_per_second == pytest.approx(4 / 0.5)
    table = wd.metrics_html(result)
    assert 'data-metric="image_tokens"' in table and "576" in table
    assert wd.compare_html([result]).count("a &lt;b&gt;") == 1  # answers are escaped


def test_answer_updates_never_raise(models, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    updates = list(wd.answer_updates(models, str(broken), QUESTION, 0.6, "L"))
    assert len(updates) == 1 and "could not be decoded" in updates[0].error and "⚠" in updates[0].status
    updates = list(wd.answer_updates(models, demo_image(), "", 0.6, "L"))
    assert updates[0].error == "Please type a question about the image."

    updates = list(wd.answer_updates(models, demo_image(), QUESTION, 0.6, "L", max_new_tokens=3))
    assert "Running" in updates[0].status and updates[0].error is None
    final = updates[-1]
    assert final.error is None and "Done:" in final.status
    assert 'class="ada-plan"' in final.plan and 'data-metric="prefill_seconds"' in final.metrics
    assert final.kept is None

    update = wd.compare_update(models, demo_image(), QUESTION, "2.0", "L")
    assert update.error and "outside" in update.error and update.plan == ""
    update = wd.compare_update(models, demo_image(), QUESTION, "1.0 0.6", "L", max_new_tokens=2)
    assert update.error is None and update.plan.count("ada-compare-card") == 2


# ---------------------------------------------------------------------------------------------------------------------
# Models, CLI flags, the app object
def test_load_models_messages(tmp_path):
    with pytest.raises(wd.DemoModelError, match="No model found in"):
        wd.load_models(tmp_path)
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"0")
    with pytest.raises(wd.DemoModelError, match="No model found at"):
        wd.load_models(stray)
    with pytest.raises(wd.DemoModelError, match="does-not-exist: there is no such folder"):
        wd.load_models(tmp_path / "does-not-exist")


def test_load_models_from_a_folder_of_variants(tmp_path, models):
    for label in ("L", "H"):
        models[label].model.save_pretrained(tmp_path / label)
        models[label].processor.save_pretrained(tmp_path / label)
    loaded = wd.load_models(tmp_path)
    assert list(loaded) == ["L", "H"]  # L first: the page's default
    assert loaded["L"].model.config.scheduler_type == "L" and loaded["L"].model.dtype == torch.float32
    single = wd.load_models(tmp_path / "H")
    assert list(single) == ["H"]
    result = wd.run_request(wd.validate_request(single, demo_image(), QUESTION, 0.7, max_new_tokens=2))
    expected = wd.run_request(wd.validate_request(models, demo_image(), QUESTION, 0.7, "H", max_new_tokens=2))
    assert result.answer == expected.answer and result.heads == expected.heads


def test_add_arguments_defaults_are_local_and_private():
    parser = argparse.ArgumentParser()
    wd.add_arguments(parser)
    args = parser.parse_args([])
    assert args.model is None and args.host == "127.0.0.1" and args.share is False and args.port is None
    args = parser.parse_args(["some/folder", "--port", "8000", "--share", "--timeout", "30"])
    assert (args.model, args.port, args.share, args.timeout) == ("some/folder", 8000, True, 30.0)


def test_build_app(models, tmp_path):
    gr = pytest.importorskip("gradio")
    app = wd.build_app(models, examples_dir=tmp_path)
    assert isinstance(app, gr.Blocks)
    assert not Path(wd.__file__).with_suffix(".pyi").exists()  # Gradio stubs only component subclasses: none here
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {"image", "question", "budget", "variant", "reduction", "ask", "answer", "plan", "metrics"} <= ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["house.png", "shapes.png"]
    wd.build_app(models, examples_dir=tmp_path / "own", examples=[(demo_image(), "How many trees?")])
    assert [p.name for p in (tmp_path / "own").iterdir()] == ["example_0.png"]


def test_the_default_models_are_the_trained_demo_models_with_their_task_as_examples(tmp_path):
    gr = pytest.importorskip("gradio")
    from ada_hf.demo import TRAINED_NOTICE

    defaults = wd.default_models()
    assert list(defaults) == ["L", "H"]
    assert all(m.source.startswith("ada_hf.demo.load_trained_demo") and m.has_scheduler for m in defaults.values())
    assert defaults["L"].model.config.vision_config.image_size == 32
    app = wd.launch(host="127.0.0.1", port=None, block=False, warm_up=False, models=None, timeout=30)
    try:
        assert isinstance(app, gr.Blocks)
        blocks = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
        question = blocks["question"].value
        assert question.endswith("?") and question != wd.DEFAULT_QUESTION  # a question of the task
        texts = [getattr(b, "value", None) for b in app.blocks.values()]
        assert TRAINED_NOTICE in texts
    finally:
        app.close()
    random_models = wd.default_models(random_weights=True)
    assert random_models["L"].source == "ada_hf.demo.build_demo('L')"
    assert random_models["H"].model.config.text_config.num_hidden_layers == 32


def test_random_flag_refuses_a_model(capsys):
    parser = argparse.ArgumentParser()
    wd.add_arguments(parser)
    args = parser.parse_args(["some/model", "--random"])
    assert args.random is True
    with pytest.raises(SystemExit):
        wd.run_cli(args, parser)
    assert "--random serves the random-weight demo models" in capsys.readouterr().err
