"""AdaLLaVA on transformers' Llava: a latency budget picks which decoder layers, heads and MLP groups run."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DummyLayer, DynamicCache
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.auto import AutoModel
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaModel
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaModelOutputWithPast,
    LlavaMultiModalProjector,
    LlavaPreTrainedModel,
)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ada_llava import AdaLlavaConfig
from .cost_model import CostModel, dtype_bits
from .efficiency import choose_units, efficiency_reports, generated_counts, parse_time_target, row_workloads
from .execution_plan import SKIP, ExecutionPlan
from .latency_scheduler import LatencyScheduler
from .planned_layer import build_layer_plan, planned_decoder_layer
from .processing_ada_llava import AdaLlavaProcessor  # noqa: F401  (copied beside saved models for auto_map)
from .vision_merging import (
    ILLAVA_VIT_FIELDS,
    check_token_selecting,
    clip_forward_with_merging,
    prumerge,
    collapse_image_tokens,
    feature_layer_index,
    illava_vit_settings,
    image_token_counts,
)
from .token_reduction import (
    ILLAVA_LLM_FIELDS,
    LLAVOLTA_FIELDS,
    ReductionRecord,
    expand_preset,
    ReductionState,
    illava_llm_settings,
    illava_merge,
    last_token_attention,
    llavolta_settings,
    plan_pooling,
)
from .version_check import check_transformers_version

check_transformers_version()


@dataclass
class SchedulingState:
    """What the decoder loop needs to apply a plan: the latency tokens and budgets, and the plan once it exists."""

    scheduler: LatencyScheduler
    units: torch.Tensor
    positions: torch.Tensor | None = None  # where each row's <latency> token sits in the current input
    latency_embeds: torch.Tensor | None = None
    plan: ExecutionPlan | None = None
    tau: float | None = None  # Gumbel temperature in training: config.scheduler_tau at call time (annealing changes it)


@dataclass
class _CarriesPlan:
    r"""
    execution_plan (`ExecutionPlan`, *optional*):
        The plan the decoder ran (returned whenever a budget or a plan applied).
    token_reductions (`tuple[ReductionRecord]`, *optional*):
        Each reduction of the image tokens (LLaVolta pooling, iLLaVA merging) and the entries it kept; after one,
        logits cover the reduced sequence.
    vit_sources (`tuple[torch.Tensor]`, *optional*):
        With `illava_track_vit_source`: per vision-encoder merge layer, the original patch indices (0..575, raster
        order) that survive it, `[num_images, patches]`.
    """

    execution_plan: ExecutionPlan | None = None
    token_reductions: tuple[ReductionRecord, ...] | None = None
    vit_sources: tuple[torch.Tensor, ...] | None = None


@dataclass
class AdaLlavaModelOutputWithPast(_CarriesPlan, LlavaModelOutputWithPast):
    __doc__ = (LlavaModelOutputWithPast.__doc__ or "") + (_CarriesPlan.__doc__ or "")


@dataclass
class AdaLlavaCausalLMOutputWithPast(_CarriesPlan, LlavaCausalLMOutputWithPast):
    __doc__ = (LlavaCausalLMOutputWithPast.__doc__ or "") + (_CarriesPlan.__doc__ or "")


@dataclass
class _PlanReport:
    r"""
    execution_plan (`torch.LongTensor` of shape `(rows, num_layers)`):
        Attention heads executed per layer, -1 for a skipped layer.
    mlp_groups_executed (`torch.LongTensor` of shape `(rows, num_layers)`):
        MLP neuron groups executed per layer, -1 for a skipped layer.
    executed_units (`torch.LongTensor` of shape `(rows,)`):
        Units executed, prefix included.
    latency_effective (`torch.Tensor` of shape `(rows,)`):
        The budget actually run.
    heads_computed / mlp_groups_computed (`torch.LongTensor` of shape `(num_layers,)`):
        What the batch actually computed per layer: the union over rows (rows sharing sliced weights are masked).
    token_reductions (`tuple[ReductionRecord]`, *optional*):
        The prefill's LLaVolta / iLLaVA reductions of the LLM sequence (in the coordinates of the returned prompt).
    vit_sources (`tuple[torch.Tensor]`, *optional*):
        With `illava_track_vit_source`: the original patches surviving each vision-encoder merge.
    efficiency (`list[EfficiencyReport]`):
        Per returned sequence, the modelled cost of its request (FLOPs of every stage, bytes, KV-cache bytes, peak
        memory, roofline times on `hardware`, the original evaluation's metrics); see `cost_model.EfficiencyReport`.
    """

    execution_plan: torch.LongTensor | None = None
    mlp_groups_executed: torch.LongTensor | None = None
    executed_units: torch.LongTensor | None = None
    latency_effective: torch.Tensor | None = None
    heads_computed: torch.LongTensor | None = None
    mlp_groups_computed: torch.LongTensor | None = None
    token_reductions: tuple | None = None
    vit_sources: tuple | None = None
    efficiency: list | None = None


@dataclass
class AdaLlavaGenerateDecoderOnlyOutput(_PlanReport, GenerateDecoderOnlyOutput):
    __doc__ = (GenerateDecoderOnlyOutput.__doc__ or "") + (_PlanReport.__doc__ or "")


@dataclass
class AdaLlavaGenerateBeamDecoderOnlyOutput(_PlanReport, GenerateBeamDecoderOnlyOutput):
    __doc__ = (GenerateBeamDecoderOnlyOutput.__doc__ or "") + (_PlanReport.__doc__ or "")


class AdaLlamaModel(LlamaModel):
    """`LlamaModel` whose decoder loop applies an execution plan after the first `num_prefix_layers` layers."""

    # Hidden states are gathered by the loop itself, so skipped layers still contribute an entry.
    _can_record_outputs = {"attentions": LlamaAttention}

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        scheduling: SchedulingState | None = None,
        num_prefix_layers: int | None = None,
        reduction: ReductionState | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if scheduling is not None and scheduling.positions is not None:
            rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device)
            inputs_embeds = inputs_embeds.index_put(
                (rows, scheduling.positions.to(inputs_embeds.device)),
                scheduling.latency_embeds.to(inputs_embeds.dtype),
            )

        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)
        reductions = self._reduction_schedule(
            reduction, past_seen_tokens, inputs_embeds, attention_mask, position_ids, past_key_values
        )
        stream = {"attention_mask": attention_mask, "position_ids": position_ids, "scores": None, "latency": None}
        if scheduling is not None and scheduling.positions is not None:
            stream["latency"] = scheduling.positions
        if reduction is not None and reduction.illava_llm is not None:
            # iLLaVA scores image tokens by the attention of the last prompt token: the one before <latency>, or the
            # prompt's last one (generate passes the prompt length, so recomputing without a cache scores alike).
            last = torch.full((inputs_embeds.shape[0],), inputs_embeds.shape[1] - 1, device=inputs_embeds.device)
            if reduction.prompt_length is not None:
                last = torch.full_like(last, reduction.prompt_length - 1)
            stream["query"] = stream["latency"] - 1 if stream["latency"] is not None else last
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        layer_kwargs = dict(
            attention_mask=causal_mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            past_key_values=past_key_values,
            **kwargs,
        )

        for idx, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            action = reductions.get(idx)
            if isinstance(action, dict):  # decoding after a reduced prefill: this layer's shorter cache
                layer_kwargs.update(action)
            elif action is not None:  # prefill: reduce the image tokens at this layer's input
                hidden_states = self._reduce(action, idx, reduction, hidden_states, stream, scheduling, layer_kwargs)
            if reduction is not None and reduction.illava_llm is not None and idx + 1 in reductions:
                if reductions[idx + 1] == "illava":  # iLLaVA scores with the attention of the layer before
                    stream["scores"] = self._illava_scores(decoder_layer, hidden_states, stream, layer_kwargs)
            if scheduling is not None and idx == num_prefix_layers and scheduling.plan is None:
                rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
                latency_hidden = hidden_states[rows, scheduling.positions.to(hidden_states.device)]
                scheduling.plan = scheduling.scheduler(
                    latency_hidden, scheduling.units.to(hidden_states.device), tau=scheduling.tau
                )
            lp = None
            if scheduling is not None and idx >= num_prefix_layers:
                lp = self._layer_plan(scheduling.plan, idx, decoder_layer, past_key_values)
            if lp is SKIP:
                pass  # a skipped layer is an exact identity on the residual stream and writes no cache
            elif lp is None:
                hidden_states = decoder_layer(hidden_states, use_cache=use_cache, **layer_kwargs)
            elif decoder_layer.gradient_checkpointing and self.training:
                # The masks are arguments, not closure variables, so re-entrant checkpointing keeps their gradients.
                run = partial(planned_decoder_layer, decoder_layer, lp=lp, **{**layer_kwargs, "past_key_values": None})
                hidden_states = decoder_layer._gradient_checkpointing_func(
                    run, hidden_states, lp.head_mask, lp.neuron_mask
                )
            else:
                hidden_states = planned_decoder_layer(
                    decoder_layer, hidden_states, lp.head_mask, lp.neuron_mask, lp=lp, **layer_kwargs
                )
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)

        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states[-1] = hidden_states  # transformers' convention: the last entry is the normed output
        if past_key_values is not None and scheduling is not None:
            past_key_values.ada_execution_plan = scheduling.plan
        if past_key_values is not None and reduction is not None and reduction.records:
            past_key_values.ada_reductions = list(reduction.records)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=_select_hidden_states(all_hidden_states, output_hidden_states),
        )

    def _reduction_schedule(self, reduction, past_seen, inputs_embeds, attention_mask, position_ids, cache) -> dict:
        """Layer -> what happens at its input: at prefill the name of the reduction to apply; when decoding after a
        reduced prefill, the mask and positions of the layers from there on (their caches hold fewer positions)."""
        if reduction is None:
            return {}
        if past_seen == 0:
            if reduction.image_mask is None or not bool(reduction.image_mask.any()):
                return {}
            actions = {}
            if reduction.llavolta is not None:
                actions[reduction.llavolta.layer] = "llavolta"
            if reduction.illava_llm is not None:
                actions.update({k: "illava" for k in reduction.illava_llm.layers})
            return actions
        actions, mask, removed = {}, attention_mask, 0
        for i, record in enumerate(reduction.records):
            removed += record.removed if record.renumber else 0
            positions = position_ids - removed
            mask = record.compress_mask(mask) if mask is not None else None
            end = reduction.records[i + 1].layer if i + 1 < len(reduction.records) else len(cache.layers)
            reference = next((j for j in range(record.layer, end) if not isinstance(cache.layers[j], DummyLayer)), None)
            causal_mask = None
            if reference is not None:
                causal_mask = create_causal_mask(
                    config=self.config,
                    inputs_embeds=inputs_embeds,
                    attention_mask=mask,
                    past_key_values=cache,
                    position_ids=positions,
                    layer_idx=reference,
                )
            actions[record.layer] = {
                "attention_mask": causal_mask,
                "position_ids": positions,
                "position_embeddings": self.rotary_emb(inputs_embeds, position_ids=positions),
            }
        return actions

    def _reduce(self, kind, layer, reduction, hidden_states, stream, scheduling, layer_kwargs) -> torch.Tensor:
        """Reduce the image tokens at this layer's input (prefill), and everything that indexes the sequence."""
        image_mask = reduction.image_mask.to(hidden_states.device)
        mask, positions = stream["attention_mask"], stream["position_ids"]
        if kind == "llavolta":
            settings = reduction.llavolta
            layout = plan_pooling(image_mask, settings.stride)
            hidden_states, kept = layout.pool(hidden_states), layout.first
            mask = layout.select(mask) if mask is not None else None
            positions = layout.positions(positions, settings.position_mode, mask)
            renumber = settings.position_mode == "renumber"
            record = ReductionRecord("llavolta", layer, kept, layout.source_length, renumber, layout)
        else:
            if self.training:
                raise ValueError("iLLaVA merging is inference-only: disable enable_illava_llm to train.")
            merged = illava_merge(hidden_states, image_mask, stream["scores"], reduction.illava_llm.keep)
            if merged is None:
                return hidden_states
            length = hidden_states.shape[1]
            hidden_states, kept = merged
            mask = mask.gather(1, kept) if mask is not None else None
            positions = positions.expand(kept.shape[0], -1).gather(1, kept)  # original positions: gaps remain
            record = ReductionRecord("illava", layer, kept, length)
        reduction.records.append(record)
        reduction.image_mask = image_mask.gather(1, kept)
        if stream.get("query") is not None:  # a text token: never reduced
            stream["query"] = (kept < stream["query"].to(kept.device)[:, None]).sum(dim=1)
        if stream.get("latency") is not None:
            # The <latency> token is text, never reduced: follow it to its new index (the scheduler reads it there).
            stream["latency"] = (kept < stream["latency"].to(kept.device)[:, None]).sum(dim=1)
            if scheduling is not None and scheduling.plan is None:
                scheduling.positions = stream["latency"]
        stream["attention_mask"], stream["position_ids"] = mask, positions
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=mask,
            past_key_values=None,  # a reduced prefill starts from an empty cache
            position_ids=None,  # reduced ids have gaps, which the mask would take for packed sequences
        )
        layer_kwargs.update(
            attention_mask=causal_mask,
            position_ids=positions,
            position_embeddings=self.rotary_emb(hidden_states, position_ids=positions),
        )
        return hidden_states

    def _illava_scores(self, layer, hidden_states, stream, layer_kwargs) -> torch.Tensor:
        """The attention each token receives from the last prompt token (before any <latency>) in `layer`."""
        normed = layer.input_layernorm(hidden_states)
        query = stream["query"].to(hidden_states.device)
        return last_token_attention(
            layer.self_attn, normed, layer_kwargs["position_embeddings"], stream["attention_mask"], query
        )

    def _layer_plan(self, plan: ExecutionPlan, idx: int, layer: nn.Module, cache: Cache | None):
        """The recipe for one layer, built once per request in eval mode (sliced weights included)."""
        if self.training:
            return build_layer_plan(plan, idx, layer, training=True)
        if idx not in plan.layer_plans:
            cache_layer = None
            if cache is not None:
                if isinstance(cache, DynamicCache) and cache.layer_class_to_replicate is not None:
                    while len(cache.layers) <= idx:  # a lazily grown cache: materialise the slot
                        cache.layers.append(cache.layer_class_to_replicate())
                cache_layer = cache.layers[idx] if idx < len(cache.layers) else None
            plan.layer_plans[idx] = build_layer_plan(plan, idx, layer, training=False, cache_layer=cache_layer)
        lp = plan.layer_plans[idx]
        if lp is SKIP and isinstance(cache, DynamicCache) and not isinstance(cache.layers[idx], DummyLayer):
            if cache.layers[idx].get_seq_length() > 0:
                raise ValueError(
                    f"Layer {idx} holds cached keys but the execution plan skips it: the cache was made under another "
                    "plan. Start from a fresh cache, or pass the plan the cache was made with (`execution_plan=`)."
                )
            cache.layers[idx] = DummyLayer()
        return lp


