"""A local web app to ask about an image under a latency budget and see what ran (`ada-hf demo`).

Tooling, not model code: this module is never copied next to a checkpoint. It needs the `demo` extra
(`pip install 'ada-hf[demo]'`: Gradio).

    from ada_hf.web_demo import launch
    launch()                        # the embedded demo models (L and H), on http://127.0.0.1:7860
    launch("path/to/ada-checkpoint")  # any ada repo or folder (a folder with L/ and H/ sub-folders gives both)

The page: upload an image (or pick a bundled example), type a question, move the latency slider, pick the L/H model
and a token-reduction preset where the model supports it; the answer streams in, and beside it the executed plan
drawn per layer (heads and MLP groups run), the prefill and decode times measured on this machine, tokens per second,
FLOPs, the image tokens entering the LLM and, with iLLaVA token merging, the patches that survive. "Compare budgets"
runs the same question at several budgets side by side.

Everything the page does goes through the plain functions below ([`load_image`], [`validate_request`],
[`stream_request`], [`run_request`], [`compare_budgets`], [`plan_html`], [`metrics_html`], [`compare_html`]); the
Gradio layer ([`build_app`]) only wires them to components, so they are unit-tested without a browser.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

DEFAULT_BUDGET = 0.6
DEFAULT_COMPARE_BUDGETS = "1.0, 0.85, 0.7, 0.5"
DEFAULT_MAX_NEW_TOKENS = 24
MAX_NEW_TOKENS_LIMIT = 256
DEFAULT_TIMEOUT_S = 300.0  # a request that has not finished by then is stopped and reported, never left hanging
CANCEL_WAIT_S = 60.0  # how long a stopped request may take to reach its next token (a prefill at worst)
MAX_QUESTION_CHARS = 2000
MAX_COMPARE_BUDGETS = 8
NO_REDUCTION = "none"
DEFAULT_QUESTION = "What is in the picture?"

# Small pictures (the trained tiny demo model sees 32 px) are shown enlarged, with sharp pixels.
PAGE_CSS = "#image img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }"

# Colours of the plan drawing (prefix layers always run; the scheduler picks among the others).
PREFIX_COLOUR = "#5b7fd6"
RUN_COLOUR = "#2e9d4f"
MLP_COLOUR = "#e0892b"
SKIPPED_COLOUR = "#e4e4e4"


class DemoInputError(ValueError):
    """A request the app refuses, with a message meant for the person using it."""


class DemoModelError(ValueError):
    """No model could be loaded from what was given."""


# ---------------------------------------------------------------------------------------------------------------------
# Models
@dataclass
class DemoModel:
    """A model, its processor and the label the page shows for it ("L", "H", ...)."""

    label: str
    model: Any
    processor: Any
    source: str = ""

    @property
    def has_scheduler(self) -> bool:
        return getattr(self.model, "scheduler", None) is not None


def default_models(random_weights: bool = False) -> dict[str, DemoModel]:
    """The models `ada-hf demo` serves when no model is given: the trained tiny demo models shipped in
    `ada_hf/demo_model` (variants L and H), or with `random_weights` the 7B-shaped random-weight ones."""
    from .demo import build_demo, load_trained_demo

    models = {}
    for variant in ("L", "H"):
        if random_weights:
            model, processor = build_demo(variant)
            source = f"ada_hf.demo.build_demo({variant!r})"
        else:
            model, processor = load_trained_demo(variant)
            source = f"ada_hf.demo.load_trained_demo({variant!r})"
        models[variant] = DemoModel(variant, model, processor, source)
    return models


def _load_one(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # float32 on CPU: the budget quantisation and the CPU kernels expect it (checkpoints may store float16).
    dtype = "auto" if torch.cuda.is_available() else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype=dtype)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), processor


def load_models(source: str | os.PathLike | None = None) -> dict[str, DemoModel]:
    """The models to serve: [`default_models`] when `source` is None; else an ada checkpoint (a folder or a Hub id
    in the local cache), or a folder holding several in sub-folders (e.g. `L/` and `H/`), each labelled by its
    sub-folder name.

    Raises:
        `DemoModelError`: nothing loadable was found, with what was looked for.
    """
    if source is None:
        return default_models()
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir() and not (path / "config.json").is_file():
        found = [p for p in path.iterdir() if p.is_dir() and (p / "config.json").is_file()]
        # L, then H, then the others by name: the page offers the first one by default.
        subfolders = sorted(found, key=lambda p: ({"L": 0, "H": 1}.get(p.name, 2), p.name))
        if not subfolders:
            raise DemoModelError(
                f"No model found in {path}: it holds no config.json, nor sub-folders with one (e.g. L/ and H/)."
            )
        targets = [(p.name, str(p)) for p in subfolders]
    elif path.exists() and not path.is_dir():
        raise DemoModelError(f"No model found at {path}: give a checkpoint folder (with config.json) or a Hub id.")
    elif not path.exists() and (path.is_absolute() or str(source).startswith((".", "~"))):
        raise DemoModelError(f"No model found at {path}: there is no such folder.")
    else:
        targets = [(None, str(source) if not path.is_dir() else str(path))]
    models: dict[str, DemoModel] = {}
    for name, target in targets:
        try:
            model, processor = _load_one(target)
        except (OSError, ValueError, KeyError) as error:
            raise DemoModelError(
                f"No model found at {target!r}: {str(error).rstrip('.')}. Give an ada checkpoint folder (with "
                "config.json and the processor files) or a Hub id already in the local cache."
            ) from error
        label = name or getattr(model.config, "scheduler_type", None) or Path(target).name
        label = str(label)
        while label in models:  # two checkpoints of the same variant: keep both, apart
            label += "'"
        models[label] = DemoModel(label, model, processor, target)
    return models


def supported_reductions(model) -> dict[str, str | None]:
    """Every token-reduction preset, mapped to None where `model` supports it, else to why not (the model's own
    validation message: a layer it does not have, a stride that does not divide its image tokens, ...)."""
    from .token_reduction import TOKEN_REDUCTION_PRESETS, expand_preset, illava_llm_settings, llavolta_settings

    verdicts: dict[str, str | None] = {}
    for name in TOKEN_REDUCTION_PRESETS:
        flags = expand_preset(name, {})
        try:
            model._pre_llm_reductions(flags)  # iLLaVA vision merging, LLaVolta pooling, PruMerge: validated
            illava_llm_settings(model.config, flags)
            llavolta_settings(model.config, flags)
            verdicts[name] = None
        except ValueError as error:
            verdicts[name] = str(error)
    return verdicts


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
def load_image(value: Any) -> Image.Image:
    """An RGB PIL image from what the page sends (a file path, a PIL image or a numpy array).

    Raises:
        `DemoInputError`: no image, or one that cannot be decoded.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoInputError("Please upload an image (or pick one of the examples).")
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (str, os.PathLike)):
            with Image.open(value) as opened:
                opened.load()  # decode now: a truncated or corrupt file fails here, not inside the model
                image = opened.copy()
        else:
            import numpy as np

            image = Image.fromarray(np.asarray(value))
        image = image.convert("RGB")
    except (OSError, ValueError, TypeError, SyntaxError, Image.DecompressionBombError) as error:
        name = os.path.basename(str(value)) if isinstance(value, (str, os.PathLike)) else type(value).__name__
        detail = str(error).replace(str(value), name)  # the upload's temporary path says nothing to the person
        raise DemoInputError(f"The image {name!r} could not be decoded ({detail}). Try a PNG or JPEG file.") from error
    if min(image.size) < 1:
        raise DemoInputError(f"The image is empty ({image.size[0]}x{image.size[1]} pixels).")
    return image


