"""Without a budget the model is transformers' Llava; at a full budget it is Llava with a latency token."""

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from conftest import LATENCY_ID, make_model, make_pixels, make_prompt


def llava_twin(model, attn):
    """transformers' own Llava with the same weights (every key but the scheduler's)."""
    fields = set(LlavaConfig.__dataclass_fields__)
    config = LlavaConfig(**{k: v for k, v in model.config.to_dict().items() if k in fields})
    config._attn_implementation = attn
    ref = LlavaForConditionalGeneration(config).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.scheduler.")}
    ref.load_state_dict(state, strict=True)
    return ref


@pytest.mark.parametrize("scheduler_type", [None, "L", "H"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_no_budget_equals_llava(scheduler_type, attn):
    model = make_model(scheduler_type, attn=attn)
    ref = llava_twin(model, attn)
    ids = torch.stack([make_prompt(0), make_prompt(1)])
    pixels = make_pixels(2)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels)
        theirs = ref(input_ids=ids, pixel_values=pixels)
    assert ours.execution_plan is None
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    gen_ours = model.generate(input_ids=ids[:1], pixel_values=pixels[:1], max_new_tokens=6, do_sample=False)
    gen_theirs = ref.generate(
        input_ids=ids[:1],
        pixel_values=pixels[:1],
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=model.generation_config.pad_token_id,
        suppress_tokens=model.generation_config.suppress_tokens,
    )
    assert torch.equal(gen_ours, gen_theirs)


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_full_budget_is_llava_with_the_latency_embedding(scheduler_type):
    model = make_model(scheduler_type)
    ref = llava_twin(model, "sdpa")
    ids = make_prompt(0, latency=True)[None]
    pixels = make_pixels(1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels, latency=1.0)
        # Llava's own forward on the same sequence, with the <latency> row replaced by the latency encoding.
        embeds = ref.get_input_embeddings()(ids)
        feats = torch.cat(ref.model.get_image_features(pixel_values=pixels).pooler_output)
        embeds = embeds.masked_scatter((ids == model.config.image_token_id)[..., None], feats)
        units = torch.tensor([model.scheduler.max_units])
        embeds[0, -1] = model.scheduler.encode(units, torch.float32)[0]
        theirs = ref(inputs_embeds=embeds)
    assert (ours.execution_plan.heads_executed() > 0).all()
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    assert (ids == LATENCY_ID).sum() == 1
