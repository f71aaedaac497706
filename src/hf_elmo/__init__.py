"""hf-elmo: ELMo (Peters et al. 2018) as a native transformers model.

Importing this package registers model type "elmo" with `AutoConfig`, `AutoTokenizer` and `AutoModel`, and the
"elmo-feature-extraction" pipeline task. `embed_dataset` and `ElmoFeatureExtractionPipeline` are imported on
first use, so `import hf_elmo` does not import `datasets`, the jobs or transformers' pipelines.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any, Callable

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from .configuration_elmo import ElmoConfig
from .modeling_elmo import (
    ElmoForPreTraining,
    ElmoForSequenceClassification,
    ElmoForTokenClassification,
    ElmoModel,
    ElmoModelOutput,
    ElmoPreTrainedModel,
)
from .tokenization_elmo import ElmoManyLangsTokenizer, ElmoTokenizer

AutoConfig.register(ElmoConfig.model_type, ElmoConfig, exist_ok=True)
AutoModel.register(ElmoConfig, ElmoModel, exist_ok=True)
# ELMoForManyLangs checkpoints name ElmoManyLangsTokenizer in tokenizer_config.json: registering it first records
# the class name for AutoTokenizer; registering ElmoTokenizer after keeps it the default for ElmoConfig.
AutoTokenizer.register(ElmoConfig, tokenizer_class=ElmoManyLangsTokenizer, exist_ok=True)
AutoTokenizer.register(ElmoConfig, tokenizer_class=ElmoTokenizer, exist_ok=True)
# Saved checkpoints carry their code (`auto_map`), so `trust_remote_code=True` loads them without this package.
ElmoConfig.register_for_auto_class()
ElmoModel.register_for_auto_class("AutoModel")
ElmoTokenizer.register_for_auto_class("AutoTokenizer")
ElmoManyLangsTokenizer.register_for_auto_class("AutoTokenizer")

# Task heads (ELMo inside a task model: biLM frozen by default, scalar mix and head trained).
AutoModelForTokenClassification.register(ElmoConfig, ElmoForTokenClassification, exist_ok=True)
AutoModelForSequenceClassification.register(ElmoConfig, ElmoForSequenceClassification, exist_ok=True)
ElmoForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
ElmoForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
# The language model (biLM + softmax): AutoModelForPreTraining.from_pretrained(folder).
AutoModelForPreTraining.register(ElmoConfig, ElmoForPreTraining, exist_ok=True)
ElmoForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__version__ = "0.1.0"

# Public names imported on first access (PEP 562): name -> module.
_LAZY = {
    "embed_dataset": ".jobs.datasets_job",
    "embed_ray_dataset": ".jobs.ray_job",
    "ElmoFeatureExtractionPipeline": ".pipelines",
    "ElmoLanguageModel": ".jobs.lm_job",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _AfterImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: runs `callback` right after module `name` has been imported (executed)."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # first, so that the real finders below answer (and no recursion)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module, callback = spec.loader.exec_module, self.callback

            def exec_then_callback(module: Any) -> None:
                exec_module(module)
                callback()

            spec.loader.exec_module = exec_then_callback  # this spec's own loader instance
        return spec


def _register_pipeline_task() -> None:
    from .pipelines import register_pipeline

    register_pipeline()


# transformers' task registry lives in `transformers.pipelines`, which costs about 0.16 s to import, and
# `transformers.pipeline(...)` imports it anyway: register the task then (or now, if it is already imported).
if "transformers.pipelines" in sys.modules:
    _register_pipeline_task()
else:
    sys.meta_path.insert(0, _AfterImport("transformers.pipelines", _register_pipeline_task))

__all__ = [
    "ElmoConfig", "ElmoFeatureExtractionPipeline", "ElmoForPreTraining", "ElmoForSequenceClassification",
    "ElmoForTokenClassification", "ElmoLanguageModel", "ElmoManyLangsTokenizer", "ElmoModel", "ElmoModelOutput",
    "ElmoPreTrainedModel", "ElmoTokenizer", "__version__", "embed_dataset", "embed_ray_dataset",
]
