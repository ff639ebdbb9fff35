"""LLaVA instruction data: loading, vicuna_v1 rendering, label masking, latency-token placement, bad samples,
truncation, collation, and a training forward on a collated batch."""

import json

import pytest
import torch

datasets = pytest.importorskip("datasets")
from PIL import Image  # noqa: E402

from ada_hf.llava_data import (  # noqa: E402
    AdaLlavaDataCollator,
    BadSampleError,
    LlavaSupervisedDataset,
    load_llava_dataset,
)
from ada_hf.tiny_model import build_tiny_model, tiny_config  # noqa: E402
from ada_hf.tiny_processor import build_tiny_processor  # noqa: E402

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant . The assistant gives helpful , "
    "detailed , and polite answers to the user ' s questions ."
).split()

MULTI_TURN = {
    "id": "000000033471",
    "image": "coco/cat.png",
    "conversations": [
        {"from": "human", "value": "What color is the cat?\n<image>"},  # LLaVA moves the marker to the front
        {"from": "gpt", "value": "It is black."},
        {"from": "human", "value": "Where is the dog?"},
        {"from": "gpt", "value": "It is on the left."},
    ],
}
INT_ID = {
    "id": 12345,
    "image": "vg/sky.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the sky?"},
        {"from": "gpt", "value": "It is blue."},
    ],
}
TEXT_ONLY = {
    "id": "sharegpt_7",
    "conversations": [
        {"from": "human", "value": "Why is the sky blue?"},
        {"from": "gpt", "value": "It is the light of the sun."},
    ],
}


def human(value):
    return {"from": "human", "value": value}


def gpt(value):
    return {"from": "gpt", "value": value}


# name: (record without id, what the error must say)
BAD = {
    "missing_file": ({"image": "coco/no.png", "conversations": [human("<image>\nWhat?"), gpt("A cat.")]}, "not exist"),
    "no_marker": ({"image": "coco/cat.png", "conversations": [human("What?"), gpt("A cat.")]}, "0 <image> markers"),
    "two_markers": ({"image": "coco/cat.png", "conversations": [human("<image> <image> What?"), gpt("A cat.")]}, "2 <"),
    "marker_no_image": ({"conversations": [human("<image>\nWhat?"), gpt("A cat.")]}, "but no image"),
    "marker_in_answer": ({"conversations": [human("What?"), gpt("<image> A cat.")]}, "answer"),
    "bad_roles": ({"conversations": [human("What?"), human("What?")]}, "turn 1 is from 'human'"),
    "unknown_role": ({"conversations": [{"from": "system", "value": "Hi."}, gpt("A cat.")]}, "turn 0 is from 'system'"),
    "ends_with_human": ({"conversations": [human("What?"), gpt("A cat."), human("Why?")]}, "ending with a gpt"),
    "empty_answer": ({"conversations": [human("What?"), gpt(" ")]}, "empty answer"),
    "value_not_str": ({"conversations": [human("What?"), {"from": "gpt", "value": 5}]}, "must be a list of"),
    "not_a_list": ({"conversations": "What is it?"}, "must be a list of"),
    "image_not_str": ({"image": ["a.png"], "conversations": [human("<image>\nWhat?"), gpt("A cat.")]}, "file name"),
    "latency_in_text": ({"conversations": [human("<latency> What is it?"), gpt("A cat.")]}, "latency token"),
}


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(image_size=28, patch_size=14)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    (root / "images" / "coco").mkdir(parents=True)
    (root / "images" / "vg").mkdir()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(root / "images" / "coco" / "cat.png")
    Image.new("RGB", (16, 30), (30, 30, 200)).save(root / "images" / "vg" / "sky.png")
    (root / "images" / "broken.png").write_bytes(b"not a png at all")
    path = root / "mix.json"
    path.write_text(json.dumps([MULTI_TURN, INT_ID, TEXT_ONLY]))
    return root, path


def write(root, name, records):
    path = root / f"{name}.json"
    path.write_text(json.dumps(records))
    return load_llava_dataset(path, cache_dir=root / "cache")


def make(records, processor, root, **kwargs):
    kwargs.setdefault("latency_token_id", processor.latency_token_id)
    return LlavaSupervisedDataset(records, processor, root / "images", **kwargs)


def ids(processor, tokens):
    return processor.tokenizer.convert_tokens_to_ids(tokens)


def test_mixed_id_types_load_as_exact_strings(data):
    root, path = data
    records = load_llava_dataset(path, cache_dir=root / "cache")
    assert records["id"] == ["000000033471", "12345", "sharegpt_7"]
    assert records["image"] == ["coco/cat.png", "vg/sky.png", None]
    assert records.cache_files  # memory-mapped Arrow, not an in-memory table
    assert load_llava_dataset(path, cache_dir=root / "cache")["id"] == records["id"]  # from the cache


