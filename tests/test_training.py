"""`hf-elmo train` (issue 11): training from scratch and continued, as bilm-tf trains, checked by perplexities on
bilm-tf's own test corpus and by exact round trips (resume after SIGKILL, 2 processes against 1)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from helpers import LM_FIXTURE, TRAIN
from hf_elmo.cli import main as cli_main
from hf_elmo.jobs.lm_job import ElmoLanguageModel
from hf_elmo.training.trainer import last_complete_checkpoint

CORPUS = TRAIN / "data.txt"
VOCAB = TRAIN / "vocab.txt"
# bilm-tf's tests/test_training.py options (bilm-tf-lm was trained with them): 32 words, batch 2, 10 steps,
# 16 negatives, clip norm 1.0, dropout 0.1.
TEST_OPTIONS = LM_FIXTURE / "options.json"
# Perplexity of the corpus under its own unigram distribution (the vocabulary's 32 words, `</S>` included):
# a model below it has learned context, not only word frequencies.
UNIGRAM_PERPLEXITY = 16.186
QUIET = ["--disable_tqdm", "true", "--save_steps", "100000"]


def train(*argv: str | Path) -> None:
    assert cli_main(["train", *map(str, argv)]) == 0


def perplexity(model_dir: Path, corpus: Path = CORPUS, stateful: bool = True) -> float:
    """bilm-tf's `test()` protocol: the corpus streamed at batch size 1, state carried (or each sentence alone)."""
    lm = ElmoLanguageModel.from_pretrained(model_dir)
    return lm.perplexity(corpus_sentences(corpus), batch_size=1, stateful=stateful).perplexity


