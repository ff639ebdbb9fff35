"""The examples run as a user would run them."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ada_hf.trainer import AdaLlavaTrainingArguments
from helpers import run_torchrun, run_without_ada_hf

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--repo", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "latency=0.6 ran 0.6 of the model" in result.stdout and "(right answer: " in result.stdout
    assert "per-row budgets ran [1.0, 0.75, 0.5]" in result.stdout
    assert (tmp_path / "repo" / "modeling_ada_llava.py").exists()


# --------------------------------------------------------------------------------------------------------------------
# examples/train_scheduler.py
TRAIN_SCRIPT = ROOT / "examples" / "train_scheduler.py"


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_scheduler_example", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_env(tmp_path):
    return {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(tmp_path / "hf"),
            "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip


def test_train_scheduler_parser_has_the_recipe_defaults(tmp_path):
    script = load_train_script()
    model_args, data_args, args = script.parse_args(["--model_name_or_path", "m", "--data_path", "d.json",
                                                     "--output_dir", str(tmp_path)])  # fmt: skip
    assert isinstance(args, AdaLlavaTrainingArguments)
    assert args.learning_rate == 1e-5 and args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.03
    assert (args.weight_decay, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (0.0, 2, 4)
    assert (args.num_train_epochs, args.max_steps) == (1.0, -1)
    assert (args.save_strategy, args.save_steps, args.save_total_limit, args.logging_steps) == ("steps", 500, 1, 10)
    assert args.group_by_modality_length and not args.remove_unused_columns and args.report_to == []
    assert args.dataloader_num_workers == 4
    assert not args.bf16 and not args.activation_checkpointing  # off by default: the recipe passes them
    assert data_args.model_max_length == 2048 and not data_args.skip_bad_samples
    assert model_args.train_preset == "full" and (model_args.lora_r, model_args.lora_alpha) == (8, 16)

    # The recipe's own flags, LLaVA spelling included.
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):  # transformers 5's activation_checkpointing
        _, _, args = script.parse_args(["--model_name_or_path", "m", "--data_path", "d.json", "--output_dir",
                                        str(tmp_path), "--bf16", "True", "--gradient_checkpointing", "True",
                                        "--warmup_ratio", "0.05", "--group_by_modality_length", "False",
                                        "--use_cpu", "True"])  # fmt: skip
    assert args.bf16 and args.activation_checkpointing and args.warmup_steps == 0.05
    assert not args.group_by_modality_length

    # --tiny changes the defaults for a CPU smoke run; explicit flags still win.
    model_args, _, args = script.parse_args(["--tiny", "--max_steps", "2", "--train_preset", "lora", "--lora_r", "4"])
    assert model_args.tiny and args.use_cpu and args.max_steps == 2 and args.learning_rate == 1e-3
    assert args.group_by_modality_length and (model_args.train_preset, model_args.lora_r) == ("lora", 4)

    assert script.parse_llavolta_schedule("4stage") == "4stage"
    assert script.parse_llavolta_schedule("0:2:8,0.5:0:1") == [(0.0, 2, 8), (0.5, 0, 1)]
    callback = script.parse_tau_anneal("5,1,cosine")
    assert (callback.start, callback.end, callback.schedule) == (5.0, 1.0, "cosine")
    with pytest.raises(ValueError, match="tau_anneal"):
        script.parse_tau_anneal("5")


def test_train_scheduler_needs_a_model_and_data(tmp_path):
    result = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--output_dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env=script_env(tmp_path))  # fmt: skip
    assert result.returncode != 0 and "--model_name_or_path and --data_path are needed" in result.stderr


def test_train_scheduler_tiny_run_saves_a_model_that_loads_with_remote_code(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(TRAIN_SCRIPT), "--tiny", "--output_dir", str(out), "--disable_tqdm", "True",
               "--tau_anneal", "5,1,exponential", "--llavolta_schedule", "0:1:2,0.5:0:1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=script_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "9 samples (6 with an image), 0 skipped" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["scheduler_tau"] == pytest.approx(1.0) and config["llavolta_stage"] == 1  # the callbacks ran
    assert (out / "modeling_ada_llava.py").exists() and (out / "processor_config.json").exists()

    code = f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(out)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
        conversation = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What color?"}}]}}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = processor(images=Image.new("RGB", (40, 30), (200, 30, 30)), text=prompt, return_tensors="pt")
        out = model.generate(**inputs, latency=0.5, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        print("module", type(model).__module__, type(processor).__name__, out.sequences.shape[0])
    """
    loaded = run_without_ada_hf(code, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "module transformers_modules." in loaded.stdout and "AdaLlavaProcessor 1" in loaded.stdout


def test_train_scheduler_tiny_under_torchrun_with_two_processes(tmp_path):
    out = tmp_path / "out"
    output = run_torchrun([TRAIN_SCRIPT, "--tiny", "--output_dir", out, "--disable_tqdm", "True", "--seed", "3"],
                          env={**os.environ, **script_env(tmp_path)})  # fmt: skip
    assert output.count("9 samples (6 with an image)") == 2  # both ranks built the data
    assert output.count("saved to") == 1  # only the main process saves
    # 9 samples, 2 per device on 2 processes: 3 optimizer steps per epoch, so 4 steps end in epoch 2.
    assert "'epoch': '1.333'" in output
    saved = load_file(out / "model.safetensors")
    # The same seed as the run: the weights it started from.
    initial, _, _, _ = load_train_script().tiny_setup(str(tmp_path / "initial"), seed=3)
    moved = [name for name, weight in initial.state_dict().items() if name in saved
             and not torch.equal(weight, saved[name])]  # fmt: skip
    assert moved and not any("vision_tower" in name for name in moved)  # trained, CLIP frozen ("full" preset)


def test_zero3_config_is_llavas_stage_3_with_auto_fields():
    config = json.loads((ROOT / "examples" / "zero3.json").read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["overlap_comm"] and zero["contiguous_gradients"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["sub_group_size"] == zero["stage3_max_live_parameters"] == zero["stage3_max_reuse_distance"] == 1e9
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        assert zero[key] == "auto", key
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