def test_an_edited_file_is_read_again(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([TEXT_ONLY]))
    assert load_llava_dataset(path, cache_dir=tmp_path / "cache")["id"] == ["sharegpt_7"]
    path.write_text(json.dumps([TEXT_ONLY, {**TEXT_ONLY, "id": 8}]))
    assert load_llava_dataset(path, cache_dir=tmp_path / "cache")["id"] == ["sharegpt_7", "8"]


def test_naive_json_load_mishandles_mixed_ids(data):
    # Why load_llava_dataset exists: datasets 3.x raises, datasets 5.x turns "000000033471" into 33471.
    root, path = data
    try:
        naive = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(root / "naive"))
    except Exception:
        return
    assert naive[0]["id"] != "000000033471"


def test_multi_turn_tokens_labels_and_latency_position(data, processor):
    root, path = data
    dataset = make(load_llava_dataset(path, cache_dir=root / "cache"), processor, root)
    sample = dataset[0]
    # (token, supervised) by hand: system, USER:, the image run, question, ASSISTANT:, answer </s>, ...,
    # the final ASSISTANT:, <latency>, the final answer </s>.
    pieces = [
        (["<s>"] + SYSTEM + ["USER", ":"] + ["<image>"] * 4, False),
        (["What", "color", "is", "the", "cat", "?", "ASSISTANT", ":"], False),
        (["It", "is", "black", ".", "</s>"], True),
        (["USER", ":", "Where", "is", "the", "dog", "?", "ASSISTANT", ":", "<latency>"], False),
        (["It", "is", "on", "the", "left", ".", "</s>"], True),
    ]
    tokens = [t for piece, _ in pieces for t in piece]
    expected_ids = ids(processor, tokens)
    expected_labels = [i if sup else -100 for piece, sup in pieces for i in ids(processor, piece)]
    assert 0 not in expected_ids  # no <unk>: the hand-written words are all in the tiny vocabulary
    assert sample["input_ids"].tolist() == expected_ids
    assert sample["labels"].tolist() == expected_labels
    expected_pixels = processor.image_processor(images=Image.open(root / "images/coco/cat.png"), return_tensors="pt")
    torch.testing.assert_close(sample["pixel_values"], expected_pixels["pixel_values"])
    assert sample["pixel_values"].shape == (1, 3, 28, 28)


def test_text_only_sample_gets_a_latency_token_and_no_pixels(data, processor):
    root, path = data
    dataset = make(load_llava_dataset(path, cache_dir=root / "cache"), processor, root)
    sample = dataset[2]
    prompt = ["<s>"] + SYSTEM + ["USER", ":", "Why", "is", "the", "sky", "blue", "?", "ASSISTANT", ":", "<latency>"]
    answer = ["It", "is", "the", "light", "of", "the", "sun", ".", "</s>"]
    assert sample["input_ids"].tolist() == ids(processor, prompt + answer)
    assert sample["labels"].tolist() == [-100] * len(prompt) + ids(processor, answer)
    assert "pixel_values" not in sample
    assert [length > 0 for length in dataset.modality_lengths] == [True, True, False]
    assert dataset.lengths == [len(dataset[i]["input_ids"]) for i in range(3)]


def test_no_latency_token_without_a_scheduler(data, processor):
    root, path = data
    records = load_llava_dataset(path, cache_dir=root / "cache")
    with_token = make(records, processor, root)[0]
    without = make(records, processor, root, latency_token_id=None)[0]
    keep = with_token["input_ids"] != processor.latency_token_id
    assert torch.equal(without["input_ids"], with_token["input_ids"][keep])
    assert torch.equal(without["labels"], with_token["labels"][keep])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_samples_raise_naming_the_id(data, processor, name):
    root, _ = data
    record, reason = BAD[name]
    records = write(root, name, [{"id": f"bad-{name}", **record}])
    with pytest.raises(BadSampleError, match=f"'bad-{name}'.*{reason}"):
        make(records, processor, root)


def test_undecodable_image_raises_naming_the_id(data, processor):
    root, _ = data
    broken = {"id": "bad-broken", "image": "broken.png", "conversations": [human("<image>\nWhat?"), gpt("A cat.")]}
    records = write(root, "broken", [broken])
    with pytest.raises(BadSampleError, match="bad-broken.*cannot be decoded"):
        make(records, processor, root)[0]  # images are decoded lazily...
    with pytest.raises(BadSampleError, match="bad-broken"):
        make(records, processor, root, check_images=True)  # ...unless asked to check them all up front


def test_bad_samples_are_skipped_and_counted(data, processor):
    root, _ = data
    broken = {"id": "bad-broken", "image": "broken.png", "conversations": [human("<image>\nWhat?"), gpt("A cat.")]}
    bad = [{"id": f"bad-{name}", **record} for name, (record, _) in BAD.items()]
    records = write(root, "mixed_bad", [MULTI_TURN, *bad, broken, TEXT_ONLY])

    dataset = make(records, processor, root, on_bad_sample="skip")
    assert len(dataset) == 3 and len(dataset.skipped) == len(BAD)
    assert {e.sample_id for e in dataset.skipped.values()} == {f"bad-{name}" for name in BAD}
    # The undecodable image shows up when loaded: counted, and the next good sample is returned instead.
    assert dataset[1]["input_ids"].tolist() == dataset[2]["input_ids"].tolist()
    assert len(dataset.skipped) == len(BAD) + 1

    checked = make(records, processor, root, on_bad_sample="skip", check_images=True)
    assert len(checked) == 2 and len(checked.skipped) == len(BAD) + 1