def _select_hidden_states(all_hidden_states, selection):
    if all_hidden_states is None:
        return None
    if isinstance(selection, bool):
        return tuple(all_hidden_states)
    indices = [selection] if isinstance(selection, int) else list(selection)
    return tuple(all_hidden_states[i] for i in indices)


class AdaLlavaPreTrainedModel(LlavaPreTrainedModel):
    config: AdaLlavaConfig
    config_class = AdaLlavaConfig

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with `auto_map` naming this code for every Auto class."""
        self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        # The original's scheduler starts from transformers' defaults: N(0, 0.02) Linear, zero bias, unit LayerNorm.
        if isinstance(module, LatencyScheduler):
            std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
            for linear in (module.mlp_head, module.latency_encoder.net[1], module.latency_encoder.net[3]):
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                nn.init.zeros_(linear.bias)
            nn.init.ones_(module.latency_encoder.net[0].weight)
            nn.init.zeros_(module.latency_encoder.net[0].bias)


class AdaLlavaModel(AdaLlavaPreTrainedModel, LlavaModel):
    """`LlavaModel` with AdaLLaVA's scheduler (`self.scheduler`) and a plan-aware Llama decoder."""

    def __init__(self, config: AdaLlavaConfig):
        AdaLlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = AdaLlamaModel(config.text_config)
        self.scheduler = LatencyScheduler(config) if config.scheduler_type is not None else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        latency: float | torch.Tensor | None = None,
        num_units: int | torch.Tensor | None = None,
        execution_plan: ExecutionPlan | None = None,
        token_reduction_flags: dict | None = None,
        prompt_length: int | None = None,
        **kwargs,
    ) -> AdaLlavaModelOutputWithPast:
        r"""
        token_reduction_flags (`dict`, *optional*):
            Per-call overrides of the config's token-reduction fields (`llavolta_*`, `enable_illava_*`, `illava_*`,
            `token_selecting`), as `AdaLlavaForConditionalGeneration.forward` takes them one by one.
        """
        flags = token_reduction_flags or {}
        overrides = {k: flags.get(k) for k in LLAVOLTA_FIELDS + ILLAVA_LLM_FIELDS}
        vit_overrides = {k: flags.get(k) for k in ILLAVA_VIT_FIELDS}
        token_selecting = flags.get("token_selecting")
        vit = illava_vit_settings(self.config, vit_overrides)
        pre_llm = llavolta_settings(self.config, overrides)
        pre_llm = pre_llm if pre_llm is not None and pre_llm.layer == -1 else None
        if vit is not None and self.training:
            raise ValueError("iLLaVA merging is inference-only: disable enable_illava_vit to train.")
        selecting = check_token_selecting(
            self.config, {**vit_overrides, **overrides, "token_selecting": token_selecting}
        )
        changes_count = vit is not None or pre_llm is not None or selecting != "none"
        if changes_count and pixel_values is not None and mm_encoder_outputs is None:
            stride = pre_llm.stride if pre_llm is not None else None
            mm_encoder_outputs = {
                "image": self.get_image_features(
                    pixel_values, illava_vit=vit, pool_stride=stride, token_selecting=selecting
                )
            }
            pixel_values = None
        image_features = (mm_encoder_outputs or {}).get("image")
        if image_features is not None and input_ids is not None:
            self._check_placeholders(input_ids, image_features)
        scheduling = self._scheduling_state(
            input_ids, inputs_embeds, latency, num_units, execution_plan, past_key_values
        )
        reduction = self._reduction_state(input_ids, overrides, past_key_values, prompt_length)
        outputs = super().forward(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            scheduling=scheduling,
            num_prefix_layers=self.config.num_prefix_layers,
            reduction=reduction,
            return_dict=True,
            **kwargs,
        )
        return AdaLlavaModelOutputWithPast(
            **outputs,
            execution_plan=scheduling.plan if scheduling is not None else None,
            token_reductions=tuple(reduction.records) if reduction is not None and reduction.records else None,
            vit_sources=getattr(image_features, "vit_sources", None) if image_features is not None else None,
        )

    def get_image_features(self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None,
                           image_sizes=None, illava_vit="config", pool_stride="config", token_selecting="config",
                           **kwargs):  # fmt: skip
        """`LlavaModel.get_image_features`; with iLLaVA vision merging (`illava_vit`: settings, or "config" for the
        config's) the CLIP tower merges patches on the way and stops at the feature layer; with LLaVolta before the
        LLM (`pool_stride`) the projected features of each image are average-pooled in windows of that many."""
        settings = illava_vit_settings(self.config) if illava_vit == "config" else illava_vit
        if pool_stride == "config":
            pre_llm = llavolta_settings(self.config)
            pool_stride = pre_llm.stride if pre_llm is not None and pre_llm.layer == -1 else None
        if token_selecting == "config":
            token_selecting = check_token_selecting(self.config)
        if token_selecting != "none":
            return self._prumerge_features(pixel_values, plus=token_selecting == "prumerge+")
        output = self._image_features(
            pixel_values, vision_feature_layer, vision_feature_select_strategy, image_sizes, settings, **kwargs
        )
        if pool_stride is not None:
            pooled = []
            for features in output.pooler_output:
                if features.shape[0] % pool_stride:
                    raise ValueError(
                        f"llavolta_stride={pool_stride} does not divide the {features.shape[0]} image tokens."
                    )
                pooled.append(features.view(-1, pool_stride, features.shape[-1]).mean(1))
            output.pooler_output = pooled
        return output

    def _prumerge_features(self, pixel_values, plus: bool) -> BaseModelOutputWithPooling:
        """PruMerge(+) on the feature layer's patches, scored with the last CLIP layer's queries and keys."""
        tower = self.vision_tower
        hidden_states = tower(pixel_values, output_hidden_states=True).hidden_states
        last = tower.encoder.layers[-1]
        normed = last.layer_norm1(hidden_states[-2])  # the last layer's input, as PruMerge's hooks see it
        patches = hidden_states[self.config.vision_feature_layer][:, 1:]
        selected = prumerge(patches, last.self_attn.q_proj(normed), last.self_attn.k_proj(normed), plus)
        features = [self.multi_modal_projector(f) for f in selected]
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=features)

    def _image_features(self, pixel_values, vision_feature_layer, vision_feature_select_strategy, image_sizes,
                        settings, **kwargs):  # fmt: skip
        if settings is None:
            return super().get_image_features(
                pixel_values,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                image_sizes=image_sizes,
                **kwargs,
            )
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        last = feature_layer_index(layer, self.config.vision_config.num_hidden_layers)
        hidden, sources = clip_forward_with_merging(self.vision_tower, pixel_values, last, settings)
        if strategy == "default":
            hidden = hidden[:, 1:]
        features = self.multi_modal_projector(hidden)
        output = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=list(features))
        if self.config.illava_track_vit_source:
            output.vit_sources = tuple(sources)
        return output

    def _check_placeholders(self, input_ids, image_features) -> None:
        """A clear error when the prompt's image placeholders do not match the (possibly merged) features."""
        features = image_features.pooler_output
        per_image = features[0].shape[0] if len(features) else 0
        count = int((input_ids == self.config.image_token_id).sum())
        if count != sum(f.shape[0] for f in features):
            raise ValueError(
                f"input_ids hold {count} image tokens for {len(features)} image(s) of {per_image} features each. "
                "With iLLaVA vision merging or LLaVolta pooling before the LLM, the LLM receives fewer image tokens "
                "than the processor wrote: use generate "
                "(it shortens the placeholders) or ada_hf.vision_merging.collapse_image_tokens on input_ids."
            )

    def _reduction_state(self, input_ids, overrides: dict, cache, prompt_length=None) -> ReductionState | None:
        """Token-reduction settings for this call (applied at prefill; decoding follows the cache's records)."""
        llavolta = llavolta_settings(self.config, overrides)
        if llavolta is not None and llavolta.layer == -1:
            llavolta = None  # pooled before the LLM, with the image features
        illava = illava_llm_settings(self.config, overrides)
        if llavolta is not None and illava is not None:
            raise ValueError(
                "LLaVolta pooling and iLLaVA LLM merging cannot be combined: LLaVolta pools fixed windows of the full "
                "image grid, which iLLaVA merging breaks up. Enable one of them."
            )
        if illava is not None and self.training:
            raise ValueError("iLLaVA merging is inference-only: disable enable_illava_llm to train.")
        cache_length = cache.get_seq_length() if cache is not None else 0
        records = list(getattr(cache, "ada_reductions", None) or []) if cache_length > 0 else []
        image_mask = input_ids == self.config.image_token_id if input_ids is not None else None
        active = llavolta is not None or illava is not None
        if active and input_ids is None and cache_length == 0:
            raise ValueError(
                "Token reduction finds image tokens in `input_ids`; pass `input_ids`, not `inputs_embeds`."
            )
        if active and cache_length > 0 and image_mask is not None and image_mask.any():
            raise ValueError(
                "Image tokens are reduced at prefill, but these image tokens continue a non-empty cache. Start from a "
                "fresh cache, or turn token reduction off for this call."
            )
        if not active and not records:
            return None
        return ReductionState(llavolta, illava, image_mask, records, prompt_length=prompt_length)

    def _scheduling_state(self, input_ids, inputs_embeds, latency, num_units, execution_plan, cache):
        """Apply the one rule: the scheduler runs exactly when `input_ids` holds one `<latency>` token per row."""
        budget_given = latency is not None or num_units is not None
        if self.scheduler is None:
            if budget_given or execution_plan is not None:
                raise ValueError(
                    "This model has no latency scheduler (config.scheduler_type is None): it always runs in full. "
                    "Drop `latency`/`num_units`, or load an AdaLLaVA checkpoint (scheduler_type 'L' or 'H')."
                )
            return None
        batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        token_id = self.config.latency_token_id
        cached_plan = getattr(cache, "ada_execution_plan", None) if cache is not None else None
        cache_length = cache.get_seq_length() if cache is not None else 0
        if cache_length == 0:
            cached_plan = None
        if execution_plan is None:
            execution_plan = cached_plan
        elif (
            cached_plan is not None
            and execution_plan is not cached_plan
            and not execution_plan.same_schedule(cached_plan)
        ):  # generate hands back the cache's own plan at every decode step: no need to compare it
            raise ValueError("`execution_plan` differs from the plan the cache was made with; start a fresh cache.")
        if execution_plan is not None and execution_plan.batch_size != batch_size:
            raise ValueError(
                f"The execution plan has {execution_plan.batch_size} rows but the input has {batch_size}: a plan is "
                "made for one batch."
            )

        counts = None
        if input_ids is not None and token_id is not None:
            counts = (input_ids == token_id).sum(dim=1)
        if counts is None or not counts.any():
            if execution_plan is not None:
                if budget_given and not self.training:
                    units = self.scheduler.resolve_units(batch_size, self.dtype, self.device, latency, num_units)
                    if not torch.equal(units.cpu(), execution_plan.units.cpu()):
                        raise ValueError(
                            f"The budget (units {units.tolist()}) differs from the plan this cache was made with "
                            f"(units {execution_plan.units.tolist()}): the plan is fixed at prefill. Start a fresh "
                            "cache to change the budget."
                        )
                return SchedulingState(self.scheduler, execution_plan.units, plan=execution_plan)
            if budget_given:
                if input_ids is None:
                    raise ValueError(
                        "A budget needs the `<latency>` token in `input_ids`, but only `inputs_embeds` were given. "
                        "Pass `input_ids` (generate appends the token for you) or an `execution_plan`."
                    )
                raise ValueError(
                    f"A budget was given but no row of input_ids holds the <latency> token (id {token_id}); rows "
                    f"{list(range(batch_size))} lack it. forward never inserts it: append it to each row (generate "
                    "does this for you)."
                )
            return None

        bad = (counts != 1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"Rows {bad} of input_ids hold {[int(counts[i]) for i in bad]} <latency> tokens (id {token_id}); the "
                "scheduler needs exactly one per row."
            )
        positions = (input_ids == token_id).int().argmax(dim=1)
        if execution_plan is not None:
            units = execution_plan.units
        elif cache_length > 0:
            raise ValueError(
                "input_ids hold a <latency> token but the cache already holds tokens: a plan is fixed at prefill. "
                "Start from a fresh cache."
            )
        elif budget_given:
            units = self.scheduler.resolve_units(batch_size, self.dtype, self.device, latency, num_units)
        elif self.training:
            units = self.scheduler.sample_units(batch_size, self.device)
        else:
            raise ValueError(
                f"Rows {list(range(batch_size))} hold a <latency> token but no budget was given: pass `latency=` "
                "(0, 1] or `num_units=` (eval mode samples no budget)."
            )
        return SchedulingState(
            self.scheduler,
            units,
            positions=positions,
            latency_embeds=self.scheduler.encode(units, self.dtype),
            plan=execution_plan,
            tau=self.config.scheduler_tau,
        )


