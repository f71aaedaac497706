"""HDF5 jobs: `hf-elmo embed` (`embed_file`) and `hf-elmo dump-token-embeddings` (`dump_token_embeddings`).

`embed_file` embeds a text file sentence by sentence into allennlp's `elmo` command HDF5 layout.

File layout (the same as allennlp's `allennlp elmo`):

* one float32 dataset per input line, named by its index from 0 (`"0"`, `"1"`, ..., as allennlp names them;
  messages count lines from 1, as editors do) or, with
  `use_sentence_keys`, by the sentence itself; shape `(num_hidden_layers + 1, n_words, 2 * projection_dim)`
  for `"all"` (layer 0 is the character-CNN token vector repeated for both directions) and
  `(n_words, 2 * projection_dim)` for `"top"` and `"average"`;
* a blank line is stored as an empty entry `(..., 0, D)` (with a warning) rather than refused;
* `sentence_to_index`: a 1-element string dataset holding `json.dumps({sentence: "line number"})`, unless
  `use_sentence_keys` or `forget_sentences`.

Resumability. Vectors are not written into the HDF5 file while the job runs (a process killed inside an
HDF5 write can leave the whole file unreadable). Instead `OUTPUT.partial/` holds two append-only logs,
`vectors.bin` (raw float32, one block per line) and `lengths.bin` (int64 words per line), and a small
`manifest.json` replaced atomically (write + rename) after every batch, once that batch is in both logs. A killed
process cannot undo what it already handed to the kernel, so this is safe against kills at any moment; against
power loss the logs and manifest are also fsynced every `SYNC_SECONDS` (not every batch: fsync can take 100 ms
on a busy disk), and a restart that finds the logs shorter than the manifest claims falls back to the longest
complete prefix. The manifest names how many lines and bytes are committed and fingerprints everything the numbers depend on (input content, model
weights, dtype, output layout). A restart with the same arguments checks the fingerprint, cuts both logs back
to the committed sizes (dropping whatever a kill left half-written) and continues from the next line. When the
input is exhausted the HDF5 file is assembled from the logs into a temporary file that is renamed to OUTPUT
only when complete, and the work folder is deleted. So a kill at any moment loses at most the batch in
flight and the final file is the same as an uninterrupted run's.

Memory stays flat: the input is read lazily, one batch of sentences at a time, and assembly copies one line at
a time. What grows with the input: the `sentence_to_index` JSON string (it is the input's text), built at the
very end (`forget_sentences` leaves it out), and with `use_sentence_keys` a 12-byte digest per line, kept while
checking up front that no sentence repeats.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..atomic_files import atomic_output
from ..tokenization_elmo import ElmoTokenizer
from .core import default_tokenizer, model_fingerprint

if TYPE_CHECKING:
    from ..modeling_elmo import ElmoModel

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("all", "top", "average")
DEFAULT_BATCH_SIZE = 64  # allennlp's `elmo` command default
FORMAT_VERSION = 1
MAX_BLANK_LINE_WARNINGS = 10
SYNC_SECONDS = 10.0  # fsync the logs and the manifest at most this often
MANIFEST = "manifest.json"
VECTORS = "vectors.bin"
LENGTHS = "lengths.bin"
# What `errors="surrogateescape"` turns each undecodable byte into (valid UTF-8 never decodes to these).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class EmbedError(ValueError):
    """A problem with the input, the output or an unfinished run, explained for the command line."""


@dataclass
class EmbedSummary:
    """What `embed_file` did."""

    output_file: Path
    lines: int
    blank_lines: int
    resumed_from_line: int
    """Lines an earlier, interrupted run had done (0 for a fresh run): this run started at the next line."""


def work_dir_for(output_file: str | os.PathLike) -> Path:
    """The folder holding an unfinished run's progress: `OUTPUT.partial` next to OUTPUT."""
    output_file = Path(output_file)
    return output_file.with_name(output_file.name + ".partial")


def split_line(line: str, split_words: Callable[[str], list[str]] | None = None) -> list[str]:
    """Words of one input line: whitespace-separated (as allennlp), or `split_words(line)` for raw text."""
    text = line.strip()
    if not text:
        return []
    return split_words(text) if split_words is not None else text.split()


