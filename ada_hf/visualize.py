"""Which image patches survive iLLaVA token merging: in the CLIP encoder, then in the LLM (LLAVOLTA_ILLAVA.md B.6).

Tooling, never imported by model code (and never copied next to a checkpoint). Drawing needs only Pillow.

    from ada_hf.visualize import visualize_token_merging
    visualize_token_merging(model, processor, image, "What is in the picture?", "merging.png",
                            token_reduction="illava-image")

or from the shell: `ada-hf show-merging IMAGE QUESTION OUT.png [--model PATH | --demo]`.

For LLaVA-1.5 the mapping is exact: one 336px crop, 24x24 patches, no newline tokens, and the LLM receives the
vision-stage survivors as its image tokens in raster order (B.6, "For LLaVA-1.5"). A surviving patch is a slot that
is still alive: iLLaVA folds the tokens it removes into an anchor that keeps its own index, so a dark patch's content
lives on inside some surviving token (B.6: the tracker records slots, not merge membership).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers.image_utils.OPENAI_CLIP_MEAN

# The masks `surviving_patches` returns, in drawing order, and the titles of their panels.
STAGE_TITLES = {"vision": "After the vision encoder", "llm": "After the LLM"}
STYLES = ("darken", "illava")
DARKEN = 0.3  # removed patches keep 30% of their brightness (style "darken")
# Style "illava": the original's binary mask through matplotlib's RdGy_r (1 = kept: dark red, 0 = removed: near black).
RDGY_R_KEPT = (103, 0, 31)
RDGY_R_REMOVED = (26, 26, 26)

# Layout of the PNG, in pixels: a row of square panels under their titles, an optional caption below.
MARGIN = 10
TITLE_HEIGHT = 30
CAPTION_HEIGHT = 26
MIN_PANEL = 280  # small images are enlarged by a whole factor (nearest) so that the titles fit
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)


# ---------------------------------------------------------------------------------------------------------------------
# Which patches survive
def surviving_patches(
    input_ids: torch.Tensor,
    image_token_id: int,
    vit_sources: Sequence[torch.Tensor] | None = None,
    token_reductions: Sequence | None = None,
    grid: int = 24,
    *,
    image: int = 0,
) -> dict[str, torch.Tensor]:
    """The original patches that survive each stage, for one image of row 0.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch, L)`): The ids the model's forward received (after the image
            placeholders were shortened for vision merging). Only row 0 is read.
        image_token_id (`int`): The image placeholder id (`model.config.image_token_id`).
        vit_sources (`tuple[torch.LongTensor]`, *optional*): `output.vit_sources`: per vision merge layer, the
            original patch indices (raster order) surviving it, `[num_images, patches]`. None: no vision merging.
        token_reductions (`tuple[ReductionRecord]`, *optional*): `output.token_reductions`. iLLaVA records are
            followed through the sequence; LLaVolta records pool windows of tokens (no patch is dropped, every one is
            averaged into a window) and leave the masks unchanged.
        grid (`int`, *optional*, defaults to 24): Patches per side (image_size // patch_size; 24 for CLIP-L/336).
        image (`int`, *optional*, defaults to 0): Which of row 0's images.

    Returns:
        `dict[str, torch.BoolTensor]`: `"vision"` and `"llm"`, each `[grid, grid]` (True = the patch survives the
        vision encoder / survives both stages). Without any merging both are all True.
    """
    patches = grid * grid
    ids = input_ids[0].detach().cpu()
    if vit_sources:
        last = vit_sources[-1].detach().cpu()
        if not 0 <= image < last.shape[0]:
            raise ValueError(f"image={image}, but vit_sources covers {last.shape[0]} image(s).")
        sources = last[image].long()
        if sources.numel() and (int(sources.min()) < 0 or int(sources.max()) >= patches):
            raise ValueError(
                f"vit_sources holds patch indices up to {int(sources.max())}, outside a {grid}x{grid} grid: pass the "
                "grid of the vision tower (image_size // patch_size)."
            )
    else:
        sources = torch.arange(patches)
    vision = torch.zeros(patches, dtype=torch.bool)
    vision[sources] = True

    # The image tokens of row 0, in order: per image its survivors in raster order (CLS first under "full").
    positions = (ids == image_token_id).nonzero().flatten()
    kept_per_image = sources.numel()
    # With sources, the whole batch must hold one run per tracked image; without, row 0 a whole number of grids.
    if vit_sources:
        count, images = int((input_ids == image_token_id).sum()), vit_sources[-1].shape[0]
    else:
        count, images = positions.numel(), max(1, positions.numel() // kept_per_image)
    if count == images * kept_per_image:
        cls, per_image = 0, kept_per_image
    elif count == images * (kept_per_image + 1):
        cls, per_image = 1, kept_per_image + 1
    else:
        raise ValueError(
            f"input_ids hold {count} image tokens for {images} image(s) of {kept_per_image} patches that reach the "
            "LLM (plus CLS under the 'full' strategy): pass the input_ids the forward received, after the "
            "placeholders were shortened for vision merging."
        )
    if not 0 <= image < positions.numel() // per_image:
        raise ValueError(f"image={image}, but row 0 holds {positions.numel() // per_image} image(s).")
    tokens = positions[image * per_image + cls : (image + 1) * per_image]  # this image's patch tokens

    alive = torch.arange(ids.numel())  # original position of each entry of the current LLM sequence
    for record in token_reductions or ():
        if record.kind != "illava":
            continue
        if record.source_length != alive.numel():
            raise ValueError(
                f"An iLLaVA record at layer {record.layer} reduces a sequence of {record.source_length} entries, but "
                f"input_ids and the records before it give {alive.numel()}: pass the input_ids and token_reductions "
                "of the same forward call (LLaVolta pooling followed by iLLaVA merging is not drawn)."
            )
        alive = alive[record.kept[0].detach().cpu().long()]
    survives = torch.zeros(ids.numel(), dtype=torch.bool)
    survives[alive] = True
    llm = torch.zeros(patches, dtype=torch.bool)
    llm[sources[survives[tokens]]] = True
    return {"vision": vision.view(grid, grid), "llm": llm.view(grid, grid)}


# ---------------------------------------------------------------------------------------------------------------------
# Drawing
def processed_view(
    image: Image.Image, image_size: int = 336, mean: Sequence[float] = CLIP_MEAN, pad: bool = True
) -> Image.Image:
    """The picture the vision tower sees, in RGB: LLaVA-1.5's preprocessing without the normalisation.

    With `pad` (LLaVA-1.5's `image_aspect_ratio="pad"`, `do_pad=True`) the image is centred on a square of the mean
    colour (`int(255 * m)` per channel, as the processor), then resized (bicubic); without, the shortest edge is
    resized to `image_size` and the centre cropped.
    """
    image = image.convert("RGB")
    width, height = image.size
    if pad and width != height:
        side = max(width, height)
        square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in mean))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image, width, height = square, side, side
    short, long = sorted((width, height))
    resized_long = int(image_size * long / short)
    size = (image_size, resized_long) if width <= height else (resized_long, image_size)
    if (width, height) != size:
        image = image.resize(size, resample=Image.Resampling.BICUBIC)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    if size != (image_size, image_size):
        image = image.crop((left, top, left + image_size, top + image_size))
    return image


@dataclass(frozen=True)
class MergingLayout:
    """Where `draw_token_merging` puts things: `size` (width, height) of the PNG, and per panel (the original
    first, then one per stage) the (left, top) corner of a `side` x `side` square; `scale` pixels of the panel per
    pixel of the processed image."""

    size: tuple[int, int]
    boxes: tuple[tuple[int, int], ...]
    side: int
    scale: int


def merging_layout(num_stages: int, image_size: int = 336, caption: bool = False) -> MergingLayout:
    """The layout of a figure with the original and `num_stages` stage panels (a pure function of its arguments)."""
    scale = max(1, math.ceil(MIN_PANEL / image_size))
    side = image_size * scale
    panels = num_stages + 1
    width = panels * side + (panels + 1) * MARGIN
    height = TITLE_HEIGHT + side + MARGIN + (CAPTION_HEIGHT if caption else 0)
    boxes = tuple((MARGIN + i * (side + MARGIN), TITLE_HEIGHT) for i in range(panels))
    return MergingLayout((width, height), boxes, side, scale)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _centred_text(draw: ImageDraw.ImageDraw, text: str, centre_x: int, top: int, height: int, width: int, size: int):
    """`text` centred in a box, the font shrunk (down to 9 px) until it fits `width`, then cut with an ellipsis."""
    for font_size in range(size, 8, -1):
        font = _font(font_size)
        if draw.textlength(text, font=font) <= width:
            break
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    left, upper, right, lower = draw.textbbox((0, 0), text, font=font)
    x = centre_x - (right - left) / 2 - left
    y = top + (height - (lower - upper)) / 2 - upper
    draw.text((x, y), text, fill=TEXT_COLOUR, font=font)


def _stage_panel(view, mask: torch.Tensor, style: str) -> Image.Image:
    """The processed image with the removed patches darkened, or iLLaVA's binary RdGy_r map."""
    import numpy as np

    pixels = np.asarray(view, dtype=np.uint8)
    size = pixels.shape[0]
    grid_h, grid_w = mask.shape
    rows = (np.arange(size) * grid_h) // size  # the patch row / column of every pixel
    cols = (np.arange(size) * grid_w) // size
    kept = mask.cpu().numpy().astype(bool)[rows[:, None], cols[None, :]]
    if style == "illava":
        out = np.where(kept[..., None], np.array(RDGY_R_KEPT, np.uint8), np.array(RDGY_R_REMOVED, np.uint8))
    else:
        dark = np.round(pixels.astype(np.float32) * DARKEN).astype(np.uint8)
        out = np.where(kept[..., None], pixels, dark)
    return Image.fromarray(np.ascontiguousarray(out, dtype=np.uint8), "RGB")


def draw_token_merging(
    image: Image.Image,
    masks: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    image_size: int = 336,
    mean: Sequence[float] = CLIP_MEAN,
    *,
    pad: bool = True,
    style: str = "darken",
    caption: str | None = None,
) -> Path:
    """Write a PNG: the processed image ("Original"), then one panel per stage of `masks` with the patches that
    survive it shown and the others darkened (`style="darken"`) or iLLaVA's red/black map (`style="illava"`).

    Args:
        image (`PIL.Image.Image`): The original picture; it is padded to a square with the mean colour and resized
            exactly as LLaVA-1.5's processor does (see [`processed_view`]), nothing is undone.
        masks (`Mapping[str, torch.BoolTensor]`): `[grid, grid]` masks, e.g. from [`surviving_patches`]; panels
            follow the mapping's order, titled "After the vision encoder (N kept)" for `"vision"`, "After the LLM
            (N kept)" for `"llm"`, and "<key> (N kept)" otherwise.
        path (`str` or `os.PathLike`): Where to write the PNG (always PNG, whatever the suffix).
        image_size (`int`, *optional*, defaults to 336): Side of the processed image; patch `(i, j)` covers its
            pixels `[i * image_size // grid, (i + 1) * image_size // grid)` (14 px at 336 with 24x24 patches).
        mean (`Sequence[float]`, *optional*, defaults to the CLIP mean): The padding colour, as in the processor.
        pad (`bool`, *optional*, defaults to True): Pad to a square first (`do_pad` of the image processor).
        style (`str`, *optional*, defaults to `"darken"`): `"darken"` or `"illava"`.
        caption (`str`, *optional*): A line under the panels (the question and the settings, say).

    Returns:
        `Path`: `path`. The PNG's size is `merging_layout(len(masks), image_size, caption is not None).size`; images
        smaller than 280 px are enlarged by a whole factor (nearest), so patches stay aligned to the pixel grid.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r}: use one of {STYLES}.")
    for name, mask in masks.items():
        if mask.ndim != 2 or mask.dtype != torch.bool:
            raise ValueError(
                f"masks[{name!r}] must be a 2-D bool tensor (a patch grid), got {mask.dtype} {mask.shape}."
            )
        if mask.shape[0] > image_size or mask.shape[1] > image_size:
            raise ValueError(f"masks[{name!r}] has a {tuple(mask.shape)} grid, finer than the {image_size}px image.")
    layout = merging_layout(len(masks), image_size, caption is not None)
    view = processed_view(image, image_size, mean, pad)
    panels = [("Original", view)]
    for name, mask in masks.items():
        title = f"{STAGE_TITLES.get(name, name)} ({int(mask.sum())} kept)"
        panels.append((title, _stage_panel(view, mask, style)))

    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for (title, panel), (left, top) in zip(panels, layout.boxes):
        if layout.scale > 1:
            panel = panel.resize((layout.side, layout.side), resample=Image.Resampling.NEAREST)
        canvas.paste(panel, (left, top))
        _centred_text(draw, title, left + layout.side // 2, 0, TITLE_HEIGHT, layout.side + MARGIN, 15)
    if caption is not None:
        width, height = layout.size
        _centred_text(draw, caption, width // 2, height - CAPTION_HEIGHT, CAPTION_HEIGHT, width - 2 * MARGIN, 13)
    path = Path(path)
    canvas.save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Running a model
def _prompt(processor, question: str) -> str:
    """LLaVA-1.5's prompt for one image and `question`, by the processor's chat template (vicuna_v1 if it has none)."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    from .processing_ada_llava import VICUNA_V1_SYSTEM_PROMPT

    return f"{VICUNA_V1_SYSTEM_PROMPT} USER: {processor.image_token}\n{question} ASSISTANT:"


def reduction_settings(model, **reduction_flags):
    """`(vision, llm)`: the iLLaVA settings in force for a call with these flags (a preset name in
    `token_reduction` expanded first), validated by the model's own rules; either is None when its stage is off.

    Raises `ValueError` for invalid settings, and for LLaVolta pooling (it averages windows and drops no patch: there
    is nothing to draw)."""
    from .token_reduction import LLAVOLTA_FIELDS, expand_preset, illava_llm_settings, llavolta_settings
    from .vision_merging import ILLAVA_VIT_FIELDS, illava_vit_settings

    flags = expand_preset(reduction_flags.get("token_reduction"), reduction_flags)
    selecting = flags.get("token_selecting") or getattr(model.config, "token_selecting", None) or "none"
    if selecting != "none":
        raise ValueError(
            f"token_selecting={selecting!r} (PruMerge) keeps a varying number of patches per image and does not track "
            "which: only iLLaVA merging is drawn."
        )
    if llavolta_settings(model.config, {k: flags.get(k) for k in LLAVOLTA_FIELDS}) is not None:
        raise ValueError(
            "LLaVolta pooling averages windows of image tokens and drops no patch: there is no merging to draw. "
            "Turn it off (llavolta_grouping='none') to draw iLLaVA merging."
        )
    vision = illava_vit_settings(model.config, {k: flags.get(k) for k in ILLAVA_VIT_FIELDS})
    llm = illava_llm_settings(
        model.config, {k: flags.get(k) for k in ("enable_illava_llm", "illava_llm_k", "illava_llm_r")}
    )
    return vision, llm


def token_merging_masks(model, processor, image: Image.Image, question: str, **reduction_flags):
    """Run `model` once (a forward, not generate) on `image` and `question` with vision-source tracking on, and return
    [`surviving_patches`] for the image.

    `reduction_flags` are forward's token-reduction arguments (`enable_illava_vit`, `illava_vit_k`, `illava_vit_r`,
    `enable_illava_llm`, `illava_llm_k`, `illava_llm_r`, or a preset `token_reduction="illava-image"`); the model
    config's values apply where a flag is not given. `latency=`/`num_units=` run under a budget (the `<latency>`
    token is appended, as generate does). The image placeholders are shortened for vision merging as generate does,
    so the LLM scores and merges exactly the tokens it would at generate's prefill.
    """
    from .vision_merging import collapse_image_tokens, image_token_counts

    config = model.config
    vision, _ = reduction_settings(model, **reduction_flags)
    inputs = processor(images=image, text=_prompt(processor, question), return_tensors="pt")
    input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    vision_config = config.vision_config
    grid = vision_config.image_size // vision_config.patch_size
    if vision is not None:
        pad = config.text_config.pad_token_id if config.text_config.pad_token_id is not None else 0
        per_image, merged = image_token_counts(config, vision)
        input_ids, attention_mask = collapse_image_tokens(
            input_ids, attention_mask, config.image_token_id, per_image, merged, pad
        )
    if reduction_flags.get("latency") is not None or reduction_flags.get("num_units") is not None:
        latency_id = torch.full_like(input_ids[:, :1], config.latency_token_id)
        input_ids = torch.cat([input_ids, latency_id], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)

    tracking = config.illava_track_vit_source
    config.illava_track_vit_source = True
    try:
        with torch.inference_mode():
            out = model(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                pixel_values=inputs["pixel_values"].to(model.device, model.dtype),
                logits_to_keep=1,
                **reduction_flags,
            )
    finally:
        config.illava_track_vit_source = tracking
    return surviving_patches(input_ids, config.image_token_id, out.vit_sources, out.token_reductions, grid=grid)


def describe_settings(vision, llm) -> str:
    """A short line naming the iLLaVA settings in force, e.g. 'ViT k=5-6-7-8, r=72 · LLM k=8, r=0.7'."""
    parts = [
        "ViT: off" if vision is None else f"ViT k={'-'.join(map(str, vision.layers))}, r={vision.remove}",
        "LLM: off" if llm is None else f"LLM k={'-'.join(map(str, llm.layers))}, r={llm.keep}",
    ]
    return " · ".join(parts)


def visualize_token_merging(
    model,
    processor,
    image: Image.Image,
    question: str,
    path: str | os.PathLike,
    *,
    style: str = "darken",
    **reduction_flags,
) -> Path:
    """Run `model` once on `image` and `question` (see [`token_merging_masks`]) and draw the patches that survive
    each stage with [`draw_token_merging`]; the caption names the question and the settings. Returns `path`."""
    return _visualize(model, processor, image, question, path, style, reduction_flags)[0]


def _visualize(model, processor, image, question, path, style, reduction_flags):
    """`visualize_token_merging`, also returning the masks and the settings in force (the CLI prints them)."""
    vision, llm = reduction_settings(model, **reduction_flags)
    masks = token_merging_masks(model, processor, image, question, **reduction_flags)
    image_processor = processor.image_processor
    path = draw_token_merging(
        image,
        masks,
        path,
        image_size=model.config.vision_config.image_size,
        mean=getattr(image_processor, "image_mean", None) or CLIP_MEAN,
        pad=bool(getattr(image_processor, "do_pad", False)),
        style=style,
        caption=f'"{question}" · {describe_settings(vision, llm)}',
    )
    return path, masks, vision, llm


# ---------------------------------------------------------------------------------------------------------------------
# ada-hf show-merging


def _layers(text: str) -> list[int]:
    """`"5-6-7-8"`, `"5,6,7,8"` or `"8"` -> a list of layer indices; `"none"` -> `[]` (the stage is off)."""
    if text.strip().lower() == "none":
        return []
    try:
        layers = [int(part) for part in text.replace(",", "-").split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layer indices like 5-6-7-8, or 'none'") from None
    if any(layer < 0 for layer in layers):
        raise argparse.ArgumentTypeError(f"{text!r}: layer indices are 0 or more")
    return layers


def _count_or_fraction(text: str) -> int | float:
    """`"72"` -> 72 (a count); `"0.7"` -> 0.7 (a fraction or ratio)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_show_merging_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ada-hf show-merging`."""
    parser.add_argument("image", metavar="IMAGE", help="the picture (any format Pillow reads)")
    parser.add_argument(
        "question",
        metavar="QUESTION",
        help="the question asked about it (the LLM stage scores "
        "image tokens by the attention of the prompt's last token)",
    )
    parser.add_argument("output", metavar="OUT.png", help="where to write the PNG")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        metavar="PATH",
        help="a saved AdaLLaVA/LLaVA-1.5 model (save_pretrained folder "
        "or a Hub id in the local cache) with its processor; loaded with trust_remote_code=True",
    )
    source.add_argument("--demo", action="store_true", help="the random-weight demo model (the default)")
    parser.add_argument(
        "--vit-k",
        type=_layers,
        default=None,
        metavar="K",
        help="CLIP layers that merge, e.g. 5-6-7-8, or 'none' (default: the model config's, 5-6-7-8)",
    )
    parser.add_argument(
        "--vit-r",
        type=_count_or_fraction,
        default=None,
        metavar="R",
        help="patches removed per CLIP layer, or a fraction of them (default: the config's, 72)",
    )
    parser.add_argument(
        "--llm-k",
        type=_layers,
        default=None,
        metavar="K",
        help="decoder layers at whose input image tokens merge, or 'none' (default: the config's, 8)",
    )
    parser.add_argument(
        "--llm-r",
        type=_count_or_fraction,
        default=None,
        metavar="R",
        help="keep ratio in (0, 1] of the image tokens, or a count (int > 1) to remove (default: the config's, 0.7)",
    )
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="darken",
        help="darken the removed patches (default), or iLLaVA's red (kept) / black (removed) map",
    )
    parser.add_argument("--device", default=None, help="where to run the model (default: cuda if available)")


def run_show_merging(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    image_path = Path(args.image).expanduser()
    if not image_path.exists():
        parser.error(f"no such image file: {args.image!r}")
    if image_path.is_dir():
        parser.error(f"{args.image!r} is a directory: give an image file")
    try:
        with Image.open(image_path) as opened:
            opened.load()
            image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        parser.error(f"cannot read {args.image!r} as an image: {err}")
    output = Path(args.output).expanduser()
    if not output.parent.is_dir():
        parser.error(f"cannot write {args.output!r}: no such directory {str(output.parent)!r}")
    if output.is_dir():
        parser.error(f"{args.output!r} is a directory: give the PNG's file name")

    demo = args.model is None
    if demo:
        from .demo import build_demo

        # The 7B-shaped one: its 24-layer CLIP and 576 patches have the published iLLaVA layers; the trained tiny
        # demo models' 2-layer tower does not.
        model, processor = build_demo("L")
        source = "the 7B-shaped demo model (random weights)"
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = os.path.expanduser(args.model)
        if os.path.isfile(path):
            parser.error(f"{args.model!r} is a file: give the directory that save_pretrained wrote")
        looks_local = args.model.startswith((".", "/", "~")) or args.model.count("/") > 1
        if looks_local and not os.path.isdir(path):
            parser.error(f"no such model directory: {args.model!r}")
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype="auto")
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        except (OSError, ValueError, KeyError, ImportError) as err:
            print(f"ada-hf show-merging: error: could not load {args.model!r}: {err}", file=sys.stderr)
            return 1
        source = args.model
        if getattr(model.config, "model_type", None) != "ada_llava":  # remote code loads its own copy of the class
            print(
                f"ada-hf show-merging: error: {args.model!r} loads as {type(model).__name__}, which has no iLLaVA "
                "merging: convert it first (ada-hf convert --from llava-hf).",
                file=sys.stderr,
            )
            return 1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()

    # Flags not given fall back to the model config's values (None); 'none' ([]) turns a stage off.
    vit_k, vit_r = args.vit_k, args.vit_r
    flags = dict(
        enable_illava_vit=vit_k != [],
        illava_vit_k=vit_k or None,
        illava_vit_r=vit_r,
        enable_illava_llm=args.llm_k != [],
        illava_llm_k=args.llm_k or None,
        illava_llm_r=args.llm_r,
        llavolta_grouping="none",
    )
    try:
        reduction_settings(model, **flags)
    except ValueError as err:
        parser.error(str(err))
    _, masks, vision, llm = _visualize(model, processor, image, args.question, output, args.style, flags)
    grid = masks["vision"].shape
    total = grid[0] * grid[1]
    print(
        f"Wrote {output} ({source}; {describe_settings(vision, llm)}): {int(masks['vision'].sum())} of {total} "
        f"patches survive the vision encoder, {int(masks['llm'].sum())} survive the LLM too."
    )
    if demo:
        print(
            "NOTE: without MODEL this runs the 7B-shaped demo model, whose weights are RANDOM: which patches are kept "
            "says nothing about a trained model; give a checkpoint as MODEL for that."
        )
    return 0


__all__ = [
    "draw_token_merging",
    "merging_layout",
    "processed_view",
    "surviving_patches",
    "token_merging_masks",
    "visualize_token_merging",
]
