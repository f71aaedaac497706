"""
Drop-in replacements for allennlp's ELMo API, over hf-elmo: change only the import line.

    from hf_elmo.allennlp import ElmoEmbedder, Elmo, batch_to_ids

* `ElmoEmbedder` is allennlp 0.9's `allennlp.commands.elmo.ElmoEmbedder` (removed in allennlp 1.0);
* `Elmo`, `_ElmoBiLm` and `batch_to_ids` are allennlp 2.10's `allennlp.modules.elmo` ones.

They take the original `options.json` and weights `.hdf5` (paths or http(s) URLs), convert them once into an
hf-elmo checkpoint cached under `~/.cache/hf_elmo/converted/<content hash>` (`HF_ELMO_CACHE` moves it) and return
the same shapes, types and numbers as allennlp, call after call: allennlp's biLM is stateful, and so are these by
default. Each call continues, row by row, the LSTM state the previous calls left:

* row i of a batch starts from the state row i of the last batch that had a row i ended with;
* a batch larger than every earlier one starts its new rows from zero;
* a smaller batch uses the first rows and leaves the others' state untouched for later, larger batches;
* an empty sentence inside a batch runs as `<S> </S>` and updates its row like any other; `embed_batch([[]])`
  (and so `embed_sentence([])`) is answered without running the biLM and changes no state;
* `reset_states()` (or `mask=` a `(rows,)` bool tensor: those rows only) goes back to zero state; so does
  allennlp's spelling `elmo._elmo_lstm._elmo_lstm.reset_states()` / `embedder.elmo_bilm._elmo_lstm.reset_states()`.

allennlp sorts each batch by length before its LSTM runs and unsorts the states afterwards, so the state belongs to
the row, whatever the lengths. Pass `stateful=False` for hf-elmo's deterministic behaviour instead: every sentence
starts from zero state, its vectors independent of the batch and of earlier calls.

Known differences: the vectors of an empty sentence are `(num_layers, 0, dim)` float32 arrays (allennlp returns
`(3, 0, 1024)` float64 whatever the model's width); `batch_to_ids` of a batch of only empty sentences is
`(batch, 0, 50)` and runs (allennlp returns `(batch, 0)` and fails on it); `Elmo`'s scalar mixes are hf-elmo's
`ElmoScalarMix` (one `(layers,)` parameter, not a `ParameterList`), so allennlp state dicts do not load into it;
`Elmo(..., do_layer_norm=True, keep_sentence_boundaries=True)` gives zeros at padding where allennlp leaves
`-mean / std`; `word_inputs` are accepted and ignored (the vectors of cached words are the same as computed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from .atomic_files import atomic_output
from .download import default_cache_dir, resolve_file
from .modeling_elmo import ElmoModel, ElmoScalarMix
from .tokenization_elmo import word_to_char_ids

DEFAULT_OPTIONS_FILE = ("https://allennlp.s3.amazonaws.com/models/elmo/2x4096_512_2048cnn_2xhighway/"
                        "elmo_2x4096_512_2048cnn_2xhighway_options.json")
DEFAULT_WEIGHT_FILE = ("https://allennlp.s3.amazonaws.com/models/elmo/2x4096_512_2048cnn_2xhighway/"
                       "elmo_2x4096_512_2048cnn_2xhighway_weights.hdf5")
DEFAULT_BATCH_SIZE = 64
OUTPUT_FORMATS = ("all", "top", "average")
_HASH_CHUNK_BYTES = 1 << 22


def batch_to_ids(batch: list[list[str]]) -> torch.Tensor:
    """Character ids `(len(batch), longest sentence, 50)` int64 of tokenized sentences; padding words are zeros."""
    width = max((len(sentence) for sentence in batch), default=0)
    ids = torch.zeros(len(batch), width, 50, dtype=torch.long)
    for row, sentence in enumerate(batch):
        if sentence:
            ids[row, : len(sentence)] = torch.tensor([word_to_char_ids(word) for word in sentence])
    return ids


def converted_checkpoint(
    options_file: str | os.PathLike, weight_file: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> Path:
    """
    The hf-elmo checkpoint folder of an original release, converted on first use into
    `cache_dir/<sha256 of both files' contents>` (default `~/.cache/hf_elmo/converted`); URLs are downloaded
    once through `hf_elmo.download`.
    """
    from . import __version__
    from .conversion import convert_original_checkpoint

    options_path, weights_path = resolve_file(options_file), resolve_file(weight_file)
    for path in (options_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ELMo file not found")
    digest = hashlib.sha256()
    for path in (options_path, weights_path):
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
        digest.update(b"\0")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir().parent / "converted"
    folder = root / f"{digest.hexdigest()[:32]}-hf-elmo-{__version__}"
    if not (folder / "config.json").is_file():
        convert_original_checkpoint(options_path, weights_path, folder, model_card=None)
    return folder


class RowStates:
    """
    allennlp's per-row LSTM state bookkeeping (its `_EncoderBase`'s `_states`), over hf-elmo's state layout
    `(h, c)` of shapes `(L, 2, rows, P)` / `(L, 2, rows, H)`. It is reachable as `_ElmoBiLm._elmo_lstm`, where
    allennlp keeps its stateful LSTM, so `reset_states` is called by the same path.
    """

    def __init__(self) -> None:
        self._states: tuple[torch.Tensor, torch.Tensor] | None = None

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The state rows `0..batch-1` for the next call (None: zero state); grows the store with zero rows."""
        if self._states is None:
            return None
        h, c = self._states
        rows = h.shape[2]
        if batch > rows:
            extra = batch - rows
            h = torch.cat([h, h.new_zeros(*h.shape[:2], extra, h.shape[3])], dim=2)
            c = torch.cat([c, c.new_zeros(*c.shape[:2], extra, c.shape[3])], dim=2)
            self._states = (h, c)
        return h[:, :, :batch], c[:, :, :batch]

    def update(self, final_state: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Store a call's final state for its rows, keeping the rows beyond its batch."""
        h, c = (s.detach() for s in final_state)
        if self._states is not None and self._states[0].shape[2] > h.shape[2]:
            batch = h.shape[2]
            h = torch.cat([h, self._states[0][:, :, batch:]], dim=2)
            c = torch.cat([c, self._states[1][:, :, batch:]], dim=2)
        self._states = (h, c)

    def reset_states(self, mask: torch.Tensor | None = None) -> None:
        """Back to zero state: every row, or with `mask` (a `(rows,)` bool tensor) the rows where it is true."""
        if mask is None:
            self._states = None
            return
        if self._states is None:
            raise ValueError("reset_states(mask) needs a state: no batch has run since the last reset")
        rows = self._states[0].shape[2]
        if mask.shape != (rows,):
            raise ValueError(f"reset_states: the mask must have shape ({rows},) (one entry per state row), "
                             f"got {tuple(mask.shape)}")
        keep = (~mask.to(device=self._states[0].device, dtype=torch.bool)).to(self._states[0].dtype)
        self._states = tuple(state * keep[None, None, :, None] for state in self._states)


class _ElmoBiLm(nn.Module):
    """
    allennlp's `_ElmoBiLm`: the biLM's layers with the sentence boundaries, `{"activations", "mask"}`.

    Args:
        options_file / weight_file: the original release (paths or URLs).
        requires_grad: fine-tune the biLM (its parameters are frozen otherwise).
        vocab_to_cache: words whose character-CNN vectors are precomputed (faster; the same numbers).
        stateful: continue each row's LSTM state across calls, as allennlp (see the module docstring); False
            starts every sentence from zero state.
        cache_dir: where converted checkpoints are kept.
    """

    def __init__(
        self,
        options_file: str | os.PathLike,
        weight_file: str | os.PathLike,
        requires_grad: bool = False,
        vocab_to_cache: list[str] | None = None,
        *,
        stateful: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.model = ElmoModel.from_pretrained(converted_checkpoint(options_file, weight_file, cache_dir))
        self.model.requires_grad_(requires_grad)
        self.model.scalar_mix.requires_grad_(False)  # unused: `Elmo` mixes the activations with its own mixes
        if vocab_to_cache:
            self.model.cache_words(vocab_to_cache)
        self.stateful = stateful
        self._elmo_lstm = RowStates()
        self.num_layers = self.model.config.num_hidden_layers + 1

    def get_output_dim(self) -> int:
        return self.model.config.output_dim

    def reset_states(self, mask: torch.Tensor | None = None) -> None:
        """See `RowStates.reset_states`."""
        self._elmo_lstm.reset_states(mask)

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict:
        """
        Args:
            inputs: `(B, W, 50)` character ids (`batch_to_ids`).
            word_inputs: accepted for allennlp's signature and ignored (cached words give the same vectors).
        Returns:
            `"activations"`: `num_layers` tensors `(B, W + 2, 2P)` (the token layer repeated for both directions,
            then each biLSTM layer), zero at padding; `"mask"`: `(B, W + 2)` bool, true at `<S>`, words, `</S>`.
        """
        mask = (inputs > 0).any(dim=-1)
        state = self._elmo_lstm.initial_state(inputs.shape[0]) if self.stateful else None
        out = self.model.forward_bilm(inputs, mask, state=state, use_cache=self.stateful)
        if self.stateful:
            self._elmo_lstm.update(out.state)
        keep = out.mask[..., None].to(out.token_vectors.dtype)
        token_layer = torch.cat([out.token_vectors, out.token_vectors], dim=-1) * keep
        return {"activations": [token_layer, *out.layer_outputs], "mask": out.mask}


def remove_sentence_boundaries(tensor: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(B, W + 2, D)` with `<S>` / `</S>` and its mask -> `(B, W, D)` of the words only (zero padding), `(B, W)`."""
    lengths = mask.sum(dim=1) - 2
    words = torch.arange(tensor.shape[1] - 2, device=tensor.device)
    word_mask = words[None, :] < lengths[:, None]
    return tensor[:, 1:-1] * word_mask[..., None].to(tensor.dtype), word_mask


class Elmo(nn.Module):
    """
    allennlp's `Elmo`: `num_output_representations` trained scalar mixes of the biLM's layers, with dropout.

    Args:
        options_file / weight_file, requires_grad, vocab_to_cache, stateful, cache_dir: as `_ElmoBiLm`.
        num_output_representations: how many independently mixed representations to return.
        do_layer_norm: layer-normalise each layer (over `<S>`, the words and `</S>`) before mixing.
        dropout: dropout on each representation in train mode (a module starts in train mode, as allennlp's).
        keep_sentence_boundaries: keep the `<S>` / `</S>` positions in the output.
        scalar_mix_parameters: fixed pre-softmax layer weights (not trained); None: trained, equal at start.
    """

    def __init__(
        self,
        options_file: str | os.PathLike,
        weight_file: str | os.PathLike,
        num_output_representations: int,
        requires_grad: bool = False,
        do_layer_norm: bool = False,
        dropout: float = 0.5,
        vocab_to_cache: list[str] | None = None,
        keep_sentence_boundaries: bool = False,
        scalar_mix_parameters: list[float] | None = None,
        *,
        stateful: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self._elmo_lstm = _ElmoBiLm(options_file, weight_file, requires_grad, vocab_to_cache, stateful=stateful,
                                    cache_dir=cache_dir)
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        mix_config = copy.deepcopy(self._elmo_lstm.model.config)
        mix_config.do_layer_norm = do_layer_norm
        mix_config.scalar_mix_parameters = list(scalar_mix_parameters) if scalar_mix_parameters is not None else None
        self._scalar_mixes = [ElmoScalarMix(mix_config) for _ in range(num_output_representations)]
        for k, mix in enumerate(self._scalar_mixes):
            self.add_module(f"scalar_mix_{k}", mix)

    def get_output_dim(self) -> int:
        return self._elmo_lstm.get_output_dim()

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict:
        """
        Args:
            inputs: `(B, W, 50)` character ids, or `(..., W, 50)` (flattened to rows and reshaped back).
            word_inputs: accepted for allennlp's signature and ignored.
        Returns:
            `"elmo_representations"`: `num_output_representations` tensors `(B, W, 2P)` (`(B, W + 2, 2P)` with
            `keep_sentence_boundaries`); `"mask"`: `(B, W)` (or `(B, W + 2)`) bool.
        """
        leading = inputs.shape[:-2]
        rows = inputs.reshape(-1, *inputs.shape[-2:]) if inputs.dim() > 3 else inputs
        bilm = self._elmo_lstm(rows)
        representations = []
        mask = bilm["mask"]
        for mix in self._scalar_mixes:
            mixed = mix(bilm["activations"], bilm["mask"])
            if not self._keep_sentence_boundaries:
                mixed, mask = remove_sentence_boundaries(mixed, bilm["mask"])
            representations.append(self._dropout(mixed))
        if inputs.dim() > 3:
            mask = mask.reshape(*leading, mask.shape[-1])
            representations = [r.reshape(*leading, *r.shape[-2:]) for r in representations]
        return {"elmo_representations": representations, "mask": mask}


class ElmoEmbedder:
    """
    allennlp 0.9's `ElmoEmbedder`: every layer of the biLM for tokenized sentences, as numpy arrays.

    Args:
        options_file / weight_file: the original release (paths or URLs); the defaults are the Original model's.
        cuda_device: GPU index to run on; -1 for the CPU.
        stateful / cache_dir: as `_ElmoBiLm`.
    """

    def __init__(
        self,
        options_file: str | os.PathLike = DEFAULT_OPTIONS_FILE,
        weight_file: str | os.PathLike = DEFAULT_WEIGHT_FILE,
        cuda_device: int = -1,
        *,
        stateful: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.elmo_bilm = _ElmoBiLm(options_file, weight_file, stateful=stateful, cache_dir=cache_dir)
        if cuda_device >= 0:
            self.elmo_bilm = self.elmo_bilm.cuda(device=cuda_device)
        self.cuda_device = cuda_device

    def batch_to_embeddings(self, batch: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, num_layers, W, 2P)` activations of every layer and the `(B, W)` int64 word mask (allennlp 0.9's
        masks were int64)."""
        character_ids = batch_to_ids(batch)
        if self.cuda_device >= 0:
            character_ids = character_ids.cuda(device=self.cuda_device)
        bilm = self.elmo_bilm(character_ids)
        layers = [remove_sentence_boundaries(layer, bilm["mask"]) for layer in bilm["activations"]]
        activations = torch.stack([layer for layer, _ in layers], dim=1)
        return activations, layers[0][1].long()

    def embed_sentence(self, sentence: list[str]) -> np.ndarray:
        """`(num_layers, n, 2P)` float32 vectors of one tokenized sentence."""
        return self.embed_batch([sentence])[0]

    def embed_batch(self, batch: list[list[str]]) -> list[np.ndarray]:
        """One `(num_layers, n, 2P)` float32 array per sentence; a batch of only an empty sentence runs nothing."""
        empty = np.zeros((self.elmo_bilm.num_layers, 0, self.elmo_bilm.get_output_dim()), dtype=np.float32)
        if batch == [[]]:
            return [empty]
        activations, mask = self.batch_to_embeddings(batch)
        lengths = mask.sum(dim=1).tolist()
        return [activations[i, :, :n].detach().cpu().numpy() if n else empty for i, n in enumerate(lengths)]

    def embed_sentences(
        self, sentences: Iterable[list[str]], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[np.ndarray]:
        """Yield the vectors of each sentence, running `batch_size` sentences at a time."""
        iterator = iter(sentences)
        while batch := list(islice(iterator, batch_size)):
            yield from self.embed_batch(batch)

    def embed_file(
        self,
        input_file: IO | str | os.PathLike,
        output_file_path: str | os.PathLike,
        output_format: str = "all",
        batch_size: int = DEFAULT_BATCH_SIZE,
        forget_sentences: bool = False,
        use_sentence_keys: bool = False,
    ) -> None:
        """
        Embed a file of one whitespace-tokenized sentence per line into allennlp's `elmo` HDF5 layout: a float32
        dataset per line named by its line number counted from 0 (or, with `use_sentence_keys`, by the sentence),
        `(num_layers, n, 2P)` for "all" and `(n, 2P)` for "top" / "average", plus `sentence_to_index` (JSON of
        sentence -> key) unless `forget_sentences` or `use_sentence_keys`. The file is written to a temporary
        name and renamed when complete. An open `input_file` is closed afterwards, as allennlp does.
        """
        import h5py
        from tqdm.auto import tqdm

        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
        name = getattr(input_file, "name", str(input_file))
        if isinstance(input_file, (str, os.PathLike)):
            with open(input_file, encoding="utf-8") as f:
                sentences = [line.strip() for line in f]
        else:
            sentences = [line.strip() for line in input_file]
            input_file.close()
        blank = [i + 1 for i, sentence in enumerate(sentences) if not sentence]
        if blank:
            shown = ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else "")
            raise ValueError(f"{name}: blank line(s) {shown} (counted from 1); remove them")
        if use_sentence_keys:
            seen: dict[str, int] = {}
            for i, sentence in enumerate(sentences, start=1):
                if sentence in seen:
                    raise ValueError(f"{name}: line {i} repeats line {seen[sentence]}; with use_sentence_keys "
                                     "every sentence must be unique")
                seen[sentence] = i
        with atomic_output(Path(output_file_path)) as tmp, h5py.File(tmp, "w") as out:
            vectors = self.embed_sentences((s.split() for s in sentences), batch_size)
            for index, embeddings in enumerate(tqdm(vectors, total=len(sentences), unit=" sentences")):
                key = sentences[index] if use_sentence_keys else str(index)
                if output_format == "top":
                    embeddings = embeddings[-1]
                elif output_format == "average":
                    embeddings = np.average(embeddings, axis=0)
                out.create_dataset(key, embeddings.shape, dtype="float32", data=embeddings)
            if not forget_sentences and not use_sentence_keys:
                dataset = out.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
                dataset[0] = json.dumps({sentence: str(i) for i, sentence in enumerate(sentences)})


__all__ = ["DEFAULT_BATCH_SIZE", "Elmo", "ElmoEmbedder", "RowStates", "_ElmoBiLm", "batch_to_ids",
           "converted_checkpoint", "remove_sentence_boundaries"]
