"""ElmoModel behaviour: determinism, empty and hostile input, state, scalar mix, training, dtypes, saving."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModel, AutoTokenizer

from hf_elmo import ElmoConfig, ElmoModel

SENTENCES = [
    "The U.S. Centers for Disease Control and Prevention initially advised school systems to close .".split(),
    "Don 't !".split(),
    "Why does everything have to become such a big issue ?".split(),
    ["x"],
]


@pytest.fixture(scope="module")
def model_and_tokenizer(converted_skip_model):
    return AutoModel.from_pretrained(converted_skip_model).eval(), AutoTokenizer.from_pretrained(converted_skip_model)


def run(model, tokenizer, sentences, **kwargs):
    enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc, output_hidden_states=True, **kwargs)


def test_batched_equals_one_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batched = run(model, tokenizer, SENTENCES)
    for row, words in enumerate(SENTENCES):
        alone = run(model, tokenizer, [words])
        for layer_batched, layer_alone in zip(batched.hidden_states, alone.hidden_states):
            assert torch.allclose(layer_batched[row, : len(words)], layer_alone[0], atol=1e-6)
        assert torch.allclose(batched.last_hidden_state[row, : len(words)], alone.last_hidden_state[0], atol=1e-6)
        # padding positions are exact zeros in every output
        assert torch.all(batched.last_hidden_state[row, len(words):] == 0)
        assert all(torch.all(h[row, len(words):] == 0) for h in batched.hidden_states)


def test_outputs_do_not_depend_on_earlier_calls_or_padding(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    first = run(model, tokenizer, [SENTENCES[1]]).last_hidden_state
    run(model, tokenizer, SENTENCES)  # an unrelated call in between
    enc = tokenizer([SENTENCES[1]], is_split_into_words=True, padding="max_length", max_length=9,
                    return_tensors="pt")
    with torch.inference_mode():
        padded = model(**enc).last_hidden_state
    assert torch.equal(run(model, tokenizer, [SENTENCES[1]]).last_hidden_state, first)
    assert torch.allclose(padded[0, :3], first[0], atol=1e-6) and torch.all(padded[0, 3:] == 0)


def test_shapes_and_layer_zero(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out = run(model, tokenizer, SENTENCES[:2])
    width = 2 * model.config.projection_dim
    assert out.last_hidden_state.shape == (2, len(SENTENCES[0]), width)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    token_layer = out.hidden_states[0]
    half = model.config.projection_dim
    assert torch.equal(token_layer[..., :half], token_layer[..., half:])
    enc = tokenizer(SENTENCES[1], is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        cnn = model.embed_words(enc["input_ids"][0])
    assert torch.allclose(token_layer[1, :3, :half], cnn, atol=1e-6)


def test_attention_mask_is_optional(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    enc = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        with_mask = model(**enc).last_hidden_state
        without = model(input_ids=enc["input_ids"]).last_hidden_state
    assert torch.equal(with_mask, without)


@pytest.mark.parametrize("batch", [[""], [], ["   "]])
def test_empty_inputs_give_empty_outputs(model_and_tokenizer, batch):
    model, tokenizer = model_and_tokenizer
    enc = tokenizer(batch, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True, use_cache=True)
    width = 2 * model.config.projection_dim
    assert out.last_hidden_state.shape == (len(batch), 0, width)
    assert all(h.shape == (len(batch), 0, width) for h in out.hidden_states)
    assert out.state[0].shape == (model.config.num_hidden_layers, 2, len(batch), model.config.projection_dim)


def test_empty_sentence_beside_a_real_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    both = run(model, tokenizer, [[], SENTENCES[1]])
    alone = run(model, tokenizer, [SENTENCES[1]])
    assert torch.all(both.last_hidden_state[0] == 0)
    assert torch.allclose(both.last_hidden_state[1], alone.last_hidden_state[0], atol=1e-6)


def test_long_sentence_and_long_words(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    words = ["w" * 10_000, "\x07", "😀\u0301"] + ["word"] * 4997
    out = run(model, tokenizer, [words])
    assert out.last_hidden_state.shape == (1, 5000, 2 * model.config.projection_dim)
    assert torch.isfinite(out.last_hidden_state).all()
    # a 10,000-character word is truncated exactly as the original: same vector as its first 48 bytes
    assert torch.allclose(out.hidden_states[0][0, 0], run(model, tokenizer, [["w" * 48]]).hidden_states[0][0, 0])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, r"\(batch, words, 50\)"),
        ({"input_ids": torch.zeros(1, 2, 50)}, "integer"),
        ({"input_ids": torch.full((1, 2, 50), 300)}, r"\[0, 262\)"),
        ({"input_ids": torch.full((1, 2, 50), 5), "attention_mask": torch.tensor([[0, 1]])}, "right-padded"),
        ({"input_ids": torch.full((1, 2, 50), 5), "attention_mask": torch.ones(1, 3)}, "attention_mask must have shape"),
        ({"input_ids": None}, "input_ids is required"),
        ({"input_ids": [[[1] * 50]]}, "tensor"),
    ],
)
def test_bad_model_input_is_a_clear_value_error(model_and_tokenizer, inputs, message):
    model, _ = model_and_tokenizer
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_bad_state_is_a_clear_value_error(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    enc = tokenizer([SENTENCES[1]] * 2, is_split_into_words=True, return_tensors="pt")
    state = run(model, tokenizer, [SENTENCES[1]], use_cache=True).state
    with pytest.raises(ValueError, match="state holds 1 rows but the batch has 2"):
        model(**enc, state=state)
    with pytest.raises(ValueError, match="expected"):
        model(**enc, state=(state[0][0], state[1]))
    # More rows than the batch: refused rather than silently dropped from out.state.
    three = run(model, tokenizer, [SENTENCES[1]] * 3, use_cache=True).state
    with pytest.raises(ValueError, match=r"state holds 3 rows but the batch has 2.*h\[:, :, :2\]"):
        model(**enc, state=three)
    sliced = model(**enc, state=(three[0][:, :, :2], three[1][:, :, :2]), use_cache=True)
    assert sliced.state[0].shape[2] == 2
    with pytest.raises(ValueError, match="state must hold torch tensors.*ndarray"):
        model(**enc, state=(state[0].numpy(), state[1].numpy()))
    nan_state = (torch.full_like(three[0][:, :, :2], float("nan")), three[1][:, :, :2])
    with pytest.raises(ValueError, match="non-finite"):
        model(**enc, state=nan_state)


@pytest.mark.parametrize("mask", [[[1.0, 0.5]], [[1, 2]], [[-1, 0]]])
def test_attention_mask_must_hold_zeros_and_ones(model_and_tokenizer, mask):
    model, tokenizer = model_and_tokenizer
    enc = tokenizer([["a", "b"]], is_split_into_words=True, return_tensors="pt")
    with pytest.raises(ValueError, match="attention_mask must hold 0 and 1"):
        model(input_ids=enc["input_ids"], attention_mask=torch.tensor(mask))
    as_bool = model(input_ids=enc["input_ids"], attention_mask=torch.tensor([[True, False]])).last_hidden_state
    as_float = model(input_ids=enc["input_ids"], attention_mask=torch.tensor([[1.0, 0.0]])).last_hidden_state
    assert torch.equal(as_bool, as_float) and not as_bool[0, 1].any()


def test_state_continues_each_row(model_and_tokenizer):
    """Stateful mode: a row continued from its own state differs from a fresh start, and equals the same
    continuation computed in a different batch layout."""
    model, tokenizer = model_and_tokenizer
    first = run(model, tokenizer, [SENTENCES[0], SENTENCES[2]], use_cache=True)
    fresh = run(model, tokenizer, [SENTENCES[1], SENTENCES[1]])
    continued = run(model, tokenizer, [SENTENCES[1], SENTENCES[1]], state=first.state, use_cache=True)
    assert not torch.allclose(continued.last_hidden_state[0], fresh.last_hidden_state[0], atol=1e-4)
    assert not torch.allclose(continued.last_hidden_state[0], continued.last_hidden_state[1], atol=1e-4)
    # row 1 alone: state of SENTENCES[2] alone, then SENTENCES[1]
    alone_first = run(model, tokenizer, [SENTENCES[2]], use_cache=True)
    alone = run(model, tokenizer, [SENTENCES[1]], state=alone_first.state)
    assert torch.allclose(alone.last_hidden_state[0], continued.last_hidden_state[1], atol=1e-6)


def test_fixed_scalar_mix_selects_the_top_layer(converted_skip_model):
    model = AutoModel.from_pretrained(converted_skip_model, scalar_mix_parameters=[-1e9, -1e9, 1.0]).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_skip_model)
    out = run(model, tokenizer, SENTENCES)
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    assert not model.scalar_mix.scalar_parameters.requires_grad and not model.scalar_mix.gamma.requires_grad


def test_layer_norm_mix_matches_allennlp_formula(converted_skip_model):
    model = AutoModel.from_pretrained(converted_skip_model, do_layer_norm=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_skip_model)
    with torch.no_grad():
        model.scalar_mix.scalar_parameters.copy_(torch.tensor([0.3, -0.2, 0.5]))
        model.scalar_mix.gamma.fill_(1.7)
    out = run(model, tokenizer, SENTENCES)
    enc = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].double()[..., None]
    weights = torch.softmax(torch.tensor([0.3, -0.2, 0.5], dtype=torch.double), 0)
    expected = 0
    for w, layer in zip(weights, out.hidden_states):
        layer = layer.double()
        n = mask.sum() * layer.shape[-1]
        mean = (layer * mask).sum() / n
        var = (((layer - mean) * mask) ** 2).sum() / n
        expected = expected + w * (layer - mean) / torch.sqrt(var + 1e-13)
    # allennlp's formula at the words; padding is zeroed (allennlp leaves -mean/std there).
    assert torch.allclose(out.last_hidden_state.double(), 1.7 * expected * mask, atol=1e-5)


def test_dropout_only_in_train_mode_and_gradients_flow(converted_skip_model):
    model = AutoModel.from_pretrained(converted_skip_model)
    tokenizer = AutoTokenizer.from_pretrained(converted_skip_model)
    enc = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    model.train()
    a, b = model(**enc).last_hidden_state, model(**enc).last_hidden_state
    assert not torch.equal(a, b)  # dropout 0.5 on the ELMo vector
    (a ** 2).sum().backward()
    for name in ("char_encoder.char_embedding.weight", "encoder.layers.0.input_weight",
                 "encoder.layers.1.recurrent_weight", "scalar_mix.scalar_parameters", "scalar_mix.gamma"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**enc).last_hidden_state, model(**enc).last_hidden_state)


def test_frozen_bilm_trains_only_the_mix(converted_skip_model):
    model = AutoModel.from_pretrained(converted_skip_model)
    tokenizer = AutoTokenizer.from_pretrained(converted_skip_model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("scalar_mix"))
    enc = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    model(**enc).last_hidden_state.sum().backward()
    assert model.scalar_mix.gamma.grad is not None
    assert model.encoder.layers[0].input_weight.grad is None


def test_bfloat16_and_device(converted_skip_model):
    model32 = AutoModel.from_pretrained(converted_skip_model).eval()
    model16 = AutoModel.from_pretrained(converted_skip_model, dtype=torch.bfloat16).to("cpu").eval()
    assert model16.encoder.layers[0].input_weight.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(converted_skip_model)
    out32 = run(model32, tokenizer, SENTENCES).last_hidden_state
    out16 = run(model16, tokenizer, SENTENCES).last_hidden_state
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - out32).abs().max() < 0.1 * out32.abs().max()


def test_return_dict_false(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    enc = tokenizer(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        as_tuple = model(**enc, return_dict=False, output_hidden_states=True)
        as_dict = model(**enc, output_hidden_states=True)
    assert torch.equal(as_tuple[0], as_dict.last_hidden_state) and len(as_tuple[1]) == 3


def test_save_and_reload_round_trip(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    again = ElmoModel.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(run(again, tokenizer, SENTENCES).last_hidden_state,
                       run(model, tokenizer, SENTENCES).last_hidden_state)


def test_pickle_checkpoints_are_refused(tmp_path, converted_skip_model):
    folder = tmp_path / "pickled"
    shutil.copytree(converted_skip_model, folder)
    model = AutoModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="safetensors only"):
        ElmoModel.from_pretrained(converted_skip_model, use_safetensors=False)


def test_word_cache_gives_the_same_outputs(tmp_path, converted_skip_model):
    model = AutoModel.from_pretrained(converted_skip_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_skip_model)
    reference = run(model, tokenizer, SENTENCES)
    model.cache_words(["The", "to", "!", "<S>", "</S>", "unused"])
    assert model.config.num_cached_words == 6
    cached = run(model, tokenizer, SENTENCES)
    assert torch.allclose(cached.last_hidden_state, reference.last_hidden_state, atol=1e-6)
    model.save_pretrained(tmp_path / "cached")
    reloaded = AutoModel.from_pretrained(tmp_path / "cached").eval()
    assert reloaded.char_encoder.cached_char_ids.shape == (6, 50)
    # the cache is really used: poison a cached vector and the word's output changes, others do not
    with torch.no_grad():
        reloaded.char_encoder.cached_embeddings[1] += 1.0  # "to"
    poisoned = run(reloaded, tokenizer, [["to"], ["Hi"]])
    clean = run(model, tokenizer, [["to"], ["Hi"]])
    assert not torch.allclose(poisoned.hidden_states[0][0], clean.hidden_states[0][0])
    assert torch.allclose(poisoned.hidden_states[0][1], clean.hidden_states[0][1], atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="scalar_mix_parameters"):
        ElmoConfig(num_hidden_layers=2, scalar_mix_parameters=[1.0])
    with pytest.raises(ValueError, match="char_activation"):
        ElmoConfig(char_activation="gelu")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(), min_size=1, max_size=4))
def test_any_unicode_text_gives_finite_vectors_of_the_right_shape(model_and_tokenizer, texts):
    model, tokenizer = model_and_tokenizer
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    n_words = enc["attention_mask"].sum(1)
    assert out.last_hidden_state.shape == (len(texts), enc["input_ids"].shape[1], 2 * model.config.projection_dim)
    assert torch.isfinite(out.last_hidden_state).all()
    for row, n in enumerate(n_words.tolist()):
        assert torch.all(out.last_hidden_state[row, n:] == 0)
