"""Drawing which patches survive iLLaVA merging (ada_hf/visualize.py): the masks, the PNG, the CLI."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from ada_hf.cli import main as cli_main
from ada_hf.tiny_model import build_tiny_model, tiny_config
from ada_hf.tiny_processor import IMAGE_TOKEN, LATENCY_TOKEN, build_tiny_processor, build_tiny_tokenizer
from ada_hf.token_reduction import ReductionRecord
from ada_hf.vision_merging import collapse_image_tokens
from ada_hf.visualize import (
    DARKEN,
    RDGY_R_KEPT,
    RDGY_R_REMOVED,
    draw_token_merging,
    merging_layout,
    processed_view,
    surviving_patches,
    token_merging_masks,
    visualize_token_merging,
)

SIZE, GRID = 56, 4  # a 56px image in 14px patches, 4 CLIP layers (feature layer -2: layer 2's output)
FLAGS = dict(
    enable_illava_vit=True, illava_vit_k="1-2", illava_vit_r=3, enable_illava_llm=True, illava_llm_k=2, illava_llm_r=0.5
)
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tiny_tokenizer()
    processor = build_tiny_processor(tokenizer, image_size=SIZE, patch_size=14)
    config = tiny_config(
        len(tokenizer),
        tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tokenizer.convert_tokens_to_ids(LATENCY_TOKEN),
        scheduler_type=None,
        image_size=SIZE,
        vision_layers=4,
        pad_token_id=tokenizer.pad_token_id,
    )
    return build_tiny_model(config), processor


def picture(width=70, height=50, seed=0):
    """Bright coloured blocks (every channel >= 80), so a darkened pixel never equals the original."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(80, 256, size=(5, 7, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((width, height), resample=Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------------------------------------------
# surviving_patches
def test_surviving_patches_follows_the_records_by_hand():
    image_id = 7
    sources = (torch.tensor([[0, 1, 2, 3, 5, 6, 8, 9, 12, 15]]), torch.tensor([[0, 2, 3, 5, 6, 9, 12, 15]]))
    # 2 text tokens, the 8 image tokens (one per surviving patch of the last merge layer), 2 text tokens.
    ids = torch.tensor([[1, 2] + [image_id] * 8 + [3, 4]])
    # Layer 2 drops the image tokens at positions 3 and 6 (patches 2 and 6); layer 4 then drops entry 3 of the
    # reduced sequence (position 4: patch 3).
    first = ReductionRecord("illava", 2, torch.tensor([[0, 1, 2, 4, 5, 7, 8, 9, 10, 11]]), 12)
    second = ReductionRecord("illava", 4, torch.tensor([[0, 1, 2, 4, 5, 6, 7, 8, 9]]), 10)
    masks = surviving_patches(ids, image_id, sources, (first, second), grid=4)
    assert masks["vision"].dtype == torch.bool and masks["vision"].shape == (4, 4)
    assert masks["vision"].flatten().nonzero().flatten().tolist() == [0, 2, 3, 5, 6, 9, 12, 15]
    assert masks["llm"].flatten().nonzero().flatten().tolist() == [0, 5, 9, 12, 15]
    assert torch.equal(
        surviving_patches(ids, image_id, sources, (first,), grid=4)["llm"].flatten().nonzero().flatten(),
        torch.tensor([0, 3, 5, 9, 12, 15]),
    )

    # LLaVolta pools windows (each entry averages `stride` tokens) and drops no patch: its records are skipped.
    pooled = ReductionRecord("llavolta", 2, torch.tensor([[0, 1, 2, 4, 6, 8, 10, 11]]), 12)
    assert torch.equal(surviving_patches(ids, image_id, sources, (pooled,), grid=4)["llm"], masks["vision"])
    # No merging at all: every patch survives both stages.
    full = surviving_patches(torch.tensor([[1] + [image_id] * 16]), image_id, None, None, grid=4)
    assert full["vision"].all() and full["llm"].all()
    # The 'full' strategy puts CLS before the patches: it is not a patch.
    with_cls = torch.tensor([[1, 2] + [image_id] * 9 + [3, 4]])  # CLS + 8 patches
    record = ReductionRecord("illava", 2, torch.tensor([[0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]]), 13)  # drops the
    assert surviving_patches(with_cls, image_id, sources, (record,), grid=4)["llm"].sum() == 7  # 2nd patch (pos 4)
    # Records from another sequence, or placeholders not shortened for vision merging, are refused.
    with pytest.raises(ValueError, match="reduces a sequence of 12"):
        surviving_patches(ids[:, 1:], image_id, sources, (first,), grid=4)
    with pytest.raises(ValueError, match="16 image tokens for 1 image"):
        surviving_patches(torch.tensor([[1] + [image_id] * 16]), image_id, sources, None, grid=4)
    with pytest.raises(ValueError, match="outside a 2x2 grid"):
        surviving_patches(ids, image_id, sources, None, grid=2)


