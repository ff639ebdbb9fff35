"""Converting original LLaVA-1.5, original AdaLLaVA and llava-hf checkpoints into Hub-ready AdaLlava repos.

    ada-hf convert SOURCE OUTPUT --vision-tower PATH_OR_REPO [--from KIND] [--dtype float16] [--max-shard-size 5GB]

Weights stream shard by shard (one source shard and one output shard in memory at a time), `.bin` pickles load with
`weights_only=True`, and the repo is written to a temporary folder that replaces OUTPUT only when everything
checked out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, CLIPVisionConfig, GenerationConfig, LlamaTokenizer
from transformers.dynamic_module_utils import custom_object_save
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from .checkpoint_io import atomic_output_folder, find_weight_files, iter_file_tensors, parse_size, ShardWriter
from .configuration_ada_llava import AdaLlavaConfig
from .latency_scheduler import LatencyScheduler
from .modeling_ada_llava import AUTO_MAP, AdaLlavaForConditionalGeneration
from .processing_ada_llava import AdaLlavaProcessor, add_latency_token
from .special_tokens import set_mean_rows

SOURCE_KINDS = ("llava-original", "adallava-original", "llava-hf")
KEEP = "keep"  # scheduler_type: keep what the source has

# Source prefix -> our prefix; the first rule that matches wins.
ORIGINAL_RULES = (
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
    ("scheduler.mlp_head.", "model.scheduler.mlp_head."),
    ("scheduler.scheduler_up_proj.", "model.scheduler.latency_encoder."),
)
TOWER_RULES = (("vision_model.", "model.vision_tower."),)
LLAVA_HF_RULES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("model.vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
)
# Dropped without a word: buffers transformers rebuilds.
SILENT_DROPS = (re.compile(r"\.rotary_emb\.inv_freq$"), re.compile(r"(^|\.)embeddings\.position_ids$"))
# Dropped and listed: the parts of a full CLIPModel LLaVA does not use.
REPORTED_DROPS = (
    re.compile(r"^text_model\."),
    re.compile(r"^logit_scale$"),
    re.compile(r"^(visual|text)_projection\."),
)


def map_key(name: str, rules) -> str | None:
    for source, target in rules:
        if name.startswith(source):
            return target + name[len(source) :]
    return None


def unmap_key(name: str, rules) -> str | None:
    """The inverse of `map_key` for rules whose targets are distinct (the original and tower rules)."""
    for source, target in rules:
        if name.startswith(target):
            return source + name[len(target) :]
    return None


@dataclass
class ConversionReport:
    """What a conversion did: printed by the CLI, returned to callers."""

    output: Path
    kind: str
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    largest_source_shard_bytes: int = 0
    largest_output_shard_bytes: int = 0

    def summary(self) -> str:
        lines = [f"Converted a {self.kind} checkpoint into {self.output} ({len(self.shards)} shard(s))."]
        lines += [f"note: {note}" for note in self.notes]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} source tensor(s) the model does not use:")
            lines += [f"  {name}" for name in _summarise(self.dropped)]
        return "\n".join(lines)


def _summarise(names: list[str]) -> list[str]:
    """Group names like `text_model.encoder.layers.3.mlp.fc1.weight` by their first two parts."""
    groups: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        head = ".".join(parts[:2]) + ".*" if len(parts) > 2 else name
        groups[head] = groups.get(head, 0) + 1
    return [f"{head} ({count} tensor{'s' * (count > 1)})" for head, count in groups.items()]


# ---------------------------------------------------------------------------------------------------------------------
# Sources
def resolve_folder(source: str | Path, what: str) -> Path:
    """A local folder, or a Hub repo id downloaded with huggingface_hub (when online)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"The {what} {source} is a file; give the checkpoint folder or a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"]))
    except Exception as error:  # offline, unknown repo, no access
        raise FileNotFoundError(
            f"The {what} {source!r} is not a local folder and could not be downloaded from the Hub ({error})."
        ) from error


def read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a checkpoint folder needs its config.json.")
    return json.loads(path.read_text())


def detect_source_kind(config: dict) -> str:
    """Tell the three formats apart by `architectures` and the `mm_*` fields (two of them say model_type "llava")."""
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if "AdaLlavaLlamaForCausalLM" in architectures or model_type == "ada_llava_llama":
        return "adallava-original"
    if model_type == "llava" and ("mm_vision_tower" in config or "LlavaLlamaForCausalLM" in architectures):
        return "llava-original"
    if model_type == "llava" and "text_config" in config:
        return "llava-hf"
    raise ValueError(
        f"Cannot tell which checkpoint format this is (model_type={model_type!r}, architectures={architectures}). "
        f"Pass --from with one of {SOURCE_KINDS}."
    )


