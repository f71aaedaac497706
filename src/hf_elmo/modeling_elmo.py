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
from .tokenization_elmo import BOS_WORD, EOS_WORD, word_to_char_ids

# Words per character-CNN call: bounds the (words, filters, positions) activations (about 90 MB for the
# widest official filter) while keeping the convolutions large enough to run at full speed.
CNN_CHUNK_WORDS = 512
# Time steps whose LSTM input projections are computed in one GEMM: bounds the (2, steps, B, 4H) buffer.
LSTM_TIME_CHUNK = 16


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
        gate = torch.sigmoid(self.carry(x))
        return gate * F.relu(self.transform(x)) + (1 - gate) * x


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
        """Run the CNN on every row: `(N, C)` int64 -> `(N, P)`."""
        outputs = [self._compute_chunk(chunk) for chunk in char_ids.split(CNN_CHUNK_WORDS)]
        if not outputs:
            return self.char_embedding.weight.new_zeros(0, self.config.projection_dim)
        return torch.cat(outputs)

    def _compute_chunk(self, char_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.char_embedding(char_ids).transpose(1, 2)  # (N, char_dim, C)
        # Max over positions before the activation, as bilm-tf does (both activations are monotonic anyway).
        pooled = [conv(embedded).amax(dim=-1) for conv in self.convolutions]
        x = self.activation(torch.cat(pooled, dim=-1))
        for highway in self.highways:
            x = highway(x)
        return self.projection(x) if self.projection is not None else x

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
    with `num_proj`), weights stacked on a leading direction axis (0 = forward, 1 = backward) so both
    directions advance together in one batched matmul per step.

    Gate order along the 4H axis is PyTorch's (input, forget, cell candidate, output); TensorFlow's forget bias
    of 1.0 is folded into `bias`.
    """

    def __init__(self, input_dim: int, lstm_dim: int, projection_dim: int):
        super().__init__()
        self.input_weight = nn.Parameter(torch.empty(2, input_dim, 4 * lstm_dim))
        self.recurrent_weight = nn.Parameter(torch.empty(2, projection_dim, 4 * lstm_dim))
        self.bias = nn.Parameter(torch.empty(2, 1, 4 * lstm_dim))
        self.projection_weight = nn.Parameter(torch.empty(2, lstm_dim, projection_dim))


class ElmoBiLstm(nn.Module):
    """
    The stacked bidirectional LSTM. The forward and backward directions are separate stacks (bilm-tf's
    `RNN_0` and `RNN_1`): layer l of a direction reads layer l - 1 of the same direction.

    The backward direction runs on each sentence reversed within its own length, so both directions see
    left-aligned sequences, step together, and a row's final state is simply its state at step `length - 1`.
    """

    def __init__(self, config: ElmoConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            ElmoLstmLayer(config.projection_dim, config.lstm_dim, config.projection_dim)
            for _ in range(config.num_hidden_layers)
        )

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
            Per layer `(B, T, 2P)` outputs `[forward, backward]`, and the final `(h, c)` if `return_state`.
        """
        batch, steps, _ = inputs.shape
        reverse_index = _reverse_within_length_index(lengths, steps)  # (T, B)
        time_major = inputs.transpose(0, 1)  # (T, B, P)
        # (2, T, B, P): the forward sequence and the per-row reversed one.
        x = torch.stack([time_major, _gather_time(time_major, reverse_index)])
        is_last_step = None
        if return_state:
            is_last_step = torch.arange(steps, device=inputs.device)[:, None] == (lengths - 1)[None, :]  # (T, B)
        outputs, final_h, final_c = [], [], []
        for depth, layer in enumerate(self.layers):
            state = None if initial_state is None else (initial_state[0][depth], initial_state[1][depth])
            y, (h, c) = self._run_layer(layer, x, state, is_last_step)
            if self.config.use_skip_connections and depth > 0:
                y = y + x  # outside the recurrence, as TensorFlow's ResidualWrapper
            outputs.append(torch.cat([y[0], _gather_time(y[1], reverse_index)], dim=-1).transpose(0, 1))
            final_h.append(h)
            final_c.append(c)
            x = y
        final = (torch.stack(final_h), torch.stack(final_c)) if return_state else None
        return outputs, final

    def _run_layer(
        self,
        layer: ElmoLstmLayer,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        is_last_step: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """`x`: `(2, T, B, In)` -> outputs `(2, T, B, P)` and the state after each row's last step."""
        _, steps, batch, in_dim = x.shape
        lstm_dim = layer.projection_weight.shape[1]
        if state is None:
            h = x.new_zeros(2, batch, layer.projection_weight.shape[2])
            c = x.new_zeros(2, batch, lstm_dim)
        else:
            h, c = state[0].to(x.dtype), state[1].to(x.dtype)
        final_h, final_c = h, c
        output = x.new_empty(2, steps, batch, layer.projection_weight.shape[2])
        cell_clip, proj_clip = self.config.cell_clip, self.config.proj_clip
        for start in range(0, steps, LSTM_TIME_CHUNK):
            stop = min(start + LSTM_TIME_CHUNK, steps)
            # Input contributions of a block of steps in one GEMM: (2, k * B, 4H).
            block = x[:, start:stop].reshape(2, (stop - start) * batch, in_dim)
            pre_gates = torch.baddbmm(layer.bias, block, layer.input_weight).view(2, stop - start, batch, -1)
            for step in range(start, stop):
                gates = torch.baddbmm(pre_gates[:, step - start], h, layer.recurrent_weight)
                input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
                c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
                if cell_clip is not None:
                    c = c.clamp(-cell_clip, cell_clip)
                h = torch.bmm(torch.sigmoid(output_gate) * torch.tanh(c), layer.projection_weight)
                if proj_clip is not None:
                    h = h.clamp(-proj_clip, proj_clip)
                output[:, step] = h
                if is_last_step is not None:
                    last = is_last_step[step][None, :, None]
                    final_h = torch.where(last, h, final_h)
                    final_c = torch.where(last, c, final_c)
        return output, (final_h, final_c)


def _reverse_within_length_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """`(T, B)` index that reverses each column's first `lengths[b]` steps and leaves the rest in place."""
    t = torch.arange(steps, device=lengths.device)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x[index[t, b], b]` for time-major `x` of shape `(T, B, D)`."""
    return x.gather(0, index[:, :, None].expand(-1, -1, x.shape[-1]))


class ElmoScalarMix(nn.Module):
    """
    allennlp's `ScalarMix`: `gamma * sum_k softmax(s)_k * layer_k`, optionally layer-normalising each layer over
    its unpadded positions first. Fixed `scalar_mix_parameters` from the config are not trained.
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
                normed.append((layer - mean) / torch.sqrt(variance + 1e-13))
            layers = normed
        mixed = sum(w * layer for w, layer in zip(weights, layers))
        return self.gamma.to(mixed.dtype) * mixed


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
            bound = module.projection_weight.shape[1] ** -0.5
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
        layers = [torch.cat([tokens, tokens], dim=-1)[:, 1:-1] * keep]
        layers += [out[:, 1:-1] * keep for out in layer_outputs]
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
