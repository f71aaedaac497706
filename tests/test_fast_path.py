"""The fast paths (packed biLSTM, length-cut character CNN) against straightforward implementations, within 1e-5."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from hf_elmo import lstm_elmo
from hf_elmo.configuration_elmo import ElmoConfig
from hf_elmo.lstm_elmo import ElmoRuntimeOptions, GraphCache, GraphDriver
from hf_elmo.modeling_elmo import ElmoBiLstm, ElmoCharacterEncoder, ElmoModel
from hf_elmo.tokenization_elmo import word_to_char_ids
from helpers import tiny_config
from reference_bilm import reference_bilstm, reference_char_cnn

ATOL = 1e-5


def small_config(**overrides) -> ElmoConfig:
    """`tiny_config` with a width-7 filter (longer than most words) and an LSTM whose sizes differ from the CNN's."""
    values = dict(char_filters=[[1, 4], [2, 8], [3, 16], [5, 32], [7, 8]], lstm_dim=24, projection_dim=8,
                  mix_dropout=0.0)
    values.update(overrides)
    return tiny_config(**values)


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


# ---------------------------------------------------------------------------------------------------------- matmul


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_inference_linear_uses_onednn_on_cpu_and_matches_f_linear(monkeypatch):
    assert lstm_elmo._onednn_linear_works()
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class CountingOps:
        @staticmethod
        def _linear_pointwise(*args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(torch.ops, "mkldnn", CountingOps)
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=generator) for shape in ((28, 64), (256, 64), (256,)))
    with torch.inference_mode():
        fast = lstm_elmo.inference_linear(x, weight, bias)
        assert calls == [(28, 64)]
        assert torch.allclose(fast, F.linear(x, weight, bias), atol=1e-5)
        lstm_elmo.inference_linear(x.double(), weight.double())  # other dtypes take F.linear
        lstm_elmo.inference_linear(x.t().contiguous().t(), weight)  # so do non-contiguous inputs
    lstm_elmo.inference_linear(x, weight.requires_grad_())  # and autograd
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------------- biLSTM


# Small chunks so that the tests cross chunk boundaries: input projections of 7 rows x steps (eager), and the CUDA
# path's fixed-shape chunks run eagerly with 3 steps per chunk and rows padded to a multiple of 4 (graphs).
PATHS = {
    "onednn": ElmoRuntimeOptions(lstm_backend="eager", input_chunk_rows=7),
    "torch-linear": ElmoRuntimeOptions(lstm_backend="eager", input_chunk_rows=7, use_onednn=False),
    "graphs": ElmoRuntimeOptions(lstm_backend="graphs", graph_steps=3, graph_row_multiple=4),
    "autograd": ElmoRuntimeOptions(lstm_backend="autograd"),
    "bptt": ElmoRuntimeOptions(lstm_backend="bptt"),  # training's whole-layer function, here without gradients
}


@pytest.mark.parametrize(
    "lengths, skip, clip, with_state",
    [
        ([7, 3, 12, 1, 5, 12, 2, 9], True, 3.0, False),
        ([7, 3, 12, 1, 5, 12, 2, 9], False, None, True),
        ([4, 4, 4], True, 0.5, True),
        ([30], True, 3.0, True),
        ([2, 9, 3, 8, 4, 7, 5, 6, 11, 1, 1, 2], True, 3.0, True),
        ([3, 0, 5], True, 3.0, True),  # an empty row keeps its initial state
    ],
)
@pytest.mark.parametrize("path", list(PATHS))
def test_packed_bilstm_matches_step_by_step_reference(lengths, skip, clip, with_state, path):
    cfg = small_config(use_skip_connections=skip, cell_clip=clip, proj_clip=clip)
    encoder = ElmoBiLstm(cfg)
    encoder.runtime_options = PATHS[path]
    randomize(encoder, seed=len(lengths))
    generator = torch.Generator().manual_seed(1)
    batch, steps = len(lengths), max(lengths) + 2  # trailing padding beyond the longest row too
    inputs = torch.randn(batch, steps, cfg.projection_dim, generator=generator)
    lengths_t = torch.tensor(lengths)
    state = None
    if with_state:
        state = (torch.randn(cfg.num_hidden_layers, 2, batch, cfg.projection_dim, generator=generator),
                 torch.randn(cfg.num_hidden_layers, 2, batch, cfg.lstm_dim, generator=generator))
    with torch.inference_mode():
        outputs, final = encoder(inputs, lengths_t, state, return_state=True)
    expected, expected_final = reference_bilstm(encoder, inputs, lengths_t, state)
    for actual, wanted in zip(outputs, expected):
        assert actual.shape == wanted.shape
        assert torch.allclose(actual.double(), wanted, atol=ATOL), (actual.double() - wanted).abs().max()
    for actual, wanted in zip(final, expected_final):
        assert torch.allclose(actual.double(), wanted, atol=ATOL), (actual.double() - wanted).abs().max()


