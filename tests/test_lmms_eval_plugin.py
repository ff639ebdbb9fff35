"""The lmms-eval plugin (`--model ada_llava`): discovery, request handling, loglikelihood, model_args, metric names and
lmms-eval's own evaluator on a tiny local task. Everything offline: a tiny model saved to a temporary folder and a
dataset saved with `save_to_disk`."""

import math
import textwrap

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install --no-deps lmms-eval==0.7.3)")

import datasets  # noqa: E402
import torch  # noqa: E402
from lmms_eval.api.instance import Instance, unwrap_generation_output  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from PIL import Image  # noqa: E402

from ada_hf.lmms_eval_plugin import (  # noqa: E402
    EFFICIENCY_METRICS,
    AdaLlava,
    AdaLlavaLoglikelihood,
    merge_efficiency_metrics,
)
from ada_hf.tiny_model import build_tiny_model, tiny_config  # noqa: E402
from ada_hf.tiny_processor import build_tiny_processor  # noqa: E402


# Requests built by hand carry a plain doc_to_visual function, not a task's bound method: no task to attach to.
pytestmark = pytest.mark.filterwarnings("ignore:ada_llava. cannot attach the efficiency metrics")

TASK, SPLIT = "ada_toy", "test"
QUESTIONS = ["What is in the picture?", "Is it red?", "Describe the image.", "What color is the sky ?", "Why?"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    processor = build_tiny_processor(image_size=28)
    tok = processor.tokenizer
    config = tiny_config(
        len(tok), tok.convert_tokens_to_ids("<image>"), processor.latency_token_id, scheduler_type="L",
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = build_tiny_model(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    path = tmp_path_factory.mktemp("ada_llava_tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def docs():
    return [
        {"question": q, "image": Image.new("RGB", (30 + 7 * i, 20 + 3 * i), (50 * i, 120, 200 - 30 * i))}
        for i, q in enumerate(QUESTIONS)
    ]


def doc_to_visual(doc):
    return [doc["image"]]


def make_lm(pretrained, args="", **extra):
    """Through lmms-eval's own registry and argument parsing, as `--model ada_llava --model_args ...` does."""
    lm = get_model("ada_llava").create_from_arg_string(f"pretrained={pretrained},{args}".rstrip(","), extra)
    lm.task_dict = {TASK: {SPLIT: docs()}}
    return lm


def gen_requests(gen_kwargs=None, ids=range(len(QUESTIONS))):
    return [
        Instance(
            "generate_until", (QUESTIONS[i], dict(gen_kwargs or {}), doc_to_visual, i, TASK, SPLIT), idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )  # fmt: skip
        for i in ids
    ]


def ll_requests(continuations):
    return [
        Instance(
            "loglikelihood", (QUESTIONS[i], cont, doc_to_visual, i, TASK, SPLIT), idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )  # fmt: skip
        for i, cont in enumerate(continuations)
    ]


def test_found_through_the_entry_point():
    assert get_model("ada_llava") is AdaLlava
    assert get_model("adallava") is AdaLlava  # the original wrapper's name


def test_prompt_is_vicuna_v1_with_the_image_first(pretrained):
    lm = make_lm(pretrained)
    prompt = lm._render("Is it red?", 1)
    assert prompt.endswith(" USER: <image>\nIs it red? ASSISTANT:")
    assert prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert lm._render("<image>\nIs it red?", 1) == prompt  # the context placing the image itself
    assert lm._render("Is it red?", 0).endswith(" USER: Is it red? ASSISTANT:")


def test_batched_generate_until_equals_one_at_a_time(pretrained):
    gen = {"max_new_tokens": 6, "temperature": 0}
    batched = make_lm(pretrained, "latency=0.5,batch_size=3").generate_until(gen_requests(gen))
    single = make_lm(pretrained, "latency=0.5,batch_size=1").generate_until(gen_requests(gen))
    assert batched == single
    assert len(set(batched)) > 1  # different prompts, different answers: the rows were not mixed up
    for b, s in zip(batched, single):
        assert b.efficiency == pytest.approx(s.efficiency)


def test_generate_until_is_the_models_greedy_generate(pretrained):
    lm = make_lm(pretrained, "latency=0.5")
    [answer] = lm.generate_until(gen_requests({"max_new_tokens": 5}, ids=[2]))
    doc = docs()[2]
    inputs = lm.processor(images=[doc["image"]], text=lm._render(QUESTIONS[2], 1), return_tensors="pt")
    out = lm.model.generate(**inputs, latency=0.5, max_new_tokens=5, do_sample=False)
    assert answer == lm.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_until_cuts_the_text_and_stops_early(pretrained):
    lm = make_lm(pretrained, "latency=0.5")
    [full] = lm.generate_until(gen_requests({"max_new_tokens": 8}, ids=[0]))
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]
    [cut] = lm.generate_until(gen_requests({"max_new_tokens": 8, "until": [stop]}, ids=[0]))
    assert cut == full.split(stop)[0] and len(cut) < len(full)
    [cut_str] = lm.generate_until(gen_requests({"max_new_tokens": 8, "until": stop}, ids=[0]))
    assert cut_str == cut
    # stopped after the stop word: fewer decoding steps were paid for
    assert cut.efficiency["flops"] < full.efficiency["flops"]


def test_loglikelihood_matches_a_hand_computation(pretrained):
    lm = make_lm(pretrained, "latency=0.5,loglikelihood_value=logprob,batch_size=2")
    tok, model = lm.tokenizer, lm.model
    continuations = [" yes", " red cat", " a dog .", " blue", " no"]

    def by_hand(i, continuation):
        inputs = lm.processor(images=[docs()[i]["image"]], text=lm._render(QUESTIONS[i], 1), return_tensors="pt")
        context = inputs["input_ids"][0].tolist() + [model.config.latency_token_id]  # <latency> after ASSISTANT:
        cont = tok(continuation.strip(), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + cont])
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"], latency=0.5).logits
        log_probs = torch.log_softmax(logits[0, len(context) - 1 : -1], dim=-1)
        picked = log_probs.gather(-1, torch.tensor(cont)[:, None])[:, 0]
        return float(picked.sum()), bool((log_probs.argmax(-1) == torch.tensor(cont)).all()), len(cont)

    results = lm.loglikelihood(ll_requests(continuations))
    mean_nll = make_lm(pretrained, "latency=0.5,batch_size=1").loglikelihood(ll_requests(continuations))
    for i, (cont, result, nll) in enumerate(zip(continuations, results, mean_nll)):
        logprob, greedy, n = by_hand(i, cont)
        assert isinstance(result, tuple) and len(result) == 2
        assert result[0] == pytest.approx(logprob, abs=1e-4) and result[1] == greedy
        assert nll[0] == pytest.approx(-logprob / n, abs=1e-4)  # the default: lmms-eval's models' mean loss

    # A continuation that is the greedy token is greedy.
    inputs = lm.processor(images=[docs()[0]["image"]], text=lm._render(QUESTIONS[0], 1), return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], torch.tensor([[model.config.latency_token_id]])], dim=1)
    with torch.no_grad():
        best = model(input_ids=ids, pixel_values=inputs["pixel_values"], latency=0.5).logits[0, -1].argmax()
    [(value, greedy)] = lm.loglikelihood(ll_requests([" " + tok.decode([int(best)])]))
    assert greedy and value <= 0


