"""AdaLlavaProcessor: vicuna_v1 prompts, image-token expansion, LLaVA-1.5 pad-to-square, latency token, save/load."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ada_hf.processing_ada_llava import (
    VICUNA_V1_CHAT_TEMPLATE,
    VICUNA_V1_SYSTEM_PROMPT,
    AdaLlavaProcessor,
    add_latency_token,
)
from ada_hf.tiny_processor import build_tiny_processor, build_tiny_tokenizer
from helpers import run_without_ada_hf

SYS = VICUNA_V1_SYSTEM_PROMPT
MEAN = np.array(OPENAI_CLIP_MEAN)
STD = np.array(OPENAI_CLIP_STD)


def _user(text: str, with_image: bool = False, **image_fields) -> dict:
    content = [{"type": "image", **image_fields}] if with_image else []
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture(scope="module")
def processor() -> AdaLlavaProcessor:
    return build_tiny_processor()


@pytest.fixture(scope="module")
def small_processor() -> AdaLlavaProcessor:
    return build_tiny_processor(image_size=28)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer


def test_tiny_tokenizer_layout_and_determinism():
    tok = build_tiny_tokenizer()
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    n = len(tok)
    assert tok.convert_tokens_to_ids(["<image>", "<pad>", "<latency>"]) == [n - 3, n - 2, n - 1]
    assert tok.pad_token == "<pad>" and tok.pad_token_id == n - 2
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.unk_token_id == 0
    assert tok.padding_side == "left"
    assert build_tiny_tokenizer().get_vocab() == tok.get_vocab()

    custom = build_tiny_tokenizer(["hello", "world", "hello"])
    assert custom.convert_tokens_to_ids(["hello", "world", "<image>", "<pad>", "<latency>"]) == [3, 4, 5, 6, 7]
    assert custom("hello world")["input_ids"] == [1, 3, 4]


def test_vicuna_prompt_has_no_unknown_tokens(processor):
    messages = [_user("What is shown?", with_image=True), {"role": "assistant", "content": "A cat."}, _user("Why?")]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor.tokenizer(prompt)["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids
    assert ids[0] == processor.tokenizer.bos_token_id
    assert ids.count(processor.image_token_id) == 1
    assert processor.tokenizer.eos_token_id in ids  # "</s>" after the assistant turn is one token


# ----------------------------------------------------------------------------------------------------------------------
# Chat template


def test_chat_template_single_turn(processor):
    prompt = processor.apply_chat_template([_user("What is shown?", with_image=True)], add_generation_prompt=True)
    assert prompt == f"{SYS} USER: <image>\nWhat is shown? ASSISTANT:"


def test_chat_template_multi_turn(processor):
    messages = [
        _user("What is shown?", with_image=True),
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        _user("Why?"),
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == f"{SYS} USER: <image>\nWhat is shown? ASSISTANT: A cat.</s>USER: Why? ASSISTANT:"


def test_chat_template_variants(processor):
    # plain-string content; no generation prompt
    assert processor.apply_chat_template([{"role": "user", "content": "Hi"}]) == f"{SYS} USER: Hi "
    # the image goes first even when listed after the text (LLaVA-1.5 layout)
    text_first = {"role": "user", "content": [{"type": "text", "text": "Q?"}, {"type": "image"}]}
    assert processor.apply_chat_template([text_first], add_generation_prompt=True) == (
        f"{SYS} USER: <image>\nQ? ASSISTANT:"
    )
    # a system message replaces the default system prompt (string or list content)
    for system in ("Be brief.", [{"type": "text", "text": "Be brief."}]):
        messages = [{"role": "system", "content": system}, _user("Q?", with_image=True)]
        assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
            "Be brief. USER: <image>\nQ? ASSISTANT:"
        )
    # the template is the class default and the module constant
    assert processor.chat_template == VICUNA_V1_CHAT_TEMPLATE
    with pytest.raises(Exception, match="roles"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_tokenize_with_image(processor):
    img = _random_image(300, 200)
    out = processor.apply_chat_template(
        [_user("What is shown?", with_image=True, image=img)],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert out["pixel_values"].shape == (1, 3, 336, 336)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 576
    # same ids as formatting the prompt and calling the processor
    prompt = processor.apply_chat_template([_user("What is shown?", with_image=True)], add_generation_prompt=True)
    direct = processor(images=img, text=prompt, return_tensors="pt")
    assert torch.equal(out["input_ids"], direct["input_ids"])
    assert torch.equal(out["pixel_values"], direct["pixel_values"])


# ----------------------------------------------------------------------------------------------------------------------
# Image tokens and pixel values


def test_defaults_are_llava_15(processor):
    assert processor.patch_size == 14
    assert processor.vision_feature_select_strategy == "default"
    assert processor.num_additional_image_tokens == 1
    assert processor.image_token == "<image>"
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")


def test_image_token_expansion_336(processor):
    prompt = f"{SYS} USER: <image>\nWhat is shown? ASSISTANT:"
    out = processor(images=_random_image(400, 300), text=prompt, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 336, 336)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 576 == (336 // 14) ** 2
    text_only = processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert out["input_ids"].shape[1] == text_only.shape[1] + 575


@pytest.mark.parametrize("size, patch", [(28, 14), (42, 14), (32, 8)])
def test_image_token_expansion_small(size, patch):
    proc = build_tiny_processor(image_size=size, patch_size=patch)
    images = [_random_image(50, 30, seed=1), _random_image(20, 40, seed=2)]
    prompts = ["USER: <image>\nWhat? ASSISTANT:", "USER: <image>\nWhy? ASSISTANT:"]
    out = proc(images=images, text=prompts, padding=True, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, size, size)
    counts = (out["input_ids"] == proc.image_token_id).sum(dim=1).tolist()
    assert counts == [(size // patch) ** 2] * 2
    # left padding
    assert out["attention_mask"][:, -1].tolist() == [1, 1]


def _llava_pad_reference(image: Image.Image, size: int) -> np.ndarray:
    """LLaVA-1.5 `image_aspect_ratio="pad"` by hand with PIL: expand2square with the CLIP mean colour, bicubic resize
    of the shortest edge, center crop, rescale to [0, 1], normalise. Returns CHW float64."""
    width, height = image.size
    side = max(width, height)
    background = tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)
    square = Image.new("RGB", (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = square.resize((size, size), Image.Resampling.BICUBIC)  # square: shortest edge == size on both sides
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.float64) / 255.0
    array = (array - MEAN) / STD
    return array.transpose(2, 0, 1)


@pytest.mark.parametrize("width, height", [(400, 200), (150, 300)])
def test_pad_to_square_uses_clip_mean(processor, width, height):
    image = _random_image(width, height, seed=3)
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"][0].double().numpy()
    assert pixels.shape == (3, 336, 336)

    # Border: the padded region, away from the bicubic support (a few pixels) around the pasted image.
    side = max(width, height)
    pad = (side - min(width, height)) // 2 * 336 / side  # padded band width in output pixels
    margin = 4
    band = slice(0, int(pad) - margin)
    border = pixels[:, band, :] if width > height else pixels[:, :, band]
    # normalised mean colour: int(mean * 255) / 255 instead of mean, i.e. within 1/255 / std (<0.015) of 0
    expected = (np.array([int(m * 255) for m in OPENAI_CLIP_MEAN]) / 255.0 - MEAN) / STD
    assert np.all(np.abs(expected) < (1 / 255) / STD)
    np.testing.assert_allclose(border, np.broadcast_to(expected[:, None, None], border.shape), atol=1e-5)
    far_side = pixels[:, -band.stop :, :] if width > height else pixels[:, :, -band.stop :]
    np.testing.assert_allclose(far_side, np.broadcast_to(expected[:, None, None], far_side.shape), atol=1e-5)

    # Whole image against the hand-made PIL reference. The processor runs the same PIL bicubic resize on the same
    # uint8 square, so the resized uint8 pixels are identical; only the float32 rescale/normalise differs from the
    # float64 reference: |values| < 2.2, float32 eps ~1.2e-7, so the error is ~1e-6. atol=1e-5 leaves margin, and is
    # far below one uint8 level after normalisation (1/255/0.27 ~ 0.015), so any resampling or padding difference fails.
    reference = _llava_pad_reference(image, 336)
    np.testing.assert_allclose(pixels, reference, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Latency token


def _tokenizer_without_latency() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"extra_special_tokens": ["<image>"]})
    return tok


def test_latency_token_id(processor):
    assert processor.latency_token == "<latency>"
    assert processor.latency_token_id == processor.tokenizer.convert_tokens_to_ids("<latency>")
    assert processor.latency_token_id == len(processor.tokenizer) - 1
    ids = processor.tokenizer("hello <latency> world", add_special_tokens=False)["input_ids"]
    assert ids.count(processor.latency_token_id) == 1


def test_latency_token_missing_raises_then_add():
    tok = _tokenizer_without_latency()
    proc = AdaLlavaProcessor(image_processor=build_tiny_processor(image_size=28).image_processor, tokenizer=tok)
    with pytest.raises(ValueError, match=r"<latency>.*add_latency_token"):
        _ = proc.latency_token_id

    n = len(tok)
    token_id = add_latency_token(tok)
    assert token_id == n and len(tok) == n + 1
    assert proc.latency_token_id == token_id
    assert tok.extra_special_tokens == ["<image>", "<latency>"]  # existing extra special tokens kept
    assert tok.decode([3, token_id], skip_special_tokens=True) == "hello"
    # idempotent: same id, nothing added or duplicated
    assert add_latency_token(tok) == token_id
    assert len(tok) == n + 1 and tok.extra_special_tokens == ["<image>", "<latency>"]
    # another token name
    other = add_latency_token(tok, "<budget>")
    assert other == n + 1 and tok.extra_special_tokens == ["<image>", "<latency>", "<budget>"]


def test_add_latency_token_idempotent_on_tiny_tokenizer():
    tok = build_tiny_tokenizer()
    before = (len(tok), list(tok.extra_special_tokens), tok.get_vocab())
    assert add_latency_token(tok) == tok.convert_tokens_to_ids("<latency>")
    assert add_latency_token(tok) == before[0] - 1
    assert (len(tok), list(tok.extra_special_tokens), tok.get_vocab()) == before


# ----------------------------------------------------------------------------------------------------------------------
# Save / load


def test_save_load_round_trip(tmp_path, small_processor):
    tok = build_tiny_tokenizer()
    custom_id = add_latency_token(tok, "<budget>")
    # a non-default latency token, so that an init arg dropped by save/load would show
    proc = AdaLlavaProcessor(image_processor=small_processor.image_processor, tokenizer=tok, latency_token="<budget>")
    proc.save_pretrained(tmp_path)

    assert (tmp_path / "processing_ada_llava.py").is_file()
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_ada_llava.AdaLlavaProcessor"
    assert config["latency_token"] == "<budget>"
    assert config["processor_class"] == "AdaLlavaProcessor"

    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "AdaLlavaProcessor"
    assert loaded.latency_token == "<budget>" and loaded.latency_token_id == custom_id
    assert (loaded.patch_size, loaded.vision_feature_select_strategy, loaded.num_additional_image_tokens) == (
        14,
        "default",
        1,
    )
    assert loaded.chat_template == VICUNA_V1_CHAT_TEMPLATE
    assert loaded.image_processor.do_pad is True

    messages = [_user("What is shown?", with_image=True)]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    assert loaded.apply_chat_template(messages, add_generation_prompt=True) == prompt
    img = _random_image(40, 20, seed=4)
    a = proc(images=img, text=prompt, return_tensors="pt")
    b = loaded(images=img, text=prompt, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_load_in_fresh_process_without_ada_hf(tmp_path):
    save_dir = tmp_path / "saved"
    proc = build_tiny_processor(image_size=28)
    proc.save_pretrained(save_dir)
    messages = [_user("What is shown?", with_image=True)]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    img = Image.new("RGB", (40, 20), (10, 200, 30))
    expected = {
        "class": "AdaLlavaProcessor",
        "latency_token_id": proc.latency_token_id,
        "prompt": prompt,
        "input_ids": proc(images=img, text=prompt)["input_ids"][0],
    }

    code = textwrap.dedent(
        f"""
        import json, sys
        try:
            import ada_hf
        except ImportError:
            pass
        else:
            raise SystemExit("ada_hf is importable in the child: " + repr(ada_hf))
        from PIL import Image
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained({str(save_dir)!r}, trust_remote_code=True)
        assert not [m for m in sys.modules if m == "ada_hf" or m.startswith("ada_hf.")]
        assert type(proc).__module__.startswith("transformers_modules."), type(proc).__module__
        messages = {messages!r}
        prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
        img = Image.new("RGB", (40, 20), (10, 200, 30))
        print("RESULT=" + json.dumps({{
            "class": type(proc).__name__,
            "latency_token_id": proc.latency_token_id,
            "prompt": prompt,
            "input_ids": proc(images=img, text=prompt)["input_ids"][0],
        }}))
        """
    )
    result = run_without_ada_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    assert json.loads(line[len("RESULT=") :]) == expected


def test_run_without_ada_hf_blocks_import(tmp_path):
    # even with the repository as working directory (''/cwd is first on sys.path for `python -c`)
    import ada_hf.processing_ada_llava as mod
    from pathlib import Path

    repo = Path(mod.__file__).resolve().parents[1]
    result = run_without_ada_hf("import ada_hf.processing_ada_llava", cwd=repo)
    assert result.returncode != 0
    assert "blocked" in result.stderr
