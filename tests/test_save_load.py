"""save_pretrained / from_pretrained, with and without ada_hf installed (remote code)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from ada_hf import AdaLlavaForConditionalGeneration
from ada_hf.tiny_processor import build_tiny_processor
from conftest import make_model, make_pixels, make_prompt
from helpers import run_without_ada_hf

CODE_FILES = {
    "configuration_ada_llava.py",
    "modeling_ada_llava.py",
    "latency_scheduler.py",
    "execution_plan.py",
    "planned_layer.py",
    "processing_ada_llava.py",
    "version_check.py",
    "cost_model.py",  # generate's efficiency report and millisecond budgets need the cost model and hardware table
    "efficiency.py",
    "hardware.py",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = make_model("H", scheduler_rank=2, default_latency=1.0)
    path = tmp_path_factory.mktemp("ada") / "tiny-ada-llava-H"
    model.save_pretrained(path)
    return model, path


def test_saved_folder_is_a_remote_code_repo(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "ada_llava"
    assert config["architectures"] == ["AdaLlavaForConditionalGeneration"]
    assert set(config["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoProcessor"
    }  # fmt: skip
    assert config["auto_map"]["AutoModel"] == "modeling_ada_llava.AdaLlavaForConditionalGeneration"
    assert config["ada_hf_version"] and config["scheduler_type"] == "H" and config["default_latency"] == 1.0
    assert CODE_FILES <= {p.name for p in path.glob("*.py")}
    keys = load_file(path / "model.safetensors").keys()
    assert any(k.startswith("model.scheduler.latency_encoder.net.1.") for k in keys)
    assert any(k.startswith("model.language_model.layers.0.") for k in keys)
    generation = json.loads((path / "generation_config.json").read_text())
    assert set(generation["suppress_tokens"]) >= {97, 98, 99}


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText])
def test_round_trip_in_process(saved, auto):
    model, path = saved
    loaded = auto.from_pretrained(path)
    assert type(loaded) is AdaLlavaForConditionalGeneration
    ids = make_prompt(0)[None]
    a = model.generate(input_ids=ids, pixel_values=make_pixels(1), latency=0.6, max_new_tokens=5, do_sample=False)
    b = loaded.generate(input_ids=ids, pixel_values=make_pixels(1), latency=0.6, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)
    assert AutoConfig.from_pretrained(path).scheduler_type == "H"


def test_remote_code_load_without_ada_hf(saved, tmp_path):
    model, path = saved
    build_tiny_processor(image_size=28).save_pretrained(path)
    ids = make_prompt(0, latency=True)[None]
    pixels = make_pixels(1)
    torch.save({"ids": ids, "pixels": pixels}, tmp_path / "inputs.pt")
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels, latency=0.6).logits
        tokens = model.generate(
            input_ids=ids[:, :-1], pixel_values=pixels, latency=0.6, max_new_tokens=5, do_sample=False
        )
    code = f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
        try:
            import ada_hf
            raise SystemExit("ada_hf must not be importable here")
        except ImportError:
            pass
        path = {str(path)!r}
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        names = set()
        for auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
            names.add(type(auto.from_pretrained(path, trust_remote_code=True)).__name__)
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        with torch.no_grad():
            logits = model(input_ids=inputs["ids"], pixel_values=inputs["pixels"], latency=0.6).logits
        tokens = model.generate(input_ids=inputs["ids"][:, :-1], pixel_values=inputs["pixels"], latency=0.6,
                                max_new_tokens=5, do_sample=False)
        report = model.generate(input_ids=inputs["ids"][:, :-1], pixel_values=inputs["pixels"], latency="1s",
                                hardware="nvidia_A100", max_new_tokens=3, return_dict_in_generate=True).efficiency[0]
        torch.save({{"names": sorted(names), "logits": logits, "tokens": tokens, "module": type(model).__module__,
                    "processor": type(processor).__name__, "report": report.to_dict()}}, {str(tmp_path / "out.pt")!r})
    """
    result = run_without_ada_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["names"] == ["AdaLlavaForConditionalGeneration"]
    assert out["module"].startswith("transformers_modules.")
    assert out["processor"] == "AdaLlavaProcessor"
    assert torch.equal(out["logits"], logits)
    assert torch.equal(out["tokens"], tokens)
    report = model.generate(input_ids=ids[:, :-1], pixel_values=pixels, latency="1s", hardware="nvidia_A100",
                            max_new_tokens=3, return_dict_in_generate=True).efficiency[0]  # fmt: skip
    assert out["report"] == report.to_dict()


def test_missing_scheduler_weights_are_initialised_not_garbage(tmp_path):
    # A plain LLaVA checkpoint loaded as AdaLLaVA-L: the scheduler is new and starts from the original's init.
    plain = make_model(None)
    plain.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.scheduler_type, config.num_prefix_layers, config.latency_token_id = "L", 3, 99
    model = AdaLlavaForConditionalGeneration.from_pretrained(tmp_path, config=config)
    head = model.scheduler.mlp_head
    assert head.weight.abs().max() < 0.2 and float(head.weight.detach().std()) == pytest.approx(0.02, rel=0.3)
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    ln = model.scheduler.latency_encoder.net[0]
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    torch.testing.assert_close(model.lm_head.weight, plain.lm_head.weight)


def test_processor_and_model_load_without_remote_code_once_ada_hf_is_imported(saved):
    from transformers import AutoProcessor

    _, path = saved
    build_tiny_processor(image_size=28).save_pretrained(path)
    assert type(AutoProcessor.from_pretrained(path)).__name__ == "AdaLlavaProcessor"
    assert type(AutoModelForImageTextToText.from_pretrained(path)) is AdaLlavaForConditionalGeneration