def test_truncation_never_cuts_the_image_run_or_the_final_answer(data, processor):
    root, path = data
    records = load_llava_dataset(path, cache_dir=root / "cache").select([0])
    full = make(records, processor, root)[0]["input_ids"].tolist()
    image_start = full.index(processor.image_token_id)
    answer_start = full.index(processor.latency_token_id) + 1

    cut = make(records, processor, root, max_length=len(full) - 3)[0]
    assert cut["input_ids"].tolist() == full[:-3]
    assert (cut["labels"] != -100).sum() > 0 and cut["labels"][-1] != -100

    with pytest.raises(BadSampleError, match="000000033471.*final answer"):
        make(records, processor, root, max_length=answer_start)
    assert make(records, processor, root, max_length=answer_start + 1)[0]["input_ids"][-2] == processor.latency_token_id
    with pytest.raises(BadSampleError, match="000000033471.*image tokens"):
        make(records, processor, root, max_length=image_start + 2)
    assert len(make(records, processor, root, max_length=image_start + 2, on_bad_sample="skip")) == 0


def test_collator_pads_and_stacks_images(data, processor):
    root, path = data
    dataset = make(load_llava_dataset(path, cache_dir=root / "cache"), processor, root)
    image_sample, text_sample = dataset[0], dataset[2]
    pad = processor.tokenizer.pad_token_id
    long, short = len(image_sample["input_ids"]), len(text_sample["input_ids"])
    assert long > short

    batch = AdaLlavaDataCollator(pad_token_id=pad)([image_sample, text_sample])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, long)
    assert batch["pixel_values"].shape == (1, 3, 28, 28)
    assert batch["attention_mask"].sum(1).tolist() == [long, short]
    assert torch.equal(batch["input_ids"][1, :short], text_sample["input_ids"])
    assert (batch["input_ids"][1, short:] == pad).all() and (batch["labels"][1, short:] == -100).all()

    left = AdaLlavaDataCollator(pad_token_id=pad, padding_side="left")([image_sample, text_sample])
    assert torch.equal(left["input_ids"][1, long - short :], text_sample["input_ids"])
    assert (left["attention_mask"][1, : long - short] == 0).all()

    text_batch = AdaLlavaDataCollator(pad_token_id=pad)([text_sample, text_sample])
    assert "pixel_values" not in text_batch
    two_images = AdaLlavaDataCollator(pad_token_id=pad)([dataset[0], dataset[1]])
    assert two_images["pixel_values"].shape == (2, 3, 28, 28)


def test_mixed_batch_trains_a_tiny_model(data, processor):
    root, path = data
    dataset = make(load_llava_dataset(path, cache_dir=root / "cache"), processor, root)
    tokenizer = processor.tokenizer
    config = tiny_config(
        vocab_size=len(tokenizer),
        image_token_id=processor.image_token_id,
        latency_token_id=processor.latency_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert config.image_seq_length == dataset.num_image_tokens
    model = build_tiny_model(config).train()
    batch = AdaLlavaDataCollator(pad_token_id=tokenizer.pad_token_id)([dataset[0], dataset[2]])
    torch.manual_seed(0)
    out = model(**batch)  # train mode samples one budget per row from the <latency> token
    assert torch.isfinite(out.loss)
    assert out.execution_plan.units.shape == (2,)
    out.loss.backward()
    assert model.scheduler.mlp_head.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_rendering_agrees_with_the_processors_vicuna_v1_chat_template(data, processor):
    root, path = data
    dataset = make(load_llava_dataset(path, cache_dir=root / "cache"), processor, root, latency_token_id=None)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the cat?"}]},
        {"role": "assistant", "content": "It is black."},
        {"role": "user", "content": "Where is the dog?"},
        {"role": "assistant", "content": "It is on the left."},
    ]
    rendered = processor.apply_chat_template(messages)
    ours = dataset[0]["input_ids"].tolist()
    image_start = ours.index(processor.image_token_id)
    del ours[image_start + 1 : image_start + dataset.num_image_tokens]  # the template has one <image> marker
    assert ours == processor.tokenizer(rendered)["input_ids"]


def test_a_leading_gpt_turn_is_dropped_as_llava_does(data, processor):
    root, _ = data
    leading_gpt = {**TEXT_ONLY, "conversations": [gpt("Hi."), *TEXT_ONLY["conversations"]]}
    records = write(root, "leading_gpt", [TEXT_ONLY, leading_gpt])
    dataset = make(records, processor, root)
    assert torch.equal(dataset[0]["input_ids"], dataset[1]["input_ids"])