def parse_budgets(text: str) -> list[float]:
    """`"1.0, 0.75 0.5"` -> `[1.0, 0.75, 0.5]`; each in (0, 1], at most `MAX_COMPARE_BUDGETS` of them.

    Raises:
        `DemoInputError`: an entry that is not a number in (0, 1], or none, or too many.
    """
    parts = [p for p in str(text or "").replace(",", " ").split() if p]
    if not parts:
        raise DemoInputError("Give the budgets to compare, e.g. '1.0, 0.75, 0.5'.")
    if len(parts) > MAX_COMPARE_BUDGETS:
        raise DemoInputError(f"At most {MAX_COMPARE_BUDGETS} budgets at a time (got {len(parts)}).")
    budgets = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise DemoInputError(f"Budget {part!r} is not a number: give shares of compute in (0, 1].") from None
        budgets.append(check_budget(value))
    return budgets


def check_budget(budget: Any) -> float:
    """`budget` as a float in (0, 1], else `DemoInputError` saying what a budget is."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise DemoInputError(f"Budget {budget!r} is not a number: give a share of compute in (0, 1].") from None
    if not 0.0 < value <= 1.0:
        raise DemoInputError(
            f"Budget {value:g} is outside (0, 1]: a budget is the share of the model's compute to run (1.0 runs it "
            "whole)."
        )
    return value


@dataclass
class Request:
    """A validated request."""

    entry: DemoModel
    image: Image.Image
    question: str
    budget: float
    token_reduction: str | None
    max_new_tokens: int
    notes: list[str] = field(default_factory=list)  # what the page should say besides the answer


def min_budget(model) -> float | None:
    """The smallest share of compute `model` runs, whatever the budget (its prefix layers); None without a
    scheduler."""
    if getattr(model, "scheduler", None) is None:
        return None
    return float(model.budget_table()[0]["latency_effective"])


def validate_request(
    models: Mapping[str, DemoModel],
    image: Any,
    question: str | None,
    budget: Any,
    variant: str | None = None,
    token_reduction: str | None = None,
    max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
) -> Request:
    """Check a request before any compute, with a clear message for each way it can be wrong.

    A budget below what the model can run (its prefix layers always run) is not an error: the request runs at the
    model's smallest budget and `Request.notes` says so. Without a scheduler the budget is ignored, with a note.

    Raises:
        `DemoInputError`: no model / unknown variant, no or undecodable image, empty or too long question, a budget
        outside (0, 1], a token-reduction preset the model does not support, a bad `max_new_tokens`.
    """
    if not models:
        raise DemoInputError("No model is loaded: start the app with a model (`ada-hf demo PATH`).")
    if variant is None or variant == "":
        variant = next(iter(models))
    if variant not in models:
        raise DemoInputError(f"Model {variant!r} is not loaded: pick one of {', '.join(models)}.")
    entry = models[variant]
    question = (question or "").strip()
    if not question:
        raise DemoInputError("Please type a question about the image.")
    if len(question) > MAX_QUESTION_CHARS:
        raise DemoInputError(f"The question is {len(question)} characters long: keep it under {MAX_QUESTION_CHARS}.")
    value = check_budget(budget)
    try:
        tokens = int(max_new_tokens)
    except (TypeError, ValueError):
        raise DemoInputError(f"max new tokens {max_new_tokens!r} is not a whole number.") from None
    if not 1 <= tokens <= MAX_NEW_TOKENS_LIMIT:
        raise DemoInputError(f"max new tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {tokens}.")
    reduction = None if token_reduction in (None, "", NO_REDUCTION) else str(token_reduction)
    if reduction is not None:
        verdicts = supported_reductions(entry.model)
        if reduction not in verdicts:
            raise DemoInputError(f"Unknown token reduction {reduction!r}: use one of {', '.join(verdicts)}.")
        if verdicts[reduction] is not None:
            raise DemoInputError(f"Model {variant} cannot run {reduction}: {verdicts[reduction]}")
    notes = []
    smallest = min_budget(entry.model)
    if smallest is None:
        notes.append(f"Model {variant} has no latency scheduler: the budget is ignored and the whole model runs.")
    elif value < smallest:
        prefix = getattr(entry.model.config, "num_prefix_layers", None)
        notes.append(
            f"Budget {value:.2f} is below what model {variant} can run: its {prefix} prefix layers always run, so "
            f"its smallest budget is {smallest:.2f}; the request ran at {smallest:.2f}."
        )
    return Request(entry, load_image(image), question, value, reduction, tokens, notes)


# ---------------------------------------------------------------------------------------------------------------------
# Running a request
@dataclass
class DemoResult:
    """What one request ran and cost."""

    variant: str
    question: str
    answer: str
    budget: float
    latency_effective: float
    executed_units: int | None
    total_units: int | None
    heads: list[int]  # heads run per decoder layer, -1 where the layer was skipped
    mlp_groups: list[int]  # MLP groups run per decoder layer, -1 where skipped
    num_heads: int
    mlp_groups_total: int
    num_prefix_layers: int
    prefill_seconds: float  # time to the first token: vision tower, projector, scheduler and the LLM's prefill
    decode_seconds: float  # the tokens after the first
    generated_tokens: int
    efficiency: dict
    token_reduction: str | None = None
    kept_patches: Image.Image | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float | None:
        """Generated tokens per second of the whole request (prefill included): steady even for short answers."""
        seconds = self.prefill_seconds + self.decode_seconds
        return self.generated_tokens / seconds if self.generated_tokens and seconds > 0 else None

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first per second of decoding (None below 2 tokens)."""
        if self.generated_tokens < 2 or self.decode_seconds <= 0:
            return None
        return (self.generated_tokens - 1) / self.decode_seconds

    @property
    def layers_run(self) -> int:
        return sum(1 for h in self.heads if h != -1)

    def metrics(self) -> dict[str, Any]:
        """The figures the page shows, by name (JSON-ready)."""
        eff = self.efficiency
        return {
            "model": self.variant,
            "budget": self.budget,
            "budget_effective": self.latency_effective,
            "layers_run": f"{self.layers_run}/{len(self.heads)}",
            "heads_run": f"{sum(max(h, 0) for h in self.heads)}/{self.num_heads * len(self.heads)}",
            "mlp_groups_run": f"{sum(max(g, 0) for g in self.mlp_groups)}/{self.mlp_groups_total * len(self.heads)}",
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "tokens_per_second": self.tokens_per_second,
            "decode_tokens_per_second": self.decode_tokens_per_second,
            "generated_tokens": self.generated_tokens,
            "total_gflops": eff.get("total_flops", 0) / 1e9,
            "prefill_gflops": eff.get("prefill_flops", 0) / 1e9,
            "image_tokens": eff.get("image_tokens"),
            "llm_prompt_tokens": eff.get("llm_prompt_tokens"),
            "token_reduction": self.token_reduction or NO_REDUCTION,
        }


