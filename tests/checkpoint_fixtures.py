"""Tiny checkpoints written in the exact on-disk formats of the real source repos, for converter tests.

Four writers, one per source format (file names, key names, dtypes and config fields as in the real repos; only the
dimensions are tiny and the weights random):

* [`write_clip_tower`]: `openai/clip-vit-large-patch14-336` (a full `CLIPModel`: vision + text towers, fp32).
* [`write_original_llava`]: `liuhaotian/llava-v1.5-7b` (`LlavaLlamaForCausalLM`, fp16 `pytorch_model-*.bin` shards).
* [`write_original_adallava`]: `zhuoyanxu/ada-llava-{L,H}-v1.5-7b` (`AdaLlavaLlamaForCausalLM`, fp16 safetensors
  shards).
* [`write_llava_hf`]: `llava-hf/llava-1.5-7b-hf` (`LlavaForConditionalGeneration`, fp16 safetensors shards), in the 4.x
  layout of the Hub repos (`layout="legacy"`) or the layout transformers 5.23 writes with `save_original_format=False`
  (`layout="v5"`).

Each writer returns exactly what it wrote (name -> tensor, as stored), except [`write_llava_hf`] which returns the
in-memory transformers model (fp32, eval mode, holding the fp16-rounded values it saved).

Consistency between the fixtures (same `dims` and `seed`):
* the language model and projector of `write_original_llava`, `write_original_adallava` and `write_llava_hf` are the
  same tensors (fp16 values), and the CLIP vision tower of `write_clip_tower` is the one embedded by
  `write_original_llava(include_tower=True)` and `write_llava_hf` (cast to fp16 there). So `write_llava_hf(seed=s)`
  is exactly what HF's `convert_llava_weights_to_hf.py` makes of `write_original_llava(seed=s)` +
  `write_clip_tower(seed=s)` (plus the 2 new token rows and the padding rows up to a multiple of 64, which HF samples
  around the mean row: here the mean row plus a small seeded noise).
* The tokenizer is one SentencePiece BPE model (trained offline, deterministic) with `dims.vocab_size` pieces;
  llava-hf adds `<image>` (id `vocab_size`) and `<pad>` (id `vocab_size + 1`) on top of it.

Things the real repos contain that are NOT reproduced (documented where they are relevant below): README/model cards,
`.gitattributes`, the CLIP repo's BPE tokenizer files and `tf_model.h5`/`flax_model.msgpack`, byte-fallback pieces
in the Llama tokenizer (they alone are 256 pieces, more than a tiny vocabulary can hold), and the 7B/13B sizes.

Loading the `tokenizer.model`-only folders (original LLaVA/AdaLLaVA) with `AutoTokenizer` in transformers 5.23 needs
both `sentencepiece` and `protobuf` (5.x converts the SentencePiece model to a `tokenizers` tokenizer on load; without
protobuf it fails with a misleading "`tiktoken` is required" error). Writing the fixtures needs `sentencepiece`
(training) and, for `write_llava_hf`, `protobuf` too. The llava-hf folder also has `tokenizer.json` and loads with
neither.

Two transformers 5.23 tokenizer behaviours seen with these folders:
* `AutoTokenizer` on a folder whose config.json has `model_type: "llava"` (the liuhaotian repos, llava-hf) ignores
  `tokenizer_class` ("llava" is in `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS`). With only `tokenizer.model` (original
  LLaVA) it builds a generic `TokenizersBackend` that drops Llama's leading dummy-prefix piece, so the ids differ from
  LLaVA's SentencePiece ids; `LlamaTokenizer.from_pretrained(folder)` gives the exact ids. (llava-hf is fine: it loads
  its tokenizer.json.) AdaLLaVA's `model_type: "ada_llava_llama"` is not affected.
* 5.23's `LlamaTokenizer` builds `BPE(byte_fallback=True)` without an unk token. Real Llama vocabularies have the
  byte pieces, ours cannot, so characters outside the training text are dropped by the converted tokenizer (the
  SentencePiece model gives <unk>). Prompts made of the training text's characters (the vicuna/llava system prompts,
  "USER", "ASSISTANT", "\n", ...) tokenize identically everywhere. The llava-hf tokenizer.json written here sets
  `byte_fallback=False, unk_token="<unk>"` so that it matches the SentencePiece model on unknown characters too.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CLIP_REPO = "openai/clip-vit-large-patch14-336"

# The vicuna_v1 system prompt (AdaLLaVA) and the llava_v1 one (LLaVA-1.5), used in the tokenizer training text.
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = VICUNA_V1_SYSTEM.replace("user", "human")

# llava-hf/llava-1.5-7b-hf's chat template (the one in its chat_template.json).
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass
class TinyDims:
    """Dimensions of the tiny checkpoints (all writers take one)."""

    vocab_size: int = 64  # the base (Vicuna-like) vocabulary, WITHOUT <image>/<pad>/<latency>
    hidden_size: int = 32
    intermediate_size: int = 70
    num_layers: int = 4
    num_heads: int = 4
    vision_hidden: int = 16
    vision_intermediate: int = 32
    vision_layers: int = 3
    vision_heads: int = 2
    image_size: int = 28
    patch_size: int = 14
    projection_dim: int = 8
    text_vocab_clip: int = 50  # CLIP text tower (present in the openai repo, dropped by conversion)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_positions(self) -> int:
        """CLIP vision positions: the patches plus the CLS token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def padded_vocab_size(self) -> int:
        """llava-hf's text vocabulary: base + <image> + <pad>, rounded up to a multiple of 64."""
        return -(-(self.vocab_size + 2) // 64) * 64


# ---------------------------------------------------------------------------------------------------------------
# Generic helpers


def _json_dump(path: Path, obj, sort_keys: bool = True) -> None:
    """JSON as transformers writes it (indent 2, sorted keys, trailing newline)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _fill(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Seeded fp32 values with a well-conditioned scale: activations stay O(1) through the tiny networks, norms are
    near 1 and biases are non-zero, so a key mapped to the wrong place changes the outputs visibly."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return 0.05 * torch.randn(shape, generator=g)
    if "norm" in name or "layrnorm" in name or name.endswith("up_proj.net.0.weight"):  # RMSNorm / LayerNorm gains
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if name.endswith("logit_scale"):
        return torch.tensor(math.log(100.0))  # the trained openai value (exp -> 100)
    if "embed" in name and len(shape) <= 2 and "patch_embedding" not in name:
        return 0.5 * torch.randn(shape, generator=g)  # token / position / class embeddings
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def _split_shards(names: list[str], sizes: list[int], num_shards: int) -> list[list[str]]:
    """Split keys (in order) into exactly `num_shards` non-empty contiguous groups of about equal byte size, the way
    transformers' size-based sharding would with max_shard_size ~ total / num_shards."""
    num_shards = max(1, min(num_shards, len(names)))
    total = sum(sizes)
    cuts, acc = [], 0
    for i, size in enumerate(sizes):
        acc += size
        while len(cuts) < num_shards - 1 and acc >= total * (len(cuts) + 1) / num_shards:
            cuts.append(i + 1)
    # make the boundaries strictly increasing and leave at least one key per shard
    bounds = [0]
    for c in cuts:
        bounds.append(max(c, bounds[-1] + 1))
    bounds.append(len(names))
    for j in range(len(bounds) - 2, 0, -1):
        bounds[j] = min(bounds[j], bounds[j + 1] - 1)
    return [names[bounds[j] : bounds[j + 1]] for j in range(num_shards)]


def _write_sharded(folder: Path, tensors: "OrderedDict[str, torch.Tensor]", num_shards: int, fmt: str) -> None:
    """Write `tensors` as transformers 4.x `save_pretrained` shards plus the index.

    fmt "bin": `pytorch_model-0000N-of-0000M.bin` (torch.save of a plain dict) + `pytorch_model.bin.index.json`.
    fmt "safetensors": `model-0000N-of-0000M.safetensors` (metadata {"format": "pt"}) + `model.safetensors.index.json`.
    The index is {"metadata": {"total_size": bytes}, "weight_map": {key: file}}, with sorted keys as 4.x writes it.
    num_shards 1: a single `pytorch_model.bin` / `model.safetensors` and no index, as 4.x does.
    """
    if num_shards <= 1:  # 4.x writes a single file and no index when everything fits in one shard
        if fmt == "bin":
            torch.save(dict(tensors), folder / "pytorch_model.bin")
        else:
            save_file(dict(tensors), str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(tensors)
    groups = _split_shards(names, [_nbytes(tensors[n]) for n in names], num_shards)
    n = len(groups)
    weight_map = {}
    for j, group in enumerate(groups, start=1):
        if fmt == "bin":
            fname = f"pytorch_model-{j:05d}-of-{n:05d}.bin"
            torch.save({k: tensors[k] for k in group}, folder / fname)
        else:
            fname = f"model-{j:05d}-of-{n:05d}.safetensors"
            save_file({k: tensors[k] for k in group}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in group})
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    _json_dump(
        folder / index_name,
        {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())}, "weight_map": weight_map},
    )


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer

