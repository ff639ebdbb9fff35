"""Configuration of AdaLLaVA: LLaVA-1.5 plus a latency-driven scheduler (arXiv 2503.10905)."""

from __future__ import annotations

from transformers import LlavaConfig

from .token_reduction import LLAVOLTA_FIELDS, illava_llm_settings, validate_llavolta
from .vision_merging import check_token_selecting, illava_vit_settings

# Stamped into every saved config so a checkpoint says which code wrote it.
ADA_HF_CODE_VERSION = "0.1.0"

SCHEDULER_TYPES = ("L", "H")


class AdaLlavaConfig(LlavaConfig):
    r"""
    Every argument of [`~transformers.LlavaConfig`] (CLIP `vision_config`, Llama `text_config`, projector, image token,
    vision feature layer and strategy), plus AdaLLaVA's scheduler.

    Args:
        scheduler_type (`str`, *optional*):
            `"L"` schedules whole decoder layers, `"H"` schedules groups of `scheduler_rank` attention heads together
            with as many MLP neuron groups. `None` builds a plain LLaVA with no scheduler.
        num_prefix_layers (`int`, *optional*):
            `P`, the decoder layers that always run; the scheduler reads the `<latency>` token's hidden state after
            them. Defaults to half the decoder layers.
        scheduler_rank (`int`, *optional*, defaults to 8):
            `r`, the attention heads (and MLP groups) one H unit adds to a layer. Ignored by L.
        scheduler_tau (`float`, *optional*, defaults to 5.0):
            Gumbel-softmax temperature of the straight-through masks during training.
        latency_token_id (`int`, *optional*):
            Id of the `<latency>` token whose embedding the model replaces with the latency encoding.
        default_latency (`float`, *optional*):
            The budget `generate` uses when none is passed. Converted AdaLLaVA checkpoints set 1.0, because they were
            never trained without a latency token.
        latency_embed_dim (`int`, *optional*, defaults to 256):
            Width of the sinusoidal budget features (half sines, half cosines).
        latency_freq_base (`float`, *optional*, defaults to 10000.0):
            Base of the geometric sinusoid frequencies.
        llavolta_grouping (`str`, *optional*, defaults to `"none"`):
            LLaVolta's visual context compression: `"avgpool1d"` average-pools each image's tokens in windows of
            `llavolta_stride` at the input of decoder layer `llavolta_layer`; `"none"` turns it off.
        llavolta_layer (`int`, *optional*, defaults to 2):
            `K`, the decoder layer at whose input the image tokens are pooled (0 pools the embeddings).
        llavolta_stride (`int`, *optional*, defaults to 1):
            `s`, the pooling window; must divide the image's token count (1 pools nothing).
        llavolta_position_mode (`str`, *optional*, defaults to `"trunc_mean"`):
            Position id of a pooled token: `trunc_mean` (floor of the window's mean position), `trunc_mean_fp16`
            (the original bit for bit), `float_mean`, `first`, or `renumber` (contiguous).
        token_selecting (`str`, *optional*, defaults to `"none"`):
            PruMerge (`"prumerge"`) or PruMerge+ (`"prumerge+"`) visual token selection, as the published `-prumerge`
            AdaLLaVA checkpoints were trained with: a varying number of image tokens per image.
        enable_illava_vit (`bool`, *optional*, defaults to `False`):
            iLLaVA's vision-encoder merging: at each CLIP layer in `illava_vit_k`, after attention and before the MLP,
            the `illava_vit_r + 1` least attended patches collapse into one. The LLM receives fewer image tokens;
            `generate` shortens the prompt's image placeholders to match.
        illava_vit_k (`int`, `list[int]` or `str`, *optional*, defaults to `"5-6-7-8"`):
            CLIP layers (0-based) where patches merge, up to the layer that produces the feature (22 of 24).
        illava_vit_r (`int` or `float`, *optional*, defaults to 72):
            Patches removed per listed layer, or a fraction of the current patch count.
        illava_track_vit_source (`bool`, *optional*, defaults to `False`):
            Return, per merge layer, which original patches survive (`vit_sources` in the outputs).
        enable_illava_llm (`bool`, *optional*, defaults to `False`):
            iLLaVA's LLM-stage merging (inference only): before each layer in `illava_llm_k`, the image tokens the
            last prompt token attends to least (in the layer before) collapse into one.
        illava_llm_k (`int`, `list[int]` or `str`, *optional*, defaults to 8):
            The decoder layer(s) at whose input tokens merge; `"6-7-8"` is accepted too.
        illava_llm_r (`float` or `int`, *optional*, defaults to 0.7):
            A keep ratio in (0, 1], or an int > 1: the number of image tokens removed.
    """

    model_type = "ada_llava"

    scheduler_type: str | None = None
    num_prefix_layers: int | None = None
    scheduler_rank: int = 8
    scheduler_tau: float = 5.0
    latency_token_id: int | None = None
    default_latency: float | None = None
    latency_embed_dim: int = 256
    latency_freq_base: float = 10000.0
    llavolta_grouping: str = "none"
    llavolta_layer: int = 2
    llavolta_stride: int = 1
    llavolta_position_mode: str = "trunc_mean"
    token_selecting: str = "none"
    enable_illava_vit: bool = False
    illava_vit_k: int | list[int] | str = "5-6-7-8"
    illava_vit_r: int | float = 72
    illava_track_vit_source: bool = False
    enable_illava_llm: bool = False
    illava_llm_k: int | list[int] | str = 8
    illava_llm_r: float | int = 0.7

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_prefix_layers is None and self.scheduler_type is not None:
            self.num_prefix_layers = self.text_config.num_hidden_layers // 2
        self.validate_scheduler()
        validate_llavolta(
            {name: getattr(self, name) for name in LLAVOLTA_FIELDS},
            self.text_config.num_hidden_layers,
            self.image_seq_length,
        )
        illava_llm_settings(self)
        illava_vit_settings(self)
        check_token_selecting(self)

    def validate_scheduler(self) -> None:
        """Raise a ValueError naming the bad field if the scheduler settings cannot describe a valid model."""
        text = self.text_config
        if self.scheduler_type is None:
            if self.default_latency is not None:
                raise ValueError(
                    f"default_latency={self.default_latency} needs a scheduler; set scheduler_type to 'L' or 'H'."
                )
            return
        if self.scheduler_type not in SCHEDULER_TYPES:
            raise ValueError(
                f"scheduler_type={self.scheduler_type!r} is not supported; use 'L' (layers), 'H' (heads and MLP "
                "groups) or None (plain LLaVA)."
            )
        if getattr(text, "model_type", None) != "llama":
            raise ValueError(
                f"AdaLLaVA schedules Llama decoder layers; text_config.model_type={text.model_type!r} is not 'llama'."
            )
        num_layers = text.num_hidden_layers
        if not 1 <= self.num_prefix_layers < num_layers:
            raise ValueError(
                f"num_prefix_layers={self.num_prefix_layers} must lie in [1, {num_layers}) for a "
                f"{num_layers}-layer decoder: at least one layer runs before the scheduler and one after."
            )
        if self.scheduler_type == "H":
            heads = text.num_attention_heads
            if self.scheduler_rank < 1 or heads % self.scheduler_rank:
                raise ValueError(
                    f"scheduler_rank={self.scheduler_rank} must divide num_attention_heads={heads} for scheduler_type "
                    "'H' (each unit adds scheduler_rank heads to a layer)."
                )
            kv_heads = text.num_key_value_heads or heads
            if kv_heads != heads:
                raise ValueError(
                    f"scheduler_type 'H' needs multi-head attention, but num_key_value_heads={kv_heads} differs from "
                    f"num_attention_heads={heads} (grouped-query attention). Use scheduler_type 'L' for GQA models."
                )
        if self.scheduler_tau <= 0:
            raise ValueError(f"scheduler_tau={self.scheduler_tau} must be positive.")
        if self.latency_embed_dim < 2 or self.latency_embed_dim % 2:
            raise ValueError(f"latency_embed_dim={self.latency_embed_dim} must be a positive even number.")
        if self.default_latency is not None and not 0.0 < float(self.default_latency) <= 1.0:
            raise ValueError(f"default_latency={self.default_latency} must lie in (0, 1].")

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["ada_hf_version"] = ADA_HF_CODE_VERSION
        return output


__all__ = ["AdaLlavaConfig"]
