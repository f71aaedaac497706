"""Task heads: ElmoForTokenClassification / ElmoForSequenceClassification, and examples/token_classification.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
)

from hf_elmo import ElmoForSequenceClassification, ElmoForTokenClassification

SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["Colorless", "green", "ideas"], ["Hi"]]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "token_classification.py"
BILM_PREFIXES = ("elmo.char_encoder.", "elmo.encoder.")


@pytest.fixture(scope="module")
def encoded(converted_fixture):
    tokenizer = AutoTokenizer.from_pretrained(converted_fixture)
    return tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def mixed(converted_fixture, encoded) -> torch.Tensor:
    """The base model's ELMo vectors `(3, 7, 32)` (eval mode: no dropout), the reference the heads build on."""
    model = AutoModel.from_pretrained(converted_fixture).eval()
    with torch.no_grad():
        return model(**encoded).last_hidden_state


def head(cls, folder, **kwargs):
    return cls.from_pretrained(folder, **kwargs).eval()


def test_token_classification_logits_and_loss(converted_fixture, encoded, mixed):
    model = AutoModelForTokenClassification.from_pretrained(converted_fixture, num_labels=4).eval()
    assert isinstance(model, ElmoForTokenClassification)
    labels = torch.tensor([[0, 1, 2, 3, 0, 1, 2], [3, 2, 1, -100, -100, -100, -100], [1] + [-100] * 6])
    with torch.no_grad():
        out = model(**encoded, labels=labels)
    expected = mixed @ model.classifier.weight.T + model.classifier.bias
    assert out.logits.shape == (3, 7, 4)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    real = labels != -100
    assert torch.allclose(out.loss, F.cross_entropy(expected[real], labels[real]), atol=1e-6)


def test_sequence_classification_pools_the_masked_mean(converted_fixture, encoded, mixed):
    model = head(ElmoForSequenceClassification, converted_fixture, num_labels=3)
    with torch.no_grad():
        logits = model(**encoded).logits
    lengths = encoded["attention_mask"].sum(dim=1)
    pooled = torch.stack([mixed[i, :n].mean(dim=0) for i, n in enumerate(lengths.tolist())])
    assert torch.allclose(logits, model.classifier(pooled), atol=1e-6)
    with torch.no_grad():  # padding does not change a sentence's logits
        alone = model(**AutoTokenizer.from_pretrained(converted_fixture)(
            [SENTENCES[2]], is_split_into_words=True, return_tensors="pt")).logits
    assert torch.allclose(alone[0], logits[2], atol=1e-6)


@pytest.mark.parametrize("num_labels, labels, problem_type, loss_fn", [
    (1, torch.tensor([0.5, -1.0, 2.0]), "regression", lambda logits, y: F.mse_loss(logits.squeeze(-1), y)),
    (3, torch.tensor([2, 0, 1]), "single_label_classification", F.cross_entropy),
    (3, torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]]), "multi_label_classification",
     F.binary_cross_entropy_with_logits),
])
def test_sequence_classification_problem_types(converted_fixture, encoded, num_labels, labels, problem_type,
                                               loss_fn, tmp_path):
    model = head(ElmoForSequenceClassification, converted_fixture, num_labels=num_labels)
    with torch.no_grad():
        out = model(**encoded, labels=labels)
    assert model.config.problem_type == problem_type
    assert torch.allclose(out.loss, loss_fn(out.logits, labels), atol=1e-6)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["problem_type"] == problem_type


def test_tuple_outputs_and_hidden_states(converted_fixture, encoded, mixed):
    model = head(ElmoForTokenClassification, converted_fixture, num_labels=2)
    labels = torch.zeros(3, 7, dtype=torch.long)
    with torch.no_grad():
        loss, logits, hidden_states = model(**encoded, labels=labels, output_hidden_states=True, return_dict=False)
        (logits_only,) = model(**encoded, return_dict=False)
    assert torch.equal(logits, logits_only) and loss.dim() == 0
    assert len(hidden_states) == 3 and hidden_states[0].shape == (3, 7, 32)


def test_frozen_bilm_by_default_and_the_choice_survives_save_load(converted_fixture, tmp_path):
    model = AutoModelForTokenClassification.from_pretrained(converted_fixture, num_labels=2)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["classifier.bias", "classifier.weight", "elmo.scalar_mix.gamma",
                         "elmo.scalar_mix.scalar_parameters"]
    model.save_pretrained(tmp_path / "frozen")
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "frozen")
    assert sorted(n for n, p in reloaded.named_parameters() if p.requires_grad) == trainable

    unfrozen = AutoModelForSequenceClassification.from_pretrained(converted_fixture, num_labels=2, freeze_bilm=False)
    assert all(p.requires_grad for p in unfrozen.parameters())
    unfrozen.save_pretrained(tmp_path / "unfrozen")
    assert json.loads((tmp_path / "unfrozen" / "config.json").read_text())["freeze_bilm"] is False
    assert all(p.requires_grad for p in AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "unfrozen").parameters())


def test_base_checkpoint_loads_into_heads(converted_fixture):
    base = load_file(converted_fixture / "model.safetensors")
    for cls in (ElmoForTokenClassification, ElmoForSequenceClassification):
        state = cls.from_pretrained(converted_fixture, num_labels=2).state_dict()
        for key, value in base.items():
            assert torch.equal(state[f"elmo.{key}"], value), key


