"""Converting tiny checkpoints written in the real repos' formats (tests/checkpoint_fixtures.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaTokenizer, LlavaForConditionalGeneration

from ada_hf.cli import main as cli_main
from ada_hf.conversion import ORIGINAL_RULES, TOWER_RULES, convert, map_key, unmap_key
from checkpoint_fixtures import (
    TinyDims,
    write_clip_tower,
    write_llava_hf,
    write_original_adallava,
    write_original_llava,
)
from helpers import run_without_ada_hf

DIMS = TinyDims()
V = DIMS.vocab_size
PROMPT = "A chat between a curious user and an artificial intelligence assistant. USER: <image>\nWhat is it? ASSISTANT:"


def converted_state(folder):
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    return state


def inputs(folder, text=PROMPT, seed=0):
    processor = AutoProcessor.from_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, 20, 30, generator=g) * 255).byte().permute(1, 2, 0).numpy()
    return processor(images=image, text=text, return_tensors="pt")


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "clip-vit-large-patch14-336"
    return folder, write_clip_tower(folder, DIMS, fmt="bin")


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_adallava_key_mapping_both_ways_is_bit_exact(tmp_path, tower, scheduler_type):
    tower_dir, tower_tensors = tower
    source = write_original_adallava(tmp_path / "ada", DIMS, scheduler_type=scheduler_type)
    report = convert(tmp_path / "ada", tmp_path / "out", vision_tower=tower_dir, progress=False)
    state = converted_state(tmp_path / "out")
    for name, tensor in source.items():
        target = map_key(name, ORIGINAL_RULES)
        assert unmap_key(target, ORIGINAL_RULES) == name
        if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(state[target][:V], tensor)
            mean = tensor.float().mean(0).to(tensor.dtype)
            assert all(torch.equal(row, mean) for row in state[target][V:])  # new and padding rows: the mean row
        else:
            assert torch.equal(state[target], tensor), name
    for name, tensor in tower_tensors.items():
        target = map_key(name, TOWER_RULES)
        if target in state:
            assert unmap_key(target, TOWER_RULES) == name
            assert torch.equal(state[target], tensor.to(torch.float16)), name
    assert sorted({n.split(".")[0] for n in report.dropped}) == [
        "logit_scale",
        "text_model",
        "text_projection",
        "visual_projection",
    ]
    assert not any("position_ids" in n for n in report.dropped)
    assert state["lm_head.weight"].shape[0] == 128  # 64 + <image>, <pad>, <latency>, padded to a multiple of 64


@pytest.mark.parametrize("scheduler_type", ["L", "H"])
def test_converted_adallava_plans_use_the_original_scheduler(tmp_path, tower, scheduler_type):
    source = write_original_adallava(
        tmp_path / "ada", DIMS, scheduler_type=scheduler_type, num_prefix_layers=2, scheduler_rank=2
    )
    convert(tmp_path / "ada", tmp_path / "out", vision_tower=tower[0], progress=False)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert model.config.default_latency == 1.0 and model.config.scheduler_type == scheduler_type
    batch = inputs(tmp_path / "out")
    weight = source["scheduler.mlp_head.weight"].float()
    bias = source["scheduler.mlp_head.bias"].float()
    for budget in (1.0, 0.85, 0.75, 0.6):
        out = model.generate(
            **batch,
            latency=budget,
            max_new_tokens=3,
            do_sample=False,
            return_dict_in_generate=True,
            output_hidden_states=True,
        )
        heads = out.execution_plan[0]
        hidden = out.hidden_states[0][2][0, -1]  # after the 2 prefix layers, at the <latency> token
        logits = weight @ hidden + bias
        units = int(out.executed_units[0]) - model.scheduler.num_prefix_units
        if scheduler_type == "L":
            chosen = sorted(logits.topk(units).indices.tolist()) if units else []
            assert [i for i in range(2) if heads[2 + i] > 0] == chosen
        else:
            assert int(heads.clamp(min=0).sum()) == 2 * 4 + 2 * units
            if units:  # the first unit goes to the layer holding the best logit of its 2H entries
                best_layer = int(logits.view(2, 8).max(-1).values.argmax())
                assert heads[2 + best_layer] > 0


def test_original_llava_equals_transformers_llava(tmp_path):
    tower_dir = tmp_path / "clip"
    write_clip_tower(tower_dir, DIMS, fmt="safetensors", seed=3)
    write_original_llava(tmp_path / "llava", DIMS, seed=3)
    reference_dir = tmp_path / "hf"
    write_llava_hf(reference_dir, DIMS, seed=3)  # what HF's own conversion makes of the same weights
    report = convert(tmp_path / "llava", tmp_path / "out", vision_tower=tower_dir, progress=False)
    assert report.notes == [] and report.kind == "llava-original"
    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert ours.scheduler is None
    theirs = LlavaForConditionalGeneration.from_pretrained(reference_dir, dtype=torch.float32)
    batch = inputs(tmp_path / "out")
    with torch.no_grad():
        a = ours(**batch).logits
        b = theirs(**batch).logits
    torch.testing.assert_close(a[..., :V], b[..., :V], atol=1e-4, rtol=0)
    # Tokenisation: the original's SentencePiece ids, then <image> 64, <pad> 65, <latency> 66.
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    original = LlamaTokenizer.from_pretrained(tmp_path / "llava")
    text = "What is in the picture? ASSISTANT:"
    assert processor.tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert processor.tokenizer.convert_tokens_to_ids(["<image>", "<pad>", "<latency>"]) == [V, V + 1, V + 2]
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert set(generation["suppress_tokens"]) == {V, V + 1, V + 2}


def test_original_llava_with_a_new_scheduler_and_embedded_tower(tmp_path, tower):
    write_original_llava(tmp_path / "llava", DIMS, include_tower=True, num_shards=3)
    report = convert(
        tmp_path / "llava",
        tmp_path / "out",
        vision_tower=tower[0],
        scheduler_type="H",
        num_prefix_layers=1,
        scheduler_rank=2,
        progress=False,
        max_shard_size="20KB",
    )
    assert any("freshly initialised" in note for note in report.notes)
    assert len(report.shards) > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(report.shards)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert model.config.default_latency is None and model.config.num_prefix_layers == 1
    out = model.generate(**inputs(tmp_path / "out"), latency=0.6, max_new_tokens=2, return_dict_in_generate=True)
    assert float(out.latency_effective[0]) == 0.5  # U_tot = 4 * 4 / 2 = 8, U_pre = 2: floor(4.8) - 2 = 2 units


@pytest.mark.parametrize("layout", ["legacy", "v5"])
def test_llava_hf_equals_transformers_llava(tmp_path, layout):
    write_llava_hf(tmp_path / "hf", DIMS, layout=layout)
    report = convert(tmp_path / "hf", tmp_path / "out", dtype="float32", progress=False)
    assert report.kind == "llava-hf" and not report.dropped
    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32)
    theirs = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    batch = inputs(tmp_path / "out")
    with torch.no_grad():
        a, b = ours(**batch).logits, theirs(**batch).logits
    latency_id = ours.config.latency_token_id
    keep = [i for i in range(a.shape[-1]) if i != latency_id]
    torch.testing.assert_close(a[..., keep], b[..., keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[..., latency_id], b[..., :V].mean(-1), atol=1e-4, rtol=0)  # the exact mean row


def test_converted_repo_loads_without_ada_hf(tmp_path, tower):
    write_original_adallava(tmp_path / "ada", DIMS, scheduler_type="H")
    convert(tmp_path / "ada", tmp_path / "repo", vision_tower=tower[0], progress=False)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "repo", dtype=torch.float32)
    batch = inputs(tmp_path / "repo")
    expected = model.generate(**batch, latency=0.75, max_new_tokens=4, do_sample=False)
    torch.save(dict(batch), tmp_path / "batch.pt")
    code = f"""
        import torch
        from transformers import AutoModel, AutoProcessor
        try:
            import ada_hf
            raise SystemExit("ada_hf must not be importable")
        except ImportError:
            pass
        model = AutoModel.from_pretrained({str(tmp_path / "repo")!r}, trust_remote_code=True, dtype=torch.float32)
        AutoProcessor.from_pretrained({str(tmp_path / "repo")!r}, trust_remote_code=True)
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        out = model.generate(**batch, latency=0.75, max_new_tokens=4, do_sample=False)
        torch.save(out, {str(tmp_path / "out.pt")!r})
    """
    result = run_without_ada_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
def test_refusals_leave_nothing_on_disk(tmp_path, tower):
    write_original_adallava(tmp_path / "ada", DIMS)
    with pytest.raises(ValueError, match="without its CLIP tower"):
        convert(tmp_path / "ada", tmp_path / "out", progress=False)
    # A tensor the model has no place for, in the middle of the stream: fail, and leave no half-written repo.
    shard = sorted((tmp_path / "ada").glob("model-*.safetensors"))[0]
    extra = load_file(shard)
    extra["model.mystery.weight"] = torch.zeros(2)
    save_file(extra, shard, metadata={"format": "pt"})
    index_path = tmp_path / "ada" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.mystery.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.mystery.weight"):
        convert(tmp_path / "ada", tmp_path / "out", vision_tower=tower[0], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ada"]
    report = convert(tmp_path / "ada", tmp_path / "out", vision_tower=tower[0], drop_unknown=True, progress=False)
    assert "model.mystery.weight" in report.dropped
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(tmp_path / "ada", tmp_path / "out", vision_tower=tower[0], progress=False)
    convert(
        tmp_path / "ada", tmp_path / "out", vision_tower=tower[0], drop_unknown=True, overwrite=True, progress=False
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mm_projector_type="linear"), "mm_projector_type='linear' is not supported"),
        (dict(mm_patch_merge_type="spatial_unpad"), "mm_patch_merge_type='spatial_unpad'"),
        (dict(image_aspect_ratio="anyres"), "image_aspect_ratio='anyres'"),
        (dict(mm_use_im_start_end=True), "mm_use_im_start_end"),
        (dict(mm_hidden_size=1024), "not the tower it was trained with"),
        (dict(hidden_size=48), "does not (fit|match)"),
        (dict(model_type="mistral", architectures=["MistralForCausalLM"]), "Cannot tell which checkpoint format"),
    ],
)
def test_refused_sources(tmp_path, tower, overrides, message):
    write_original_llava(tmp_path / "llava", DIMS, **overrides)
    with pytest.raises(ValueError, match=message):
        convert(tmp_path / "llava", tmp_path / "out", vision_tower=tower[0], progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_files(tmp_path, tower):
    write_original_llava(tmp_path / "llava", DIMS)
    sorted((tmp_path / "llava").glob("pytorch_model-*.bin"))[-1].unlink()
    with pytest.raises(FileNotFoundError, match="lists shards that are not in"):
        convert(tmp_path / "llava", tmp_path / "out", vision_tower=tower[0], progress=False)
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert(tmp_path, tmp_path / "out", vision_tower=tower[0], progress=False)
    with pytest.raises(ValueError, match="not a CLIP vision tower"):
        write_original_llava(tmp_path / "llava2", DIMS)
        convert(tmp_path / "llava2", tmp_path / "out", vision_tower=tmp_path / "llava2", progress=False)


def test_pickles_never_run_code(tmp_path, tower):
    write_original_llava(tmp_path / "llava", DIMS, num_shards=1)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.embed_tokens.weight": Exploit()}, tmp_path / "llava" / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        convert(tmp_path / "llava", tmp_path / "out", vision_tower=tower[0], progress=False)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_convert(tmp_path, tower, capsys):
    write_original_adallava(tmp_path / "ada", DIMS, scheduler_rank=None)
    code = cli_main(["convert", str(tmp_path / "ada"), str(tmp_path / "out"), "--vision-tower", str(tower[0])])
    out = capsys.readouterr().out
    assert code == 0 and "no scheduler_rank: used the original class default 8" in out
    assert "text_model.encoder.*" in out
    assert cli_main(["convert", str(tmp_path / "ada"), str(tmp_path / "out"), "--vision-tower", str(tower[0])]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_streaming_safetensors_writer_round_trips(tmp_path):
    from ada_hf.checkpoint_io import write_safetensors

    tensors = {
        "bf16": torch.randn(3, 5).bfloat16(),
        "int": torch.arange(7),
        "bool": torch.tensor([True, False, True]),
        "transposed": torch.randn(4, 2).t(),
        "empty": torch.zeros(0, 3),
    }
    write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_converted_repo_has_a_model_card(tmp_path, tower):
    from huggingface_hub import ModelCard

    write_original_adallava(tmp_path / "ada", DIMS, scheduler_type="L")
    convert(tmp_path / "ada", tmp_path / "out", vision_tower=tower[0], repo_id="someone/tiny-ada", progress=False)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "transformers"
    assert "someone/tiny-ada" in card.text and "trust_remote_code=True" in card.text


def test_thin_scripts_and_module_entry_point():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for script in sorted((root / "convert").glob("convert_*.py")):
        result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--vision-tower" in result.stdout, script.name
    result = subprocess.run(
        [sys.executable, "-m", "ada_hf", "convert", "--help"], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert result.returncode == 0 and "--push-to-hub" in result.stdout