def _vision_config(tower: Path) -> dict:
    """The CLIP vision config, read by transformers itself (old CLIP configs nest it under `vision_config_dict`)."""
    model_type = read_json(tower / "config.json").get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(
            f"{tower} is not a CLIP vision tower (model_type={model_type!r}); LLaVA-1.5 uses "
            "openai/clip-vit-large-patch14-336."
        )
    config = CLIPVisionConfig.from_pretrained(tower).to_dict()
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    return config


def _check_multimodal_fields(config: dict) -> tuple[int, str]:
    """Refuse the LLaVA settings this model does not implement; return the feature layer and selection strategy."""
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ValueError(f"mm_projector_type={projector!r} is not supported: ada_hf implements LLaVA-1.5's mlp2x_gelu.")
    merge = config.get("mm_patch_merge_type", "flat")
    if merge not in (None, "flat"):
        raise ValueError(f"mm_patch_merge_type={merge!r} (LLaVA-NeXT) is not supported: only 'flat' (LLaVA-1.5).")
    aspect = config.get("image_aspect_ratio", "pad")
    if aspect not in (None, "pad", "square"):
        raise ValueError(f"image_aspect_ratio={aspect!r} (anyres) is not supported: only 'pad' (LLaVA-1.5).")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(flag):
            raise ValueError(f"{flag}=true adds image start/end or patch tokens, which ada_hf does not support.")
    feature = config.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if feature not in strategies:
        raise ValueError(f"mm_vision_select_feature={feature!r} is not supported: use 'patch' or 'cls_patch'.")
    return int(config.get("mm_vision_select_layer", -2)), strategies[feature]


