"""Processor of AdaLLaVA: a LLaVA-1.5 processor that also knows the `<latency>` token.

This file is shipped with checkpoints as remote code (`trust_remote_code=True`): it imports only the standard library,
`torch`/`transformers`, and sibling files through `from .x import y`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaProcessor


VICUNA_V1_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA's `conv_templates["vicuna_v1"]` (SeparatorStyle.TWO, sep " ", sep2 "</s>", roles USER/ASSISTANT):
#   system + " " + "USER: <msg> " + "ASSISTANT: <msg></s>" + ... + "ASSISTANT:"
# * a leading system message replaces the default system prompt;
# * string content is used as is; list content renders every image item as "<image>\n" first (LLaVA-1.5 puts the
#   image before the question), then the text items joined with "\n";
# * the assistant part is wrapped in {% generation %} so `return_assistant_tokens_mask=True` works.
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_content = messages[0]['content'] -%}"
    "{%- if system_content is string -%}"
    "{%- set system_prompt = system_content -%}"
    "{%- else -%}"
    "{%- set system_prompt = system_content | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('\\n') -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prompt = '" + VICUNA_V1_SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- system_prompt + ' ' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set body = message['content'] -%}"
    "{%- else -%}"
    "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set body = '<image>\\n' * (images | length) + texts | join('\\n') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' + body + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}"
    "{%- generation -%}{{- body + '</s>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('vicuna_v1 supports the roles user and assistant (and one leading system message), got '"
    " + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- 'ASSISTANT:' -}}"
    "{%- endif -%}"
)


def add_latency_token(tokenizer: Any, token: str = "<latency>") -> int:
    """Make sure `token` is an extra special token of `tokenizer` and return its id.

    The token is added (as a special, never-split token) only when the tokenizer does not already mark it special;
    the existing extra special tokens are kept and nothing is duplicated, so the call is idempotent. When a token is
    added, remember to resize the model's embeddings (`model.resize_token_embeddings(len(tokenizer))`).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The tokenizer to update in place.
        token (`str`, *optional*, defaults to `"<latency>"`): The latency placeholder token.

    Returns:
        `int`: The id of `token` in `tokenizer`.
    """
    if token not in tokenizer.all_special_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"Could not add {token!r} to the tokenizer {type(tokenizer).__name__}.")
    return int(token_id)


class AdaLlavaProcessor(LlavaProcessor):
    r"""
    [`~transformers.LlavaProcessor`] with LLaVA-1.5 defaults (CLIP ViT-L/14-336: 576 image tokens per image), the
    `vicuna_v1` chat template, and the `<latency>` token that AdaLLaVA replaces with its latency-budget encoding.

    Args:
        image_processor ([`LlavaImageProcessor`] or [`LlavaImageProcessorPil`], *optional*):
            The image processor. LLaVA-1.5 pads to a square with the CLIP mean colour (`do_pad=True`).
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            The tokenizer. It must know `image_token`; `latency_token_id` also needs `latency_token`
            (see [`add_latency_token`]).
        patch_size (`int`, *optional*, defaults to 14):
            Patch size of the vision tower.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS feature (LLaVA-1.5), `"full"` keeps it. Must match the model config.
        chat_template (`str`, *optional*):
            Jinja chat template; defaults to [`VICUNA_V1_CHAT_TEMPLATE`].
        image_token (`str`, *optional*, defaults to `"<image>"`):
            Image placeholder, expanded to one token per image feature.
        num_additional_image_tokens (`int`, *optional*, defaults to 1):
            Extra tokens the vision tower adds to the patches (1 for CLIP's CLS).
        latency_token (`str`, *optional*, defaults to `"<latency>"`):
            The latency placeholder token. It is saved in `processor_config.json`.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int | None = 14,
        vision_feature_select_strategy: str | None = "default",
        chat_template: str | dict[str, str] | None = None,
        image_token: str = "<image>",
        num_additional_image_tokens: int = 1,
        latency_token: str = "<latency>",
        **kwargs,
    ) -> None:
        # NB: `latency_token` must stay a positional-or-keyword parameter stored under its own name: `to_dict` saves
        # the `__dict__` entries named like `__init__` parameters, and `from_args_and_dict` only passes back the
        # names in `__init__.__code__.co_varnames[:co_argcount]` (keyword-only parameters would be dropped).
        self.latency_token = latency_token
        if chat_template is None:
            chat_template = VICUNA_V1_CHAT_TEMPLATE
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            num_additional_image_tokens=num_additional_image_tokens,
            **kwargs,
        )

    def __call__(self, images=None, text=None, latency=None, num_image_tokens: int | None = None, **kwargs):
        """`LlavaProcessor.__call__`; with `latency=` (a budget, or one per sample) the result also carries
        `latency`, so `model.generate(**inputs)` and `pipeline("image-text-to-text", ..., latency=0.6)` use it.

        `num_image_tokens` writes that many placeholders per image instead of the full grid: the count the language
        model receives when vision-encoder merging or pooling before the LLM is on, which
        `model.image_tokens_per_image(...)` gives for the same flags. `generate` accepts either count; `forward`
        needs the merged one."""
        if num_image_tokens is not None and (isinstance(num_image_tokens, bool) or not isinstance(
                num_image_tokens, int) or num_image_tokens < 1):  # fmt: skip
            raise ValueError(f"num_image_tokens={num_image_tokens!r} must be a positive int (placeholders per image).")
        self._placeholders_per_image = num_image_tokens
        try:
            inputs = super().__call__(images=images, text=text, **kwargs)
        finally:
            self._placeholders_per_image = None
        if latency is not None:
            rows = len(inputs["input_ids"])
            budget = torch.as_tensor(latency, dtype=torch.float32)
            inputs["latency"] = budget.expand(rows).clone() if budget.ndim == 0 else budget
        return inputs

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        count = getattr(self, "_placeholders_per_image", None)
        if count is None:
            return super().replace_image_token(image_inputs, image_idx, **kwargs)
        return self.image_token * count

    @property
    def latency_token_id(self) -> int:
        """Id of `latency_token` in the tokenizer.

        Raises:
            `ValueError`: if the tokenizer does not have the token (call `add_latency_token(processor.tokenizer)`).
        """
        token = self.latency_token
        tokenizer = self.tokenizer
        token_id = tokenizer.convert_tokens_to_ids(token)
        known = token in tokenizer.get_vocab()
        if not known or token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ValueError(
                f"The tokenizer has no latency token {token!r}. Call `add_latency_token(processor.tokenizer, "
                f"{token!r})` (from processing_ada_llava) and resize the model's embeddings."
            )
        return int(token_id)


AdaLlavaProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["AdaLlavaProcessor", "VICUNA_V1_CHAT_TEMPLATE", "VICUNA_V1_SYSTEM_PROMPT", "add_latency_token"]
