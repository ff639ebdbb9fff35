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


def test_processor_writes_the_merged_placeholder_count():
    processor = build_tiny_processor(image_size=56)
    tok = processor.tokenizer
    config = tiny_config(
        len(tok), tok.convert_tokens_to_ids("<image>"), processor.latency_token_id, scheduler_type="L",
        pad_token_id=tok.pad_token_id, image_size=56, vision_layers=4,
    )
    model = build_tiny_model(config)
    model.generation_config.eos_token_id = None
    flags = dict(enable_illava_vit=True, illava_vit_k="1-2", illava_vit_r=3)
    merged = model.image_tokens_per_image(**flags)
    assert merged == 16 - 6 and model.image_tokens_per_image() == 16
    assert model.image_tokens_per_image(llavolta_grouping="avgpool1d", llavolta_layer=-1, llavolta_stride=2) == 8
    prompt = processor.apply_chat_template(messages(), add_generation_prompt=True)
    image = messages()[0]["content"][0]["image"]
    full = processor(images=image, text=prompt, return_tensors="pt")
    short = processor(images=image, text=prompt, num_image_tokens=merged, return_tensors="pt")
    image_id = config.image_token_id
    assert int((full["input_ids"] == image_id).sum()) == 16 and int((short["input_ids"] == image_id).sum()) == merged
    assert processor(images=image, text=prompt)["input_ids"] == full["input_ids"].tolist()  # the override is undone
    model(**short, **flags)  # forward accepts the merged prompt as is
    a = model.generate(**full, **flags, latency=0.6, max_new_tokens=4, do_sample=False)
    b = model.generate(**short, **flags, latency=0.6, max_new_tokens=4, do_sample=False)
    assert a[:, -4:].tolist() == b[:, -4:].tolist()
    with pytest.raises(ValueError, match="num_image_tokens=0"):
        processor(images=image, text=prompt, num_image_tokens=0)
    with pytest.raises(ValueError, match="different number of tokens for every image"):
        model.image_tokens_per_image(token_selecting="prumerge")
