"""
`hf-elmo export-original` / `export_original_checkpoint`: a checkpoint folder written back in bilm-tf's release layout.

References: bilm-tf's own test model (tests/fixtures/bilm-tf/model: its `options.json` and `lm_weights.hdf5`, the
layout of bilm-tf's `dump_weights`), bilm-tf's trained test LM (tests/fixtures/bilm-tf-lm: `dump_weights`' hdf5 and
the softmax TensorFlow returned, lm_ref.npz) and random checkpoints of several shapes in the official layout.
The export is converted again and compared with the checkpoint it came from, tensor by tensor and output by output.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import (
    FIXTURE_MODEL_DIR,
    FIXTURE_OPTIONS,
    FIXTURE_WEIGHTS,
    LM_FIXTURE,
    checkpoint_layers,
    fixture_options,
    options_json,
    tiny_config,
    write_random_checkpoint,
)
from hf_elmo.checkpoints import CheckpointError
from hf_elmo.checkpoints.bilm_tf import (
    config_from_options,
    datasets_from_state_dict,
    options_from_config,
    read_weights,
)
from hf_elmo.checkpoints.softmax import read_lm_vocabulary, read_softmax, write_softmax
from hf_elmo.cli import main as cli_main
from hf_elmo.conversion import convert_elmoformanylangs, convert_original_checkpoint, export_original_checkpoint
from hf_elmo.jobs.lm_job import ElmoLanguageModel
from hf_elmo.modeling_elmo import ElmoForTokenClassification, ElmoModel
from reference_bilm import ReferenceBiLM

TRAIN_VOCAB = Path(__file__).parent / "fixtures" / "bilm-tf" / "train" / "vocab.txt"
ELMOFORMANYLANGS = Path(__file__).parent / "fixtures" / "elmoformanylangs"
FORGET_BIAS_ROUNDING = 2.0**-24  # half the float32 spacing at 1.0: what storing B_f + 1 can lose of B_f


def hdf5_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an hdf5 file by its full name, as stored (dtype kept)."""
    with h5py.File(path, "r") as hdf5:
        names: list[str] = []
        hdf5.visit(names.append)
        return {name: hdf5[name][...] for name in names if isinstance(hdf5[name], h5py.Dataset)}


def assert_same_checkpoint(folder: Path, again: Path) -> None:
    """Every tensor bit for bit, the same config.json, and the same outputs of every layer."""
    ours, theirs = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    assert json.loads((folder / "config.json").read_text()) == json.loads((again / "config.json").read_text())
    assert torch.equal(checkpoint_layers(folder), checkpoint_layers(again))


def assert_datasets_are_the_originals(exported: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
    """
    Same names, shapes and dtypes; every value bit for bit, except each LSTM's forget-gate bias (TF's gate order
    i, j, f, o: the third quarter of `B`), which the converter stored as B_f + 1: the export is (B_f + 1) - 1.
    """
    assert exported.keys() == original.keys()
    for name, theirs in original.items():
        ours = exported[name]
        assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype), name
        if not name.endswith("/B"):
            assert np.array_equal(ours, theirs), name
            continue
        h = theirs.shape[0] // 4
        forget = slice(2 * h, 3 * h)
        others = np.ones(4 * h, bool)
        others[forget] = False
        assert np.array_equal(ours[others], theirs[others]), name
        assert np.array_equal(ours[forget], (theirs[forget] + np.float32(1)) - np.float32(1)), name
        assert np.abs(ours[forget] - theirs[forget]).max() <= FORGET_BIAS_ROUNDING, name


