"""ELMo as a language model: perplexity of a file, next / previous words, sampling, dumping the softmax.

`ElmoLanguageModel` bundles a converted LM checkpoint (`ElmoForPreTraining`) with its word vocabulary
(`lm_vocab.txt`, softmax row i = line i) and is what `hf-elmo perplexity`, `next-word`, `sample` and
`dump-softmax-embeddings` run. Numbers follow bilm-tf: the forward LM reads `<S> w1 .. wn` and predicts
`w1 .. wn </S>`, the backward LM mirrors it, and perplexity is exp of the mean over predictions of
`0.5 * (forward + backward)` negative log-likelihood. Target words outside the vocabulary are `<UNK>`; inputs are
always read by their characters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic_files import atomic_output
from ..checkpoints.softmax import SOFTMAX_BIAS, SOFTMAX_WEIGHT, LMVocabulary, read_lm_vocabulary
from ..lm_softmax import sample_ids, top_k_log_probs
from ..modeling_elmo import ElmoForPreTraining, ElmoNoLMHeadError
from ..tokenization_elmo import ElmoTokenizer
from .core import load_model

LM_VOCABULARY_FILE = "lm_vocab.txt"  # as conversion.LM_VOCABULARY_FILE (not imported: conversion imports jobs.core)
DEFAULT_BATCH_SIZE = 64


def read_checkpoint_lm_vocabulary(source: str | os.PathLike, size: int) -> LMVocabulary:
    """The `lm_vocab.txt` of a LM checkpoint folder (or Hub repo id), checked to have `size` words (softmax rows)."""
    vocabulary_path = Path(source) / LM_VOCABULARY_FILE
    if not vocabulary_path.is_file() and not Path(source).is_dir():
        from transformers.utils import cached_file

        vocabulary_path = Path(cached_file(str(source), LM_VOCABULARY_FILE))
    return read_lm_vocabulary(vocabulary_path, size=size)


@dataclass(frozen=True)
class SentenceScore:
    """
    The negative log-likelihoods of one sentence's predictions, each direction in its reading order:
    `forward_nll[j]` predicts `w(j+1)` (`</S>` last), `backward_nll[j]` predicts `w(n-j)` (`<S>` last). In a
    stream (`stream_scores`) a sentence may be scored only in part, or not at all (empty arrays).
    """

    line: int  # counted from 1
    forward_nll: np.ndarray
    backward_nll: np.ndarray

    @property
    def predictions(self) -> int:
        return len(self.forward_nll)


@dataclass(frozen=True)
class Perplexity:
    """bilm-tf's perplexity over `tokens` predictions per direction, and each direction's own."""

    perplexity: float
    forward_perplexity: float
    backward_perplexity: float
    tokens: int

    @classmethod
    def of(cls, scores: Iterable[SentenceScore]) -> Perplexity:
        scores = [s for s in scores if s.predictions]
        if not scores:
            raise ValueError("no predictions to score: perplexity needs at least one sentence")
        forward = np.concatenate([s.forward_nll for s in scores]).astype(np.float64)
        backward = np.concatenate([s.backward_nll for s in scores]).astype(np.float64)
        return cls(math.exp(0.5 * (forward.mean() + backward.mean())), math.exp(forward.mean()),
                   math.exp(backward.mean()), len(forward))

    def as_dict(self) -> dict[str, float | int]:
        return {"perplexity": self.perplexity, "forward_perplexity": self.forward_perplexity,
                "backward_perplexity": self.backward_perplexity, "tokens": self.tokens}


def stream_layout(lengths: Sequence[int], batch_size: int) -> tuple[list[list[int]], int]:
    """
    bilm-tf `test()`'s batches (`bilm/data.py` `_get_batch`, `unroll_steps` 1): each of `batch_size` rows is a stream
    of whole sentences, a sentence of n words taking n + 1 steps; at each step rows needing a sentence take the next
    one in row order, and the first time one is left without, that step's batch is dropped and the run ends.

    Args:
        lengths: words per sentence, in file order.
    Returns:
        (the sentence indices of each row in order, the number of steps scored in every row).
    """
    rows: list[list[int]] = [[] for _ in range(batch_size)]
    remaining = [0] * batch_size
    next_sentence, steps = 0, 0
    while True:
        for row in range(batch_size):
            if remaining[row] == 0:
                if next_sentence == len(lengths):
                    return rows, steps
                rows[row].append(next_sentence)
                remaining[row] = lengths[next_sentence] + 1
                next_sentence += 1
        advance = min(remaining)  # no row needs a sentence before then
        steps += advance
        remaining = [r - advance for r in remaining]


class ElmoLanguageModel:
    """
    A language-model checkpoint with its vocabulary.

    >>> lm = ElmoLanguageModel.from_pretrained("path/to/converted")
    >>> lm.next_words("these models make use of neural", top_k=5)   # [{"word": ..., "probability": ...}, ...]
    >>> lm.perplexity([["a", "sentence"], ["another", "one"]]).perplexity
    """

    def __init__(self, model: ElmoForPreTraining, vocabulary: LMVocabulary, tokenizer: ElmoTokenizer):
        model.softmax_parameters()  # a checkpoint without softmax fails here, not in the middle of a job
        if len(vocabulary) != model.config.lm_vocab_size:
            raise ValueError(f"the vocabulary has {len(vocabulary)} words but the softmax {model.config.lm_vocab_size}"
                             f" rows")
        self.model, self.vocabulary, self.tokenizer = model.eval(), vocabulary, tokenizer

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **runtime_kwargs) -> ElmoLanguageModel:
        """Load a converted LM checkpoint folder (or Hub repo id) and its `lm_vocab.txt`."""
        model = load_model(source, dtype=dtype, device=device, model_class=ElmoForPreTraining, **runtime_kwargs)
        if model.softmax is None:
            raise ElmoNoLMHeadError(
                f"{source}: this checkpoint has no language-model head (no softmax): it computes ELMo vectors, "
                f"but perplexity and word prediction need a folder converted with --softmax-weight-file or "
                f"--tf-checkpoint (and the softmax's --vocab-file)")
        vocabulary = read_checkpoint_lm_vocabulary(source, model.config.lm_vocab_size)
        return cls(model, vocabulary, ElmoTokenizer.from_pretrained(source))

    # ------------------------------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def _run(self, sentences: Sequence[Sequence[str]], state: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[torch.Tensor, torch.Tensor] | None]:
        """One batch: per sentence (forward NLLs, backward NLLs in reading order), and the stream state if asked."""
        enc = self.tokenizer([list(s) for s in sentences], is_split_into_words=True, padding=True,
                             return_tensors="pt").to(self.model.device)
        labels = torch.full(enc["attention_mask"].shape, -100, dtype=torch.long)
        for row, words in enumerate(sentences):
            labels[row, : len(words)] = torch.tensor(self.vocabulary.ids(list(words)), dtype=torch.long)
        out = self.model(**enc, labels=labels, state=state, use_cache=state is not None)
        forward, backward = out.forward_nll.float().cpu().numpy(), out.backward_nll.float().cpu().numpy()
        return [(forward[row, : len(words) + 1], backward[row, len(words):: -1])
                for row, words in enumerate(sentences)], out.state

    def score_sentences(self, sentences: Sequence[Sequence[str]], batch_size: int = DEFAULT_BATCH_SIZE,
                        progress: bool = False) -> list[SentenceScore]:
        """Every sentence (a list of words) on its own, from a zero state, batched by length."""
        from tqdm.auto import tqdm

        _check_batch_size(batch_size)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        scores: list[SentenceScore | None] = [None] * len(sentences)
        with tqdm(total=len(sentences), unit="sentence", desc="perplexity", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                results, _ = self._run([sentences[i] for i in batch])
                for i, (forward, backward) in zip(batch, results):
                    scores[i] = SentenceScore(i + 1, forward, backward)
                bar.update(len(batch))
        return scores

    def stream_scores(self, sentences: Sequence[Sequence[str]], batch_size: int = 1,
                      progress: bool = False) -> list[SentenceScore]:
        """
        bilm-tf `test()`'s scores: `batch_size` rows each reading its sentences as one stream, the LSTM state
        carried from sentence to sentence, and the run cut where bilm-tf cuts it (`stream_layout`). Sentences past
        the cut, or past it in part, have fewer (or no) predictions.
        """
        from tqdm.auto import tqdm

        _check_batch_size(batch_size)
        rows, steps = stream_layout([len(s) for s in sentences], batch_size)
        scores = [SentenceScore(i + 1, np.zeros(0, np.float32), np.zeros(0, np.float32)) for i in range(len(sentences))]
        config = self.model.config
        state = (torch.zeros(config.num_hidden_layers, 2, batch_size, config.projection_dim, device=self.model.device),
                 torch.zeros(config.num_hidden_layers, 2, batch_size, config.lstm_dim, device=self.model.device))
        used = [0] * batch_size  # steps already scored per row
        with tqdm(total=sum(map(len, rows)), unit="sentence", desc="perplexity", disable=not progress) as bar:
            for depth in range(max(map(len, rows))):
                active = [r for r in range(batch_size) if len(rows[r]) > depth and used[r] < steps]
                if not active:
                    break
                index = torch.tensor(active, device=self.model.device)
                results, new_state = self._run([sentences[rows[r][depth]] for r in active],
                                               (state[0][:, :, index], state[1][:, :, index]))
                state[0][:, :, index], state[1][:, :, index] = new_state
                for r, (forward, backward) in zip(active, results):
                    keep = min(len(forward), steps - used[r])
                    used[r] += keep
                    sentence = rows[r][depth]
                    scores[sentence] = SentenceScore(sentence + 1, forward[:keep], backward[:keep])
                bar.update(len(active))
        return scores

    def perplexity(self, sentences: Sequence[Sequence[str]], batch_size: int = DEFAULT_BATCH_SIZE,
                   stateful: bool = False) -> Perplexity:
        """bilm-tf's perplexity of `sentences` (lists of words): each from a zero state, or as `test()` streams them."""
        scores = (self.stream_scores(sentences, batch_size) if stateful
                  else self.score_sentences(sentences, batch_size))
        return Perplexity.of(scores)

    # ---------------------------------------------------------------------------------------------- prediction
    def _words(self, text: str | Sequence[str]) -> list[str]:
        """Whitespace-split words of a string, or the words as given."""
        return text.split() if isinstance(text, str) else list(text)

    @torch.inference_mode()
    def _hidden(self, words: list[str], direction: str) -> torch.Tensor:
        """(1, P): the forward LM after `<S> words`, or the backward LM after `</S> reversed(words)`."""
        enc = self.tokenizer([words], is_split_into_words=True, return_tensors="pt").to(self.model.device)
        out = self.model(**enc)
        if direction == "forward":
            return out.forward_hidden[:, len(words)]
        return out.backward_hidden[:, 0]

    def _predict(self, words: list[str], direction: str, top_k: int) -> list[dict[str, float | str]]:
        weight, bias = self.model.softmax_parameters()
        if not isinstance(top_k, int) or not 1 <= top_k <= len(self.vocabulary):
            raise ValueError(f"top_k must be between 1 and the vocabulary size {len(self.vocabulary)}, got {top_k}")
        with torch.inference_mode():
            values, ids = top_k_log_probs(self._hidden(words, direction), weight, bias, top_k)
        return [{"word": self.vocabulary.words[int(i)], "probability": float(math.exp(v))}
                for v, i in zip(values[0].tolist(), ids[0].tolist())]

    def next_words(self, prefix: str | Sequence[str], top_k: int = 5) -> list[dict[str, float | str]]:
        """
        The forward LM's `top_k` most probable next words after `<S>` and `prefix` (whitespace-split, or a list of
        words), most probable first, over the whole vocabulary (`</S>` and `<UNK>` included). An empty prefix
        gives the distribution of a sentence's first word.
        """
        return self._predict(self._words(prefix), "forward", top_k)

    def previous_words(self, suffix: str | Sequence[str], top_k: int = 5) -> list[dict[str, float | str]]:
        """The backward LM's twin of `next_words`: the most probable words before `suffix` (`<S>` included)."""
        return self._predict(self._words(suffix), "backward", top_k)

    def sample(self, prefix: str | Sequence[str], num_words: int = 20, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None) -> list[str]:
        """
        lm_1b's sample mode: continue `prefix` with the forward LM word by word, each drawn from the softmax
        (`/ temperature`; restricted to the `top_k` most probable with `top_k`), until `</S>` is drawn (not
        returned) or `num_words` words are added. `<S>` is never drawn. Returns the added words.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k is not None and not 1 <= top_k <= len(self.vocabulary):
            raise ValueError(f"top_k must be between 1 and the vocabulary size {len(self.vocabulary)}, got {top_k}")
        if num_words < 0:
            raise ValueError(f"num_words must not be negative, got {num_words}")
        weight, bias = self.model.softmax_parameters()
        bias = bias.detach().clone()
        bias[self.vocabulary.bos_id] = float("-inf")
        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed()))
        words, added = self._words(prefix), []
        with torch.inference_mode():
            for _ in range(num_words):
                # The whole prefix is re-read each time: exact, and cheap next to the softmax over the vocabulary.
                hidden = self._hidden(words + added, "forward")
                if top_k is None:
                    word_id = int(sample_ids(hidden, weight, bias, temperature, generator)[0])
                else:
                    values, ids = top_k_log_probs(hidden, weight, bias, top_k)
                    choice = torch.multinomial(torch.softmax(values[0] / temperature, dim=0), 1, generator=generator)
                    word_id = int(ids[0, choice])
                if word_id == self.vocabulary.eos_id:
                    break
                added.append(self.vocabulary.words[word_id])
        return added

    # --------------------------------------------------------------------------------------------------- dumping
    def dump_softmax_embeddings(self, output_file: str | os.PathLike, batch_size: int = 4096) -> Path:
        """
        lm_1b's dump mode, in one hdf5 (written atomically): the softmax (`softmax/W` (V, P), `softmax/b` (V,): the
        released layout, so the file converts back with `--softmax-weight-file`), `char_cnn_embeddings` (V, P): the
        character CNN's vector of every vocabulary word, and `vocabulary` (V,) UTF-8 words, row i = softmax row i.
        """
        import h5py

        from .hdf5_job import write_token_embeddings

        weight, bias = self.model.softmax_parameters()
        output_file = Path(output_file)
        with atomic_output(output_file) as tmp_name, h5py.File(tmp_name, "w") as hdf5:
            hdf5.create_dataset(SOFTMAX_WEIGHT, data=weight.detach().float().cpu().numpy())
            hdf5.create_dataset(SOFTMAX_BIAS, data=bias.detach().float().cpu().numpy())
            with torch.inference_mode():
                write_token_embeddings(self.model.elmo, list(self.vocabulary.words), hdf5, "char_cnn_embeddings",
                                       batch_size)
            hdf5.create_dataset("vocabulary", data=list(self.vocabulary.words), dtype=h5py.string_dtype("utf-8"))
        return output_file


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size}")


def read_sentences(path: str | os.PathLike, split_words=None) -> list[list[str]]:
    """
    The sentences of a text file, one a line, split on whitespace (or by `split_words`, e.g. the tokenizer's Moses
    splitting). An empty line is a sentence of no words, as bilm-tf reads it (`<S> </S>`: one prediction each way).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    if not lines:
        raise ValueError(f"{path}: the file is empty: no sentences to score")
    split = split_words or str.split
    return [split(line) for line in lines]


__all__ = ["ElmoLanguageModel", "Perplexity", "SentenceScore", "read_checkpoint_lm_vocabulary", "read_sentences",
           "stream_layout"]
