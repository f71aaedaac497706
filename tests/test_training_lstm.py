"""
The training path of the LSTM (`lstm_elmo.BpttDriver` / `BpttLayer`, a hand-written backward through time)
against autograd's own gradients of the step loop (`AutogradDriver`), which is the reference: outputs, final
states and the gradients of the inputs, all four weights and the initial state agree within 1e-12 in float64
(float32: float32 rounding), whatever the packing (resets), clips, initial states and stream layout.
"""

from __future__ import annotations

import pytest
import torch

from hf_elmo import lstm_elmo
from hf_elmo.lstm_elmo import (
    AutogradDriver,
    BpttDriver,
    BpttLayer,
    ElmoRuntimeOptions,
    LayerWeights,
    SentencePacking,
    select_driver,
)
from hf_elmo.modeling_elmo import ElmoBiLstm, ElmoForPreTraining
from hf_elmo.tokenization_elmo import ElmoTokenizer
from helpers import tiny_config

IN_DIM, PROJ_DIM, LSTM_DIM = 6, 5, 7
TIGHT = dict(rtol=1e-12, atol=1e-12)


class LayerCase:
    """One layer's random inputs, weights, initial state and loss weights (leaves that record gradients)."""

    def __init__(self, lengths: list[int], dtype: torch.dtype, seed: int = 0, scale: float = 1.0,
                 with_initial: bool = True, with_backward_inputs: bool = False):
        generator = torch.Generator().manual_seed(seed)
        randn = lambda *shape: torch.randn(shape, generator=generator, dtype=torch.float64)  # noqa: E731
        self.lengths = torch.tensor(lengths)
        batch, steps = len(lengths), max(lengths) + 1  # trailing padding
        self.steps = steps
        self.inputs = (randn(batch, steps, IN_DIM) * scale).to(dtype).requires_grad_()
        self.backward_inputs = ((randn(batch, steps, IN_DIM) * scale).to(dtype).requires_grad_()
                                if with_backward_inputs else None)
        self.weights = [(randn(*shape) * 0.6).to(dtype).requires_grad_() for shape in (
            (2, 4 * LSTM_DIM, IN_DIM), (2, 4 * LSTM_DIM, PROJ_DIM), (2, 4 * LSTM_DIM), (2, PROJ_DIM, LSTM_DIM))]
        self.initial = None
        if with_initial:
            self.initial = ((randn(2, batch, PROJ_DIM) * 0.5).to(dtype).requires_grad_(),
                            (randn(2, batch, LSTM_DIM) * 2).to(dtype).requires_grad_())
        self.loss_weights = [randn(*shape).to(dtype) for shape in (
            (batch, steps, 2 * PROJ_DIM), (2, batch, PROJ_DIM), (2, batch, LSTM_DIM))]

    def leaves(self) -> list[torch.Tensor]:
        extra = [self.backward_inputs] if self.backward_inputs is not None else []
        return [self.inputs, *extra, *self.weights, *(self.initial or ())]

    def packing(self) -> SentencePacking:
        return SentencePacking(self.lengths, self.steps, reverse_backward=self.backward_inputs is None)

    def run(self, driver_class: type, clips: tuple[float | None, float | None], loss_uses: str = "all",
            options: ElmoRuntimeOptions | None = None):
        """The layer through `driver_class`: `(outputs (B, T, 2P), final (h, c), gradients of leaves())`. The loss
        uses the outputs and the final state (`"all"`), or only the final cells (`"final_c"`)."""
        packing = self.packing()
        x = packing.pack(self.inputs, self.backward_inputs)
        driver = driver_class(options or ElmoRuntimeOptions(), clips)
        packed, final = driver.run_layer(x, packing, LayerWeights(*self.weights), self.initial, True, {})
        outputs = packing.unpack(packed, self.steps)
        output_weight, h_weight, c_weight = self.loss_weights
        loss = (final[1] * c_weight).sum()
        if loss_uses == "all":
            loss = loss + (outputs * output_weight).sum() + (final[0] * h_weight).sum()
        gradients = torch.autograd.grad(loss, self.leaves())
        return outputs.detach(), [f.detach() for f in final], gradients


