"""AdaLLaVA as an lmms-eval model: `--model ada_llava` (alias `adallava`, the original's name).

lmms-eval (0.7.x) finds the model through the `lmms_eval.models` entry point declared in pyproject.toml, which points
at [`model_manifest`]; `python -m lmms_eval --model ada_llava --model_args pretrained=PATH,latency=0.6 ...` then
builds [`AdaLlava`] from the model_args.

Tooling, not model code: it imports ada_hf's model and processor, never the reverse, and is not shipped with
checkpoints. It needs lmms-eval itself (installed without its dependencies, see README "Evaluation with lmms-eval").

Efficiency metrics. Each response carries the original wrapper's six per-sample numbers (`flops`, `avg_flops`,
`prefill_flops`, `prefill_time`, `memory_consumption`, `prefill_memory_consumption`, from `generate`'s efficiency
report). lmms-eval 0.7.x has no hook for model-side metrics, so the first request of each task attaches to that task
(reached through the bound `doc_to_visual` its requests carry) one filter ensemble per metric, named like the metric,
whose filter reads the number off the response, plus an arithmetic-mean aggregation: the results then hold
`"flops,flops"`, `"avg_flops,avg_flops"`, ... as the original's patched evaluator wrote them. The task's own
metrics and filters are untouched. [`merge_efficiency_metrics`] does the same after the fact for results computed
without that hook (for instance with `efficiency_metrics=False`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lmms_eval.api.filter import Filter, FilterEnsemble
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.metrics import mean
from lmms_eval.api.model import lmms
from PIL import Image
from transformers import AutoProcessor, StoppingCriteria, StoppingCriteriaList

from .cost_model import ORIGINAL_METRICS
from .cost_model import original_metrics as _original_metrics
from .efficiency import parse_time_target as _parse_time_target
from .hardware import get_hardware as _get_hardware
from .modeling_ada_llava import AdaLlavaForConditionalGeneration
from .processing_ada_llava import VICUNA_V1_CHAT_TEMPLATE
from .token_reduction import ILLAVA_LLM_FIELDS, LLAVOLTA_FIELDS
from .vision_merging import ILLAVA_VIT_FIELDS

MODEL_ID = "ada_llava"
ALIASES = ("adallava",)
# The original wrapper's per-sample efficiency numbers, in its order (ADALLAVA.md 10.1 and 10.2).
EFFICIENCY_METRICS = ORIGINAL_METRICS
# model_args passed through to `generate` / `forward` as they are (None: the config's value).
TOKEN_REDUCTION_ARGS = ("token_reduction", "token_selecting") + LLAVOLTA_FIELDS + ILLAVA_VIT_FIELDS + ILLAVA_LLM_FIELDS
# Generation kwargs of lmms-eval tasks that the plugin maps onto `generate`; others are ignored with a warning, as
# lmms-eval's own LLaVA wrapper ignores them.
_GEN_KWARGS = ("until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample")
_LOGLIKELIHOOD_VALUES = ("mean_nll", "logprob")
_INTEGER_FLAGS = ("llavolta_layer", "llavolta_stride", "illava_llm_k")
_MARKER = "_ada_llava_efficiency_attached"


def model_manifest() -> Any:
    """The payload of the `lmms_eval.models` entry point: model id `ada_llava`, alias `adallava` (a `ModelManifest`)."""
    # Imported here: `lmms_eval.models` loads the entry points when first imported, so importing it at module level
    # would re-enter this half-initialised module.
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.AdaLlava", aliases=ALIASES)


class AdaLlavaResponse(str):
    """A generated answer (a `str`, so lmms-eval handles it as any other) carrying its efficiency numbers.

    Attributes:
        efficiency: the six original metrics of this request (`EFFICIENCY_METRICS`), or None when `generate` gave
            no efficiency report.
    """

    efficiency: dict[str, float] | None

    def __new__(cls, text: str, efficiency: dict[str, float] | None = None) -> AdaLlavaResponse:
        response = super().__new__(cls, text)
        response.efficiency = efficiency
        return response


class AdaLlavaLoglikelihood(tuple, GenerationResult):
    """`(value, is_greedy)` of one loglikelihood request, carrying its efficiency numbers like [`AdaLlavaResponse`].

    It is a plain 2-tuple to its users. It is also a `GenerationResult` whose `text` is itself because lmms-eval
    0.7.x's evaluator passes every output through `unwrap_generation_output`, which turns a tuple into its string
    (`"(-1.2, True)"`) and would break the multiple-choice scoring; a `GenerationResult` passes unchanged.
    """

    efficiency: dict[str, float] | None

    def __new__(cls, value: float, is_greedy: bool, efficiency: dict[str, float] | None = None):
        result = super().__new__(cls, (float(value), bool(is_greedy)))
        result.text, result.token_counts, result.efficiency = result, None, efficiency
        return result

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything is set in __new__; GenerationResult's dataclass __init__ takes other arguments


class _EfficiencyValue(float):
    """One request's value of one efficiency metric, as a filter ensemble named after the metric leaves it."""

    metric: str

    def __new__(cls, metric: str, value: float) -> _EfficiencyValue:
        number = super().__new__(cls, value)
        number.metric = metric
        return number


