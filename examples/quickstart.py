"""The README snippet end to end, offline: save the trained tiny demo model (variant H) as a Hub-style repo, load it
with plain transformers (remote code), and ask a question about a held-out picture of its synthetic task under one
budget, then under one budget per row.

    python examples/quickstart.py [--repo DIR]
"""

import argparse
import tempfile

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from ada_hf.demo import demo_questions, demo_scene, demo_task, load_trained_demo
from ada_hf.synthetic_vqa import draw_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", help="where to save the demo repo (default: a temporary folder)")
    args = parser.parse_args()
    path = args.repo or tempfile.mkdtemp(prefix="ada-llava-demo-")

    model, processor = load_trained_demo("H")  # ada_hf/demo_model/H: 10 decoder layers, 32 px pictures
    model.save_pretrained(path)
    processor.save_pretrained(path)

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    task = demo_task("H")  # the picture size, grid and colours it was trained on
    objects = demo_scene(task)  # a scene held out from training
    image = draw_scene(objects, task["image_size"])
    question = demo_questions(objects, task)[0]
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.text}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    out = model.generate(**inputs, latency=0.6, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    print(
        "latency=0.6 ran",
        float(out.latency_effective[0]),
        "of the model; heads per layer:",
        out.execution_plan[0].tolist(),
    )
    answer = processor.decode(out.sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    print(f"{question.text} answer: {answer!r} (right answer: {question.answer!r})")

    batch = processor(images=[image] * 3, text=[prompt] * 3, return_tensors="pt")
    out = model.generate(
        **batch, latency=torch.tensor([1.0, 0.75, 0.5]), max_new_tokens=3, do_sample=False, return_dict_in_generate=True
    )
    print(
        "per-row budgets ran",
        out.latency_effective.tolist(),
        "; heads computed per layer (union):",
        out.heads_computed.tolist(),
    )


if __name__ == "__main__":
    main()