def assert_same_as_autograd(case: LayerCase, clips, loss_uses: str = "all", zero: tuple[str, ...] = ()) -> None:
    """Outputs, final states and gradients of bptt equal autograd's; every gradient is nonzero somewhere (so it
    checks something) except those named in `zero`."""
    fast_outputs, fast_final, fast_gradients = case.run(BpttDriver, clips, loss_uses)
    outputs, final, gradients = case.run(AutogradDriver, clips, loss_uses)
    torch.testing.assert_close(fast_outputs, outputs, **TIGHT)
    torch.testing.assert_close(fast_final, final, **TIGHT)
    names = ["inputs", "backward_inputs", "input_weight", "recurrent_weight", "bias", "projection_weight",
             "initial_h", "initial_c"]
    if case.backward_inputs is None:
        names.remove("backward_inputs")
    for name, fast, reference in zip(names, fast_gradients, gradients):
        assert (reference.abs().max() > 0) != (name in zero), name
        torch.testing.assert_close(fast, reference, **TIGHT, msg=lambda m, name=name: f"{name}: {m}")


def cells_and_outputs(case: LayerCase, clips) -> tuple[torch.Tensor, torch.Tensor]:
    packing = case.packing()
    x = packing.pack(case.inputs, case.backward_inputs)
    with torch.no_grad():
        output, cells = BpttLayer.apply(x, *case.weights, *(case.initial or (None, None)), packing, *clips)
    return cells, output


PACKED = [7, 3, 12, 1, 5, 12, 2, 9]  # several sentences per row: resets inside rows


def test_clips_active_with_resets_and_initial_state():
    case = LayerCase(PACKED, torch.float64, scale=3.0)
    clips = (1.5, 0.4)
    cells, output = cells_and_outputs(case, clips)
    # Both clamps bind somewhere, and not everywhere: the masks are tested both ways.
    assert (cells.abs() == clips[0]).any() and (cells.abs() < clips[0]).any()
    assert (output.abs() == clips[1]).any() and (output.abs() < clips[1]).any()
    assert_same_as_autograd(case, clips)


def test_clip_gradients_pass_at_the_clip_value_itself():
    # torch.clamp's gradient passes where min <= x <= max, bounds included. Zero inputs, no initial state and an
    # identity projection make step 0's cells and outputs exactly what the formulas below give, so the clips
    # can be set to a value the clamped tensors reach exactly (and exceed elsewhere: strictly binding too).
    case = LayerCase([3, 2, 3], torch.float64, seed=11, with_initial=False)
    with torch.no_grad():
        case.inputs.zero_()
        case.weights[3].copy_(torch.eye(PROJ_DIM, LSTM_DIM).expand(2, -1, -1))
        input_gate, _, candidate, output_gate = case.weights[2][0].chunk(4)
        cell = torch.sigmoid(input_gate) * torch.tanh(candidate)
        clips = (cell[0].abs().item(), (torch.sigmoid(output_gate) * torch.tanh(cell))[1].abs().item())
    cells, output = cells_and_outputs(case, clips)
    assert (cells[0, 0, :, 0].abs() == clips[0]).all() and (output[0, 0, :, 1].abs() == clips[1]).all()
    assert (cells.abs() == clips[0]).sum() > cells.shape[2] and (output.abs() == clips[1]).sum() > output.shape[2]
    assert_same_as_autograd(case, clips, zero=("input_weight",))  # zero inputs


@pytest.mark.parametrize("with_initial", [True, False])
def test_no_clips(with_initial):
    case = LayerCase(PACKED, torch.float64, seed=1, with_initial=with_initial)
    assert_same_as_autograd(case, (None, None))


