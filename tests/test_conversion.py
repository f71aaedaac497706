"""Conversion of original checkpoints: official shapes, training options, bad input, atomic output, cards, CLI."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from helpers import (
    FIXTURE_OPTIONS, FIXTURE_VOCAB, FIXTURE_WEIGHTS, checkpoint_layers, fixture_options, write_random_checkpoint,
)
from hf_elmo.cli import main as cli_main
from hf_elmo.conversion import convert_original_checkpoint
from hf_elmo.checkpoints.bilm_tf import CheckpointError, config_from_options, official_options, read_weights
from hf_elmo.tokenization_elmo import word_to_char_ids

REPO = Path(__file__).resolve().parents[1]
# A checkpoint trained by bilm-tf with the options of its own tests/test_training.py, and bilm-tf's LM numbers.
LM_FIXTURE = Path(__file__).parent / "fixtures" / "bilm-tf-lm"
TEXT = ["The cat sat on the mat .".split(), "Colorless green ideas sleep furiously".split()]
# Parameters without the scalar mix (ELMO_FORMAT.md: Small 13.6M, Medium 28.0M, Original 93.6M).
OFFICIAL_PARAMETERS = {"small": 13_593_312, "medium": 28_027_744, "original": 93_600_864}


def official_round_trip(name: str, tmp_path: Path) -> None:
    options_path, weights_path = write_random_checkpoint(official_options(name), tmp_path / "src", seed=0, scale=0.05)
    folder = convert_original_checkpoint(options_path, weights_path, tmp_path / name)
    model = AutoModel.from_pretrained(folder)
    config = model.config
    n_mix = config.num_hidden_layers + 2
    assert sum(p.numel() for p in model.parameters()) - n_mix == OFFICIAL_PARAMETERS[name]
    assert config.output_dim == 2 * official_options(name)["lstm"]["projection_dim"]
    # hdf5 -> safetensors -> reload gives exactly the weights read from the hdf5
    state = read_weights(weights_path, config_from_options(official_options(name)))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    first, second = checkpoint_layers(folder), checkpoint_layers(folder)
    assert first.shape == (3, 2, 7, config.output_dim) and torch.equal(first, second)
    assert (folder / "README.md").read_text().count("elmo_2x") > 0  # the official card was chosen


@pytest.mark.parametrize("name", ["small", "medium", "original"])
def test_official_sizes_round_trip(tmp_path, name):
    official_round_trip(name, tmp_path)


def test_training_options_convert_like_release_options(tmp_path):
    training = fixture_options()
    training["char_cnn"]["n_characters"] = 261
    training.update(bidirectional=True, dropout=0.1, n_tokens_vocab=100, unroll_steps=20, batch_size=128,
                    n_epochs=10, all_clip_norm_val=10.0, n_negative_samples_batch=8192)
    (tmp_path / "train_options.json").write_text(json.dumps(training))
    from_training = convert_original_checkpoint(tmp_path / "train_options.json", FIXTURE_WEIGHTS, tmp_path / "a")
    from_release = convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, tmp_path / "b")
    assert AutoModel.from_pretrained(from_training).config.num_characters == 262
    assert torch.equal(checkpoint_layers(from_training), checkpoint_layers(from_release))


def corrupt(tmp_path: Path, edit) -> Path:
    """A copy of the fixture weights with `edit(h5py.File)` applied."""
    path = tmp_path / "weights.hdf5"
    path.write_bytes(FIXTURE_WEIGHTS.read_bytes())
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _wrong_shape(f):
    del f["CNN_proj/W_proj"]
    f["CNN_proj/W_proj"] = np.zeros((124, 17), np.float32)


@pytest.mark.parametrize(
    "make_options, make_weights, message",
    [
        (lambda t: t / "nope.json", lambda t: FIXTURE_WEIGHTS, r"nope\.json: options file not found"),
        (lambda t: FIXTURE_OPTIONS, lambda t: t / "nope.hdf5", r"nope\.hdf5: weight file not found"),
        (lambda t: FIXTURE_OPTIONS, lambda t: FIXTURE_OPTIONS, r"options\.json: not an HDF5 file"),
        (lambda t: FIXTURE_OPTIONS, lambda t: corrupt(t, lambda f: f.__delitem__("RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/B")),
         r"weights\.hdf5: missing dataset 'RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/B' \(expected shape \(256,\)\)"),
        (lambda t: FIXTURE_OPTIONS, lambda t: corrupt(t, _wrong_shape),
         r"weights\.hdf5: dataset 'CNN_proj/W_proj' has shape \(124, 17\), expected \(124, 16\)"),
    ],
)
def test_bad_files_give_one_clear_error_and_leave_the_output_alone(tmp_path, make_options, make_weights, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old checkpoint")
    with pytest.raises(CheckpointError, match=message):
        convert_original_checkpoint(make_options(tmp_path), make_weights(tmp_path), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda o: o["lstm"].pop("dim"), "missing key lstm.dim"),
        (lambda o: o["char_cnn"].pop("activation"), "missing key char_cnn.activation"),
        (lambda o: o["char_cnn"].pop("max_characters_per_token"), "missing key char_cnn.max_characters_per_token"),
        (lambda o: o["lstm"].update(n_layers=None), r"invalid options"),
        (lambda o: o.pop("char_cnn"), "missing section 'char_cnn'"),
        (lambda o: o["lstm"].update(dim=65), r"'RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0' has shape \(32, 256\), "
                                             r"expected \(32, 260\)"),
        (lambda o: o["char_cnn"].update(n_highway=3), r"missing dataset 'CNN_high_2/W_carry'"),
        (lambda o: o["char_cnn"].update(activation="gelu"), "char_activation"),
    ],
)
def test_bad_options(tmp_path, edit, message):
    options = fixture_options()
    edit(options)
    (tmp_path / "options.json").write_text(json.dumps(options))
    with pytest.raises(CheckpointError, match=message):
        convert_original_checkpoint(tmp_path / "options.json", FIXTURE_WEIGHTS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bilm_tf_training_options_without_clips_or_skip_connections_match_bilm_tf(tmp_path):
    """
    bilm-tf's own training writes options without `lstm.cell_clip`, `lstm.proj_clip` and
    `lstm.use_skip_connections` (it reads them with `.get`: no clipping, no skip connections). Converted, the model
    gives bilm-tf's graph's numbers: the char-CNN token vectors and the top LSTM outputs that feed its softmax,
    each sentence from a zero state.
    """
    options = json.loads((LM_FIXTURE / "options.json").read_text())
    assert not {"cell_clip", "proj_clip", "use_skip_connections"} & options["lstm"].keys()
    folder = convert_original_checkpoint(LM_FIXTURE / "options.json", LM_FIXTURE / "weights.hdf5", tmp_path / "lm")
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    assert (config.cell_clip, config.proj_clip, config.use_skip_connections) == (None, None, False)
    assert (config.num_highway_layers, config.char_activation, config.max_characters_per_token) == (1, "tanh", 10)
    reference = np.load(LM_FIXTURE / "lm_ref.npz")
    p = config.projection_dim
    for k, sentence in enumerate(reference["sentences"]):
        words = str(sentence).split()
        n = len(words)
        # Step i of the forward LSTM reads token i of `<S> w1 .. wn`, of the backward one token i of `</S> wn .. w1`.
        assert reference[f"s{k}_tokens_fwd"].tolist() == ["<S>", *words]
        assert reference[f"s{k}_tokens_bwd"].tolist() == ["</S>", *words[::-1]]
        forward, backward = np.arange(1, n + 1), np.arange(n, 0, -1)  # the steps of words 1..n
        enc = tokenizer([words], is_split_into_words=True, return_tensors="pt")
        # bilm-tf's training char ids are ours without the +1 shift (words longer than 8 bytes cut alike).
        assert np.array_equal(enc["input_ids"][0].numpy() - 1, reference[f"s{k}_chars_fwd"][forward])
        assert np.array_equal(np.array(word_to_char_ids("<S>", 10)) - 1, reference[f"s{k}_chars_fwd"][0])
        with torch.inference_mode():
            hidden = [layer[0].numpy() for layer in model(**enc, output_hidden_states=True).hidden_states]
        # Within float32 rounding (token vectors up to 1.6 differ by up to 1.1e-6; bilm-tf's own tests allow
        # rtol 1e-5); the top layer is within 2.4e-7.
        close = {"rtol": 1e-6, "atol": 1e-6}
        np.testing.assert_allclose(hidden[0][:, :p], reference[f"s{k}_tokemb_fwd"][forward], **close)
        np.testing.assert_allclose(hidden[0][:, p:], reference[f"s{k}_tokemb_bwd"][backward], **close)
        np.testing.assert_allclose(hidden[-1][:, :p], reference[f"s{k}_h_top_fwd"][forward], rtol=0, atol=1e-6)
        np.testing.assert_allclose(hidden[-1][:, p:], reference[f"s{k}_h_top_bwd"][backward], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "section, key, attribute, default, null_allowed",
    [
        ("lstm", "cell_clip", "cell_clip", None, True),
        ("lstm", "proj_clip", "proj_clip", None, True),
        ("lstm", "use_skip_connections", "use_skip_connections", False, True),
        ("lstm", "n_layers", "num_hidden_layers", 1, False),  # bilm-tf: .get("n_layers", 1)
        ("char_cnn", "n_highway", "num_highway_layers", 0, True),  # None or absent: no highway layers
    ],
)
def test_options_bilm_tf_reads_with_get_take_its_defaults(section, key, attribute, default, null_allowed):
    options = fixture_options()
    del options[section][key]
    assert getattr(config_from_options(options), attribute) == default
    options[section][key] = None
    if null_allowed:
        assert getattr(config_from_options(options), attribute) == default
    else:
        with pytest.raises(CheckpointError, match="invalid options"):
            config_from_options(options)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_files_get_the_permissions_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        out = convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, tmp_path / "out")
    finally:
        os.umask(previous)
    files = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    folders = [stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")] if p.is_dir()]
    assert "model.safetensors" in files and set(files.values()) == {0o666 & ~umask}, files
    assert len(folders) > 1 and set(folders) == {0o777 & ~umask}  # the folder and 1_Pooling/


@pytest.mark.parametrize("where", ["under /proc", "under a file"])
def test_an_output_folder_that_cannot_be_created_is_named(tmp_path, capsys, where):
    if where == "under /proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc on this system")
        out = Path("/proc/elmo-out")
    else:
        (tmp_path / "file.txt").write_text("not a folder")
        out = tmp_path / "file.txt" / "elmo-out"
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(out))}: cannot create the output folder") as error:
        convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)
    assert ".tmp-" not in str(error.value)
    arguments = ["--options-file", str(FIXTURE_OPTIONS), "--weight-file", str(FIXTURE_WEIGHTS), "--output-dir", str(out)]
    assert cli_main(["convert", *arguments]) == 2
    assert capsys.readouterr().err == f"hf-elmo convert: error: {error.value}\n"


def test_a_failed_write_names_the_output_folder_not_the_staging_folder(tmp_path, monkeypatch):
    import errno

    import hf_elmo.conversion as conversion

    def disk_full(directory: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    out = tmp_path / "out"
    monkeypatch.setattr(conversion, "_apply_default_permissions", disk_full)
    with pytest.raises(CheckpointError) as error:
        convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)
    assert str(error.value) == f"{out}: cannot write the checkpoint (No space left on device: {out}/model.safetensors)"
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone


def test_existing_output_is_replaced_only_when_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)
    (out / "stale.txt").write_text("from an earlier run")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}  # 1_Pooling/ too

    import hf_elmo.conversion as conversion

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(conversion, "model_card_text", crash)  # fails after the weights were written
    with pytest.raises(RuntimeError, match="disk full"):
        convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_folder_contents_and_generic_card(converted_fixture):
    names = {p.name for p in converted_fixture.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md", "modeling_elmo.py",
            "configuration_elmo.py", "tokenization_elmo.py"} <= names
    config = json.loads((converted_fixture / "config.json").read_text())
    assert config["model_type"] == "elmo"
    # The language-model class too: it loads an embedding-only folder and says it has no LM head when asked to score.
    assert config["auto_map"] == {"AutoConfig": "configuration_elmo.ElmoConfig", "AutoModel": "modeling_elmo.ElmoModel",
                                  "AutoModelForPreTraining": "modeling_elmo.ElmoForPreTraining"}
    card = (converted_fixture / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: feature-extraction" in card
    assert str(FIXTURE_OPTIONS) in card and '"projection_dim": 16' in card


def test_official_card_detection():
    from hf_elmo.conversion import official_model_card_name

    config = config_from_options(official_options("original"))
    assert official_model_card_name(config, ["x/elmo_2x4096_512_2048cnn_2xhighway_options.json"]) == "elmo-original"
    assert official_model_card_name(config, ["x/elmo_2x4096_512_2048cnn_2xhighway_5.5B_options.json"]) == \
        "elmo-original-5.5b"
    assert official_model_card_name(config_from_options(official_options("small")), []) == "elmo-small"
    assert official_model_card_name(config_from_options(fixture_options()), []) is None


def test_converter_script_and_vocab_cache(tmp_path, converted_fixture):
    out = tmp_path / "cached"
    result = subprocess.run(
        [sys.executable, str(REPO / "conversion" / "convert_elmo_original_to_hf.py"), "--options-file",
         str(FIXTURE_OPTIONS), "--weight-file", str(FIXTURE_WEIGHTS), "--output-dir", str(out),
         "--vocab-file", str(FIXTURE_VOCAB)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    model = AutoModel.from_pretrained(out)
    n_words = len(set(w.strip() for w in FIXTURE_VOCAB.read_text().splitlines() if w.strip()))
    assert model.config.num_cached_words == n_words == model.char_encoder.cached_embeddings.shape[0]
    assert torch.allclose(checkpoint_layers(out), checkpoint_layers(converted_fixture), atol=1e-6)


def test_converter_script_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "conversion" / "convert_elmo_original_to_hf.py"), "--options-file",
         str(tmp_path / "missing.json"), "--weight-file", str(FIXTURE_WEIGHTS), "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "missing.json: options file not found" in result.stderr and "Traceback" not in result.stderr


REMOTE_SCRIPT = r"""
import sys
sys.modules["hf_elmo"] = None  # hf_elmo is not importable in this process
try:
    import hf_elmo
    raise SystemExit("hf_elmo should not be importable")
except ImportError:
    pass
import numpy as np, torch
from transformers import AutoModel, AutoTokenizer
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
enc = tokenizer([["The", "cat", "sat", "on", "the", "mat", "."], ["Colorless", "green", "ideas", "sleep", "furiously"]],
                is_split_into_words=True, padding=True, return_tensors="pt")
with torch.inference_mode():
    np.save(sys.argv[2], torch.stack(model(**enc, output_hidden_states=True).hidden_states).numpy())
"""


def test_remote_code_without_hf_elmo(tmp_path, converted_fixture):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(converted_fixture), str(tmp_path / "r.npy")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = np.load(tmp_path / "r.npy")
    assert np.array_equal(remote, checkpoint_layers(converted_fixture).numpy())


def test_cli_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "hf_elmo.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("convert", "embed", "dump-token-embeddings"):
        assert command in result.stdout
