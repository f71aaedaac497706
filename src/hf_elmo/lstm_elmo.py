"""
ELMo's LSTM: one cell step, one way of packing sentences into rows, and the drivers that run them.

Shapes: B = sentences, T = steps per sentence (padded), R = packed rows, S = packed steps, k = steps per chunk,
P = projection size, H = LSTM cell size, In = input size. Direction axis: 0 = forward, 1 = backward.

The pieces, in the order a layer runs them:

- `SentencePacking` packs a batch's sentences back to back into R rows of S steps (first-fit decreasing), the
  backward stream holding each sentence reversed, so both directions step forward together and no step computes
  padding. Where sentences start and end is kept once, per sentence (row, first step, last step); the drivers
  derive what they need from it chunk by chunk (a reset mask, initial states placed at first steps, final states
  gathered at last steps).
- `lstm_cell` is the cell's pointwise math (TensorFlow's `LSTMCell` with `num_proj`: gates in PyTorch's order
  input, forget, candidate, output, the forget bias folded into the bias, cell clipping), for either direction
  alone or both at once, in place or out of place. Each driver adds the recurrent matmul before it and the
  projection (and its clipping) after it.
- A driver runs the steps of one layer, chunk by chunk: `EagerDriver` (inference on any device: in place, the
  per-step matmuls on CPU through oneDNN with prepacked weights), `BpttDriver` (training: the whole layer as one
  autograd node, `BpttLayer`, with a hand-written backward through time), `AutogradDriver` (training's reference:
  no in-place updates, so autograd can record every step), `GraphDriver` (inference in fixed-shape chunks with no
  host-side control flow, captured as one CUDA graph per shape on GPUs and run eagerly elsewhere).
- `select_driver` is the one dispatcher, from the device, autograd and `ElmoRuntimeOptions.lstm_backend`; a new
  backend (a fused training kernel, say) is one more entry in `LSTM_DRIVERS`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

LSTM_BACKENDS = ("auto", "eager", "graphs", "autograd", "bptt")


@dataclass
class ElmoRuntimeOptions:
    """
    How a model runs, never what it computes (outputs agree within float rounding whatever is chosen). Set with
    `from_pretrained(path, **options)` or `model.set_runtime_options(**options)`; never stored in config.json.

    Args:
        lstm_backend: `"auto"` (CUDA graphs on GPUs, the eager loop elsewhere), `"eager"`, `"graphs"` (fixed-shape
            chunks; captured only on CUDA), `"bptt"` or `"autograd"`. Whenever gradients are recorded (training)
            the LSTM runs `"bptt"`, a whole layer as one autograd node with a hand-written backward through time,
            unless this is `"autograd"`: the plain step loop recorded by autograd, slower, kept as the reference.
        prepack_cpu_weights: On CPU in float32 inference, keep a copy of the LSTM's per-step weights in oneDNN's
            blocked layout (1.3-1.4x faster for Original, for 168 MB more memory).
        use_onednn: Run float32 CPU matmuls (inference, and the larger ones of `"bptt"` training) through oneDNN
            rather than torch's default BLAS.
        cnn_chunk_words: Words per character-CNN call: bounds the (words, filters, positions) activations.
        input_chunk_rows: Packed rows x steps whose LSTM input projections are one GEMM (eager driver).
        graph_steps: Steps per chunk of the graph driver (one captured graph each).
        graph_row_multiple: The graph driver pads rows to a multiple of this, so batches of similar size share graphs.
    """

    lstm_backend: str = "auto"
    prepack_cpu_weights: bool = True
    use_onednn: bool = True
    cnn_chunk_words: int = 512
    input_chunk_rows: int = 256
    graph_steps: int = 8
    graph_row_multiple: int = 8

    def __post_init__(self) -> None:
        if self.lstm_backend not in LSTM_BACKENDS:
            raise ValueError(f"lstm_backend must be one of {LSTM_BACKENDS}, got {self.lstm_backend!r}")
        for name in ("cnn_chunk_words", "input_chunk_rows", "graph_steps", "graph_row_multiple"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


# ------------------------------------------------------------------------------------------- CPU matmuls (oneDNN)
_onednn_works: bool | None = None


def _onednn_linear_works() -> bool:
    """Whether torch's oneDNN linear kernel exists in this build and agrees with `F.linear` (checked once)."""
    global _onednn_works
    if _onednn_works is None:
        try:
            x, weight, bias = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)
            got = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
            _onednn_works = bool(torch.allclose(got, F.linear(x, weight, bias), atol=1e-5))
        except Exception:  # an op missing from this build, or a CPU oneDNN does not support
            _onednn_works = False
    return _onednn_works


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `inference_linear(x, weight)` would go through oneDNN (CPU, float32, no autograd, 2-D, contiguous)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32 == weight.dtype
        and x.dim() == 2
        and x.is_contiguous()
        and weight.is_contiguous()
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and torch.backends.mkldnn.is_available()
        and _onednn_linear_works()
    )


