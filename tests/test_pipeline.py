"""The processor and transformers' image-text-to-text pipeline pass the budget through to generate."""

import pytest
from PIL import Image
from transformers import pipeline

from ada_hf.tiny_model import build_tiny_model, tiny_config
from ada_hf.tiny_processor import build_tiny_processor


@pytest.fixture(scope="module")
def model_and_processor():
    processor = build_tiny_processor(image_size=28)
    tok = processor.tokenizer
    config = tiny_config(
        len(tok),
        tok.convert_tokens_to_ids("<image>"),
        processor.latency_token_id,
        scheduler_type="L",
        pad_token_id=tok.pad_token_id,
    )
    model = build_tiny_model(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, processor


def messages():
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is in the picture?"}],
        }
    ]


def test_processor_carries_the_budget(model_and_processor):
    model, processor = model_and_processor
    prompt = processor.apply_chat_template(messages(), add_generation_prompt=True)
    inputs = processor(images=messages()[0]["content"][0]["image"], text=prompt, latency=0.5, return_tensors="pt")
    assert inputs["latency"].tolist() == [0.5]
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert out.latency_effective.tolist() == [0.5]


def test_pipeline_passes_latency(model_and_processor):
    model, processor = model_and_processor
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    answers = {}
    for name, kwargs in {
        "generate_kwargs": dict(generate_kwargs={"latency": 0.5}),
        "keyword": dict(latency=0.5),
        "full": dict(latency=1.0),
    }.items():
        answers[name] = pipe(text=messages(), max_new_tokens=5, **kwargs)[0]["generated_text"][-1]["content"]
    prompt = processor.apply_chat_template(messages(), add_generation_prompt=True)
    inputs = processor(images=messages()[0]["content"][0]["image"], text=prompt, return_tensors="pt")
    direct = model.generate(**inputs, latency=0.5, max_new_tokens=5, do_sample=False)
    expected = processor.decode(direct[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answers["generate_kwargs"] == answers["keyword"]
    assert answers["keyword"].strip() == expected.strip()
    assert answers["full"] != answers["keyword"]