def embed_file(
    model: "ElmoModel",
    input_file: str | os.PathLike,
    output_file: str | os.PathLike,
    *,
    output_format: str = "all",
    batch_size: int = DEFAULT_BATCH_SIZE,
    use_sentence_keys: bool = False,
    forget_sentences: bool = False,
    split_words: Callable[[str], list[str]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbedSummary:
    """
    Embed every line of `input_file` with `model` and write allennlp's `elmo` HDF5 layout to `output_file`.

    Resumes an unfinished run of the same job (same input content, model weights, dtype and layout; the batch
    size and device may differ) from its last committed batch.

    Args:
        model: an `ElmoModel` in eval mode, on the device and in the dtype to compute with.
        output_format: `"all"` (every layer), `"top"` (the top biLSTM layer) or `"average"` (mean of the layers).
        use_sentence_keys: name datasets by sentence instead of line number (no `sentence_to_index` then).
        forget_sentences: do not write `sentence_to_index`.
        split_words: how to split a line into words (e.g. `ElmoTokenizer.split_words` for raw text);
            default: whitespace, the input being one tokenized sentence per line.
        overwrite: discard an unfinished run and replace an existing `output_file`.
    Raises:
        EmbedError: unreadable input, an existing output without `overwrite`, an unfinished run of a different job,
            or (with `use_sentence_keys`) a blank or repeated sentence.
    """
    if output_format not in OUTPUT_FORMATS:
        raise EmbedError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if batch_size < 1:
        raise EmbedError(f"batch size must be at least 1, got {batch_size}")
    input_file, output_file = Path(input_file), Path(output_file)
    if not input_file.is_file():
        raise EmbedError(f"{input_file}: input file not found")
    if output_file.is_dir():
        raise EmbedError(f"{output_file}: is a directory")
    output_file.parent.mkdir(parents=True, exist_ok=True)
    work = work_dir_for(output_file)

    n_lines, blank_lines, input_digest = _scan_input(input_file, use_sentence_keys)
    if use_sentence_keys:
        logger.warning("Using sentences as keys can fail if sentences contain forward slashes or colons.")
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "input_sha256": input_digest,
        "input_lines": n_lines,
        "model_fingerprint": model_fingerprint(model),
        "dtype": str(model.dtype),
        "output_format": output_format,
        "use_sentence_keys": use_sentence_keys,
        "forget_sentences": forget_sentences,
        "split_words": _callable_name(split_words),
    }

    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
    elif output_file.exists() and _read_manifest(work) is None:
        raise EmbedError(f"{output_file}: already exists; pass --overwrite to replace it")
    work.mkdir(exist_ok=True)
    with _locked(work):
        manifest = _read_manifest(work)
        if manifest is not None and manifest["fingerprint"] != fingerprint:
            differs = sorted(k for k in fingerprint if manifest["fingerprint"].get(k) != fingerprint[k])
            raise EmbedError(
                f"{work} holds an unfinished run of a different job (it differs in: {', '.join(differs)}); "
                "rerun with the original arguments and input to resume it, or pass --overwrite to start over"
            )
        if manifest is None:
            manifest = {"fingerprint": fingerprint, "lines_done": 0, "vectors_bytes": 0}
            _truncate_logs(work, manifest, 0)
            _write_manifest(work, manifest)
        else:
            floats_per_word = model.config.output_dim * (
                model.config.num_hidden_layers + 1 if output_format == "all" else 1)
            _truncate_logs(work, manifest, floats_per_word)
        resumed_from = manifest["lines_done"]
        if resumed_from:
            logger.warning(f"resuming {output_file} at line {resumed_from + 1} of {n_lines}")

        _embed_lines(model, input_file, work, manifest, output_format, batch_size, split_words,
                                   n_lines, progress)
        _assemble(work, input_file, output_file, manifest, output_format, use_sentence_keys, forget_sentences,
                  model.config.num_hidden_layers + 1, model.config.output_dim)
    # The output is complete: the progress is no longer needed (manifest first, so a kill mid-way leaves no
    # resumable state behind).
    (work / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return EmbedSummary(output_file=output_file, lines=n_lines, blank_lines=blank_lines, resumed_from_line=resumed_from)


def _scan_input(input_file: Path, use_sentence_keys: bool) -> tuple[int, int, str]:
    """
    Count the lines and the blank ones and hash the content (streamed). With sentence keys, refuse blank or
    repeated sentences (this keeps a 12-byte digest per line: the one thing that grows with the input).
    """
    digest = hashlib.sha256()
    seen: dict[bytes, int] = {}
    n = blank = 0
    # Text files are decoded a chunk (8 kB) at a time, so a strict reader fails before handing out the lines ahead
    # of a bad byte and cannot say where it is. Undecodable bytes are read as lone surrogates instead, and the
    # first line holding one is named (lines counted from 1, as everywhere in messages).
    with open(input_file, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, start=1):
            bad = _UNDECODABLE.search(line)
            if bad:
                raise _not_utf8_error(input_file, n, line, bad)
            digest.update(line.encode("utf-8"))
            blank += not line.strip()
            if use_sentence_keys:
                key = line.strip()
                if not key:
                    raise EmbedError(f"{input_file}: line {n} is blank, which cannot be a dataset name "
                                     "with --use-sentence-keys; remove it or key by line number")
                short = hashlib.blake2b(key.encode("utf-8"), digest_size=12).digest()
                if short in seen:
                    raise EmbedError(f"{input_file}: lines {seen[short]} and {n} hold the same sentence, "
                                     "so --use-sentence-keys cannot name them apart; key by line number instead")
                seen[short] = n
    return n, blank, digest.hexdigest()


def _not_utf8_error(input_file: Path, line_number: int, line: str, bad: re.Match) -> EmbedError:
    """The error for line `line_number` (from 1), read with `errors="surrogateescape"`: which byte is bad."""
    offset = len(line[: bad.start()].encode("utf-8", "surrogateescape")) + 1
    value = ord(bad.group()) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
    return EmbedError(f"{input_file}: line {line_number} is not UTF-8 (byte {offset} of the line is 0x{value:02x})")


def _callable_name(function: Callable | None) -> str:
    if function is None:
        return "whitespace"
    owner = getattr(function, "__self__", None)
    return f"{type(owner).__name__}.{function.__name__}" if owner is not None else getattr(function, "__name__", "?")


@contextmanager
def _locked(work: Path) -> Iterator[None]:
    """Refuse a second process writing the same output at the same time (POSIX advisory lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(work / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EmbedError(f"{work}: another hf-elmo embed is writing this output") from None
        yield


def _read_manifest(work: Path) -> dict | None:
    try:
        manifest = json.loads((work / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not {"fingerprint", "lines_done", "vectors_bytes"} <= manifest.keys():
        return None
    return manifest


def _write_manifest(work: Path, manifest: dict, sync: bool = True) -> None:
    """Atomically replace the manifest: a reader sees the old one or the new one, never a mix."""
    tmp = work / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, work / MANIFEST)


def _truncate_logs(work: Path, manifest: dict, floats_per_word: int) -> None:
    """
    Cut the logs back to the committed sizes, dropping what a kill left half-written. Logs shorter than the
    manifest claims (possible only after a power loss between two fsyncs) fall back to their longest complete
    prefix of lines, found by walking `lengths.bin`.
    """
    vectors, lengths = work / VECTORS, work / LENGTHS
    for path in (vectors, lengths):
        with open(path, "ab"):
            pass
    lines, n_bytes = manifest["lines_done"], manifest["vectors_bytes"]
    have_vectors, have_lengths = vectors.stat().st_size, lengths.stat().st_size
    if have_vectors < n_bytes or have_lengths < 8 * lines:
        lines, n_bytes = _complete_prefix(lengths, min(lines, have_lengths // 8), have_vectors, 4 * floats_per_word)
        logger.warning(f"{work}: the logs are shorter than the manifest says (lost writes?); resuming from line "
                       f"{lines + 1} instead of {manifest['lines_done'] + 1}")
        manifest["lines_done"], manifest["vectors_bytes"] = lines, n_bytes
        _write_manifest(work, manifest)
    os.truncate(vectors, n_bytes)
    os.truncate(lengths, 8 * lines)


def _complete_prefix(lengths: Path, max_lines: int, vector_bytes: int, bytes_per_word: int) -> tuple[int, int]:
    """The most lines (at most `max_lines`) whose vectors fit in `vector_bytes`, and their byte count."""
    lines = total = 0
    with open(lengths, "rb") as f:
        while lines < max_lines:
            block = np.frombuffer(f.read(8 * min(4096, max_lines - lines)), dtype="<i8")
            if block.size == 0:
                break
            ends = total + np.cumsum(block * bytes_per_word)
            fits = int(np.searchsorted(ends, vector_bytes, side="right"))
            if fits < block.size:
                return lines + fits, int(ends[fits - 1]) if fits else total
            lines, total = lines + block.size, int(ends[-1])
    return lines, total


def _batches(lines: Iterator[str], size: int, start: int) -> Iterator[list[str]]:
    """Batches of lines `[k * size, (k + 1) * size)`, counting from line `start`: a resumed run batches (and
    so pads, and so rounds) every line exactly as an uninterrupted run with the same batch size does."""
    first = size - start % size
    while batch := list(itertools.islice(lines, first)):
        yield batch
        first = size


@torch.inference_mode()
def _embed_batch(model: "ElmoModel", tokenizer: ElmoTokenizer, sentences: list[list[str]],
                 output_format: str) -> list[np.ndarray]:
    """float32 arrays, one per sentence: `(layers, n, D)` for "all", `(n, D)` otherwise (blank: n = 0)."""
    enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt").to(model.device)
    out = model(**enc, output_hidden_states=True)
    stacked = torch.stack(out.hidden_states).float().cpu().numpy()  # (layers, B, W, D)
    results: list[np.ndarray] = []
    for i, words in enumerate(sentences):
        layers = stacked[:, i, : len(words)]
        if output_format == "top":
            array = layers[-1]
        elif output_format == "average":
            array = layers.mean(axis=0)
        else:
            array = layers
        results.append(np.ascontiguousarray(array, dtype=np.float32))
    return results


def _embed_lines(
    model: "ElmoModel",
    input_file: Path,
    work: Path,
    manifest: dict,
    output_format: str,
    batch_size: int,
    split_words: Callable[[str], list[str]] | None,
    n_lines: int,
    progress: bool,
) -> None:
    """Embed the lines after `manifest["lines_done"]`, committing the manifest after every batch."""
    from tqdm.auto import tqdm

    tokenizer = default_tokenizer(model)
    blank = 0
    start = manifest["lines_done"]
    last_sync = time.monotonic()
    with open(input_file, encoding="utf-8") as text, open(work / VECTORS, "ab") as vectors, \
            open(work / LENGTHS, "ab") as lengths, \
            tqdm(total=n_lines, initial=start, unit=" sentences", desc="embedding", disable=not progress) as bar:
        lines = itertools.islice(text, start, None)
        line_number = start
        for batch in _batches(lines, batch_size, start):
            sentences = [split_line(line, split_words) for line in batch]
            for offset, words in enumerate(sentences):
                if not words:
                    blank += 1
                    if blank <= MAX_BLANK_LINE_WARNINGS:
                        index = line_number + offset
                        logger.warning(f"{input_file}: line {index + 1} is blank; stored as an empty entry "
                                       f"(dataset \"{index}\")")
            arrays = _embed_batch(model, tokenizer, sentences, output_format)
            counts = np.array([len(s) for s in sentences], dtype="<i8")
            for array in arrays:
                vectors.write(array.astype("<f4", copy=False).tobytes())
            lengths.write(counts.tobytes())
            vectors.flush()
            lengths.flush()
            sync = time.monotonic() - last_sync >= SYNC_SECONDS
            if sync:
                os.fsync(vectors.fileno())
                os.fsync(lengths.fileno())
                last_sync = time.monotonic()
            line_number += len(batch)
            manifest["lines_done"] = line_number
            manifest["vectors_bytes"] = vectors.tell()
            _commit(work, manifest, sync)
            bar.update(len(batch))
    if blank > MAX_BLANK_LINE_WARNINGS:
        logger.warning(f"{input_file}: {blank} blank lines in all, stored as empty entries")


def _commit(work: Path, manifest: dict, sync: bool) -> None:
    """Record one more batch as done (a separate function so tests can interrupt a run right here)."""
    _write_manifest(work, manifest, sync)


def _assemble(
    work: Path,
    input_file: Path,
    output_file: Path,
    manifest: dict,
    output_format: str,
    use_sentence_keys: bool,
    forget_sentences: bool,
    n_layers: int,
    dim: int,
) -> None:
    """Write the HDF5 file from the logs, line by line, into a temporary file renamed to `output_file` at the end."""
    import h5py

    n_lines = manifest["lines_done"]
    if n_lines != manifest["fingerprint"]["input_lines"]:
        raise EmbedError(f"{input_file}: has {n_lines} lines now but {manifest['fingerprint']['input_lines']} "
                         "when the run started; pass --overwrite to start over")
    tmp = output_file.with_name(f".{output_file.name}.tmp")
    sentence_to_index: dict[str, str] = {}
    try:
        with h5py.File(tmp, "w") as out, open(input_file, encoding="utf-8") as text, \
                open(work / VECTORS, "rb") as vectors, open(work / LENGTHS, "rb") as lengths:
            for index, line in enumerate(text):
                n_words = int(np.frombuffer(lengths.read(8), dtype="<i8")[0])
                shape = (n_layers, n_words, dim) if output_format == "all" else (n_words, dim)
                count = int(np.prod(shape))
                data = np.frombuffer(vectors.read(4 * count), dtype="<f4")
                if data.size != count:
                    raise EmbedError(f"{work / VECTORS}: ends early at line {index + 1}; pass --overwrite to start "
                                     "over")
                sentence = line.strip()
                key = sentence if use_sentence_keys else str(index)
                try:
                    out.create_dataset(key, shape, dtype="float32", data=data.reshape(shape))
                except ValueError as error:
                    raise EmbedError(f"{input_file}: line {index + 1} cannot be stored under the key {key!r} ({error})"
                                     ) from None
                if not forget_sentences and not use_sentence_keys:
                    sentence_to_index[sentence] = key
            if not forget_sentences and not use_sentence_keys:
                dataset = out.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
                dataset[0] = json.dumps(sentence_to_index)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, output_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@torch.no_grad()
def dump_token_embeddings(
    model: "ElmoModel", words: list[str], output_file: str | os.PathLike, batch_size: int = 4096
) -> Path:
    """
    Write bilm-tf's `dump_token_embeddings` file: dataset `embedding`, float32 `(len(words), projection_dim)`,
    the context-free token vector of each word in order (`<S>` / `</S>` are the sentence-boundary tokens; for
    ELMoForManyLangs models, words are encoded with the checkpoint's own tables, boundaries `<bos>` / `<eos>`).
    """
    import h5py

    output_file = Path(output_file)
    with atomic_output(output_file) as tmp_name, h5py.File(tmp_name, "w") as hdf5:
        write_token_embeddings(model, words, hdf5, "embedding", batch_size)
    return output_file


def write_token_embeddings(model: "ElmoModel", words: list[str], hdf5: Any, name: str, batch_size: int = 4096) -> None:
    """Create dataset `name` in the open h5py file: float32 `(len(words), projection_dim)`, the context-free token
    vector of each word, computed `batch_size` words at a time (with a progress bar). Words are encoded with the
    model's own tokenizer (`default_tokenizer`: ELMoForManyLangs models have their own tables)."""
    from tqdm.auto import tqdm

    tokenizer = default_tokenizer(model)
    dataset = hdf5.create_dataset(name, (len(words), model.config.projection_dim), dtype="float32")
    for start in tqdm(range(0, len(words), batch_size), desc="token embeddings", unit="batch"):
        chunk = words[start : start + batch_size]
        ids = torch.tensor(tokenizer.encode_words(chunk), dtype=torch.long, device=model.device)
        dataset[start : start + len(chunk)] = model.embed_words(ids).float().cpu().numpy()


__all__ = ["DEFAULT_BATCH_SIZE", "EmbedError", "EmbedSummary", "OUTPUT_FORMATS", "dump_token_embeddings",
           "embed_file", "split_line", "work_dir_for", "write_token_embeddings"]
