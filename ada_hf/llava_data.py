"""LLaVA-1.5 instruction data (`llava_v1_5_mix665k.json` and the like) for training AdaLLaVA.

Training tooling, not remote code: the model files never import this module.

* [`load_llava_dataset`] reads the JSON into a memory-mapped `datasets.Dataset` of records
  (`id`, optional `image`, `conversations` of `{"from", "value"}` turns with the `<image>` marker).
* [`LlavaSupervisedDataset`] renders each record with LLaVA's `vicuna_v1` template, tokenises it, places the image
  placeholders and the `<latency>` token, masks the labels and loads the image lazily in `__getitem__`.
* [`AdaLlavaDataCollator`] pads a batch and stacks the pixel values of the samples that have an image.

A sample renders as (LLaVA's `conv_templates["vicuna_v1"]`, separators " " and "</s>")

    <s>SYSTEM USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:<latency> {a2}</s>

Labels are -100 on everything except the answers and their `</s>`, as LLaVA's `preprocess_v1`. The `<latency>` token
sits between the final "ASSISTANT:" and the final answer, with label -100, exactly where the original AdaLLaVA puts it
(after the last ignored label, ADALLAVA.md section 5). So the earlier answers of a multi-turn sample are also computed
under a plan chosen from a later position: a non-causal quirk, but it is the behaviour the released models were trained
with, so it is kept.

Bad samples (a malformed conversation, an image without an `<image>` marker or a marker without an image, a missing or
undecodable image file, a sample that truncation would spoil) raise [`BadSampleError`] naming the sample id, or, with
`on_bad_sample="skip"`, are left out and recorded in `LlavaSupervisedDataset.skipped`. Nothing is trained on silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import torch
from PIL import Image
from tqdm.auto import tqdm

from .processing_ada_llava import VICUNA_V1_SYSTEM_PROMPT


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
IMAGE_MARKER = "<image>"

RECORD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Value("string"),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
        # Why a record does not have LLaVA's shape (None when it does): checked with everything else, per sample.
        "malformed": datasets.Value("string"),
    }
)


class BadSampleError(ValueError):
    """A training sample that cannot be used as it is; the message names its id."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"Bad sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


def _normalise(record: Any, index: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        return {"id": f"#{index}", "image": None, "conversations": None, "malformed": "the record is not an object"}
    raw_id = record.get("id")
    # str() keeps both "000000033471" and 12345 exactly; a record without id is named by its position.
    sample_id = f"#{index}" if raw_id is None else str(raw_id)
    row = {"id": sample_id, "image": None, "conversations": None, "malformed": None}
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        row["malformed"] = f"'image' must be one file name, got {type(image).__name__}"
        return row
    row["image"] = image
    turns = record.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in turns
    ):
        row["malformed"] = "'conversations' must be a list of {'from': str, 'value': str}"
        return row
    row["conversations"] = [{"from": t["from"], "value": t["value"]} for t in turns]
    return row


def _read_records(path: str, size: int, mtime_ns: int) -> Iterator[dict[str, Any]]:
    del size, mtime_ns  # only part of the cache fingerprint, so that an edited file is read again
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()] if path.endswith(".jsonl") else json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of samples (or be a .jsonl file).")
    for index, record in enumerate(records):
        yield _normalise(record, index)


