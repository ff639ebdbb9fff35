"""ada-hf: multimodal LLMs that adapt their compute to a per-request budget, native to Hugging Face transformers.

Importing `ada_hf` registers the `ada_llava` model type with the Auto classes, so checkpoints load without remote code:

    import ada_hf
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(path)
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_ada_llava import ADA_HF_CODE_VERSION, AdaLlavaConfig
from .execution_plan import ExecutionPlan
from .latency_scheduler import LatencyEncoder, LatencyScheduler
from .modeling_ada_llava import AdaLlavaForConditionalGeneration, AdaLlavaModel
from .processing_ada_llava import AdaLlavaProcessor, add_latency_token

__version__ = ADA_HF_CODE_VERSION

AutoConfig.register(AdaLlavaConfig.model_type, AdaLlavaConfig, exist_ok=True)
# AutoModel returns the generating class too: users call `generate` on what it gives them.
for _auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
    _auto.register(AdaLlavaConfig, AdaLlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(AdaLlavaConfig, AdaLlavaProcessor, exist_ok=True)

__all__ = [
    "AdaLlavaConfig",
    "AdaLlavaForConditionalGeneration",
    "AdaLlavaModel",
    "AdaLlavaProcessor",
    "ExecutionPlan",
    "LatencyEncoder",
    "LatencyScheduler",
    "add_latency_token",
]
