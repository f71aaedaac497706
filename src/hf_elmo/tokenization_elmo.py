"""ELMo tokenizer: text -> words (Moses, as ELMo's training data) -> 50 character ids per word.

The character ids are exactly allennlp's `ELMoTokenCharactersIndexer` / bilm-tf's `Batcher`: a word's UTF-8
bytes (undecodable parts dropped, cut to `max_characters_per_token - 2`) between begin- and end-of-word
markers, padded, every id shifted by +1 so that 0 means "no character" and a padding word is all zeros.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import regex
from transformers import BatchEncoding, PreTrainedTokenizer
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, TensorType

# Character ids before the +1 shift (bilm-tf's UnicodeCharsVocabulary).
BEGIN_OF_SENTENCE_CHAR = 256
END_OF_SENTENCE_CHAR = 257
BEGIN_OF_WORD_CHAR = 258
END_OF_WORD_CHAR = 259
PADDING_CHAR = 260

BOS_WORD = "<S>"
EOS_WORD = "</S>"
PAD_TOKEN = "<pad>"


@lru_cache(maxsize=2**16)
def word_to_char_ids(word: str, max_characters_per_token: int = 50) -> tuple[int, ...]:
    """The `max_characters_per_token` shifted character ids of one word, as allennlp computes them."""
    if word == BOS_WORD:
        body = [BEGIN_OF_SENTENCE_CHAR]
    elif word == EOS_WORD:
        body = [END_OF_SENTENCE_CHAR]
    else:
        # "ignore" drops lone surrogates, the only str content UTF-8 cannot encode.
        body = list(word.encode("utf-8", "ignore")[: max_characters_per_token - 2])
    ids = [BEGIN_OF_WORD_CHAR, *body, END_OF_WORD_CHAR]
    ids += [PADDING_CHAR] * (max_characters_per_token - len(ids))
    return tuple(i + 1 for i in ids)


def char_ids_to_word(char_ids: Sequence[int]) -> str | None:
    """Inverse of `word_to_char_ids` (up to truncation); `None` for a padding word (all zeros)."""
    raw = [int(i) - 1 for i in char_ids]
    if all(i == -1 for i in raw):
        return None
    if BEGIN_OF_SENTENCE_CHAR in raw[1:2]:
        return BOS_WORD
    if END_OF_SENTENCE_CHAR in raw[1:2]:
        return EOS_WORD
    data = bytes(i for i in raw if 0 <= i < 256)
    return data.decode("utf-8", "ignore")


# Moses deletes these (its "ASCII junk") after turning whitespace into spaces, so they vanish from its words.
_MOSES_DELETED = frozenset(chr(c) for c in range(32) if not chr(c).isspace())
# An extended grapheme cluster (UAX #29): what a reader sees as one character.
_GRAPHEME_CLUSTER = regex.compile(r"\X")


def _locate_words(text: str, words: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """
    Each Moses word with its `(start, end)` span in `text`. Moses only inserts spaces and deletes `_MOSES_DELETED`
    characters, so every word is found in order in the text with those characters left out; a span covers the
    deleted characters inside its word.
    """
    kept = [i for i, ch in enumerate(text) if ch not in _MOSES_DELETED]
    visible = "".join(text[i] for i in kept)
    result, cursor = [], 0
    for word in words:
        start = visible.find(word, cursor)
        if start < 0:  # defensive: a rewritten word gets an empty span where it would have been
            position = kept[cursor] if cursor < len(kept) else len(text)
            result.append((word, (position, position)))
            continue
        cursor = start + len(word)
        result.append((word, (kept[start], kept[cursor - 1] + 1)))
    return result


def _merge_split_grapheme_clusters(
    text: str, pairs: list[tuple[str, tuple[int, int]]]
) -> list[tuple[str, tuple[int, int]]]:
    """
    Join touching words whose boundary falls inside a grapheme cluster: Moses' character classes split an emoji
    from its skin tone, a flag's two regional indicators, or a letter from a combining accent.
    """
    if len(pairs) < 2:
        return pairs
    boundaries = {match.start() for match in _GRAPHEME_CLUSTER.finditer(text)}
    merged = [pairs[0]]
    for word, (start, end) in pairs[1:]:
        previous, (previous_start, previous_end) = merged[-1]
        if previous_end == start and start not in boundaries:
            merged[-1] = (previous + word, (previous_start, end))
        else:
            merged.append((word, (start, end)))
    return merged


def _padded_width(
    lengths: list[int], strategy: PaddingStrategy, max_length: int | None, pad_to_multiple_of: int | None
) -> int:
    """Words per row of a batch: the longest sentence, at least `max_length` for MAX_LENGTH, rounded up when padding."""
    width = max(lengths, default=0)
    if strategy == PaddingStrategy.MAX_LENGTH:
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        width = max(width, max_length)
    if strategy != PaddingStrategy.DO_NOT_PAD and pad_to_multiple_of and width % pad_to_multiple_of:
        width += pad_to_multiple_of - width % pad_to_multiple_of
    return width


class ElmoBatchEncoding(BatchEncoding):
    """A `BatchEncoding` whose positions are words, so it can answer `word_ids` / `tokens` without a fast tokenizer."""

    def __init__(self, data: dict[str, Any] | None = None, words: list[list[str]] | None = None,
                 widths: list[int] | None = None, is_batched: bool = True, tensor_type=None):
        # Without words (rebuilt from a plain mapping, as Trainer does when it moves a batch to the device), the
        # word positions are unknown and `tokens` / `word_ids` say so.
        self._words = words
        self._widths = widths  # positions per row, padding included
        super().__init__(data, tensor_type=tensor_type, prepend_batch_axis=not is_batched and tensor_type is not None)

    def __getstate__(self):
        return {**super().__getstate__(), "words": self._words, "widths": self._widths}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._words = state.get("words", [])
        self._widths = state.get("widths", [])

    def _row_width(self, batch_index: int) -> int:
        return self._widths[batch_index]

    def _row_words(self, batch_index: int) -> list[str]:
        if self._words is None:
            raise ValueError("word positions unknown: this encoding was rebuilt from a plain mapping of tensors")
        return self._words[batch_index]

    def tokens(self, batch_index: int = 0) -> list[str | None]:
        """The words of row `batch_index`, `None` at padding positions."""
        words = self._row_words(batch_index)
        return list(words) + [None] * (self._row_width(batch_index) - len(words))

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Position -> word index: position i is word i; padding positions map to `None`."""
        n_words = len(self._row_words(batch_index))
        return list(range(n_words)) + [None] * (self._row_width(batch_index) - n_words)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int:
        if token_index is None:
            batch_or_token_index, token_index = 0, batch_or_token_index
        word = self.word_ids(batch_or_token_index)[token_index]
        if word is None:
            raise IndexError(f"position {token_index} of row {batch_or_token_index} is padding")
        return word