def _prompt(processor, question: str) -> str:
    from .visualize import _prompt as visualize_prompt  # the one prompt builder of the tooling (chat template)

    return visualize_prompt(processor, question)


def _mlp_groups_total(model) -> int:
    """MLP groups of a layer: the plan slices the MLP into as many groups as the layer has heads."""
    return model.config.get_text_config().num_attention_heads


class _TimedStreamer:
    """A transformers streamer that queues decoded text and stamps the time of every generated token.

    Written against `BaseStreamer`'s two methods (put, end) with `TextStreamer`'s word-boundary decoding, so the
    queue wait has the request's own deadline (TextIteratorStreamer's timeout is fixed per wait).
    """

    def __init__(self, tokenizer):
        from transformers import TextStreamer

        class _Inner(TextStreamer):
            def on_finalized_text(inner, text: str, stream_end: bool = False) -> None:
                if text:
                    self.queue.put(text)
                if stream_end:
                    self.queue.put(None)

        self.queue: queue.Queue = queue.Queue()
        self.token_times: list[float] = []
        self._inner = _Inner(tokenizer, skip_prompt=True, skip_special_tokens=True)

    def put(self, value) -> None:
        if not self._inner.next_tokens_are_prompt:  # the first put is the prompt
            self.token_times.append(time.perf_counter())
        self._inner.put(value)

    def end(self) -> None:
        self._inner.end()


