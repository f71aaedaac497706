"""ELMoForManyLangs (HIT-SCIR, MIT) release folders: reading, validation and the mapping onto `ElmoModel`.

A released folder (e.g. `en.model/`, or `144/` as the NLPL repository unzips it) holds `config.json` (training
arguments; only `config_path` matters to the network, `model` / `train_path` name the language), the network
config (`cnn_50_100_512_4096_sample.json`, sometimes missing: then the released one is used), `char.dic` and
`word.dic` (`token<TAB>id`), and `token_embedder.pkl` / `encoder.pkl` (PyTorch state dicts). The pickles are
read here only, with `torch.load(weights_only=True)`; the converted checkpoint is safetensors.

How the format differs from bilm-tf (all reproduced by the mapping and by `ElmoManyLangsTokenizer`): a
per-model Unicode character table with `<oov>` and a trained `<pad>` row; words start with the `<eow>` id and
end with the `<bow>` id; `<bos>` / `<eos>` are real tokens; a word embedding concatenated before the projection
(which always exists and has a bias); allennlp's highway (`y = g * x + (1 - g) * relu(...)`, the gate is our
carry gate negated); allennlp's `LstmCellWithProjection` in PyTorch layout (gates i, f, g, o; no forget-bias
shift: the bias is copied as is); skip connections between the LSTM layers always on.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configuration_elmo import ElmoConfig
from . import CheckpointError, read_json_file

CHAR_TABLE_FILE = "char.dic"
WORD_TABLE_FILE = "word.dic"
TOKEN_EMBEDDER_FILE = "token_embedder.pkl"
ENCODER_FILE = "encoder.pkl"
# The network config every released model was trained with (the package's configs/cnn_50_100_512_4096_sample.json,
# also posted in HIT-SCIR/ELMoForManyLangs issue 27); released config.json files point to it by an absolute path
# on the authors' machine, and several release folders do not include it.
RELEASED_NETWORK_CONFIG_NAME = "cnn_50_100_512_4096_sample.json"
RELEASED_NETWORK_CONFIG = {
    "encoder": {"name": "elmo", "projection_dim": 512, "cell_clip": 3, "proj_clip": 3, "dim": 4096, "n_layers": 2},
    "token_embedder": {
        "name": "cnn", "activation": "relu",
        "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
        "n_highway": 2, "word_dim": 100, "char_dim": 50, "max_characters_per_token": 50,
    },
}

CONLL_TRAINING_DATA = (
    "about 20 million words sampled from the raw text of the CoNLL 2018 shared task (Multilingual Parsing from Raw "
    "Text to Universal Dependencies: Wikipedia dumps and Common Crawl), tokenized by UDPipe"
)


@dataclass(frozen=True)
class ManyLangsLanguage:
    """One released ELMoForManyLangs model: its language and where it came from."""

    key: str  # what `--language` takes
    iso: str  # ISO 639 code for the model card's `language`
    name: str
    nlpl_id: int | None  # http://vectors.nlpl.eu/repository/11/<id>.zip
    aliases: tuple[str, ...]  # how release folders name it (config.json "model": "<alias>.model", train_path)
    word_segmenter: str | None  # raw-text splitting of the tokenizer: "moses", "jieba", or None (pre-split only)
    training_data: str = CONLL_TRAINING_DATA


def _language(key: str, iso: str, name: str, nlpl_id: int | None, *aliases: str,
              word_segmenter: str | None = "moses", training_data: str = CONLL_TRAINING_DATA) -> ManyLangsLanguage:
    return ManyLangsLanguage(key, iso, name, nlpl_id, (key, name, *aliases), word_segmenter, training_data)


# The 44 languages of the CoNLL 2018 releases (HIT-SCIR/ELMoForManyLangs README), plus the simplified-Chinese model.
# Japanese and Vietnamese are pre-split only: Moses cannot segment Japanese, and Vietnamese UD words contain spaces.
LANGUAGES: tuple[ManyLangsLanguage, ...] = (
    _language("ar", "ar", "Arabic", 136),
    _language("bg", "bg", "Bulgarian", 137),
    _language("ca", "ca", "Catalan", 138),
    _language("cs", "cs", "Czech", 139),
    _language("cu", "cu", "Old Church Slavonic", 140, "Old_Church_Slavonic"),
    _language("da", "da", "Danish", 141),
    _language("de", "de", "German", 142),
    _language("el", "el", "Greek", 143),
    _language("en", "en", "English", 144),
    _language("es", "es", "Spanish", 145),
    _language("et", "et", "Estonian", 146),
    _language("eu", "eu", "Basque", 147),
    _language("fa", "fa", "Persian", 148),
    _language("fi", "fi", "Finnish", 149),
    _language("fr", "fr", "French", 150),
    _language("ga", "ga", "Irish", 151),
    _language("gl", "gl", "Galician", 152),
    _language("grc", "grc", "Ancient Greek", 153, "Ancient_Greek"),
    _language("he", "he", "Hebrew", 154),
    _language("hi", "hi", "Hindi", 155),
    _language("hr", "hr", "Croatian", 156),
    _language("hu", "hu", "Hungarian", 157),
    _language("id", "id", "Indonesian", 158),
    _language("it", "it", "Italian", 159),
    _language("ja", "ja", "Japanese", 160, word_segmenter=None),
    _language("ko", "ko", "Korean", 161),
    _language("la", "la", "Latin", 162),
    _language("lv", "lv", "Latvian", 163),
    _language("nl", "nl", "Dutch", 164),
    _language("nb", "nb", "Norwegian Bokmål", 165, "no_bokmaal", "Norwegian-Bokmaal", "Norwegian_Bokmaal"),
    _language("nn", "nn", "Norwegian Nynorsk", 166, "no_nynorsk", "Norwegian-Nynorsk", "Norwegian_Nynorsk"),
    _language("pl", "pl", "Polish", 167),
    _language("pt", "pt", "Portuguese", 168),
    _language("ro", "ro", "Romanian", 169),
    _language("ru", "ru", "Russian", 170),
    _language("sk", "sk", "Slovak", 171),
    _language("sl", "sl", "Slovene", 172, "Slovenian"),
    _language("sv", "sv", "Swedish", 173),
    _language("tr", "tr", "Turkish", 174),
    _language("ug", "ug", "Uyghur", 175),
    _language("uk", "uk", "Ukrainian", 176),
    _language("ur", "ur", "Urdu", 177),
    _language("vi", "vi", "Vietnamese", 178, word_segmenter=None),
    _language("zh", "zh", "Chinese", 179, "zht", "zh-Hant", word_segmenter="jieba",
              training_data=CONLL_TRAINING_DATA + " (traditional Chinese, from Wikipedia)"),
    _language("zhs", "zh", "Simplified Chinese", None, "zh-Hans", word_segmenter="jieba",
              training_data="the Xinhua portion of Chinese Gigaword v5 (LDC2011T13), simplified Chinese"),
)


def _alias_key(name: str) -> str:
    """Aliases compare without case, accents, spaces, `-` / `_`: 'Norwegian-Bokmål' == 'norwegian_bokmal'."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded.lower() if ch.isalnum())