# Fixed training text: the system prompts, the roles and short VQA-style turns (letters, digits, "\n" and a little
# punctuation only, so that the characters fit in a 64-piece vocabulary; "<image>" is part of a prompt so that "<"
# and ">" are pieces too, although LLaVA splits "<image>" out before tokenizing and llava-hf adds it as a token).
_SP_CORPUS = [
    VICUNA_V1_SYSTEM,
    LLAVA_V1_SYSTEM,
    "USER: <image>\nWhat is shown in the image? ASSISTANT: A cat is sitting on a red chair.",
    "USER: Describe the picture in detail.\nBe brief. ASSISTANT: There is a dog in the grass near the water.",
    "USER: How many people are there? ASSISTANT: Two people are standing next to a car.",
    "USER: What color is the bus? ASSISTANT: The bus is yellow and white.",
    "USER: Is there a person in the photo? ASSISTANT: Yes, a man is riding a bike on the street.",
    "USER: Where is the cat? ASSISTANT: The cat is on the table, next to a cup of tea.",
    "USER: What is the man holding? ASSISTANT: He is holding an umbrella because it is raining.",
    "USER: Answer the question using a single word or phrase. ASSISTANT: Yes",
    "USER: What time of day is it? ASSISTANT: It is evening, the sky is orange and the sun is low.",
    "USER: What animals can you see? ASSISTANT: There are two horses and a sheep in the field.",
    "USER: Please describe this image in detail. ASSISTANT: The image shows a kitchen with a white table.",
    "USER: How many dogs are there? ASSISTANT: There are 3 dogs playing with a ball in the park.",
]