def test_loglikelihood_output_survives_lmms_evals_unwrapping(pretrained):
    # lmms-eval 0.7's evaluator turns a plain tuple into its string; the result must come through as a pair.
    result = AdaLlavaLoglikelihood(-1.25, True)
    assert result == (-1.25, True)
    text, counts = unwrap_generation_output(result)
    assert tuple(text) == (-1.25, True) and counts is None
    lm_value, greedy = text
    assert lm_value == -1.25 and greedy is True


def test_model_args(pretrained):
    assert make_lm(pretrained, "latency=1").latency == 1.0  # parsed as the int 1 by lmms-eval
    assert make_lm(pretrained, "latency=none").latency is None
    lm = make_lm(pretrained, "token_reduction=llavolta-heavy,illava_vit_k=5-6,batch_size=4", batch_size=None)
    assert lm.reduction_flags == {"token_reduction": "llavolta-heavy", "illava_vit_k": "5-6"}
    assert lm.batch_size == 4 and lm.hardware == "nvidia_V100" and lm.max_new_tokens == 1024
    with pytest.raises(ValueError, match=r"unknown model_args \['lantency'\].*accepted: .*latency"):
        make_lm(pretrained, "lantency=0.5")
    for args, message in [
        ("latency=1.5", r"latency=1\.5.*\(0, 1\]"),
        ("latency=fast", "latency='fast'"),
        ("conv_template=llava_v1", "vicuna_v1"),
        ("batch_size=auto", "batch_size=auto"),
        ("batch_size=0", "batch_size=0"),
        ("loglikelihood_value=prob", "loglikelihood_value='prob'"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_lm(pretrained, args)


def test_token_reduction_is_passed_to_generate(pretrained):
    gen = {"max_new_tokens": 4}
    plain = make_lm(pretrained, "latency=1").generate_until(gen_requests(gen, ids=[0, 1]))
    pooled = make_lm(
        pretrained, "latency=1,llavolta_grouping=avgpool1d,llavolta_layer=-1,llavolta_stride=2,batch_size=2"
    )
    reduced = pooled.generate_until(gen_requests(gen, ids=[0, 1]))
    assert all(isinstance(r, str) for r in reduced)
    # fewer image tokens in the LLM: a cheaper prefill
    assert all(r.efficiency["prefill_flops"] < p.efficiency["prefill_flops"] for r, p in zip(reduced, plain))
    # loglikelihood writes the pooled placeholder count itself, as `forward` needs it
    [(value, _)] = pooled.loglikelihood(ll_requests([" yes"]))
    assert math.isfinite(value)


def test_efficiency_metric_names_and_values(pretrained):
    lm = make_lm(pretrained, "latency=0.5,hardware=nvidia_A100_80G,batch_size=2")
    responses = lm.generate_until(gen_requests({"max_new_tokens": 5}, ids=[0, 1]))
    doc = docs()[0]
    inputs = lm.processor(images=[doc["image"]], text=lm._render(QUESTIONS[0], 1), return_tensors="pt")
    out = lm.model.generate(
        **inputs, latency=0.5, max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
        hardware="nvidia_A100_80G",
    )  # fmt: skip
    assert tuple(responses[0].efficiency) == EFFICIENCY_METRICS
    assert responses[0].efficiency == pytest.approx(out.efficiency[0].original_metrics())
    assert lm.efficiency_records[TASK][:2] == [r.efficiency for r in responses]
    # loglikelihood: one forward, a prefill with no decoding step
    [scored] = lm.loglikelihood(ll_requests([" yes"]))
    assert tuple(scored.efficiency) == EFFICIENCY_METRICS
    assert scored.efficiency["flops"] == scored.efficiency["prefill_flops"] == scored.efficiency["avg_flops"]
    assert scored.efficiency["prefill_flops"] > responses[0].efficiency["prefill_flops"]  # + <latency> + answer
    # a time budget: `generate` picks the largest budget its prediction fits on the hardware
    timed = make_lm(pretrained, "latency=1000ms,hardware=nvidia_A100_80G")
    [answer] = timed.generate_until(gen_requests({"max_new_tokens": 5}, ids=[0]))
    assert answer.efficiency is not None and timed.latency == "1000ms"
    [full] = make_lm(pretrained, "latency=1").generate_until(gen_requests({"max_new_tokens": 5}, ids=[0]))
    assert answer == full  # a tiny model fits the whole compute in a second
    with pytest.raises(ValueError, match="time budget"):
        timed.loglikelihood(ll_requests([" yes"]))
    with pytest.raises(ValueError, match="nvidia_X"):  # the cost model's message, before the model loads
        make_lm(pretrained, "hardware=nvidia_X")


def test_merge_efficiency_metrics():
    records = {"t": [dict.fromkeys(EFFICIENCY_METRICS, 1.0), dict.fromkeys(EFFICIENCY_METRICS, 3.0), None]}
    results = merge_efficiency_metrics({"results": {"t": {"acc,none": 0.5}}}, records)["results"]["t"]
    assert results["acc,none"] == 0.5
    assert {k: v for k, v in results.items() if k != "acc,none"} == {
        **{f"{m},{m}": 2.0 for m in EFFICIENCY_METRICS},
        **{f"{m}_stderr,{m}": "N/A" for m in EFFICIENCY_METRICS},
    }


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A generate_until task and a multiple-choice task over the same 5 documents, saved to disk (offline)."""
    root = tmp_path_factory.mktemp("lmms_tasks")
    features = datasets.Features(
        {"question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image()}
    )
    rows = docs()
    data = datasets.Dataset.from_dict(
        {"question": QUESTIONS, "answer": ["yes"] * len(rows), "image": [d["image"] for d in rows]}, features=features
    )
    datasets.DatasetDict({SPLIT: data}).save_to_disk(str(root / "data"))
    (root / "ada_toy_utils.py").write_text(textwrap.dedent('''
        def doc_to_visual(doc):
            return [doc["image"].convert("RGB")]

        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"]

        def process_results(doc, results):
            return {"exact_match": float(results[0].strip() == doc["answer"])}
    '''))
    common = f"""
        dataset_path: {root / "data"}
        dataset_kwargs:
          load_from_disk: true
        test_split: {SPLIT}
        doc_to_visual: !function ada_toy_utils.doc_to_visual
        doc_to_text: !function ada_toy_utils.doc_to_text
    """
    (root / "ada_toy.yaml").write_text(textwrap.dedent(f"""
        task: {TASK}
        output_type: generate_until
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 4
          until: ["\\n\\n"]
        process_results: !function ada_toy_utils.process_results
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
    """) + textwrap.dedent(common))
    (root / "ada_toy_mc.yaml").write_text(textwrap.dedent("""
        task: ada_toy_mc
        output_type: multiple_choice
        doc_to_choice: ["yes", "no", "red"]
        doc_to_target: 0
        metric_list:
          - metric: acc
    """) + textwrap.dedent(common))
    return root


def test_lmms_eval_evaluator_end_to_end(pretrained, task_dir):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    lm = make_lm(pretrained, "latency=0.5,batch_size=2")
    lm.task_dict = {}  # the evaluator fills it
    out = simple_evaluate(
        model=lm, tasks=[TASK, "ada_toy_mc"], task_manager=TaskManager(include_path=str(task_dir)),
        bootstrap_iters=0,
    )  # fmt: skip
    results = out["results"]
    assert "exact_match,none" in results[TASK]
    assert 0.0 <= results["ada_toy_mc"]["acc,none"] <= 1.0  # multiple choice ran on loglikelihood
    # The accuracy follows the plugin's scores: lmms-eval takes the argmin of the mean loss over the choices.
    choices = [" yes", " no", " red"]
    fresh = make_lm(pretrained, "latency=0.5")  # the evaluator's `lm.clean()` dropped the first one's model
    losses = [[v for v, _ in fresh.loglikelihood(ll_requests([c] * len(QUESTIONS)))] for c in choices]
    expected_acc = sum(min(range(3), key=lambda k: losses[k][i]) == 0 for i in range(len(QUESTIONS))) / len(QUESTIONS)
    assert results["ada_toy_mc"]["acc,none"] == pytest.approx(expected_acc)
    for task in (TASK, "ada_toy_mc"):
        records = lm.efficiency_records[task]
        for metric in EFFICIENCY_METRICS:
            key = f"{metric},{metric}"
            assert key in results[task], sorted(results[task])
            if task == TASK:  # one request per document: the mean over documents is the mean over requests
                expected = sum(r[metric] for r in records) / len(records)
                assert results[task][key] == pytest.approx(expected)


def test_a_batch_mixing_text_only_and_two_image_documents(pretrained):
    lm = make_lm(pretrained, "latency=0.5,batch_size=3")
    image = docs()[0]["image"]
    lm.task_dict = {TASK: {SPLIT: [{"images": []}, {"images": [image]}, {"images": [image, image.rotate(90)]}]}}

    def requests(kind, second):
        return [
            Instance(kind, (QUESTIONS[i], dict(second) if isinstance(second, dict) else second,
                            lambda doc: doc["images"], i, TASK, SPLIT),
                     idx=0, metadata={"task": TASK, "doc_id": i, "repeats": 1})
            for i in range(3)
        ]  # fmt: skip

    batched = lm.generate_until(requests("generate_until", {"max_new_tokens": 4}))
    scored = lm.loglikelihood(requests("loglikelihood", " yes"))
    lm.batch_size_per_gpu = 1
    assert lm.generate_until(requests("generate_until", {"max_new_tokens": 4})) == batched
    for one, many in zip(lm.loglikelihood(requests("loglikelihood", " yes")), scored):
        assert one[0] == pytest.approx(many[0], abs=1e-4) and one[1] == many[1]
    assert lm._render(QUESTIONS[2], 2).count("<image>") == 2
