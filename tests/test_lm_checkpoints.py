"""
bilm-tf training checkpoints, the released softmax hdf5 and bilm-tf word vocabularies.

References: tests/fixtures/bilm-tf-lm/ (bilm-tf's own training checkpoint, `dump_weights`' hdf5 of it, and
`lm_ref.npz` holding every checkpoint variable as TensorFlow returned it) and tests/fixtures/bilm-tf/train/vocab.txt
(the vocabulary it was trained with).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hf_elmo.checkpoints import CheckpointError
from hf_elmo.checkpoints.bilm_tf import config_from_options, read_weights
from hf_elmo.checkpoints.bilm_tf_training import (
    bilm_state_dict,
    find_checkpoint_prefix,
    hdf5_dataset_name,
    read_training_checkpoint,
)
from hf_elmo.checkpoints.softmax import (
    LMVocabulary,
    read_lm_vocabulary,
    read_softmax,
    write_lm_vocabulary,
    write_softmax,
)

LM_FIXTURE = Path(__file__).parent / "fixtures" / "bilm-tf-lm"
CKPT_DIR = LM_FIXTURE / "ckpt"
CKPT_PREFIX = CKPT_DIR / "model.ckpt-12"
TRAIN_VOCAB = Path(__file__).parent / "fixtures" / "bilm-tf" / "train" / "vocab.txt"


@pytest.fixture(scope="module")
def training_checkpoint():
    pytest.importorskip("tensorflow", reason='reading TF training checkpoints needs pip install "hf-elmo[tf]"')
    return read_training_checkpoint(CKPT_DIR)


def fixture_config():
    """The fixture's training options, with the inference keys bilm-tf training options lack (its defaults)."""
    options = json.loads((LM_FIXTURE / "options.json").read_text())
    options["lstm"].update(cell_clip=None, proj_clip=None, use_skip_connections=False)
    return config_from_options(options)


def dump_weights_datasets() -> dict[str, np.ndarray]:
    with h5py.File(LM_FIXTURE / "weights.hdf5", "r") as hdf5:
        names: list[str] = []
        hdf5.visit(names.append)
        return {name: hdf5[name][...] for name in names if isinstance(hdf5[name], h5py.Dataset)}


# --- training checkpoints (TensorFlow's reader) ---------------------------------------------------------------


def test_training_checkpoint_matches_tensorflow_variables(training_checkpoint, lm_ref):
    """Every array read equals the variable TensorFlow returned (lm_ref.npz `ckpt/<name>`), bit for bit."""
    tf_names = [key[len("ckpt/"):] for key in lm_ref if key.startswith("ckpt/")]
    bilm_names = {hdf5_dataset_name(name): name for name in tf_names if hdf5_dataset_name(name) is not None}
    assert set(training_checkpoint.bilm) == set(bilm_names)
    for dataset, tf_name in bilm_names.items():
        np.testing.assert_array_equal(training_checkpoint.bilm[dataset], lm_ref[f"ckpt/{tf_name}"], err_msg=dataset)
    np.testing.assert_array_equal(training_checkpoint.softmax_weight, lm_ref["ckpt/lm/softmax/W"])
    np.testing.assert_array_equal(training_checkpoint.softmax_bias, lm_ref["ckpt/lm/softmax/b"])
    np.testing.assert_array_equal(training_checkpoint.softmax_weight, lm_ref["softmax_W"])
    assert training_checkpoint.softmax_weight.shape == (32, 8)
    # Left out: one Adagrad slot per trained variable (29 biLM + 2 softmax), the counters and the softmax.
    assert sum(name.endswith("/Adagrad") for name in tf_names) == 31
    left_out = {name for name in tf_names if not name.endswith("/Adagrad")} - set(bilm_names.values())
    assert left_out == {"global_step", "train_perplexity", "lm/softmax/W", "lm/softmax/b"}


def test_training_checkpoint_equals_dump_weights(training_checkpoint):
    """The biLM arrays carry exactly the dataset names and values bilm-tf's own `dump_weights` wrote."""
    datasets = dump_weights_datasets()
    assert set(training_checkpoint.bilm) == set(datasets)
    assert len(datasets) == 29
    for name, value in datasets.items():
        assert training_checkpoint.bilm[name].dtype == np.float32
        np.testing.assert_array_equal(training_checkpoint.bilm[name], value, err_msg=name)


def test_training_checkpoint_state_dict_equals_hdf5_state_dict(training_checkpoint):
    config = fixture_config()
    from_checkpoint = bilm_state_dict(training_checkpoint, config)
    from_hdf5 = read_weights(LM_FIXTURE / "weights.hdf5", config)
    assert from_checkpoint.keys() == from_hdf5.keys()
    for name, tensor in from_hdf5.items():
        assert torch.equal(from_checkpoint[name], tensor), name