def _text_config(source: dict, vocab_rows: int, pad_token_id: int) -> dict:
    rope_theta = source.get("rope_theta", 10000.0)
    return dict(
        model_type="llama",
        vocab_size=vocab_rows,
        hidden_size=source["hidden_size"],
        intermediate_size=source["intermediate_size"],
        num_hidden_layers=source["num_hidden_layers"],
        num_attention_heads=source["num_attention_heads"],
        num_key_value_heads=source.get("num_key_value_heads") or source["num_attention_heads"],
        max_position_embeddings=source.get("max_position_embeddings", 4096),
        rms_norm_eps=source.get("rms_norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        hidden_act=source.get("hidden_act", "silu"),
        initializer_range=source.get("initializer_range", 0.02),
        bos_token_id=source.get("bos_token_id", 1),
        eos_token_id=source.get("eos_token_id", 2),
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class _Plan:
    """Everything decided before any weight is read."""

    config: AdaLlavaConfig
    processor: AdaLlavaProcessor
    files: list[Path]  # weight files in reading order
    rules: dict[Path, tuple]  # mapping rules per file
    tower_files: set[Path]  # files of a separate CLIP tower: skipped where the checkpoint carries its own copy
    new_rows: list[int]  # vocabulary rows of the tokens this conversion adds: filled with the exact mean row
    base_vocab: int  # rows trained before LLaVA added any token: the mean is taken over these
    scheduler_from_source: bool
    notes: list[str]


@dataclass
class _SourceFields:
    """What one source format contributes to the config, the vocabulary and the file list."""

    config: dict
    new_rows: list[int]
    base_vocab: int
    scheduler: dict
    files: list[Path]
    rules: dict[Path, tuple]
    preprocessor: Path | None = None
    tower_files: set[Path] = field(default_factory=set)


def _llava_hf_fields(source: Path, src: dict, tokenizer, tower: Path | None, notes: list[str]) -> _SourceFields:
    if tower is not None:
        notes.append("--vision-tower ignored: llava-hf checkpoints carry their CLIP tower.")
    skip = ("architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype", "_name_or_path")
    fields = {k: v for k, v in src.items() if k not in skip}
    image_id = fields.pop("image_token_index", fields.pop("image_token_id", 32000))
    latency_id = add_latency_token(tokenizer)
    text = dict(fields.pop("text_config"))
    text["vocab_size"] = max(text.get("vocab_size", 0), _round_up(len(tokenizer), 64))
    if fields.get("pad_token_id") is not None:
        text["pad_token_id"] = fields["pad_token_id"]
    files = find_weight_files(source).files
    return _SourceFields(
        config=dict(fields, text_config=text, image_token_index=image_id),
        new_rows=[latency_id],
        base_vocab=image_id,  # llava-hf appended <image>, <pad> and padding rows after the trained ones
        scheduler={},
        files=files,
        rules={path: LLAVA_HF_RULES for path in files},
    )


def _original_fields(kind: str, source: Path, src: dict, tokenizer, tower: Path | None, notes: list[str]):
    if tower is None:
        raise ValueError(
            f"{source} is an original {kind} checkpoint without its CLIP tower: pass --vision-tower with the tower "
            f"it was trained with ({src.get('mm_vision_tower', 'openai/clip-vit-large-patch14-336')})."
        )
    vision = _vision_config(tower)
    if src.get("mm_hidden_size") not in (None, vision["hidden_size"]):
        raise ValueError(
            f"The vision tower {tower} has hidden size {vision['hidden_size']} but the checkpoint's projector expects "
            f"mm_hidden_size={src['mm_hidden_size']}: this is not the tower it was trained with "
            f"({src.get('mm_vision_tower')})."
        )
    feature_layer, strategy = _check_multimodal_fields(src)
    base_vocab = src["vocab_size"]
    if len(tokenizer) != base_vocab:
        raise ValueError(f"The tokenizer in {source} has {len(tokenizer)} tokens but config.json says {base_vocab}.")
    # As llava-hf: <image> 32000, <pad> 32001; then <latency> 32002; rows padded to a multiple of 64 (32064).
    tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    latency_id = add_latency_token(tokenizer)
    image_id, pad_id = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id
    if (image_id, pad_id, latency_id) != (base_vocab, base_vocab + 1, base_vocab + 2):
        raise ValueError(f"Unexpected ids {(image_id, pad_id, latency_id)} for <image>, <pad>, <latency>.")
    config = dict(
        text_config=_text_config(src, _round_up(len(tokenizer), 64), pad_id),
        vision_config=vision,
        image_token_index=image_id,
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
        projector_hidden_act="gelu",
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=True,
    )
    scheduler = {}
    if kind == "adallava-original":
        scheduler["scheduler_type"] = src.get("scheduler_type", "L")
        for key, default in (("num_prefix_layers", 16), ("scheduler_rank", 8)):
            scheduler[key] = src.get(key)
            if scheduler[key] is None:
                scheduler[key] = default
                notes.append(f"config.json has no {key}: used the original class default {default}.")
        token_selecting = src.get("token_selecting", "none")
        if token_selecting not in (None, "none"):
            config["token_selecting"] = token_selecting
            notes.append(
                f"token_selecting={token_selecting!r}: the converted model runs PruMerge"
                f"{'+' if token_selecting == 'prumerge+' else ''} token selection, as the checkpoint was trained."
            )
    # The checkpoint's own files first: if it carries the tower (model.vision_tower.vision_tower.*), that copy wins
    # and the tower folder only supplies the vision config and preprocessing.
    source_files, tower_files = find_weight_files(source).files, find_weight_files(tower).files
    rules = {path: ORIGINAL_RULES for path in source_files} | {path: TOWER_RULES for path in tower_files}
    return _SourceFields(config, [image_id, pad_id, latency_id], base_vocab, scheduler, source_files + tower_files,
                         rules, tower / "preprocessor_config.json", tower_files=set(tower_files))  # fmt: skip


def _plan_conversion(
    source: Path, kind: str, tower: Path | None, scheduler_type, num_prefix_layers, scheduler_rank, dtype
) -> _Plan:
    src = read_json(source / "config.json")
    notes: list[str] = []
    # transformers maps model_type "llava" to a generic tokenizer that mis-tokenizes original LLaVA's SentencePiece
    # model (it drops Llama's leading "▁"): the original formats load their tokenizer.model as Llama's.
    tokenizer = (AutoTokenizer if kind == "llava-hf" else LlamaTokenizer).from_pretrained(source)
    if kind == "llava-hf":
        fields = _llava_hf_fields(source, src, tokenizer, tower, notes)
    else:
        fields = _original_fields(kind, source, src, tokenizer, tower, notes)

    # The scheduler: the source's (kept), none (a plain LLaVA), or a fresh one for training.
    if scheduler_type == KEEP:
        scheduler = dict(fields.scheduler)
    elif scheduler_type is None:
        scheduler = {}
        if fields.scheduler:
            notes.append("--scheduler-type none: the source's scheduler weights are dropped (plain LLaVA).")
    else:
        if fields.scheduler and fields.scheduler["scheduler_type"] != scheduler_type:
            raise ValueError(
                f"The source is an AdaLLaVA-{fields.scheduler['scheduler_type']} checkpoint; it cannot become "
                f"scheduler_type {scheduler_type!r}."
            )
        scheduler = dict(fields.scheduler, scheduler_type=scheduler_type)
    from_source = bool(fields.scheduler) and bool(scheduler)
    if scheduler and not from_source:
        for key, value in (("num_prefix_layers", num_prefix_layers), ("scheduler_rank", scheduler_rank)):
            if value is not None:
                scheduler[key] = value
        notes.append("the scheduler is new (freshly initialised for training): its plans mean nothing until trained.")
    elif num_prefix_layers is not None or scheduler_rank is not None:
        raise ValueError("--num-prefix-layers and --scheduler-rank only shape a new scheduler (--scheduler-type L|H).")
    if from_source:
        scheduler["default_latency"] = 1.0  # the original was never trained without a latency token
    config = AdaLlavaConfig(**fields.config, latency_token_id=fields.new_rows[-1], **scheduler)
    config.dtype = dtype
    processor = AdaLlavaProcessor(
        image_processor=_image_processor(fields.preprocessor, config),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )
    return _Plan(config, processor, fields.files, fields.rules, fields.tower_files, fields.new_rows, fields.base_vocab,
                 from_source, notes)  # fmt: skip


def _image_processor(preprocessor: Path | None, config: AdaLlavaConfig) -> LlavaImageProcessorPil:
    """LLaVA-1.5 preprocessing: pad to a square with the CLIP mean colour, resize, centre-crop, normalise."""
    values = json.loads(preprocessor.read_text()) if preprocessor is not None and preprocessor.exists() else {}
    size = config.vision_config.image_size
    return LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=values.get("image_mean", OPENAI_CLIP_MEAN),
        image_std=values.get("image_std", OPENAI_CLIP_STD),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
def convert(
    source: str | Path,
    output: str | Path,
    *,
    vision_tower: str | Path | None = None,
    source_kind: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: str | int = "5GB",
    scheduler_type: str | None = KEEP,
    num_prefix_layers: int | None = None,
    scheduler_rank: int | None = None,
    overwrite: bool = False,
    drop_unknown: bool = False,
    repo_id: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ConversionReport:
    """
    Convert a checkpoint into a folder that loads with `AutoModel.from_pretrained(output, trust_remote_code=True)`.

    Args:
        source: folder or Hub repo id of an original LLaVA-1.5, original AdaLLaVA or llava-hf checkpoint.
        output: the folder to write (replaced only with `overwrite=True`).
        vision_tower: the CLIP tower (folder or repo id) for the original formats, which do not carry it.
        source_kind: one of `SOURCE_KINDS`; detected from config.json when None.
        dtype: dtype of the written weights (default: the source's `torch_dtype`).
        max_shard_size: largest output shard, e.g. "5GB".
        scheduler_type: "keep" (the source's), None (plain LLaVA), "L" or "H" (a fresh scheduler for training).
        num_prefix_layers, scheduler_rank: override the scheduler's geometry (a fresh scheduler only).
        drop_unknown: drop source tensors the model has no place for (listed) instead of failing.
        repo_id: the Hub repo the model card names.
    """
    source_dir = resolve_folder(source, "source checkpoint")
    source_config = read_json(source_dir / "config.json")
    kind = source_kind or detect_source_kind(source_config)
    if kind not in SOURCE_KINDS:
        raise ValueError(f"--from {kind!r} is not one of {SOURCE_KINDS}.")
    tower = resolve_folder(vision_tower, "vision tower") if vision_tower is not None else None
    dtype = _resolve_dtype(dtype, source_config)
    plan = _plan_conversion(source_dir, kind, tower, scheduler_type, num_prefix_layers, scheduler_rank, dtype)
    report = ConversionReport(output=Path(output), kind=kind, notes=plan.notes)

    with torch.device("meta"):
        skeleton = AdaLlavaForConditionalGeneration(plan.config)
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    written: set[str] = set()
    unknown: list[str] = []
    with atomic_output_folder(Path(output), overwrite=overwrite) as staging:
        writer = ShardWriter(staging, parse_size(max_shard_size))
        for path in plan.files:
            report.largest_source_shard_bytes = max(report.largest_source_shard_bytes, path.stat().st_size)
            tensors = iter_file_tensors(path)
            for name, tensor in tqdm(tensors, desc=path.name, unit=" tensors", disable=not progress, leave=False):
                if any(p.search(name) for p in SILENT_DROPS):
                    continue
                if any(p.search(name) for p in REPORTED_DROPS):
                    report.dropped.append(name)
                    continue
                target = map_key(name, plan.rules[path])
                if target is not None and target.startswith("model.scheduler.") and not plan.scheduler_from_source:
                    report.dropped.append(name)
                    continue
                if target is None or target not in expected:
                    unknown.append(name)
                    continue
                if target in written and path in plan.tower_files:
                    continue  # the checkpoint carried its own copy of the tower
                tensor = _fit(target, tensor, expected[target], plan, dtype)
                writer.add(target, tensor)
                written.add(target)
        if unknown and not drop_unknown:
            raise ValueError(
                f"{len(unknown)} source tensor(s) have no place in the converted model: {unknown[:20]}"
                f"{' ...' if len(unknown) > 20 else ''}. Check --from and the checkpoint, or pass --drop-unknown."
            )
        report.dropped += unknown
        if plan.config.scheduler_type is not None and not plan.scheduler_from_source:
            for name, tensor in _fresh_scheduler(plan.config, seed).items():
                writer.add(name, tensor.to(dtype))
                written.add(name)
        missing = sorted(set(expected) - written)
        if missing:
            raise ValueError(f"The source lacks {len(missing)} tensor(s) the model needs: {missing[:20]}")
        report.shards = writer.finish()
        report.largest_output_shard_bytes = writer.largest_shard_bytes
        _write_repo_files(staging, skeleton, plan, repo_id=repo_id, source=str(source))
    return report


def _resolve_dtype(dtype, source_config: dict) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or source_config.get("torch_dtype") or source_config.get("dtype") or "float16"
    if name not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"dtype {name!r} is not supported: use float16, bfloat16 or float32.")
    return getattr(torch, name)


def _fit(target: str, tensor: torch.Tensor, shape: tuple, plan: _Plan, dtype: torch.dtype) -> torch.Tensor:
    """Check the shape against the config; grow the vocabulary rows with exact mean rows; cast."""
    if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if tensor.shape[1:] != shape[1:] or tensor.shape[0] > shape[0]:
            raise ValueError(f"{target}: source shape {tuple(tensor.shape)} does not fit {shape}.")
        grown = torch.empty(shape, dtype=torch.float32)
        grown[: tensor.shape[0]] = tensor.float()
        rows = [r for r in plan.new_rows if r < tensor.shape[0]] + list(range(tensor.shape[0], shape[0]))
        set_mean_rows(grown, plan.base_vocab, rows)
        return grown.to(dtype)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{target}: source shape {tuple(tensor.shape)} does not match the config's {shape}.")
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _fresh_scheduler(config: AdaLlavaConfig, seed: int) -> dict[str, torch.Tensor]:
    """A scheduler initialised as the original's training starts: N(0, 0.02) linears, zero biases, unit LayerNorm."""
    generator = torch.Generator().manual_seed(seed)
    scheduler = LatencyScheduler(config)
    std = config.text_config.initializer_range
    with torch.no_grad():
        for module in scheduler.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std, generator=generator)
                module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return {f"model.scheduler.{k}": v for k, v in scheduler.state_dict().items()}


def _write_repo_files(staging: Path, skeleton, plan: _Plan, repo_id: str | None, source: str) -> None:
    """config.json (with auto_map), the model code, generation_config.json, the processor and the model card."""
    config = plan.config
    config.architectures = ["AdaLlavaForConditionalGeneration"]
    config.auto_map = dict(AUTO_MAP)
    config.save_pretrained(staging)
    custom_object_save(skeleton, staging)  # modeling_ada_llava.py and the files it imports
    tokenizer = plan.processor.tokenizer
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
        suppress_tokens=skeleton.generation_config.suppress_tokens,
    )
    generation.save_pretrained(staging)
    plan.processor.save_pretrained(staging)
    from .model_card import lookup_variant, render_model_card

    variant = lookup_variant(config, repo_id, source)
    if plan.scheduler_from_source and not any("original class default" in note for note in plan.notes):
        variant = variant.confirmed(f"config.json of {source}")  # P and r were read, not assumed
    dtype = config.dtype if isinstance(config.dtype, torch.dtype) else torch.float16
    render_model_card(config, repo_id=repo_id, source=source, variant=variant, dtype=dtype).save(staging / "README.md")


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a converted folder with huggingface_hub (needs a token with write access)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload converted AdaLlava")