def test_one_sentence_per_row_and_empty_sentences():
    # Equal lengths (one sentence per row, no reset after step 0) next to an empty sentence, which keeps its
    # initial state as its final state (its gradient then reaches the initial state directly).
    assert_same_as_autograd(LayerCase([4, 4, 0, 4], torch.float64, seed=2, scale=2.0), (2.0, 0.8))


def test_backward_inputs_given():
    case = LayerCase([5, 2, 8, 3, 3], torch.float64, seed=3, scale=2.0, with_backward_inputs=True)
    assert_same_as_autograd(case, (2.0, 0.8))


def test_loss_on_the_final_cells_only():
    # The outputs get no gradient at all (autograd hands the backward None for them).
    assert_same_as_autograd(LayerCase(PACKED, torch.float64, seed=4), (2.0, 0.8), loss_uses="final_c")


@pytest.mark.parametrize("use_onednn", [True, False])
def test_float32_gradients_within_float32_rounding(use_onednn, monkeypatch):
    # float32 on CPU takes oneDNN for the matmuls (where the build has it; here even for these small ones) and
    # tanh through a sigmoid.
    monkeypatch.setattr(lstm_elmo, "ONEDNN_MIN_MULTIPLY_ADDS", 0)
    onednn_calls = []
    real_linear = lstm_elmo.inference_linear
    monkeypatch.setattr(lstm_elmo, "inference_linear", lambda *args: onednn_calls.append(1) or real_linear(*args))
    case64 = LayerCase(PACKED, torch.float64, seed=5, scale=3.0)
    case32 = LayerCase(PACKED, torch.float32, seed=5, scale=3.0)
    clips = (1.5, 0.4)
    _, _, exact = case64.run(AutogradDriver, clips)
    _, _, autograd32 = case32.run(AutogradDriver, clips)
    assert not onednn_calls
    _, _, fast32 = case32.run(BpttDriver, clips, options=ElmoRuntimeOptions(use_onednn=use_onednn))
    assert bool(onednn_calls) == (use_onednn and lstm_elmo.onednn_applies(case32.inputs[0].detach(),
                                                                          case32.weights[0][0].detach()))
    for fast, reference, truth in zip(fast32, autograd32, exact):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
        # No further from the float64 gradient than float32 autograd itself is (up to a small factor).
        assert (fast.double() - truth).abs().max() <= 4 * (reference.double() - truth).abs().max() + 1e-6


def test_gradcheck_tiny_layer():
    case = LayerCase([3, 1, 2], torch.float64, seed=6, scale=2.0)
    packing = case.packing()
    clips = (1.5, 0.6)

    def layer(inputs, input_weight, recurrent_weight, bias, projection_weight, initial_h, initial_c):
        x = packing.pack(inputs)
        return BpttLayer.apply(x, input_weight, recurrent_weight, bias, projection_weight, initial_h, initial_c,
                               packing, *clips)

    cells, output = cells_and_outputs(case, clips)
    assert (cells.abs() == clips[0]).any() and (output.abs() == clips[1]).any()
    leaves = [case.inputs, *case.weights, *case.initial]
    assert torch.autograd.gradcheck(layer, leaves, eps=1e-6, atol=1e-7)


def test_select_driver_trains_through_bptt_unless_autograd_is_chosen():
    x = torch.zeros(2, 1, 1, 3)
    assert isinstance(select_driver(x, True, ElmoRuntimeOptions(), (None, None)), BpttDriver)
    assert isinstance(select_driver(x, True, ElmoRuntimeOptions(lstm_backend="eager"), (None, None)), BpttDriver)
    assert isinstance(select_driver(x, True, ElmoRuntimeOptions(lstm_backend="autograd"), (None, None)),
                      AutogradDriver)
    assert not isinstance(select_driver(x, False, ElmoRuntimeOptions(), (None, None)), BpttDriver)


