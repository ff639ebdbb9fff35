"""Where weights cannot be sliced (adapters, quantised or offloaded layers), partial layers run masked: same outputs."""

import torch
from peft import LoraConfig, get_peft_model

from conftest import make_model, make_pixels, make_prompt


def test_lora_wrapped_projections_run_masked_and_match_the_merged_model():
    model = make_model("H", scheduler_rank=1)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|up_proj)", init_lora_weights=False
    )  # random B: the adapter changes the outputs
    peft_model = get_peft_model(model, config).eval()
    ids = make_prompt(0, latency=True)[None]
    with torch.no_grad():
        adapted = peft_model(input_ids=ids, pixel_values=make_pixels(1), latency=0.7)
        assert adapted.execution_plan.sliced_weight_bytes() == 0  # masked: slicing would drop the adapter
        merged = peft_model.merge_and_unload()
        sliced = merged(input_ids=ids, pixel_values=make_pixels(1), latency=0.7)
    assert sliced.execution_plan.sliced_weight_bytes() > 0
    assert adapted.execution_plan.same_schedule(sliced.execution_plan)
    torch.testing.assert_close(adapted.logits, sliced.logits, atol=1e-5, rtol=0)


def test_peft_generate_with_a_budget():
    model = make_model("L")
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj", modules_to_save=["scheduler"])
    )
    out = peft_model.generate(
        input_ids=make_prompt(0)[None],
        pixel_values=make_pixels(1),
        latency=0.5,
        max_new_tokens=3,
        do_sample=False,
        return_dict_in_generate=True,
    )
    assert float(out.latency_effective[0]) == 0.5