def test_masks_of_a_forward_match_its_tracked_sources(tiny):
    model, processor = tiny
    config = model.config
    masks = token_merging_masks(model, processor, picture(), QUESTION, **FLAGS)
    assert config.illava_track_vit_source is False  # restored

    # The same forward by hand: placeholders shortened to the 10 surviving patches, then the LLM keeps 5.
    inputs = processor(
        images=picture(),
        text=processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
            add_generation_prompt=True,
        ),
        return_tensors="pt",
    )
    ids, _ = collapse_image_tokens(inputs["input_ids"], None, config.image_token_id, 16, 10, 0)
    config.illava_track_vit_source = True
    try:
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=inputs["pixel_values"], **FLAGS)
    finally:
        config.illava_track_vit_source = False
    sources = out.vit_sources[-1][0].tolist()
    assert len(sources) == 10 and masks["vision"].flatten().nonzero().flatten().tolist() == sources
    (record,) = out.token_reductions
    kept = set(record.kept[0].tolist())
    image_positions = (ids[0] == config.image_token_id).nonzero().flatten().tolist()
    expected = sorted(sources[k] for k, pos in enumerate(image_positions) if pos in kept)
    assert len(expected) == 5 and masks["llm"].flatten().nonzero().flatten().tolist() == expected

    # Without any merging every patch survives; with vision merging only, the LLM keeps what the encoder kept.
    off = token_merging_masks(model, processor, picture(), QUESTION, enable_illava_vit=False, enable_illava_llm=False)
    assert off["vision"].all() and off["llm"].all()
    vit_only = token_merging_masks(model, processor, picture(), QUESTION, **{**FLAGS, "enable_illava_llm": False})
    assert torch.equal(vit_only["vision"], masks["vision"]) and torch.equal(vit_only["llm"], masks["vision"])


# ---------------------------------------------------------------------------------------------------------------------
# The PNG
def panel(png: Image.Image, layout, index: int) -> np.ndarray:
    left, top = layout.boxes[index]
    return np.asarray(png.convert("RGB"))[top : top + layout.side, left : left + layout.side]


