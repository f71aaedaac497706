"""`hf-elmo embed` (allennlp's `elmo` file layout, blank lines, sentence keys, raw text, resuming after a kill, bad
input) and `hf-elmo dump-token-embeddings`, every vector checked against the model run on its sentence alone."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FIXTURE_OPTIONS, FIXTURE_WEIGHTS, fixture_options, run_alone
from reference_bilm import ReferenceBiLM
from hf_elmo.cli import main as cli_main
from hf_elmo.jobs import hdf5_job as embed_module
from hf_elmo.jobs.core import load_model, model_fingerprint, quiet_weight_progress
from hf_elmo.jobs.hdf5_job import EmbedError, embed_file, work_dir_for

SENTENCES = [
    "The cat sat on the mat .",
    "Colorless green ideas sleep furiously",
    "",
    "naïve café 😀 über",
    "   ",
    "A",
    "The bank raised its interest rates again .",
]


def read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {key: f[key][...] for key in f}


def assert_same_file(a: Path, b: Path) -> None:
    left, right = read_h5(a), read_h5(b)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype and left[key].shape == right[key].shape, key
        assert np.array_equal(left[key], right[key]), key


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads, and on a busy 2-core machine they make it 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture()
def input_file(tmp_path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def test_all_top_average_layouts(tmp_path, converted_fixture, fixture_model, elmo_tokenizer, input_file, caplog):
    outputs = {}
    for flag in ("--all", "--top", "--average"):
        outputs[flag] = tmp_path / f"out{flag}.hdf5"
        with caplog.at_level(logging.WARNING, logger="hf_elmo.jobs.hdf5_job"):
            assert cli_main(["embed", str(converted_fixture), str(input_file), str(outputs[flag]), flag,
                             "--batch-size", "3"]) == 0
    assert 'line 3 is blank; stored as an empty entry (dataset "2")' in caplog.text
    assert 'line 5 is blank; stored as an empty entry (dataset "4")' in caplog.text

    full = read_h5(outputs["--all"])
    assert set(full) == {*map(str, range(len(SENTENCES))), "sentence_to_index"}
    index = json.loads(full["sentence_to_index"][0])
    assert index["The cat sat on the mat ."] == "0" and index["naïve café 😀 über"] == "3"
    for i, sentence in enumerate(SENTENCES):
        words = sentence.split()
        data = full[str(i)]
        assert data.dtype == np.float32 and data.shape == (3, len(words), 32)
        if words:
            assert np.allclose(data, run_alone(fixture_model, elmo_tokenizer, words)["all"], atol=1e-6)
            assert np.array_equal(data[0, :, :16], data[0, :, 16:])  # layer 0: the token vector, repeated
    top, average = read_h5(outputs["--top"]), read_h5(outputs["--average"])
    for i in range(len(SENTENCES)):
        assert top[str(i)].shape == average[str(i)].shape == full[str(i)].shape[1:]
        assert np.allclose(top[str(i)], full[str(i)][-1], atol=1e-6)
        assert np.allclose(average[str(i)], full[str(i)].mean(axis=0), atol=1e-6)
    assert top["2"].shape == (0, 32)


def test_a_layer_flag_is_required(converted_fixture, input_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["embed", str(converted_fixture), str(input_file), str(tmp_path / "o.hdf5")])
    assert exit_info.value.code == 2
    assert "one of the arguments --all --top --average is required" in capsys.readouterr().err


def test_sentence_keys_raw_text_and_forget_sentences(tmp_path, converted_fixture, fixture_model, elmo_tokenizer):
    source = tmp_path / "raw.txt"
    source.write_text("It wasn't me.\nU.S. banks don't lend.\n", encoding="utf-8")
    out = tmp_path / "keys.hdf5"
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--top", "--use-sentence-keys",
                     "--raw-text"]) == 0
    data = read_h5(out)
    assert set(data) == {"It wasn't me.", "U.S. banks don't lend."}  # no sentence_to_index with sentence keys
    words = elmo_tokenizer.split_words("It wasn't me.")
    assert words == ["It", "wasn", "'t", "me", "."]
    assert np.allclose(data["It wasn't me."], run_alone(fixture_model, elmo_tokenizer, words)["top"], atol=1e-6)

    forgot = tmp_path / "forgot.hdf5"
    assert cli_main(["embed", str(converted_fixture), str(source), str(forgot), "--all", "--forget-sentences"]) == 0
    assert set(read_h5(forgot)) == {"0", "1"}


def test_sentence_keys_refuse_repeats_and_blank_lines_before_any_work(tmp_path, converted_fixture, capsys):
    source = tmp_path / "dup.txt"
    source.write_text("a b\nc d\na b\n", encoding="utf-8")
    out = tmp_path / "dup.hdf5"
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--all", "--use-sentence-keys"]) == 2
    err = capsys.readouterr().err
    assert "lines 1 and 3 hold the same sentence" in err and "Traceback" not in err
    assert not out.exists() and not work_dir_for(out).exists()
    source.write_text("a b\n\nc d\n", encoding="utf-8")
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--all", "--use-sentence-keys"]) == 2
    assert "line 2 is blank" in capsys.readouterr().err


def test_vectors_do_not_depend_on_the_batch_size(tmp_path, fixture_model, input_file):
    summary = embed_file(fixture_model, input_file, tmp_path / "b1.hdf5", batch_size=1, progress=False)
    assert (summary.lines, summary.blank_lines, summary.resumed_from_line) == (len(SENTENCES), 2, 0)
    one = summary.output_file
    many = embed_file(fixture_model, input_file, tmp_path / "b5.hdf5", batch_size=5, progress=False).output_file
    a, b = read_h5(one), read_h5(many)
    assert a.keys() == b.keys()
    for key in a:
        if key != "sentence_to_index":
            assert a[key].shape == b[key].shape and np.allclose(a[key], b[key], atol=1e-6), key


def forty_lines(tmp_path: Path) -> Path:
    """40 lines of 1 to 9 words, every 11th blank."""
    source = tmp_path / "long.txt"
    lines = [" ".join(f"w{(i * 7 + j) % 23}" for j in range(1 + i % 9)) if i % 11 else "" for i in range(40)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return source


def interrupt_after_three_batches(model, source: Path, out: Path, monkeypatch) -> None:
    """Run `embed_file` (batches of 4) until the 4th batch is written but not yet committed, then stop it."""
    real_commit, commits = embed_module._commit, []

    def interrupted_commit(work, manifest, sync):
        if len(commits) == 3:  # the 4th batch's vectors are written but never committed
            raise KeyboardInterrupt
        commits.append(manifest["lines_done"])
        real_commit(work, manifest, sync)

    monkeypatch.setattr(embed_module, "_commit", interrupted_commit)
    with pytest.raises(KeyboardInterrupt):
        embed_file(model, source, out, batch_size=4, progress=False)
    monkeypatch.setattr(embed_module, "_commit", real_commit)


@pytest.mark.parametrize("damage", ["torn write", "lost writes"])
def test_resume_after_an_interruption(tmp_path, fixture_model, monkeypatch, damage, caplog):
    source = forty_lines(tmp_path)
    reference = embed_file(fixture_model, source, tmp_path / "reference.hdf5", batch_size=4,
                           progress=False).output_file
    out = tmp_path / "out.hdf5"
    interrupt_after_three_batches(fixture_model, source, out, monkeypatch)
    work = work_dir_for(out)
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["lines_done"] == 12 and not out.exists()
    assert (work / "vectors.bin").stat().st_size > manifest["vectors_bytes"]  # the 4th batch, uncommitted
    if damage == "torn write":  # plus half a vector and half a length, as a kill mid-write leaves them
        with open(work / "vectors.bin", "ab") as f:
            f.write(b"\x00\x01")
        with open(work / "lengths.bin", "ab") as f:
            f.write(b"\x07")
        resume_line = 12
    else:  # a power loss between two fsyncs: the logs end before what the manifest committed
        os.truncate(work / "vectors.bin", manifest["vectors_bytes"] - 100)
        os.truncate(work / "lengths.bin", 8 * 11)
        resume_line = 10  # line 10 (2 words) loses its last 100 bytes; line 11 (blank) its length

    with caplog.at_level(logging.WARNING, logger="hf_elmo.jobs.hdf5_job"):
        summary = embed_file(fixture_model, source, out, batch_size=4, progress=False)
    assert summary.resumed_from_line == resume_line and summary.lines == 40
    assert f"resuming {out} at line {resume_line + 1} of 40" in caplog.text  # lines counted from 1
    if damage == "lost writes":
        assert "resuming from line 11 instead of 13" in caplog.text
    assert_same_file(out, reference)
    assert not work.exists()


def test_runtime_settings_keep_the_fingerprint_so_a_run_resumes(tmp_path, converted_fixture, fixture_model,
                                                               monkeypatch):
    """Prepacking changes speed and memory, not the numbers: a run started with it resumes without it."""
    unpacked = load_model(converted_fixture, prepack_cpu_weights=False)
    assert model_fingerprint(unpacked) == model_fingerprint(fixture_model)
    changed = load_model(converted_fixture, do_layer_norm=True)  # the architecture (and the numbers) differ
    assert model_fingerprint(changed) != model_fingerprint(fixture_model)
    changed = load_model(converted_fixture)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3  # so do the weights
    assert model_fingerprint(changed) != model_fingerprint(fixture_model)

    source = forty_lines(tmp_path)
    reference = embed_file(fixture_model, source, tmp_path / "reference.hdf5", batch_size=4,
                           progress=False).output_file
    out = tmp_path / "out.hdf5"
    interrupt_after_three_batches(fixture_model, source, out, monkeypatch)
    summary = embed_file(unpacked, source, out, batch_size=4, progress=False)
    assert summary.resumed_from_line == 12
    resumed, uninterrupted = read_h5(out), read_h5(reference)
    assert resumed.keys() == uninterrupted.keys()
    assert np.array_equal(resumed.pop("sentence_to_index"), uninterrupted.pop("sentence_to_index"))
    for key in resumed:  # the lines after the 12th come from other matmul kernels: equal up to rounding
        np.testing.assert_allclose(resumed[key], uninterrupted[key], atol=1e-6, rtol=0)


def test_existing_output_unfinished_other_job_and_overwrite(tmp_path, converted_fixture, input_file, capsys):
    out = tmp_path / "o.hdf5"
    base = ["embed", str(converted_fixture), str(input_file), str(out)]
    assert cli_main([*base, "--all"]) == 0
    before = read_h5(out)
    assert cli_main([*base, "--top"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main([*base, "--top", "--overwrite"]) == 0
    assert read_h5(out)["0"].shape == before["0"].shape[1:]

    # An unfinished run of another job is not mixed with a new one.
    work = work_dir_for(out)
    work.mkdir()
    other = {"fingerprint": {"output_format": "all", "input_sha256": "0" * 64}, "lines_done": 0, "vectors_bytes": 0}
    (work / "manifest.json").write_text(json.dumps(other))
    assert cli_main([*base, "--top"]) == 2
    err = capsys.readouterr().err
    assert "unfinished run of a different job" in err and "input_sha256" in err and "--overwrite" in err
    assert cli_main([*base, "--all", "--overwrite"]) == 0
    assert_same_file_dicts(read_h5(out), before)


def assert_same_file_dicts(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_killed_process_resumes_to_the_same_file(tmp_path, converted_fixture):
    """SIGKILL a real `hf-elmo embed` at an arbitrary moment, start it again, and compare with an uninterrupted run."""
    source = tmp_path / "many.txt"
    rng = np.random.default_rng(0)
    vocab = "the a cat dog sat ran on under mat rug quickly slowly .".split()
    lines = [" ".join(rng.choice(vocab, size=int(rng.integers(0, 30)))) for _ in range(600)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, reference = tmp_path / "killed.hdf5", tmp_path / "reference.hdf5"
    command = [sys.executable, "-m", "hf_elmo.cli", "embed", str(converted_fixture), str(source), str(out), "--top",
               "--batch-size", "3"]
    # The uninterrupted run, in a process of its own too (bit-exact comparisons need the same torch settings).
    result = subprocess.run([*command[:6], str(reference), *command[7:]], capture_output=True, text=True, timeout=300,
                            env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = work_dir_for(out) / "manifest.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ONE_THREAD_ENV)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            done = json.loads(manifest.read_text())["lines_done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 30:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 30 <= done < 600 and not out.exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed at line" in result.stdout
    assert_same_file(out, reference)
    assert not work_dir_for(out).exists()


def test_memory_does_not_grow_with_the_input(tmp_path, fixture_model):
    """Python-side peak memory (numpy arrays included) is the same for 200 and 1600 lines: the input is streamed."""
    rng = np.random.default_rng(0)
    vocab = "the a cat dog sat ran on under mat rug quickly slowly .".split()
    peaks = []
    for n in (20, 200, 1600):  # the first run only warms up (lazy imports, caches)
        source = tmp_path / f"{n}.txt"
        source.write_text("\n".join(" ".join(rng.choice(vocab, size=9)) for _ in range(n)) + "\n")
        tracemalloc.start()
        embed_file(fixture_model, source, tmp_path / f"{n}.hdf5", batch_size=16, forget_sentences=True, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[2] < peaks[1] * 1.5 + 100_000, peaks


def test_unreadable_input_is_reported(tmp_path, converted_fixture, capsys):
    source = tmp_path / "latin1.txt"
    source.write_bytes("ok line\ncaf\xe9\n".encode("latin-1"))
    assert cli_main(["embed", str(converted_fixture), str(source), str(tmp_path / "o.hdf5"), "--all"]) == 2
    assert "line 2 is not UTF-8 (byte 4 of the line is 0xe9)" in capsys.readouterr().err
    assert cli_main(["embed", str(converted_fixture), str(tmp_path / "nope.txt"), str(tmp_path / "o.hdf5"),
                     "--all"]) == 2
    assert "nope.txt: input file not found" in capsys.readouterr().err


def test_a_bad_byte_is_reported_on_its_own_line_counted_from_one(tmp_path, converted_fixture, capsys):
    """The file is decoded in 8 kB chunks: the error names the line of the bad byte, not the chunk's first."""
    source, out = tmp_path / "third.txt", tmp_path / "o.hdf5"
    source.write_bytes(b"first line\nsecond line\ncaf\xe9 au lait\nfourth line\n")
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--all"]) == 2
    err = capsys.readouterr().err
    assert err == f"hf-elmo embed: error: {source}: line 3 is not UTF-8 (byte 4 of the line is 0xe9)\n"
    assert not out.exists() and not work_dir_for(out).exists()
    # Far past the first chunk, after \r\n and lone \r line ends (line ends in Python's text files too).
    source.write_bytes(b"a b\r\n" * 3000 + b"c\rd\n" + b"e \x80 f\n")
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--all"]) == 2
    assert f"{source}: line 3003 is not UTF-8 (byte 3 of the line is 0x80)" in capsys.readouterr().err