def test_packed_bilstm_does_not_touch_the_callers_state():
    cfg = small_config()
    encoder = ElmoBiLstm(cfg)
    randomize(encoder, seed=5)
    state = (torch.randn(2, 2, 3, cfg.projection_dim), torch.randn(2, 2, 3, cfg.lstm_dim))
    copies = (state[0].clone(), state[1].clone())
    with torch.inference_mode():
        encoder(torch.randn(3, 6, cfg.projection_dim), torch.tensor([6, 2, 4]), state, return_state=True)
    assert torch.equal(state[0], copies[0]) and torch.equal(state[1], copies[1])


# ---------------------------------------------------------------------------------------------------------- CNN


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "torch-linear"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_length_cut_char_cnn_matches_full_width(activation, onednn):
    cfg = small_config(char_activation=activation)
    encoder = ElmoCharacterEncoder(cfg)
    # several chunks of different cut lengths
    encoder.runtime_options = ElmoRuntimeOptions(cnn_chunk_words=5, use_onednn=onednn)
    randomize(encoder, seed=2, scale=0.25)
    c = cfg.max_characters_per_token
    words = ["a", "the", "ELMo", "x" * 48, "y" * 60, "<S>", "</S>", "naïve", "😀", "mid-length", "z" * 43]
    rows = [list(word_to_char_ids(w, c)) for w in words]
    generator = torch.Generator().manual_seed(3)
    rows.append(torch.randint(1, cfg.num_characters, (c,), generator=generator).tolist())  # no trailing run
    rows.append([7] * c)  # a single run: every window is the same
    rows.append([5, 6] + [9] * (c - 2))  # a trailing run of an id other than padding
    rows.append([5] * 10 + [6] + [5] * (c - 11))
    char_ids = torch.tensor(rows)
    with torch.inference_mode():
        actual = encoder.compute(char_ids)
    with torch.no_grad():
        expected = reference_char_cnn(encoder, char_ids)
    assert expected.abs().max() > 1  # not a trivially small output
    assert torch.allclose(actual.double(), expected, atol=ATOL, rtol=ATOL), (actual.double() - expected).abs().max()
    # The pooled maximum really comes from the padding run for some filters, so a cut one window short fails.
    with torch.no_grad():
        embedded = F.embedding(char_ids[:1], encoder.char_embedding.weight).transpose(1, 2)
        full = encoder.convolutions[-1](embedded)[0]
    n_real = 3  # BOW, 'a', EOW: windows starting at 0..2 touch them, the rest see padding only
    assert (full[:, n_real:].amax(-1) > full[:, :n_real].amax(-1)).any()


