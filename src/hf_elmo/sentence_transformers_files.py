"""
The files that make a converted checkpoint folder a sentence-transformers model as well.

`SentenceTransformer(folder)` reads `modules.json` and builds its pipeline from it: module 0, sentence-transformers'
`Transformer`, loads the folder's `AutoTokenizer` / `AutoModel` and takes the model's first output
(`last_hidden_state`, `(B, words, D)`) as token embeddings, with the tokenizer's `attention_mask` `(B, words)`;
module 1, `Pooling` (`1_Pooling/config.json`), averages them over the real words. So `encode(texts)` gives the
mean ELMo vector of each text (`(D,)`, `D = 2 * projection_dim`), with the library's batching, progress bar and
`normalize_embeddings`. A text without words gets zeros.

The files use the long-standing layout (`sentence_transformers.models.*` module paths, the `pooling_mode_*_tokens`
keys) that models on the Hub are saved in and that sentence-transformers still loads (5.3.0 and 6.2.0 are tested).
Nothing here imports sentence-transformers; the converter writes these small JSON files into every folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from .configuration_elmo import ElmoConfig

POOLING_FOLDER = "1_Pooling"


def sentence_transformers_files(config: ElmoConfig) -> dict[str, dict | list]:
    """Relative path -> JSON contents of the sentence-transformers files for a checkpoint with `config`."""
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": POOLING_FOLDER, "type": "sentence_transformers.models.Pooling"},
        ],
        # ELMo has no length limit: None leaves max_seq_length to the tokenizer (which sets none either).
        "sentence_bert_config.json": {"max_seq_length": None, "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": {}, "default_prompt_name": None,
                                              "similarity_fn_name": "cosine"},
        f"{POOLING_FOLDER}/config.json": {
            "word_embedding_dimension": config.output_dim,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    }


def write_sentence_transformers_files(folder: str | Path, config: ElmoConfig) -> None:
    """Write `sentence_transformers_files(config)` into `folder` (a checkpoint folder being assembled)."""
    for name, contents in sentence_transformers_files(config).items():
        path = Path(folder) / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(contents, indent=2) + "\n", encoding="utf-8")


__all__ = ["sentence_transformers_files", "write_sentence_transformers_files"]