@functools.lru_cache(maxsize=None)
def sentencepiece_model_bytes(vocab_size: int) -> bytes:
    """A Llama-style SentencePiece BPE model with exactly `vocab_size` pieces, trained offline on a fixed corpus.

    Trainer settings follow the Llama tokenizer (<unk>=0, <s>=1, </s>=2, no pad, BPE, identity normalization,
    dummy prefix, digits split, whitespace kept) except `byte_fallback=False`: the 256 byte pieces do not fit in a
    tiny vocabulary, so characters outside the corpus map to <unk>. Deterministic (one thread, no shuffling).
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_CORPUS * 4),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        max_sentence_length=4192,
        minloglevel=2,
    )
    return buf.getvalue()


def _added_token(content: str, with_type: bool) -> dict:
    tok = {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **tok} if with_type else tok


def write_sentencepiece_tokenizer(folder, dims: TinyDims, style: str = "llava") -> None:
    """Write `tokenizer.model`, `tokenizer_config.json` and `special_tokens_map.json` as in the original repos.

    style "llava": liuhaotian/llava-v1.5-7b (saved by transformers 4.31 from lmsys/vicuna-7b-v1.5's slow
    LlamaTokenizer: AddedToken dicts with "__type", `pad_token: null` in tokenizer_config.json but
    `"pad_token": "<unk>"` in special_tokens_map.json, because LLaVA's train.py sets pad = unk after loading).
    style "adallava": zhuoyanxu/ada-llava-* (same tokenizer saved by transformers 4.37.2: `added_tokens_decoder`,
    plain-string special tokens, `pad_token: "<unk>"`).
    Both: LlamaTokenizer, legacy false, model_max_length 2048, padding_side right, add_bos_token, no add_eos_token.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model_bytes(dims.vocab_size))
    if style == "llava":
        config = {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": _added_token("<s>", True),
            "clean_up_tokenization_spaces": False,
            "eos_token": _added_token("</s>", True),
            "legacy": False,
            "model_max_length": 2048,
            "pad_token": None,
            "padding_side": "right",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": _added_token("<unk>", True),
        }
    elif style == "adallava":
        config = {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {
                str(i): {**_added_token(t, False), "special": True} for i, t in enumerate(("<unk>", "<s>", "</s>"))
            },
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 2048,
            "pad_token": "<unk>",
            "padding_side": "right",
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        }
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    _json_dump(folder / "tokenizer_config.json", config)
    _json_dump(
        folder / "special_tokens_map.json",
        {
            "bos_token": _added_token("<s>", False),
            "eos_token": _added_token("</s>", False),
            "pad_token": "<unk>",
            "unk_token": _added_token("<unk>", False),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# CLIP tower (openai/clip-vit-large-patch14-336)


def _clip_config(dims: TinyDims):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=dims.text_vocab_clip,
            hidden_size=dims.vision_hidden,
            intermediate_size=dims.vision_intermediate,
            num_hidden_layers=2,
            num_attention_heads=dims.vision_heads,
            max_position_embeddings=77,
            projection_dim=dims.projection_dim,
            # the (wrong but real) ids of the openai config; they fit the tiny vocabulary
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=dims.vision_hidden,
            intermediate_size=dims.vision_intermediate,
            num_hidden_layers=dims.vision_layers,
            num_attention_heads=dims.vision_heads,
            image_size=dims.image_size,
            patch_size=dims.patch_size,
            projection_dim=dims.projection_dim,
        ),
        projection_dim=dims.projection_dim,
    )


@functools.lru_cache(maxsize=None)
def _clip_state_dict_cached(dims_key: tuple, seed: int) -> "OrderedDict[str, torch.Tensor]":
    from transformers import CLIPModel

    dims = TinyDims(*dims_key)
    model = CLIPModel(_clip_config(dims))
    g = torch.Generator().manual_seed(10_000 + seed)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, t in model.state_dict().items():
        out[name] = _fill(name, tuple(t.shape), g).to(t.dtype).contiguous()
    return out


