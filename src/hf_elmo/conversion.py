"""Turn an original ELMo release (options.json + weights .hdf5) into a Hugging Face checkpoint folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

from .configuration_elmo import OFFICIAL_CHAR_FILTERS, ElmoConfig
from .download import resolve_file
from .modeling_elmo import ElmoModel
from .checkpoints import CheckpointError
from .checkpoints.bilm_tf import OFFICIAL_MODELS, config_from_options, read_options, read_weights
from .sentence_transformers_files import write_sentence_transformers_files
from .tokenization_elmo import ElmoTokenizer

MODEL_CARDS = ("elmo-small", "elmo-medium", "elmo-original", "elmo-original-5.5b")


def read_vocab_file(path: str | os.PathLike, unique: bool = True) -> list[str]:
    """
    Words of a vocabulary file, one per line, in order (`<S>` / `</S>` are the sentence-boundary tokens).
    With `unique`, blank lines and repeats are dropped; without, every line is a word, as bilm-tf reads it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not UTF-8 text ({error})") from None
    words = [line.strip() for line in lines]
    return list(dict.fromkeys(w for w in words if w)) if unique else words


def official_model_card_name(config: ElmoConfig, sources: list[str]) -> str | None:
    """Which official release a config is, from its shapes (and '5.5B' in a source name); None if none."""
    if config.char_filters != OFFICIAL_CHAR_FILTERS or config.num_hidden_layers != 2:
        return None
    for name, (lstm_dim, projection_dim, n_highway) in OFFICIAL_MODELS.items():
        if (config.lstm_dim, config.projection_dim, config.num_highway_layers) == (lstm_dim, projection_dim, n_highway):
            if name == "original" and any("5.5b" in s.lower() for s in sources):
                return "elmo-original-5.5b"
            return f"elmo-{name}"
    return None


def model_card_text(config: ElmoConfig, options_source: str, options: dict, card: str | None) -> str:
    """The README.md of the converted folder: the official card, or the generic one naming the source options."""
    cards = resources.files("hf_elmo.model_cards")
    if card is not None:
        if card not in MODEL_CARDS:
            raise ValueError(f"unknown model card {card!r}; choose one of {', '.join(MODEL_CARDS)}")
        return cards.joinpath(f"{card}.md").read_text(encoding="utf-8")
    template = cards.joinpath("generic.md").read_text(encoding="utf-8")
    return template.format(source_options=options_source, options_json=json.dumps(options, indent=2))


def convert_original_checkpoint(
    options_file: str | os.PathLike,
    weight_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    vocab_file: str | os.PathLike | None = None,
    model_card: str | None = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """
    Convert and write a complete checkpoint folder: `model.safetensors`, `config.json`, tokenizer files,
    `README.md` (model card) and the remote code (`auto_map`). Everything is checked and written into a
    temporary folder first; `output_dir` is replaced only once the new checkpoint is complete.

    Args:
        options_file / weight_file: local paths or http(s) URLs of the original release.
        vocab_file: optional word list whose token vectors are cached in the checkpoint (allennlp's `vocab_to_cache`).
        model_card: `"auto"` (detect the official release from its shapes), one of `MODEL_CARDS`, or None (generic).
    """
    output_dir = Path(output_dir)
    options_path = resolve_file(options_file, cache_dir)
    weights_path = resolve_file(weight_file, cache_dir)
    options = read_options(options_path)
    config = config_from_options(options, str(options_path))
    state_dict = read_weights(weights_path, config)
    words = read_vocab_file(vocab_file) if vocab_file is not None else None
    if model_card == "auto":
        model_card = official_model_card_name(config, [str(options_file), str(weight_file)])

    model = ElmoModel(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.startswith("char_encoder.cached_")]
    if missing or unexpected:  # a bug in the weight mapping, not in the user's files
        raise RuntimeError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    if words:
        model.cache_words(words)
    tokenizer = ElmoTokenizer(max_characters_per_token=config.max_characters_per_token)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        _apply_default_permissions(staging)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_sentence_transformers_files(staging, config)  # the folder is a sentence-transformers model too
        text = model_card_text(config, str(options_file), options, model_card)
        (staging / "README.md").write_text(text, encoding="utf-8")
        _replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _apply_default_permissions(directory: Path) -> None:
    """mkdtemp makes private (0700) folders; a checkpoint gets the permissions of any folder the user creates."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)


def _replace_directory(new: Path, target: Path) -> None:
    """Put `new` at `target`, moving any old `target` aside first and deleting it only afterwards."""
    if not target.exists():
        os.replace(new, target)
        return
    if not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@torch.no_grad()
def dump_token_embeddings(
    model: ElmoModel, words: list[str], output_file: str | os.PathLike, batch_size: int = 4096
) -> Path:
    """
    Write bilm-tf's `dump_token_embeddings` file: dataset `embedding`, float32 `(len(words), projection_dim)`,
    the context-free token vector of each word in order (`<S>` / `</S>` are the sentence-boundary tokens).
    """
    import h5py
    from tqdm.auto import tqdm

    from .tokenization_elmo import word_to_char_ids

    output_file = Path(output_file)
    c = model.config.max_characters_per_token
    device = model.device
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_file.name}.", suffix=".tmp", dir=output_file.parent or ".")
    os.close(fd)
    try:
        with h5py.File(tmp_name, "w") as hdf5:
            dataset = hdf5.create_dataset("embedding", (len(words), model.config.projection_dim), dtype="float32")
            for start in tqdm(range(0, len(words), batch_size), desc="token embeddings", unit="batch"):
                chunk = words[start : start + batch_size]
                ids = torch.tensor([word_to_char_ids(w, c) for w in chunk], dtype=torch.long, device=device)
                dataset[start : start + len(chunk)] = model.embed_words(ids).float().cpu().numpy()
        os.replace(tmp_name, output_file)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return output_file


__all__ = ["MODEL_CARDS", "convert_original_checkpoint", "dump_token_embeddings", "read_vocab_file"]