LINE_BREAK = re.compile(r"\r\n|\r|\n")
BYTE_PIECES = st.one_of(
    st.text(max_size=12).map(str.encode),
    st.sampled_from([b"\n", b"\r\n", b"\r", b" ", b"\xe9", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f\x98"]),
    st.binary(max_size=4),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(BYTE_PIECES, max_size=12).map(b"".join))
def test_any_bytes_give_the_model_on_each_line_alone_or_an_error_naming_the_line(fixture_model, elmo_tokenizer,
                                                                                 data):
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "input.txt", Path(tmp) / "out.hdf5"
        source.write_bytes(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            # Lines end at \n, \r\n or a lone \r (Python's universal newlines), counted from 1.
            line = len(LINE_BREAK.findall(data[: error.start].decode("utf-8"))) + 1
            with pytest.raises(EmbedError, match=rf"input\.txt: line {line} is not UTF-8 \(byte \d+ of the line"):
                embed_file(fixture_model, source, out, batch_size=3, progress=False)
            return
        lines = LINE_BREAK.split(text)
        if lines[-1] == "":  # the text ends with a line break (or is empty)
            lines.pop()
        summary = embed_file(fixture_model, source, out, batch_size=3, progress=False)
        stored = read_h5(out)
    assert summary.lines == len(lines)
    assert stored.keys() == {*map(str, range(len(lines))), "sentence_to_index"}
    for i, line in enumerate(lines):
        words = line.split()
        assert stored[str(i)].shape == (3, len(words), 32)
        if words:
            np.testing.assert_allclose(stored[str(i)], run_alone(fixture_model, elmo_tokenizer, words)["all"],
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("command", ["embed", "dump-token-embeddings"])
def test_a_missing_model_folder_is_named(tmp_path, monkeypatch, capsys, command):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a name that could be a Hub repo is not fetched
    monkeypatch.chdir(tmp_path)
    Path("words.txt").write_text("the cat\n", encoding="utf-8")
    rest = ["words.txt", "out.hdf5", "--all"] if command == "embed" else ["words.txt", "out.hdf5"]
    missing = tmp_path / "models" / "elmo"
    for model, message in [
        (str(missing), f"{missing}: checkpoint folder not found"),
        ("./elmo", "./elmo: checkpoint folder not found"),
        ("words.txt", "words.txt: is a file, not a checkpoint folder"),
        ("no-such-elmo", "no-such-elmo: no such checkpoint folder, and loading it as a Hub repo id failed: "),
    ]:
        assert cli_main([command, model, *rest]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hf-elmo {command}: error: {message}"), err
        assert err.count("\n") == 1 and "Repo id must be" not in err
    assert not Path("out.hdf5").exists()


def test_commands_show_progress_for_long_work_only(tmp_path, converted_fixture, input_file, capsys):
    """Loading or writing the weights takes a fraction of a second: no bars. Embedding shows its bar."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    assert cli_main(["convert", "--options-file", str(FIXTURE_OPTIONS), "--weight-file", str(FIXTURE_WEIGHTS),
                     "--output-dir", str(tmp_path / "converted")]) == 0
    assert "Writing model shards" not in capsys.readouterr().err
    assert cli_main(["embed", str(converted_fixture), str(input_file), str(tmp_path / "o.hdf5"), "--top"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "embedding: 100%" in err
    (tmp_path / "vocab.txt").write_text("the\ncat\n", encoding="utf-8")
    assert cli_main(["dump-token-embeddings", str(converted_fixture), str(tmp_path / "vocab.txt"),
                     str(tmp_path / "tokens.hdf5")]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "token embeddings: 100%" in err
    # The switches are restored: code run afterwards in this process shows its bars as before.
    assert transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    with quiet_weight_progress():  # Hub downloads (long work) keep their bars
        assert not transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()


def test_dump_token_embeddings(tmp_path, converted_fixture, fixture_model, elmo_tokenizer):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<S>\n</S>\nthe\ncat\nthe\n😀\n")
    assert cli_main(["dump-token-embeddings", str(converted_fixture), str(vocab), str(tmp_path / "emb.hdf5")]) == 0
    with h5py.File(tmp_path / "emb.hdf5", "r") as f:
        embedding = f["embedding"][...]
    assert embedding.dtype == np.float32 and embedding.shape == (6, 16)
    assert np.array_equal(embedding[2], embedding[4])
    assert np.allclose(embedding[2:4], run_alone(fixture_model, elmo_tokenizer, ["the", "cat"])["all"][0, :, :16],
                       atol=1e-6)
    reference = ReferenceBiLM(fixture_options(), str(FIXTURE_WEIGHTS))
    assert np.allclose(embedding[0], reference.token_vector("<S>"), atol=1e-5)
    assert np.allclose(embedding[1], reference.token_vector("</S>"), atol=1e-5)


def test_help_lists_every_command(capsys):
    from hf_elmo.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"convert", "embed", "dump-token-embeddings"} <= set(commands)
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    text = capsys.readouterr().out
    for name in commands:
        assert name in text
    with pytest.raises(SystemExit):
        cli_main(["convert", "--help"])
    text = capsys.readouterr().out
    for flag in ("--push-to-hub", "--private", "--revision", "--commit-message", "--cache-dir"):
        assert flag in text