def export_and_convert_again(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Export `folder` into tmp_path/original, convert that back into tmp_path/again; both folders."""
    export = export_original_checkpoint(folder, tmp_path / "original")
    assert export.files == ("options.json", "weights.hdf5") and export.left_out == ()
    original = export.output_dir
    again = convert_original_checkpoint(original / "options.json", original / "weights.hdf5", tmp_path / "again")
    return original, again


# ----------------------------------------------------------------------------------------- bilm-tf's test model
def test_fixture_round_trip_is_bit_identical(converted_fixture, tmp_path):
    original, again = export_and_convert_again(converted_fixture, tmp_path)
    assert_same_checkpoint(converted_fixture, again)
    # The options are the fixture's, plus `bidirectional` (as bilm-tf's training writes them) and the training
    # dropout (`ElmoConfig.dropout`, bilm-tf's 0.1 when the source options did not say), which bilm-tf's
    # training reads without a default.
    assert json.loads((original / "options.json").read_text()) == {**fixture_options(), "bidirectional": True,
                                                                    "dropout": 0.1}


def test_exported_weights_are_the_fixture_datasets(converted_fixture, tmp_path):
    export = export_original_checkpoint(converted_fixture, tmp_path / "original")
    exported, fixture = hdf5_datasets(export.output_dir / "weights.hdf5"), hdf5_datasets(FIXTURE_WEIGHTS)
    assert_datasets_are_the_originals(exported, fixture)
    # The rounding is real: TensorFlow's forget biases have bits finer than float32 keeps next to 1.0.
    bias = "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/B"
    assert not np.array_equal(exported[bias][128:192], fixture[bias][128:192])


def test_export_read_by_an_independent_bilm_tf_reader_gives_tensorflows_outputs(converted_fixture, tmp_path):
    """`ReferenceBiLM` (NumPy, reads options.json + hdf5 as bilm-tf does; trusted by test_parity) on the exported
    files reproduces bilm-tf's own top layer (lm_embeddings_k.hdf5, batch 0: a zero state)."""
    original = export_original_checkpoint(converted_fixture, tmp_path / "original").output_dir
    reference = ReferenceBiLM(json.loads((original / "options.json").read_text()), str(original / "weights.hdf5"))
    sentences = json.loads((FIXTURE_MODEL_DIR / "lm_embeddings_sentences.json").read_text())
    for k in range(3):
        with h5py.File(FIXTURE_MODEL_DIR / f"lm_embeddings_{k}.hdf5", "r") as hdf5:
            forward, backward = hdf5["0"][...]
        top = reference.layers(sentences[k][0].split())[-1]
        np.testing.assert_allclose(top, np.concatenate([forward, backward], axis=-1), atol=1e-6)


def test_export_of_an_export_is_the_same_file(converted_fixture, tmp_path):
    """After the first rounding of the forget biases, exporting and converting is exact both ways."""
    original, again = export_and_convert_again(converted_fixture, tmp_path)
    second = export_original_checkpoint(again, tmp_path / "second").output_dir
    first_datasets, second_datasets = hdf5_datasets(original / "weights.hdf5"), hdf5_datasets(second / "weights.hdf5")
    assert first_datasets.keys() == second_datasets.keys()
    assert all(np.array_equal(first_datasets[name], second_datasets[name]) for name in first_datasets)
    assert (original / "options.json").read_bytes() == (second / "options.json").read_bytes()


def test_exported_weights_read_as_the_converted_state_dict(converted_fixture, tmp_path):
    """`read_weights` (the converter) of the export gives the checkpoint's tensors: the mapping's exact inverse."""
    original = export_original_checkpoint(converted_fixture, tmp_path / "original").output_dir
    config = config_from_options(json.loads((original / "options.json").read_text()))
    state = load_file(converted_fixture / "model.safetensors")
    read_back = read_weights(original / "weights.hdf5", config)
    assert all(torch.equal(tensor, state[name]) for name, tensor in read_back.items())


# ------------------------------------------------------------------------------------------ random checkpoints
SHAPES = {
    "skip-connections": dict(use_skip_connections=True),
    "no-highway-tanh": dict(num_highway_layers=0, char_activation="tanh", use_skip_connections=False),
    "one-highway-no-clips": dict(num_highway_layers=1, cell_clip=None, proj_clip=None),
    "10-characters-3-layers": dict(max_characters_per_token=10, num_hidden_layers=3, cell_clip=1.5),
    "one-layer-no-projection": dict(num_hidden_layers=1, char_filters=[[1, 8], [2, 8]], projection_dim=16),
    "odd-clip-one-clip": dict(cell_clip=None, proj_clip=2.75, lstm_dim=24, projection_dim=12),
}


@pytest.mark.parametrize("overrides", SHAPES.values(), ids=SHAPES.keys())
def test_random_checkpoints_round_trip(overrides, tmp_path):
    options = options_json(tiny_config(**overrides))
    options_path, weights_path = write_random_checkpoint(options, tmp_path / "release", seed=7)
    folder = convert_original_checkpoint(options_path, weights_path, tmp_path / "converted")
    original, again = export_and_convert_again(folder, tmp_path)
    assert_same_checkpoint(folder, again)
    assert_datasets_are_the_originals(hdf5_datasets(original / "weights.hdf5"), hdf5_datasets(weights_path))
    written = json.loads((original / "options.json").read_text())
    # Everything is the release's (a clip that is None is null: allennlp reads the key with [], bilm-tf with .get).
    assert written == {**options, "bidirectional": True, "dropout": 0.1}  # the config's default dropout
    if "projection_dim" in overrides and overrides.get("char_filters"):
        assert "CNN_proj/W_proj" not in hdf5_datasets(original / "weights.hdf5")
    # Read as bilm-tf reads a release, the export computes what the original release computes.
    words = ["Colorless", "green", "ideas", "sleep", "furiously", "."]
    exported_layers = ReferenceBiLM(written, str(original / "weights.hdf5")).layers(words)
    np.testing.assert_allclose(exported_layers, ReferenceBiLM(options, str(weights_path)).layers(words), atol=1e-6)


def test_trained_checkpoint_round_trips_up_to_the_forget_bias_rounding(tmp_path):
    """Weights that never were bilm-tf's: everything exact, except forget-gate biases below 0.5, whose bits
    finer than float32's step near 1 do not survive the layout's `b - 1` (at most 2**-24)."""
    torch.manual_seed(0)
    model = ElmoModel(tiny_config(num_hidden_layers=3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        model.char_encoder.char_embedding.weight[0] = 0  # the padding row, as training keeps it
        model.scalar_mix.scalar_parameters.zero_()
        model.scalar_mix.gamma.fill_(1.0)
    model.save_pretrained(tmp_path / "trained")
    original, again = export_and_convert_again(tmp_path / "trained", tmp_path)
    ours, theirs = load_file(tmp_path / "trained" / "model.safetensors"), load_file(again / "model.safetensors")
    assert ours.keys() == theirs.keys()
    h = tiny_config().lstm_dim
    for name, tensor in ours.items():
        if not name.endswith(".bias") or not name.startswith("encoder.layers."):
            assert torch.equal(tensor, theirs[name]), name
            continue
        forget = slice(h, 2 * h)  # PyTorch's gate order: i, f, g, o
        others = torch.ones(4 * h, dtype=torch.bool)
        others[forget] = False
        assert torch.equal(tensor[:, others], theirs[name][:, others]), name
        difference = (tensor[:, forget] - theirs[name][:, forget]).abs()
        assert difference.max() <= FORGET_BIAS_ROUNDING, name
        assert bool((difference[tensor[:, forget] >= 0.5] == 0).all()), name  # Sterbenz: b - 1 is exact there
    assert float((ours["encoder.layers.0.bias"] - theirs["encoder.layers.0.bias"]).abs().max()) > 0  # not vacuous
    np.testing.assert_allclose(checkpoint_layers(again).numpy(), checkpoint_layers(tmp_path / "trained").numpy(),
                               atol=1e-6)


# ------------------------------------------------------------------------------------------- a language model
@pytest.fixture(scope="module")
def lm_folder(lm_ref, tmp_path_factory) -> Path:
    """bilm-tf's trained test LM converted from dump_weights' hdf5, TensorFlow's softmax and its vocabulary."""
    softmax = write_softmax(tmp_path_factory.mktemp("softmax") / "softmax.hdf5", lm_ref["softmax_W"],
                            lm_ref["softmax_b"])
    return convert_original_checkpoint(LM_FIXTURE / "options.json", LM_FIXTURE / "weights.hdf5",
                                       tmp_path_factory.mktemp("lm") / "lm", vocab_file=TRAIN_VOCAB,
                                       softmax_weight_file=softmax)


def test_language_model_round_trips_with_softmax_and_vocabulary(lm_folder, lm_ref, tmp_path, capsys):
    assert cli_main(["export-original", str(lm_folder), str(tmp_path / "original")]) == 0
    original = tmp_path / "original"
    assert capsys.readouterr().out == f"wrote {original} (options.json, weights.hdf5, softmax.hdf5, vocab.txt)\n"
    assert sorted(p.name for p in original.iterdir()) == ["options.json", "softmax.hdf5", "vocab.txt", "weights.hdf5"]
    weight, bias = read_softmax(original / "softmax.hdf5")
    assert np.array_equal(weight, lm_ref["softmax_W"]) and np.array_equal(bias, lm_ref["softmax_b"])
    assert read_lm_vocabulary(original / "vocab.txt").words == read_lm_vocabulary(TRAIN_VOCAB).words
    assert_datasets_are_the_originals(hdf5_datasets(original / "weights.hdf5"),
                                      hdf5_datasets(LM_FIXTURE / "weights.hdf5"))
    options = json.loads((original / "options.json").read_text())
    # The training options had no clips and no skip-connection key (bilm-tf's defaults: none, off) and 261
    # characters; the export is the inference options (262, every key allennlp reads) with the softmax's size.
    assert options["lstm"] == {"dim": 16, "projection_dim": 8, "n_layers": 2, "cell_clip": None, "proj_clip": None,
                               "use_skip_connections": False}
    assert (options["n_tokens_vocab"], options["char_cnn"]["n_characters"]) == (32, 262)

    again = tmp_path / "again"
    code = cli_main(["convert", "--options-file", str(original / "options.json"), "--weight-file",
                     str(original / "weights.hdf5"), "--softmax-weight-file", str(original / "softmax.hdf5"),
                     "--vocab-file", str(original / "vocab.txt"), "--output-dir", str(again)])
    assert code == 0
    assert_same_checkpoint(lm_folder, again)
    assert (again / "lm_vocab.txt").read_bytes() == (lm_folder / "lm_vocab.txt").read_bytes()
    sentences = [str(s).split() for s in lm_ref["sentences"]]
    before, after = (ElmoLanguageModel.from_pretrained(f).score_sentences(sentences, 4) for f in (lm_folder, again))
    for first, second in zip(before, after):
        assert np.array_equal(first.forward_nll, second.forward_nll)
        assert np.array_equal(first.backward_nll, second.backward_nll)
    # and the numbers are still bilm-tf's own
    np.testing.assert_allclose(after[0].forward_nll, lm_ref["s0_nll_fwd"], rtol=1e-5)


# ---------------------------------------------------------------------------------- what cannot be exported
@pytest.mark.parametrize("release, language", [("model", "zh"), ("no_words", "en")])
def test_elmoformanylangs_models_are_refused(release, language, tmp_path, capsys):
    """Their own character table (and word embedding) have no place in bilm-tf's layout: exported, bilm-tf would
    read their characters as UTF-8 bytes and compute garbage."""
    folder = convert_elmoformanylangs(ELMOFORMANYLANGS / release, tmp_path / "efml", language=language)
    capsys.readouterr()  # the conversion's progress bar
    assert cli_main(["export-original", str(folder), str(tmp_path / "original")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-elmo export-original: error: {folder}: cannot be written in bilm-tf's layout: ")
    assert "own character table (an ELMoForManyLangs model)" in err and err.count("\n") == 1
    assert ("word embedding" in err) == (release == "model")
    assert not (tmp_path / "original").exists()


def test_configs_that_would_not_read_back_are_refused():
    with pytest.raises(CheckpointError, match=r"options\.json would read back with different num_characters "
                                              r"\(262, not 261\)"):
        options_from_config(tiny_config(num_characters=261), "model")


def test_nonzero_padding_character_row_is_refused():
    config = tiny_config()
    state = ElmoModel(config).state_dict()
    state["char_encoder.char_embedding.weight"][0, 1] = 0.5
    with pytest.raises(CheckpointError, match="model: row 0 of the character embedding"):
        datasets_from_state_dict(state, config, "model")


def test_task_head_trained_scalar_mix_and_cached_words_are_named_as_left_out(converted_fixture, tmp_path, capsys):
    model = ElmoForTokenClassification.from_pretrained(converted_fixture, num_labels=3)
    with torch.no_grad():
        model.elmo.scalar_mix.scalar_parameters.copy_(torch.tensor([0.5, -1.0, 2.0]))
    model.elmo.cache_words(["cat", "mat"])
    model.save_pretrained(tmp_path / "trained")
    capsys.readouterr()  # save_pretrained's progress bar
    assert cli_main(["export-original", str(tmp_path / "trained"), str(tmp_path / "original")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-elmo")]
    prefix = "hf-elmo export-original: note: not in bilm-tf's layout, not exported: "
    assert notes == [
        f"{prefix}the task head (ElmoForTokenClassification)",
        f"{prefix}the trained scalar mix (allennlp's Elmo trains its own)",
        f"{prefix}2 cached word vectors (bilm-tf and allennlp compute them from the characters)",
    ]
    # The biLM itself is exported whole.
    assert_datasets_are_the_originals(hdf5_datasets(tmp_path / "original" / "weights.hdf5"),
                                      hdf5_datasets(FIXTURE_WEIGHTS))


# ------------------------------------------------------------------------------------ arguments and the folder
def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli_main(["export-original", *map(str, args)])
    return code, capsys.readouterr().err


def test_not_a_checkpoint_folder(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert run_cli([missing, tmp_path / "out"], capsys) == (
        2, f"hf-elmo export-original: error: {missing}: checkpoint folder not found\n")
    (tmp_path / "empty").mkdir()
    assert run_cli([tmp_path / "empty", tmp_path / "out"], capsys) == (
        2, f"hf-elmo export-original: error: {tmp_path / 'empty'}: checkpoint folder not found (no config.json in "
           f"this folder)\n")
    assert not (tmp_path / "out").exists()


def test_output_folder_with_other_files_is_not_replaced(converted_fixture, tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "options.json").write_text("{}")
    code, err = run_cli([converted_fixture, target], capsys)
    assert (code, err) == (2, f"hf-elmo export-original: error: {target}: not replaced: the folder holds files an "
                              f"export does not write (notes.txt); choose a new or empty folder\n")
    assert (target / "notes.txt").read_text() == "keep me" and (target / "options.json").read_text() == "{}"
    # The checkpoint folder itself is never a target.
    code, err = run_cli([converted_fixture, converted_fixture], capsys)
    assert code == 2 and "not replaced: the folder holds files an export does not write (1_Pooling, README.md," in err
    assert (converted_fixture / "model.safetensors").is_file()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run_cli([converted_fixture, a_file], capsys) == (
        2, f"hf-elmo export-original: error: {a_file}: exists and is not a folder\n")


def test_previous_export_is_replaced_and_a_failed_export_leaves_it(lm_folder, converted_fixture, tmp_path, capsys,
                                                                     monkeypatch):
    target = tmp_path / "original"
    assert run_cli([lm_folder, target], capsys) == (0, "")
    lm_files = {p.name: p.read_bytes() for p in target.iterdir()}
    # A crash while writing the weights: the previous export stays, whole, and nothing is left beside it.
    import hf_elmo.checkpoints.bilm_tf as bilm_tf

    def crash(path, arrays):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(bilm_tf, "write_weights", crash)
    code, err = run_cli([converted_fixture, target], capsys)
    assert code == 2 and err.startswith(f"hf-elmo export-original: error: {target}: cannot write the bilm-tf "
                                        f"checkpoint (No space left on device: {target / 'weights.hdf5'})")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == lm_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["original"]
    monkeypatch.undo()
    # A new export replaces the previous one (its softmax and vocabulary go with it).
    assert run_cli([converted_fixture, target], capsys) == (0, "")
    assert sorted(p.name for p in target.iterdir()) == ["options.json", "weights.hdf5"]
    assert json.loads((target / "options.json").read_text()) == {**fixture_options(), "bidirectional": True,
                                                                  "dropout": 0.1}
    assert FIXTURE_OPTIONS.is_file()