class _Cancel:
    """A stopping criterion that ends generation at the next token once `event` is set (timeout, closed page)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def kept_patches_image(entry: DemoModel, image: Image.Image, question: str, budget: float, preset: str):
    """The patches that survive iLLaVA merging for this request, drawn by `ada_hf.visualize` (one extra forward),
    as a PIL image; `(None, why)` for presets that drop no patch (LLaVolta pools windows)."""
    from .visualize import describe_settings, draw_token_merging, reduction_settings, token_merging_masks

    try:
        vision, llm = reduction_settings(entry.model, token_reduction=preset)
    except ValueError as error:
        return None, str(error)
    latency = budget if entry.has_scheduler else None
    masks = token_merging_masks(entry.model, entry.processor, image, question, token_reduction=preset, latency=latency)
    size = entry.model.config.vision_config.image_size
    with tempfile.TemporaryDirectory() as folder:
        path = draw_token_merging(image, masks, Path(folder) / "kept.png", size, caption=describe_settings(vision, llm))
        with Image.open(path) as drawn:
            return drawn.copy(), None


def stream_request(
    request: Request, timeout_s: float = DEFAULT_TIMEOUT_S, cancel: threading.Event | None = None
) -> Iterator[tuple[str, DemoResult | None]]:
    """Generate the answer to `request`, yielding `(answer so far, None)` as text arrives, then
    `(answer, DemoResult)` once.

    Generation runs in a thread with a streamer; prefill time is the time to the first generated token, decode time
    the rest. The request stops (and raises `TimeoutError`) after `timeout_s` seconds, and stops at the next token
    when `cancel` is set or the consumer closes this generator (a page that went away): nothing is left running.

    Raises:
        `DemoInputError`: the model refused the request (its `ValueError`, e.g. a budget it cannot honour).
        `TimeoutError`: the request ran past `timeout_s`.
    """
    from transformers import StoppingCriteriaList

    entry = request.entry
    model, processor = entry.model, entry.processor
    inputs = processor(images=request.image, text=_prompt(processor, request.question), return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    tokenizer = getattr(processor, "tokenizer", processor)
    streamer = _TimedStreamer(tokenizer)
    stop = cancel if cancel is not None else threading.Event()
    kwargs: dict[str, Any] = dict(
        max_new_tokens=request.max_new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([_Cancel(stop)]),
    )
    if entry.has_scheduler:
        kwargs["latency"] = request.budget
    if request.token_reduction is not None:
        kwargs["token_reduction"] = request.token_reduction
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            with torch.inference_mode():
                box["out"] = model.generate(**inputs, **kwargs)
        except BaseException as error:  # handed to the consumer: the thread must never die silently
            box["error"] = error
            streamer.queue.put(None)

    start = time.perf_counter()
    deadline = start + timeout_s
    thread = threading.Thread(target=work, name="ada-hf-web-demo-generate", daemon=True)
    thread.start()
    answer = ""
    try:
        while True:
            remaining = deadline - time.perf_counter()
            try:
                chunk = streamer.queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                stop.set()
                raise TimeoutError(
                    f"The request did not finish within {timeout_s:g} s and was stopped: try a smaller budget or "
                    "fewer new tokens."
                ) from None
            if chunk is None:
                break
            answer += chunk
            yield answer, None
        thread.join(timeout=max(deadline - time.perf_counter(), 1.0))
    finally:
        if thread.is_alive():  # closed early (page gone, timeout): stop generating at the next token
            stop.set()
            # and wait for it, so the caller's lock is held until the model is free for the next request
            thread.join(timeout=CANCEL_WAIT_S)
    end = time.perf_counter()
    if "error" in box:
        error = box["error"]
        if isinstance(error, ValueError):
            raise DemoInputError(f"The model refused the request: {error}") from error
        raise error
    if "out" not in box:
        raise TimeoutError(f"The request did not finish within {timeout_s:g} s and was stopped.")
    out = box["out"]
    times = streamer.token_times
    first = times[0] if times else end
    text = model.config.get_text_config()
    layers = text.num_hidden_layers
    plan = getattr(out, "execution_plan", None)
    if plan is not None:
        heads = [int(h) for h in plan[0].tolist()]
        groups = [int(g) for g in out.mlp_groups_executed[0].tolist()]
        effective = float(out.latency_effective[0])
        executed = int(out.executed_units[0])
    else:  # no scheduler (or no budget): the plain forward, every layer whole
        heads = [text.num_attention_heads] * layers
        groups = [_mlp_groups_total(model)] * layers
        effective, executed = 1.0, None
    efficiency = out.efficiency[0].to_dict() if getattr(out, "efficiency", None) else {}
    total_units = efficiency.get("total_units")
    result = DemoResult(
        variant=entry.label,
        question=request.question,
        answer=answer.strip(),
        budget=request.budget,
        latency_effective=effective,
        executed_units=executed,
        total_units=total_units,
        heads=heads,
        mlp_groups=groups,
        num_heads=text.num_attention_heads,
        mlp_groups_total=_mlp_groups_total(model),
        num_prefix_layers=int(getattr(model.config, "num_prefix_layers", 0) or 0) if entry.has_scheduler else layers,
        prefill_seconds=first - start,
        decode_seconds=(times[-1] - first) if times else 0.0,
        generated_tokens=len(times),
        efficiency=efficiency,
        token_reduction=request.token_reduction,
        notes=list(request.notes),
    )
    if request.token_reduction is not None:
        picture, why = kept_patches_image(
            entry, request.image, request.question, request.budget, request.token_reduction
        )
        result.kept_patches = picture
        if why is not None:
            result.notes.append(f"No kept-patch picture for {request.token_reduction}: {why}")
    yield result.answer, result


def run_request(request: Request, timeout_s: float = DEFAULT_TIMEOUT_S) -> DemoResult:
    """[`stream_request`] to the end: the finished result."""
    result = None
    for _, result in stream_request(request, timeout_s):
        pass
    assert result is not None  # stream_request always ends with a result or raises
    return result


def compare_budgets(
    models: Mapping[str, DemoModel],
    image: Any,
    question: str | None,
    budgets: str | Sequence[float],
    variant: str | None = None,
    token_reduction: str | None = None,
    max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[DemoResult]:
    """The same question at each budget (in the order given), one after the other on the same model.

    `timeout_s` bounds the whole comparison. Raises what [`validate_request`] and [`stream_request`] raise.
    """
    values = parse_budgets(budgets) if isinstance(budgets, str) else [check_budget(b) for b in budgets]
    if not values:
        raise DemoInputError("Give the budgets to compare, e.g. '1.0, 0.75, 0.5'.")
    requests = [validate_request(models, image, question, b, variant, token_reduction, max_new_tokens) for b in values]
    deadline = time.perf_counter() + timeout_s
    results = []
    for request in requests:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError(f"Comparing {len(values)} budgets took longer than {timeout_s:g} s and was stopped.")
        results.append(run_request(request, remaining))
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Drawing (HTML, so the page needs no plotting library and a browser test can read it)
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def plan_html(result: DemoResult, compact: bool = False) -> str:
    """The executed plan drawn per decoder layer: one column per layer, a bar for the heads run (blue: a prefix
    layer, always run; green: a layer the scheduler chose) above a bar for the MLP groups run; skipped layers grey.

    Every layer's column carries `data-layer`, `data-heads` and `data-mlp` (-1 skipped) and a tooltip."""
    layers = len(result.heads)
    bar_w = 8 if compact else max(6, min(18, 560 // max(layers, 1) - 2))
    heads_h, mlp_h = (36, 16) if compact else (72, 28)
    columns = []
    for i, (h, g) in enumerate(zip(result.heads, result.mlp_groups)):
        skipped = h == -1
        prefix = i < result.num_prefix_layers
        colour = PREFIX_COLOUR if prefix else RUN_COLOUR
        head_fill = 0 if skipped else round(heads_h * h / max(result.num_heads, 1))
        mlp_fill = 0 if g == -1 else round(mlp_h * g / max(result.mlp_groups_total, 1))
        state = "skipped" if skipped else ("prefix" if prefix else "run")
        tip = (
            f"layer {i}: skipped"
            if skipped
            else f"layer {i}{' (prefix)' if prefix else ''}: {h}/{result.num_heads} heads, "
            f"{max(g, 0)}/{result.mlp_groups_total} MLP groups"
        )
        label = "" if compact or (layers > 20 and i % 4) else str(i)
        columns.append(
            f'<div class="ada-layer" data-layer="{i}" data-state="{state}" data-heads="{h}" data-mlp="{g}" '
            f'title="{html.escape(tip)}" style="display:flex;flex-direction:column;align-items:center;gap:2px">'
            f'<div style="width:{bar_w}px;height:{heads_h}px;background:{SKIPPED_COLOUR};display:flex;'
            f'align-items:flex-end"><div style="width:100%;height:{head_fill}px;background:{colour}"></div></div>'
            f'<div style="width:{bar_w}px;height:{mlp_h}px;background:{SKIPPED_COLOUR};display:flex;'
            f'align-items:flex-start"><div style="width:100%;height:{mlp_fill}px;background:{MLP_COLOUR}"></div></div>'
            f'<div style="font-size:9px;height:11px;line-height:11px;color:#555">{label}</div></div>'
        )
    metrics = result.metrics()
    summary = (
        f"{metrics['layers_run']} layers, {metrics['heads_run']} heads, {metrics['mlp_groups_run']} MLP groups run "
        f"(budget {result.budget:.2f}, effective {result.latency_effective:.3f})"
    )
    legend = (
        ""
        if compact
        else (
            f'<div style="font-size:11px;color:#444;margin-top:4px">'
            f'<span style="color:{PREFIX_COLOUR}">■</span> prefix layer (always runs) · '
            f'<span style="color:{RUN_COLOUR}">■</span> heads run in a layer the scheduler chose · '
            f'<span style="color:{MLP_COLOUR}">■</span> MLP groups run · '
            f'<span style="color:#bbb">■</span> skipped. Upper bars: heads; lower bars: MLP.</div>'
        )
    )
    return (
        f'<div class="ada-plan" data-layers-run="{result.layers_run}" data-layers="{layers}">'
        f'<div class="ada-plan-summary" style="font-size:12px;margin-bottom:4px">{html.escape(summary)}</div>'
        f'<div style="display:flex;gap:2px;overflow-x:auto;padding-bottom:2px">{"".join(columns)}</div>{legend}</div>'
    )


METRIC_LABELS = {
    "model": "model",
    "budget": "budget asked",
    "budget_effective": "budget run (effective)",
    "layers_run": "layers run",
    "heads_run": "heads run",
    "mlp_groups_run": "MLP groups run",
    "prefill_seconds": "prefill time, s (to the first token)",
    "decode_seconds": "decode time, s (the other tokens)",
    "tokens_per_second": "tokens / s (whole request)",
    "decode_tokens_per_second": "tokens / s (decoding only)",
    "generated_tokens": "generated tokens",
    "total_gflops": "FLOPs, G (whole request, modelled)",
    "prefill_gflops": "prefill FLOPs, G",
    "image_tokens": "image tokens entering the LLM",
    "llm_prompt_tokens": "prompt tokens entering the LLM",
    "token_reduction": "token reduction",
}


def metrics_html(result: DemoResult) -> str:
    """The request's figures as a two-column table (`data-metric` on each row)."""
    rows = []
    for key, value in result.metrics().items():
        digits = 2 if key.endswith("gflops") or key.endswith("tokens_per_second") else 3
        rows.append(
            f'<tr data-metric="{key}"><td style="padding:1px 8px 1px 0;color:#444">{METRIC_LABELS[key]}</td>'
            f'<td style="padding:1px 0;font-family:monospace">{html.escape(_fmt(value, digits))}</td></tr>'
        )
    return f'<table class="ada-metrics" style="font-size:13px;border-collapse:collapse">{"".join(rows)}</table>'


def compare_html(results: Sequence[DemoResult]) -> str:
    """Budgets side by side: per budget a card with its plan, answer and key figures, then one summary table."""
    cards = []
    for r in results:
        m = r.metrics()
        cards.append(
            f'<div class="ada-compare-card" data-budget="{r.budget}" style="border:1px solid #ddd;border-radius:6px;'
            f'padding:6px;min-width:150px;flex:1">'
            f'<div style="font-weight:600">budget {r.budget:.2f} → {r.latency_effective:.3f}</div>'
            f"{plan_html(r, compact=True)}"
            f'<div style="font-size:12px;margin-top:4px"><b>answer:</b> {html.escape(r.answer) or "(empty)"}</div>'
            f'<div style="font-size:12px;color:#333">prefill {_fmt(m["prefill_seconds"], 2)} s · decode '
            f"{_fmt(m['decode_seconds'], 2)} s · {_fmt(m['tokens_per_second'], 1)} tok/s · "
            f"{_fmt(m['total_gflops'], 2)} GFLOPs</div></div>"
        )
    header = ["budget", "effective", "layers", "heads", "prefill s", "decode s", "tok/s", "GFLOPs", "image tokens"]
    rows = []
    for r in results:
        m = r.metrics()
        cells = [
            f"{r.budget:.2f}",
            f"{r.latency_effective:.3f}",
            m["layers_run"],
            m["heads_run"],
            _fmt(m["prefill_seconds"], 2),
            _fmt(m["decode_seconds"], 2),
            _fmt(m["tokens_per_second"], 1),
            _fmt(m["total_gflops"], 2),
            _fmt(m["image_tokens"]),
        ]
        row = "".join(f'<td style="padding:1px 8px">{html.escape(str(c))}</td>' for c in cells)
        rows.append(f"<tr>{row}</tr>")
    table = (
        '<table class="ada-compare-table" style="font-size:12px;margin-top:8px;border-collapse:collapse"><tr>'
        + "".join(f'<th style="padding:1px 8px;text-align:left">{h}</th>' for h in header)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    cards_row = f'<div style="display:flex;gap:8px;flex-wrap:wrap">{"".join(cards)}</div>'
    return f'<div class="ada-compare">{cards_row}{table}</div>'


def notes_markdown(notes: Sequence[str], error: str | None = None) -> str:
    """The status line: an error (bold, red mark) or the notes, or nothing."""
    lines = [f"**⚠ {error}**"] if error else []
    lines += [f"ℹ {n}" for n in notes]
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Examples
def example_images(folder: str | os.PathLike) -> list[str]:
    """Write the bundled example pictures (drawn with PIL, nothing downloaded) into `folder`; their paths."""
    from .demo import demo_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    house = folder / "house.png"
    demo_image().save(house)
    shapes = Image.new("RGB", (336, 336), (245, 245, 240))
    draw = ImageDraw.Draw(shapes)
    draw.ellipse([30, 40, 130, 140], fill=(220, 40, 40))
    draw.rectangle([190, 50, 300, 160], fill=(40, 90, 220))
    draw.polygon([(80, 300), (150, 190), (220, 300)], fill=(40, 170, 70))
    draw.ellipse([240, 220, 310, 290], fill=(240, 200, 30))
    shapes_path = folder / "shapes.png"
    shapes.save(shapes_path)
    return [str(house), str(shapes_path)]


# ---------------------------------------------------------------------------------------------------------------------
# What the page shows, as plain values (the Gradio handlers only forward them)
@dataclass
class PageUpdate:
    """One update of the page: the answer, the status line (markdown), the plan and metrics (HTML), the kept-patch
    picture (None: hidden) and, when the request failed, the error message (also shown as a toast)."""

    answer: str = ""
    status: str = ""
    plan: str = ""
    metrics: str = ""
    kept: Image.Image | None = None
    error: str | None = None


def answer_updates(
    models: Mapping[str, DemoModel],
    image: Any,
    question: str | None,
    budget: Any,
    variant: str | None = None,
    token_reduction: str | None = None,
    max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    lock: threading.Lock | None = None,
) -> Iterator[PageUpdate]:
    """The page's updates for one "Ask": "Running…", the answer as it streams, then the answer with its plan, metrics
    and kept patches. Never raises: a refused or failed request ends with one update carrying `error`.

    `lock` (held while generating) serialises requests that share the models."""
    try:
        request = validate_request(models, image, question, budget, variant, token_reduction, max_new_tokens)
    except DemoInputError as error:
        yield PageUpdate(status=notes_markdown([], str(error)), error=str(error))
        return
    running = notes_markdown(request.notes + ["Running…"])
    yield PageUpdate(status=running)
    try:
        with lock if lock is not None else contextlib.nullcontext():
            for answer, result in stream_request(request, timeout_s):
                if result is None:
                    yield PageUpdate(answer=answer, status=running)
                    continue
                seconds = result.prefill_seconds + result.decode_seconds
                done = f"Done: {result.generated_tokens} tokens in {seconds:.2f} s."
                yield PageUpdate(
                    answer=result.answer,
                    status=notes_markdown(result.notes + [done]),
                    plan=plan_html(result),
                    metrics=metrics_html(result),
                    kept=result.kept_patches,
                )
    except (DemoInputError, TimeoutError) as error:
        yield PageUpdate(status=notes_markdown(request.notes, str(error)), error=str(error))
    except Exception as error:  # never crash the page: say what happened
        message = f"The request failed: {type(error).__name__}: {error}"
        yield PageUpdate(status=notes_markdown(request.notes, message), error=message)


def compare_update(
    models: Mapping[str, DemoModel],
    image: Any,
    question: str | None,
    budgets: str | Sequence[float],
    variant: str | None = None,
    token_reduction: str | None = None,
    max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    lock: threading.Lock | None = None,
) -> PageUpdate:
    """The page's update for "Compare budgets": the side-by-side HTML in `plan` and the status line. Never raises."""
    try:
        with lock if lock is not None else contextlib.nullcontext():
            results = compare_budgets(
                models, image, question, budgets, variant, token_reduction, max_new_tokens, timeout_s
            )
    except (DemoInputError, TimeoutError) as error:
        return PageUpdate(status=notes_markdown([], str(error)), error=str(error))
    except Exception as error:  # never crash the page
        message = f"The comparison failed: {type(error).__name__}: {error}"
        return PageUpdate(status=notes_markdown([], message), error=message)
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    return PageUpdate(plan=compare_html(results), status=notes_markdown(notes + [f"Compared {len(results)} budgets."]))


# ---------------------------------------------------------------------------------------------------------------------
# The Gradio app
def _example_rows(examples, folder: Path) -> list[list[str]]:
    """`[path, question]` rows for gr.Examples: the bundled pictures by default; PIL images are saved in `folder`."""
    if examples is None:
        return [[path, DEFAULT_QUESTION] for path in example_images(folder)]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (picture, text) in enumerate(examples):
        if isinstance(picture, Image.Image):
            path = folder / f"example_{i}.png"
            picture.save(path)
            picture = str(path)
        rows.append([str(picture), text])
    return rows


def _tolerate_undecodable_uploads(image) -> None:
    """Make a gr.Image hand undecodable uploads to the handler: Gradio decodes uploads in `preprocess` and answers an
    undecodable one with a bare "Error"; this passes the file's path on instead, and `load_image` says what is wrong
    with it. Patched on the instance, not subclassed: Gradio writes a .pyi stub next to any module that subclasses a
    component."""
    decode = image.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except Exception:
            return getattr(payload, "path", None) or "undecodable upload"

    image.preprocess = preprocess


def _variant_title(entry: DemoModel) -> str:
    kind = getattr(entry.model.config, "scheduler_type", None)
    what = {"L": "whole layers", "H": "heads and MLP groups"}.get(kind, "no scheduler" if kind is None else kind)
    return f"{entry.label} ({what})"


def _reduction_choices(models: Mapping[str, DemoModel], variant: str | None) -> list[str]:
    if not variant or variant not in models:
        return [NO_REDUCTION]
    verdicts = supported_reductions(models[variant].model)
    return [NO_REDUCTION] + [name for name, why in verdicts.items() if why is None]


def build_app(
    models: Mapping[str, DemoModel],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    examples_dir: str | os.PathLike | None = None,
    title: str = "AdaLLaVA: answers under a latency budget",
    notice: str | None = None,
    examples: Sequence[tuple[Image.Image | str, str]] | None = None,
    question: str = DEFAULT_QUESTION,
):
    """The Gradio Blocks app over `models` (see the module docstring), with `question` in the question box at first.
    Queue: one request at a time over all events (they share the models), at most 16 waiting."""
    import gradio as gr

    labels = list(models)
    first = labels[0] if labels else None
    examples_dir = Path(examples_dir) if examples_dir is not None else Path(tempfile.mkdtemp(prefix="ada-hf-demo-"))
    examples = _example_rows(examples, examples_dir)
    lock = threading.Lock()  # the models are shared by every event: one request at a time

    def ask(image, question, budget, variant, reduction, max_new_tokens):
        for update in answer_updates(
            models, image, question, budget, variant, reduction, max_new_tokens, timeout_s, lock
        ):
            if update.error:
                gr.Warning(update.error)
            kept_update = gr.update(value=update.kept, visible=update.kept is not None)
            yield update.answer, update.status, update.plan, update.metrics, kept_update

    def compare(image, question, budgets, variant, reduction, max_new_tokens):
        update = compare_update(models, image, question, budgets, variant, reduction, max_new_tokens, timeout_s, lock)
        if update.error:
            gr.Warning(update.error)
        return update.plan, update.status

    def on_variant(variant, current):
        # Offer only what this model supports; keep the preset picked if it still applies.
        choices = _reduction_choices(models, variant)
        return gr.update(choices=choices, value=current if current in choices else NO_REDUCTION)

    # analytics_enabled=False: a local demo does not report its use to Gradio (and CI has no network to do so).
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}")
        if notice:
            gr.Markdown(notice)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="Image", height=300, elem_id="image",
                    format="png",  # lossless: the model sees the pixels that were uploaded
                )  # fmt: skip
                _tolerate_undecodable_uploads(image)
                question_box = gr.Textbox(label="Question", value=question, lines=2, elem_id="question")
                budget = gr.Slider(
                    0.05, 1.0, value=DEFAULT_BUDGET, step=0.05, label="Latency budget (share of compute)",
                    elem_id="budget",
                )  # fmt: skip
                with gr.Row():
                    variant = gr.Radio(
                        [(_variant_title(models[k]), k) for k in labels], value=first, label="Model", elem_id="variant"
                    )
                    reduction = gr.Dropdown(
                        _reduction_choices(models, first), value=NO_REDUCTION, label="Token reduction",
                        elem_id="reduction",
                    )  # fmt: skip
                max_new_tokens = gr.Slider(
                    1, MAX_NEW_TOKENS_LIMIT, value=DEFAULT_MAX_NEW_TOKENS, step=1, label="Max new tokens",
                    elem_id="max-new-tokens",
                )  # fmt: skip
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                gr.Examples(examples, [image, question_box], label="Examples")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="status")
                answer = gr.Textbox(label="Answer", lines=3, interactive=False, elem_id="answer")
                gr.Markdown("**Executed plan** (one column per decoder layer)")
                plan = gr.HTML(elem_id="plan")
                gr.Markdown("**Measured on this machine** (times) **and modelled** (FLOPs)")
                metrics = gr.HTML(elem_id="metrics")
                # No label over the picture: it would hide the panel titles ("After the vision encoder (N kept)").
                kept = gr.Image(
                    label="Kept patches (iLLaVA token merging)", show_label=False, type="pil", interactive=False,
                    visible=False, elem_id="kept",
                )  # fmt: skip
        with gr.Accordion("Compare budgets", open=True):
            with gr.Row():
                budgets_text = gr.Textbox(
                    value=DEFAULT_COMPARE_BUDGETS, label="Budgets (comma-separated, each in (0, 1])",
                    elem_id="compare-budgets", scale=3,
                )  # fmt: skip
                compare_button = gr.Button("Compare budgets", elem_id="compare", scale=1)
            compare_status = gr.Markdown(elem_id="compare-status")
            comparison = gr.HTML(elem_id="comparison")

        inputs = [image, question_box, budget, variant, reduction, max_new_tokens]
        # One queue slot for both events (concurrency_id): they share the models.
        ask_button.click(
            ask, inputs, [answer, status, plan, metrics, kept], concurrency_id="model", concurrency_limit=1
        )
        question_box.submit(
            ask, inputs, [answer, status, plan, metrics, kept], concurrency_id="model", concurrency_limit=1
        )
        compare_button.click(
            compare,
            [image, question_box, budgets_text, variant, reduction, max_new_tokens],
            [comparison, compare_status],
            concurrency_id="model",
            concurrency_limit=1,
        )
        variant.change(on_variant, [variant, reduction], [reduction])
    app.queue(max_size=16)
    return app