# Set while `generate` runs, so the plan made at prefill can be reported in its output.
_GENERATION_PLANS: contextvars.ContextVar[list | None] = contextvars.ContextVar("ada_generation_plans", default=None)


class AdaLlavaForConditionalGeneration(AdaLlavaPreTrainedModel, LlavaForConditionalGeneration, GenerationMixin):
    """
    LLaVA-1.5 that runs the share of its decoder compute a budget buys:
    `model.generate(**inputs, latency=0.6)` or one budget per row, `latency=torch.tensor([1.0, 0.75, 0.5])`.
    Without a budget (and `config.default_latency` None) it computes exactly what `LlavaForConditionalGeneration` does.
    """

    def __init__(self, config: AdaLlavaConfig):
        AdaLlavaPreTrainedModel.__init__(self, config)
        self.model = AdaLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self._suppress_placeholder_tokens()

    def _suppress_placeholder_tokens(self) -> None:
        """`<image>`, `<latency>` and padding are inputs only: never generate them (a sampled `<latency>` would look
        like a request for a new plan)."""
        if self.generation_config is None:
            return
        vocab = self.config.text_config.vocab_size
        ids = {self.config.image_token_id, self.config.latency_token_id, self.config.text_config.pad_token_id}
        ids = {i for i in ids if i is not None and 0 <= i < vocab}
        suppressed = set(self.generation_config.suppress_tokens or []) | ids
        self.generation_config.suppress_tokens = sorted(suppressed) or None

    @property
    def scheduler(self) -> LatencyScheduler | None:
        return self.model.scheduler

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        latency: float | torch.Tensor | None = None,
        num_units: int | torch.Tensor | None = None,
        execution_plan: ExecutionPlan | None = None,
        llavolta_grouping: str | None = None,
        llavolta_layer: int | None = None,
        llavolta_stride: int | None = None,
        llavolta_position_mode: str | None = None,
        enable_illava_llm: bool | None = None,
        illava_llm_k: int | list[int] | str | None = None,
        illava_llm_r: float | int | None = None,
        prompt_length: int | None = None,
        enable_illava_vit: bool | None = None,
        illava_vit_k: int | list[int] | str | None = None,
        illava_vit_r: int | float | None = None,
        token_reduction: str | None = None,
        token_selecting: str | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AdaLlavaCausalLMOutputWithPast | tuple:
        r"""
        latency (`float` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
            Share of the compute to run, in (0, 1], one value or one per row. Needs one `<latency>` token per row in
            `input_ids` (`generate` appends it).
        num_units (`int` or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Instead of `latency`: the number of suffix units (layers for L, `r`-head slices for H) to run.
        execution_plan (`ExecutionPlan`, *optional*):
            A plan from an earlier output, to continue under it (decoding reuses the prefill plan).
        llavolta_grouping, llavolta_layer, llavolta_stride, llavolta_position_mode:
            Per-call overrides of the config's LLaVolta settings (`"avgpool1d"` pools each image's tokens by
            `llavolta_stride` at the input of decoder layer `llavolta_layer`). Labels are pooled to match.
        enable_illava_llm, illava_llm_k, illava_llm_r:
            Per-call overrides of iLLaVA's LLM-stage merging (inference only).
        token_reduction (`str`, *optional*):
            A preset of published settings by name (`TOKEN_REDUCTION_PRESETS`: "llavolta-heavy", "llavolta-light",
            "illava-image", "illava-video"); flags given explicitly win.
        prompt_length (`int`, *optional*):
            Length of the prompt within `input_ids` (`generate` sets it): iLLaVA scores image tokens by the attention
            of the prompt's last token, also when later tokens are recomputed without a cache.
        """
        flags = expand_preset(
            token_reduction,
            dict(
                llavolta_grouping=llavolta_grouping,
                llavolta_layer=llavolta_layer,
                llavolta_stride=llavolta_stride,
                llavolta_position_mode=llavolta_position_mode,
                enable_illava_llm=enable_illava_llm,
                illava_llm_k=illava_llm_k,
                illava_llm_r=illava_llm_r,
                enable_illava_vit=enable_illava_vit,
                illava_vit_k=illava_vit_k,
                illava_vit_r=illava_vit_r,
            ),
        )
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            latency=latency,
            num_units=num_units,
            execution_plan=execution_plan,
            prompt_length=prompt_length,
            token_reduction_flags=dict(flags, token_selecting=token_selecting),
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        for record in outputs.token_reductions or ():
            if labels is not None and labels.shape[1] == record.source_length:  # a pooled window's label: ignored
                labels = labels.to(record.kept.device).gather(1, record.kept)
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        output = AdaLlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            execution_plan=outputs.execution_plan,
            token_reductions=outputs.token_reductions,
            vit_sources=outputs.vit_sources,
        )
        return output.to_tuple() if return_dict is False else output

    # ----------------------------------------------------------------------------------------------------------------
    # Generation
    def prepare_inputs_for_generation(self, input_ids, is_first_iteration=False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if model_inputs.get("execution_plan") is not None:
            # Decoding reuses the plan made at prefill; the budget already shaped it.
            model_inputs.pop("latency", None)
            model_inputs.pop("num_units", None)
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        plan = getattr(outputs, "execution_plan", None)
        if plan is not None:
            model_kwargs["execution_plan"] = plan
        record = _GENERATION_PLANS.get()
        if record is not None and not record:  # the prefill's outputs: what the request ran
            record.append((plan, getattr(outputs, "token_reductions", None), getattr(outputs, "vit_sources", None)))
        return model_kwargs

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        r"""
        [`~GenerationMixin.generate`] with a compute budget.

        Args:
            latency (`float` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Share of the compute to run, in (0, 1]; defaults to `config.default_latency`. The `<latency>` token is
                appended to every row (and dropped from the returned sequences) unless every row already holds it.
            num_units (`int` or `torch.LongTensor`, *optional*):
                Instead of `latency`, the number of suffix units to run per row.

        With `return_dict_in_generate=True` the output also carries the plan: `execution_plan` (heads run per layer,
        -1 skipped), `mlp_groups_executed`, `executed_units`, `latency_effective`, `heads_computed` and
        `mlp_groups_computed`.
        """
        latency, num_units = kwargs.pop("latency", None), kwargs.pop("num_units", None)
        hardware = kwargs.pop("hardware", None)
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        target = parse_time_target(latency) if isinstance(latency, str) else None
        cost_model = CostModel(self.config, hardware, dtype_bits(self.dtype)) if hardware or target else None
        if target is not None and num_units is not None:
            raise ValueError(f"Pass either latency={latency!r} or num_units, not both.")
        if self.scheduler is not None and latency is None and num_units is None:
            latency = self.config.default_latency
        budget_given = latency is not None or num_units is not None
        if self.scheduler is None and budget_given:
            raise ValueError(
                "This model has no latency scheduler (config.scheduler_type is None); drop `latency`/`num_units`."
            )
        if kwargs.get("token_reduction") is not None:  # expand here: generate must see the vision-merging flags
            kwargs = expand_preset(kwargs.pop("token_reduction"), kwargs)
        vit, pre_llm, selecting = self._pre_llm_reductions(kwargs)
        prompt_tokens = None
        if input_ids is not None:
            mask = kwargs.get("attention_mask")
            prompt_tokens = mask.sum(1) if mask is not None else torch.full_like(input_ids[:, 0], input_ids.shape[1])
        if (vit is not None or pre_llm is not None or selecting != "none") and input_ids is not None:
            input_ids, kwargs = self._collapse_image_tokens(input_ids, kwargs, vit, pre_llm, selecting)
        targets = None
        if target is not None:
            if self.scheduler is None or input_ids is None:
                raise ValueError(f"latency={latency!r} needs a model with a scheduler and `input_ids`.")
            num_units, targets = self._units_for_target(
                input_ids, kwargs, generation_config, prompt_tokens, (vit, pre_llm, selecting), cost_model, target
            )
            latency = None
        appended = False
        if budget_given:
            if input_ids is None:
                raise ValueError(
                    "generate with a budget needs `input_ids`: the budget enters the model as a <latency> token, which "
                    "an `inputs_embeds`-only call cannot carry."
                )
            self.scheduler.resolve_units(input_ids.shape[0], self.dtype, self.device, latency, num_units)
            input_ids, kwargs, appended = self._append_latency_token(input_ids, kwargs)
            kwargs["latency"], kwargs["num_units"] = latency, num_units
        if input_ids is not None:
            kwargs.setdefault("prompt_length", input_ids.shape[1] - (1 if appended else 0))
        plans: list = []
        token = _GENERATION_PLANS.set(plans)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            output = super().generate(input_ids, generation_config=generation_config, **kwargs)
        finally:
            _GENERATION_PLANS.reset(token)
        plan, reductions, vit_sources = plans[0] if plans else (None, None, None)
        if plan is not None:
            plan.release()  # sliced weights live only as long as the request
        batch_size = input_ids.shape[0] if input_ids is not None else None
        if isinstance(output, torch.Tensor):
            return _drop_column(output, input_ids.shape[1] - 1) if appended else output
        if appended:
            output.sequences = _drop_column(output.sequences, input_ids.shape[1] - 1)
        efficiency = None
        if input_ids is not None:
            width = input_ids.shape[1] - (1 if appended else 0)
            config = generation_config if generation_config is not None else self.generation_config
            eos = kwargs.get("eos_token_id", config.eos_token_id)
            workloads = row_workloads(
                self.config, input_ids, kwargs.get("attention_mask"), prompt_tokens, vit,
                pre_llm.stride if pre_llm is not None else None, selecting, None, None, reductions or (),
            )  # fmt: skip
            rows = output.sequences.shape[0]
            source_rows = [i // (rows // batch_size) for i in range(rows)]
            plan_rows = None
            if plan is not None:
                plan_rows = [r * (plan.batch_size // batch_size) for r in source_rows]
            peak = torch.cuda.max_memory_allocated(self.device) if cuda else None
            efficiency = efficiency_reports(
                self.config, cost_model or CostModel(self.config, None, dtype_bits(self.dtype)), workloads,
                source_rows, plan, plan_rows, generated_counts(output.sequences, width, eos), peak, targets,
            )  # fmt: skip
        return _with_report(output, plan, batch_size, reductions, vit_sources, efficiency)

    def _units_for_target(self, input_ids, kwargs, generation_config, prompt_tokens, pre_llm_flags, cost_model, target):
        """Per row, the most units whose predicted time for this request fits `target` seconds."""
        vit, pre_llm, selecting = pre_llm_flags
        config = generation_config if generation_config is not None else self.generation_config
        new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
        if new_tokens is None:
            new_tokens = max(kwargs.get("max_length", config.max_length) - input_ids.shape[1], 1)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        if not (input_ids == self.config.latency_token_id).any():  # predict with the <latency> token generate adds
            input_ids = torch.cat([input_ids, torch.full_like(input_ids[:, :1], self.config.latency_token_id)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        reduction = self.model._reduction_state(input_ids, kwargs, None)
        workloads = row_workloads(
            self.config, input_ids, mask, prompt_tokens, vit, pre_llm.stride if pre_llm is not None else None,
            selecting, reduction.llavolta if reduction else None, reduction.illava_llm if reduction else None,
        )  # fmt: skip
        units, targets = [], {}
        for row, work in enumerate(workloads):
            chosen, _ = choose_units(self.config, cost_model, work, self.scheduler.max_units, new_tokens, target)
            units.append(chosen)
            targets[row] = target
        return torch.tensor(units, dtype=torch.long), targets

    def _collapse_image_tokens(self, input_ids, kwargs: dict, vit, pre_llm, selecting="none"):
        """Prompts carry a full grid of placeholders per image; vision merging and pooling before the LLM leave fewer
        features: shorten each run to match (re-padding on the left) and encode the images here, with this call's
        settings."""
        stride = pre_llm.stride if pre_llm is not None else None
        per_image, merged = image_token_counts(self.config, vit, stride)
        features = None
        if kwargs.get("pixel_values") is not None and kwargs.get("mm_encoder_outputs") is None:
            features = self.model.get_image_features(
                kwargs.pop("pixel_values"), illava_vit=vit, pool_stride=stride, token_selecting=selecting
            )
            kwargs["mm_encoder_outputs"] = {"image": features}
        if selecting != "none":  # PruMerge: each image its own count
            if features is None:
                raise ValueError("PruMerge decides the image token counts from the pixels: pass `pixel_values`.")
            merged = [f.shape[0] for f in features.pooler_output]
        if merged != per_image and (input_ids == self.config.image_token_id).sum() % per_image == 0:
            pad = self.config.text_config.pad_token_id
            pad = pad if pad is not None else self.generation_config.pad_token_id
            if pad is None:
                raise ValueError(
                    "Shortening image placeholders needs a pad token id (config.text_config.pad_token_id)."
                )
            input_ids, mask = collapse_image_tokens(
                input_ids, kwargs.get("attention_mask"), self.config.image_token_id, per_image, merged, pad
            )
            kwargs = {**kwargs, "attention_mask": mask}
        return input_ids, kwargs

    def _append_latency_token(self, input_ids: torch.Tensor, kwargs: dict):
        token_id = self.config.latency_token_id
        if token_id is None:
            raise ValueError(
                "config.latency_token_id is not set: add a <latency> token to the tokenizer and set its id in the "
                "config before generating with a budget."
            )
        counts = (input_ids == token_id).sum(dim=1)
        if (counts == 1).all():
            return input_ids, kwargs, False
        if counts.any():
            rows = (counts != 1).nonzero().flatten().tolist()
            raise ValueError(
                f"Rows {rows} of input_ids hold {[int(counts[r]) for r in rows]} <latency> tokens while others hold "
                "one: pass every row with exactly one <latency> token, or none (generate then appends it)."
            )
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim == 2 and (mask[:, -1] == 0).any():
            rows = (mask[:, -1] == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"Rows {rows} are right-padded: the <latency> token must follow each prompt. Pad on the left "
                "(tokenizer.padding_side = 'left') for batched generation."
            )
        if kwargs.get("position_ids") is not None:
            raise ValueError("Pass no `position_ids` when generate appends the <latency> token: it derives them.")
        column = torch.full_like(input_ids[:, :1], token_id)
        input_ids = torch.cat([input_ids, column], dim=1)
        if mask is not None:
            kwargs = {**kwargs, "attention_mask": torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)}
        for key in ("mm_token_type_ids", "token_type_ids"):
            if kwargs.get(key) is not None:
                kwargs[key] = torch.cat([kwargs[key], torch.zeros_like(kwargs[key][:, :1])], dim=1)
        return input_ids, kwargs, True

    # ----------------------------------------------------------------------------------------------------------------
    # Introspection
    def budget_table(self) -> list[dict]:
        """Every budget the model can tell apart, quantised in the model dtype (see `LatencyScheduler.budget_table`)."""
        if self.scheduler is None:
            raise ValueError("This model has no latency scheduler (config.scheduler_type is None).")
        return self.scheduler.budget_table(self.dtype)

    def image_tokens_per_image(self, token_reduction: str | None = None, **flags) -> int:
        """Image placeholders per image that `forward` expects with these token-reduction settings (config, then
        `token_reduction` preset and flags, as `generate` takes them): fewer than the full grid when vision-encoder
        merging or LLaVolta pooling before the LLM is on. Pass it to the processor as `num_image_tokens=`.

        Raises:
            `ValueError`: for PruMerge, whose count depends on each image (`generate` collapses the prompt itself).
        """
        vit, pre_llm, selecting = self._pre_llm_reductions(expand_preset(token_reduction, flags))
        if selecting != "none":
            raise ValueError(
                f"token_selecting={selecting!r} chooses a different number of tokens for every image: write the full "
                "grid of placeholders and let `generate` collapse them."
            )
        return image_token_counts(self.config, vit, pre_llm.stride if pre_llm is not None else None)[1]

    def _pre_llm_reductions(self, flags: dict):
        """The reductions that change the image-token count before the LLM, with the config then `flags` in force:
        iLLaVA vision merging, LLaVolta pooling before the LLM (layer -1; None otherwise) and PruMerge's mode."""
        vit = illava_vit_settings(self.config, {k: flags.get(k) for k in ILLAVA_VIT_FIELDS})
        pre_llm = llavolta_settings(self.config, {k: flags.get(k) for k in LLAVOLTA_FIELDS})
        pre_llm = pre_llm if pre_llm is not None and pre_llm.layer == -1 else None
        selecting = check_token_selecting(self.config, {k: flags.get(k) for k in (
            "token_selecting", "enable_illava_vit", "llavolta_grouping")})  # fmt: skip
        return vit, pre_llm, selecting


def _drop_column(sequences: torch.Tensor, column: int) -> torch.Tensor:
    return torch.cat([sequences[:, :column], sequences[:, column + 1 :]], dim=1)


def _with_report(output, plan: ExecutionPlan | None, batch_size: int, reductions, vit_sources, efficiency=None):
    """The generate output, as an Ada subclass carrying what the request ran: its plan, token reductions and cost."""
    report = dict(token_reductions=reductions, vit_sources=vit_sources, efficiency=efficiency)
    if plan is not None:
        rows = output.sequences.shape[0]
        # Rows were expanded (beams, num_return_sequences) before prefill; every copy of a sample shares its plan.
        plan_rows = torch.arange(batch_size) * (plan.batch_size // batch_size)
        plan_rows = plan_rows.repeat_interleave(rows // batch_size)
        report.update(
            execution_plan=plan.heads_executed()[plan_rows],
            mlp_groups_executed=plan.mlp_groups_executed()[plan_rows],
            executed_units=plan.executed_units()[plan_rows],
            latency_effective=plan.latency_effective()[plan_rows],
            heads_computed=plan.heads_computed(),
            mlp_groups_computed=plan.mlp_groups_computed(),
        )
    cls = (
        AdaLlavaGenerateBeamDecoderOnlyOutput
        if isinstance(output, GenerateBeamDecoderOnlyOutput)
        else AdaLlavaGenerateDecoderOnlyOutput
    )
    return cls(**output, **report)


AUTO_MAP = {
    "AutoConfig": "configuration_ada_llava.AdaLlavaConfig",
    "AutoModel": "modeling_ada_llava.AdaLlavaForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_ada_llava.AdaLlavaForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_ada_llava.AdaLlavaForConditionalGeneration",
    "AutoProcessor": "processing_ada_llava.AdaLlavaProcessor",
}
# `save_pretrained` copies this file and its relative imports next to the weights, and writes AUTO_MAP.
AdaLlavaConfig.register_for_auto_class()
AdaLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "AdaLlavaConfig",
    "AdaLlavaForConditionalGeneration",
    "AdaLlavaModel",
    "AdaLlavaPreTrainedModel",
    "ExecutionPlan",
]
