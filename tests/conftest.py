"""Tiny models and inputs shared by the tests (random weights, built locally, no Hub)."""

import pytest
import torch

from ada_hf.tiny_model import build_tiny_model, tiny_config

VOCAB = 100
IMAGE_ID, PAD_ID, LATENCY_ID = 97, 98, 99
IMAGE_SIZE, PATCH = 28, 14
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2


def make_model(scheduler_type="L", seed=0, dtype=torch.float32, attn="sdpa", **kwargs):
    kwargs.setdefault("scheduler_rank", 1 if scheduler_type == "H" else 8)
    config = tiny_config(VOCAB, IMAGE_ID, LATENCY_ID, scheduler_type=scheduler_type, pad_token_id=PAD_ID, **kwargs)
    config._attn_implementation = attn
    model = build_tiny_model(config, seed=seed, dtype=dtype)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = None
    return model


def make_prompt(seed=0, text_before=3, text_after=4, latency=False):
    """One row: text, the image placeholders, more text (and the <latency> token at the end if asked)."""
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(3, 90, (text_before,), generator=g)
    after = torch.randint(3, 90, (text_after,), generator=g)
    ids = [before, torch.full((NUM_IMAGE_TOKENS,), IMAGE_ID), after]
    if latency:
        ids.append(torch.tensor([LATENCY_ID]))
    return torch.cat(ids)


def make_pixels(batch=1, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)


def left_pad(rows):
    """Stack rows of different lengths with left padding; returns input_ids and attention_mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


@pytest.fixture(scope="module")
def model_l():
    return make_model("L")


@pytest.fixture(scope="module")
def model_h():
    return make_model("H", scheduler_rank=1)