class ElmoTokenizer(PreTrainedTokenizer):
    r"""
    Turns raw text or pre-split words into ELMo character ids.

    `input_ids` has shape `(batch, words, max_characters_per_token)` (int64) and one position per word; the
    model adds `<S>` / `</S>` itself. Raw text is split with the Moses tokenizer (sacremoses), the tokenizer
    the One Billion Word Benchmark was made with; words given with `is_split_into_words=True` are kept as they are.

    Args:
        max_characters_per_token: Character slots per word (50 for every released model).
        moses_language: Language of the Moses word-splitting rules.
    """

    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, max_characters_per_token: int = 50, moses_language: str = "en", **kwargs):
        if max_characters_per_token < 3:
            raise ValueError(f"max_characters_per_token must be at least 3, got {max_characters_per_token}")
        self.max_characters_per_token = max_characters_per_token
        self.moses_language = moses_language
        self._moses = None
        kwargs.setdefault("bos_token", BOS_WORD)
        kwargs.setdefault("eos_token", EOS_WORD)
        kwargs.setdefault("pad_token", PAD_TOKEN)
        kwargs.setdefault("model_max_length", 10**9)
        super().__init__(max_characters_per_token=max_characters_per_token, moses_language=moses_language, **kwargs)

    # The "vocabulary" is the character id space: id 0 is the padding (word), so `pad_token_id == 0` and
    # anything that pads `input_ids` with `pad_token_id` produces all-zero padding words.
    @property
    def vocab_size(self) -> int:
        return PADDING_CHAR + 2

    def get_vocab(self) -> dict[str, int]:
        return {PAD_TOKEN: 0, BOS_WORD: BEGIN_OF_SENTENCE_CHAR + 1, EOS_WORD: END_OF_SENTENCE_CHAR + 1}

    def _convert_token_to_id(self, token: str) -> int:
        return self.get_vocab().get(token, 0)

    def _convert_id_to_token(self, index: int) -> str:
        return {i: token for token, i in self.get_vocab().items()}.get(index, PAD_TOKEN)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # nothing to save: the character ids are fixed

    @property
    def ids_per_word(self) -> int:
        """Width of each word's row of `input_ids` (`max_characters_per_token` here)."""
        return self.max_characters_per_token

    def _ids_to_word(self, ids: Sequence[int]) -> str | None:
        """The word of one row of `input_ids`; `None` for a padding word."""
        return char_ids_to_word(ids)

    # ----------------------------------------------------------------------------------------------- words
    def split_words(self, text: str) -> list[str]:
        """Split raw text into words with the Moses tokenizer (`wasn't` -> `wasn 't`, `U.S.` kept)."""
        return [word for word, _ in self._split_with_offsets(text)]

    def _split_with_offsets(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """Moses words with their `(start, end)` character spans in `text`, never splitting a grapheme cluster."""
        if self._moses is None:
            from sacremoses import MosesTokenizer

            self._moses = MosesTokenizer(lang=self.moses_language)
        words = self._moses.tokenize(text, escape=False)
        return _merge_split_grapheme_clusters(text, _locate_words(text, words))

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.split_words(text)

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """Character ids `(len(words), max_characters_per_token)` of already split words."""
        return [list(word_to_char_ids(w, self.max_characters_per_token)) for w in words]

    # -------------------------------------------------------------------------------------------- encoding
    def _encode_plus(
        self,
        text,
        text_pair=None,
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy=None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | TensorType | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        **kwargs,
    ) -> ElmoBatchEncoding:
        if text_pair is not None:
            raise ValueError("ElmoTokenizer encodes single sentences; text pairs are not supported")
        if return_overflowing_tokens:
            raise ValueError("ElmoTokenizer does not support return_overflowing_tokens")
        if (padding_side or self.padding_side) != "right":
            raise ValueError("ElmoTokenizer pads on the right only: the biLM reads each sentence from its first word")
        is_batched, sentences = self._normalize_input(text, is_split_into_words)

        rows_words: list[list[str]] = []
        rows_offsets: list[list[tuple[int, int]]] = []
        for sentence in sentences:
            if is_split_into_words:
                words = list(sentence)
                offsets = [(0, len(w)) for w in words]
            else:
                pairs = self._split_with_offsets(sentence)
                words = [w for w, _ in pairs]
                offsets = [s for _, s in pairs]
            if truncation_strategy not in (None, TruncationStrategy.DO_NOT_TRUNCATE) and max_length is not None:
                words, offsets = words[:max_length], offsets[:max_length]
            rows_words.append(words)
            rows_offsets.append(offsets)

        lengths = [len(w) for w in rows_words]
        if padding_strategy == PaddingStrategy.DO_NOT_PAD and return_tensors is not None and len(set(lengths)) > 1:
            raise ValueError("Sentences have different numbers of words; pass padding=True to batch them as tensors")
        target = _padded_width(lengths, padding_strategy, max_length, pad_to_multiple_of)

        # Built as numpy arrays so that empty sentences and batches keep their trailing dimensions.
        batch = len(rows_words)
        input_ids = np.zeros((batch, target, self.ids_per_word), dtype=np.int64)
        attention_mask = np.zeros((batch, target), dtype=np.int64)
        offset_mapping = np.zeros((batch, target, 2), dtype=np.int64)
        for row, (words, offsets) in enumerate(zip(rows_words, rows_offsets)):
            if words:
                input_ids[row, : len(words)] = self.encode_words(words)
                attention_mask[row, : len(words)] = 1
                offset_mapping[row, : len(words)] = offsets
        data: dict[str, Any] = {"input_ids": input_ids}
        if return_attention_mask is not False:
            data["attention_mask"] = attention_mask
        if return_offsets_mapping:
            data["offset_mapping"] = offset_mapping
        if return_special_tokens_mask:
            data["special_tokens_mask"] = 1 - attention_mask
        if return_length:
            data["length"] = np.array(lengths, dtype=np.int64)
        if return_tensors is None:
            # Python lists, each row trimmed to its own length unless padding was asked for.
            padded = padding_strategy != PaddingStrategy.DO_NOT_PAD
            data = {
                key: value.tolist() if key == "length" else
                [value[row].tolist() if padded else value[row, : lengths[row]].tolist() for row in range(batch)]
                for key, value in data.items()
            }
        padded = return_tensors is not None or padding_strategy != PaddingStrategy.DO_NOT_PAD
        widths = [target] * batch if padded else lengths
        if not is_batched:
            data = {key: value[0] for key, value in data.items()}
        return ElmoBatchEncoding(data, rows_words, widths, is_batched, tensor_type=return_tensors)

    @staticmethod
    def _normalize_input(text: Any, is_split_into_words: bool) -> tuple[bool, list]:
        """Validate the input; return (is_batched, list of sentences)."""

        def check_words(words: Any, where: str) -> list[str]:
            if isinstance(words, str) or not isinstance(words, (list, tuple)):
                raise ValueError(f"{where}: expected a list of words (str), got {type(words).__name__}")
            for j, w in enumerate(words):
                if not isinstance(w, str):
                    raise ValueError(f"{where}, word {j}: expected str, got {type(w).__name__} ({w!r:.50})")
            return list(words)

        if is_split_into_words:
            if isinstance(text, (list, tuple)) and (len(text) == 0 or not isinstance(text[0], str)):
                return True, [check_words(s, f"sentence {i}") for i, s in enumerate(text)]
            return False, [check_words(text, "input")]
        if isinstance(text, str):
            return False, [text]
        if isinstance(text, (list, tuple)):
            for i, s in enumerate(text):
                if not isinstance(s, str):
                    hint = " (pass is_split_into_words=True for pre-split words)" if isinstance(s, (list, tuple)) else ""
                    raise ValueError(f"text {i}: expected str, got {type(s).__name__}{hint}")
            return True, list(text)
        raise ValueError(f"expected str, list of str, or (with is_split_into_words=True) lists of words; "
                         f"got {type(text).__name__}")

    def pad(
        self,
        encoded_inputs,
        padding: bool | str | PaddingStrategy = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        verbose: bool = True,
    ) -> ElmoBatchEncoding:
        """
        Pad already encoded sentences (a list of encodings, or a dict of lists, as a `DataCollatorWithPadding`
        passes them) to `(batch, words, max_characters_per_token)`, padding words being all zeros.
        """
        if (padding_side or self.padding_side) != "right":
            raise ValueError("ElmoTokenizer pads on the right only: the biLM reads each sentence from its first word")
        if isinstance(encoded_inputs, (list, tuple)):
            rows = [np.asarray(e["input_ids"], dtype=np.int64) for e in encoded_inputs]
        else:
            rows = [np.asarray(r, dtype=np.int64) for r in encoded_inputs["input_ids"]]
        c = self.ids_per_word
        for i, row in enumerate(rows):
            if row.size == 0:
                rows[i] = row.reshape(0, c)
            elif row.ndim != 2 or row.shape[1] != c:
                raise ValueError(f"sentence {i}: input_ids must be (words, {c}) character ids, got shape {row.shape}")
        lengths = [int((row != 0).any(axis=1).sum()) for row in rows]
        # A batch must be rectangular: anything but an explicit max_length pads to the longest sentence.
        requested = PaddingStrategy(padding) if isinstance(padding, str) else padding
        strategy = PaddingStrategy.MAX_LENGTH if requested == PaddingStrategy.MAX_LENGTH and max_length is not None \
            else PaddingStrategy.LONGEST
        target = _padded_width([len(r) for r in rows], strategy, max_length, pad_to_multiple_of)
        input_ids = np.zeros((len(rows), target, c), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
        data: dict[str, Any] = {"input_ids": input_ids}
        if return_attention_mask is not False:
            data["attention_mask"] = (input_ids != 0).any(axis=2).astype(np.int64)
        words = [[self._ids_to_word(ids) or "" for ids in row[:n]] for row, n in zip(rows, lengths)]
        return ElmoBatchEncoding(data, words, [target] * len(rows), True, tensor_type=return_tensors)

    # -------------------------------------------------------------------------------------------- decoding
    def _words_of_ids(self, ids: Any) -> tuple[list[str | None], bool]:
        """
        The words of `(words, C)` ids, or of one `(C,)` word (tensor, array or nested lists), `None` for padding
        words; and whether a single word was given. `C` is `ids_per_word`.
        """
        c = self.ids_per_word
        expected = f"character ids of shape (words, {c}) or ({c},)"
        try:
            array = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids, dtype=np.int64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"expected {expected}, got a ragged or non-integer sequence ({error})") from None
        if array.shape == (0,):  # an empty list: a sentence of no words
            array = array.reshape(0, c)
        if array.ndim not in (1, 2) or array.shape[-1] != c:
            raise ValueError(f"expected {expected}, got shape {array.shape}")
        single = array.ndim == 1
        return [self._ids_to_word(row) for row in array.reshape(-1, c).tolist()], single

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        """
        The words of `(words, max_characters_per_token)` character ids (a sentence of `input_ids`), or the word of
        one `(max_characters_per_token,)` row; padding words are `<pad>`. A single int is a vocabulary id
        (`pad_token_id`, ...), as in every tokenizer. `skip_special_tokens` drops padding, `<S>` and `</S>`.
        """
        if isinstance(ids, int) or getattr(ids, "ndim", None) == 0:  # int, numpy or 0-d tensor scalar
            return super().convert_ids_to_tokens(int(ids))
        words, single = self._words_of_ids(ids)
        if single:
            return words[0] if words[0] is not None else PAD_TOKEN
        if skip_special_tokens:
            return [w for w in words if w is not None and w not in (BOS_WORD, EOS_WORD)]
        return [w if w is not None else PAD_TOKEN for w in words]

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """The words of one sentence's `(words, ids_per_word)` ids, or of one `(ids_per_word,)` word, joined by
        spaces; padding words are dropped."""
        words, _ = self._words_of_ids(token_ids)
        keep = [w for w in words if w is not None and not (skip_special_tokens and w in (BOS_WORD, EOS_WORD))]
        return " ".join(keep)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)