# ------------------------------------------------------------------------------------------------- end to end
def randomize(module: torch.nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)


def gradients_by_backend(model: torch.nn.Module, encoder: ElmoBiLstm, run, leaves: list[torch.Tensor]) -> dict:
    """`run()`'s loss and the gradients of the model's parameters and `leaves`, with `encoder` on the default
    backend (`"auto"`: bptt when training) and on `"autograd"`."""
    results = {}
    for backend in ("auto", "autograd"):
        encoder.runtime_options = ElmoRuntimeOptions(lstm_backend=backend)
        loss = run()
        names, tensors = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
        gradients = torch.autograd.grad(loss, [*tensors, *leaves], allow_unused=True)
        results[backend] = [loss.detach(), *gradients]
    return dict(results, names=["loss", *names, *(f"leaf{i}" for i in range(len(leaves)))])


def assert_backends_agree(results: dict) -> None:
    for name, fast, reference in zip(results["names"], results["auto"], results["autograd"]):
        assert (fast is None) == (reference is None), name
        if reference is not None:
            torch.testing.assert_close(fast, reference, **TIGHT, msg=lambda m, name=name: f"{name}: {m}")


def test_bilstm_end_to_end_with_skip_connections(monkeypatch):
    cfg = tiny_config(lstm_dim=12, projection_dim=6, cell_clip=1.0, proj_clip=0.5, use_skip_connections=True)
    encoder = ElmoBiLstm(cfg).double()
    randomize(encoder, seed=7, scale=0.7)
    generator = torch.Generator().manual_seed(8)
    lengths = torch.tensor([6, 2, 9, 4, 1, 7])
    inputs = torch.randn(len(lengths), 10, cfg.projection_dim, generator=generator, dtype=torch.float64) * 2
    inputs.requires_grad_()
    state = (torch.randn(2, 2, len(lengths), 6, generator=generator, dtype=torch.float64).requires_grad_(),
             torch.randn(2, 2, len(lengths), 12, generator=generator, dtype=torch.float64).requires_grad_())
    weights = [torch.randn(len(lengths), 10, 12, generator=generator, dtype=torch.float64) for _ in range(2)]
    used = []
    real_select = select_driver

    def recording_select(*args):
        driver = real_select(*args)
        used.append(type(driver))
        return driver

    monkeypatch.setattr("hf_elmo.modeling_elmo.select_driver", recording_select)

    def run():
        outputs, final = encoder(inputs, lengths, state, return_state=True)
        return sum((o * w).sum() for o, w in zip(outputs, weights)) + final[0].sum() + (final[1] ** 2).sum()

    results = gradients_by_backend(encoder, encoder, run, [inputs, *state])
    assert used == [BpttDriver, AutogradDriver]
    assert_backends_agree(results)


def test_pretraining_model_end_to_end():
    cfg = tiny_config(lstm_dim=12, projection_dim=6, cell_clip=1.0, proj_clip=0.5, lm_vocab_size=11,
                      mix_dropout=0.0, dropout=0.0)
    model = ElmoForPreTraining(cfg).double().train()
    randomize(model, seed=9, scale=0.5)
    tokenizer = ElmoTokenizer()
    sentences = [["the", "cat", "sat", "down"], ["a", "dog"], ["yes"], ["it", "ran", "off", "to", "the", "park"]]
    enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(10)
    labels = torch.randint(0, cfg.lm_vocab_size, enc["attention_mask"].shape, generator=generator)
    state = (torch.randn(2, 2, 4, 6, generator=generator, dtype=torch.float64).requires_grad_(),
             torch.randn(2, 2, 4, 12, generator=generator, dtype=torch.float64).requires_grad_())

    def run():
        out = model(**enc, labels=labels, state=state)
        return out.loss + 0.1 * out.state[0].sum() + 0.1 * out.state[1].sum()

    assert_backends_agree(gradients_by_backend(model, model.elmo.encoder, run, list(state)))
