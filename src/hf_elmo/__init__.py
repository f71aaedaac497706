"""hf-elmo: ELMo (Peters et al. 2018) as a native transformers model.

Importing this package registers model type "elmo" with `AutoConfig`, `AutoTokenizer` and `AutoModel`.
"""

from transformers import AutoConfig, AutoModel, AutoTokenizer

from .configuration_elmo import ElmoConfig
from .modeling_elmo import ElmoModel, ElmoModelOutput, ElmoPreTrainedModel
from .tokenization_elmo import ElmoTokenizer
from .jobs.datasets_job import embed_dataset
from .jobs.ray_job import embed_ray_dataset  # imports ray only when called
from .pipelines import ElmoFeatureExtractionPipeline, register_pipeline as _register_pipeline

AutoConfig.register(ElmoConfig.model_type, ElmoConfig, exist_ok=True)
AutoModel.register(ElmoConfig, ElmoModel, exist_ok=True)
AutoTokenizer.register(ElmoConfig, tokenizer_class=ElmoTokenizer, exist_ok=True)
# Saved checkpoints carry their code (`auto_map`), so `trust_remote_code=True` loads them without this package.
ElmoConfig.register_for_auto_class()
ElmoModel.register_for_auto_class("AutoModel")
ElmoTokenizer.register_for_auto_class("AutoTokenizer")
_register_pipeline()  # the "elmo-feature-extraction" task

__version__ = "0.1.0"

__all__ = ["ElmoConfig", "ElmoModel", "ElmoModelOutput", "ElmoPreTrainedModel", "ElmoTokenizer", "__version__"]
__all__ += ["ElmoFeatureExtractionPipeline", "embed_dataset", "embed_ray_dataset"]