def corpus_sentences(corpus: Path) -> list[list[str]]:
    return [line.split() for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_from_scratch_with_bilm_tf_test_options_passes_bilm_tf_own_bar(tmp_path):
    """bilm-tf's test trains these options 50 epochs (335 batches) and requires test perplexity < 20 (32 words);
    the result is a complete checkpoint folder (AutoModel, AutoModelForPreTraining, export-original)."""
    out = tmp_path / "out"
    train("--train-file", CORPUS, "--vocab-file", VOCAB, "--options-file", TEST_OPTIONS, "--output-dir", out,
          "--max-steps", 335, *QUIET)
    assert perplexity(out) < 20.0
    assert (out / "lm_vocab.txt").read_text() == VOCAB.read_text()
    config = json.loads((out / "config.json").read_text())
    assert (config["dropout"], config["lm_vocab_size"]) == (0.1, 32)
    assert isinstance(AutoModel.from_pretrained(out), torch.nn.Module)
    lm = AutoModelForPreTraining.from_pretrained(out)
    assert torch.equal(lm.softmax.weight, weights(out)["softmax.weight"])
    assert cli_main(["export-original", str(out), str(tmp_path / "original")]) == 0
    assert (tmp_path / "original" / "softmax.hdf5").is_file()


def test_from_scratch_learns_context(tmp_path):
    """Without dropout and with bilm-tf's default clip norm (10; its test options clip at 1.0) the model goes far
    below the corpus' unigram perplexity, each sentence scored alone from a zero state."""
    out = tmp_path / "out"
    train("--train-file", CORPUS, "--vocab-file", VOCAB, "--options-file", TEST_OPTIONS, "--output-dir", out,
          "--max-steps", 400, "--dropout", 0, "--max_grad_norm", 10, *QUIET)
    assert perplexity(out, stateful=False) < 0.8 * UNIGRAM_PERPLEXITY


def test_continuing_the_converted_bilm_tf_checkpoint_lowers_its_perplexity(lm_folder, tmp_path, capsys):
    """bilm-tf's checkpoint (12 batches, TensorFlow's test perplexity 18.6958) trained on: domain adaptation."""
    assert perplexity(lm_folder) == pytest.approx(18.69580078125, rel=1e-5)
    out = tmp_path / "continued"
    train("--train-file", CORPUS, "--init-from", lm_folder, "--output-dir", out, "--max-steps", 60, *QUIET)
    assert perplexity(out) < 18.0
    # Its vocabulary stays: another one is refused, naming both files.
    other = tmp_path / "vocab.txt"
    other.write_text("<S>\n</S>\n<UNK>\nother\n", encoding="utf-8")
    assert cli_main(["train", "--train-file", str(CORPUS), "--init-from", str(lm_folder), "--vocab-file", str(other),
                     "--output-dir", str(tmp_path / "x"), "--max-steps", "1"]) == 2
    assert f"{other}: differs from {lm_folder / 'lm_vocab.txt'}" in capsys.readouterr().err


def test_a_bilm_without_softmax_gets_a_new_one(converted_fixture, tmp_path):
    """A release converted without its softmax continues training with a new softmax over --vocab-file."""
    out = tmp_path / "out"
    train("--train-file", CORPUS, "--init-from", converted_fixture, "--vocab-file", VOCAB, "--output-dir", out,
          "--max-steps", 3, *QUIET)
    trained, original = weights(out), weights(converted_fixture)
    assert trained["softmax.weight"].shape == (32, 16)
    layer = "elmo.encoder.layers.0.input_weight"
    assert not torch.equal(trained[layer], original[layer.removeprefix("elmo.")])  # the biLM was trained too


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    base = ["train", "--train-file", str(CORPUS), "--output-dir", str(tmp_path / "out")]
    cases = [
        ([*base, "--options-file", str(TEST_OPTIONS)], "needs --vocab-file"),
        ([*base, "--options-file", str(TEST_OPTIONS), "--vocab-file", str(VOCAB), "--no_such_option", "1"],
         "no_such_option"),
        ([*base, "--options-file", str(tmp_path / "missing.json"), "--vocab-file", str(VOCAB)],
         "options file not found"),
        ([*base, "--init-from", str(tmp_path / "missing")], "checkpoint folder not found"),
        (["train", "--train-file", str(tmp_path / "none.txt"), "--output-dir", str(tmp_path / "out"),
          "--options-file", str(TEST_OPTIONS), "--vocab-file", str(VOCAB)], "none.txt"),
        ([*base, "--options-file", str(TEST_OPTIONS), "--vocab-file", str(VOCAB), "--batch-size", "0"],
         "batch-size must be at least 1"),
    ]
    (tmp_path / "used" / "checkpoint-5").mkdir(parents=True)
    cases.append((["train", "--train-file", str(CORPUS), "--output-dir", str(tmp_path / "used"), "--options-file",
                   str(TEST_OPTIONS), "--vocab-file", str(VOCAB)], "already holds checkpoints"))
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hf-elmo train: error: ") and message in err, err
        assert "Traceback" not in err
    with pytest.raises(SystemExit):  # other commands still refuse options they do not know (argparse)
        cli_main(["build-vocab", str(CORPUS), "--output", str(tmp_path / "v.txt"), "--save_steps", "1"])


# ------------------------------------------------------------------------------------------- processes and kills
def command(*argv: str | Path) -> list[str]:
    return [sys.executable, "-m", "hf_elmo.cli", "train", *map(str, argv)]


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    return env


def test_resume_after_sigkill_gives_the_uninterrupted_run_bit_for_bit(tmp_path):
    """Killed (SIGKILL) after a checkpoint and run again with --resume, the training ends with exactly the weights
    of a run never interrupted: data position, LSTM state, optimizer and RNG all come back."""
    args = ["--train-file", CORPUS, "--vocab-file", VOCAB, "--options-file", TEST_OPTIONS, "--max-steps", 60,
            "--save_steps", 5, "--disable_tqdm", "true"]
    subprocess.run(command(*args, "--output-dir", tmp_path / "whole"), check=True, env=environment(),
                   capture_output=True)
    out = tmp_path / "killed"
    process = subprocess.Popen(command(*args, "--output-dir", out), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while last_complete_checkpoint(out) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = last_complete_checkpoint(out)
    assert killed_at is not None and not (out / "model.safetensors").exists()
    resumed = subprocess.run(command(*args, "--output-dir", out, "--resume"), env=environment(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, again = weights(tmp_path / "whole"), weights(out)
    assert whole.keys() == again.keys()
    assert [key for key in whole if not torch.equal(whole[key], again[key])] == []
    # --resume with nothing saved yet starts from the beginning and says so.
    fresh = subprocess.run(command(*args, "--output-dir", tmp_path / "fresh", "--resume", "--max-steps", 2),
                           env=environment(), capture_output=True, text=True)
    assert fresh.returncode == 0 and "no complete checkpoint" in fresh.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_as_one_with_both_halves_of_the_batch(tmp_path):
    """2 CPU processes (torchrun, gloo), 1 row each, average their gradients: without dropout (the only
    per-process randomness; both draw the same softmax candidates) the weights after 6 steps equal one process
    training 2 rows, up to float rounding of the gradient average."""
    args = ["--train-file", CORPUS, "--vocab-file", VOCAB, "--options-file", TEST_OPTIONS, "--max-steps", 6,
            "--dropout", 0, "--use_cpu", "true", *QUIET]
    one = subprocess.run(command(*args, "--batch-size", 2, "--output-dir", tmp_path / "one"), env=environment(),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), "-m", "hf_elmo.cli", "train"]
    two = subprocess.run([*torchrun, *map(str, args), "--batch-size", "1", "--output-dir", str(tmp_path / "two")],
                         env=environment(), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    single, pair = weights(tmp_path / "one"), weights(tmp_path / "two")
    start = weights_at_step_zero(tmp_path)
    for key in single:
        torch.testing.assert_close(pair[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    moved = [key for key in single if not torch.equal(single[key], start[key])]
    assert "softmax.weight" in moved and len(moved) > 20  # the comparison is between trained weights


def weights_at_step_zero(tmp_path: Path) -> dict[str, torch.Tensor]:
    """The same command's weights after 1 step with learning rate 0: the seeded initial weights."""
    out = tmp_path / "zero"
    train("--train-file", CORPUS, "--vocab-file", VOCAB, "--options-file", TEST_OPTIONS, "--max-steps", 1,
          "--learning-rate", 0, "--output-dir", out, *QUIET)
    return weights(out)


# ------------------------------------------------------------------------------------------------------ Chinese
CHINESE = [
    "我 喜欢 学习 中文", "他 喜欢 学习 英文", "我们 今天 去 北京", "他们 明天 去 上海", "我 喜欢 北京 的 天气",
    "她 今天 学习 中文", "我们 喜欢 上海 的 菜", "他 明天 去 北京 学习", "她们 今天 喜欢 学习", "我 明天 去 上海",
]


def test_chinese_trains_as_utf8_bytes_and_its_perplexity_falls(tmp_path):
    """Any UTF-8 text trains as in bilm-tf (characters are UTF-8 bytes): a small Chinese corpus' perplexity
    falls from the start of training to its end."""
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(CHINESE) + "\n", encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    assert cli_main(["build-vocab", str(corpus), "--output", str(vocab)]) == 0
    options = json.loads(TEST_OPTIONS.read_text())
    options["char_cnn"]["max_characters_per_token"] = 12  # two 3-byte characters plus the word markers
    options.pop("n_tokens_vocab")
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps(options))
    common = ["--train-file", corpus, "--vocab-file", vocab, "--options-file", options_file, "--dropout", 0,
              "--max_grad_norm", 10, *QUIET]
    train(*common, "--max-steps", 1, "--output-dir", tmp_path / "start")
    train(*common, "--max-steps", 300, "--output-dir", tmp_path / "end")
    start, end = perplexity(tmp_path / "start", corpus), perplexity(tmp_path / "end", corpus)
    words = len(vocab.read_text(encoding="utf-8").split())
    assert start > 0.7 * words and end < 0.5 * start, (start, end, words)
    assert math.isfinite(end)


def test_plain_trainer_trains_sentence_by_sentence_with_the_package_collator(lm_folder, tmp_path):
    """`ElmoForPreTraining` with a plain `transformers.Trainer`, `LMSentenceDataset` and `ElmoLMDataCollator`
    (each sentence from a zero state, full softmax): the per-sentence perplexity of the corpus falls."""
    from transformers import Trainer, TrainingArguments

    from hf_elmo.checkpoints.softmax import read_lm_vocabulary
    from hf_elmo.modeling_elmo import ElmoForPreTraining
    from hf_elmo.training.data import ElmoLMDataCollator, LMSentenceDataset

    before = perplexity(lm_folder, stateful=False)
    model = ElmoForPreTraining.from_pretrained(lm_folder)
    data = LMSentenceDataset([CORPUS], read_lm_vocabulary(lm_folder / "lm_vocab.txt"),
                             model.config.max_characters_per_token, shuffle=True, passes=None)
    args = TrainingArguments(tmp_path / "run", max_steps=40, per_device_train_batch_size=2, learning_rate=0.01,
                             report_to="none", disable_tqdm=True, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, data_collator=ElmoLMDataCollator()).train()
    model.save_pretrained(tmp_path / "trained")
    for name in ("lm_vocab.txt", "tokenizer_config.json"):
        (tmp_path / "trained" / name).write_bytes((lm_folder / name).read_bytes())
    assert perplexity(tmp_path / "trained", stateful=False) < 0.9 * before  # 19.01 -> 16.31