# ---------------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("backend", ["eager", "graphs"])
def test_batch_outputs_equal_each_sentence_alone(backend):
    """Packing sentences into shared rows must not leak anything between them."""
    cfg = small_config()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the character CNN keeps its initialisation from the global generator
        model = ElmoModel(cfg).eval()
    model.set_runtime_options(lstm_backend=backend)
    randomize(model.encoder, seed=7, scale=0.25)
    generator = torch.Generator().manual_seed(4)
    lengths = [5, 1, 9, 3, 9, 2, 4]
    words = [[f"w{int(torch.randint(0, 15, (1,), generator=generator))}" for _ in range(n)] for n in lengths]
    c = cfg.max_characters_per_token

    def encode(batch):
        ids = torch.zeros(len(batch), max(len(s) for s in batch), c, dtype=torch.long)
        for i, sentence in enumerate(batch):
            for j, w in enumerate(sentence):
                ids[i, j] = torch.tensor(word_to_char_ids(w, c))
        return ids

    with torch.inference_mode():
        together = model(encode(words), output_hidden_states=True, use_cache=True)
        for i, sentence in enumerate(words):
            alone = model(encode([sentence]), output_hidden_states=True, use_cache=True)
            for layer_together, layer_alone in zip(together.hidden_states, alone.hidden_states):
                assert torch.allclose(layer_together[i, : len(sentence)], layer_alone[0], atol=ATOL)
                assert not layer_together[i, len(sentence):].any()
            for part_together, part_alone in zip(together.state, alone.state):
                assert torch.allclose(part_together[:, :, i], part_alone[:, :, 0], atol=ATOL)


def test_training_path_matches_and_has_gradients():
    """With autograd on, the layer runs without `out=` / in-place updates: same numbers, and gradients flow."""
    cfg = small_config()
    encoder = ElmoBiLstm(cfg)
    randomize(encoder, seed=11)
    generator = torch.Generator().manual_seed(12)
    inputs = torch.randn(4, 9, cfg.projection_dim, generator=generator)
    lengths = torch.tensor([9, 2, 5, 7])
    state = (torch.randn(2, 2, 4, cfg.projection_dim, generator=generator),
             torch.randn(2, 2, 4, cfg.lstm_dim, generator=generator))
    with torch.inference_mode():
        fast, fast_final = encoder(inputs, lengths, state, return_state=True)
    trained, trained_final = encoder(inputs.requires_grad_(), lengths, state, return_state=True)
    for a, b in zip(list(fast) + list(fast_final), list(trained) + list(trained_final)):
        assert torch.allclose(a, b.detach(), atol=ATOL)
    (trained[-1].sum() + trained_final[1].sum()).backward()
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_prepacked_weights_follow_in_place_updates_and_stay_out_of_the_state_dict():
    cfg = small_config()
    encoder = ElmoBiLstm(cfg)
    randomize(encoder, seed=3)
    inputs, lengths = torch.randn(3, 6, cfg.projection_dim), torch.tensor([6, 2, 4])
    with torch.inference_mode():
        before, _ = encoder(inputs, lengths)
    assert set(encoder.layers[0].runtime_cache) == {"recurrent0", "recurrent1", "projection0", "projection1"}
    assert not any("runtime_cache" in key for key in encoder.state_dict())
    with torch.no_grad():  # as an optimizer step or load_state_dict would
        for layer in encoder.layers:
            layer.recurrent_weight.mul_(0.5)
            layer.projection_weight.mul_(-1.0)
    with torch.inference_mode():
        after, _ = encoder(inputs, lengths)
    expected, _ = reference_bilstm(encoder, inputs, lengths)
    for actual, wanted in zip(after, expected):
        assert torch.allclose(actual.double(), wanted, atol=ATOL)
    assert not torch.allclose(before[-1], after[-1], atol=1e-3)
    copied = copy.deepcopy(encoder)  # oneDNN's opaque copies are not copied (nor pickled) with the model
    assert not copied.layers[0].runtime_cache
    buffer = io.BytesIO()
    torch.save(encoder, buffer)
    with torch.inference_mode():
        for a, b in zip(after, copied(inputs, lengths)[0]):
            assert torch.equal(a, b)
    encoder.train()  # already in train mode, as Trainer calls it every step: the frozen weights' copies stay
    assert encoder.layers[0].runtime_cache
    encoder.eval()
    assert not encoder.layers[0].runtime_cache  # dropped when switching modes