class EfficiencyFilter(Filter):
    """Reads one efficiency metric off each response (`AdaLlavaResponse` / `AdaLlavaLoglikelihood`); the mean over
    repeats when a request was answered several times, None when the response carries none (e.g. from a cache)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def apply(self, resps: Sequence[Sequence[Any]], docs: Any) -> list[_EfficiencyValue | None]:
        values = []
        for responses in resps:
            found = [r.efficiency[self.metric] for r in responses if getattr(r, "efficiency", None)]
            values.append(_EfficiencyValue(self.metric, sum(found) / len(found)) if found else None)
        return values


def attach_efficiency_metrics(task: Any) -> bool:
    """Make an lmms-eval task report the six efficiency metrics as `"<metric>,<metric>"` (mean over its documents).

    Adds one filter ensemble per metric (see [`EfficiencyFilter`]), an arithmetic-mean aggregation and
    `higher_is_better=False` for each, and wraps the task's `process_results` so that, for those ensembles only, a
    document's value is the mean over its requests (one per choice for multiple-choice tasks). Idempotent.

    Returns:
        `bool`: whether the task is (now) set up; False for a task object without lmms-eval's `ConfigurableTask`
        internals (`_filters`, `_aggregation_list`, `_higher_is_better`).
    """
    if getattr(task, _MARKER, False):
        return True
    if not all(isinstance(getattr(task, name, None), container) for name, container in (
            ("_filters", list), ("_aggregation_list", dict), ("_higher_is_better", dict))):  # fmt: skip
        return False
    for metric in EFFICIENCY_METRICS:
        task._filters.append(FilterEnsemble(name=metric, filters=[EfficiencyFilter(metric)]))
        task._aggregation_list[metric] = mean  # lmms-eval's own `mean`: its stderr is the mean's stderr
        task._higher_is_better[metric] = False
    process_results = task.process_results

    def process_results_with_efficiency(doc: dict, results: list, *args: Any, **kwargs: Any) -> dict:
        if results and all(r is None or isinstance(r, _EfficiencyValue) for r in results):
            values = [r for r in results if r is not None]
            return {values[0].metric: sum(values) / len(values)} if values else {}
        return process_results(doc, results, *args, **kwargs)

    task.process_results = process_results_with_efficiency
    setattr(task, _MARKER, True)
    return True


def merge_efficiency_metrics(results: dict, per_sample: dict[str, list[dict[str, float]]]) -> dict:
    """Add the efficiency metrics to an lmms-eval results dict after the fact, as the hook would have.

    Args:
        results: what `lmms_eval.evaluator.simple_evaluate` returned (its `"results"` maps task names to metrics).
        per_sample: task name to the per-request metric dicts, e.g. [`AdaLlava.efficiency_records`].

    Returns:
        `dict`: `results`, updated in place: `results["results"][task]["flops,flops"]` is the arithmetic mean over
        the task's requests, and `"flops_stderr,flops"` is `"N/A"`, as the original wrote them.
    """
    for task_name, records in per_sample.items():
        records = [r for r in records if r]
        if not records:
            continue
        task_results = results.setdefault("results", {}).setdefault(task_name, {})
        for metric in EFFICIENCY_METRICS:
            task_results[f"{metric},{metric}"] = sum(r[metric] for r in records) / len(records)
            task_results[f"{metric}_stderr,{metric}"] = "N/A"
    return results


class _StopAndCount(StoppingCriteria):
    """Stops a row once its new text holds one of the `until` strings, and counts decoding steps (`generate` may
    shorten the prompt for vision-token reduction, so the new tokens cannot be located from the input width).

    transformers' own `stop_strings` needs a tokenizer whose vocabulary it can map back to text, which not every
    tokenizer allows (word-level ones fail); decoding the tail of each row works with any."""

    def __init__(self, tokenizer: Any, until: Sequence[str]) -> None:
        self.tokenizer, self.until = tokenizer, list(until)
        # A stop string of n characters spans at most n tokens (every token decodes to at least one character).
        self.tail = max((len(u) for u in self.until), default=0) + 1
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.steps += 1
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.until:
            tails = input_ids[:, -min(self.steps, self.tail) :]
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            for row, text in enumerate(texts):
                done[row] = any(stop in text for stop in self.until)
        return done


def _parse_latency(value: Any) -> float | str | None:
    # lmms-eval parses `latency=1` as the int 1 (the original wrapper then failed); "none" runs without a budget; a
    # time like "150ms" is a target `generate` meets on `hardware` (kept as the string `generate` takes).
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    expected = f"latency={value!r}: expected a number in (0, 1], a time like '150ms' or 'none'."
    if isinstance(value, str) and value.rstrip().endswith(("ms", "s")):
        _parse_time_target(value)  # a clear error for e.g. '-5ms'
        return value
    if isinstance(value, bool):
        raise ValueError(expected)
    try:
        latency = float(value)
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    if not 0.0 < latency <= 1.0:
        raise ValueError(f"latency={value!r}: a budget is a share of the compute, in (0, 1].")
    return latency


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer.")
    return value


def _integral(name: str, value: Any) -> Any:
    # lmms-eval parses "-1" as the float -1.0 (only digit strings become ints); these flags take integers.
    if name in _INTEGER_FLAGS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class AdaLlava(lmms):
    """lmms-eval model for ada-hf checkpoints (AdaLLaVA, and LLaVA-1.5 with iLLaVA / LLaVolta / PruMerge).

    Args (lmms-eval `model_args`):
        pretrained: a local folder or Hub repo id saved by ada-hf (model and processor).
        latency: the compute budget in (0, 1] for every request (default 1.0, as the original), or a time such as
            `150ms` that `generate` meets on `hardware` (generate_until only); `none` runs without one (the config's
            `default_latency`, or the plain LLaVA forward for a model without a scheduler).
        hardware: the device the efficiency metrics are modelled on (default `nvidia_V100`, as the original).
        token_reduction, token_selecting, llavolta_*, enable_illava_*, illava_*: token reduction, passed to
            `generate` / `forward` as they are (a preset name, then individual flags).
        batch_size: requests per `generate` / `forward` call (left-padded for generation).
        device, dtype: where and in which dtype to load the model (default: `cuda:<LOCAL_RANK>` when CUDA is there,
            else the CPU; `dtype=auto`: the checkpoint's).
        conv_template: only `vicuna_v1` (LLaVA-1.5's), as the original.
        max_new_tokens: default when a task sets none (1024, as the original).
        attn_implementation: passed to `from_pretrained`.
        loglikelihood_value: `mean_nll` (default: the mean negative log-likelihood of the continuation tokens, what
            lmms-eval's own models return and what its multiple-choice scoring takes the argmin of) or `logprob` (the
            summed log-probability, as `lmms.loglikelihood`'s docstring describes it).
        efficiency_metrics: add the six efficiency metrics to the task results (default True).
        max_batch_size: accepted for lmms-eval's CLI and ignored (no automatic batch size).
    """

    def __init__(
        self,
        pretrained: str,
        latency: Any = 1.0,
        hardware: str = "nvidia_V100",
        batch_size: Any = 1,
        device: str | None = None,
        dtype: str = "auto",
        conv_template: str = "vicuna_v1",
        max_new_tokens: Any = 1024,
        attn_implementation: str | None = None,
        loglikelihood_value: str = "mean_nll",
        efficiency_metrics: bool = True,
        max_batch_size: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(TOKEN_REDUCTION_ARGS))
        if unknown:
            accepted = sorted(
                {"pretrained", "latency", "hardware", "batch_size", "device", "dtype", "conv_template",
                 "max_new_tokens", "attn_implementation", "loglikelihood_value", "efficiency_metrics",
                 "max_batch_size", *TOKEN_REDUCTION_ARGS}  # fmt: skip
            )
            raise ValueError(
                f"ada_llava: unknown model_args {unknown}; accepted: {', '.join(accepted)}."
            )
        if conv_template != "vicuna_v1":
            raise ValueError(f"conv_template={conv_template!r}: ada_llava renders prompts with 'vicuna_v1' only.")
        if loglikelihood_value not in _LOGLIKELIHOOD_VALUES:
            raise ValueError(f"loglikelihood_value={loglikelihood_value!r}: use one of {_LOGLIKELIHOOD_VALUES}.")
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise ValueError("batch_size=auto is not supported by ada_llava: give a number.")
        self.latency = _parse_latency(latency)
        _get_hardware(hardware)  # an unknown name fails here, before the model loads
        self.hardware = hardware
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.loglikelihood_value = loglikelihood_value
        self.efficiency_metrics = bool(efficiency_metrics)
        self.reduction_flags = {k: _integral(k, v) for k, v in kwargs.items() if v is not None}
        # Under `accelerate launch`, each process takes its own GPU (lmms-eval splits the documents by rank).
        default_device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device or default_device)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, str(dtype), None)
        if not isinstance(torch_dtype, (str, torch.dtype)):
            raise ValueError(f"dtype={dtype!r}: use auto, float32, float16 or bfloat16.")
        load_kwargs = {"dtype": torch_dtype}
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        self.model = AdaLlavaForConditionalGeneration.from_pretrained(pretrained, **load_kwargs)
        self.model.to(self._device).eval()
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.tokenizer = self.processor.tokenizer
        if self.latency is not None and self.model.scheduler is None:
            raise ValueError(
                f"latency={latency!r}, but {pretrained} has no latency scheduler (config.scheduler_type is None): "
                "pass latency=none."
            )
        self.pretrained = pretrained
        self.efficiency_records: dict[str, list[dict[str, float]]] = {}
        self._efficiency_in_generate: bool | None = None
        self._warned: set[str] = set()

    # ----------------------------------------------------------------------------------------------------------------
    # lmms-eval properties
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    # ----------------------------------------------------------------------------------------------------------------
    # Requests
    def generate_until(self, requests: list[Instance]) -> list[AdaLlavaResponse]:
        """Answer `generate_until` requests, `batch_size` at a time, grouped by identical generation kwargs.

        Each request's args are `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`. The prompt is the
        vicuna_v1 rendering of the context with the document's images first (unless the context places `<image>`
        itself); generation stops at EOS, `max_new_tokens` or any `until` string (the text is cut before it).
        `temperature=0` (the default) is greedy.
        """
        results: list[AdaLlavaResponse | None] = [None] * len(requests)
        prepared = []
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            self._attach(doc_to_visual)
            images = self._images(doc_to_visual, task, split, doc_id)
            kwargs, until = self._generation_kwargs(gen_kwargs)
            prepared.append((index, self._render(context, len(images)), images, kwargs, until, task))
        groups: dict[str, list] = {}
        for item in prepared:
            groups.setdefault(json.dumps([item[3], item[4]], sort_keys=True, default=str), []).append(item)
        for items in groups.values():
            items.sort(key=lambda item: -len(item[1]))  # similar lengths together: less padding
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                for (index, *_rest, task), response in zip(chunk, self._generate(chunk)):
                    results[index] = response
                    self.efficiency_records.setdefault(task, []).append(response.efficiency)
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[AdaLlavaLoglikelihood]:
        """Score each request's continuation given its context and images, `batch_size` requests per forward.

        Args of a request: `(context, continuation, doc_to_visual, doc_id, task, split)`; `continuation` may be the
        task's `doc_to_target`. The sequence is, as in training, `<vicuna_v1 prompt of the context> <latency>
        <continuation tokens>`: the `<latency>` token sits between the final `ASSISTANT:` and the answer, and the
        continuation is tokenised on its own (one leading space dropped: the template's separator) like the
        training answers. Returns `(value, is_greedy)` per request, `value` as `loglikelihood_value` says and
        `is_greedy` whether every continuation token is the argmax.
        """
        prepared = []
        for index, request in enumerate(requests):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            self._attach(doc_to_visual)
            if not isinstance(continuation, str):  # the task's doc_to_target
                continuation = continuation(self.task_dict[task][split][doc_id])
            images = self._images(doc_to_visual, task, split, doc_id)
            prepared.append((index, self._render(context, len(images)), images, str(continuation), task))
        results: list[AdaLlavaLoglikelihood | None] = [None] * len(requests)
        order = sorted(prepared, key=lambda item: -len(item[1]) - len(item[3]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for (index, *_rest, task), result in zip(chunk, self._score(chunk)):
                results[index] = result
                self.efficiency_records.setdefault(task, []).append(result.efficiency)
        return results  # type: ignore[return-value]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("ada_llava does not implement multi-round generation (nor did the original).")

    # ----------------------------------------------------------------------------------------------------------------
    # Helpers
    def _attach(self, doc_to_visual: Any) -> None:
        # The requests carry the task's bound `doc_to_visual`: the one way a model reaches its task in lmms-eval 0.7.
        if not self.efficiency_metrics:
            return
        task = getattr(doc_to_visual, "__self__", None)
        if task is not None and attach_efficiency_metrics(task):
            return
        self._warn_once(
            "attach",
            "ada_llava: cannot attach the efficiency metrics to this task (its doc_to_visual is not a bound method of "
            "an lmms-eval ConfigurableTask); they stay in `efficiency_records` (see merge_efficiency_metrics).",
        )

    def _images(self, doc_to_visual: Callable, task: str, split: str, doc_id: int) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        images = []
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise ValueError(
                    f"ada_llava takes images only; task {task!r} doc {doc_id} gave a {type(visual).__name__} "
                    f"({str(visual)[:80]!r})."
                )
            images.append(visual.convert("RGB"))
        return images

    def _render(self, context: str, num_images: int) -> str:
        """The vicuna_v1 prompt, through the processor's chat template (the one rendering of the project): images
        first, as LLaVA-1.5 and lmms-eval's LLaVA wrapper do, unless the context places `<image>` itself."""
        image_token = self.processor.image_token
        if num_images and image_token not in context:
            content: Any = [{"type": "image"}] * num_images + [{"type": "text", "text": context}]
        else:
            content = context
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=VICUNA_V1_CHAT_TEMPLATE, add_generation_prompt=True
        )

    def _generation_kwargs(self, gen_kwargs: dict | None) -> tuple[dict, list[str]]:
        gen_kwargs = dict(gen_kwargs or {})
        ignored = sorted(set(gen_kwargs) - set(_GEN_KWARGS))
        if ignored:
            self._warn_once(f"gen:{ignored}", f"ada_llava: ignoring generation kwargs {ignored}.")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = gen_kwargs.get("do_sample")
        do_sample = temperature > 0 if do_sample is None else bool(do_sample)
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            "num_beams": int(gen_kwargs.get("num_beams") or 1),
            "do_sample": do_sample,
        }
        if do_sample:
            kwargs["temperature"] = temperature if temperature > 0 else 1.0
            for name in ("top_p", "top_k"):
                if gen_kwargs.get(name) is not None:
                    kwargs[name] = gen_kwargs[name]
        return kwargs, [u for u in until if u]

    def _budget(self, rows: int) -> dict[str, Any]:
        if self.latency is None:
            return {}
        if isinstance(self.latency, str):  # a time target: `generate` picks each row's budget
            return {"latency": self.latency}
        return {"latency": torch.full((rows,), self.latency, dtype=torch.float32, device=self.device)}

    def _generate(self, chunk: list) -> list[AdaLlavaResponse]:
        prompts = [item[1] for item in chunk]
        images = [image for item in chunk for image in item[2]]
        kwargs, until = chunk[0][3], chunk[0][4]
        self.tokenizer.padding_side = "left"  # the <latency> token must follow each prompt
        inputs = self.processor(images=images or None, text=prompts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        counter = _StopAndCount(self.tokenizer, until)
        extra: dict[str, Any] = {}
        if self._efficiency_in_generate is not False:
            extra["hardware"] = self.hardware
        with torch.inference_mode():
            output = self._call_generate(
                dict(**inputs, **self._budget(len(prompts)), **self.reduction_flags, **kwargs, **extra),
                counter,
            )
        new_tokens = output.sequences[:, output.sequences.shape[1] - counter.steps :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        reports = getattr(output, "efficiency", None)
        responses = []
        for row, text in enumerate(texts):
            for stop in until:
                text = text.split(stop)[0]
            efficiency = self._original_metrics(reports[row]) if reports else None
            responses.append(AdaLlavaResponse(text, efficiency))
        return responses

    def _call_generate(self, kwargs: dict, counter: _StopAndCount):
        kwargs = {**kwargs, "return_dict_in_generate": True, "stopping_criteria": StoppingCriteriaList([counter])}
        if self._efficiency_in_generate is None and "hardware" in kwargs:
            # Until `generate` reports efficiency (ada_hf.cost_model), it refuses the unknown `hardware` kwarg.
            try:
                output = self.model.generate(**kwargs)
            except ValueError as error:  # transformers: "The following `model_kwargs` are not used ...: ['hardware']"
                if "model_kwargs" not in str(error) or "'hardware'" not in str(error):
                    raise  # e.g. an unknown hardware name
                self._efficiency_in_generate = False
                self._warn_once("no-cost-model", "ada_llava: this ada_hf has no efficiency report; no metrics.")
                counter.steps = 0
                kwargs.pop("hardware")
                return self.model.generate(**kwargs)
            self._efficiency_in_generate = True
            return output
        return self.model.generate(**kwargs)

    @staticmethod
    def _original_metrics(report: Any) -> dict[str, float]:
        metrics = report.original_metrics()
        return {name: float(metrics[name]) for name in EFFICIENCY_METRICS}

    def _score(self, chunk: list) -> list[AdaLlavaLoglikelihood]:
        if isinstance(self.latency, str):
            raise ValueError(
                f"latency={self.latency!r}: a time budget is chosen by `generate` for the tokens it will produce; "
                "loglikelihood requests take a share of compute in (0, 1]."
            )
        latency_id = self.model.config.latency_token_id if self.latency is not None else None
        num_image_tokens = None
        if any(item[2] for item in chunk):
            # `forward` needs the placeholder count the LLM receives after vision-side reduction (PruMerge refuses).
            num_image_tokens = self.model.image_tokens_per_image(**self.reduction_flags)
        rows, starts, pixel_values = [], [], []
        for _index, prompt, images, continuation, _task in chunk:
            encoded = self.processor(
                images=images or None, text=prompt, num_image_tokens=num_image_tokens, return_tensors="pt"
            )
            context_ids = encoded["input_ids"][0].tolist() + ([latency_id] if latency_id is not None else [])
            cont = continuation[1:] if continuation.startswith(" ") else continuation
            cont_ids = self.tokenizer(cont, add_special_tokens=False)["input_ids"]
            if not cont_ids:
                raise ValueError(f"loglikelihood: the continuation {continuation!r} has no tokens.")
            rows.append(context_ids + cont_ids)
            starts.append(len(context_ids))
            if "pixel_values" in encoded:
                pixel_values.append(encoded["pixel_values"])
        # Right padding: each row keeps the positions it has alone, and causal attention never sees the pads.
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        inputs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values).to(self.device, self.model.dtype)
        with torch.inference_mode():
            output = self.model(**inputs, **self._budget(len(rows)), **self.reduction_flags)
        log_probs = torch.log_softmax(output.logits.float(), dim=-1)
        plan = getattr(output, "execution_plan", None)
        results = []
        for i, (row, start) in enumerate(zip(rows, starts)):
            targets = torch.tensor(row[start:], device=log_probs.device)
            predicted = log_probs[i, start - 1 : len(row) - 1]
            token_log_probs = predicted.gather(-1, targets[:, None])[:, 0]
            total = float(token_log_probs.sum())
            value = total if self.loglikelihood_value == "logprob" else -total / len(targets)
            is_greedy = bool((predicted.argmax(-1) == targets).all())
            results.append(AdaLlavaLoglikelihood(value, is_greedy, self._prefill_metrics(plan, i, len(row))))
        return results

    def _prefill_metrics(self, plan: torch.Tensor | None, row: int, tokens: int) -> dict[str, float] | None:
        """The six metrics of one forward over `tokens` tokens (the `<latency>` token once): a prefill, with no
        decoding step, so `flops` = `avg_flops` = `prefill_flops` and `memory_consumption` = the prefill's."""
        text = self.model.config.text_config
        if plan is not None:
            heads = plan.heads_executed()[row].tolist()
        else:
            heads = [text.num_attention_heads] * text.num_hidden_layers
        metrics = _original_metrics(self.model.config, heads, tokens, 1, self.hardware)
        return {name: float(metrics[name]) for name in EFFICIENCY_METRICS}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)


__all__ = [
    "ALIASES",
    "EFFICIENCY_METRICS",
    "MODEL_ID",
    "AdaLlava",
    "AdaLlavaLoglikelihood",
    "AdaLlavaResponse",
    "EfficiencyFilter",
    "attach_efficiency_metrics",
    "merge_efficiency_metrics",
    "model_manifest",
]