def inference_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, use_onednn: bool = True
) -> torch.Tensor:
    """
    `F.linear` for inference: `(N, In)` x `(Out, In)` (+ `(Out,)`) -> `(N, Out)`.

    On CPU in float32 this calls oneDNN's matmul rather than torch's default BLAS: for the LSTM's shapes (a few
    dozen rows against a 512 x 16384 weight) oneDNN ran at 1.4-2.8x MKL's speed on the benchmark's AMD machine
    (`benchmarks/README.md`). Anything else (autograd, other devices and dtypes) takes `F.linear`. `weight`
    may also be a copy prepacked by `prepack_weight`.
    """
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    if use_onednn and onednn_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class RuntimeCache(dict):
    """A layer's tensors derived from its weights (oneDNN-prepacked copies, captured CUDA graphs): never copied
    or pickled (oneDNN's opaque tensors cannot be, graphs belong to these very tensors); a copied or unpickled
    model derives its own on first use, and moving or casting the weights clears it."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


def prepack_weight(weight: torch.Tensor, like: torch.Tensor, cache: RuntimeCache, key: str) -> torch.Tensor:
    """
    `weight` `(Out, In)` in oneDNN's own blocked layout, for repeated `inference_linear(x, ...)` calls with inputs
    like `like`; `weight` itself where oneDNN does not apply. The copy is kept in `cache[key]` until `weight`
    changes (a new tensor, or an in-place update, which bumps its version).

    Without it oneDNN re-lays out the weight on every call: for the LSTM's per-step matmuls that is most of their
    time (a 512 x 16384 weight against ~30 rows), at the price of one more copy of the weights in memory.
    """
    if not onednn_applies(like, weight):
        return weight
    version = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cached = cache.get(key)
    if cached is None or cached[0] != version:
        cached = cache[key] = (version, torch.ops.mkldnn._reorder_linear_weight(weight))
        release_resident_pages(weight)
    return cached[1]


_PAGE_OUT = 21  # Linux's MADV_PAGEOUT (5.4+)


def release_resident_pages(tensor: torch.Tensor) -> None:
    """
    Ask the kernel to reclaim the memory pages wholly inside `tensor`'s storage (Linux; elsewhere nothing).

    Weights loaded from safetensors are copy-on-write mappings of the file: once a prepacked copy exists, the
    eager CPU loop never reads the originals again, and their pages are clean file pages the kernel can drop
    (160 MiB for Original) and read back from the file if anything touches them later. `MADV_PAGEOUT` never
    loses data: pages that were written to (weights changed in place) or are anonymous memory stay unless they
    can be swapped, so this is only ever a hint.
    """
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux") or tensor.numel() == 0:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        begin = tensor.data_ptr()
        start, end = -(-begin // page) * page, (begin + tensor.numel() * tensor.element_size()) // page * page
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(_PAGE_OUT))
    except (OSError, AttributeError, ValueError):  # no libc or no madvise: keep the pages
        pass


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place tanh as `2 * sigmoid(2x) - 1`: torch's CPU tanh is ~6x slower than its sigmoid; error < 2e-7 in
    float32 (not for half precision, where the subtraction cancels: see `lstm_cell`'s `fast_tanh`)."""
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