def _clip_state_dict(dims: TinyDims, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """The fp32 CLIPModel weights (transformers 5.23 `CLIPModel.state_dict()` keys, no position_ids buffers)."""
    key = tuple(getattr(dims, f) for f in TinyDims.__dataclass_fields__)
    return OrderedDict((k, v.clone()) for k, v in _clip_state_dict_cached(key, seed).items())


def _with_position_ids(sd: "OrderedDict[str, torch.Tensor]", dims: TinyDims) -> "OrderedDict[str, torch.Tensor]":
    """Insert the int64 `embeddings.position_ids` buffers ([1, n]) where a transformers 4.21 CLIPModel.state_dict()
    had them: the embeddings module's own tensors come before its children's (vision: after class_embedding)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    text_ids = torch.arange(77).unsqueeze(0)
    vision_ids = torch.arange(dims.num_positions).unsqueeze(0)
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["text_model.embeddings.position_ids"] = text_ids
        out[k] = v
        if k == "vision_model.embeddings.class_embedding":
            out["vision_model.embeddings.position_ids"] = vision_ids
    return out


_PRETRAINED_CONFIG_4_21 = {  # PretrainedConfig attributes that transformers 4.21 wrote into every sub-config
    "_name_or_path": "",
    "add_cross_attention": False,
    "architectures": None,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.21.3",
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def _clip_config_json_4_21(dims: TinyDims) -> dict:
    """config.json in the shape of the openai repo's (written by transformers 4.21: full sub-config dicts with every
    PretrainedConfig attribute, plus the `text_config_dict` / `vision_config_dict` overrides, top-level
    `transformers_version: null`)."""
    # transformers (4.x and 5.23) rebuild each sub-config from its *_config_dict over the class defaults, and those
    # values win over text_config/vision_config. The real dicts list only the non-default values of ViT-L/14-336;
    # with tiny dims the text vocabulary and token ids are non-default too, so they are listed here as well.
    text_dict = {
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_size": dims.vision_hidden,
        "intermediate_size": dims.vision_intermediate,
        "num_attention_heads": dims.vision_heads,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "projection_dim": dims.projection_dim,
        "vocab_size": dims.text_vocab_clip,
    }
    vision_dict = {
        "hidden_size": dims.vision_hidden,
        "image_size": dims.image_size,
        "intermediate_size": dims.vision_intermediate,
        "num_attention_heads": dims.vision_heads,
        "num_hidden_layers": dims.vision_layers,
        "patch_size": dims.patch_size,
        "projection_dim": dims.projection_dim,
    }
    text_config = {
        **_PRETRAINED_CONFIG_4_21,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "pad_token_id": 1,
        "vocab_size": dims.text_vocab_clip,
        **text_dict,
    }
    vision_config = {
        **_PRETRAINED_CONFIG_4_21,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "dropout": 0.0,
        "eos_token_id": None,
        "hidden_act": "quick_gelu",
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_channels": 3,
        "pad_token_id": None,
        **vision_dict,
    }
    return {
        "_name_or_path": CLIP_REPO,
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": dims.projection_dim,
        "text_config": text_config,
        "text_config_dict": text_dict,
        "torch_dtype": "float32",
        "transformers_version": None,
        "vision_config": vision_config,
        "vision_config_dict": vision_dict,
    }


def _clip_preprocessor_json(dims: TinyDims) -> dict:
    """preprocessor_config.json of the openai repo (old feature-extractor format: int sizes)."""
    return {
        "crop_size": dims.image_size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "size": dims.image_size,
    }


def write_clip_tower(folder, dims: TinyDims, fmt: str = "bin", seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny `openai/clip-vit-large-patch14-336`: a full CLIPModel (vision + text towers), fp32.

    fmt "bin" (the real repo): `config.json` in the transformers 4.21 shape, `pytorch_model.bin` (torch.save pickle of
    the state dict, with the int64 `{text,vision}_model.embeddings.position_ids` buffers the old pickles have) and
    `preprocessor_config.json`.
    fmt "safetensors" (what a re-save with transformers 5.23 gives): `CLIPModel.save_pretrained` output, i.e. a 5.x
    `config.json` and a single `model.safetensors` without position_ids (non-persistent buffers), plus the same
    `preprocessor_config.json`.
    Keys: `vision_model.{embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight},
    pre_layrnorm.*, encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}.*,
    post_layernorm.*}`, `text_model.*`, `logit_scale`, `visual_projection.weight`, `text_projection.weight`.
    Not reproduced: the repo's CLIP BPE tokenizer files, tf_model.h5, README.
    Returns the tensors as stored.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = _clip_state_dict(dims, seed)
    if fmt == "bin":
        sd = _with_position_ids(sd, dims)
        torch.save(sd, folder / "pytorch_model.bin")
        _json_dump(folder / "config.json", _clip_config_json_4_21(dims))
    elif fmt == "safetensors":
        from transformers import CLIPModel

        model = CLIPModel(_clip_config(dims))
        model.load_state_dict(sd, strict=True)
        model.config.architectures = ["CLIPModel"]
        model.save_pretrained(folder)
        sd = OrderedDict(load_file(str(folder / "model.safetensors")))
    else:
        raise ValueError(f"fmt must be 'bin' or 'safetensors', not {fmt!r}")
    _json_dump(folder / "preprocessor_config.json", _clip_preprocessor_json(dims))
    return dict(sd)


# ---------------------------------------------------------------------------------------------------------------
# Original LLaVA-1.5 and AdaLLaVA


def _llama_inv_freq(dims: TinyDims) -> torch.Tensor:
    """LlamaRotaryEmbedding.inv_freq as transformers 4.31 computed and (persistently) saved it."""
    return 1.0 / (10000.0 ** (torch.arange(0, dims.head_dim, 2).float() / dims.head_dim))


def _base_llava_tensors(dims: TinyDims, seed: int, inv_freq: bool) -> "OrderedDict[str, torch.Tensor]":
    """LLaVA-1.5 language model + projector in the original key names and module order, fp16 (inv_freq fp32).

    The values depend only on (dims, seed): the same tensors back every writer."""
    g = torch.Generator().manual_seed(seed)
    d, inter, v = dims.hidden_size, dims.intermediate_size, dims.vocab_size
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, d))]
    for i in range(dims.num_layers):
        p = f"model.layers.{i}."
        shapes += [(p + f"self_attn.{x}_proj.weight", (d, d)) for x in "qkvo"]
        shapes += [(p + "self_attn.rotary_emb.inv_freq", ())]
        shapes += [(p + "mlp.gate_proj.weight", (inter, d)), (p + "mlp.up_proj.weight", (inter, d))]
        shapes += [(p + "mlp.down_proj.weight", (d, inter))]
        shapes += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
    shapes += [("model.norm.weight", (d,))]
    shapes += [("model.mm_projector.0.weight", (d, dims.vision_hidden)), ("model.mm_projector.0.bias", (d,))]
    shapes += [("model.mm_projector.2.weight", (d, d)), ("model.mm_projector.2.bias", (d,))]
    shapes += [("lm_head.weight", (v, d))]
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in shapes:
        if name.endswith("inv_freq"):
            if inv_freq:
                out[name] = _llama_inv_freq(dims)
            continue
        out[name] = _fill(name, shape, g).half()
    return out


def _insert_before(sd: "OrderedDict[str, torch.Tensor]", anchor: str, extra: dict) -> "OrderedDict[str, torch.Tensor]":
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, t in sd.items():
        if k == anchor:
            out.update(extra)
        out[k] = t
    return out


def _original_llava_config(dims: TinyDims) -> dict:
    """liuhaotian/llava-v1.5-7b's config.json (transformers 4.31.0, LLaVA code of Oct 2023), tiny dims.

    This is the real file's exact key set: it has NO rope_theta (LlamaConfig 4.31 has none), no mm_patch_merge_type,
    mm_projector_lr or tokenizer_* keys (those were added to LLaVA's train.py later; AdaLLaVA's configs have them),
    and it keeps vicuna's `max_length: 4096`."""
    return {
        "_name_or_path": "llava-v1.5-7b",
        "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "freeze_mm_vision_resampler": False,
        "hidden_act": "silu",
        "hidden_size": dims.hidden_size,
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate_size,
        "max_length": 4096,
        "max_position_embeddings": 4096,
        "mm_hidden_size": dims.vision_hidden,
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": CLIP_REPO,
        "model_type": "llava",
        "num_attention_heads": dims.num_heads,
        "num_hidden_layers": dims.num_layers,
        "num_key_value_heads": dims.num_heads,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False,
        "tune_mm_vision_resampler": False,
        "unfreeze_mm_vision_tower": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vocab_size": dims.vocab_size,
    }