@pytest.mark.parametrize(
    "variable, dataset",
    [
        ("lm/RNN_1/rnn/multi_rnn_cell/cell_0/lstm_cell/projection/kernel", "RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0"),
        ("lm/RNN_0/rnn/multi_rnn_cell/cell_1/lstm_cell/bias", "RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B"),
        # The older TensorFlow names dump_weights' renaming recreates pass unchanged.
        ("lm/RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/W_0", "RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/W_0"),
        ("lm/CNN_high_0/W_carry", "CNN_high_0/W_carry"),
        ("lm/char_embed", "char_embed"),
        ("lm/char_embed/Adagrad", None),
        ("lm/softmax/b", None),
        ("global_step", None),
    ],
)
def test_variable_names_follow_dump_weights(variable, dataset):
    assert hdf5_dataset_name(variable) == dataset


@pytest.mark.parametrize(
    "given", [CKPT_DIR, CKPT_PREFIX, CKPT_DIR / "model.ckpt-12.index", CKPT_DIR / "model.ckpt-12.data-00000-of-00001"]
)
def test_checkpoint_prefix_from_folder_prefix_or_file(given):
    assert find_checkpoint_prefix(given) == CKPT_PREFIX


def test_moved_checkpoint_folder_is_found_by_name(tmp_path):
    """A `checkpoint` file written on the training machine names an absolute path that no longer exists."""
    moved = tmp_path / "moved"
    shutil.copytree(CKPT_DIR, moved)
    (moved / "checkpoint").write_text('model_checkpoint_path: "/data/run7/ckpt/model.ckpt-12"\n')
    assert find_checkpoint_prefix(moved) == moved / "model.ckpt-12"


def test_bad_checkpoint_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"no TensorFlow `checkpoint` file in this folder"):
        find_checkpoint_prefix(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.ckpt-7\.index"):
        find_checkpoint_prefix(CKPT_DIR / "model.ckpt-7")
    folder = tmp_path / "stale"
    shutil.copytree(CKPT_DIR, folder)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-99"\n')
    with pytest.raises(CheckpointError, match=r"checkpoint: names checkpoint 'model\.ckpt-99'"):
        find_checkpoint_prefix(folder)
    (folder / "checkpoint").write_text("all_model_checkpoint_paths: nothing\n")
    with pytest.raises(CheckpointError, match=r"checkpoint: no `model_checkpoint_path` line"):
        find_checkpoint_prefix(folder)


def test_damaged_checkpoint_is_a_one_line_error(tmp_path):
    pytest.importorskip("tensorflow", reason='reading TF training checkpoints needs pip install "hf-elmo[tf]"')
    damaged = tmp_path / "damaged"
    shutil.copytree(CKPT_DIR, damaged)
    data = damaged / "model.ckpt-12.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.ckpt-12: TensorFlow cannot read this checkpoint"):
        read_training_checkpoint(damaged)


def test_checkpoint_without_tensorflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(CheckpointError, match=r'model\.ckpt-12: .*pip install "hf-elmo\[tf\]"'):
        read_training_checkpoint(CKPT_DIR)


def test_checkpoint_state_dict_checks_shapes_against_options(training_checkpoint):
    options = json.loads((LM_FIXTURE / "options.json").read_text())
    options["lstm"].update(cell_clip=None, proj_clip=None, use_skip_connections=False, dim=32)
    with pytest.raises(CheckpointError, match=r"model\.ckpt-12: variable for 'RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0'"
                       r" has shape \(16, 64\), expected \(16, 128\)"):
        bilm_state_dict(training_checkpoint, config_from_options(options))


# --- softmax hdf5 and vocabulary --------------------------------------------------------------------------------