def warm_up_models(models: Mapping[str, DemoModel]) -> None:
    """One short request per model (a bundled picture, 2 tokens), its result thrown away."""
    from .demo import demo_image

    for label in models:
        run_request(validate_request(models, demo_image(), DEFAULT_QUESTION, 1.0, label, max_new_tokens=2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ada-hf demo` flags of the web app (MODEL, --host, --port, --share, --random, --timeout)."""
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="an ada checkpoint folder or Hub id (a folder with L/ and H/ sub-folders serves both); default: the "
        "embedded demo models",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off unless asked)")
    parser.add_argument(
        "--random",
        action="store_true",
        help="instead of the trained tiny demo models, a random-weight model shaped like LLaVA-1.5-7B (32 layers x 32 "
        "heads, 576 image tokens): gibberish answers, real plans and timings at that depth",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds after which a request is stopped and reported (default {DEFAULT_TIMEOUT_S:g})",
    )


def launch(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    block: bool = True,
    models: Mapping[str, DemoModel] | None = None,
    examples: Sequence[tuple[Image.Image | str, str]] | None = None,
    warm_up: bool = True,
    random_weights: bool = False,
    **launch_kwargs,
):
    """Load the model(s) and serve the app; blocks until interrupted unless `block=False`.

    Args:
        model (`str`, *optional*): An ada checkpoint folder or Hub id (see [`load_models`]); None: [`default_models`],
            the trained tiny demo models, with held-out pictures of their task as examples.
        host (`str`, *optional*, defaults to `"127.0.0.1"`): Address to bind; this machine only by default.
        port (`int`, *optional*): Port; Gradio's default (7860, or the next free one) when None.
        share (`bool`, *optional*, defaults to False): Also open a public Gradio share link.
        timeout (`float`, *optional*): Seconds after which a request is stopped and reported.
        block (`bool`, *optional*, defaults to True): Serve until interrupted; False returns at once (tests).
        models (`Mapping[str, DemoModel]`, *optional*): Serve these instead of loading `model`.
        examples (`Sequence[tuple[PIL.Image.Image | str, str]]`, *optional*): Example (image, question) pairs to
            offer; default: two bundled pictures drawn with PIL (the demo models: pictures of their task).
        warm_up (`bool`, *optional*, defaults to True): Run one short request per model before serving, so that the
            first timings shown are not those of one-off start-up work.
        random_weights (`bool`, *optional*, defaults to False): With no `model`, serve the 7B-shaped random-weight
            demo models instead of the trained ones.

    Returns:
        The Gradio app (`app.local_url` is its address); closing it is `app.close()`.

    Raises:
        `DemoModelError`: no model found at `model`.
    """
    notice, question = None, DEFAULT_QUESTION
    if models is not None:
        models = dict(models)
    elif model is not None:
        models = load_models(model)
    else:
        from .demo import RANDOM_WEIGHTS_NOTICE, TRAINED_NOTICE, demo_examples, demo_task

        models = default_models(random_weights)
        notice = RANDOM_WEIGHTS_NOTICE if random_weights else TRAINED_NOTICE
        if not random_weights and examples is None:
            examples = demo_examples(demo_task())
            question = examples[0][1]
    if warm_up:
        if block:  # the command line: say what the wait is for
            print(f"ada-hf demo: warming up {', '.join(models)} (one short request each)...", flush=True)
        warm_up_models(models)
    app = build_app(models, timeout_s=timeout, notice=notice, examples=examples, question=question)
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        inbrowser=False,
        quiet=not block,
        css=launch_kwargs.pop("css", PAGE_CSS),
        **launch_kwargs,
    )
    return app


def run_cli(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """`ada-hf demo` with [`add_arguments`]'s flags: launch, or print why no model could be loaded (exit 2)."""
    try:
        if args.random and args.model is not None:
            raise DemoModelError(f"--random serves the random-weight demo models; drop it to serve {args.model!r}.")
        launch(
            args.model, host=args.host, port=args.port, share=args.share, timeout=args.timeout,
            random_weights=args.random,
        )  # fmt: skip
    except DemoModelError as error:
        if parser is not None:
            parser.error(str(error))
        print(f"ada-hf demo: error: {error}")
        return 2
    return 0


__all__ = [
    "DemoInputError",
    "DemoModel",
    "DemoModelError",
    "DemoResult",
    "Request",
    "add_arguments",
    "build_app",
    "check_budget",
    "compare_budgets",
    "compare_html",
    "default_models",
    "launch",
    "load_image",
    "load_models",
    "metrics_html",
    "parse_budgets",
    "plan_html",
    "run_cli",
    "run_request",
    "stream_request",
    "supported_reductions",
    "validate_request",
]


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ada_hf.web_demo", description="The ada-hf web demo.")
    add_arguments(parser)
    return run_cli(parser.parse_args(argv), parser)


if __name__ == "__main__":
    raise SystemExit(_main())
