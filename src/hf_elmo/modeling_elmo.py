"""ELMo: a character CNN feeding a stacked bidirectional LSTM language model (Peters et al. 2018).

Shapes used throughout: B = batch, W = words per sentence (padded), C = `max_characters_per_token`,
T = W + 2 (the biLM's own `<S>` and `</S>` around every sentence), P = `projection_dim`, H = `lstm_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_elmo import ElmoConfig
from .lstm_elmo import LstmChunkRunner, chunk_shape
from .tokenization_elmo import BOS_WORD, EOS_WORD, word_to_char_ids

# Words per character-CNN call: bounds the (words, filters, positions) activations (about 90 MB for the
# widest official filter) while keeping the convolutions large enough to run at full speed.
CNN_CHUNK_WORDS = 512
# Packed rows x time steps whose LSTM input projections are computed in one GEMM: bounds that (rows, 4H)
# buffer per direction (16 MB for Original) while keeping the GEMM large.
LSTM_CHUNK_ROWS = 256
# Run the recurrence in fixed-shape chunks (`LstmChunkRunner`) on CPU too, as it runs on CUDA: for tests.
FORCE_CHUNKED_LSTM = False
# Inference matmuls on CPU go through oneDNN (see `inference_linear`); tests switch it off to check the fallback.
USE_ONEDNN = True
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


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        USE_ONEDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32 == weight.dtype
        and x.dim() == 2
        and x.is_contiguous()
        and weight.is_contiguous()
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and torch.backends.mkldnn.is_available()
        and _onednn_linear_works()
    )


def inference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    `F.linear` for inference: `(N, In)` x `(Out, In)` (+ `(Out,)`) -> `(N, Out)`.

    On CPU in float32 this calls oneDNN's matmul rather than torch's default BLAS: for the LSTM's shapes (a few
    dozen rows against a 512 x 16384 weight) oneDNN ran at 1.4-2.8x MKL's speed on the benchmark's AMD machine
    (`benchmarks/README.md`). Anything else (autograd, other devices and dtypes) takes `F.linear`. `weight`
    may also be a copy prepacked by `prepack_weight`.
    """
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    if _onednn_applies(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def prepack_weight(weight: torch.Tensor, like: torch.Tensor, cache: PrepackedWeights, key: str) -> torch.Tensor:
    """
    `weight` `(Out, In)` in oneDNN's own blocked layout, for repeated `inference_linear(x, ...)` calls with inputs
    like `like`; `weight` itself where oneDNN does not apply. The copy is kept in `cache[key]` until `weight`
    changes (a new tensor, or an in-place update, which bumps its version).

    Without it oneDNN re-lays out the weight on every call: for the LSTM's per-step matmuls that is most of their
    time (a 512 x 16384 weight against ~30 rows), at the price of one more copy of the weights in memory.
    """
    if not _onednn_applies(like, weight):
        return weight
    version = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cached = cache.get(key)
    if cached is None or cached[0] != version:
        cached = cache[key] = (version, torch.ops.mkldnn._reorder_linear_weight(weight))
    return cached[1]


class PrepackedWeights(dict):
    """`prepack_weight`'s cache: derived copies that are never copied or pickled (oneDNN's opaque tensors cannot
    be); a copied or unpickled model derives its own on first use."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place tanh as `2 * sigmoid(2x) - 1`: torch's CPU tanh is ~6x slower than its sigmoid; error < 2e-7."""
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


@dataclass
class ElmoModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch, words, 2 * projection_dim)`):
        The ELMo vector: the scalar mix of all layers. Zero at padding positions (before train-mode dropout).
    state (`tuple(torch.FloatTensor)`, returned with `use_cache=True`):
        `(h, c)` with `h` of shape `(num_hidden_layers, 2, batch, projection_dim)` and `c` of shape
        `(num_hidden_layers, 2, batch, lstm_dim)`; index 0 of the second axis is the forward direction (state after
        each row's `</S>`), index 1 the backward one (state after each row's `<S>`). Pass it back as `state=` so
        row i of the next call continues row i of this one.
    hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
        `num_hidden_layers + 1` tensors of shape `(batch, words, 2 * projection_dim)`: the character-CNN token
        vector repeated twice, then each biLSTM layer as `[forward, backward]`. Zero at padding positions.
    """

    last_hidden_state: torch.FloatTensor | None = None
    state: tuple[torch.FloatTensor, torch.FloatTensor] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class ElmoHighway(nn.Module):
    """bilm-tf's highway layer: `g = sigmoid(x Wc + bc)`, `y = g * relu(x Wt + bt) + (1 - g) * x`."""

    def __init__(self, dim: int):
        super().__init__()
        self.carry = nn.Linear(dim, dim)
        self.transform = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, D)` -> `(N, D)`."""
        gate = torch.sigmoid(inference_linear(x, self.carry.weight, self.carry.bias))
        return gate * F.relu(inference_linear(x, self.transform.weight, self.transform.bias)) + (1 - gate) * x


class ElmoCharacterEncoder(nn.Module):
    """
    Context-free token vectors from character ids: embedding, 1-D convolutions max-pooled over positions,
    activation, highway layers and a projection to `projection_dim`.

    Words whose vectors are cached in the checkpoint (`num_cached_words`) are looked up instead of recomputed.
    """

    def __init__(self, config: ElmoConfig):
        super().__init__()
        self.config = config
        self.char_embedding = nn.Embedding(config.num_characters, config.char_embedding_dim, padding_idx=0)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(config.char_embedding_dim, n_filters, width) for width, n_filters in config.char_filters
        )
        self.highways = nn.ModuleList(ElmoHighway(config.num_char_filters) for _ in range(config.num_highway_layers))
        # bilm-tf has no projection when the filters already add up to projection_dim.
        self.projection = (
            nn.Linear(config.num_char_filters, config.projection_dim)
            if config.num_char_filters != config.projection_dim
            else None
        )
        self.activation = torch.tanh if config.char_activation == "tanh" else F.relu
        n_cached = config.num_cached_words
        self.register_buffer(
            "cached_char_ids", torch.zeros(n_cached, config.max_characters_per_token, dtype=torch.int16)
        )
        self.register_buffer("cached_embeddings", torch.zeros(n_cached, config.projection_dim))
        self._cache_index: dict[bytes, int] | None = None
        self._cache_index_key: tuple | None = None

    def compute(self, char_ids: torch.Tensor) -> torch.Tensor:
        """
        Run the CNN on every row: `(N, C)` int64 -> `(N, P)`.

        A word's characters end in a run of one repeated id (the padding), and every convolution window inside
        that run gives the same value, so one such window stands for all of them: rows are sorted by where their
        run starts and each chunk is cut to `min(C, longest + widest filter)` positions. The max over positions is
        unchanged; the CNN's cost drops with the words' real length instead of `C`.
        """
        n_words, width = char_ids.shape
        if n_words == 0:
            return self.char_embedding.weight.new_zeros(0, self.config.projection_dim)
        widest = max(conv.kernel_size[0] for conv in self.convolutions)
        positions = torch.arange(1, width + 1, device=char_ids.device)
        used = ((char_ids != char_ids[:, -1:]) * positions).amax(dim=1)  # positions before the final run
        used, order = torch.sort(used, stable=True)
        out = None
        for chunk_used, chunk_order in zip(used.split(CNN_CHUNK_WORDS), order.split(CNN_CHUNK_WORDS)):
            keep = min(width, int(chunk_used[-1]) + widest)
            vectors = self._compute_chunk(char_ids[chunk_order, :keep])
            if out is None:
                out = vectors.new_empty(n_words, vectors.shape[-1])
            out[chunk_order] = vectors
        return out

    def _compute_chunk(self, char_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.char_embedding(char_ids).transpose(1, 2)  # (N, char_dim, C)
        # Max over positions before the activation, as bilm-tf does (both activations are monotonic anyway).
        pooled = [conv(embedded).amax(dim=-1) for conv in self.convolutions]
        x = self.activation(torch.cat(pooled, dim=-1))
        for highway in self.highways:
            x = highway(x)
        if self.projection is None:
            return x
        return inference_linear(x, self.projection.weight, self.projection.bias)

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """Token vectors of distinct words: `(N, C)` -> `(N, P)`, using cached vectors where the word is cached."""
        use_cache = self.cached_char_ids.shape[0] > 0 and not (
            torch.is_grad_enabled() and self.char_embedding.weight.requires_grad
        )
        if not use_cache or char_ids.shape[0] == 0:
            return self.compute(char_ids)
        index = self._cached_word_index()
        keys = char_ids.to(device="cpu", dtype=torch.int16).numpy()
        positions = [index.get(row.tobytes(), -1) for row in keys]
        found = torch.tensor(positions, device=char_ids.device)
        hit = found >= 0
        out = self.cached_embeddings.new_empty(char_ids.shape[0], self.config.projection_dim)
        out[hit] = self.cached_embeddings[found[hit]]
        if not bool(hit.all()):
            out[~hit] = self.compute(char_ids[~hit]).to(out.dtype)
        return out

    def _cached_word_index(self) -> dict[bytes, int]:
        """char-id bytes -> row of `cached_embeddings`, rebuilt whenever the buffer is replaced or modified."""
        buffer = self.cached_char_ids
        key = (buffer.data_ptr(), buffer._version, buffer.shape[0])
        if self._cache_index is None or self._cache_index_key != key:
            rows = buffer.to("cpu").numpy()
            self._cache_index = {row.tobytes(): i for i, row in enumerate(rows)}
            self._cache_index_key = key
        return self._cache_index


class ElmoLstmLayer(nn.Module):
    """
    One biLSTM layer: a forward and a backward LSTM cell with projection and clipping (TensorFlow's `LSTMCell`
    with `num_proj`), weights stacked on a leading direction axis (0 = forward, 1 = backward) and laid out as
    `nn.Linear`'s `(out, in)`:

    - `input_weight` `(2, 4H, In)` and `recurrent_weight` `(2, 4H, P)`, gates along 4H in PyTorch's order
      (input, forget, cell candidate, output);
    - `bias` `(2, 4H)`, with TensorFlow's forget bias of 1.0 folded in;
    - `projection_weight` `(2, P, H)`.
    """

    def __init__(self, input_dim: int, lstm_dim: int, projection_dim: int):
        super().__init__()
        self.input_weight = nn.Parameter(torch.empty(2, 4 * lstm_dim, input_dim))
        self.recurrent_weight = nn.Parameter(torch.empty(2, 4 * lstm_dim, projection_dim))
        self.bias = nn.Parameter(torch.empty(2, 4 * lstm_dim))
        self.projection_weight = nn.Parameter(torch.empty(2, projection_dim, lstm_dim))
        # oneDNN-prepacked copies of the per-step weights (`prepack_weight`); not part of the state dict.
        self.prepacked = PrepackedWeights()


class ElmoBiLstm(nn.Module):
    """
    The stacked bidirectional LSTM. The forward and backward directions are separate stacks (bilm-tf's
    `RNN_0` and `RNN_1`): layer l of a direction reads layer l - 1 of the same direction.

    The backward direction reads each sentence reversed, so both directions step forward together; the
    sentences of a batch are packed back to back into rows (`_PackingPlan`), each starting from its own initial
    state, and each sentence's final state is taken at its own last step.
    """

    def __init__(self, config: ElmoConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            ElmoLstmLayer(config.projection_dim, config.lstm_dim, config.projection_dim)
            for _ in range(config.num_hidden_layers)
        )
        self.chunk_runner = LstmChunkRunner()

    def _apply(self, fn, recurse=True):
        # Moving or casting the weights invalidates captured graphs and prepacked copies.
        self.chunk_runner.clear()
        for layer in self.layers:
            layer.prepacked.clear()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        for layer in self.layers:
            layer.prepacked.clear()  # (weights may be changed after training, even through `.data`)
        return super().train(mode)

    def forward(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_state: bool = False,
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """
        Args:
            inputs: `(B, T, P)` token vectors, sentence boundaries included, left-aligned.
            lengths: `(B,)` int64 sequence lengths (boundaries included).
            initial_state: optional `(h, c)` of shapes `(L, 2, B, P)` / `(L, 2, B, H)`.
        Returns:
            Per layer `(B, T, 2P)` outputs `[forward, backward]` (zero past each row's length), and the final
            `(h, c)` if `return_state`.

        The sentences are packed back to back into `R` rows of `S = max(lengths)` steps (first-fit decreasing),
        each sentence starting from its own initial state, so the recurrence computes no padding and every step is
        one `(R, P) x (P, 4H)` matmul per direction whatever the spread of lengths.
        """
        batch, steps, dim = inputs.shape
        chunked = (inputs.device.type == "cuda" or FORCE_CHUNKED_LSTM) and not torch.is_grad_enabled()
        if chunked:  # padded to the fixed shapes the chunk runner (and its CUDA graphs) work in
            plan = _PackingPlan(lengths, steps, *chunk_shape())
        else:
            plan = _PackingPlan(lengths, steps)
        # (2, S, R, P): the forward stream and the per-sentence reversed one.
        flat = torch.cat([inputs.reshape(batch * steps, dim), inputs.new_zeros(1, dim)])
        x = flat.index_select(0, plan.source_index).view(2, plan.steps, plan.rows, dim)
        outputs, final_h, final_c = [], [], []
        for depth, layer in enumerate(self.layers):
            state = None if initial_state is None else (initial_state[0][depth], initial_state[1][depth])
            run_layer = self._run_layer_chunked if chunked else self._run_layer
            y, final = run_layer(layer, x, plan, state, return_state)
            if self.config.use_skip_connections and depth > 0:
                y = y + x  # outside the recurrence, as TensorFlow's ResidualWrapper
            outputs.append(plan.unpack(y, batch, steps))
            if return_state:
                final_h.append(final[0])
                final_c.append(final[1])
            x = y
        final = (torch.stack(final_h), torch.stack(final_c)) if return_state else None
        return outputs, final

    def _run_layer(
        self,
        layer: ElmoLstmLayer,
        x: torch.Tensor,
        plan: _PackingPlan,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        return_state: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """`x`: packed `(2, S, R, In)` -> packed outputs `(2, S, R, P)` and each sentence's final `(h, c)`."""
        _, steps, rows, in_dim = x.shape
        proj_dim, lstm_dim = layer.projection_weight.shape[1:]
        weights, initial = self._in_dtype(layer, state, x.dtype)
        input_weight, recurrent_weight, bias, projection_weight = weights
        init_h, init_c = initial if initial is not None else (None, None)
        batch = plan.batch
        h = x.new_zeros(2, rows, proj_dim)
        c = x.new_zeros(2, rows, lstm_dim)
        final_h = final_c = None
        if return_state and init_h is not None:  # (an empty sentence keeps its initial state)
            final_h, final_c = init_h.clone(), init_c.clone()
        elif return_state:
            final_h, final_c = x.new_zeros(2, batch, proj_dim), x.new_zeros(2, batch, lstm_dim)
        if torch.is_grad_enabled():
            return self._run_layer_autograd(weights, x, plan, (init_h, init_c), (h, c), (final_h, final_c))
        output = x.new_empty(2, steps, rows, proj_dim)
        cell_out = x.new_empty(rows, lstm_dim)
        chunk = max(1, min(steps, LSTM_CHUNK_ROWS // rows))
        cell_clip, proj_clip = self.config.cell_clip, self.config.proj_clip
        gate = {name: slice(k * lstm_dim, (k + 1) * lstm_dim) for k, name in enumerate(("i", "f", "g", "o"))}
        if self.config.prepack_cpu_weights:
            recurrent_weight = [prepack_weight(recurrent_weight[d], h[d], layer.prepacked, f"recurrent{d}")
                                for d in (0, 1)]
            projection_weight = [prepack_weight(projection_weight[d], c[d], layer.prepacked, f"projection{d}")
                                 for d in (0, 1)]
        for start in range(0, steps, chunk):
            stop = min(start + chunk, steps)
            # Input contributions of a block of steps in one GEMM per direction: (k * R, 4H) each.
            pre = [
                inference_linear(x[d, start:stop].reshape(-1, in_dim), input_weight[d], bias[d]).view(
                    stop - start, rows, 4 * lstm_dim)
                for d in (0, 1)
            ]
            for step in range(start, stop):
                starting = plan.starts.get(step)
                if starting is not None:  # sentences beginning here start from their own initial state
                    row_index, sentence_index = starting
                    if init_h is None:
                        h.index_fill_(1, row_index, 0.0)
                        c.index_fill_(1, row_index, 0.0)
                    else:
                        h.index_copy_(1, row_index, init_h.index_select(1, sentence_index))
                        c.index_copy_(1, row_index, init_c.index_select(1, sentence_index))
                for d in (0, 1):
                    gates = inference_linear(h[d], recurrent_weight[d]).add_(pre[d][step - start])  # (R, 4H)
                    input_gate, forget_gate = gates[:, gate["i"]].sigmoid_(), gates[:, gate["f"]].sigmoid_()
                    candidate, output_gate = tanh_(gates[:, gate["g"]]), gates[:, gate["o"]].sigmoid_()
                    cell = c[d].mul_(forget_gate).addcmul_(input_gate, candidate)
                    if cell_clip is not None:
                        cell.clamp_(-cell_clip, cell_clip)
                    new_h = inference_linear(tanh_(cell_out.copy_(cell)).mul_(output_gate), projection_weight[d])
                    if proj_clip is not None:
                        new_h.clamp_(-proj_clip, proj_clip)
                    output[d, step] = new_h
                    h[d] = new_h
                if return_state:
                    ending = plan.ends.get(step)
                    if ending is not None:
                        row_index, sentence_index = ending
                        final_h.index_copy_(1, sentence_index, h.index_select(1, row_index))
                        final_c.index_copy_(1, sentence_index, c.index_select(1, row_index))
        return output, ((final_h, final_c) if return_state else None)

    def _run_layer_chunked(
        self,
        layer: ElmoLstmLayer,
        x: torch.Tensor,
        plan: _PackingPlan,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        return_state: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """`_run_layer` in fixed-shape chunks of steps, replayed as CUDA graphs on GPUs."""
        weights, initial = self._in_dtype(layer, state, x.dtype)
        return self.chunk_runner.run_layer(
            x, plan, weights, initial, return_state, (self.config.cell_clip, self.config.proj_clip),
            capturable=all(p.dtype == x.dtype for p in layer.parameters()))

    @staticmethod
    def _in_dtype(
        layer: ElmoLstmLayer, state: tuple[torch.Tensor, torch.Tensor] | None, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor] | None]:
        """The layer's `(input_weight, recurrent_weight, bias, projection_weight)` and the initial `(h, c)` in
        `dtype` (the tensors themselves where they already have it)."""
        parameters = (layer.input_weight, layer.recurrent_weight, layer.bias, layer.projection_weight)
        initial = None if state is None else (state[0].to(dtype), state[1].to(dtype))
        return tuple(p.to(dtype) for p in parameters), initial

    def _run_layer_autograd(self, weights, x, plan, initial, state, final):
        """`_run_layer` without in-place updates, for training: the same steps, recorded by autograd."""
        input_weight, recurrent_weight, bias, projection_weight = weights
        (init_h, init_c), (h, c), (final_h, final_c) = initial, state, final
        _, steps, rows, in_dim = x.shape
        cell_clip, proj_clip = self.config.cell_clip, self.config.proj_clip
        pre = torch.baddbmm(bias[:, None], x.reshape(2, steps * rows, in_dim), input_weight.transpose(1, 2))
        pre = pre.view(2, steps, rows, -1)
        outputs = []
        for step in range(steps):
            starting = plan.starts.get(step)
            if starting is not None:
                row_index, sentence_index = starting
                if init_h is None:
                    h, c = h.index_fill(1, row_index, 0.0), c.index_fill(1, row_index, 0.0)
                else:
                    h = h.index_copy(1, row_index, init_h.index_select(1, sentence_index))
                    c = c.index_copy(1, row_index, init_c.index_select(1, sentence_index))
            input_gate, forget_gate, candidate, output_gate = torch.baddbmm(
                pre[:, step], h, recurrent_weight.transpose(1, 2)).chunk(4, dim=-1)
            c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
            if cell_clip is not None:
                c = c.clamp(-cell_clip, cell_clip)
            h = torch.bmm(torch.sigmoid(output_gate) * torch.tanh(c), projection_weight.transpose(1, 2))
            if proj_clip is not None:
                h = h.clamp(-proj_clip, proj_clip)
            outputs.append(h)
            ending = plan.ends.get(step) if final_h is not None else None
            if ending is not None:
                row_index, sentence_index = ending
                final_h = final_h.index_copy(1, sentence_index, h.index_select(1, row_index))
                final_c = final_c.index_copy(1, sentence_index, c.index_select(1, row_index))
        final = (final_h, final_c) if final_h is not None else None
        return torch.stack(outputs, dim=1), final


class _PackingPlan:
    """
    Where each sentence sits when a batch is packed into rows: sentence b occupies steps
    `offset[b] .. offset[b] + length[b] - 1` of row `row[b]` in both streams, the backward stream holding it reversed.
    """

    def __init__(self, lengths: torch.Tensor, max_steps: int, row_multiple: int = 1, step_multiple: int = 1):
        device = lengths.device
        length_list = [int(n) for n in lengths.tolist()]
        batch = len(length_list)
        capacity = max(length_list, default=0)
        # First-fit decreasing into rows of `capacity` steps.
        order = sorted(range(batch), key=lambda b: -length_list[b])
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
        self.rows = -(-max(len(fill), 1) // row_multiple) * row_multiple  # padding rows and steps stay empty
        self.steps = -(-max(capacity, 1) // step_multiple) * step_multiple
        self.starts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ends: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        starts: dict[int, list[tuple[int, int]]] = {}
        ends: dict[int, list[tuple[int, int]]] = {}
        for b in range(batch):
            if length_list[b] == 0:
                continue
            starts.setdefault(offset[b], []).append((row[b], b))
            ends.setdefault(offset[b] + length_list[b] - 1, []).append((row[b], b))
        # The same events as flat tensors, for the chunked runner: sentence, row, first step, last step.
        nonempty = [b for b in range(batch) if length_list[b] > 0]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
        self.sentence_index = as_tensor(nonempty)
        self.sentence_row = as_tensor([row[b] for b in nonempty])
        self.first_step = as_tensor([offset[b] for b in nonempty])
        self.last_step = as_tensor([offset[b] + length_list[b] - 1 for b in nonempty])
        for events, target in ((starts, self.starts), (ends, self.ends)):
            for step, pairs in events.items():
                rows_, sentences = zip(*pairs)
                target[step] = (torch.tensor(rows_, device=device), torch.tensor(sentences, device=device))
        # Packed slot (d, s, r) <- token row of the flattened (B * T, P) inputs, or the zero row B * T.
        rows_t = torch.tensor(row, device=device, dtype=torch.long)
        offsets_t = torch.tensor(offset, device=device, dtype=torch.long)
        lengths_t = torch.tensor(length_list, device=device, dtype=torch.long)
        t = torch.arange(max_steps, device=device)
        valid = t[None, :] < lengths_t[:, None]  # (B, T)
        step_of = offsets_t[:, None] + t[None, :]  # packed step of (b, t) in the forward stream
        reversed_step = offsets_t[:, None] + lengths_t[:, None] - 1 - t[None, :]  # ... in the backward stream
        token = torch.arange(batch, device=device)[:, None] * max_steps + t[None, :]
        source = torch.full((2, self.steps, self.rows), batch * max_steps, dtype=torch.long, device=device)
        r = rows_t[:, None].expand(-1, max_steps)
        source[0, step_of[valid], r[valid]] = token[valid]
        source[1, reversed_step[valid], r[valid]] = token[valid]
        self.source_index = source.view(-1)
        # Output (b, t) <- packed flat rows of (2 * S * R, P): forward and backward halves; padding reads row 0.
        # Interleaved (forward, backward) so that one gather gives (B, T, 2, P), i.e. (B, T, 2P).
        self.valid = valid
        forward_index = torch.where(valid, step_of * self.rows + r, 0)
        backward_index = torch.where(valid, (self.steps + reversed_step) * self.rows + r, 0)
        self.output_index = torch.stack([forward_index, backward_index], dim=-1).view(-1)

    def keep_mask(self, like: torch.Tensor) -> torch.Tensor:
        """`(S, R, 1)` of `like`'s dtype: 0 where a sentence starts (its state is reset), 1 elsewhere."""
        keep = like.new_ones(self.steps, self.rows, 1)
        keep[self.first_step, self.sentence_row] = 0.0
        return keep

    def scatter_initial_state(self, state: torch.Tensor) -> torch.Tensor:
        """Per-sentence `(2, B, D)` -> `(2, S, R, D)`, each sentence's state at its first step, zero elsewhere."""
        placed = state.new_zeros(2, self.steps, self.rows, state.shape[-1])
        placed[:, self.first_step, self.sentence_row] = state[:, self.sentence_index]
        return placed

    def final_state(self, history: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
        """Packed per-step `(2, S, R, D)` -> each sentence's value at its last step `(2, B, D)`; an empty
        sentence keeps `initial` (or zero)."""
        final = initial.clone() if initial is not None else history.new_zeros(2, self.batch, history.shape[-1])
        final[:, self.sentence_index] = history[:, self.last_step, self.sentence_row]
        return final

    def unpack(self, packed: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
        """Packed `(2, S, R, P)` -> `(B, T, 2P)` `[forward, backward]`, zero at padding."""
        flat = packed.reshape(-1, packed.shape[-1])
        both = flat.index_select(0, self.output_index).view(batch, steps, 2 * packed.shape[-1])
        return both.masked_fill_(~self.valid[..., None], 0.0)


class ElmoScalarMix(nn.Module):
    """
    allennlp's `ScalarMix`: `gamma * sum_k softmax(s)_k * layer_k`, optionally layer-normalising each layer over
    its unpadded positions first. Fixed `scalar_mix_parameters` from the config are not trained. Expects layers
    that are zero at padding, and keeps them so.
    """

    def __init__(self, config: ElmoConfig):
        super().__init__()
        n_layers = config.num_hidden_layers + 1
        fixed = config.scalar_mix_parameters
        self.scalar_parameters = nn.Parameter(torch.tensor(fixed if fixed is not None else [0.0] * n_layers))
        self.gamma = nn.Parameter(torch.ones(1))
        self.do_layer_norm = config.do_layer_norm
        # Fixed weights come from the config, so they hold even over a checkpoint that stored other values.
        self.fixed_parameters = fixed
        self.freeze_if_fixed()

    def freeze_if_fixed(self) -> None:
        if self.fixed_parameters is not None:
            self.scalar_parameters.requires_grad_(False)
            self.gamma.requires_grad_(False)

    def forward(self, layers: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """`layers`: tensors `(B, W, D)`; `mask`: `(B, W)` -> `(B, W, D)`."""
        if self.fixed_parameters is not None:
            scalars = torch.tensor(self.fixed_parameters, device=layers[0].device)
        else:
            scalars = self.scalar_parameters.float()
        weights = torch.softmax(scalars, dim=0).to(layers[0].dtype)
        if self.do_layer_norm:
            mask = mask.to(layers[0].dtype)[..., None]
            n_values = (mask.sum() * layers[0].shape[-1]).clamp_min(1)
            normed = []
            for layer in layers:
                mean = (layer * mask).sum() / n_values
                variance = (((layer - mean) * mask) ** 2).sum() / n_values
                # Masked so padding stays zero (allennlp leaves -mean/std there).
                normed.append((layer - mean) / torch.sqrt(variance + 1e-13) * mask)
            layers = normed
        gamma = self.gamma.to(weights.dtype)
        if torch.is_grad_enabled():
            return gamma * sum(w * layer for w, layer in zip(weights, layers))
        scales = weights * gamma  # accumulate into one buffer: no per-layer temporaries at inference
        mixed = layers[0] * scales[0]
        for scale, layer in zip(scales[1:], layers[1:]):
            mixed.addcmul_(layer, scale)
        return mixed


class ElmoPreTrainedModel(PreTrainedModel):
    config_class = ElmoConfig
    config: ElmoConfig
    base_model_prefix = "elmo"
    main_input_name = "input_ids"
    _is_stateful = True
    _no_split_modules = ["ElmoBiLstm", "ElmoCharacterEncoder"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, restricted to safetensors: a pickled checkpoint is never loaded."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("ELMo checkpoints are loaded from safetensors only (use_safetensors=False refused)")
        kwargs["use_safetensors"] = True
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for module in model.modules():
            if isinstance(module, ElmoScalarMix):
                module.freeze_if_fixed()  # loading re-creates parameters trainable
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ElmoLstmLayer):
            bound = module.projection_weight.shape[2] ** -0.5
            for weight in (module.input_weight, module.recurrent_weight, module.projection_weight):
                init.uniform_(weight, -bound, bound)
            init.zeros_(module.bias)
        elif isinstance(module, ElmoScalarMix):
            fixed = self.config.scalar_mix_parameters
            init.copy_(module.scalar_parameters, torch.tensor(fixed if fixed is not None else
                                                              [0.0] * module.scalar_parameters.shape[0]))
            init.ones_(module.gamma)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
            init.zeros_(module.weight[0])  # id 0: "no character"
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)


class ElmoModel(ElmoPreTrainedModel):
    """
    ELMo's biLM with allennlp's scalar mix on top.

    By default every sentence starts from a zero LSTM state, so its vectors do not depend on the rest of the
    batch, on padding or on earlier calls. For bilm-tf's stateful behaviour pass `use_cache=True` and feed
    `output.state` back as `state=`.
    """

    def __init__(self, config: ElmoConfig):
        super().__init__(config)
        self.char_encoder = ElmoCharacterEncoder(config)
        self.encoder = ElmoBiLstm(config)
        self.scalar_mix = ElmoScalarMix(config)
        self.dropout = nn.Dropout(config.mix_dropout)
        # Plain data, not a buffer: from_pretrained materialises models on the meta device, losing such buffers.
        self._boundary_char_ids = [word_to_char_ids(w, config.max_characters_per_token) for w in (BOS_WORD, EOS_WORD)]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.char_encoder.char_embedding

    @torch.no_grad()
    def cache_words(self, words: list[str]) -> None:
        """Store the token vectors of `words` in the checkpoint so they skip the character CNN (`vocab_to_cache`)."""
        c = self.config.max_characters_per_token
        char_ids = torch.tensor([word_to_char_ids(w, c) for w in words], dtype=torch.long).view(-1, c)
        device = self.char_encoder.char_embedding.weight.device
        embeddings = self.char_encoder.compute(char_ids.to(device))
        self.char_encoder.cached_char_ids = char_ids.to(device=device, dtype=torch.int16)
        self.char_encoder.cached_embeddings = embeddings
        self.config.num_cached_words = len(words)

    def embed_words(self, char_ids: torch.Tensor) -> torch.Tensor:
        """Context-free token vectors `(N, P)` of `(N, C)` character ids, each distinct word computed once."""
        unique, inverse = torch.unique(char_ids, dim=0, return_inverse=True)
        return self.char_encoder(unique)[inverse]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ElmoModelOutput | tuple:
        r"""
        Args:
            input_ids: `(B, W, C)` int64 character ids from [`ElmoTokenizer`]; a padding word is all zeros.
            attention_mask: `(B, W)`, 1 for words and 0 for padding (right padding). Derived from `input_ids` if omitted.
            state: `(h, c)` from a previous call's `output.state` to continue each row from where it stopped.
            use_cache: Return the final LSTM state in `output.state`.
            output_hidden_states: Return every layer in `output.hidden_states`.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = bool(use_cache) or state is not None
        char_ids, word_mask = self._check_inputs(input_ids, attention_mask)
        batch, n_words, _ = char_ids.shape
        dtype = self.char_encoder.char_embedding.weight.dtype
        lengths = word_mask.sum(dim=1)
        if state is not None:
            state = self._check_state(state, batch)

        # Token vectors of the distinct real words and the two boundary tokens, scattered into (B, T, P).
        real_words = char_ids[word_mask]
        boundaries = torch.tensor(self._boundary_char_ids, dtype=torch.long, device=char_ids.device)
        all_ids = torch.cat([boundaries, real_words])
        vectors = self.embed_words(all_ids).to(dtype)
        tokens = vectors.new_zeros(batch, n_words + 2, self.config.projection_dim)
        rows = torch.arange(batch, device=char_ids.device)
        tokens[:, 0] = vectors[0]
        tokens[:, 1:-1][word_mask] = vectors[2:]
        tokens[rows, lengths + 1] = vectors[1]

        if batch == 0:  # nothing to run: empty outputs of the right widths
            empty = tokens.new_zeros(0, n_words, self.config.output_dim)
            final_state = self._zero_state(0, tokens) if use_cache else None
            hidden_states = (empty,) * (self.config.num_hidden_layers + 1) if output_hidden_states else None
            if not return_dict:
                return tuple(v for v in (empty, final_state, hidden_states) if v is not None)
            return ElmoModelOutput(last_hidden_state=empty, state=final_state, hidden_states=hidden_states)
        layer_outputs, final_state = self.encoder(tokens, lengths + 2, state, return_state=use_cache)
        keep = word_mask[..., None].to(dtype)
        words = slice(1, n_words + 1)  # drop <S> (and </S>, which falls on a padding position or past the end)
        layers = [torch.cat([tokens[:, words], tokens[:, words]], dim=-1).mul_(keep)]
        # The encoder's outputs are fresh tensors: mask them in place rather than holding masked copies too.
        layers += [out[:, words].mul_(keep) for out in layer_outputs]
        mixed = self.dropout(self.scalar_mix(layers, word_mask))

        hidden_states = tuple(layers) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (mixed, final_state, hidden_states) if v is not None)
        return ElmoModelOutput(last_hidden_state=mixed, state=final_state, hidden_states=hidden_states)

    def _zero_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        return (like.new_zeros(cfg.num_hidden_layers, 2, batch, cfg.projection_dim),
                like.new_zeros(cfg.num_hidden_layers, 2, batch, cfg.lstm_dim))

    def _check_inputs(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate `(B, W, C)` ids and a right-padded mask; return long ids and a bool `(B, W)` mask."""
        c = self.config.max_characters_per_token
        if input_ids is None:
            raise ValueError("input_ids is required")
        if not torch.is_tensor(input_ids) or input_ids.dim() != 3 or input_ids.shape[-1] != c:
            shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, words, {c}) tensor of character ids, got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer character ids, got dtype {input_ids.dtype}")
        input_ids = input_ids.to(device=self.device, dtype=torch.long)
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.num_characters):
            raise ValueError(f"input_ids must be character ids in [0, {self.config.num_characters}), got values "
                             f"in [{int(input_ids.min())}, {int(input_ids.max())}]")
        if attention_mask is None:
            mask = (input_ids != 0).any(dim=-1)
        else:
            if tuple(attention_mask.shape) != tuple(input_ids.shape[:2]):
                raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape[:2])} (batch, words), "
                                 f"got {tuple(attention_mask.shape)}")
            mask = attention_mask.to(self.device) != 0
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, positions[None, :] < mask.sum(dim=1, keepdim=True)):
            raise ValueError("attention_mask must be right-padded: ones for the words, then zeros")
        return input_ids, mask

    def _check_state(self, state, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("state must be the (h, c) pair returned in output.state")
        h, c = state
        want_h = (cfg.num_hidden_layers, 2, cfg.projection_dim)
        want_c = (cfg.num_hidden_layers, 2, cfg.lstm_dim)
        if h.dim() != 4 or c.dim() != 4 or (h.shape[0], h.shape[1], h.shape[3]) != want_h or (
            c.shape[0], c.shape[1], c.shape[3]) != want_c:
            raise ValueError(f"state has shapes {tuple(h.shape)} / {tuple(c.shape)}; expected "
                             f"({want_h[0]}, 2, batch, {want_h[2]}) / ({want_c[0]}, 2, batch, {want_c[2]})")
        if h.shape[2] < batch:
            raise ValueError(f"state holds {h.shape[2]} rows but the batch has {batch}")
        return h[:, :, :batch].to(self.device), c[:, :, :batch].to(self.device)


__all__ = ["ElmoModel", "ElmoPreTrainedModel", "ElmoModelOutput"]