def test_softmax_file_round_trip(tmp_path, lm_ref):
    path = write_softmax(tmp_path / "softmax.hdf5", lm_ref["softmax_W"], lm_ref["softmax_b"])
    with h5py.File(path, "r") as hdf5:  # the released layout: group `softmax`, datasets `W` and `b`
        assert list(hdf5) == ["softmax"] and sorted(hdf5["softmax"]) == ["W", "b"]
        assert hdf5["softmax/W"].shape == (32, 8) and hdf5["softmax/b"].shape == (32,)
    weight, bias = read_softmax(path, projection_dim=8)
    np.testing.assert_array_equal(weight, lm_ref["softmax_W"])
    np.testing.assert_array_equal(bias, lm_ref["softmax_b"])
    assert [p.name for p in tmp_path.iterdir()] == ["softmax.hdf5"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not the temporary file's private 0600


def test_bad_softmax_files_are_named(tmp_path, lm_ref):
    with pytest.raises(CheckpointError, match=r"missing\.hdf5: softmax weight file not found"):
        read_softmax(tmp_path / "missing.hdf5")
    (tmp_path / "text.hdf5").write_text("W b")
    with pytest.raises(CheckpointError, match=r"text\.hdf5: not an HDF5 file"):
        read_softmax(tmp_path / "text.hdf5")
    with h5py.File(tmp_path / "no_bias.hdf5", "w") as hdf5:
        hdf5.create_dataset("softmax/W", data=lm_ref["softmax_W"])
    with pytest.raises(CheckpointError, match=r"no_bias\.hdf5: missing dataset 'softmax/b'"):
        read_softmax(tmp_path / "no_bias.hdf5")
    with h5py.File(tmp_path / "short_bias.hdf5", "w") as hdf5:
        hdf5.create_dataset("softmax/W", data=lm_ref["softmax_W"])
        hdf5.create_dataset("softmax/b", data=lm_ref["softmax_b"][:31])
    with pytest.raises(CheckpointError, match=r"short_bias\.hdf5: softmax bias has shape \(31,\), expected \(32,\)"):
        read_softmax(tmp_path / "short_bias.hdf5")
    write_softmax(tmp_path / "ok.hdf5", lm_ref["softmax_W"], lm_ref["softmax_b"])
    with pytest.raises(CheckpointError, match=r"ok\.hdf5: .* expected \(n_vocab, 16\): .*projection_dim"):
        read_softmax(tmp_path / "ok.hdf5", projection_dim=16)


def test_vocabulary_matches_the_training_vocabulary(lm_ref):
    vocabulary = read_lm_vocabulary(TRAIN_VOCAB, size=32)
    assert list(vocabulary.words) == list(lm_ref["vocab"])
    assert (vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    # The reference's targets: out-of-vocabulary words are <UNK>, the forward stream ends with </S>.
    for k, sentence in enumerate(lm_ref["sentences"]):
        words = str(sentence).split()
        assert vocabulary.ids(words) + [vocabulary.eos_id] == lm_ref[f"s{k}_targets_fwd"].tolist()
        assert vocabulary.ids(words[::-1]) + [vocabulary.bos_id] == lm_ref[f"s{k}_targets_bwd"].tolist()


def test_vocabulary_round_trip_and_lm_1b_marker(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("</S>\n<S>\n<UNK>\nthe\n!!!MAXTERMID\n,\n")
    vocabulary = read_lm_vocabulary(path, size=5)  # the marker line gets no id, as in bilm-tf / lm_1b
    assert vocabulary.words == ("</S>", "<S>", "<UNK>", "the", ",")
    assert (vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (1, 0, 2)
    assert vocabulary.ids(["the", "cat", ","]) == [3, 2, 4]
    written = write_lm_vocabulary(tmp_path / "copy.txt", vocabulary)
    assert read_lm_vocabulary(written) == vocabulary
    assert written.read_text() == "</S>\n<S>\n<UNK>\nthe\n,\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("<S>\n</S>\nthe\n<UNK>\n", r"vocab\.txt: line 3 is 'the'; a bilm-tf vocabulary starts with the three lines "
                                    r"<S>, </S>, <UNK>"),
        ("the\n<S>\n</S>\n<UNK>\n", r"vocab\.txt: line 1 is 'the'"),
        ("<S>\n<S>\n</S>\n<UNK>\n", r"vocab\.txt: line 2 is '<S>'"),
        ("<S>\n</S>\n", r"vocab\.txt: only 2 words"),
        ("<S>\n</S>\n<UNK>\nthe\n", r"vocab\.txt: 4 words, but the softmax has 5 rows"),
    ],
)
def test_bad_vocabularies_are_named_with_their_line(tmp_path, text, message):
    path = tmp_path / "vocab.txt"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        read_lm_vocabulary(path, size=5)


def test_vocabulary_not_utf8_or_missing(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"<S>\n</S>\n<UNK>\nthe\ncaf\xe9\n")
    with pytest.raises(CheckpointError, match=r"vocab\.txt: line 5 is not UTF-8"):
        read_lm_vocabulary(path)
    with pytest.raises(CheckpointError, match=r"nothing\.txt: vocabulary file not found"):
        read_lm_vocabulary(tmp_path / "nothing.txt")


def test_vocabulary_words_map_to_their_rows():
    vocabulary = LMVocabulary.from_words(["<S>", "</S>", "<UNK>", "a", "b"])
    assert vocabulary.ids(["b", "a", "zzz", "</S>"]) == [4, 3, 2, 1]
    assert len(vocabulary) == 5