REMOTE_SCRIPT = r"""
import sys
sys.modules["hf_elmo"] = None  # hf_elmo is not importable in this process
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
folder, kind = sys.argv[1], sys.argv[2]
auto = AutoModelForTokenClassification if kind == "token" else AutoModelForSequenceClassification
model = auto.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("elmo.encoder."))
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
enc = tokenizer([["The", "cat"], ["Hi"]], is_split_into_words=True, padding=True, return_tensors="pt")
with torch.no_grad():
    torch.save(model(**enc).logits, sys.argv[3])
"""


@pytest.mark.parametrize("kind, cls", [("token", ElmoForTokenClassification),
                                       ("sequence", ElmoForSequenceClassification)])
def test_remote_code_loads_heads(converted_fixture, tmp_path, kind, cls):
    model = head(cls, converted_fixture, num_labels=3)
    model.save_pretrained(tmp_path / "head")
    AutoTokenizer.from_pretrained(converted_fixture).save_pretrained(tmp_path / "head")
    auto_map = json.loads((tmp_path / "head" / "config.json").read_text())["auto_map"]
    auto_class = "AutoModelForTokenClassification" if kind == "token" else "AutoModelForSequenceClassification"
    assert auto_map[auto_class] == f"modeling_elmo.{cls.__name__}"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "head"), kind,
                             str(tmp_path / "logits.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    enc = AutoTokenizer.from_pretrained(converted_fixture)([["The", "cat"], ["Hi"]], is_split_into_words=True,
                                                           padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), model(**enc).logits)


def test_collator_pads_word_aligned_labels_and_survives_device_moves(converted_fixture):
    """transformers' DataCollatorForTokenClassification over ElmoTokenizer.pad; Trainer rebuilds the batch from a
    mapping when it moves it to the device."""
    tokenizer = AutoTokenizer.from_pretrained(converted_fixture)
    features = [{"input_ids": tokenizer.encode_words(["a", "b"]), "labels": [1, 2]},
                {"input_ids": tokenizer.encode_words(["c"]), "labels": [0]}]
    batch = DataCollatorForTokenClassification(tokenizer)(features)
    assert batch["labels"].tolist() == [[1, 2], [0, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]] and batch["input_ids"].shape == (2, 2, 50)
    assert batch.word_ids(1) == [0, None]
    moved = type(batch)({key: value for key, value in batch.items()})
    assert all(torch.equal(moved[key], batch[key]) for key in batch)
    with pytest.raises(ValueError, match="word positions unknown"):
        moved.word_ids(0)


def run_example(converted_fixture: Path, output_dir: Path, *extra: str) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("token_classification_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.main(["--model", str(converted_fixture), "--output-dir", str(output_dir), "--epochs", "4",
                         *extra])


def bilm_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(BILM_PREFIXES)}


def test_example_trains_only_the_mix_and_head_by_default(converted_fixture, tmp_path):
    losses = run_example(converted_fixture, tmp_path / "out")
    assert losses["loss_after"] < 0.9 * losses["loss_before"], losses
    trained = load_file(tmp_path / "out" / "model.safetensors")
    base = {f"elmo.{k}": v for k, v in load_file(converted_fixture / "model.safetensors").items()}
    frozen = bilm_tensors(trained)
    assert len(frozen) == 31 and all(torch.equal(v, base[k]) for k, v in frozen.items())
    assert not torch.equal(trained["elmo.scalar_mix.scalar_parameters"], base["elmo.scalar_mix.scalar_parameters"])
    assert not torch.equal(trained["elmo.scalar_mix.gamma"], base["elmo.scalar_mix.gamma"])
    assert trained["classifier.bias"].abs().sum() > 0  # initialised to zeros
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["freeze_bilm"] is True and config["architectures"] == ["ElmoForTokenClassification"]
    assert set(config["label2id"]) == {"O", "B-PER", "I-PER", "B-LOC", "B-ORG", "I-ORG"}


def test_example_unfreeze_bilm_trains_the_bilm(converted_fixture, tmp_path):
    losses = run_example(converted_fixture, tmp_path / "out", "--unfreeze-bilm")
    assert losses["loss_after"] < 0.9 * losses["loss_before"], losses
    trained = bilm_tensors(load_file(tmp_path / "out" / "model.safetensors"))
    base = {f"elmo.{k}": v for k, v in load_file(converted_fixture / "model.safetensors").items()}
    changed = [k for k, v in trained.items() if not torch.equal(v, base[k])]
    assert any(k.startswith("elmo.encoder.") for k in changed) and any(k.startswith("elmo.char_encoder.")
                                                                         for k in changed)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["freeze_bilm"] is False


def test_example_rejects_malformed_conll(converted_fixture, tmp_path):
    (tmp_path / "bad.conll").write_text("Alice B-PER\nlives\n")
    with pytest.raises(ValueError, match=r"bad.conll, line 2: expected a word and a tag"):
        run_example(converted_fixture, tmp_path / "out", "--train-file", str(tmp_path / "bad.conll"))