def test_graph_driver_captures_once_per_shape_and_falls_back_when_capture_fails(monkeypatch):
    """The CUDA-graph bookkeeping, on CPU: a stand-in capture replays the chunk function eagerly."""
    cfg = small_config()
    encoder = ElmoBiLstm(cfg)
    encoder.runtime_options = ElmoRuntimeOptions(lstm_backend="graphs")
    randomize(encoder, seed=8)
    monkeypatch.setattr(GraphDriver, "capture_devices", ("cpu",))
    captured = []

    def fake_capture(run, device):
        captured.append(device)
        return run

    monkeypatch.setattr(GraphCache, "capture", staticmethod(fake_capture))
    generator = torch.Generator().manual_seed(9)
    inputs = torch.randn(5, 8, cfg.projection_dim, generator=generator)
    lengths = torch.tensor([8, 3, 6, 2, 7])
    expected, _ = reference_bilstm(encoder, inputs, lengths)
    with torch.inference_mode():
        for _ in range(2):  # the second call replays the first call's graphs
            outputs, _ = encoder(inputs, lengths)
            for actual, wanted in zip(outputs, expected):
                assert torch.allclose(actual.double(), wanted, atol=ATOL)
    assert len(captured) == cfg.num_hidden_layers  # one graph per layer, reused
    assert all(len(layer.runtime_cache["graphs"].graphs) == 1 for layer in encoder.layers)
    encoder.float()  # moving or casting drops graphs and buffers
    assert not any(layer.runtime_cache for layer in encoder.layers)

    def failing_capture(run, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphCache, "capture", staticmethod(failing_capture))
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="capture of the ELMo LSTM failed"):
        outputs, _ = encoder(inputs, lengths)
    assert all(layer.runtime_cache["graphs"].capture_failed for layer in encoder.layers)
    for actual, wanted in zip(outputs, expected):
        assert torch.allclose(actual.double(), wanted, atol=ATOL)


def test_backward_stream_given_explicitly_equals_the_reversed_rows():
    """`backward_inputs` (a caller-made backward stream, as the LM's streaming mode needs) read in its own order."""
    cfg = small_config()
    encoder = ElmoBiLstm(cfg)
    randomize(encoder, seed=13)
    generator = torch.Generator().manual_seed(14)
    lengths = torch.tensor([5, 2, 7])
    inputs = torch.randn(3, 7, cfg.projection_dim, generator=generator)
    reversed_rows = torch.zeros_like(inputs)
    for b, n in enumerate(lengths.tolist()):
        reversed_rows[b, :n] = inputs[b, :n].flip(0)
    with torch.inference_mode():
        default, _ = encoder(inputs, lengths)
        given, _ = encoder(inputs, lengths, backward_inputs=reversed_rows)
    p = cfg.projection_dim
    for layer_default, layer_given in zip(default, given):
        assert torch.equal(layer_default[..., :p], layer_given[..., :p])
        for b, n in enumerate(lengths.tolist()):
            assert torch.allclose(layer_default[b, :n, p:].flip(0), layer_given[b, :n, p:], atol=ATOL)


def test_runtime_options_are_arguments_not_configuration(tmp_path):
    """Runtime settings change how the model runs, never its numbers, and never reach config.json."""
    cfg = small_config()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ElmoModel(cfg).eval()
    model.save_pretrained(tmp_path)
    assert "prepack_cpu_weights" not in (tmp_path / "config.json").read_text()
    ids = torch.tensor([[word_to_char_ids(w, cfg.max_characters_per_token) for w in ("a", "bc", "def")]])
    loaded = ElmoModel.from_pretrained(tmp_path, prepack_cpu_weights=False, lstm_backend="graphs").eval()
    assert loaded.encoder.runtime_options.prepack_cpu_weights is False
    assert loaded.char_encoder.runtime_options.lstm_backend == "graphs"
    with torch.inference_mode():
        assert torch.allclose(model(ids).last_hidden_state, loaded(ids).last_hidden_state, atol=ATOL)
    with pytest.raises(ValueError, match="unknown runtime option"):
        loaded.set_runtime_options(prepack=True)
    with pytest.raises(ValueError, match="lstm_backend must be one of"):
        loaded.set_runtime_options(lstm_backend="fast")
