"""Turn an original ELMo release (options.json + weights .hdf5) into a Hugging Face checkpoint folder, and back
(`export_original_checkpoint`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .configuration_elmo import OFFICIAL_CHAR_FILTERS, ElmoConfig
from .download import resolve_file
from .modeling_elmo import ElmoForPreTraining, ElmoModel
from .checkpoints import CheckpointError
from .checkpoints.bilm_tf import OFFICIAL_MODELS, config_from_options, largest_weight, read_options, read_weights
from .checkpoints.softmax import LMVocabulary, read_lm_vocabulary, read_softmax, write_lm_vocabulary
from .jobs.core import read_vocab_file
from .tokenization_elmo import BEGIN_OF_WORD_CHAR, END_OF_WORD_CHAR, PADDING_CHAR, ElmoTokenizer
from .sentence_transformers_files import write_sentence_transformers_files

# The language model's word vocabulary in a checkpoint folder: softmax row i is line i (bilm-tf's format).
LM_VOCABULARY_FILE = "lm_vocab.txt"
MODEL_CARDS = ("elmo-small", "elmo-medium", "elmo-original", "elmo-original-5.5b")


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
    softmax_weight_file: str | os.PathLike | None = None,
) -> Path:
    """
    Convert and write a complete checkpoint folder: `model.safetensors`, `config.json`, tokenizer files,
    `README.md` (model card) and the remote code (`auto_map`). Everything is checked and written into a
    temporary folder first; `output_dir` is replaced only once the new checkpoint is complete.

    Args:
        options_file / weight_file: local paths or http(s) URLs of the original release.
        vocab_file: without `softmax_weight_file`, an optional word list whose token vectors are cached in the
            checkpoint (allennlp's `vocab_to_cache`); with it, the softmax's word vocabulary (required).
        model_card: `"auto"` (detect the official release from its shapes), one of `MODEL_CARDS`, or None (generic).
        softmax_weight_file: the released softmax hdf5 (`softmax/W`, `softmax/b`): the folder then holds the
            language model (`ElmoForPreTraining`) and its vocabulary (`lm_vocab.txt`).
    """
    options_path = resolve_file(options_file, cache_dir)
    weights_path = resolve_file(weight_file, cache_dir)
    options = read_options(options_path)
    config = config_from_options(options, str(options_path))
    state_dict = read_weights(weights_path, config)
    language_model = None
    if softmax_weight_file is not None:
        if vocab_file is None:
            raise CheckpointError(f"{softmax_weight_file}: a softmax needs --vocab-file (the softmax's word "
                                  f"vocabulary, one word a line, <S> </S> <UNK> first)")
        weight, bias = read_softmax(resolve_file(softmax_weight_file, cache_dir), config.projection_dim)
        language_model = (weight, bias, read_lm_vocabulary(resolve_file(vocab_file, cache_dir), size=len(weight)))
        cached_words = None
    else:
        cached_words = read_vocab_file(vocab_file) if vocab_file is not None else None
    sources = [str(options_file), str(weight_file)]
    return _write_checkpoint(config, state_dict, options, str(options_file), sources, weights_path, output_dir,
                             model_card, cached_words, language_model)


def convert_training_checkpoint(
    checkpoint: str | os.PathLike,
    vocab_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    options_file: str | os.PathLike | None = None,
    model_card: str | None = "auto",
) -> Path:
    """
    Convert a bilm-tf training checkpoint (TensorFlow's `model.ckpt-N.*`; needs `hf-elmo[tf]`) into a language-model
    checkpoint folder: the biLM, the softmax both directions share, and the vocabulary `vocab_file` (bilm-tf's
    format, `<S>` `</S>` `<UNK>` first, one word per softmax row).

    Args:
        checkpoint: the checkpoint folder (with TensorFlow's `checkpoint` file), a prefix, or one of its files.
        options_file: bilm-tf's training `options.json`; by default the one next to the checkpoint.
    """
    from .checkpoints.bilm_tf_training import bilm_state_dict, find_checkpoint_prefix, read_training_checkpoint

    prefix = find_checkpoint_prefix(checkpoint)
    options_path = Path(options_file) if options_file is not None else prefix.parent / "options.json"
    if options_file is None and not options_path.is_file():
        raise CheckpointError(f"{prefix}: no options.json next to the checkpoint; pass --options-file")
    options = read_options(options_path)
    config = config_from_options(options, str(options_path))
    training = read_training_checkpoint(prefix)
    state_dict = bilm_state_dict(training, config)
    n_words = training.softmax_weight.shape[0]
    declared = options.get("n_tokens_vocab")
    if declared is not None and int(declared) != n_words:
        raise CheckpointError(f"{options_path}: n_tokens_vocab is {declared}, but the checkpoint's softmax has "
                              f"{n_words} rows: the options belong to another model")
    vocabulary = read_lm_vocabulary(vocab_file, size=n_words)
    language_model = (training.softmax_weight, training.softmax_bias, vocabulary)
    return _write_checkpoint(config, state_dict, options, str(options_path), [str(prefix)], None, output_dir,
                             model_card, None, language_model)


def _write_checkpoint(
    config: ElmoConfig,
    state_dict: dict[str, torch.Tensor],
    options: dict,
    options_source: str,
    sources: list[str],
    weights_path: Path | None,
    output_dir: str | os.PathLike,
    model_card: str | None,
    cached_words: list[str] | None,
    language_model: tuple[np.ndarray, np.ndarray, LMVocabulary] | None,
) -> Path:
    """Check the converted weights and write the folder atomically (an `ElmoForPreTraining` with `language_model`
    `(softmax weight (V, P), bias (V,), vocabulary)`, else an `ElmoModel`)."""
    output_dir = Path(output_dir)
    if model_card == "auto":
        model_card = official_model_card_name(config, sources)
    if language_model is not None:
        weight, bias, vocabulary = language_model
        config.update(vocabulary.config_fields())
        to_save = ElmoForPreTraining(config)
        model = to_save.elmo
        with torch.no_grad():
            to_save.softmax.weight.copy_(torch.from_numpy(weight))
            to_save.softmax.bias.copy_(torch.from_numpy(bias))
    else:
        model = to_save = ElmoModel(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.startswith("char_encoder.cached_")]
    if missing or unexpected:  # a bug in the weight mapping, not in the user's files
        raise RuntimeError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    to_save.eval()
    _check_outputs_are_finite(model, weights_path, str(weights_path) if weights_path is not None else sources[0])
    if cached_words:
        model.cache_words(cached_words)
    tokenizer = ElmoTokenizer(max_characters_per_token=config.max_characters_per_token)
    set_auto_map(config)
    text = model_card_text(config, options_source, options, model_card)
    return write_checkpoint_folder(output_dir, to_save, tokenizer, text,
                                   lm_vocabulary=language_model[2] if language_model is not None else None)


def set_auto_map(config: ElmoConfig) -> None:
    """
    Name both model classes in `auto_map`, whichever is saved: remote code then loads an LM folder as the biLM
    alone (AutoModel) and any folder as a language model (AutoModelForPreTraining, which says when the head is
    missing).
    """
    config.auto_map = {**(getattr(config, "auto_map", None) or {}), "AutoModel": "modeling_elmo.ElmoModel",
                       "AutoModelForPreTraining": "modeling_elmo.ElmoForPreTraining"}


def write_checkpoint_folder(
    output_dir: Path,
    model: ElmoModel | ElmoForPreTraining,
    tokenizer: ElmoTokenizer,
    model_card: str,
    lm_vocabulary: LMVocabulary | None = None,
) -> Path:
    """
    Write model, tokenizer (both with their remote code), the sentence-transformers files, the language model's
    vocabulary (`lm_vocab.txt`, if given) and `README.md` into a temporary folder next to `output_dir`, then put
    it in place of `output_dir`: a failure leaves any old `output_dir` as it was.
    """
    with _staged_folder(output_dir, "checkpoint") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_sentence_transformers_files(staging, model.config)  # the folder is a sentence-transformers model too
        if lm_vocabulary is not None:
            write_lm_vocabulary(staging / LM_VOCABULARY_FILE, lm_vocabulary)
        (staging / "README.md").write_text(model_card, encoding="utf-8")
    return output_dir


@contextlib.contextmanager
def _staged_folder(output_dir: Path, what: str) -> Iterator[Path]:
    """
    A temporary folder next to `output_dir` for the block to fill; put in place of `output_dir` when the block
    succeeds, removed when it fails, so a failure leaves any old `output_dir` as it was. OS errors become a
    `CheckpointError` "cannot write the `what`" naming `output_dir`.
    """
    staging = _make_staging_folder(output_dir)
    try:
        yield staging
        _apply_default_permissions(staging)
        _replace_directory(staging, output_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        # Name the folder the user asked for, not the staging folder beside it.
        reason = str(error.strerror or error)
        if error.filename is not None:
            reason += f": {str(error.filename).replace(str(staging), str(output_dir))}"
        raise CheckpointError(f"{output_dir}: cannot write the {what} ({reason})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@torch.no_grad()
def _check_outputs_are_finite(model: ElmoModel, weights_path: Path | None, source: str) -> None:
    """
    Finite weights can still overflow (a damaged file's 3e38s): run a probe sentence whose words hold every byte
    once, so every character embedding and every layer is used, and refuse weights whose outputs are not finite.
    `weights_path` (a weights hdf5) names the largest weight in the error; `source` names the weights otherwise.
    """
    body = model.config.max_characters_per_token - 2
    words = []
    for start in range(0, 256, body):
        chars = list(range(start, min(start + body, 256)))
        ids = [BEGIN_OF_WORD_CHAR, *chars, END_OF_WORD_CHAR] + [PADDING_CHAR] * (body - len(chars))
        words.append([i + 1 for i in ids])  # the tokenizer's +1 shift: 0 is "no character"
    layers = model(input_ids=torch.tensor([words]), output_hidden_states=True).hidden_states
    if not all(bool(torch.isfinite(layer).all()) for layer in layers):
        where = ""
        if weights_path is not None:
            name, value = largest_weight(weights_path, model.config)
            where = f" (the largest weight, {value:.3g}, is in dataset {name!r})"
        raise CheckpointError(f"{source}: the weights overflow: a probe sentence of every character gives NaN or "
                              f"infinite outputs{where}")


def _make_staging_folder(output_dir: Path) -> Path:
    """A new folder beside `output_dir` to write the checkpoint into; errors name `output_dir` itself."""
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    except OSError as error:
        # The error names the random staging folder or an ancestor; say which ancestor is in the way, if one is.
        blocking = next((p for p in output_dir.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is not a folder" if blocking is not None else str(error.strerror or error)
        raise CheckpointError(f"{output_dir}: cannot create the output folder ({reason})") from None


def _apply_default_permissions(directory: Path) -> None:
    """
    Give the written folder and its files the permissions of any the user creates (0777 / 0666 less the umask):
    mkdtemp makes a private (0700) folder, and some writers (safetensors) private (0600) files.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for root, folders, files in os.walk(directory):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


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


# ------------------------------------------------------------------------------------------ ELMoForManyLangs
def convert_elmoformanylangs(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike, language: str | None = None
) -> Path:
    """
    Convert an ELMoForManyLangs (HIT-SCIR) release folder (`config.json`, the network `.json`, `char.dic`,
    `word.dic`, `token_embedder.pkl`, `encoder.pkl`) into a checkpoint folder: `model.safetensors`, `config.json`,
    the tokenizer with the model's character table (`char_vocab.json`, `word_vocab.json`), a model card for its
    language, and the remote code. Written atomically, as `convert_original_checkpoint`.

    Args:
        language: The model's language (a key of `checkpoints.elmoformanylangs.LANGUAGES`, e.g. `"zh"`), needed
            when the folder's `config.json` does not name it; refused if it names another one.
    """
    from .checkpoints import elmoformanylangs as efml
    from .tokenization_elmo import ElmoManyLangsTokenizer

    release = efml.read_release(model_dir)
    lang = efml.resolve_language(release, language)
    config = efml.config_from_release(release)
    model = ElmoModel(config)
    missing, unexpected = model.load_state_dict(efml.state_dict_from_release(release, config), strict=False)
    missing = [k for k in missing if not k.startswith("char_encoder.cached_")]
    if missing or unexpected:  # a bug in the weight mapping, not in the user's files
        raise RuntimeError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    with tempfile.TemporaryDirectory() as tables:
        files = {}
        for key, table in (("char_vocab_file", release.char_table), ("word_vocab_file", release.word_table)):
            if table is not None:
                files[key] = Path(tables) / ElmoManyLangsTokenizer.vocab_files_names[key]
                files[key].write_text(json.dumps(efml.shifted_table(table), ensure_ascii=False), encoding="utf-8")
        tokenizer = ElmoManyLangsTokenizer(**files, max_characters_per_token=config.max_characters_per_token,
                                           word_segmenter=lang.word_segmenter, language=lang.iso)
    return write_checkpoint_folder(Path(output_dir), model, tokenizer, elmoformanylangs_model_card(config, lang))


def elmoformanylangs_model_card(config: ElmoConfig, lang) -> str:
    """The README.md of a converted ELMoForManyLangs model: its language, training data, citation and license."""
    from string import Template

    segmenter = {
        "jieba": "jieba (install the optional extra: `pip install 'hf-elmo[zh]'`)",
        "moses": f"the Moses tokenizer (sacremoses, `{lang.iso}` rules), an approximation of the UDPipe "
                 "tokenization the model was trained on",
        None: "none: pass pre-split words (`is_split_into_words=True`)",
    }[lang.word_segmenter]
    source = (f"[NLPL repository, model {lang.nlpl_id}](http://vectors.nlpl.eu/repository/11/{lang.nlpl_id}.zip)"
              if lang.nlpl_id is not None else "the simplified-Chinese model linked from the ELMoForManyLangs README")
    template = resources.files("hf_elmo.model_cards").joinpath("elmoformanylangs.md").read_text(encoding="utf-8")
    return Template(template).substitute(
        iso=lang.iso, name=lang.name, source=source, training_data=lang.training_data, segmenter=segmenter,
        word_dim=config.word_embedding_dim, char_dim=config.char_embedding_dim,
        n_filters=config.num_char_filters, lstm_dim=config.lstm_dim, projection_dim=config.projection_dim,
        n_layers=config.num_hidden_layers, output_dim=config.output_dim,
    )


# ----------------------------------------------------------------------------------- back to bilm-tf's layout
# The files of an exported folder: bilm-tf's release layout (options.json, weights hdf5) and, for a language
# model, the released softmax's layout (checkpoints/softmax.py) with bilm-tf's vocabulary file.
ORIGINAL_OPTIONS_FILE = "options.json"
ORIGINAL_WEIGHTS_FILE = "weights.hdf5"
ORIGINAL_SOFTMAX_FILE = "softmax.hdf5"
ORIGINAL_VOCABULARY_FILE = "vocab.txt"
ORIGINAL_FILES = (ORIGINAL_OPTIONS_FILE, ORIGINAL_WEIGHTS_FILE, ORIGINAL_SOFTMAX_FILE, ORIGINAL_VOCABULARY_FILE)
# Model classes whose every weight is exported; other architectures (task heads) lose their head.
EXPORTED_ARCHITECTURES = ("ElmoModel", "ElmoForPreTraining")


@dataclass(frozen=True)
class OriginalExport:
    """What `export_original_checkpoint` wrote: the folder, its files, and what the checkpoint had that bilm-tf's
    layout cannot hold (each a short description; empty for a converted release)."""

    output_dir: Path
    files: tuple[str, ...]
    left_out: tuple[str, ...]


def export_original_checkpoint(model_dir: str | os.PathLike, output_dir: str | os.PathLike) -> OriginalExport:
    """
    Write a checkpoint folder (converted or trained; or a Hub repo id) in bilm-tf's release layout, so bilm-tf's
    `BidirectionalLanguageModel` and allennlp's `Elmo` load it: `options.json` and `weights.hdf5` (the datasets
    of bilm-tf's `dump_weights`, float32), and for a language model (`lm_vocab_size` > 0) `softmax.hdf5`
    (`softmax/W` (V, P), `softmax/b` (V,)) and `vocab.txt` (its words, softmax row i = line i), which
    `hf-elmo convert --softmax-weight-file softmax.hdf5 --vocab-file vocab.txt` reads back.

    Converting the export gives a converted checkpoint's biLM and softmax back bit for bit; a trained one's too,
    except the low bits of forget-gate biases below 0.5 (at most 2**-24; `checkpoints.bilm_tf.
    datasets_from_state_dict` says why).
    Not exported (listed in `left_out`): hf-elmo's trained or fixed scalar mix, cached word vectors, layer norm
    and a task head.

    The folder is written atomically. An existing `output_dir` is replaced only if it is empty or holds nothing
    but the files of an export (`ORIGINAL_FILES`), so a wrong argument never deletes anything else.
    Raises `CheckpointError` for a model bilm-tf's layout cannot describe (ELMoForManyLangs).
    """
    from .checkpoints.bilm_tf import datasets_from_state_dict, options_from_config, write_weights
    from .checkpoints.softmax import write_softmax
    from .jobs.core import load_model
    from .jobs.lm_job import read_checkpoint_lm_vocabulary

    output_dir = Path(output_dir)
    _check_export_target(output_dir)
    model = load_model(model_dir, dtype=torch.float32, model_class=ElmoForPreTraining)
    config, source = model.config, str(model_dir)
    options = options_from_config(config, source)
    state = model.elmo.state_dict()
    arrays = datasets_from_state_dict(state, config, source)
    vocabulary = read_checkpoint_lm_vocabulary(model_dir, config.lm_vocab_size) if model.softmax is not None else None
    files = [ORIGINAL_OPTIONS_FILE, ORIGINAL_WEIGHTS_FILE]
    with _staged_folder(output_dir, "bilm-tf checkpoint") as staging:
        # One line, as the released options.json files.
        (staging / ORIGINAL_OPTIONS_FILE).write_text(json.dumps(options) + "\n", encoding="utf-8")
        write_weights(staging / ORIGINAL_WEIGHTS_FILE, arrays)
        if vocabulary is not None:
            weight, bias = (tensor.detach().numpy() for tensor in model.softmax_parameters())
            write_softmax(staging / ORIGINAL_SOFTMAX_FILE, weight, bias)
            write_lm_vocabulary(staging / ORIGINAL_VOCABULARY_FILE, vocabulary)
            files += [ORIGINAL_SOFTMAX_FILE, ORIGINAL_VOCABULARY_FILE]
    return OriginalExport(output_dir, tuple(files), _not_exported(config, state))


def _check_export_target(output_dir: Path) -> None:
    """Refuse an `output_dir` that is a file, or a folder holding anything but a previous export's files."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise CheckpointError(f"{output_dir}: exists and is not a folder")
    others = sorted(entry.name for entry in output_dir.iterdir() if entry.name not in ORIGINAL_FILES)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CheckpointError(f"{output_dir}: not replaced: the folder holds files an export does not write "
                              f"({shown}); choose a new or empty folder")


def _not_exported(config: ElmoConfig, state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """What the checkpoint holds beyond the biLM and softmax, which bilm-tf's layout has no place for."""
    left_out = []
    heads = [name for name in (config.architectures or []) if name not in EXPORTED_ARCHITECTURES]
    if heads:
        left_out.append(f"the task head ({', '.join(heads)})")
    if config.scalar_mix_parameters is not None:
        left_out.append(f"the fixed scalar_mix_parameters {config.scalar_mix_parameters}")
    elif bool(state["scalar_mix.scalar_parameters"].any()) or bool((state["scalar_mix.gamma"] != 1).any()):
        left_out.append("the trained scalar mix (allennlp's Elmo trains its own)")
    if config.do_layer_norm:
        left_out.append("do_layer_norm")
    if config.num_cached_words:
        left_out.append(f"{config.num_cached_words} cached word vectors (bilm-tf and allennlp compute them from "
                        f"the characters)")
    return tuple(left_out)


__all__ = ["LM_VOCABULARY_FILE", "MODEL_CARDS", "ORIGINAL_FILES", "OriginalExport", "convert_elmoformanylangs",
           "convert_original_checkpoint", "convert_training_checkpoint", "export_original_checkpoint",
           "set_auto_map", "write_checkpoint_folder"]