def _generation_config(version: str) -> dict:
    return {
        "_from_model_config": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "max_length": 4096,
        "pad_token_id": 0,
        "transformers_version": version,
    }


def write_original_llava(
    folder, dims: TinyDims, num_shards: int = 2, include_tower: bool = False, seed: int = 0, **config_overrides
) -> dict[str, torch.Tensor]:
    """A tiny `liuhaotian/llava-v1.5-7b` (LLaVA-1.5, `LlavaLlamaForCausalLM`, saved by transformers 4.31).

    Files: `config.json` (see `_original_llava_config`; `config_overrides` update it, e.g.
    `mm_projector_type="linear"`), `generation_config.json`, `pytorch_model-0000N-of-0000M.bin` (torch.save of plain
    dicts), `pytorch_model.bin.index.json`, `tokenizer.model`, `tokenizer_config.json`, `special_tokens_map.json`.
    Keys (fp16 except inv_freq): `model.embed_tokens.weight` [V, d]; `model.layers.N.self_attn.{q,k,v,o}_proj.weight`
    [d, d]; `model.layers.N.self_attn.rotary_emb.inv_freq` (fp32 [head_dim/2], persistent in 4.31);
    `model.layers.N.mlp.{gate,up}_proj.weight` [I, d], `down_proj` [d, I]; `model.layers.N.{input,post_attention}_
    layernorm.weight` [d]; `model.norm.weight`; `model.mm_projector.0.{weight [d, mm_hidden], bias [d]}`;
    `model.mm_projector.2.{weight [d, d], bias [d]}`; `lm_head.weight` [V, d].
    include_tower: also `model.vision_tower.vision_tower.vision_model.*` (fp16, no position_ids: non-persistent since
    4.31), placed before `model.mm_projector.*` (module order) and equal to fp16(`write_clip_tower(seed=seed)`).
    The real llava-v1.5 repos most likely do carry these tower keys: loading them with LLaVA's code prints the
    well-known "Some weights of the model checkpoint ... were not used: ['model.vision_tower.vision_tower...']"
    (LLaVA builds the tower lazily from `mm_vision_tower`, so they are ignored). A converter must accept both.
    Returns the tensors as stored.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _base_llava_tensors(dims, seed, inv_freq=True)
    if include_tower:
        tower = OrderedDict(
            ("model.vision_tower.vision_tower." + k, t.half())
            for k, t in _clip_state_dict(dims, seed).items()
            if k.startswith("vision_model.")
        )
        tensors = _insert_before(tensors, "model.mm_projector.0.weight", tower)
    config = _original_llava_config(dims)
    config.update(config_overrides)
    _json_dump(folder / "config.json", config)
    _json_dump(folder / "generation_config.json", _generation_config("4.31.0"))
    _write_sharded(folder, tensors, num_shards, "bin")
    write_sentencepiece_tokenizer(folder, dims, style="llava")
    return dict(tensors)


def _original_adallava_config(dims, scheduler_type, num_prefix_layers, scheduler_rank) -> dict:
    """zhuoyanxu/ada-llava-*'s config.json: AdaLLaVA's train.py (LLaVA 1.2.x fork, transformers 4.37.2) loaded from
    liuhaotian/llava-v1.5-7b, so the llava-v1.5 keys stay and the 4.37 LlamaConfig / LLaVA-1.2 keys are added."""
    config = _original_llava_config(dims)
    config.update(
        {
            "_name_or_path": "liuhaotian/llava-v1.5-7b",
            "architectures": ["AdaLlavaLlamaForCausalLM"],
            "model_type": "ada_llava_llama",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "rope_theta": 10000.0,
            "mm_patch_merge_type": "flat",
            "mm_projector_lr": None,
            "tokenizer_model_max_length": 2048,
            "tokenizer_padding_side": "right",
            "num_prefix_layers": num_prefix_layers,
            "scheduler_type": scheduler_type,
            "token_selecting": "none",
            "torch_dtype": "float16",
            "transformers_version": "4.37.2",
        }
    )
    if scheduler_rank is not None:  # the legacy configs have no scheduler_rank key (the class default 8 applies)
        config["scheduler_rank"] = scheduler_rank
    return config


def write_original_adallava(
    folder,
    dims: TinyDims,
    scheduler_type: str = "L",
    num_prefix_layers: int = 2,
    scheduler_rank: int | None = 2,
    num_shards: int = 2,
    seed: int = 0,
    **config_overrides,
) -> dict[str, torch.Tensor]:
    """A tiny `zhuoyanxu/ada-llava-{L,H}-v1.5-7b` (`AdaLlavaLlamaForCausalLM`, saved by transformers 4.37.2).

    Files: `config.json` (`_original_adallava_config`, updated by `config_overrides`), `generation_config.json`,
    `model-0000N-of-0000M.safetensors` (metadata {"format": "pt"}), `model.safetensors.index.json`, and the
    tokenizer files (4.37 style). All tensors fp16. Keys: the LLaVA-1.5 ones of [`write_original_llava`] without
    `rotary_emb.inv_freq` (non-persistent in 4.37) and without any CLIP key (the Hub shard sizes match
    LLM + projector + scheduler), plus
    `scheduler.mlp_head.{weight, bias}` ([S, d] / [S] for "L"; [S*H*2, d] / [S*H*2] for "H"; S = N - P, H = heads;
    std 0.5 so plans are not near-ties), `scheduler.scheduler_up_proj.net.0.{weight,bias}` [256] (LayerNorm),
    `...net.1.{weight [d, 256], bias [d]}`, `...net.3.{weight [d, d], bias [d]}`.
    The base tensors equal those of `write_original_llava(seed=seed)`. Returns the tensors as stored.
    """
    if scheduler_type not in ("L", "H"):
        raise ValueError("scheduler_type must be 'L' or 'H'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = dims.hidden_size
    s = dims.num_layers - num_prefix_layers
    head_out = s if scheduler_type == "L" else s * dims.num_heads * 2
    g = torch.Generator().manual_seed(20_000 + seed)
    tensors = _base_llava_tensors(dims, seed, inv_freq=False)
    sched = OrderedDict()
    sched["scheduler.mlp_head.weight"] = 0.5 * torch.randn(head_out, d, generator=g)
    sched["scheduler.mlp_head.bias"] = 0.5 * torch.randn(head_out, generator=g)
    sched["scheduler.scheduler_up_proj.net.0.weight"] = 1.0 + 0.1 * torch.randn(256, generator=g)
    sched["scheduler.scheduler_up_proj.net.0.bias"] = 0.05 * torch.randn(256, generator=g)
    sched["scheduler.scheduler_up_proj.net.1.weight"] = torch.randn(d, 256, generator=g) / 16.0
    sched["scheduler.scheduler_up_proj.net.1.bias"] = 0.05 * torch.randn(d, generator=g)
    sched["scheduler.scheduler_up_proj.net.3.weight"] = torch.randn(d, d, generator=g) / math.sqrt(d)
    sched["scheduler.scheduler_up_proj.net.3.bias"] = 0.05 * torch.randn(d, generator=g)
    tensors.update((k, v.half()) for k, v in sched.items())
    config = _original_adallava_config(dims, scheduler_type, num_prefix_layers, scheduler_rank)
    config.update(config_overrides)
    _json_dump(folder / "config.json", config)
    _json_dump(folder / "generation_config.json", _generation_config("4.37.2"))
    _write_sharded(folder, tensors, num_shards, "safetensors")
    write_sentencepiece_tokenizer(folder, dims, style="adallava")
    return dict(tensors)


# ---------------------------------------------------------------------------------------------------------------
# llava-hf (llava-hf/llava-1.5-7b-hf)


def _llava_hf_config(dims: TinyDims):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=dims.vision_hidden,
        intermediate_size=dims.vision_intermediate,
        num_hidden_layers=dims.vision_layers,
        num_attention_heads=dims.vision_heads,
        image_size=dims.image_size,
        patch_size=dims.patch_size,
        projection_dim=dims.projection_dim,
    )
    text = LlamaConfig(
        vocab_size=dims.padded_vocab_size,
        hidden_size=dims.hidden_size,
        intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.num_layers,
        num_attention_heads=dims.num_heads,
        num_key_value_heads=dims.num_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=dims.vocab_size,
        pad_token_id=dims.vocab_size + 1,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(dims.image_size // dims.patch_size) ** 2,
        tie_word_embeddings=False,
    )


def _llava_hf_legacy_config_json(dims: TinyDims) -> dict:
    """llava-hf/llava-1.5-7b-hf's config.json (transformers 4.36.0.dev0 diff-only format), tiny dims. The real
    text_config omits hidden_size & co. because they equal the LlamaConfig defaults (7B); here they are spelled out."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": dims.vocab_size,
        "model_type": "llava",
        "pad_token_id": dims.vocab_size + 1,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": dims.hidden_size,
            "intermediate_size": dims.intermediate_size,
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "num_attention_heads": dims.num_heads,
            "num_hidden_layers": dims.num_layers,
            "num_key_value_heads": dims.num_heads,
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": dims.padded_vocab_size,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {
            "hidden_size": dims.vision_hidden,
            "image_size": dims.image_size,
            "intermediate_size": dims.vision_intermediate,
            "model_type": "clip_vision_model",
            "num_attention_heads": dims.vision_heads,
            "num_hidden_layers": dims.vision_layers,
            "patch_size": dims.patch_size,
            "projection_dim": dims.projection_dim,
            "vocab_size": 32000,  # (sic) present in the real file
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": dims.padded_vocab_size,
    }