# ------------------------------------------------------------------------------------------ ELMoForManyLangs
MANY_LANGS_BOUNDARY_WORDS = ("<bos>", "<eos>")
MANY_LANGS_SPECIAL_CHARS = ("<bow>", "<eow>", "<oov>", "<pad>", *MANY_LANGS_BOUNDARY_WORDS)
WORD_SEGMENTERS = ("moses", "jieba")


class ElmoManyLangsTokenizer(ElmoTokenizer):
    r"""
    The tokenizer of ELMoForManyLangs (HIT-SCIR) models: each model has its own Unicode character table and,
    with a word embedding, a word vocabulary, saved with the checkpoint as `char_vocab.json` / `word_vocab.json`
    (token -> id, ids already shifted by +1 from the original `char.dic` / `word.dic` so that 0 means "nothing":
    a padding word is all zeros, as for every ELMo here).

    A word becomes `max_characters_per_token` character ids, as the original computes them: the word (Python
    characters, not bytes) cut to `max_characters_per_token - 2` characters, unknown characters -> `<oov>`,
    between the ids of the `<eow>` entry (first) and the `<bow>` entry (last) - the original swaps the two, in
    training and inference alike - and padded with the trained `<pad>` character, not zeros. `<bos>` / `<eos>`
    are real tokens with their own character and word ids (the model adds them around each sentence).

    With a word vocabulary (`word_dim > 0`), the word id (of the cut word; unknown -> `<oov>`) is carried as
    ONE EXTRA LAST COLUMN of `input_ids`, which is then `(batch, words, max_characters_per_token + 1)`. A column
    rather than a third tensor because every consumer (pipelines, `embed_dataset`, `hf-elmo embed`, a
    `DataCollatorWithPadding`) passes exactly `input_ids` and `attention_mask` to the model: the word id
    travels, pads and moves between devices with the characters, and a padding word stays all zeros.

    Raw text is split into words by `word_segmenter`: `"moses"` (sacremoses, for languages written with spaces;
    the models were trained on UDPipe-tokenized text, which Moses approximates), `"jieba"` (Chinese; the optional
    extra `hf-elmo[zh]`), or `None` (pre-split input only: pass `is_split_into_words=True`).

    Args:
        char_vocab_file: `char_vocab.json`, the character table.
        word_vocab_file: `word_vocab.json`, the word vocabulary; `None` for models without a word embedding.
        max_characters_per_token: Character slots per word, markers included.
        word_segmenter: `"moses"`, `"jieba"` or `None`, see above.
        language: ISO 639 code of the model's language (also the Moses rules' language).
    """

    vocab_files_names = {"char_vocab_file": "char_vocab.json", "word_vocab_file": "word_vocab.json"}

    def __init__(
        self,
        char_vocab_file: str | None = None,
        word_vocab_file: str | None = None,
        max_characters_per_token: int = 50,
        word_segmenter: str | None = "moses",
        language: str = "en",
        **kwargs,
    ):
        import json

        if char_vocab_file is None:
            raise ValueError("ElmoManyLangsTokenizer needs its character table (char_vocab.json)")
        if word_segmenter is not None and word_segmenter not in WORD_SEGMENTERS:
            raise ValueError(f"word_segmenter must be one of {WORD_SEGMENTERS} or None, got {word_segmenter!r}")
        with open(char_vocab_file, encoding="utf-8") as f:
            self.char_vocab: dict[str, int] = json.load(f)
        self.word_vocab: dict[str, int] | None = None
        if word_vocab_file is not None:
            with open(word_vocab_file, encoding="utf-8") as f:
                self.word_vocab = json.load(f)
        missing = [t for t in MANY_LANGS_SPECIAL_CHARS if t not in self.char_vocab]
        if missing:
            raise ValueError(f"{char_vocab_file}: the character table lacks {missing}")
        if self.word_vocab is not None:
            missing = [t for t in ("<oov>", *MANY_LANGS_BOUNDARY_WORDS) if t not in self.word_vocab]
            if missing:
                raise ValueError(f"{word_vocab_file}: the word vocabulary lacks {missing}")
        self.word_segmenter = word_segmenter
        self.language = language
        self._id_to_char = {i: ch for ch, i in self.char_vocab.items() if ch not in MANY_LANGS_SPECIAL_CHARS}
        self._segmenter = None
        kwargs.setdefault("bos_token", MANY_LANGS_BOUNDARY_WORDS[0])
        kwargs.setdefault("eos_token", MANY_LANGS_BOUNDARY_WORDS[1])
        kwargs.setdefault("moses_language", language)
        super().__init__(max_characters_per_token=max_characters_per_token, word_segmenter=word_segmenter,
                         language=language, **kwargs)

    @property
    def ids_per_word(self) -> int:
        """`max_characters_per_token`, plus one for the word id when the model has a word embedding."""
        return self.max_characters_per_token + (self.word_vocab is not None)

    @property
    def vocab_size(self) -> int:
        return max(self.char_vocab.values()) + 1

    def get_vocab(self) -> dict[str, int]:
        return {PAD_TOKEN: 0, **{w: self.char_vocab[w] for w in MANY_LANGS_BOUNDARY_WORDS}}

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        import json
        import os

        saved = []
        for key, vocab in (("char_vocab_file", self.char_vocab), ("word_vocab_file", self.word_vocab)):
            if vocab is None:
                continue
            name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names[key]
            path = os.path.join(save_directory, name)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(vocab, f, ensure_ascii=False, indent=0)
            saved.append(path)
        return tuple(saved)

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """`(len(words), ids_per_word)` ids of already split words (see the class docstring)."""
        return [self._word_ids(w) for w in words]

    def _word_ids(self, word: str) -> list[int]:
        c, table = self.max_characters_per_token, self.char_vocab
        if word in MANY_LANGS_BOUNDARY_WORDS:
            form, body = word, [table[word]]
        else:
            form = word[: c - 2]
            body = [table.get(ch, table["<oov>"]) for ch in form]
        # The original starts every word with the id of its "<eow>" entry and ends it with that of "<bow>".
        ids = [table["<eow>"], *body, table["<bow>"]]
        ids += [table["<pad>"]] * (c - len(ids))
        if self.word_vocab is not None:
            ids.append(self.word_vocab.get(form, self.word_vocab["<oov>"]))
        return ids

    def _ids_to_word(self, ids: Sequence[int]) -> str | None:
        chars = [int(i) for i in ids[: self.max_characters_per_token]]
        if not any(chars):
            return None
        for word in MANY_LANGS_BOUNDARY_WORDS:
            if chars[1] == self.char_vocab[word]:
                return word
        end = self.char_vocab["<bow>"]
        body = chars[1: chars.index(end, 1)] if end in chars[1:] else chars[1:]
        return "".join(self._id_to_char.get(i, "") for i in body)

    def _split_with_offsets(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        if self.word_segmenter == "moses":
            return super()._split_with_offsets(text)
        if self.word_segmenter is None:
            raise ValueError(f"this {self.language!r} model has no word segmenter for raw text: split the text into "
                             "words first and pass is_split_into_words=True")
        if self._segmenter is None:
            try:
                import jieba
            except ImportError:
                raise ImportError("Chinese raw text is segmented with jieba: pip install 'hf-elmo[zh]' (or pass "
                                  "pre-split words with is_split_into_words=True)") from None
            self._segmenter = jieba.Tokenizer()
        return [(word, (start, end)) for word, start, end in self._segmenter.tokenize(text) if word.strip()]


__all__ = ["ElmoManyLangsTokenizer", "ElmoTokenizer"]
