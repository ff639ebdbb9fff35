"""An analytic cost model of one request: FLOPs, bytes moved, KV-cache bytes and roofline time, for the whole model.

Covers what LLM-Viewer (used by the original AdaLLaVA evaluation) leaves out: the CLIP tower, the projector, the
scheduler, token reductions (iLLaVA merging, LLaVolta pooling, PruMerge) and per-row plans of either variant.

Conventions (the ones `torch.utils.flop_counter.FlopCounterMode` uses, so the two can be compared):
- `flops` counts matmuls (linear layers, attention products, the patch convolution) at 2 per multiply-add. Attention
  products count the full query x key matrix even when causal, as the counter does for eager/math attention.
- `other_flops` counts what the counter does not see, with fixed per-element costs: softmax 5, RMSNorm 4, LayerNorm
  5, SiLU 4 (+1 for the gate product), GELU 8, RoPE 3 per rotated element, residual adds 1.
- `bytes` is what an op reads and writes (weights, activations, cached keys/values) at the request's operand width.

Model code: `generate` uses it for millisecond budgets and the efficiency report, so it travels with remote code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .hardware import Hardware, get_hardware
from .planned_layer import mlp_group_sizes

BYTES_PER_ELEMENT = {32: 4, 16: 2, 8: 1}


def dtype_bits(dtype) -> int:
    """Operand width of a torch dtype for the cost model: 32, 16 (fp16/bf16) or 8."""
    return min(max(dtype.itemsize * 8, 8), 32)


@dataclass
class Cost:
    """Work of one stage: matmul FLOPs, other FLOPs, bytes moved, and roofline seconds (0 without hardware)."""

    flops: int = 0
    other_flops: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.flops + other.flops,
            self.other_flops + other.other_flops,
            self.bytes + other.bytes,
            self.seconds + other.seconds,
        )

    def times(self, n: int) -> Cost:
        return Cost(self.flops * n, self.other_flops * n, self.bytes * n, self.seconds * n)


@dataclass(frozen=True)
class LayerWork:
    """One decoder layer's share of a forward call: `tokens` queries over `context` keys with `heads` query heads
    (0: skipped), `kv_heads` key/value heads and `neurons` MLP neurons."""

    tokens: int
    context: int
    heads: int
    kv_heads: int
    neurons: int


@dataclass
class RequestCost:
    """The modelled cost of one request (one row), stage by stage.

    `stages` keys: "vision", "projector", "scheduler", "llm_prefill", "lm_head_prefill", "llm_decode",
    "lm_head_decode". Prefill is everything up to the first generated token.
    """

    stages: dict[str, Cost]
    llm_prompt_tokens: int
    generated_tokens: int
    image_tokens: int
    layer_tokens: list[int]
    kv_cache_bytes: int
    peak_memory_bytes: int
    hardware: str | None = None
    bits: int = 16

    @property
    def prefill(self) -> Cost:
        return sum((self.stages[k] for k in PREFILL_STAGES), Cost())

    @property
    def decode(self) -> Cost:
        return self.stages["llm_decode"] + self.stages["lm_head_decode"]

    @property
    def total(self) -> Cost:
        return self.prefill + self.decode


PREFILL_STAGES = ("vision", "projector", "scheduler", "llm_prefill", "lm_head_prefill")


class CostModel:
    """
    Costs of the parts of an AdaLLaVA / LLaVA-1.5 model, from its config alone.

    Args:
        config: an `AdaLlavaConfig` (or any Llava-style config with `text_config` and `vision_config`).
        hardware: a name of `hardware.HARDWARE`, "local", a `Hardware`, or None (no times).
        bits: operand width: 32, 16 or 8 (weights, activations and cache alike).
        flash_attention: attention that never writes the score matrix to memory (bytes only; FLOPs are the same).
    """

    def __init__(self, config, hardware: str | Hardware | None = None, bits: int = 16, flash_attention: bool = False):
        if bits not in BYTES_PER_ELEMENT:
            raise ValueError(f"bits={bits!r} is not supported: use one of {sorted(BYTES_PER_ELEMENT)}.")
        self.config = config
        self.hardware = get_hardware(hardware) if hardware is not None else None
        self.bits = bits
        self.nbytes = BYTES_PER_ELEMENT[bits]
        self.flash_attention = flash_attention
        text, vision = config.text_config, config.vision_config
        self.attn_implementation = getattr(text, "_attn_implementation", None) or "eager"
        self._cache_bw = (self.hardware.cache_bandwidth or None) if self.hardware is not None else None
        self.d = text.hidden_size
        self.num_heads = text.num_attention_heads
        self.num_kv_heads = text.num_key_value_heads or text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or self.d // self.num_heads
        self.intermediate = text.intermediate_size
        self.vocab = text.vocab_size
        self.num_layers = text.num_hidden_layers
        self.vd = vision.hidden_size
        self.v_intermediate = vision.intermediate_size
        self.v_layers = vision.num_hidden_layers
        self.patch = vision.patch_size
        self.channels = getattr(vision, "num_channels", 3)
        self.patches = (vision.image_size // vision.patch_size) ** 2

    # ----------------------------------------------------------------------------------------------------------------
    # Ops
    def _op(self, cost: Cost, flops: int = 0, other: int = 0, nbytes: int = 0, throughput: float | None = None,
            time_bytes: int | None = None, bandwidth: float | None = None) -> None:  # fmt: skip
        """Add one op; its time is the roofline at `throughput` (default: the peak) and `bandwidth` (default: the
        memory bandwidth) over `time_bytes` (default: `nbytes`)."""
        cost.flops += flops
        cost.other_flops += other
        cost.bytes += nbytes
        if self.hardware is not None:
            moved = nbytes if time_bytes is None else time_bytes
            cost.seconds += self.hardware.op_seconds(flops + other, moved, self.bits, throughput, bandwidth)

    def _linear(self, cost: Cost, tokens: int, fan_in: int, fan_out: int) -> None:
        weight = fan_in * fan_out
        speed = self.hardware.matmul_throughput(self.bits, tokens, fan_in, fan_out) if self.hardware else None
        self._op(cost, 2 * tokens * weight, 0, (weight + tokens * (fan_in + fan_out)) * self.nbytes, speed)

    def _elementwise(self, cost: Cost, elements: int, per_element: int) -> None:
        self._op(cost, 0, elements * per_element, 2 * elements * self.nbytes)

    def _attention(self, cost: Cost, tokens: int, context: int, heads: int, kv_heads: int, head_dim: int) -> None:
        scores = tokens * context * heads
        io = (2 * tokens * heads * head_dim + 2 * context * kv_heads * head_dim) * self.nbytes
        if self.flash_attention:
            self._op(cost, 4 * scores * head_dim, 5 * scores, io)
            return
        fused = self._fused_attention_speed(head_dim)
        if fused is not None:
            # One kernel (sdpa) at its measured speeds; the score matrix it may keep in cache is still counted in
            # `bytes`, as the eager path writes it, so that `bytes` does not depend on the hardware.
            self._op(cost, 4 * scores * head_dim, 5 * scores, io + 4 * scores * self.nbytes, fused, time_bytes=io,
                     bandwidth=self._cache_bw)  # fmt: skip
            return
        self._op(cost, 2 * scores * head_dim, 0, io // 2 + scores * self.nbytes)  # q @ k^T
        self._op(cost, 0, 5 * scores, 2 * scores * self.nbytes)  # softmax
        self._op(cost, 2 * scores * head_dim, 0, io // 2 + scores * self.nbytes)  # probs @ v

    def _fused_attention_speed(self, head_dim: int) -> float | None:
        """The measured sdpa throughput when the hardware has one and the model runs a fused attention kernel."""
        if self.hardware is None or self.attn_implementation == "eager":
            return None
        return self.hardware.attention_throughput(self.bits, head_dim)

    # ----------------------------------------------------------------------------------------------------------------
    # Parts
    def vision(self, images: int, last_layer: int | None = None, merges: dict[int, int] | None = None,
               post_layernorm: bool = True) -> Cost:  # fmt: skip
        """CLIP on `images` images. `last_layer`: the last layer run (default: all, as transformers' Llava runs the
        whole tower); `merges`: layer -> patch tokens removed after that layer's attention (iLLaVA)."""
        cost = Cost()
        last = self.v_layers - 1 if last_layer is None else last_layer
        n = self.patches + 1
        self._op(cost, 2 * images * self.patches * self.vd * self.channels * self.patch**2, 0,
                 images * (self.channels * self.patch**2 * (self.patches + self.vd)) * self.nbytes)  # fmt: skip
        self._elementwise(cost, images * n * self.vd, 1 + 5)  # position embeddings, pre-LayerNorm
        for layer in range(last + 1):
            tokens = images * n
            self._elementwise(cost, tokens * self.vd, 5)
            for _ in range(3):
                self._linear(cost, tokens, self.vd, self.vd)
            heads = self.config.vision_config.num_attention_heads
            for _ in range(images):
                self._attention(cost, n, n, heads, heads, self.vd // heads)
            self._linear(cost, tokens, self.vd, self.vd)
            self._elementwise(cost, tokens * self.vd, 1)
            n -= (merges or {}).get(layer, 0)
            tokens = images * n
            self._elementwise(cost, tokens * self.vd, 5)
            self._linear(cost, tokens, self.vd, self.v_intermediate)
            self._elementwise(cost, tokens * self.v_intermediate, 8)
            self._linear(cost, tokens, self.v_intermediate, self.vd)
            self._elementwise(cost, tokens * self.vd, 1)
        if post_layernorm and last == self.v_layers - 1:
            self._elementwise(cost, images * self.vd, 5)  # on the pooled CLS token
        return cost

    def prumerge(self, images: int, kept: int) -> Cost:
        """PruMerge's extra work per request: the last layer's query/key projections of every token, the CLS
        attention, and the key similarities of the `kept` patches (per image, on average) to every patch."""
        cost = Cost()
        n = self.patches + 1
        self._elementwise(cost, images * n * self.vd, 5)
        self._linear(cost, images * n, self.vd, self.vd)
        self._linear(cost, images * n, self.vd, self.vd)
        self._op(cost, images * 2 * n * self.vd, images * 5 * n, images * 2 * n * self.vd * self.nbytes)
        self._op(cost, images * 2 * kept * self.patches * self.vd, 0,
                 images * (kept + self.patches) * self.vd * self.nbytes)  # fmt: skip
        return cost

    def projector(self, tokens: int) -> Cost:
        """The two-layer GELU projector on `tokens` image features."""
        cost = Cost()
        self._linear(cost, tokens, self.vd, self.d)
        self._elementwise(cost, tokens * self.d, 8)
        self._linear(cost, tokens, self.d, self.d)
        return cost

    def scheduler(self) -> Cost:
        """One row's latency encoder (sinusoid, LayerNorm, Linear, GELU, Linear) and scheduler head."""
        cost = Cost()
        embed = self.config.latency_embed_dim
        self._elementwise(cost, embed, 5)
        self._linear(cost, 1, embed, self.d)
        self._elementwise(cost, self.d, 8)
        self._linear(cost, 1, self.d, self.d)
        if self.config.scheduler_type == "L":
            outputs = self.num_layers - self.config.num_prefix_layers
        else:
            outputs = (self.num_layers - self.config.num_prefix_layers) * 2 * self.num_heads
        self._linear(cost, 1, self.d, outputs)
        return cost

    def decoder_layer(self, work: LayerWork) -> Cost:
        """One Llama decoder layer (pre-norm attention + SiLU-GLU MLP) running `work.heads` heads and
        `work.neurons` neurons, its new keys and values written to the cache."""
        cost = Cost()
        if work.heads <= 0 and work.neurons <= 0:
            return cost
        t, hd = work.tokens, self.head_dim
        self._elementwise(cost, t * self.d, 4)
        self._linear(cost, t, self.d, work.heads * hd)
        self._linear(cost, t, self.d, work.kv_heads * hd)
        self._linear(cost, t, self.d, work.kv_heads * hd)
        self._elementwise(cost, t * (work.heads + work.kv_heads) * hd, 3)
        # transformers' DynamicCache appends by concatenation: every call reads the cached keys/values and writes
        # them back with the new ones (at decode this copy moves as many bytes as the attention reads).
        self._op(cost, 0, 0, 2 * (2 * work.context - t) * work.kv_heads * hd * self.nbytes, bandwidth=self._cache_bw)
        self._attention(cost, t, work.context, work.heads, work.kv_heads, hd)
        self._linear(cost, t, work.heads * hd, self.d)
        self._elementwise(cost, t * self.d, 1 + 4)  # residual add, post-attention norm
        self._linear(cost, t, self.d, work.neurons)
        self._linear(cost, t, self.d, work.neurons)
        self._elementwise(cost, t * work.neurons, 4 + 1)
        self._linear(cost, t, work.neurons, self.d)
        self._elementwise(cost, t * self.d, 1)
        return cost

    def illava_scoring(self, tokens: int) -> Cost:
        """iLLaVA's scores before a merge layer: the last prompt token's attention over `tokens` keys."""
        cost = Cost()
        hd = self.head_dim
        self._elementwise(cost, tokens * self.d, 4)
        self._linear(cost, 1, self.d, self.num_heads * hd)
        self._linear(cost, tokens, self.d, self.num_kv_heads * hd)
        self._elementwise(cost, (tokens * self.num_kv_heads + self.num_heads) * hd, 3)
        self._op(cost, 2 * self.num_heads * hd * tokens, 5 * self.num_heads * tokens,
                 (tokens * self.num_kv_heads * hd + self.num_heads * tokens) * self.nbytes)  # fmt: skip
        return cost

    def lm_head(self, tokens: int, normed_tokens: int | None = None) -> Cost:
        """The final RMSNorm (over `normed_tokens`, default `tokens`) and the LM head over `tokens` positions."""
        cost = Cost()
        self._elementwise(cost, (tokens if normed_tokens is None else normed_tokens) * self.d, 4)
        self._linear(cost, tokens, self.d, self.vocab)
        return cost

    # ----------------------------------------------------------------------------------------------------------------
    # Whole requests
    def layer_works(
        self, tokens: list[int], context: list[int], heads: list[int], neurons: list[int]
    ) -> list[LayerWork]:
        """Per-layer work from per-layer counts; a layer running every head keeps the config's key/value heads (GQA),
        a sliced one computes keys and values for its own heads only."""
        works = []
        for t, c, h, n in zip(tokens, context, heads, neurons):
            h, n = max(h, 0), max(n, 0)
            kv = self.num_kv_heads if h == self.num_heads else h
            works.append(LayerWork(t, c, h, kv, n))
        return works

    def request(
        self,
        llm_tokens: int,
        new_tokens: int = 1,
        *,
        images: int = 0,
        image_tokens: int | None = None,
        projector_tokens: int | None = None,
        heads: list[int] | None = None,
        neurons: list[int] | None = None,
        reductions: dict[int, int] | None = None,
        illava_scoring_layers: tuple[int, ...] = (),
        vision_last_layer: int | None = None,
        vision_merges: dict[int, int] | None = None,
        prumerge_kept: int | None = None,
        logits_tokens: int = 1,
        scheduler: bool | None = None,
    ) -> RequestCost:
        """
        One request of one row.

        Args:
            llm_tokens: the sequence entering the LLM at prefill (after reductions before the LLM; the `<latency>`
                token counted once).
            new_tokens: tokens generated; the first comes from the prefill, each further one from a decode step.
            images / image_tokens: images encoded, and image features entering the LLM for all of them.
            projector_tokens: features the projector maps (default `image_tokens`; more when pooled before the LLM).
            heads / neurons: per layer, query heads and MLP neurons run (-1 or 0: skipped); default: all.
            reductions: layer -> sequence length at that layer's input and after (LLaVolta, iLLaVA in the LLM).
            illava_scoring_layers: layers whose input is scored for an iLLaVA merge at the next layer.
            vision_last_layer / vision_merges: CLIP stops early / merges tokens (iLLaVA in the vision encoder).
            prumerge_kept: PruMerge's kept patches per image (`image_tokens / images - 1`); None: no PruMerge.
            logits_tokens: positions the prefill's LM head scores (`generate`: 1; a plain forward: all).
            scheduler: whether the scheduler runs (default: the config has one and `heads` is given).
        """
        heads = list(heads) if heads is not None else [self.num_heads] * self.num_layers
        neurons = list(neurons) if neurons is not None else [self.intermediate] * self.num_layers
        if len(heads) != self.num_layers or len(neurons) != self.num_layers:
            raise ValueError(f"heads/neurons need one entry per decoder layer ({self.num_layers}).")
        layer_tokens, t = [], llm_tokens
        for layer in range(self.num_layers):
            t = (reductions or {}).get(layer, t)
            layer_tokens.append(t)
        stages = {}
        stages["vision"] = (
            self.vision(images, vision_last_layer, vision_merges, post_layernorm=vision_last_layer is None)
            if images
            else Cost()
        )
        if prumerge_kept is not None and images:
            stages["vision"] = stages["vision"] + self.prumerge(images, prumerge_kept)
        projected = image_tokens if projector_tokens is None else projector_tokens
        stages["projector"] = self.projector(projected or 0) if images else Cost()
        if scheduler is None:
            scheduler = getattr(self.config, "scheduler_type", None) is not None and heads is not None
        stages["scheduler"] = self.scheduler() if scheduler else Cost()
        prefill = Cost()
        for layer in illava_scoring_layers:
            prefill = prefill + self.illava_scoring(layer_tokens[layer])
        for work in self.layer_works(layer_tokens, layer_tokens, heads, neurons):
            prefill = prefill + self.decoder_layer(work)
        stages["llm_prefill"] = prefill
        stages["lm_head_prefill"] = self.lm_head(logits_tokens, layer_tokens[-1])
        steps = max(new_tokens - 1, 0)
        stages["llm_decode"] = self._decode(layer_tokens, heads, neurons, steps)
        stages["lm_head_decode"] = self.lm_head(1).times(steps)
        if self.hardware is not None:
            for name in PREFILL_STAGES:
                stages[name].seconds *= self.hardware.prefill_factor
            for name in ("llm_decode", "lm_head_decode"):
                stages[name].seconds *= self.hardware.decode_factor
            executed = sum(1 for h, n in zip(heads, neurons) if h > 0 or n > 0)
            overhead = self.hardware.layer_overhead_s
            if images:
                stages["vision"].seconds += overhead * (
                    self.v_layers if vision_last_layer is None else vision_last_layer + 1
                )
            stages["llm_prefill"].seconds += (
                overhead * executed + self.hardware.call_overhead_s + self.hardware.request_overhead_s
            )
            stages["llm_decode"].seconds += (overhead * executed + self.hardware.call_overhead_s) * steps
        works = self.layer_works(layer_tokens, layer_tokens, heads, neurons)
        kv_bytes = sum(2 * w.kv_heads * self.head_dim * (w.tokens + steps) for w in works if w.heads > 0) * self.nbytes
        return RequestCost(
            stages=stages,
            llm_prompt_tokens=llm_tokens,
            generated_tokens=new_tokens,
            image_tokens=image_tokens or 0,
            layer_tokens=layer_tokens,
            kv_cache_bytes=kv_bytes,
            peak_memory_bytes=self.parameter_count() * self.nbytes
            + kv_bytes
            + self._peak_activation(works, logits_tokens),
            hardware=self.hardware.name if self.hardware is not None else None,
            bits=self.bits,
        )

    def _decode(self, layer_tokens: list[int], heads: list[int], neurons: list[int], steps: int) -> Cost:
        """`steps` decode steps; step `s` attends `prefill length + s + 1` keys per layer. A layer's cost is linear in
        its context (exactly for FLOPs and bytes; for time while an op stays on one side of the roofline, which decode
        attention always does: it reads about one cached byte per FLOP), so each distinct layer is summed in closed
        form: `steps * cost(c0) + slope * steps * (steps - 1) / 2`."""
        total = Cost()
        if steps == 0:
            return total
        signatures: dict[tuple[int, int, int], int] = {}
        for t, h, n in zip(layer_tokens, heads, neurons):
            if h > 0 or n > 0:
                signatures[(t, h, n)] = signatures.get((t, h, n), 0) + 1
        pairs = steps * (steps - 1) // 2
        for (t, h, n), count in signatures.items():
            first, second = (self.decoder_layer(self.layer_works([1], [t + c], [h], [n])[0]) for c in (1, 2))
            slope = Cost(second.flops - first.flops, second.other_flops - first.other_flops,
                         second.bytes - first.bytes, second.seconds - first.seconds)  # fmt: skip
            total = total + (first.times(steps) + slope.times(pairs)).times(count)
        return total

    def _peak_activation(self, works: list[LayerWork], logits_tokens: int) -> int:
        """The largest transient working set of the prefill: one layer's activations, or the logits (float32)."""
        peak = 0
        for w in works:
            if w.heads <= 0 and w.neurons <= 0:
                continue
            scores = 0 if self.flash_attention else w.tokens * w.context * w.heads * 4  # float32 softmax
            attention = w.tokens * (3 * self.d + (w.heads + 2 * w.kv_heads) * self.head_dim) * self.nbytes + scores
            mlp = w.tokens * (2 * self.d + 3 * w.neurons) * self.nbytes
            peak = max(peak, attention, mlp)
        return max(peak, logits_tokens * self.vocab * 4)

    def parameter_count(self) -> int:
        """Parameters of the whole model, from the config (weights resident in memory)."""
        d, i, v = self.d, self.intermediate, self.vocab
        kv = self.num_kv_heads * self.head_dim
        layer = d * self.num_heads * self.head_dim * 2 + 2 * d * kv + 3 * d * i + 2 * d
        text = 2 * v * d + self.num_layers * layer + d
        vd, vi = self.vd, self.v_intermediate
        vision = (self.channels * self.patch**2 * vd + (self.patches + 2) * vd + 4 * vd
                  + self.v_layers * (4 * vd * vd + 4 * vd + 2 * vd * vi + vi + vd + 4 * vd))  # fmt: skip
        projector = vd * d + d + d * d + d
        scheduler = 0
        if getattr(self.config, "scheduler_type", None) is not None:
            embed = self.config.latency_embed_dim
            suffix = self.num_layers - self.config.num_prefix_layers
            outputs = suffix if self.config.scheduler_type == "L" else suffix * 2 * self.num_heads
            scheduler = 2 * embed + embed * d + d + d * d + d + d * outputs + outputs
        return text + vision + projector + scheduler


# ---------------------------------------------------------------------------------------------------------------------
# The original's metrics (ADALLAVA.md 10.2), kept under their names so numbers compare with the paper
ORIGINAL_METRICS = (
    "flops",
    "avg_flops",
    "prefill_flops",
    "prefill_time",
    "memory_consumption",
    "prefill_memory_consumption",
)


def original_metrics(config, heads: list[int], prompt_tokens: int, generated_tokens: int,
                     hardware: str | Hardware = "nvidia_V100") -> dict[str, float]:  # fmt: skip
    """
    The six efficiency figures of the original evaluation, with its definitions: an LLM-Viewer roofline of the decoder
    and LM head only at 16 bits, batch 1; linear layers scaled by `heads[l] / H` (integer floor), the MLP activation
    counted over `d`, the LM head one multiply per weight and token, decode attention over the cached length,
    `memory_consumption` the prefill memory plus the *sum* of every decode step's memory.

    What differs from the original: `prompt_tokens` is the true LLM prompt (the `<latency>` token counted once; the
    original adds it twice), and `heads` may come from either variant (-1: skipped layer).
    """
    hw = get_hardware(hardware)
    text = config.text_config
    d, heads_total, vocab, inter = text.hidden_size, text.num_attention_heads, text.vocab_size, text.intermediate_size
    hd = d // heads_total
    b = 2  # bytes at 16 bits

    def layer_ops(tokens: int, context: int, h: int) -> list[tuple[int, int, int, int]]:
        """(ops, weight bytes, activation bytes stored, other bytes) of each op of one layer."""
        ops = []
        for fan_in, fan_out in ((d, d),) * 4 + ((d, inter),) * 2 + ((inter, d),):
            weight = fan_in * fan_out * b * h // heads_total
            ops.append(
                (2 * fan_in * fan_out * tokens * h // heads_total, weight, fan_out * tokens * b, fan_in * tokens * b)
            )
        scores = tokens * context * h
        ops.append((2 * scores * hd, 0, scores * b, (tokens + context) * hd * h * b))  # q @ k^T
        ops.append((2 * scores * hd, 0, tokens * hd * h * b, (scores + context * hd * h) * b))  # probs @ v
        ops.append((5 * scores, 0, scores * b, scores * b))  # softmax
        ops += [(7 * d * tokens, 0, d * tokens * b, d * tokens * b)] * 2  # norms
        ops += [(d * tokens, 0, d * tokens * b, 2 * d * tokens * b)] * 2  # residual adds
        ops.append((2 * d * tokens * h // heads_total, 0, d * tokens * b, 2 * d * tokens * b))  # MLP activation
        return ops

    def seconds(ops) -> float:
        return sum(hw.op_seconds(o, w + s + r, 16) for o, w, s, r in ops)

    active = [h for h in heads if h > 0]
    lm_head = (d * vocab, d * vocab * b, vocab * b, d * b)
    prefill_ops = [op for h in active for op in layer_ops(prompt_tokens, prompt_tokens, h)] + [lm_head]
    prefill_flops = sum(op[0] for op in prefill_ops)
    kv = 2 * d * prompt_tokens * b * len(active)
    last_layer = layer_ops(prompt_tokens, prompt_tokens, active[-1]) if active else []
    prefill_memory = sum(op[1] for op in prefill_ops) + kv + sum(op[2] for op in last_layer)
    flops, memory = prefill_flops, prefill_memory
    counts = {h: active.count(h) for h in set(active)}  # layers with the same head count cost the same
    for context in range(prompt_tokens, prompt_tokens + generated_tokens - 1):
        per_width = {h: layer_ops(1, context, h) for h in counts}
        flops += sum(op[0] * n for h, n in counts.items() for op in per_width[h]) + lm_head[0]
        weights = sum(op[1] * n for h, n in counts.items() for op in per_width[h]) + lm_head[1]
        last = per_width[active[-1]] if active else []
        memory += weights + 2 * d * (context + 1) * b * len(active) + sum(op[2] for op in last)
    return {
        "flops": float(flops),
        "avg_flops": float(flops) / max(generated_tokens, 1),
        "prefill_flops": float(prefill_flops),
        "prefill_time": seconds(prefill_ops),
        "memory_consumption": float(memory),
        "prefill_memory_consumption": float(prefill_memory),
    }


@dataclass
class EfficiencyReport:
    """
    What one request (one input row) cost, returned by `generate(..., return_dict_in_generate=True)` as
    `output.efficiency[row]`. FLOPs are modelled (see `cost_model`); times are roofline predictions on `hardware`
    (None without one); `measured_peak_memory_bytes` is the CUDA allocator's peak during the call (None on CPU).
    Token counts: `prompt_tokens` as passed (image placeholders included, the `<latency>` token not),
    `llm_prompt_tokens` entering the LLM (after reductions before it; the `<latency>` token once), `generated_tokens`
    up to and including the first end-of-sequence token.
    """

    cost: RequestCost = field(repr=False)
    prompt_tokens: int
    executed_units: int | None = None
    total_units: int | None = None
    original: dict[str, float] | None = field(default=None, repr=False)
    measured_peak_memory_bytes: int | None = None
    target_seconds: float | None = None
    # What the request asked and ran, kept so `on()` can cost the same request elsewhere.
    config: object = field(default=None, repr=False, compare=False)
    workload: object = field(default=None, repr=False, compare=False)  # efficiency.RowWorkload
    plan: tuple[list[int], list[int]] | None = field(default=None, repr=False, compare=False)  # heads, neurons

    def on(self, hardware: str | Hardware, bits: int | None = None) -> RequestCost:
        """The same request (its tokens, images, reductions and plan) modelled on other hardware / operand width."""
        if self.workload is None:
            raise ValueError("This report does not carry its workload: only `generate`'s reports can be re-costed.")
        cost_model = CostModel(self.config, hardware, bits or self.cost.bits)
        heads, neurons = self.plan if self.plan is not None else (None, None)
        scheduler = self.executed_units is not None
        return self.workload.request(cost_model, heads, neurons, self.cost.generated_tokens, scheduler=scheduler)

    @property
    def prefill_flops(self) -> int:
        return self.cost.prefill.flops

    @property
    def total_flops(self) -> int:
        return self.cost.total.flops

    @property
    def flops_per_generated_token(self) -> float:
        return self.total_flops / max(self.cost.generated_tokens, 1)

    @property
    def prefill_seconds(self) -> float | None:
        return self.cost.prefill.seconds if self.cost.hardware else None

    @property
    def decode_seconds(self) -> float | None:
        return self.cost.decode.seconds if self.cost.hardware else None

    def original_metrics(self) -> dict[str, float]:
        """The original evaluation's six figures under their names (see `original_metrics`)."""
        if self.original is None:
            raise ValueError("This report was made without the original's metrics (a model without a text config?).")
        return dict(self.original)

    def to_dict(self) -> dict:
        """Every figure, flat and JSON-ready."""
        total, prefill, decode = self.cost.total, self.cost.prefill, self.cost.decode
        out = {
            "prompt_tokens": self.prompt_tokens,
            "llm_prompt_tokens": self.cost.llm_prompt_tokens,
            "generated_tokens": self.cost.generated_tokens,
            "image_tokens": self.cost.image_tokens,
            "executed_units": self.executed_units,
            "total_units": self.total_units,
            "prefill_flops": prefill.flops,
            "decode_flops": decode.flops,
            "total_flops": total.flops,
            "flops_per_generated_token": self.flops_per_generated_token,
            "other_flops": total.other_flops,
            "prefill_bytes": prefill.bytes,
            "decode_bytes": decode.bytes,
            "kv_cache_bytes": self.cost.kv_cache_bytes,
            "modelled_peak_memory_bytes": self.cost.peak_memory_bytes,
            "measured_peak_memory_bytes": self.measured_peak_memory_bytes,
            "hardware": self.cost.hardware,
            "bits": self.cost.bits,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "target_seconds": self.target_seconds,
        }
        out.update({f"{name}_flops": stage.flops for name, stage in self.cost.stages.items()})
        return out


def plan_counts(plan, row: int, intermediate_size: int) -> tuple[list[int], list[int]]:
    """Per layer, the query heads and MLP neurons one row of an `ExecutionPlan` runs (-1 / 0 for skipped)."""
    heads = plan.heads_executed()[row].tolist()
    groups = (plan.mlp_groups[row].detach() > 0.5).cpu()
    sizes = mlp_group_sizes(intermediate_size, groups.shape[-1])
    neurons = [sum(size for size, on in zip(sizes, layer.tolist()) if on) for layer in groups]
    return heads, neurons