@pytest.mark.parametrize("style", ["darken", "illava"])
def test_png_marks_exactly_the_surviving_patches(tmp_path, style):
    g = torch.Generator().manual_seed(0)
    masks = {"vision": torch.rand(GRID, GRID, generator=g) < 0.6}
    masks["llm"] = masks["vision"] & (torch.rand(GRID, GRID, generator=g) < 0.6)
    path = draw_token_merging(picture(), masks, tmp_path / "m.png", image_size=SIZE, style=style, caption="a caption")
    layout = merging_layout(2, SIZE, caption=True)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == layout.size
        png = png.convert("RGB")
    view = np.asarray(processed_view(picture(), SIZE))
    cell = SIZE // GRID
    assert layout.scale * SIZE == layout.side and layout.side >= 280  # enlarged by a whole factor
    centre = (np.arange(GRID) * cell + cell // 2) * layout.scale
    original = panel(png, layout, 0)
    assert np.array_equal(
        original[centre][:, centre], view[np.arange(GRID) * cell + cell // 2][:, np.arange(GRID) * cell + cell // 2]
    )
    for index, name in enumerate(["vision", "llm"], start=1):
        stage = panel(png, layout, index)
        for i in range(GRID):
            for j in range(GRID):
                shown = stage[centre[i], centre[j]]
                source = view[i * cell + cell // 2, j * cell + cell // 2]
                if style == "illava":
                    expected = RDGY_R_KEPT if masks[name][i, j] else RDGY_R_REMOVED
                else:
                    dark = np.round(source * np.float32(DARKEN)).astype(np.uint8)
                    assert not np.array_equal(dark, source)
                    expected = source if masks[name][i, j] else dark
                assert shown.tolist() == list(expected), (name, i, j)


def test_png_at_336_is_aligned_to_the_14px_patch_grid(tmp_path):
    g = torch.Generator().manual_seed(1)
    masks = {"vision": torch.rand(24, 24, generator=g) < 0.5}
    masks["llm"] = masks["vision"] & (torch.rand(24, 24, generator=g) < 0.7)
    image = picture(480, 360, seed=1)
    path = draw_token_merging(image, masks, tmp_path / "m.png")
    layout = merging_layout(2, 336)
    assert layout.scale == 1 and layout.size == (3 * 336 + 4 * 10, 30 + 336 + 10)
    with Image.open(path) as png:
        assert png.size == layout.size
        png = png.convert("RGB")
    view = np.asarray(processed_view(image, 336))
    assert (view[:40] == [122, 116, 104]).all()  # 60 of 480 rows of padding (42 of 336): the CLIP mean colour
    assert np.array_equal(panel(png, layout, 0), view)
    dark = np.round(view * np.float32(DARKEN)).astype(np.uint8)
    for index, name in enumerate(["vision", "llm"], start=1):
        kept = np.kron(masks[name].numpy(), np.ones((14, 14), dtype=bool))[..., None]  # every pixel of each patch
        assert np.array_equal(panel(png, layout, index), np.where(kept, view, dark))


def test_visualize_token_merging_writes_the_figure(tiny, tmp_path):
    model, processor = tiny
    path = visualize_token_merging(model, processor, picture(), QUESTION, tmp_path / "v.png", **FLAGS)
    with Image.open(path) as png:
        assert png.size == merging_layout(2, SIZE, caption=True).size
    with pytest.raises(ValueError, match="drops no patch"):
        visualize_token_merging(
            model,
            processor,
            picture(),
            QUESTION,
            tmp_path / "w.png",
            llavolta_grouping="avgpool1d",
            llavolta_layer=2,
            llavolta_stride=2,
        )


# ---------------------------------------------------------------------------------------------------------------------
# ada-hf show-merging
@pytest.fixture(scope="module")
def saved_model(tiny, tmp_path_factory):
    model, processor = tiny
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_cli_draws_a_saved_model(saved_model, tmp_path, capsys):
    picture().save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    argv = [
        "show-merging",
        str(tmp_path / "in.png"),
        QUESTION,
        str(out),
        "--model",
        str(saved_model),
        "--device",
        "cpu",
        "--vit-k",
        "1-2",
        "--vit-r",
        "3",
        "--llm-k",
        "2",
        "--llm-r",
        "0.5",
    ]
    assert cli_main(argv) == 0
    assert "10 of 16 patches survive the vision encoder, 5 survive the LLM too" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.size == merging_layout(2, SIZE, caption=True).size
    assert cli_main(argv[:4] + ["--model", str(saved_model), "--vit-k", "none", "--llm-k", "none"]) == 0
    assert "16 of 16 patches survive the vision encoder, 16 survive" in capsys.readouterr().out


def test_cli_errors(saved_model, tmp_path, capsys):
    picture().save(tmp_path / "in.png")
    (tmp_path / "text.png").write_text("not an image")
    out = str(tmp_path / "out.png")
    cases = [
        (["show-merging", str(tmp_path / "missing.png"), QUESTION, out], "no such image file"),
        (["show-merging", str(tmp_path), QUESTION, out], "is a directory"),
        (["show-merging", str(tmp_path / "text.png"), QUESTION, out], "cannot read .* as an image"),
        (["show-merging", str(tmp_path / "in.png"), QUESTION, str(tmp_path / "no" / "o.png")], "no such directory"),
        (["show-merging", str(tmp_path / "in.png"), QUESTION, out, "--vit-k", "5-x"], "layer indices like"),
        (
            ["show-merging", str(tmp_path / "in.png"), QUESTION, out, "--model", str(tmp_path / "nowhere")],
            "no such model directory",
        ),
        (
            ["show-merging", str(tmp_path / "in.png"), QUESTION, out, "--model", str(saved_model), "--demo"],
            "not allowed with",
        ),
        (
            ["show-merging", str(tmp_path / "in.png"), QUESTION, out, "--model", str(saved_model), "--vit-k", "3"],
            r"must list CLIP layers in \[0, 2\]",
        ),
        (
            [
                "show-merging",
                str(tmp_path / "in.png"),
                QUESTION,
                out,
                "--model",
                str(saved_model),
                "--vit-k",
                "1",
                "--vit-r",
                "3",
                "--llm-k",
                "2",
                "--llm-r",
                "1.5",
            ],
            "keep ratio",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert "usage: ada-hf show-merging" in err
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.slow
def test_cli_demo(tmp_path, capsys):
    from ada_hf.demo import demo_image

    demo_image().save(tmp_path / "in.png")
    assert cli_main(["show-merging", str(tmp_path / "in.png"), QUESTION, str(tmp_path / "out.png")]) == 0
    assert "288 of 576 patches survive the vision encoder, 202 survive the LLM too" in capsys.readouterr().out
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == merging_layout(2, 336, caption=True).size


@pytest.mark.parametrize("size", [(480, 360), (200, 500), (64, 64)])
def test_the_original_panel_is_what_the_processor_feeds_clip(size):
    image_processor = build_tiny_processor(build_tiny_tokenizer(), image_size=336).image_processor
    image = picture(*size, seed=2)
    raw = image_processor(image, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    assert np.array_equal(np.asarray(processed_view(image, 336, image_processor.image_mean)), raw.transpose(1, 2, 0))