_BY_ALIAS = {_alias_key(alias): lang for lang in LANGUAGES for alias in lang.aliases}


def find_language(name: str) -> ManyLangsLanguage | None:
    """The language named by a code, a release name (`no_bokmaal`) or an English name; None if unknown."""
    return _BY_ALIAS.get(_alias_key(name))


@dataclass
class ManyLangsRelease:
    """A release folder read and checked: the network config, the tables (original ids) and both state dicts."""

    folder: Path
    network: dict
    char_table: dict[str, int]
    word_table: dict[str, int] | None
    token_embedder: dict[str, torch.Tensor]
    encoder: dict[str, torch.Tensor]
    training_config: dict


def read_release(model_dir: str | Path) -> ManyLangsRelease:
    """Read and check an ELMoForManyLangs release folder; `CheckpointError` naming the file on any problem."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected an ELMoForManyLangs model folder with config.json, "
                              f"the network .json, {CHAR_TABLE_FILE}, {WORD_TABLE_FILE} and the .pkl files)")
    training_config = _read_json(folder / "config.json")
    network = _network_config(folder, training_config)
    embedder = network["token_embedder"]
    char_table = read_table(folder / CHAR_TABLE_FILE)
    word_table = read_table(folder / WORD_TABLE_FILE) if embedder["word_dim"] > 0 else None
    token_embedder = _read_state_dict(folder / TOKEN_EMBEDDER_FILE)
    encoder = _read_state_dict(folder / ENCODER_FILE)
    release = ManyLangsRelease(folder, network, char_table, word_table, token_embedder, encoder, training_config)
    _check_tables(release)
    return release


def _read_json(path: Path) -> dict:
    data = read_json_file(path, "not found (an ELMoForManyLangs model folder has config.json)")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _network_config(folder: Path, training_config: dict) -> dict:
    """The network config `config.json` points to: as given, or by file name in the folder, or the released one."""
    config_path = training_config.get("config_path")
    if not isinstance(config_path, str) or not config_path:
        raise CheckpointError(f"{folder / 'config.json'}: no 'config_path' naming the network config")
    name = Path(config_path).name
    for candidate in (folder / config_path, folder / name):
        if candidate.is_file():
            network, source = _read_json(candidate), candidate
            break
    else:
        if name != RELEASED_NETWORK_CONFIG_NAME:
            raise CheckpointError(f"{folder / 'config.json'}: its config_path {config_path!r} is not in the folder; "
                                  f"copy that network config into {folder}")
        network, source = RELEASED_NETWORK_CONFIG, folder / "config.json"
    try:
        encoder, embedder = network["encoder"], network["token_embedder"]
        checks = {
            "encoder.name": encoder["name"] == "elmo",
            "token_embedder.name": embedder["name"] == "cnn",
            "token_embedder.char_dim": embedder["char_dim"] > 0,
            "token_embedder.word_dim": embedder["word_dim"] >= 0,
            "token_embedder.activation": embedder["activation"] in ("relu", "tanh"),
        }
        for key in ("projection_dim", "dim", "n_layers"):
            checks[f"encoder.{key}"] = int(encoder[key]) > 0
        for key in ("n_highway", "max_characters_per_token"):
            checks[f"token_embedder.{key}"] = int(embedder[key]) >= 0
        checks["token_embedder.filters"] = all(len(f) == 2 and f[0] > 0 and f[1] > 0 for f in embedder["filters"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: not an ELMoForManyLangs network config ({type(error).__name__}: {error})")
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise CheckpointError(f"{source}: unsupported {', '.join(bad)} (converted are the 'cnn' token embedder with "
                              f"characters, optionally words, and the 'elmo' encoder, as in every released model)")
    return network


def read_table(path: Path) -> dict[str, int]:
    """
    `char.dic` / `word.dic` as the original reads them: lines split as `str.splitlines` does, each stripped of
    surrounding whitespace and split at tabs; a line left with only an id was a whitespace character, which
    the original files under U+3000 (IDEOGRAPHIC SPACE). Later lines win over earlier ones for the same token.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not UTF-8 text ({error})") from None
    table: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.strip().split("\t")
        if len(fields) == 1:
            fields.insert(0, "\u3000")
        if len(fields) != 2 or not fields[1].isdigit():
            raise CheckpointError(f"{path}, line {number}: expected 'token<TAB>id', got {line!r:.80}")
        table[fields[0]] = int(fields[1])
    if not table:
        raise CheckpointError(f"{path}: empty")
    return table


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or non-tensor pickle
        raise CheckpointError(f"{path}: not a PyTorch state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def _check_tables(release: ManyLangsRelease) -> None:
    """The special tokens the original looks up exist, and every id has a row in the embedding it indexes."""
    folder = release.folder
    tables = [(folder / CHAR_TABLE_FILE, release.char_table, "char_emb_layer.embedding.weight",
               ("<bow>", "<eow>", "<oov>", "<pad>", "<bos>", "<eos>"))]
    if release.word_table is not None:
        tables.append((folder / WORD_TABLE_FILE, release.word_table, "word_emb_layer.embedding.weight",
                       ("<oov>", "<pad>")))
    for path, table, key, specials in tables:
        missing = [token for token in specials if token not in table]
        if missing:
            raise CheckpointError(f"{path}: lacks the special token(s) {missing}")
        weight = release.token_embedder.get(key)
        if weight is None or weight.dim() != 2:
            raise CheckpointError(f"{folder / TOKEN_EMBEDDER_FILE}: no 2-D {key!r} for {path.name}")
        token, largest = max(table.items(), key=lambda item: item[1])
        if largest >= weight.shape[0]:
            raise CheckpointError(f"{path}: {token!r} has id {largest}, but {key} has only {weight.shape[0]} rows")


# ---------------------------------------------------------------------------------------------------- language
def detect_language(training_config: dict) -> ManyLangsLanguage | None:
    """
    The language a released `config.json` names: its `model` (`.../en.model`) and `train_path`
    (`.../raw_text/English/en-20m.raw`). None if they name none; `CheckpointError` if they disagree.
    """
    names = []
    model = training_config.get("model")
    if isinstance(model, str) and model.rstrip("/").endswith(".model"):
        names.append(Path(model.rstrip("/")).name[: -len(".model")])
    train_path = training_config.get("train_path")
    if isinstance(train_path, str) and train_path:
        path = Path(train_path)
        names += [path.parent.name, path.name.split("-")[0].split(".")[0]]
    found = {lang.key: lang for lang in map(find_language, names) if lang is not None}
    if len(found) > 1:
        raise CheckpointError(f"config.json names several languages ({', '.join(sorted(found))}: model {model!r}, "
                              f"train_path {train_path!r}); pass --language")
    return next(iter(found.values()), None)


def resolve_language(release: ManyLangsRelease, language: str | None) -> ManyLangsLanguage:
    """The model's language: what config.json says, or `language`; never a guess."""
    detected = detect_language(release.training_config)
    if language is None:
        if detected is None:
            raise CheckpointError(
                f"{release.folder / 'config.json'} does not say which language the model is (model "
                f"{release.training_config.get('model')!r}, train_path {release.training_config.get('train_path')!r})"
                f"; pass --language, one of: {', '.join(lang.key for lang in LANGUAGES)}")
        return detected
    given = find_language(language)
    if given is None:
        raise CheckpointError(f"unknown language {language!r}; one of: {', '.join(lang.key for lang in LANGUAGES)}")
    if detected is not None and detected.key != given.key:
        raise CheckpointError(f"{release.folder / 'config.json'} says the model is {detected.name} "
                              f"({detected.key}), not {given.name} ({given.key})")
    return given


# -------------------------------------------------------------------------------------------------- the mapping
def config_from_release(release: ManyLangsRelease) -> ElmoConfig:
    """The `ElmoConfig` of a release: its shapes, its boundary tokens' ids, skip connections on."""
    encoder, embedder = release.network["encoder"], release.network["token_embedder"]
    filters = [[int(w), int(n)] for w, n in embedder["filters"]]
    word_dim = int(embedder["word_dim"])
    if word_dim == 0 and sum(n for _, n in filters) == int(encoder["projection_dim"]):
        raise CheckpointError(f"{release.folder}: filters adding up to projection_dim without a word embedding "
                              "are not supported (the projection would be dropped as in bilm-tf)")
    return ElmoConfig(
        char_embedding_dim=int(embedder["char_dim"]),
        char_filters=filters,
        num_highway_layers=int(embedder["n_highway"]),
        num_characters=release.token_embedder["char_emb_layer.embedding.weight"].shape[0] + 1,
        max_characters_per_token=int(embedder["max_characters_per_token"]),
        char_activation=embedder["activation"],
        lstm_dim=int(encoder["dim"]),
        projection_dim=int(encoder["projection_dim"]),
        num_hidden_layers=int(encoder["n_layers"]),
        # allennlp's cell skips a clip of 0 or None ("if self.memory_cell_clip_value:").
        cell_clip=float(encoder["cell_clip"]) if encoder.get("cell_clip") else None,
        proj_clip=float(encoder["proj_clip"]) if encoder.get("proj_clip") else None,
        use_skip_connections=True,
        word_vocab_size=release.token_embedder["word_emb_layer.embedding.weight"].shape[0] + 1 if word_dim else 0,
        word_embedding_dim=word_dim,
        boundary_char_ids=[boundary_char_ids(release.char_table, word, int(embedder["max_characters_per_token"]))
                           for word in ("<bos>", "<eos>")],
        boundary_word_ids=[boundary_word_id(release.word_table, word) for word in ("<bos>", "<eos>")]
        if word_dim else None,
    )


def shifted_table(table: dict[str, int]) -> dict[str, int]:
    """Original ids + 1: hf-elmo keeps id 0 for "nothing" (a padding word)."""
    return {token: i + 1 for token, i in table.items()}


def boundary_char_ids(char_table: dict[str, int], word: str, max_characters_per_token: int) -> list[int]:
    """The (shifted) character ids of `<bos>` or `<eos>`: `<eow>` id, the token's own id, `<bow>` id, `<pad>`s."""
    table = shifted_table(char_table)
    ids = [table["<eow>"], table[word], table["<bow>"]]
    return ids + [table["<pad>"]] * (max_characters_per_token - len(ids))


def boundary_word_id(word_table: dict[str, int], word: str) -> int:
    """The (shifted) word id of `<bos>` or `<eos>`; the original looks them up like any word (unknown -> `<oov>`)."""
    return word_table.get(word, word_table["<oov>"]) + 1


def _with_padding_row(weight: torch.Tensor) -> torch.Tensor:
    """Prepend the zero row of id 0 ("nothing") to an embedding whose ids are shifted by one."""
    return torch.cat([weight.new_zeros(1, weight.shape[1]), weight])


def state_dict_from_release(release: ManyLangsRelease, config: ElmoConfig) -> dict[str, torch.Tensor]:
    """`ElmoModel` parameters from the two state dicts; `CheckpointError` naming the file and key on a mismatch."""
    embedder_file, encoder_file = release.folder / TOKEN_EMBEDDER_FILE, release.folder / ENCODER_FILE
    taken: dict[Path, set[str]] = {embedder_file: set(), encoder_file: set()}

    def take(path: Path, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        source = release.token_embedder if path == embedder_file else release.encoder
        if key not in source:
            raise CheckpointError(f"{path}: missing {key!r}")
        tensor = source[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{path}: {key!r} has shape {tuple(tensor.shape)}, the network config needs {shape}")
        taken[path].add(key)
        return tensor.float()

    n_filters, p, h = config.num_char_filters, config.projection_dim, config.lstm_dim
    out = {"char_encoder.char_embedding.weight": _with_padding_row(take(
        embedder_file, "char_emb_layer.embedding.weight", (config.num_characters - 1, config.char_embedding_dim)))}
    for i, (width, n) in enumerate(config.char_filters):
        out[f"char_encoder.convolutions.{i}.weight"] = take(embedder_file, f"convolutions.{i}.weight",
                                                             (n, config.char_embedding_dim, width))
        out[f"char_encoder.convolutions.{i}.bias"] = take(embedder_file, f"convolutions.{i}.bias", (n,))
    for k in range(config.num_highway_layers):
        # allennlp: rows [0, D) the transform, [D, 2D) the gate of "carry the input"; ours gates the transform.
        weight = take(embedder_file, f"highways._layers.{k}.weight", (2 * n_filters, n_filters))
        bias = take(embedder_file, f"highways._layers.{k}.bias", (2 * n_filters,))
        out[f"char_encoder.highways.{k}.transform.weight"] = weight[:n_filters]
        out[f"char_encoder.highways.{k}.transform.bias"] = bias[:n_filters]
        out[f"char_encoder.highways.{k}.carry.weight"] = -weight[n_filters:]
        out[f"char_encoder.highways.{k}.carry.bias"] = -bias[n_filters:]
    if config.word_embedding_dim:
        out["char_encoder.word_embedding.weight"] = _with_padding_row(take(
            embedder_file, "word_emb_layer.embedding.weight", (config.word_vocab_size - 1, config.word_embedding_dim)))
    out["char_encoder.projection.weight"] = take(embedder_file, "projection.weight",
                                                 (p, n_filters + config.word_embedding_dim))
    out["char_encoder.projection.bias"] = take(embedder_file, "projection.bias", (p,))
    for layer in range(config.num_hidden_layers):
        parts = {"input_weight": ("input_linearity.weight", (4 * h, p)),
                 "recurrent_weight": ("state_linearity.weight", (4 * h, p)),
                 "bias": ("state_linearity.bias", (4 * h,)),
                 "projection_weight": ("state_projection.weight", (p, h))}
        for name, (key, shape) in parts.items():
            out[f"encoder.layers.{layer}.{name}"] = torch.stack(
                [take(encoder_file, f"{direction}_layer_{layer}.{key}", shape) for direction in ("forward", "backward")])
    # The original's default output (-1) is the plain mean of the layers: equal mixing weights, scale 1.
    out["scalar_mix.scalar_parameters"] = torch.zeros(config.num_hidden_layers + 1)
    out["scalar_mix.gamma"] = torch.ones(1)
    for path, source in ((embedder_file, release.token_embedder), (encoder_file, release.encoder)):
        unexpected = sorted(set(source) - taken[path])
        if unexpected:
            raise CheckpointError(f"{path}: unexpected weights {unexpected} for the network config")
    return out


__all__ = [
    "LANGUAGES", "ManyLangsLanguage", "ManyLangsRelease", "config_from_release", "detect_language", "find_language",
    "read_release", "read_table", "resolve_language", "shifted_table", "state_dict_from_release",
]
