"""`hf-elmo embed`: allennlp's `elmo` file layout, blank lines, sentence keys, raw text, and resuming after a kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hf_elmo.jobs import hdf5_job as embed_module
from hf_elmo.cli import main as cli_main
from hf_elmo.jobs.hdf5_job import EmbedError, embed_file, work_dir_for
from hf_elmo.modeling_elmo import ElmoModel
from hf_elmo.tokenization_elmo import ElmoTokenizer

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


def reference_layers(model: ElmoModel, words: list[str]) -> np.ndarray:
    """(3, n, D) of one sentence run on its own."""
    tokenizer = ElmoTokenizer()
    enc = tokenizer([words], is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0].numpy()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads, and on a busy 2-core machine they make it 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model(converted_fixture) -> ElmoModel:
    return ElmoModel.from_pretrained(converted_fixture).eval()


@pytest.fixture()
def input_file(tmp_path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def test_all_top_average_layouts(tmp_path, converted_fixture, model, input_file, caplog):
    outputs = {}
    for flag in ("--all", "--top", "--average"):
        outputs[flag] = tmp_path / f"out{flag}.hdf5"
        with caplog.at_level(logging.WARNING, logger="hf_elmo.jobs.hdf5_job"):
            assert cli_main(["embed", str(converted_fixture), str(input_file), str(outputs[flag]), flag,
                             "--batch-size", "3"]) == 0
    assert "line 2 is blank" in caplog.text and "line 4 is blank" in caplog.text

    full = read_h5(outputs["--all"])
    assert set(full) == {*map(str, range(len(SENTENCES))), "sentence_to_index"}
    index = json.loads(full["sentence_to_index"][0])
    assert index["The cat sat on the mat ."] == "0" and index["naïve café 😀 über"] == "3"
    for i, sentence in enumerate(SENTENCES):
        words = sentence.split()
        data = full[str(i)]
        assert data.dtype == np.float32 and data.shape == (3, len(words), 32)
        if words:
            assert np.allclose(data, reference_layers(model, words), atol=1e-6)
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


def test_sentence_keys_raw_text_and_forget_sentences(tmp_path, converted_fixture, model):
    source = tmp_path / "raw.txt"
    source.write_text("It wasn't me.\nU.S. banks don't lend.\n", encoding="utf-8")
    out = tmp_path / "keys.hdf5"
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--top", "--use-sentence-keys",
                     "--raw-text"]) == 0
    data = read_h5(out)
    assert set(data) == {"It wasn't me.", "U.S. banks don't lend."}  # no sentence_to_index with sentence keys
    words = ElmoTokenizer().split_words("It wasn't me.")
    assert words == ["It", "wasn", "'t", "me", "."]
    assert np.allclose(data["It wasn't me."], reference_layers(model, words)[-1], atol=1e-6)

    forgot = tmp_path / "forgot.hdf5"
    assert cli_main(["embed", str(converted_fixture), str(source), str(forgot), "--all", "--forget-sentences"]) == 0
    assert set(read_h5(forgot)) == {"0", "1"}


def test_sentence_keys_refuse_repeats_and_blank_lines_before_any_work(tmp_path, converted_fixture, capsys):
    source = tmp_path / "dup.txt"
    source.write_text("a b\nc d\na b\n", encoding="utf-8")
    out = tmp_path / "dup.hdf5"
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--all", "--use-sentence-keys"]) == 2
    err = capsys.readouterr().err
    assert "lines 0 and 2 hold the same sentence" in err and "Traceback" not in err
    assert not out.exists() and not work_dir_for(out).exists()
    source.write_text("a b\n\nc d\n", encoding="utf-8")
    assert cli_main(["embed", str(converted_fixture), str(source), str(out), "--all", "--use-sentence-keys"]) == 2
    assert "line 1 is blank" in capsys.readouterr().err


def test_vectors_do_not_depend_on_the_batch_size(tmp_path, model, input_file):
    summary = embed_file(model, input_file, tmp_path / "b1.hdf5", batch_size=1, progress=False)
    assert (summary.lines, summary.blank_lines, summary.resumed_from_line) == (len(SENTENCES), 2, 0)
    one = summary.output_file
    many = embed_file(model, input_file, tmp_path / "b5.hdf5", batch_size=5, progress=False).output_file
    a, b = read_h5(one), read_h5(many)
    assert a.keys() == b.keys()
    for key in a:
        if key != "sentence_to_index":
            assert a[key].shape == b[key].shape and np.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.parametrize("damage", ["torn write", "lost writes"])
def test_resume_after_an_interruption(tmp_path, model, monkeypatch, damage):
    source = tmp_path / "long.txt"
    lines = [" ".join(f"w{(i * 7 + j) % 23}" for j in range(1 + i % 9)) if i % 11 else "" for i in range(40)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = embed_file(model, source, tmp_path / "reference.hdf5", batch_size=4, progress=False).output_file

    out = tmp_path / "out.hdf5"
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

    summary = embed_file(model, source, out, batch_size=4, progress=False)
    assert summary.resumed_from_line == resume_line and summary.lines == 40
    assert_same_file(out, reference)
    assert not work.exists()


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


def test_killed_process_resumes_to_the_same_file(tmp_path, converted_fixture, model):
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


def test_memory_does_not_grow_with_the_input(tmp_path, model):
    """Python-side peak memory (numpy arrays included) is the same for 200 and 1600 lines: the input is streamed."""
    rng = np.random.default_rng(0)
    vocab = "the a cat dog sat ran on under mat rug quickly slowly .".split()
    peaks = []
    for n in (20, 200, 1600):  # the first run only warms up (lazy imports, caches)
        source = tmp_path / f"{n}.txt"
        source.write_text("\n".join(" ".join(rng.choice(vocab, size=9)) for _ in range(n)) + "\n")
        tracemalloc.start()
        embed_file(model, source, tmp_path / f"{n}.hdf5", batch_size=16, forget_sentences=True, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[2] < peaks[1] * 1.5 + 100_000, peaks


def test_unreadable_input_is_reported(tmp_path, converted_fixture, capsys):
    source = tmp_path / "latin1.txt"
    source.write_bytes("ok line\ncaf\xe9\n".encode("latin-1"))
    assert cli_main(["embed", str(converted_fixture), str(source), str(tmp_path / "o.hdf5"), "--all"]) == 2
    assert "line 1 is not UTF-8" in capsys.readouterr().err
    assert cli_main(["embed", str(converted_fixture), str(tmp_path / "nope.txt"), str(tmp_path / "o.hdf5"),
                     "--all"]) == 2
    assert "nope.txt: input file not found" in capsys.readouterr().err


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