def _llava_hf_state_dict(dims: TinyDims, seed: int) -> dict[str, torch.Tensor]:
    """transformers 5.23 `LlavaForConditionalGeneration.state_dict()` names, fp16 values: what HF's conversion makes
    of `write_original_llava(seed)` + `write_clip_tower(seed)`; embeddings grown to `padded_vocab_size` rows."""
    base = _base_llava_tensors(dims, seed, inv_freq=False)
    g = torch.Generator().manual_seed(30_000 + seed)
    n_new = dims.padded_vocab_size - dims.vocab_size

    def grow(w: torch.Tensor) -> torch.Tensor:
        w32 = w.float()
        new = w32.mean(0, keepdim=True) + 1e-3 * torch.randn(n_new, w.shape[1], generator=g)
        return torch.cat([w32, new]).half()

    sd = {}
    for k, t in base.items():
        if k == "lm_head.weight":
            sd["lm_head.weight"] = grow(t)
        elif k == "model.embed_tokens.weight":
            sd["model.language_model.embed_tokens.weight"] = grow(t)
        elif k.startswith("model.mm_projector."):
            idx = k.split(".")[2]
            linear = "linear_1" if idx == "0" else "linear_2"
            sd[k.replace(f"model.mm_projector.{idx}", f"model.multi_modal_projector.{linear}")] = t
        else:
            sd[k.replace("model.", "model.language_model.", 1)] = t
    for k, t in _clip_state_dict(dims, seed).items():
        if k.startswith("vision_model."):
            sd["model.vision_tower." + k[len("vision_model.") :]] = t.half()
    return sd


