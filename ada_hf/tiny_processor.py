"""Offline tiny tokenizer/processor for tests, the demo and benchmarks (no Hub access, no torchvision).

Not remote code: this module is never copied next to a checkpoint.
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from .processing_ada_llava import VICUNA_V1_SYSTEM_PROMPT, AdaLlavaProcessor, add_latency_token


SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
LATENCY_TOKEN = "<latency>"

# A fixed list of common English words. Its order fixes the token ids: editing it changes every later id.
COMMON_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well also play small "
    "end put home read hand port large spell add even land here must big high such follow act why ask men change "
    "went light kind off need house picture try us again animal point mother world near build self earth father "
    "head stand own page should country found answer school grow study still learn plant cover food sun four "
    "image photo cat dog red blue green white black color shown left top bottom person car tree sky yes "
    "What Why How Where Who Which When Is Are Does Can Describe It This There Yes No"
).split()

_PUNCTUATION = (".", ",", "?", "!", "'", '"', ";", "-", "(", ")", "/")


def default_words() -> list[str]:
    """The default word list of [`build_tiny_tokenizer`]: common words, the vicuna_v1 system prompt, roles and
    punctuation, without duplicates, in a fixed order."""
    words: list[str] = list(COMMON_WORDS)
    # The words and punctuation of the system prompt, split the way the pre-tokenizer splits them.
    words += re.findall(r"\w+|[^\w\s]", VICUNA_V1_SYSTEM_PROMPT)
    words += ["USER", "ASSISTANT", ":"]
    words += list(_PUNCTUATION)
    return list(dict.fromkeys(words))


def build_tiny_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Build a small word-level fast tokenizer, entirely offline.

    Vocabulary: `<unk>`=0, `<s>`=1, `</s>`=2, then `words` (default: [`default_words`], enough for a vicuna_v1
    prompt to tokenize without `<unk>`), then the special tokens `<image>`, `<pad>` and `<latency>`, added last in
    that order. A BOS `<s>` is prepended when encoding with special tokens; padding is on the left with `<pad>`.
    The ids are the same on every call.

    Args:
        words (`list[str]`, *optional*): The words of the vocabulary (duplicates and special tokens are skipped).

    Returns:
        `PreTrainedTokenizerFast`: the tokenizer (a `TokenizersBackend` in transformers 5).
    """
    if words is None:
        words = default_words()
    reserved = set(SPECIAL_TOKENS) | {IMAGE_TOKEN, PAD_TOKEN, LATENCY_TOKEN}
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        if word not in vocab and word not in reserved:
            vocab[word] = len(vocab)

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )
    # One call each so that the ids follow this order: <image>, <pad>, <latency>.
    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    add_latency_token(tokenizer, LATENCY_TOKEN)
    return tokenizer


def build_tiny_processor(
    tokenizer: PreTrainedTokenizerFast | None = None,
    image_size: int = 336,
    patch_size: int = 14,
) -> AdaLlavaProcessor:
    """Build an [`AdaLlavaProcessor`] offline with LLaVA-1.5's image pre-processing at `image_size`.

    The image processor pads to a square with the CLIP mean colour, resizes the shortest edge to `image_size`
    (bicubic), center-crops `image_size`x`image_size` and normalises with the CLIP mean/std, i.e. LLaVA-1.5's
    `image_aspect_ratio="pad"`. Each `<image>` expands to `(image_size // patch_size) ** 2` tokens.

    Args:
        tokenizer (`PreTrainedTokenizerFast`, *optional*): Defaults to [`build_tiny_tokenizer`]`()`.
        image_size (`int`, *optional*, defaults to 336): Side of the processed square image.
        patch_size (`int`, *optional*, defaults to 14): Patch size of the vision tower.

    Returns:
        `AdaLlavaProcessor`
    """
    if tokenizer is None:
        tokenizer = build_tiny_tokenizer()
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    return AdaLlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size)


__all__ = ["build_tiny_processor", "build_tiny_tokenizer", "default_words"]
