"""Sanity checks of the tiny source checkpoints in checkpoint_fixtures.py (file names, keys, dtypes, loading)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from checkpoint_fixtures import (
    LLAVA_V1_SYSTEM,
    VICUNA_V1_SYSTEM,
    TinyDims,
    sentencepiece_model_bytes,
    write_clip_tower,
    write_llava_hf,
    write_original_adallava,
    write_original_llava,
)


pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")

DIMS = TinyDims()
VICUNA_PROMPT = VICUNA_V1_SYSTEM + " USER: What is shown in the image? ASSISTANT:"


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _read_json(path: Path):
    return json.loads(path.read_text())


def _check_index(folder: Path, index_name: str, written: dict[str, torch.Tensor]) -> dict:
    """The index lists every key once, points at existing shards holding exactly those keys, and total_size is the
    byte size of all tensors."""
    index = _read_json(folder / index_name)
    weight_map = index["weight_map"]
    assert set(weight_map) == set(written)
    assert list(weight_map) == sorted(weight_map)  # transformers writes the index with sorted keys
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in written.values())
    for shard in set(weight_map.values()):
        assert (folder / shard).is_file()
    return index


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".bin":
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_file(str(path))


def _check_shards_bit_exact(folder: Path, weight_map: dict[str, str], written: dict[str, torch.Tensor]) -> None:
    loaded = {}
    for shard in sorted(set(weight_map.values())):
        tensors = _load_shard(folder / shard)
        assert {k for k, f in weight_map.items() if f == shard} == set(tensors)
        loaded.update(tensors)
    assert loaded.keys() == written.keys()
    for k, t in written.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t), k


def _sp_ids(text: str) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model_bytes(DIMS.vocab_size))
    return [1] + sp.encode(text)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer


def test_sentencepiece_model_is_llama_like_and_deterministic():
    import sentencepiece as spm

    blob = sentencepiece_model_bytes(DIMS.vocab_size)
    sentencepiece_model_bytes.cache_clear()
    assert sentencepiece_model_bytes(DIMS.vocab_size) == blob  # retraining gives the same bytes
    sp = spm.SentencePieceProcessor(model_proto=blob)
    assert sp.get_piece_size() == DIMS.vocab_size
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    for text in (VICUNA_PROMPT, LLAVA_V1_SYSTEM + " USER: <image>\nDescribe the picture. ASSISTANT:"):
        assert 0 not in sp.encode(text)  # every character of the prompts is a piece
        assert sp.decode(sp.encode(text)) == text


@pytest.mark.parametrize("writer", ["llava", "adallava"])
def test_original_tokenizer_files_load_offline(tmp_path, writer):
    from transformers import AutoTokenizer, LlamaTokenizer

    if writer == "llava":
        write_original_llava(tmp_path, DIMS)
        config = _read_json(tmp_path / "tokenizer_config.json")
        assert config["pad_token"] is None and config["bos_token"]["__type"] == "AddedToken"
    else:
        write_original_adallava(tmp_path, DIMS)
        config = _read_json(tmp_path / "tokenizer_config.json")
        assert config["pad_token"] == "<unk>" and set(config["added_tokens_decoder"]) == {"0", "1", "2"}
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is False
    assert _read_json(tmp_path / "special_tokens_map.json")["pad_token"] == "<unk>"
    expected = _sp_ids(VICUNA_PROMPT)
    # The explicit class converts tokenizer.model (needs sentencepiece + protobuf) and matches SentencePiece.
    tok = LlamaTokenizer.from_pretrained(tmp_path)
    assert len(tok) == DIMS.vocab_size
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert (tok.padding_side, tok.model_max_length) == ("right", 2048)
    ids = tok(VICUNA_PROMPT).input_ids
    assert ids == expected
    assert tok.decode(ids, skip_special_tokens=True) == VICUNA_PROMPT
    auto = AutoTokenizer.from_pretrained(tmp_path)
    if writer == "llava":
        # transformers 5.23 sharp edge: "llava" is in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, so AutoTokenizer
        # ignores tokenizer_class for a config.json with model_type "llava" and builds a generic TokenizersBackend
        # from tokenizer.model, which drops Llama's dummy-prefix "▁" at the start: the ids differ.
        assert type(auto).__name__ == "TokenizersBackend"
        assert auto(VICUNA_PROMPT).input_ids != expected
        assert auto(VICUNA_PROMPT).input_ids[2:] == expected[2:]  # only the first piece differs
    else:
        assert type(auto).__name__ == "LlamaTokenizer" and auto(VICUNA_PROMPT).input_ids == expected


# ---------------------------------------------------------------------------------------------------------------
# openai/clip-vit-large-patch14-336


def _expected_clip_vision_keys(prefix: str = "vision_model.") -> set[str]:
    keys = {"embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight"}
    keys |= {f"{n}.{p}" for n in ("pre_layrnorm", "post_layernorm") for p in ("weight", "bias")}
    for i in range(DIMS.vision_layers):
        layer = f"encoder.layers.{i}."
        keys |= {layer + f"self_attn.{x}_proj.{p}" for x in ("q", "k", "v", "out") for p in ("weight", "bias")}
        for module in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {layer + f"{module}.{p}" for p in ("weight", "bias")}
    return {prefix + k for k in keys}


def test_clip_tower_bin_is_the_openai_layout(tmp_path):
    written = write_clip_tower(tmp_path, DIMS, fmt="bin")
    assert _files(tmp_path) == {"config.json", "pytorch_model.bin", "preprocessor_config.json"}
    loaded = torch.load(tmp_path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert list(loaded) == list(written) and all(torch.equal(loaded[k], written[k]) for k in written)
    vision = {k for k in written if k.startswith("vision_model.")}
    assert vision == _expected_clip_vision_keys() | {"vision_model.embeddings.position_ids"}
    assert any(k.startswith("text_model.") for k in written)
    assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= set(written)
    pos = written["vision_model.embeddings.position_ids"]
    assert pos.dtype == torch.int64 and pos.tolist() == [list(range(DIMS.num_positions))]
    assert written["text_model.embeddings.position_ids"].shape == (1, 77)
    assert all(t.dtype == torch.float32 for k, t in written.items() if not k.endswith("position_ids"))
    pos_embed = written["vision_model.embeddings.position_embedding.weight"]
    assert pos_embed.shape == (DIMS.num_positions, DIMS.vision_hidden)
    assert written["vision_model.embeddings.patch_embedding.weight"].shape == (
        DIMS.vision_hidden,
        3,
        DIMS.patch_size,
        DIMS.patch_size,
    )
    assert written["visual_projection.weight"].shape == (DIMS.projection_dim, DIMS.vision_hidden)

    config = _read_json(tmp_path / "config.json")
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert config["vision_config"]["image_size"] == DIMS.image_size
    assert config["vision_config_dict"]["patch_size"] == DIMS.patch_size
    pre = _read_json(tmp_path / "preprocessor_config.json")
    assert pre["crop_size"] == pre["size"] == DIMS.image_size and pre["resample"] == 3
    assert pre["feature_extractor_type"] == "CLIPFeatureExtractor"

    # transformers 5.23 reads the 4.21-shaped config and loads the tower from the full CLIPModel pickle
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    vc = CLIPVisionConfig.from_pretrained(tmp_path)
    assert (vc.hidden_size, vc.num_hidden_layers, vc.image_size, vc.patch_size) == (
        DIMS.vision_hidden,
        DIMS.vision_layers,
        DIMS.image_size,
        DIMS.patch_size,
    )
    tower = CLIPVisionModel.from_pretrained(tmp_path)
    for k, t in tower.state_dict().items():
        if not k.endswith("position_ids"):
            assert torch.equal(t, written["vision_model." + k]), k
    ip = CLIPImageProcessor.from_pretrained(tmp_path)
    assert ip.size["shortest_edge"] == DIMS.image_size and ip.crop_size["height"] == DIMS.image_size


def test_clip_tower_safetensors_is_a_transformers_save(tmp_path):
    written = write_clip_tower(tmp_path, DIMS, fmt="safetensors")
    assert _files(tmp_path) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert not any(k.endswith("position_ids") for k in written)  # non-persistent buffers in 5.x
    assert {k for k in written if k.startswith("vision_model.")} == _expected_clip_vision_keys()
    assert all(t.dtype == torch.float32 for t in written.values())
    # same values as the .bin fixture with the same seed
    as_bin = write_clip_tower(tmp_path / "bin", DIMS, fmt="bin")
    assert all(torch.equal(written[k], as_bin[k]) for k in written)
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tmp_path)
    assert all(torch.equal(t, written[k]) for k, t in model.state_dict().items() if not k.endswith("position_ids"))


# ---------------------------------------------------------------------------------------------------------------
# liuhaotian/llava-v1.5-7b


def _expected_llava_lm_keys(inv_freq: bool) -> set[str]:
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    keys |= {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for i in range(DIMS.num_layers):
        p = f"model.layers.{i}."
        keys |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        keys |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        if inv_freq:
            keys.add(p + "self_attn.rotary_emb.inv_freq")
    return keys


def test_original_llava_files_keys_and_dtypes(tmp_path):
    written = write_original_llava(tmp_path, DIMS, num_shards=2)
    assert _files(tmp_path) == {
        "config.json",
        "generation_config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    }
    assert set(written) == _expected_llava_lm_keys(inv_freq=True)
    index = _check_index(tmp_path, "pytorch_model.bin.index.json", written)
    _check_shards_bit_exact(tmp_path, index["weight_map"], written)
    d, v = DIMS.hidden_size, DIMS.vocab_size
    assert written["model.embed_tokens.weight"].shape == written["lm_head.weight"].shape == (v, d)
    assert written["model.mm_projector.0.weight"].shape == (d, DIMS.vision_hidden)
    assert written["model.mm_projector.2.weight"].shape == (d, d)
    assert written["model.layers.0.mlp.down_proj.weight"].shape == (d, DIMS.intermediate_size)
    inv = written["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert inv.dtype == torch.float32 and inv.shape == (DIMS.head_dim // 2,)
    assert all(t.dtype == torch.float16 for k, t in written.items() if not k.endswith("inv_freq"))

    config = _read_json(tmp_path / "config.json")
    assert config["architectures"] == ["LlavaLlamaForCausalLM"] and config["model_type"] == "llava"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (d, DIMS.num_layers, v)
    assert config["mm_hidden_size"] == DIMS.vision_hidden and config["mm_projector_type"] == "mlp2x_gelu"
    assert config["mm_vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert config["torch_dtype"] == "float16" and config["transformers_version"] == "4.31.0"
    assert "rope_theta" not in config  # LlamaConfig 4.31 had none
    assert _read_json(tmp_path / "generation_config.json")["eos_token_id"] == 2


def test_original_llava_with_tower_overrides_and_one_shard(tmp_path):
    written = write_original_llava(tmp_path, DIMS, num_shards=3, include_tower=True, mm_projector_type="linear")
    tower = {k for k in written if k.startswith("model.vision_tower.vision_tower.")}
    assert tower == _expected_clip_vision_keys("model.vision_tower.vision_tower.vision_model.")
    assert set(written) - tower == _expected_llava_lm_keys(inv_freq=True)
    assert all(written[k].dtype == torch.float16 for k in tower)
    assert len(list(tmp_path.glob("pytorch_model-0000?-of-00003.bin"))) == 3
    _check_index(tmp_path, "pytorch_model.bin.index.json", written)
    assert _read_json(tmp_path / "config.json")["mm_projector_type"] == "linear"
    # the embedded tower is fp16(openai tower with the same seed); the LM does not depend on include_tower
    clip = write_clip_tower(tmp_path / "clip", DIMS)
    for k in tower:
        assert torch.equal(written[k], clip[k[len("model.vision_tower.vision_tower.") :]].half()), k
    plain = write_original_llava(tmp_path / "plain", DIMS, num_shards=1)
    assert "pytorch_model.bin" in _files(tmp_path / "plain")  # one shard: a single file, no index (as 4.x)
    assert not (tmp_path / "plain" / "pytorch_model.bin.index.json").exists()
    assert all(torch.equal(plain[k], written[k]) for k in plain)


# ---------------------------------------------------------------------------------------------------------------
# zhuoyanxu/ada-llava-{L,H}-v1.5-7b


@pytest.mark.parametrize("scheduler_type, rank", [("L", 2), ("H", None)])
def test_original_adallava_files_keys_and_dtypes(tmp_path, scheduler_type, rank):
    p = 2
    written = write_original_adallava(
        tmp_path, DIMS, scheduler_type=scheduler_type, num_prefix_layers=p, scheduler_rank=rank, num_shards=3
    )
    assert _files(tmp_path) == {
        "config.json",
        "generation_config.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    }
    sched = {k for k in written if k.startswith("scheduler.")}
    assert set(written) - sched == _expected_llava_lm_keys(inv_freq=False)  # no inv_freq, no CLIP
    assert sched == {"scheduler.mlp_head.weight", "scheduler.mlp_head.bias"} | {
        f"scheduler.scheduler_up_proj.net.{i}.{x}" for i in (0, 1, 3) for x in ("weight", "bias")
    }
    assert all(t.dtype == torch.float16 for t in written.values())
    s, d = DIMS.num_layers - p, DIMS.hidden_size
    out = s if scheduler_type == "L" else s * DIMS.num_heads * 2
    assert written["scheduler.mlp_head.weight"].shape == (out, d) and written["scheduler.mlp_head.bias"].shape == (out,)
    assert written["scheduler.scheduler_up_proj.net.0.weight"].shape == (256,)
    assert written["scheduler.scheduler_up_proj.net.1.weight"].shape == (d, 256)
    assert written["scheduler.scheduler_up_proj.net.3.weight"].shape == (d, d)
    assert written["scheduler.mlp_head.weight"].float().std() > 0.3
    index = _check_index(tmp_path, "model.safetensors.index.json", written)
    _check_shards_bit_exact(tmp_path, index["weight_map"], written)
    with safe_open(str(tmp_path / "model-00001-of-00003.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}

    config = _read_json(tmp_path / "config.json")
    assert config["architectures"] == ["AdaLlavaLlamaForCausalLM"] and config["model_type"] == "ada_llava_llama"
    assert (config["num_prefix_layers"], config["scheduler_type"]) == (p, scheduler_type)
    assert config["token_selecting"] == "none"
    assert ("scheduler_rank" in config) == (rank is not None)
    assert config["transformers_version"] == "4.37.2" and config["torch_dtype"] == "float16"
    assert config["rope_theta"] == 10000.0 and config["mm_patch_merge_type"] == "flat"
    # the base tensors are the LLaVA-1.5 ones of the same seed
    llava = write_original_llava(tmp_path / "llava", DIMS)
    assert all(torch.equal(written[k], llava[k]) for k in set(written) - sched)


# ---------------------------------------------------------------------------------------------------------------
# llava-hf/llava-1.5-7b-hf


def _llava_inputs():
    image = DIMS.vocab_size
    n_img = (DIMS.image_size // DIMS.patch_size) ** 2
    ids = torch.tensor([[1, 9, 16, 34] + [image] * n_img + [23, 18, 20, 31]])
    pixels = torch.randn(1, 3, DIMS.image_size, DIMS.image_size, generator=torch.Generator().manual_seed(0))
    return ids, pixels


def test_transformers_5_23_default_save_of_llava_is_not_the_hub_layout(tmp_path):
    """What save_pretrained writes for Llava in 5.23 (the reason write_llava_hf rewrites the legacy shards)."""
    from transformers import LlavaForConditionalGeneration

    from checkpoint_fixtures import _llava_hf_config

    model = LlavaForConditionalGeneration(_llava_hf_config(DIMS))
    model.save_pretrained(tmp_path / "default")  # save_original_format=True
    keys = (
        set(_read_json(tmp_path / "default" / "model.safetensors.index.json")["weight_map"])
        if (tmp_path / "default" / "model.safetensors.index.json").exists()
        else set(load_file(str(tmp_path / "default" / "model.safetensors")))
    )
    assert "language_model.model.embed_tokens.weight" in keys and "language_model.lm_head.weight" in keys
    assert "multi_modal_projector.linear_1.weight" in keys
    assert "vision_tower.embeddings.class_embedding" in keys  # the Hub repos have vision_tower.vision_model.*
    assert not any(k.startswith("vision_tower.vision_model.") for k in keys)
    model.save_pretrained(tmp_path / "v5", save_original_format=False)
    keys = set(load_file(str(tmp_path / "v5" / "model.safetensors")))
    assert {
        "lm_head.weight",
        "model.language_model.embed_tokens.weight",
        "model.vision_tower.embeddings.class_embedding",
        "model.multi_modal_projector.linear_2.bias",
    } <= keys


@pytest.mark.parametrize("layout", ["legacy", "v5"])
def test_llava_hf_files_keys_and_reload(tmp_path, layout):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = write_llava_hf(tmp_path, DIMS, layout=layout, num_shards=2)
    assert not model.training and model.dtype == torch.float32
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"}
    common = {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    }
    if layout == "legacy":
        assert _files(tmp_path) == shards | common | {
            "preprocessor_config.json",
            "chat_template.json",
            "special_tokens_map.json",
            "tokenizer.model",
            "added_tokens.json",
        }
    else:
        assert _files(tmp_path) == shards | common | {"chat_template.jinja"}
    index = _read_json(tmp_path / "model.safetensors.index.json")
    stored = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(tmp_path / shard), "pt") as f:
            assert f.metadata()["format"] == "pt"
        stored.update(load_file(str(tmp_path / shard)))
    assert set(index["weight_map"]) == set(stored)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert all(t.dtype == torch.float16 for t in stored.values())
    vp = DIMS.padded_vocab_size
    if layout == "legacy":
        prefixes = {
            "language_model.model.",
            "language_model.lm_head.",
            "vision_tower.vision_model.",
            "multi_modal_projector.",
        }
        embed, head = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"
        assert "vision_tower.vision_model.embeddings.class_embedding" in stored
        config = _read_json(tmp_path / "config.json")
        assert config["image_token_index"] == DIMS.vocab_size and config["torch_dtype"] == "float16"
    else:
        prefixes = {"model.language_model.", "lm_head.", "model.vision_tower.", "model.multi_modal_projector."}
        embed, head = "model.language_model.embed_tokens.weight", "lm_head.weight"
        assert "model.vision_tower.embeddings.class_embedding" in stored
    assert all(any(k.startswith(p) for p in prefixes) for k in stored)
    assert all(any(k.startswith(p) for k in stored) for p in prefixes)
    assert stored[embed].shape == stored[head].shape == (vp, DIMS.hidden_size)
    # the stored fp16 values are the returned model's values
    sd = model.state_dict()
    assert len(stored) == len([k for k in sd if not k.endswith(("position_ids", "inv_freq"))])
    assert torch.equal(stored[embed].float(), sd["model.language_model.embed_tokens.weight"])

    # loads natively in 5.23 (no key_mapping) and gives bit-identical logits
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.image_token_id == DIMS.vocab_size and reloaded.config.text_config.vocab_size == vp
    ids, pixels = _llava_inputs()
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels).logits
        out = reloaded(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(out, ref)
    assert ref.abs().max() > 0.5  # not a degenerate network

    processor = AutoProcessor.from_pretrained(tmp_path)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [DIMS.vocab_size, DIMS.vocab_size + 1]
    assert tok.pad_token == "<pad>" and tok.padding_side == "left"
    assert tok(VICUNA_PROMPT).input_ids == _sp_ids(VICUNA_PROMPT)  # same ids as the SentencePiece model
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat is shown? ASSISTANT:"
    from PIL import Image

    enc = processor(images=[Image.new("RGB", (40, 30), (200, 10, 10))], text=[prompt], return_tensors="pt")
    assert (enc["input_ids"] == DIMS.vocab_size).sum() == (DIMS.image_size // DIMS.patch_size) ** 2
    assert enc["pixel_values"].shape == (1, 3, DIMS.image_size, DIMS.image_size)


def test_llava_hf_is_the_hf_conversion_of_the_original_fixtures(tmp_path):
    """llava-hf(seed) == HF's convert_llava_weights_to_hf mapping of original LLaVA(seed) + CLIP(seed)."""
    model = write_llava_hf(tmp_path / "hf", DIMS, layout="v5")
    original = write_original_llava(tmp_path / "orig", DIMS)
    clip = write_clip_tower(tmp_path / "clip", DIMS)
    sd = model.state_dict()
    v = DIMS.vocab_size
    for k, t in original.items():
        if k.endswith("inv_freq"):
            continue
        if k == "lm_head.weight":
            target = sd["lm_head.weight"][:v]
        elif k == "model.embed_tokens.weight":
            target = sd["model.language_model.embed_tokens.weight"][:v]
        elif k.startswith("model.mm_projector."):
            target = sd[
                k.replace("model.mm_projector.0", "model.multi_modal_projector.linear_1").replace(
                    "model.mm_projector.2", "model.multi_modal_projector.linear_2"
                )
            ]
        else:
            target = sd[k.replace("model.", "model.language_model.", 1)]
        assert torch.equal(target, t.float()), k
    for k, t in clip.items():
        if k.startswith("vision_model.") and not k.endswith("position_ids"):
            assert torch.equal(sd["model.vision_tower." + k[len("vision_model.") :]], t.half().float()), k
    # the new rows are close to the mean row (HF samples them around it)
    extra = sd["lm_head.weight"][v:]
    assert (extra - sd["lm_head.weight"][:v].mean(0)).abs().max() < 0.01