def _legacy_llava_hf_key(k: str) -> str:
    """transformers 5.x Llava key -> the 4.x layout of the Hub repos."""
    if k.startswith("model.language_model."):
        return "language_model.model." + k[len("model.language_model.") :]
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    if k.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + k[len("model.vision_tower.") :]
    if k.startswith("model.multi_modal_projector."):
        return k[len("model.") :]
    raise KeyError(k)


def _build_llava_hf_tokenizer(dims: TinyDims):
    """The llava-hf tokenizer: our SentencePiece model as a 5.23 fast LlamaTokenizer, plus `<image>` and `<pad>`."""
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_sentencepiece_tokenizer(tmp, dims, style="adallava")
        tok = LlamaTokenizer.from_pretrained(tmp)
    # 5.23's conversion builds BPE(byte_fallback=True, unk_token=None); our SentencePiece model has no byte pieces,
    # so unknown characters would be silently dropped instead of becoming <unk> as in the SentencePiece model.
    tok.backend_tokenizer.model.byte_fallback = False
    tok.backend_tokenizer.model.unk_token = "<unk>"
    tok.add_tokens(AddedToken("<image>", special=True, normalized=False))
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "left"
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [dims.vocab_size, dims.vocab_size + 1]
    return tok


def _build_llava_hf_processor(dims: TinyDims):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": dims.image_size},
        crop_size={"height": dims.image_size, "width": dims.image_size},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        do_rescale=True,
        do_convert_rgb=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        resample=3,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=_build_llava_hf_tokenizer(dims),
        patch_size=dims.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_HF_CHAT_TEMPLATE,
    )