def load_llava_dataset(data_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Read LLaVA instruction data into a memory-mapped `datasets.Dataset`.

    The real `llava_v1_5_mix665k.json` mixes string ids ("000000033471") with integer ones, and
    `datasets.load_dataset("json", ...)` does not handle that: `datasets` 3.x fails with an `ArrowTypeError`
    ("Expected bytes, got a 'int' object"), and `datasets` 5.x loads `id` as a `Json` column that turns the string
    "000000033471" into the integer 33471 (checked with 3.6 and 5.2). So the file is read with `json` (as LLaVA does,
    which holds it all in memory once), every id becomes a string, and `Dataset.from_generator` writes the records to
    an Arrow cache that is memory-mapped from then on. The cache is keyed on the path, size and modification time of
    the file, so later calls do not parse the JSON again.

    Records that do not have LLaVA's shape are kept, with the reason in the `malformed` column, so that
    [`LlavaSupervisedDataset`] reports them (or skips them) by id like any other bad sample.

    Args:
        data_path (`str` or `os.PathLike`): A JSON list of samples, or a `.jsonl` file with one sample per line.
        cache_dir (`str` or `os.PathLike`, *optional*): Where the Arrow cache goes (default: the `datasets` cache).

    Returns:
        `datasets.Dataset` with the columns `id` (str), `image` (str or None), `conversations` (list of
        `{"from": str, "value": str}`, or None) and `malformed` (str or None).
    """
    path = os.path.abspath(data_path)
    stat = os.stat(path)
    return datasets.Dataset.from_generator(
        _read_records,
        features=RECORD_FEATURES,
        cache_dir=None if cache_dir is None else str(cache_dir),
        gen_kwargs={"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
    )


class LlavaSupervisedDataset(torch.utils.data.Dataset):
    r"""
    LLaVA instruction records as supervised training samples for AdaLLaVA (LLaVA's `LazySupervisedDataset`).

    On creation every record is checked once, with a progress bar (a few minutes for the 665k mix, in every process
    that builds the dataset): conversation shape, `<image>` markers, tokenisation and truncation, and that the image
    file exists (`check_images=True` also decodes every image). `len()` counts the
    usable samples. `__getitem__` tokenises again and loads the image, and returns `input_ids` and `labels` (1-D
    `LongTensor`s) and, for image samples, `pixel_values` of shape `(1, 3, H, W)`.

    Rendering follows LLaVA-1.5 (`--version v1`): a leading "gpt" turn is dropped, then turns must alternate
    "human"/"gpt" and end with a non-empty answer. The `<image>` marker moves to the front of its message as
    `"<image>\n" + text` (LLaVA's `preprocess_multimodal`) and expands to `num_image_tokens` image-token ids.

    Tokenisation: each piece (instruction, answer, text on either side of the image) is tokenised on its own without
    special tokens, and the ids are concatenated with BOS, the image ids, the latency id and `</s>` (Llama's EOS, the
    template's second separator), so labels align by construction. LLaVA instead tokenises the whole conversation
    (split only at `<image>`) and finds the label boundaries by re-tokenising each round and subtracting fixed offsets;
    when these disagree it prints "tokenization mismatch" and masks the whole sample. The ids can differ from the
    original's where pieces meet: a SentencePiece (Llama) tokenizer gives every piece a leading "▁", which matches
    the space before an answer, but after `</s>` the original's ids for "USER" depend on the tokenizer's `legacy` flag
    (the reason for LLaVA's `round_len -= 1` fix). With a tokenizer that adds no such prefix space (byte-level BPE),
    the space between "ASSISTANT:" and the answer would be lost. No claim of id-for-id equality with LLaVA is made.

    Truncation to `max_length` cuts tokens from the end. A sample whose first final-answer token would not fit is bad
    (nothing would be supervised after the latency token); that includes every case in which the cut would fall
    before the end of the image's placeholder run, so image runs are never cut. The latency token counts towards
    `max_length` (the original truncates before inserting it, so its sequences can be one token longer).

    Args:
        records (`datasets.Dataset` or a sequence of dicts): From [`load_llava_dataset`].
        processor ([`AdaLlavaProcessor`]): Gives the tokenizer, the image processor (LLaVA-1.5 pads to a square) and
            the `<image>` token.
        image_folder (`str` or `os.PathLike`, *optional*): The folder the `image` paths are relative to.
        latency_token_id (`int` or `None`): The model's `config.latency_token_id`: inserted once per sample, text-only
            samples too; `None` (a model without a scheduler) inserts nothing.
        max_length (`int`, *optional*, defaults to 2048): LLaVA's `model_max_length`.
        num_image_tokens (`int`, *optional*): Placeholders per image; defaults to the processor's count (576 for
            LLaVA-1.5). Must equal the model's `config.image_seq_length`.
        on_bad_sample (`"raise"` or `"skip"`, *optional*, defaults to `"raise"`): Raise [`BadSampleError`], or leave
            the sample out and record it in `skipped`. An image that fails to decode in `__getitem__` is then replaced
            by the next sample (and logged, since a DataLoader worker's `skipped` is its own copy).
        check_images (`bool`, *optional*, defaults to `False`): Also decode every image on creation (slow for 665k).
    """

    def __init__(
        self,
        records: datasets.Dataset | Sequence[dict[str, Any]],
        processor: Any,
        image_folder: str | os.PathLike | None = None,
        *,
        latency_token_id: int | None,
        max_length: int = 2048,
        num_image_tokens: int | None = None,
        on_bad_sample: Literal["raise", "skip"] = "raise",
        check_images: bool = False,
    ) -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}.")
        self.records = records
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_folder = image_folder
        self.latency_token_id = latency_token_id
        self.max_length = max_length
        if num_image_tokens is None:
            num_image_tokens = processor._get_num_multimodal_tokens(image_sizes=[(1, 1)]).num_image_tokens[0]
        self.num_image_tokens = int(num_image_tokens)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.on_bad_sample = on_bad_sample
        # Record index -> why it was left out.
        self.skipped: dict[int, BadSampleError] = {}

        self._indices: list[int] = []
        self._lengths: list[int] = []
        for index, record in enumerate(tqdm(records, total=len(records), desc="Checking LLaVA samples")):
            try:
                input_ids, _ = self._tokenize(record)
                if record.get("image") is not None:
                    path = self._image_path(record)
                    if not os.path.isfile(path):
                        raise BadSampleError(record["id"], f"image file {path} does not exist")
                    if check_images:
                        self._load_image(record)
            except BadSampleError as error:
                self._skip(index, error)
                continue
            self._indices.append(index)
            length = len(input_ids)
            self._lengths.append(length if record.get("image") is not None else -length)
        if self.skipped:
            logger.warning(
                f"Skipped {len(self.skipped)} of {len(records)} samples, e.g. {next(iter(self.skipped.values()))}"
            )

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def lengths(self) -> list[int]:
        """Token count of each sample (image placeholders and the latency token included)."""
        return [abs(length) for length in self._lengths]

    @property
    def modality_lengths(self) -> list[int]:
        """Token counts, positive for image samples and negative for text-only ones, as LLaVA's
        `group_by_modality_length` sampler expects."""
        return list(self._lengths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self)):
            index = self._indices[(i + attempt) % len(self)]
            record = self.records[index]
            try:
                input_ids, labels = self._tokenize(record)
                sample = {
                    "input_ids": torch.tensor(input_ids, dtype=torch.long),
                    "labels": torch.tensor(labels, dtype=torch.long),
                }
                if record.get("image") is not None:
                    image = self._load_image(record)
                    sample["pixel_values"] = self.processor.image_processor(images=image, return_tensors="pt")[
                        "pixel_values"
                    ]
                return sample
            except BadSampleError as error:
                self._skip(index, error)
                logger.warning(f"Skipping: {error}")
        raise RuntimeError("Every sample of the dataset is bad.")

    def _skip(self, index: int, error: BadSampleError) -> None:
        if self.on_bad_sample == "raise":
            raise error
        self.skipped.setdefault(index, error)

    def _image_path(self, record: dict[str, Any]) -> str:
        return record["image"] if self.image_folder is None else os.path.join(self.image_folder, record["image"])

    def _load_image(self, record: dict[str, Any]) -> Image.Image:
        path = self._image_path(record)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise BadSampleError(record["id"], f"image {path} cannot be decoded ({error})") from error

    def _tokenize(self, record: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Render, tokenise, label and truncate one record (no image loading)."""
        sample_id = record["id"]
        if record.get("malformed"):
            raise BadSampleError(sample_id, record["malformed"])
        turns = record["conversations"]
        first = 1 if turns and turns[0]["from"] == "gpt" else 0  # LLaVA's preprocess_v1 drops it too
        turns = turns[first:]
        if not turns or len(turns) % 2:
            raise BadSampleError(sample_id, "the conversation must be human/gpt pairs ending with a gpt answer")
        for k, turn in enumerate(turns):
            role = ("human", "gpt")[k % 2]
            if turn["from"] != role:
                raise BadSampleError(sample_id, f"turn {k + first} is from {turn['from']!r}, expected {role!r}")
            if role == "gpt" and not turn["value"].strip():
                raise BadSampleError(sample_id, f"turn {k + first} is an empty answer")
            if role == "gpt" and IMAGE_MARKER in turn["value"]:
                raise BadSampleError(sample_id, f"turn {k + first} (an answer) holds the {IMAGE_MARKER} marker")
        markers = sum(turn["value"].count(IMAGE_MARKER) for turn in turns)
        has_image = record.get("image") is not None
        if has_image and markers != 1:
            raise BadSampleError(sample_id, f"it has an image but {markers} {IMAGE_MARKER} markers (expected 1)")
        if not has_image and markers:
            raise BadSampleError(sample_id, f"it has {markers} {IMAGE_MARKER} marker(s) but no image")

        # (text or ids, supervised) pieces; all texts go through the tokenizer in one call.
        pieces: list[tuple[str | list[int], bool]] = []
        image_ids = [self.image_token_id] * self.num_image_tokens
        for k in range(0, len(turns), 2):
            question, answer = turns[k]["value"], turns[k + 1]["value"]
            prefix = (VICUNA_V1_SYSTEM_PROMPT + " " if k == 0 else "") + "USER: "
            if IMAGE_MARKER in question:
                text = question.replace(IMAGE_MARKER, "").strip()
                pieces += [(prefix, False), (image_ids, False), ("\n" + text + " ASSISTANT:", False)]
            else:
                pieces.append((prefix + question + " ASSISTANT:", False))
            if k == len(turns) - 2 and self.latency_token_id is not None:
                pieces.append(([self.latency_token_id], False))
            pieces += [(answer, True), ([self.tokenizer.eos_token_id], True)]
        texts = [piece for piece, _ in pieces if isinstance(piece, str)]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        placeholders = {self.image_token_id, self.latency_token_id} - {None}
        for text, ids in zip(texts, encoded):
            if placeholders.intersection(ids):
                raise BadSampleError(sample_id, f"its text contains the image or latency token: {text!r}")

        input_ids = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
        labels = [IGNORE_INDEX] * len(input_ids)
        image_end = answer_start = 0
        encoded_iter = iter(encoded)
        for piece, supervised in pieces:
            ids = next(encoded_iter) if isinstance(piece, str) else piece
            if supervised and isinstance(piece, str):
                answer_start = len(input_ids)  # the last one set is the final answer's
            input_ids += ids
            labels += ids if supervised else [IGNORE_INDEX] * len(ids)
            if piece is image_ids:
                image_end = len(input_ids)

        if len(input_ids) > self.max_length:
            if image_end > self.max_length:
                raise BadSampleError(
                    sample_id,
                    f"truncating its {len(input_ids)} tokens to max_length={self.max_length} would cut its image "
                    f"tokens (they end at {image_end})",
                )
            if answer_start >= self.max_length:
                raise BadSampleError(
                    sample_id,
                    f"truncating its {len(input_ids)} tokens to max_length={self.max_length} would cut off the final "
                    f"answer (it starts at {answer_start}), leaving nothing to supervise",
                )
            del input_ids[self.max_length :], labels[self.max_length :]
        return input_ids, labels


@dataclass
class AdaLlavaDataCollator:
    """Pads [`LlavaSupervisedDataset`] samples into a batch for `AdaLlavaForConditionalGeneration.forward`.

    `input_ids` are padded with `pad_token_id`, `labels` with -100 and `attention_mask` with 0. `pixel_values` holds
    one row per image in the batch, in batch order, and is left out when no sample has an image: the model scatters
    image features into the placeholder positions in order, so batches that mix image and text-only samples work.

    Args:
        pad_token_id (`int`): Any valid id (it is masked out); LLaVA v1 pads Llama with `<unk>`.
        padding_side (`"right"` or `"left"`, *optional*, defaults to `"right"`): LLaVA trains with right padding.
    """

    pad_token_id: int
    padding_side: Literal["right", "left"] = "right"

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("pad_token_id is None: pass e.g. tokenizer.unk_token_id, as LLaVA v1 does.")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}.")

    def __call__(self, features: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            span = slice(0, length) if self.padding_side == "right" else slice(width - length, width)
            input_ids[row, span] = feature["input_ids"]
            labels[row, span] = feature["labels"]
            attention_mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        images = [f["pixel_values"] for f in features if f.get("pixel_values") is not None]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch


__all__ = ["AdaLlavaDataCollator", "BadSampleError", "LlavaSupervisedDataset", "load_llava_dataset"]
