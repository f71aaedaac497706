"""The tokenizer a job uses for a model when it is given none."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..tokenization_elmo import ElmoManyLangsTokenizer, ElmoTokenizer

if TYPE_CHECKING:
    from ..modeling_elmo import ElmoModel


def default_tokenizer(model: "ElmoModel") -> ElmoTokenizer:
    """
    bilm-tf's fixed byte table for models without their own character table; for ELMoForManyLangs models
    (`config.boundary_char_ids` set), the tokenizer saved with the checkpoint the model was loaded from, since
    their character table and word vocabulary live there.
    """
    config = model.config
    if getattr(config, "boundary_char_ids", None) is None:
        return ElmoTokenizer(max_characters_per_token=config.max_characters_per_token)
    source = getattr(model, "name_or_path", "")
    if not source:
        raise ValueError("this model has its own character table (ELMoForManyLangs) and was not loaded from a "
                         "checkpoint folder: pass its tokenizer (AutoTokenizer.from_pretrained(folder))")
    return ElmoManyLangsTokenizer.from_pretrained(source)


__all__ = ["default_tokenizer"]