# --------------------------------------------------------------------------------------------------- the cell
def lstm_cell(
    gates: torch.Tensor,
    c: torch.Tensor,
    cell_clip: float | None,
    *,
    inplace: bool,
    fast_tanh: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The pointwise part of one LSTM step, for any leading shape (one direction `(R, ...)` or both `(2, R, ...)`).

    Args:
        gates: `(..., 4H)` pre-activations (input, recurrent and bias summed), in (input, forget, candidate,
            output) order. Overwritten when `inplace`.
        c: `(..., H)` previous cell, updated in place when `inplace`.
        fast_tanh: tanh through a sigmoid (`tanh_`): faster on CPU, for float32 only.
        out: `(..., H)` contiguous buffer for the result when `inplace` (required then).
    Returns:
        The cell output before the projection, `o * tanh(c_new)` `(..., H)`, and `c_new` `(..., H)`.
    """
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
    if not inplace:
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
        if cell_clip is not None:
            c = c.clamp(-cell_clip, cell_clip)
        return torch.sigmoid(output_gate) * torch.tanh(c), c
    tanh_inplace = tanh_ if fast_tanh else torch.Tensor.tanh_
    c.mul_(forget_gate.sigmoid_()).addcmul_(input_gate.sigmoid_(), tanh_inplace(candidate))
    if cell_clip is not None:
        c.clamp_(-cell_clip, cell_clip)
    return tanh_inplace(out.copy_(c)).mul_(output_gate.sigmoid_()), c


def _clip_(h: torch.Tensor, proj_clip: float | None) -> torch.Tensor:
    return h if proj_clip is None else h.clamp_(-proj_clip, proj_clip)


# ------------------------------------------------------------------------------------------------- the packing
class SentencePacking:
    """
    Where each sentence sits when a batch is packed into rows: sentence b occupies steps `offset[b] ..
    offset[b] + length[b] - 1` of row `row[b]` in both streams. The backward stream holds it reversed, or, with
    `reverse_backward=False`, holds a second input as it is given (a caller-made backward stream).

    `rows` and `steps` are padded up to multiples of `row_multiple` / `step_multiple` (the graph driver's fixed
    shapes); padding slots read a zero vector and are never read back.
    """

    def __init__(self, lengths: torch.Tensor, max_steps: int, row_multiple: int = 1, step_multiple: int = 1,
                 reverse_backward: bool = True):
        self.device = device = lengths.device
        length_list = [int(n) for n in lengths.tolist()]
        batch = len(length_list)
        capacity = max(length_list, default=0)
        order = sorted(range(batch), key=lambda b: -length_list[b])  # first-fit decreasing
        fill: list[int] = []
        row, offset = [0] * batch, [0] * batch
        for b in order:
            n = length_list[b]
            for r, used in enumerate(fill):
                if used + n <= capacity:
                    break
            else:
                r = len(fill)
                fill.append(0)
            row[b], offset[b] = r, fill[r]
            fill[r] += n
        self.batch = batch
        self.rows = -(-max(len(fill), 1) // row_multiple) * row_multiple
        self.steps = -(-max(capacity, 1) // step_multiple) * step_multiple
        # The one record of where sentences start and end (empty sentences have neither), on the host ...
        nonempty = [b for b in range(batch) if length_list[b] > 0]
        self._sentences = nonempty
        self._rows = [row[b] for b in nonempty]
        self._first = [offset[b] for b in nonempty]
        self._last = [offset[b] + length_list[b] - 1 for b in nonempty]
        self.start_steps = frozenset(self._first)
        # ... and as a (S, R, 1) mask, True where a sentence starts (its state is reset there).
        self.resets = torch.zeros(self.steps, self.rows, 1, dtype=torch.bool, device=device)
        self.resets[self._as_tensor(self._first), self._as_tensor(self._rows)] = True
        self._chunk_events: dict[tuple[str, int, int], tuple[torch.Tensor, ...]] = {}

        # Packed slot (d, s, r) <- row of the flattened inputs `(B * T, P)` (then the backward inputs, if given),
        # or the zero row after them.
        rows_t, offsets_t, lengths_t = (self._as_tensor(v) for v in (row, offset, length_list))
        t = torch.arange(max_steps, device=device)
        valid = t[None, :] < lengths_t[:, None]  # (B, T)
        step_of = offsets_t[:, None] + t[None, :]  # packed step of (b, t) in the forward stream
        backward_step = offsets_t[:, None] + lengths_t[:, None] - 1 - t[None, :] if reverse_backward else step_of
        token = torch.arange(batch, device=device)[:, None] * max_steps + t[None, :]
        n_tokens = batch * max_steps * (1 if reverse_backward else 2)
        source = torch.full((2, self.steps, self.rows), n_tokens, dtype=torch.long, device=device)
        r = rows_t[:, None].expand(-1, max_steps)
        source[0, step_of[valid], r[valid]] = token[valid]
        source[1, backward_step[valid], r[valid]] = token[valid] + (0 if reverse_backward else batch * max_steps)
        self.source_index = source.view(-1)
        # Output (b, t) <- packed flat rows of (2 * S * R, P), interleaved (forward, backward) so that one gather
        # gives (B, T, 2, P), i.e. (B, T, 2P); padding reads row 0 and is zeroed.
        self.valid = valid
        forward_index = torch.where(valid, step_of * self.rows + r, 0)
        backward_index = torch.where(valid, (self.steps + backward_step) * self.rows + r, 0)
        self.output_index = torch.stack([forward_index, backward_index], dim=-1).view(-1)

    def _as_tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def pack(self, inputs: torch.Tensor, backward_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, T, P)` inputs (and the backward stream's, if given) -> packed `(2, S, R, P)`."""
        dim = inputs.shape[-1]
        parts = [inputs.reshape(-1, dim)]
        if backward_inputs is not None:
            parts.append(backward_inputs.reshape(-1, dim))
        flat = torch.cat([*parts, inputs.new_zeros(1, dim)])
        return flat.index_select(0, self.source_index).view(2, self.steps, self.rows, dim)

    def unpack(self, packed: torch.Tensor, steps: int) -> torch.Tensor:
        """Packed `(2, S, R, P)` -> `(B, T, 2P)` `[forward, backward]`, zero at padding."""
        flat = packed.reshape(-1, packed.shape[-1])
        both = flat.index_select(0, self.output_index).view(self.batch, steps, 2 * packed.shape[-1])
        return both.masked_fill_(~self.valid[..., None], 0.0)

    def _events(self, kind: str, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """(sentence, row, step - start) of the sentences whose first (`kind="first"`) or last step lies in
        `[start, stop)`, as device tensors built from host lists (no device-to-host synchronisation)."""
        key = (kind, start, stop)
        if key not in self._chunk_events:
            steps = self._first if kind == "first" else self._last
            chosen = [i for i, s in enumerate(steps) if start <= s < stop]
            self._chunk_events[key] = (self._as_tensor([self._sentences[i] for i in chosen]),
                                       self._as_tensor([self._rows[i] for i in chosen]),
                                       self._as_tensor([steps[i] - start for i in chosen]))
        return self._chunk_events[key]

    def place_initial(self, state: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Per-sentence `(2, B, D)` -> `(2, stop - start, R, D)`: each sentence's state at its first step (if that
        falls in the chunk), zero elsewhere."""
        sentence, row, step = self._events("first", start, stop)
        placed = state.new_zeros(2, stop - start, self.rows, state.shape[-1])
        placed[:, step, row] = state[:, sentence]
        return placed

    def collect_final(self, final: torch.Tensor, history: torch.Tensor, start: int) -> torch.Tensor:
        """Copy into `final` `(2, B, D)` the values at their last step of the sentences ending in the chunk
        `history` `(2, k, R, D)` (starting at step `start`); out of place when autograd records."""
        sentence, row, step = self._events("last", start, start + history.shape[1])
        values = history[:, step, row]
        if torch.is_grad_enabled():
            return final.index_copy(1, sentence, values)
        return final.index_copy_(1, sentence, values)


# ------------------------------------------------------------------------------------------------- the drivers
@dataclass
class LayerWeights:
    """One layer's weights in the run dtype, `nn.Linear` layout: `input` `(2, 4H, In)`, `recurrent`
    `(2, 4H, P)`, `bias` `(2, 4H)`, `projection` `(2, P, H)`. `are_parameters` is False when they are converted
    temporaries (another dtype), whose addresses a captured graph must not keep."""

    input: torch.Tensor
    recurrent: torch.Tensor
    bias: torch.Tensor
    projection: torch.Tensor
    are_parameters: bool = True


class LstmDriver:
    """Runs one layer over a packing, chunk by chunk; subclasses define the chunks and the steps."""

    row_multiple = 1
    step_multiple = 1

    def __init__(self, options: ElmoRuntimeOptions, clips: tuple[float | None, float | None]):
        self.options = options
        self.cell_clip, self.proj_clip = clips

    def chunk_steps(self, packing: SentencePacking) -> int:
        raise NotImplementedError

    def run_layer(
        self,
        x: torch.Tensor,
        packing: SentencePacking,
        weights: LayerWeights,
        initial: tuple[torch.Tensor, torch.Tensor] | None,
        return_state: bool,
        cache: dict,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """
        Packed `(2, S, R, In)` -> packed outputs `(2, S, R, P)` and, if `return_state`, each sentence's final
        `(h, c)` `(2, B, P)` / `(2, B, H)` (an empty sentence keeps its initial state, or zero).
        `cache` is the layer's own store for derived data (prepacked weights, captured graphs).
        """
        steps, rows = x.shape[1], x.shape[2]
        proj_dim, lstm_dim = weights.projection.shape[1:]
        h = x.new_zeros(2, rows, proj_dim)
        c = x.new_zeros(2, rows, lstm_dim)
        final = self.final_before_any_end(x, packing, initial, proj_dim, lstm_dim) if return_state else None
        k = self.chunk_steps(packing)
        outputs = []
        self.prepare(x, weights, cache)
        for start in range(0, steps, k):
            stop = min(start + k, steps)
            start_h = start_c = None
            if initial is not None and packing.start_steps.intersection(range(start, stop)):
                start_h = packing.place_initial(initial[0], start, stop)
                start_c = packing.place_initial(initial[1], start, stop)
            out, cells, h, c = self.run_chunk(x[:, start:stop], packing, start, weights, h, c, start_h, start_c,
                                              return_state)
            outputs.append(out)
            if return_state:
                final = (packing.collect_final(final[0], out, start), packing.collect_final(final[1], cells, start))
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return output, final

    @staticmethod
    def final_before_any_end(
        x: torch.Tensor, packing: SentencePacking, initial: tuple[torch.Tensor, torch.Tensor] | None,
        proj_dim: int, lstm_dim: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-sentence final `(h, c)` `(2, B, P)` / `(2, B, H)` before `collect_final` fills in the sentences'
        last steps: a copy of the initial state (what an empty sentence keeps), or zero."""
        if initial is not None:
            return initial[0].clone(), initial[1].clone()
        return x.new_zeros(2, packing.batch, proj_dim), x.new_zeros(2, packing.batch, lstm_dim)

    def prepare(self, x: torch.Tensor, weights: LayerWeights, cache: dict) -> None:
        """Set up per-call state (prepacked weights, graphs) before the first chunk."""

    def run_chunk(self, x, packing, start, weights, h, c, start_h, start_c, return_state):
        """`x` `(2, k, R, In)` -> outputs `(2, k, R, P)`, cells `(2, k, R, H)` (if `return_state`, else None), and
        the state `(h, c)` after the chunk."""
        raise NotImplementedError

    @staticmethod
    def input_projection(x: torch.Tensor, weights: LayerWeights) -> torch.Tensor:
        """`(2, k, R, In)` -> `(2, k, R, 4H)`: every step's input contribution plus the bias, one GEMM per direction."""
        k, rows, in_dim = x.shape[1:]
        pre = torch.baddbmm(weights.bias[:, None], x.reshape(2, k * rows, in_dim), weights.input.transpose(1, 2))
        return pre.view(2, k, rows, -1)

    @staticmethod
    def reset(h, c, resets, start_h, start_c, inplace: bool):
        """Rows where a sentence starts take its initial state (zero without one). `resets` `(R, 1)` bool,
        `start_h` / `start_c` `(2, R, D)` zero outside those rows."""
        if inplace:
            h.masked_fill_(resets, 0.0)
            c.masked_fill_(resets, 0.0)
            if start_h is not None:
                h.add_(start_h)
                c.add_(start_c)
            return h, c
        h, c = h.masked_fill(resets, 0.0), c.masked_fill(resets, 0.0)
        if start_h is not None:
            h, c = h + start_h, c + start_c
        return h, c


class EagerDriver(LstmDriver):
    """
    Inference on any device, in place. The input projections of `input_chunk_rows // R` steps are one GEMM per
    direction; each step's recurrent and projection matmuls run per direction so that, on CPU in float32, they
    go through oneDNN with weights prepacked once (`prepack_cpu_weights`).
    """

    def chunk_steps(self, packing: SentencePacking) -> int:
        return max(1, min(packing.steps, self.options.input_chunk_rows // packing.rows))

    def prepare(self, x, weights, cache):
        h_like = x.new_empty(x.shape[2], weights.recurrent.shape[2])
        c_like = x.new_empty(x.shape[2], weights.projection.shape[2])
        self.recurrent, self.projection = list(weights.recurrent), list(weights.projection)
        if self.options.prepack_cpu_weights and self.options.use_onednn:
            self.recurrent = [prepack_weight(w, h_like, cache, f"recurrent{d}") for d, w in enumerate(weights.recurrent)]
            self.projection = [prepack_weight(w, c_like, cache, f"projection{d}")
                               for d, w in enumerate(weights.projection)]
        self.fast_tanh = x.device.type == "cpu" and x.dtype == torch.float32
        self.scratch = x.new_empty(x.shape[2], weights.projection.shape[2])

    def run_chunk(self, x, packing, start, weights, h, c, start_h, start_c, return_state):
        use_onednn = self.options.use_onednn
        k, rows, in_dim = x.shape[1:]
        pre = [inference_linear(x[d].reshape(-1, in_dim), weights.input[d], weights.bias[d], use_onednn).view(
            k, rows, -1) for d in (0, 1)]
        output = x.new_empty(2, k, rows, h.shape[-1])
        cells = x.new_empty(2, k, rows, c.shape[-1]) if return_state else None
        for t in range(k):
            if start + t in packing.start_steps:
                self.reset(h, c, packing.resets[start + t], None if start_h is None else start_h[:, t],
                           None if start_c is None else start_c[:, t], inplace=True)
            for d in (0, 1):
                gates = pre[d][t].add_(inference_linear(h[d], self.recurrent[d], None, use_onednn))
                m, _ = lstm_cell(gates, c[d], self.cell_clip, inplace=True, fast_tanh=self.fast_tanh,
                                 out=self.scratch)
                new_h = _clip_(inference_linear(m, self.projection[d], None, use_onednn), self.proj_clip)
                output[d, t] = new_h
                h[d] = new_h
            if cells is not None:
                cells[:, t] = c
        return output, cells, h, c


class AutogradDriver(LstmDriver):
    """Training: the same steps without in-place updates, so autograd records them; one chunk per layer."""

    def chunk_steps(self, packing: SentencePacking) -> int:
        return packing.steps

    def run_chunk(self, x, packing, start, weights, h, c, start_h, start_c, return_state):
        pre = self.input_projection(x, weights)
        recurrent_t, projection_t = weights.recurrent.transpose(1, 2), weights.projection.transpose(1, 2)
        outputs, cells = [], []
        for t in range(x.shape[1]):
            if start + t in packing.start_steps:
                h, c = self.reset(h, c, packing.resets[start + t], None if start_h is None else start_h[:, t],
                                  None if start_c is None else start_c[:, t], inplace=False)
            m, c = lstm_cell(torch.baddbmm(pre[:, t], h, recurrent_t), c, self.cell_clip, inplace=False)
            h = torch.bmm(m, projection_t)
            if self.proj_clip is not None:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            outputs.append(h)
            cells.append(c)
        return torch.stack(outputs, dim=1), (torch.stack(cells, dim=1) if return_state else None), h, c


class BpttDriver(LstmDriver):
    """
    Training: a whole layer (both directions) as one autograd node with a hand-written backward through time
    (`BpttLayer`), instead of the ~15 nodes per step that `AutogradDriver` records. Same math, same gradients
    (within float rounding); `AutogradDriver` stays the reference (`lstm_backend="autograd"`).
    """

    def run_layer(self, x, packing, weights, initial, return_state, cache):
        proj_dim, lstm_dim = weights.projection.shape[1:]
        initial_h, initial_c = initial if initial is not None else (None, None)
        output, cells = BpttLayer.apply(x, weights.input, weights.recurrent, weights.bias, weights.projection,
                                        initial_h, initial_c, packing, self.cell_clip, self.proj_clip,
                                        self.options.use_onednn)
        final = None
        if return_state:
            final_h, final_c = self.final_before_any_end(x, packing, initial, proj_dim, lstm_dim)
            final = (packing.collect_final(final_h, output, 0), packing.collect_final(final_c, cells, 0))
        return output, final


def _state_before(step: int, history: torch.Tensor, initial: torch.Tensor | None, packing: SentencePacking,
                  zero: torch.Tensor) -> torch.Tensor:
    """
    The state `(2, R, D)` that `step` starts from: the previous step's `history[:, step - 1]` (zero at step 0),
    except in the rows where a sentence starts at `step`, which take its `initial` `(2, B, D)` state or zero.
    """
    state = history[:, step - 1] if step > 0 else zero
    if step in packing.start_steps:
        sentence, row, _ = packing._events("first", step, step + 1)
        state = state.clone()
        if initial is None:
            state.index_fill_(1, row, 0.0)
        else:
            state.index_copy_(1, row, initial.index_select(1, sentence))
    return state


def _clamp_recording_(value: torch.Tensor, clip: float, clipped: torch.Tensor, scratch: torch.Tensor) -> None:
    """`value.clamp_(-clip, clip)`, first writing into the bool `clipped` where the gradient of `torch.clamp` stops
    (`|value| > clip`: it passes where `-clip <= value <= clip`, bounds included). `scratch` is shaped like
    `value`."""
    torch.gt(torch.abs(value, out=scratch), clip, out=clipped)
    value.clamp_(-clip, clip)


# Multiply-adds per direction below which a matmul stays with bmm: oneDNN's per-call overhead outweighs its faster
# kernels for small models (at H 64, P 16, 8 rows the layer's backward took twice as long through oneDNN).
ONEDNN_MIN_MULTIPLY_ADDS = 1 << 20


def _use_onednn(multiply_adds: int, like: torch.Tensor, weight: torch.Tensor, use_onednn: bool) -> bool:
    """Whether a matmul of `like` `(N, In)` and `weight` `(Out, In)` (or tensors of their kinds) goes through
    oneDNN: CPU, float32, contiguous, large enough."""
    return use_onednn and multiply_adds >= ONEDNN_MIN_MULTIPLY_ADDS and onednn_applies(like, weight)


class _DirectionLinear:
    """
    `x @ weight^T` for both directions at once: `x` `(2, N, In)`, `weight` `(2, Out, In)` -> `(2, N, Out)`.

    On CPU in float32 it is one oneDNN call per direction (`inference_linear`), the weight copied into oneDNN's
    own layout first when `prepack` (for the per-step matmuls; the weights change with every training step, so
    the copy lives for one layer call): on the benchmark's AMD machine oneDNN ran these shapes at 2-3x the
    speed of MKL's bmm. Elsewhere, and for small matmuls, it is one bmm.
    """

    def __init__(self, weight: torch.Tensor, like: torch.Tensor, use_onednn: bool, prepack: bool):
        self.weight = weight
        self.per_direction = [w.contiguous() for w in weight]
        self.onednn = _use_onednn(like.shape[0] * weight.shape[1] * weight.shape[2], like, self.per_direction[0],
                                  use_onednn)
        if self.onednn and prepack:
            self.per_direction = [torch.ops.mkldnn._reorder_linear_weight(w) for w in self.per_direction]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
        """`x @ weight^T (+ bias (2, Out))`, written into `out` (added to it if `accumulate`) or returned."""
        if not self.onednn:
            weight_t = self.weight.transpose(1, 2)
            if accumulate:
                return out.baddbmm_(x, weight_t)
            if bias is not None:
                return torch.baddbmm(bias[:, None], x, weight_t)
            return torch.bmm(x, weight_t, out=out)
        results = [inference_linear(x[d].contiguous(), self.per_direction[d], None if bias is None else bias[d])
                   for d in (0, 1)]
        if out is None:
            return torch.stack(results)
        for d in (0, 1):
            out[d].add_(results[d]) if accumulate else out[d].copy_(results[d])
        return out


def _weight_gradient(grad: torch.Tensor, inputs: torch.Tensor, use_onednn: bool) -> torch.Tensor:
    """
    `grad^T @ inputs` per direction: `grad` `(2, N, Out)`, `inputs` `(2, N, In)` -> `(2, Out, In)`, the gradient
    of a weight applied as `inputs @ weight^T` at all N rows. On CPU in float32 through oneDNN, after copying both
    operands transposed (oneDNN's linear reads its operands contiguous): faster there than MKL's bmm with a
    transposed operand (`_DirectionLinear`).
    """
    # inputs[0] stands in for both operands' transposed copies: contiguous, of the same dtype and device.
    if not _use_onednn(grad.shape[1] * grad.shape[2] * inputs.shape[2], inputs[0], inputs[0], use_onednn):
        return torch.bmm(grad.transpose(1, 2), inputs)
    return torch.stack([inference_linear(grad[d].t().contiguous(), inputs[d].t().contiguous()) for d in (0, 1)])


def _tanh_into(x: torch.Tensor, out: torch.Tensor, fast: bool) -> torch.Tensor:
    """`out = tanh(x)`; through a sigmoid when `fast` (`tanh_`: float32 on CPU, where torch's tanh is slow)."""
    return tanh_(out.copy_(x)) if fast else torch.tanh(x, out=out)


class BpttLayer(torch.autograd.Function):
    """
    One biLSTM layer over a packing, both directions at once, with backpropagation through time written out.

    Forward (`x` `(2, S, R, In)` -> outputs `(2, S, R, P)` and cells `(2, S, R, H)`): every step's input
    projection as one GEMM per direction, then per step the recurrent matmul, the cell, the projection and the
    clips. It keeps what the backward needs: the post-activation gates, the cells and their tanh, the clip masks
    and the outputs (whose previous step is the next step's recurrent input).

    Backward: per step only the pointwise derivatives and the two matmuls that carry the gradient back in time
    (through the projection and the recurrent weight); the weight, bias and input gradients are then a few GEMMs
    over all steps at once, where the autograd loop does two small weight-gradient GEMMs per step. Once
    differentiable (no gradients of gradients).

    Kept for the backward, per direction, step and row: 6H + P floats and H + P bools (with both clips).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, input_weight: torch.Tensor, recurrent_weight: torch.Tensor,
                bias: torch.Tensor, projection_weight: torch.Tensor, initial_h: torch.Tensor | None,
                initial_c: torch.Tensor | None, packing: SentencePacking, cell_clip: float | None,
                proj_clip: float | None, use_onednn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        _, steps, rows, in_dim = x.shape
        proj_dim, lstm_dim = projection_weight.shape[1:]
        flat_x = x.reshape(2, steps * rows, in_dim)
        gates = _DirectionLinear(input_weight, flat_x[0], use_onednn, prepack=False)(flat_x, bias=bias)
        gates = gates.view(2, steps, rows, 4 * lstm_dim)
        cells = x.new_empty(2, steps, rows, lstm_dim)
        tanh_cells = x.new_empty(2, steps, rows, lstm_dim)
        output = x.new_empty(2, steps, rows, proj_dim)
        mask = lambda dim: torch.empty(2, steps, rows, dim, dtype=torch.bool, device=x.device)  # noqa: E731
        cell_clipped = mask(lstm_dim) if cell_clip is not None else None
        proj_clipped = mask(proj_dim) if proj_clip is not None else None
        zero_h, zero_c = x.new_zeros(2, rows, proj_dim), x.new_zeros(2, rows, lstm_dim)
        m, cell_scratch, proj_scratch = torch.empty_like(zero_c), torch.empty_like(zero_c), torch.empty_like(zero_h)
        recurrent = _DirectionLinear(recurrent_weight, zero_h[0], use_onednn, prepack=True)
        projection = _DirectionLinear(projection_weight, m[0], use_onednn, prepack=True)
        fast_tanh = x.device.type == "cpu" and x.dtype == torch.float32
        for t in range(steps):
            h_prev = _state_before(t, output, initial_h, packing, zero_h)
            c_prev = _state_before(t, cells, initial_c, packing, zero_c)
            step_gates = recurrent(h_prev, out=gates[:, t], accumulate=True)
            step_gates[..., :2 * lstm_dim].sigmoid_()  # input and forget gates
            step_gates[..., 3 * lstm_dim:].sigmoid_()  # output gate
            input_gate, forget_gate, candidate, output_gate = step_gates.chunk(4, dim=-1)
            tanh_(candidate) if fast_tanh else candidate.tanh_()
            c = torch.mul(forget_gate, c_prev, out=cells[:, t]).addcmul_(input_gate, candidate)
            if cell_clip is not None:
                _clamp_recording_(c, cell_clip, cell_clipped[:, t], cell_scratch)
            torch.mul(_tanh_into(c, tanh_cells[:, t], fast_tanh), output_gate, out=m)
            h = projection(m, out=output[:, t])
            if proj_clip is not None:
                _clamp_recording_(h, proj_clip, proj_clipped[:, t], proj_scratch)
        ctx.packing, ctx.use_onednn = packing, use_onednn
        ctx.set_materialize_grads(False)
        # A state made under inference_mode (a previous batch's final state) cannot be saved as it is.
        initial_h, initial_c = (s.clone() if s is not None and s.is_inference() else s for s in (initial_h, initial_c))
        ctx.save_for_backward(x, input_weight, recurrent_weight, projection_weight, initial_h, initial_c, gates,
                              cells, tanh_cells, output, cell_clipped, proj_clipped)
        return output, cells

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor | None, grad_cells: torch.Tensor | None):
        (x, input_weight, recurrent_weight, projection_weight, initial_h, initial_c, gates, cells, tanh_cells,
         output, cell_clipped, proj_clipped) = ctx.saved_tensors
        packing = ctx.packing
        _, steps, rows, in_dim = x.shape
        proj_dim, lstm_dim = projection_weight.shape[1:]
        # Gradient with respect to each step's projection before its clip; starts as the outputs' own gradient.
        grad_projected = (grad_output.clone(memory_format=torch.contiguous_format) if grad_output is not None
                          else torch.zeros_like(output))
        grad_gates = torch.empty_like(gates)  # pre-activation
        grad_initial_h = torch.zeros_like(initial_h) if ctx.needs_input_grad[5] else None
        grad_initial_c = torch.zeros_like(initial_c) if ctx.needs_input_grad[6] else None
        carry_h, carry_c = x.new_zeros(2, rows, proj_dim), x.new_zeros(2, rows, lstm_dim)
        zero_c, grad_m, grad_c = torch.zeros_like(carry_c), torch.empty_like(carry_c), torch.empty_like(carry_c)
        one = x.new_ones(())
        # Per step: dL/dm = dL/dh @ projection, dL/dh_prev = dL/dgates @ recurrent.
        projection_back = _DirectionLinear(projection_weight.transpose(1, 2), carry_h[0], ctx.use_onednn, prepack=True)
        recurrent_back = _DirectionLinear(recurrent_weight.transpose(1, 2), grad_gates[0, 0], ctx.use_onednn,
                                          prepack=True)
        for t in reversed(range(steps)):
            grad_h = grad_projected[:, t].add_(carry_h)
            if proj_clipped is not None:
                grad_h.masked_fill_(proj_clipped[:, t], 0.0)
            projection_back(grad_h, out=grad_m)
            step_gates, step_grad = gates[:, t], grad_gates[:, t]
            input_gate, forget_gate, candidate, output_gate = step_gates.chunk(4, dim=-1)
            grad_input, grad_forget, grad_candidate, grad_output_gate = step_grad.chunk(4, dim=-1)
            tanh_c = tanh_cells[:, t]
            # dL/dc: through m = o * tanh(c), from the next step, from the cells' own gradient; then the clip.
            torch.addcmul(one, tanh_c, tanh_c, value=-1, out=grad_c).mul_(grad_m).mul_(output_gate).add_(carry_c)
            if grad_cells is not None:
                grad_c.add_(grad_cells[:, t])
            if cell_clipped is not None:
                grad_c.masked_fill_(cell_clipped[:, t], 0.0)
            # Activation derivatives: s * (1 - s) for the sigmoid gates, 1 - g^2 for the tanh candidate.
            torch.addcmul(step_gates, step_gates, step_gates, value=-1, out=step_grad)
            torch.addcmul(one, candidate, candidate, value=-1, out=grad_candidate)
            grad_input.mul_(grad_c).mul_(candidate)
            grad_forget.mul_(grad_c).mul_(_state_before(t, cells, initial_c, packing, zero_c))
            grad_candidate.mul_(grad_c).mul_(input_gate)
            grad_output_gate.mul_(grad_m).mul_(tanh_c)
            torch.mul(grad_c, forget_gate, out=carry_c)
            recurrent_back(step_grad, out=carry_h)
            if t in packing.start_steps:  # the reset rows' previous state was their initial state (or zero)
                sentence, row, _ = packing._events("first", t, t + 1)
                for carry, grad_initial in ((carry_h, grad_initial_h), (carry_c, grad_initial_c)):
                    if grad_initial is not None:
                        grad_initial.index_copy_(1, sentence, carry.index_select(1, row))
                    carry.index_fill_(1, row, 0.0)

        flat_grad_gates = grad_gates.view(2, steps * rows, 4 * lstm_dim)
        grad_x = grad_input_weight = grad_recurrent_weight = grad_bias = grad_projection_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _DirectionLinear(input_weight.transpose(1, 2), flat_grad_gates[0], ctx.use_onednn, prepack=False)(
                flat_grad_gates).view(x.shape)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # Both weights that multiply into the gates in one GEMM: [input weight | recurrent weight] of
            # [x_t | h_(t-1)], the latter being the previous step's output or, where a sentence starts, its
            # initial state (or zero).
            h_prev = torch.cat([output.new_zeros(2, 1, rows, proj_dim), output[:, :-1]], dim=1)
            sentence, row, step = packing._events("first", 0, steps)
            h_prev[:, step, row] = 0.0 if initial_h is None else initial_h[:, sentence]
            gate_inputs = torch.cat([x, h_prev], dim=-1).view(2, steps * rows, in_dim + proj_dim)
            grad_input_weight, grad_recurrent_weight = _weight_gradient(
                flat_grad_gates, gate_inputs, ctx.use_onednn).split([in_dim, proj_dim], dim=-1)
        if ctx.needs_input_grad[3]:
            grad_bias = flat_grad_gates.sum(dim=1)
        if ctx.needs_input_grad[4]:
            m = torch.mul(gates[..., 3 * lstm_dim:], tanh_cells).view(2, steps * rows, lstm_dim)
            grad_projection_weight = _weight_gradient(grad_projected.view(2, steps * rows, proj_dim), m,
                                                      ctx.use_onednn)
        return (grad_x, grad_input_weight, grad_recurrent_weight, grad_bias, grad_projection_weight, grad_initial_h,
                grad_initial_c, None, None, None, None)


@dataclass
class _StaticBuffers:
    """Inputs and outputs of one graph chunk at a fixed shape; a captured graph reads and writes only these."""

    pre: torch.Tensor
    resets: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor
    output: torch.Tensor
    cells: torch.Tensor
    scratch: torch.Tensor
    start_h: torch.Tensor | None
    start_c: torch.Tensor | None


class GraphDriver(LstmDriver):
    """
    Fixed-shape chunks of `graph_steps` steps with nothing that depends on the batch's values or on host-side
    bookkeeping: resets are a mask applied at every step, initial states come in as tensors, results land in
    preallocated buffers. On CUDA each chunk is captured once per (rows, dtype, flags, weights) as a CUDA graph
    and replayed; elsewhere, and wherever capture fails, the same chunk runs eagerly.

    On a GPU each step is a dozen small kernels, so an eager step loop is bound by launch latency rather than by
    the GPU; a replayed graph launches them all at once.
    """

    capture_devices: tuple[str, ...] = ("cuda",)

    def __init__(self, options, clips):
        super().__init__(options, clips)
        self.row_multiple, self.step_multiple = options.graph_row_multiple, options.graph_steps

    def chunk_steps(self, packing: SentencePacking) -> int:
        return self.options.graph_steps

    def prepare(self, x, weights, cache):
        self.cache = cache.setdefault("graphs", GraphCache())
        self.capturable = (x.device.type in self.capture_devices and not self.cache.capture_failed
                           and weights.are_parameters)

    def _buffers(self, like: torch.Tensor, rows: int, lstm_dim: int, proj_dim: int, with_state: bool) -> tuple:
        # Buffers made in inference mode cannot be updated outside it (and the other way round).
        key = (like.device, like.dtype, self.options.graph_steps, rows, lstm_dim, proj_dim, with_state,
               torch.is_inference_mode_enabled())
        if key not in self.cache.buffers:
            k = self.options.graph_steps
            new = lambda *shape: like.new_zeros(shape)  # noqa: E731
            self.cache.buffers[key] = _StaticBuffers(
                pre=new(2, k, rows, 4 * lstm_dim), resets=torch.zeros(k, rows, 1, dtype=torch.bool, device=like.device),
                h=new(2, rows, proj_dim), c=new(2, rows, lstm_dim), output=new(2, k, rows, proj_dim),
                cells=new(2, k, rows, lstm_dim), scratch=new(2, rows, lstm_dim),
                start_h=new(2, k, rows, proj_dim) if with_state else None,
                start_c=new(2, k, rows, lstm_dim) if with_state else None,
            )
        return key, self.cache.buffers[key]

    def _steps(self, static: _StaticBuffers, weights: LayerWeights) -> Callable[[], None]:
        recurrent_t, projection_t = weights.recurrent.transpose(1, 2), weights.projection.transpose(1, 2)

        def run() -> None:
            h, c = static.h, static.c
            for t in range(static.pre.shape[1]):
                self.reset(h, c, static.resets[t], None if static.start_h is None else static.start_h[:, t],
                           None if static.start_c is None else static.start_c[:, t], inplace=True)
                gates = torch.baddbmm(static.pre[:, t], h, recurrent_t)
                m, _ = lstm_cell(gates, c, self.cell_clip, inplace=True, out=static.scratch)
                h.copy_(_clip_(torch.bmm(m, projection_t), self.proj_clip))
                static.output[:, t] = h
                static.cells[:, t] = c

        return run

    def run_layer(self, x, packing, weights, initial, return_state, cache):
        self.state_in_graph = initial is not None
        return super().run_layer(x, packing, weights, initial, return_state, cache)

    def run_chunk(self, x, packing, start, weights, h, c, start_h, start_c, return_state):
        k, rows = x.shape[1:3]
        key, static = self._buffers(x, rows, c.shape[-1], h.shape[-1], self.state_in_graph)
        run = self._replay(key, static, weights) if self.capturable else None
        if run is None:
            run = self._steps(static, weights)
        if start == 0:
            static.h.zero_()
            static.c.zero_()
        torch.baddbmm(weights.bias[:, None], x.reshape(2, k * rows, -1), weights.input.transpose(1, 2),
                      out=static.pre.view(2, k * rows, -1))
        static.resets.copy_(packing.resets[start:start + k])
        if static.start_h is not None:
            if start_h is None:
                static.start_h.zero_()
                static.start_c.zero_()
            else:
                static.start_h.copy_(start_h)
                static.start_c.copy_(start_c)
        run()
        return static.output.clone(), (static.cells.clone() if return_state else None), static.h, static.c

    def _replay(self, key: tuple, static: _StaticBuffers, weights: LayerWeights) -> Callable[[], None] | None:
        """The captured chunk's replay for this shape and these weights, or None to run eagerly."""
        # A graph holds the weights' addresses: it stays valid for in-place updates, not for moved weights.
        graph_key = key + (weights.recurrent.data_ptr(), weights.projection.data_ptr(), self.cell_clip,
                           self.proj_clip)
        replay = self.cache.graphs.get(graph_key)
        if replay is None:
            try:
                replay = self.cache.capture(self._steps(static, weights), static.pre.device)
            except Exception as error:  # a driver or torch build that cannot capture: stay correct, run eagerly
                warnings.warn(f"CUDA graph capture of the ELMo LSTM failed ({error}); running it eagerly",
                              RuntimeWarning, stacklevel=6)
                self.cache.capture_failed = True
                return None
            self.cache.graphs[graph_key] = replay
        return replay


class GraphCache:
    """A layer's captured graphs and their static buffers, by shape (kept in the layer's `RuntimeCache`)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, _StaticBuffers] = {}
        self.graphs: dict[tuple, Callable[[], None]] = {}
        self.capture_failed = False

    @staticmethod
    def capture(run: Callable[[], None], device: torch.device) -> Callable[[], None]:
        """Capture `run` as a CUDA graph on `device`; returns its replay."""
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture (cuBLAS workspaces, lazy initialisation)
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        return graph.replay


LSTM_DRIVERS: dict[str, type[LstmDriver]] = {
    "eager": EagerDriver, "autograd": AutogradDriver, "graphs": GraphDriver, "bptt": BpttDriver,
}


def select_driver(
    x: torch.Tensor, needs_grad: bool, options: ElmoRuntimeOptions, clips: tuple[float | None, float | None]
) -> LstmDriver:
    """The one place that picks how the recurrence runs. When gradients are recorded: the hand-written
    backpropagation through time (`"bptt"`), or the autograd loop if that is the configured backend. Otherwise the
    configured backend, `"auto"` meaning CUDA graphs on GPUs and the eager loop elsewhere."""
    if needs_grad:
        backend = "autograd" if options.lstm_backend == "autograd" else "bptt"
    elif options.lstm_backend == "auto":
        backend = "graphs" if x.device.type == "cuda" else "eager"
    else:
        backend = options.lstm_backend
    return LSTM_DRIVERS[backend](options, clips)


__all__ = [
    "BpttDriver",
    "BpttLayer",
    "ElmoRuntimeOptions",
    "LSTM_BACKENDS",
    "LSTM_DRIVERS",
    "LayerWeights",
    "LstmDriver",
    "RuntimeCache",
    "SentencePacking",
    "inference_linear",
    "lstm_cell",
    "prepack_weight",
    "select_driver",
]
