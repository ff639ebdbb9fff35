"""Model cards for converted AdaLLaVA and LLaVA-1.5 checkpoints.

Tooling only: the converter and `convert/render_model_cards.py` use it; model code never imports it. One Jinja
template (`model_card_template.md`) is rendered with `huggingface_hub.ModelCard.from_template` into a card per variant;
the budget table is computed from the model's own config with `LatencyScheduler.budget_table` (no weights needed).

    from ada_hf.model_card import PUBLISHED_VARIANTS, render_model_card
    variant = PUBLISHED_VARIANTS["ada-llava-L-v1.5-7b"]
    render_model_card(config, repo_id="me/ada-llava-L-v1.5-7b", variant=variant).save("README.md")
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from .latency_scheduler import LatencyScheduler

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")

#: The budgets shown in a card's main budget table (the full list is in a collapsible block).
CARD_BUDGETS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))

ADALLAVA_CODE = "https://github.com/zhuoyan-xu/AdaLLaVA"
ADALLAVA_PAPER = "https://arxiv.org/abs/2503.10905"
LLAVA_15_PAPER = "https://arxiv.org/abs/2310.03744"

# Where a value comes from (shown on the card). ADALLAVA.md section 2.3 collects the values of the published checkpoints
# from AdaLLaVA's docs/MODEL_ZOO.md and marks the rest as assumed or unverified (section 14); none of them was read from
# a target repo's config.json. The converter, which reads it, can say so with `VariantInfo.confirmed`.
FROM_MODEL_ZOO = "AdaLLaVA's docs/MODEL_ZOO.md"
ASSUMED_DEFAULT = "assumed: AdaLLaVA's class default, not stated for this checkpoint"
UNVERIFIED = "UNVERIFIED: not stated in AdaLLaVA's docs/MODEL_ZOO.md; check the source's config.json"
FROM_ARCHITECTURE = "Vicuna-v1.5's architecture at this size"
FROM_REPO_NAME = "assumed from the repo name (no -prumerge suffix)"


@dataclass(frozen=True)
class ModelSize:
    """Decoder shape of one LLaVA-1.5 size, with the Hub repos it derives from."""

    name: str
    num_layers: int
    num_heads: int
    hidden_size: int
    intermediate_size: int
    llm: str  # the Vicuna-v1.5 base LLM
    llava: str  # the LLaVA-1.5 checkpoint of this size


SIZES = {
    "7B": ModelSize("7B", 32, 32, 4096, 11008, "lmsys/vicuna-7b-v1.5", "liuhaotian/llava-v1.5-7b"),
    "13B": ModelSize("13B", 40, 40, 5120, 13824, "lmsys/vicuna-13b-v1.5", "liuhaotian/llava-v1.5-13b"),
}


@dataclass(frozen=True)
class PublishedFigure:
    """A number some source states, as the source prints it, with what the source says about its setting."""

    metric: str
    value: str
    setting: str
    source: str


# AdaLLaVA's README (github.com/zhuoyan-xu/AdaLLaVA, commit 8ea416e; /work/shared/seeds/000_*), "Evaluation" section.
_README_MME_SETTING = (
    'the README\'s "Example output of MME" from lmms-eval; the README does not say which model or budget produced it '
    "(its evaluation command just above runs zhuoyanxu/ada-llava-L-v1.5-7b with latency=0.85)"
)
_README_SOURCE = "AdaLLaVA README, github.com/zhuoyan-xu/AdaLLaVA"
_PAPER_SOURCE = "AdaLLaVA paper (arXiv 2503.10905v2) and project page (zhuoyan-xu.github.io/ada-llava)"

#: Statements of the AdaLLaVA authors quoted on every AdaLLaVA card (ADALLAVA.md §13), with their source.
ADALLAVA_CLAIMS = (
    (
        "AdaLLaVA effectively adheres to input latency budget, achieving varying accuracy and latency tradeoffs at "
        "runtime",
        _PAPER_SOURCE,
    ),
    ("with varying latency budgets from 50% to 100%, AdaLLaVA effectively trades compute with accuracy", _PAPER_SOURCE),
)
PRUMERGE_CLAIM = ("can be integrated with token selection (PruMerge+, FastV) for enhanced efficiency", _PAPER_SOURCE)


@dataclass(frozen=True)
class VariantInfo:
    """
    A checkpoint that the converter turns into an ada-hf repo, and what is known about it.

    `provenance` says, for `shape`, `num_prefix_layers`, `scheduler_rank` and `token_selecting`, where the value comes
    from (one of the `FROM_*`, `ASSUMED_DEFAULT`, `UNVERIFIED` strings, or what [`VariantInfo.confirmed`] writes).
    """

    name: str  # the converted repo's name, also the card's file name
    source: str  # the Hub repo the weights are converted from
    scheduler_type: str | None  # "L", "H", or None for plain LLaVA-1.5
    size: ModelSize
    num_prefix_layers: int | None
    scheduler_rank: int | None  # r, H only
    token_selecting: str = "none"  # "none" | "prumerge" | "prumerge+" (the original's image-token selection)
    provenance: dict[str, str] = field(default_factory=dict)
    base_model: str | None = None
    datasets: tuple[str, ...] = ()
    license: str = "llama2"
    notes: tuple[str, ...] = ()  # caveats shown near the top of the card
    figures: tuple[PublishedFigure, ...] = ()
    claims: tuple[tuple[str, str], ...] = ()  # (quote, source)

    @property
    def unverified(self) -> list[str]:
        """The settings whose value is not confirmed by any source."""
        return [key for key, where in self.provenance.items() if where == UNVERIFIED]

    def confirmed(self, where: str) -> VariantInfo:
        """
        A copy whose every value is marked as read from `where` (say `"config.json of zhuoyanxu/...@<commit>"`). For the
        converter, once it has read the source config and checked these values against it; if they differ, use
        `dataclasses.replace(variant, num_prefix_layers=..., ...)` first.
        """
        return dataclasses.replace(self, provenance={key: f"read from {where}" for key in self.provenance})


def _ada(variant: str, size: str, token_selecting: str = "none") -> VariantInfo:
    suffix = {"none": "", "prumerge": "-prumerge", "prumerge+": "-prumerge-plus"}[token_selecting]
    name = f"ada-llava-{variant}-v1.5-{size.lower()}{suffix}"
    model_size = SIZES[size]
    unverified = variant == "H" and size == "13B"
    provenance = {
        "shape": FROM_ARCHITECTURE,
        "num_prefix_layers": UNVERIFIED if unverified else FROM_MODEL_ZOO,
        "scheduler_rank": UNVERIFIED if unverified else ASSUMED_DEFAULT,
        "token_selecting": FROM_REPO_NAME if unverified else FROM_MODEL_ZOO,
    }
    if variant == "L":
        del provenance["scheduler_rank"]
    notes = []
    if unverified:
        notes.append(
            "The source repo's own model card calls this checkpoint Ada-LLaVA-13B-drop_heads and says it was trained "
            "in Oct 2024. AdaLLaVA's pre-release checkpoints of Oct 2024 were trained with earlier code; if this is "
            "one of them, its latency encoding may differ from the released code that ada-hf reproduces. Compare "
            "plans and outputs with the original at several budgets before relying on it."
        )
    if token_selecting != "none":
        notes.append(
            f"This checkpoint runs with `token_selecting={token_selecting!r}` (PruMerge"
            f"{'+' if token_selecting == 'prumerge+' else ''} image-token selection, adapted from LLaVA-PruMerge), as "
            "it was trained: each image keeps its own, content-dependent number of visual tokens. ada-hf implements it "
            "from the description of the original; parity with the original code has not been checked."
        )
    claims = ADALLAVA_CLAIMS + ((PRUMERGE_CLAIM,) if token_selecting != "none" else ())
    figures = ()
    if name == "ada-llava-L-v1.5-7b":
        figures = (
            PublishedFigure("MME perception score", "1487.19037615046", _README_MME_SETTING, _README_SOURCE),
            PublishedFigure("MME cognition score", "324.6428571428571", _README_MME_SETTING, _README_SOURCE),
        )
    return VariantInfo(
        name=name,
        source=f"zhuoyanxu/{name}",
        scheduler_type=variant,
        size=model_size,
        num_prefix_layers=model_size.num_layers // 2,
        scheduler_rank=8 if variant == "H" else None,
        token_selecting=token_selecting,
        provenance=provenance,
        base_model=model_size.llava,  # AdaLLaVA is trained from LLaVA-1.5 weights (AdaLLaVA README, "Train")
        # The LLaVA-1.5 stage-2 665K mix (llava_v1_5_mix665k.json) lives in this dataset repo; the AdaLLaVA-H 13B card
        # lists it (/work/shared/seeds/002_*).
        datasets=("liuhaotian/LLaVA-Instruct-150K",),
        notes=tuple(notes),
        figures=figures,
        claims=claims,
    )


def _plain(size: str) -> VariantInfo:
    model_size = SIZES[size]
    return VariantInfo(
        name=model_size.llava.split("/")[1],
        source=model_size.llava,
        scheduler_type=None,
        size=model_size,
        num_prefix_layers=None,
        scheduler_rank=None,
        provenance={"shape": FROM_ARCHITECTURE},
        base_model=model_size.llava,
        # LLaVA-1.5's card: 558K LAION/CC/SBU captions (stage 1) and the 665K instruction mix (stage 2).
        datasets=("liuhaotian/LLaVA-Pretrain", "liuhaotian/LLaVA-Instruct-150K"),
    )


#: Every checkpoint the converter publishes, by converted repo name.
PUBLISHED_VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        _ada("L", "7B"),
        _ada("H", "7B"),
        _ada("L", "13B"),
        _ada("H", "13B"),
        _ada("L", "7B", "prumerge"),
        _ada("L", "7B", "prumerge+"),
        _ada("H", "7B", "prumerge"),
        _ada("H", "7B", "prumerge+"),
        _plain("7B"),
        _plain("13B"),
    )
}


# ---------------------------------------------------------------------------------------------------------------------
# Configs
#: Token ids of converted LLaVA-1.5 checkpoints: Llama's 32000, then `<image>`, `<pad>`, `<latency>` (padded to 64).
VOCAB_SIZE, IMAGE_TOKEN_ID, PAD_TOKEN_ID, LATENCY_TOKEN_ID = 32064, 32000, 32001, 32002

#: CLIP ViT-L/14 at 336px, LLaVA-1.5's vision tower.
CLIP_VIT_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)


def variant_config(variant: VariantInfo):
    """The `AdaLlavaConfig` that `variant`'s values describe (real shapes; what the converter should produce)."""
    from .configuration_ada_llava import AdaLlavaConfig

    size = variant.size
    text_config = dict(
        model_type="llama",
        vocab_size=VOCAB_SIZE,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=PAD_TOKEN_ID,
    )
    ada = variant.scheduler_type is not None
    return AdaLlavaConfig(
        text_config=text_config,
        vision_config=dict(CLIP_VIT_L_336),
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=(336 // 14) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=PAD_TOKEN_ID,
        scheduler_type=variant.scheduler_type,
        num_prefix_layers=variant.num_prefix_layers,
        scheduler_rank=variant.scheduler_rank or 8,
        latency_token_id=LATENCY_TOKEN_ID if ada else None,
        default_latency=1.0 if ada else None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Budget tables
def build_scheduler(config) -> LatencyScheduler:
    """`LatencyScheduler(config)` on the meta device: the unit counts and the quantisation, without weights."""
    with torch.device("meta"):
        return LatencyScheduler(config)


def card_budget_rows(config, dtype: torch.dtype = torch.float16) -> tuple[list[dict], list[dict]]:
    """
    `(shown, full)`: for each budget of `CARD_BUDGETS`, the `budget_table(dtype)` row it buys (with `budget` added),
    quantised exactly as the model does; and the whole `budget_table(dtype)`.
    """
    scheduler = build_scheduler(config)
    full = scheduler.budget_table(dtype)
    units = scheduler.quantize(torch.tensor(CARD_BUDGETS, dtype=torch.float64).to(dtype)).tolist()
    shown = [{"budget": budget, **full[u]} for budget, u in zip(CARD_BUDGETS, units)]
    return shown, full


def _fmt_budget(value: float | None, units: int) -> str:
    if units == 0:
        return "> 0"  # every budget below the first threshold runs the prefix alone
    return "–" if value is None else f"{value:.6f}".rstrip("0").rstrip(".")


def _budget_context(config, dtype: torch.dtype) -> dict:
    """Everything the template needs to describe the scheduler and print its budget tables."""
    scheduler = build_scheduler(config)
    text = config.text_config
    shown, full = card_budget_rows(config, dtype)
    layers = scheduler.scheduler_type == "L"
    run_total = scheduler.num_layers if layers else scheduler.num_layers * scheduler.num_heads

    def run(row: dict) -> str:
        return f"{row['layers_run'] if layers else row['head_slots_run']}/{run_total}"

    def cells(row: dict) -> dict:
        return {
            "units": f"{row['units']}/{scheduler.max_units}",
            "executed": f"{row['executed_units']}/{scheduler.num_total_units}",
            "run": run(row),
            "effective": f"{row['latency_effective']:.4f}",
            "min_latency": _fmt_budget(row["min_latency"], row["units"]),
        }

    # Budgets of the main table that buy another unit count in float32 (the model quantises in its own dtype).
    fp32_units = scheduler.quantize(torch.tensor(CARD_BUDGETS, dtype=torch.float64).float()).tolist()
    dtype_shifts = [
        {"budget": f"{row['budget']:.2f}", "units": row["units"], "fp32_units": u}
        for row, u in zip(shown, fp32_units)
        if u != row["units"]
    ]
    example = next(row for row in shown if row["budget"] == 0.6)
    group, rem = divmod(text.intermediate_size, text.num_attention_heads)
    return {
        "layers": layers,
        "run_header": f"layers run (of {run_total})" if layers else f"head slots run (of {run_total})",
        "num_total_units": scheduler.num_total_units,
        "num_prefix_units": scheduler.num_prefix_units,
        "max_units": scheduler.max_units,
        "heads_per_layer_units": scheduler.num_heads // scheduler.rank,
        "shown_rows": [{"budget": f"{row['budget']:.2f}", **cells(row)} for row in shown],
        "full_rows": [cells(row) for row in full],
        "dtype_shifts": dtype_shifts,
        "example": {"budget": "0.6", **cells(example), "raw_units": example["units"]},
        # MLP neuron groups: the intermediate dim split into H contiguous groups, the first `rem` one neuron larger.
        "mlp_groups": {"rem": rem, "big": group + 1, "small": group, "n_small": text.num_attention_heads - rem},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Cards
def variant_from_config(config, name: str, source: str | None = None) -> VariantInfo:
    """A `VariantInfo` for a checkpoint that is not in `PUBLISHED_VARIANTS`: every value read from `config`."""
    text = config.text_config
    dims = (text.num_hidden_layers, text.num_attention_heads, text.hidden_size, text.intermediate_size)
    known = [s for s in SIZES.values() if (s.num_layers, s.num_heads, s.hidden_size, s.intermediate_size) == dims]
    shape = known[0] if known else ModelSize(f"{dims[0]}-layer", *dims, llm="", llava="")
    where = "read from this repo's config.json"
    provenance = {"shape": where}
    if config.scheduler_type is not None:
        provenance["num_prefix_layers"] = where
        if config.scheduler_type == "H":
            provenance["scheduler_rank"] = where
    return VariantInfo(
        name=name,
        source=source or "",
        scheduler_type=config.scheduler_type,
        size=shape,
        num_prefix_layers=config.num_prefix_layers,
        scheduler_rank=config.scheduler_rank if config.scheduler_type == "H" else None,
        token_selecting=getattr(config, "token_selecting", "none") or "none",
        provenance=provenance,
        claims=ADALLAVA_CLAIMS if config.scheduler_type is not None else (),
    )


def check_variant_matches(config, variant: VariantInfo) -> None:
    """Raise a ValueError naming the setting where `config` and `variant` disagree (a card would contradict itself)."""
    text = config.text_config
    pairs = {
        "scheduler_type": (config.scheduler_type, variant.scheduler_type),
        "num_hidden_layers": (text.num_hidden_layers, variant.size.num_layers),
        "num_attention_heads": (text.num_attention_heads, variant.size.num_heads),
        "hidden_size": (text.hidden_size, variant.size.hidden_size),
        "intermediate_size": (text.intermediate_size, variant.size.intermediate_size),
    }
    if variant.scheduler_type is not None:
        pairs["num_prefix_layers"] = (config.num_prefix_layers, variant.num_prefix_layers)
    if variant.scheduler_type == "H":
        pairs["scheduler_rank"] = (config.scheduler_rank, variant.scheduler_rank)
    for key, (got, expected) in pairs.items():
        if got != expected:
            raise ValueError(
                f"config.{key}={got!r} but variant {variant.name!r} says {expected!r}: pass a VariantInfo that "
                "describes this config (dataclasses.replace(variant, ...)), so the card does not contradict the model."
            )


def _is_hub_id(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(name)) is not None


def _title(variant: VariantInfo) -> str:
    if variant.scheduler_type is None:
        return f"LLaVA-1.5 {variant.size.name} for transformers (ada-hf, no scheduler)"
    selection = {"none": "", "prumerge": " + PruMerge", "prumerge+": " + PruMerge+"}[variant.token_selecting]
    return f"AdaLLaVA-{variant.scheduler_type} {variant.size.name}{selection} for transformers (ada-hf)"


def _tags(variant: VariantInfo) -> list[str]:
    tags = ["ada-hf", "llava", "llava-1.5", "multimodal", "custom_code"]
    if variant.scheduler_type is not None:
        tags += ["adallava", "adaptive-inference", "latency-budget", f"adallava-{variant.scheduler_type.lower()}"]
    if variant.token_selecting != "none":
        tags.append("prumerge")
    return tags


FRESH_SCHEDULER_NOTE = (
    "The scheduler of this model is new (freshly initialised on a plain LLaVA-1.5 checkpoint, for training): it is not "
    "a trained AdaLLaVA checkpoint, and its plans mean nothing until it is trained."
)


def lookup_variant(config, repo_id: str | None, source: str | None) -> VariantInfo:
    """The published variant named by `source` or `repo_id` if `config` matches it, else one read from `config`."""
    names = {str(x).rstrip("/").rsplit("/", 1)[-1] for x in (repo_id, source) if x}
    for variant in PUBLISHED_VARIANTS.values():
        if variant.source == source or variant.name in names:
            try:
                check_variant_matches(config, variant)
                return variant
            except ValueError:  # e.g. a fresh scheduler on a plain LLaVA: keep the lineage, read the rest from config
                own = variant_from_config(config, variant.name, source)
                own = dataclasses.replace(own, base_model=variant.base_model, datasets=variant.datasets)
                if variant.scheduler_type is None and config.scheduler_type is not None:
                    own = dataclasses.replace(own, notes=(FRESH_SCHEDULER_NOTE,), claims=())
                return own
    name = next(iter(names), "model")
    return variant_from_config(config, repo_id.rsplit("/", 1)[-1] if repo_id else name, source)


def render_model_card(
    config,
    *,
    repo_id: str | None = None,
    source: str | None = None,
    variant: VariantInfo | None = None,
    dtype: torch.dtype = torch.float16,
) -> ModelCard:
    """
    The model card of a converted checkpoint, rendered from `model_card_template.md`.

    Args:
        config (`AdaLlavaConfig`): the converted model's config; the budget table is computed from it.
        repo_id (`str`, *optional*): the converted repo, used in the usage snippet (a placeholder if not given).
        source (`str`, *optional*): the repo the weights were converted from; defaults to `variant.source`.
        variant (`VariantInfo`, *optional*): what is known about the checkpoint; its values must match `config`
            (ValueError otherwise). If not given: the entry of `PUBLISHED_VARIANTS` named by `source` or `repo_id`
            when `config` matches it, else a variant read from `config` (keeping that entry's base model and
            datasets, if one was named).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float16`): the dtype budgets are quantised in, the
            checkpoint's dtype.

    Returns:
        `huggingface_hub.ModelCard`; `card.save(path)` writes it.
    """
    if variant is None:
        variant = lookup_variant(config, repo_id, source)
    check_variant_matches(config, variant)
    if source is None or not _is_hub_id(source):  # a local folder: name the Hub repo it holds, if known
        source = variant.source or source
    card_data = ModelCardData(
        license=variant.license,
        base_model=variant.base_model,
        datasets=list(variant.datasets) or None,
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        tags=_tags(variant),
    )
    context = {
        "title": _title(variant),
        "variant": variant,
        "size": variant.size,
        "repo": repo_id or f"<namespace>/{variant.name}",
        "source": str(source) if source else None,
        "source_url": f"https://huggingface.co/{source}" if source and _is_hub_id(str(source)) else None,
        "dtype": str(dtype).removeprefix("torch."),
        "config": config,
        "num_image_tokens": config.image_seq_length,
        "provenance": variant.provenance,
        "unverified": variant.unverified,
        "confirmed": any(where.startswith("read from") for where in variant.provenance.values()),
        "claims": variant.claims,
        "figures": variant.figures,
        "adallava_paper": ADALLAVA_PAPER,
        "llava_paper": LLAVA_15_PAPER,
        "adallava_code": ADALLAVA_CODE,
    }
    if config.scheduler_type is not None:
        context.update(_budget_context(config, dtype))
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **context)


__all__ = [
    "CARD_BUDGETS",
    "PUBLISHED_VARIANTS",
    "SIZES",
    "ModelSize",
    "PublishedFigure",
    "VariantInfo",
    "build_scheduler",
    "card_budget_rows",
    "check_variant_matches",
    "render_model_card",
    "variant_config",
    "variant_from_config",
]