def _write_llava_hf_legacy_processor(folder: Path, dims: TinyDims, processor) -> None:
    """The processor files of the Hub repo (4.4x format): `preprocessor_config.json` (CLIPImageProcessor dict),
    `processor_config.json`, `chat_template.json`, `tokenizer.json` + `tokenizer.model` + `tokenizer_config.json`
    (LlamaTokenizer, added_tokens_decoder with <image>/<pad>, padding_side left) + `special_tokens_map.json` +
    `added_tokens.json`."""
    v = dims.vocab_size
    _json_dump(
        folder / "preprocessor_config.json",
        {
            "crop_size": {"height": dims.image_size, "width": dims.image_size},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": OPENAI_CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": OPENAI_CLIP_STD,
            "processor_class": "LlavaProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": dims.image_size},
        },
    )
    _json_dump(
        folder / "processor_config.json",
        {
            "image_token": "<image>",
            "num_additional_image_tokens": 1,
            "patch_size": dims.patch_size,
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    _json_dump(folder / "chat_template.json", {"chat_template": LLAVA_HF_CHAT_TEMPLATE})
    with tempfile.TemporaryDirectory() as tmp:
        processor.tokenizer.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer.model").write_bytes(sentencepiece_model_bytes(v))
    special = {**_added_token("", False), "special": True}
    _json_dump(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {
                str(i): {**special, "content": t}
                for i, t in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (v, "<image>"), (v + 1, "<pad>")]
            },
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": "<pad>",
            "padding_side": "left",
            "processor_class": "LlavaProcessor",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "trust_remote_code": False,
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )
    _json_dump(
        folder / "special_tokens_map.json",
        {
            "bos_token": _added_token("<s>", False),
            "eos_token": _added_token("</s>", False),
            "pad_token": _added_token("<pad>", False),
            "unk_token": _added_token("<unk>", False),
        },
    )
    _json_dump(folder / "added_tokens.json", {"<image>": v, "<pad>": v + 1})


def write_llava_hf(folder, dims: TinyDims, layout: str = "legacy", num_shards: int = 2, seed: int = 0):
    """A tiny `llava-hf/llava-1.5-7b-hf` (`LlavaForConditionalGeneration`): fp16 safetensors shards + processor.

    The model: text vocab `padded_vocab_size` (= round_up(vocab_size + 2, 64)), `image_token_index = vocab_size`,
    `pad_token_id = vocab_size + 1`, gelu projector, vision_feature_layer -2, strategy "default"; weights as described
    in the module docstring (the HF conversion of the original fixtures with the same seed).

    layout "legacy" (every llava-hf Hub repo; transformers 4.36-4.4x): `config.json` in the 4.36 diff-only format
    (`image_token_index`, `torch_dtype`, partial `text_config`), `generation_config.json`,
    `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json` with keys `language_model.model.*`,
    `language_model.lm_head.weight`, `vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`, and the
    processor files of `_write_llava_hf_legacy_processor`.
    NOTE transformers 5.23's default `save_pretrained` (save_original_format=True) does NOT write this layout: it
    reverts the language model to `language_model.model.*` / `language_model.lm_head.weight` but writes the tower as
    `vision_tower.embeddings.*` (the CLIPVisionModel `vision_model.` prefix is not re-added), so the shards are
    rewritten here with `vision_tower.vision_model.*` (tested in test_checkpoint_fixtures.py).
    layout "v5": exactly what transformers 5.23 writes with `save_pretrained(save_original_format=False,
    max_shard_size=...)` (5.x config.json, keys `model.language_model.*`, `lm_head.weight`, `model.vision_tower.*`,
    `model.multi_modal_projector.*`, index metadata with `total_parameters` too) and `processor.save_pretrained`
    (`processor_config.json` nesting the image processor, `chat_template.jinja`, `tokenizer.json`,
    `tokenizer_config.json`; no preprocessor_config.json, no tokenizer.model).
    Both layouts load natively with `LlavaForConditionalGeneration.from_pretrained` in 5.23 (no key_mapping: the
    "llava" and "CLIPVisionModel" conversion mappings handle `language_model.*` and `vision_tower.vision_model.*`);
    5.23 loads them in the checkpoint dtype (fp16) unless `dtype=torch.float32` is passed.

    Reproduced from the Hub repo: file names (3 shards there, `num_shards` here), key names, fp16, the config keys,
    the processor/tokenizer file set and their main fields, the chat template. Not reproduced: README/.gitattributes;
    the real text_config omits the 7B sizes (LlamaConfig defaults) while the tiny one spells them out; the real
    tokenizer.json comes from the 4.3x converter (normalizer Prepend/Replace) with Llama's byte-fallback vocabulary,
    ours from 5.23's (Metaspace pre-tokenizer, no byte pieces): same ids for text made of the training characters.

    Returns the in-memory model (fp32, eval mode, holding exactly the fp16 values that were saved).
    """
    from transformers import LlavaForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = _llava_hf_config(dims)
    model = LlavaForConditionalGeneration(config)
    sd16 = _llava_hf_state_dict(dims, seed)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd16.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    model.generation_config.pad_token_id = dims.vocab_size + 1
    processor = _build_llava_hf_processor(dims)
    # Save an fp16 copy: a .half()/.float() round trip of `model` itself would also round its fp32 rotary buffers,
    # and the returned model would no longer match a reload bit for bit.
    model16 = copy.deepcopy(model).half()
    if layout == "legacy":
        with tempfile.TemporaryDirectory() as tmp:
            model16.save_pretrained(tmp)  # 5.23 default: save_original_format=True
            saved = {}
            for f in sorted(Path(tmp).glob("*.safetensors")):
                saved.update(load_file(str(f)))
        # 5.23 writes the tower as `vision_tower.embeddings.*`; the Hub repos have `vision_tower.vision_model.*`
        legacy = {}
        for k, v in saved.items():
            if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
                k = "vision_tower.vision_model." + k[len("vision_tower.") :]
            legacy[k] = v
        expected = {_legacy_llava_hf_key(k): t for k, t in sd16.items()}
        assert legacy.keys() == expected.keys() and all(torch.equal(legacy[k], expected[k]) for k in expected)
        # 4.x module order (LlavaForConditionalGeneration.__init__): vision tower, projector, language model
        order = [k for k in expected if k.startswith("vision_tower.")]
        order += [k for k in expected if k.startswith("multi_modal_projector.")]
        order += [k for k in expected if k.startswith("language_model.model.")] + ["language_model.lm_head.weight"]
        _write_sharded(folder, OrderedDict((k, expected[k]) for k in order), num_shards, "safetensors")
        _json_dump(folder / "config.json", _llava_hf_legacy_config_json(dims))
        _json_dump(
            folder / "generation_config.json",
            {
                "_from_model_config": True,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": dims.vocab_size + 1,
                "transformers_version": "4.36.0.dev0",
            },
        )
        _write_llava_hf_legacy_processor(folder, dims, processor)
    elif layout == "v5":
        _save_v5_sharded(model16, folder, num_shards)
        processor.save_pretrained(folder)
    else:
        raise ValueError(f"layout must be 'legacy' or 'v5', not {layout!r}")
    return model


def _save_v5_sharded(model16, folder: Path, num_shards: int) -> None:
    """`save_pretrained(save_original_format=False)` with the smallest max_shard_size giving `num_shards` files (the
    5.23 sharding is greedy, so total/num_shards alone can give one shard more); at least `num_shards` otherwise."""
    sizes = [_nbytes(t) for t in model16.state_dict().values()]
    total, largest = sum(sizes), max(sizes)
    best = max(1, math.ceil(total / num_shards))
    with tempfile.TemporaryDirectory() as tmp:
        for extra in range(0, largest + 1, max(1, largest // 16)):
            candidate = math.ceil(total / num_shards) + extra
            model16.save_pretrained(tmp, save_original_format=False, max_shard_size=candidate)
            n = len(list(Path(tmp).glob("model-*.safetensors")))
            for f in Path(tmp).iterdir():
                f.unlink()
            if n == num_shards:
                best = candidate
                break
            if n < num_shards:
                break
    model16.save_pretrained(folder, save_original_format=False, max_shard_size=best)
