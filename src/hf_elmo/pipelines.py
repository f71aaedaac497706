"""`ElmoFeatureExtractionPipeline`: ELMo word (or sentence) vectors from `transformers.pipeline`, one per word.

The stock `pipeline("feature-extraction", model=elmo)` already works with ELMo checkpoints (with hf_elmo
installed, or with `trust_remote_code=True` without it), but it returns each text as `(1, words, D)` and, with
`batch_size > 1`, every text of a batch is padded to the batch's longest: the extra rows are exact zeros (the
model zeroes padding words), so they can be cut by dropping all-zero rows at the end, but they are there.
`ElmoFeatureExtractionPipeline` returns exactly the text's words for any `batch_size`, and adds a choice of
representation and mean pooling:

    pipe = pipeline("feature-extraction", model="path/or/repo", pipeline_class=ElmoFeatureExtractionPipeline)
    pipe = pipeline("elmo-feature-extraction", model="path/or/repo")   # the same, registered by `import hf_elmo`
    pipe(["The cat sat .", "Hi"], batch_size=8)              # [(4, D), (1, D)] nested lists
    pipe("The cat sat .", representation="all")              # (L+1, 4, D)
    pipe("The cat sat .", pooling="mean", return_tensors=True)   # torch.Size([D])

The task is registered in transformers' pipeline registry, not written into the checkpoint's config.json: a
`custom_pipelines` entry there would make `pipeline(...)` demand `trust_remote_code=True` even with hf_elmo
installed. For the same reason `save_pretrained` of this pipeline writes no `custom_pipelines` entry.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY, FeatureExtractionPipeline

from .jobs.core import REPRESENTATIONS, check_representation, masked_mean, select_representation

ELMO_FEATURE_EXTRACTION_TASK = "elmo-feature-extraction"
# The default of a call option nobody passed: `pooling=None` is a value (no pooling), so None cannot mean "not given".
_NOT_GIVEN: Any = object()


class ElmoFeatureExtractionPipeline(FeatureExtractionPipeline):
    r"""
    Feature extraction for ELMo that returns one vector per word of each input, whatever `batch_size`.

    Inputs: a text, a list of texts, or (with `is_split_into_words=True`) a list of word lists; a tuple of
    words is one pre-split sentence.

    Call options (also accepted by `pipeline(...)` as defaults):
        representation (`str`, defaults to `"mix"`): `"mix"` (the model's scalar mix, `last_hidden_state`),
            `"top"` (the top biLSTM layer) or `"all"` (every layer, layer 0 being the character-CNN token vector).
        pooling (`str`, *optional*): `"mean"` for one sentence vector, the mean over the words (TF-Hub's
            `default` output for `"mix"`); zeros for a text without words. `None` (the default): word vectors;
            passed to a call, `None` overrides a pipeline built with `pooling="mean"`.
        is_split_into_words (`bool`, *optional*): The inputs are lists of words, not raw text.
        return_tensors (`bool`, *optional*): Return `torch.Tensor`s (on the CPU) instead of nested lists.
        tokenize_kwargs (`dict`, *optional*), truncation: As for [`FeatureExtractionPipeline`]; `truncation=True`
            with `tokenize_kwargs={"max_length": n}` keeps the first n words.

    Returns, per input, with `D = 2 * projection_dim` and `L = num_hidden_layers`:
        `(words, D)` for `"mix"` / `"top"`, `(L+1, words, D)` for `"all"`; with `pooling="mean"`, `(D,)` or
        `(L+1, D)`. There is no leading batch axis (the stock pipeline returns `(1, words, D)`).
    """

    def _sanitize_parameters(
        self,
        truncation: bool | None = None,
        tokenize_kwargs: dict[str, Any] | None = None,
        return_tensors: bool | None = None,
        representation: str | None = None,
        pooling: str | None = _NOT_GIVEN,
        is_split_into_words: bool | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(
            truncation=truncation, tokenize_kwargs=tokenize_kwargs, return_tensors=return_tensors, **kwargs
        )
        if is_split_into_words is not None:
            preprocess_params["is_split_into_words"] = is_split_into_words
        if representation is not None:
            if representation not in REPRESENTATIONS:
                raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
            forward_params["representation"] = representation
        if pooling is not _NOT_GIVEN:
            check_representation("mix", pooling)
            postprocess_params["pooling"] = pooling
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs: Any, **tokenize_kwargs: Any) -> dict[str, torch.Tensor]:
        """One input -> `input_ids` `(1, words, C)` and `attention_mask` `(1, words)`."""
        if isinstance(inputs, tuple):  # one pre-split sentence
            tokenize_kwargs = {**tokenize_kwargs, "is_split_into_words": True}
        if tokenize_kwargs.get("is_split_into_words"):
            inputs = [list(inputs)]  # as a batch of one, so that an empty word list is an empty sentence
        model_inputs = self.tokenizer(inputs, return_tensors="pt", **tokenize_kwargs)
        if "attention_mask" not in model_inputs:
            model_inputs["attention_mask"] = (model_inputs["input_ids"] != 0).any(dim=-1).long()
        return {"input_ids": model_inputs["input_ids"], "attention_mask": model_inputs["attention_mask"]}

    def _forward(self, model_inputs: dict[str, torch.Tensor], representation: str = "mix") -> dict[str, torch.Tensor]:
        """A (padded) batch -> `vectors` `(B, W, D)` or `(B, L+1, W, D)` and its `attention_mask` `(B, W)`."""
        outputs = self.model(**model_inputs, output_hidden_states=representation != "mix", return_dict=True)
        return {"vectors": select_representation(outputs, representation),
                "attention_mask": model_inputs["attention_mask"]}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], return_tensors: bool = False,
                    pooling: str | None = None) -> Any:
        """One input's (possibly padded) vectors -> its own words' vectors, or their mean."""
        vectors = model_outputs["vectors"][0]  # (W, D) or (L+1, W, D)
        mask = model_outputs["attention_mask"][0]
        if pooling == "mean":
            result = masked_mean(vectors[None], mask[None])[0]
        else:
            n_words = int(mask.sum())
            result = vectors[..., :n_words, :]
        return result if return_tensors else result.tolist()


def register_pipeline() -> None:
    """Register `"elmo-feature-extraction"` (done by `import hf_elmo`)."""
    if ELMO_FEATURE_EXTRACTION_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            ELMO_FEATURE_EXTRACTION_TASK, pipeline_class=ElmoFeatureExtractionPipeline, pt_model=AutoModel,
            type="text",
        )
    # `register_pipeline` marks the class so that `Pipeline.save_pretrained` writes `custom_pipelines` into the
    # model's config.json and copies this module next to it; loading that folder would then demand
    # `trust_remote_code=True`. The task is already known wherever hf_elmo is imported, so drop the mark.
    if "_registered_impl" in ElmoFeatureExtractionPipeline.__dict__:
        del ElmoFeatureExtractionPipeline._registered_impl


__all__ = ["ElmoFeatureExtractionPipeline", "ELMO_FEATURE_EXTRACTION_TASK", "register_pipeline"]
