"""The README snippet end to end, offline: save the demo model as a Hub-style repo, load it with plain transformers
(remote code), and generate under one budget, then one budget per row.

    python examples/quickstart.py [--repo DIR]
"""

import argparse
import tempfile

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from ada_hf.demo import build_demo, demo_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", help="where to save the demo repo (default: a temporary folder)")
    args = parser.parse_args()
    path = args.repo or tempfile.mkdtemp(prefix="ada-llava-demo-")

    model, processor = build_demo("H")  # random weights: the answers are gibberish, the plans are real
    model.save_pretrained(path)
    processor.save_pretrained(path)

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=demo_image(), text=prompt, return_tensors="pt")
    out = model.generate(**inputs, latency=0.6, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    print(
        "latency=0.6 ran",
        float(out.latency_effective[0]),
        "of the model; heads per layer:",
        out.execution_plan[0].tolist(),
    )
    print("answer:", processor.decode(out.sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

    batch = processor(images=[demo_image()] * 3, text=[prompt] * 3, return_tensors="pt")
    out = model.generate(
        **batch, latency=torch.tensor([1.0, 0.75, 0.5]), max_new_tokens=8, do_sample=False, return_dict_in_generate=True
    )
    print(
        "per-row budgets ran",
        out.latency_effective.tolist(),
        "; heads computed per layer (union):",
        out.heads_computed.tolist(),
    )


if __name__ == "__main__":
    main()
