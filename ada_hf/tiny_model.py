"""Small, deterministic AdaLLaVA models built locally: for tests, the offline demo and CPU benchmarks."""

from __future__ import annotations

import torch

from .configuration_ada_llava import AdaLlavaConfig
from .modeling_ada_llava import AdaLlavaForConditionalGeneration


def tiny_config(
    vocab_size: int,
    image_token_id: int,
    latency_token_id: int | None,
    scheduler_type: str | None = "L",
    num_layers: int = 6,
    hidden_size: int = 32,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 70,
    image_size: int = 28,
    patch_size: int = 14,
    vision_hidden_size: int = 16,
    vision_layers: int = 2,
    pad_token_id: int | None = None,
    **kwargs,
) -> AdaLlavaConfig:
    """An `AdaLlavaConfig` with a Llama decoder and a CLIP tower small enough for unit tests on a CPU."""
    text_config = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=2048,
        pad_token_id=pad_token_id,
    )
    vision_config = dict(
        model_type="clip_vision_model",
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    return AdaLlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=image_token_id,
        latency_token_id=latency_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        scheduler_type=scheduler_type,
        pad_token_id=pad_token_id,
        **kwargs,
    )


def build_tiny_model(config: AdaLlavaConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Random weights from a fixed seed, scaled up so the scheduler's logits and the decoder's outputs are not flat."""
    torch.manual_seed(seed)
    model = AdaLlavaForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():
        if model.scheduler is not None:
            # A freshly initialised head (std 0.02) makes near-ties between units; a wider spread keeps plans stable.
            model.scheduler.mlp_head.weight.normal_(0.0, 0.5)
    return model
