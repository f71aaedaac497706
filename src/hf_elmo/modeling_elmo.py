"""ELMo: a character CNN feeding a stacked bidirectional LSTM language model (Peters et al. 2018).

Shapes used throughout: B = batch, W = words per sentence (padded), C = `max_characters_per_token`,
T = W + 2 (the biLM's own `<S>` and `</S>` around every sentence), P = `projection_dim`, H = `lstm_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput
from transformers.utils import ModelOutput

from .configuration_elmo import ElmoConfig
from .lm_softmax import sample_log_uniform_candidates, sampled_softmax_loss, target_log_probs
from .lstm_elmo import (
    ElmoRuntimeOptions,
    LayerWeights,
    RuntimeCache,
    SentencePacking,
    inference_linear,
    select_driver,
)
from .tokenization_elmo import BOS_WORD, EOS_WORD, word_to_char_ids


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


@dataclass
class ElmoBiLmOutput(ModelOutput):
    r"""
    The biLM's own outputs, sentence boundaries included: what language-model and task heads read.
    T = W + 2 positions per row: `<S>`, the row's n words, `</S>` at position n + 1, then padding.

    token_vectors (`torch.FloatTensor` of shape `(batch, T, projection_dim)`):
        The character-CNN vector of every position; zero at padding.
    layer_outputs (`tuple(torch.FloatTensor)`):
        `num_hidden_layers` tensors `(batch, T, 2 * projection_dim)`, `[forward, backward]`: the forward half at
        position t has read positions 0..t, the backward half positions t..n+1. Zero at padding.
    mask (`torch.BoolTensor` of shape `(batch, T)`):
        True at `<S>`, the words and `</S>`.
    state (`tuple(torch.FloatTensor)`, with `use_cache=True`):
        As `ElmoModelOutput.state`.
    """

    token_vectors: torch.FloatTensor | None = None
    layer_outputs: tuple[torch.FloatTensor, ...] | None = None
    mask: torch.BoolTensor | None = None
    state: tuple[torch.FloatTensor, torch.FloatTensor] | None = None


class ElmoHighway(nn.Module):
    """bilm-tf's highway layer: `g = sigmoid(x Wc + bc)`, `y = g * relu(x Wt + bt) + (1 - g) * x`."""

    def __init__(self, dim: int):
        super().__init__()
        self.carry = nn.Linear(dim, dim)
        self.transform = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, use_onednn: bool = True) -> torch.Tensor:
        """`(N, D)` -> `(N, D)`."""
        gate = torch.sigmoid(inference_linear(x, self.carry.weight, self.carry.bias, use_onednn))
        transformed = inference_linear(x, self.transform.weight, self.transform.bias, use_onednn)
        return gate * F.relu(transformed) + (1 - gate) * x


class ElmoCharacterEncoder(nn.Module):
    """
    Context-free token vectors from character ids: embedding, 1-D convolutions max-pooled over positions,
    activation, highway layers and a projection to `projection_dim`.

    Words whose vectors are cached in the checkpoint (`num_cached_words`) are looked up instead of recomputed.

    ELMoForManyLangs models (`word_embedding_dim > 0`) also embed the word id (the last of each word's
    `ids_per_word` ids) and concatenate that vector before the highway output, ahead of the projection.
    """

    def __init__(self, config: ElmoConfig):
        super().__init__()
        self.config = config
        self.char_embedding = nn.Embedding(config.num_characters, config.char_embedding_dim, padding_idx=0)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(config.char_embedding_dim, n_filters, width) for width, n_filters in config.char_filters
        )
        self.highways = nn.ModuleList(ElmoHighway(config.num_char_filters) for _ in range(config.num_highway_layers))
        self.word_embedding = (
            nn.Embedding(config.word_vocab_size, config.word_embedding_dim, padding_idx=0)
            if config.word_embedding_dim else None
        )
        # bilm-tf has no projection when the filters already add up to projection_dim.
        self.projection = (
            nn.Linear(config.num_char_filters + config.word_embedding_dim, config.projection_dim)
            if config.num_char_filters != config.projection_dim or self.word_embedding is not None
            else None
        )
        self.activation = torch.tanh if config.char_activation == "tanh" else F.relu
        self.runtime_options = ElmoRuntimeOptions()
        n_cached = config.num_cached_words
        self.register_buffer(
            "cached_char_ids", torch.zeros(n_cached, config.max_characters_per_token, dtype=torch.int16)
        )
        self.register_buffer("cached_embeddings", torch.zeros(n_cached, config.projection_dim))
        self._cache_index: dict[bytes, int] | None = None
        self._cache_index_key: tuple | None = None

    def compute(self, char_ids: torch.Tensor) -> torch.Tensor:
        """
        Run the CNN on every row: `(N, ids_per_word)` int64 -> `(N, P)` (the columns past C are the word id).

        A word's characters end in a run of one repeated id (the padding), and every convolution window inside
        that run gives the same value, so one such window stands for all of them: rows are sorted by where their
        run starts and each chunk is cut to `min(C, longest + widest filter)` positions. The max over positions is
        unchanged; the CNN's cost drops with the words' real length instead of `C`.
        """
        n_words = char_ids.shape[0]
        width = self.config.max_characters_per_token
        if n_words == 0:
            return self.char_embedding.weight.new_zeros(0, self.config.projection_dim)
        char_ids, word_ids = char_ids[:, :width], char_ids[:, width:]
        widest = max(conv.kernel_size[0] for conv in self.convolutions)
        positions = torch.arange(1, width + 1, device=char_ids.device)
        used = ((char_ids != char_ids[:, -1:]) * positions).amax(dim=1)  # positions before the final run
        used, order = torch.sort(used, stable=True)
        out = None
        chunk = self.runtime_options.cnn_chunk_words
        for chunk_used, chunk_order in zip(used.split(chunk), order.split(chunk)):
            keep = min(width, int(chunk_used[-1]) + widest)
            vectors = self._compute_chunk(char_ids[chunk_order, :keep], word_ids[chunk_order])
            if out is None:
                out = vectors.new_empty(n_words, vectors.shape[-1])
            out[chunk_order] = vectors
        return out

    def _compute_chunk(self, char_ids: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        """`(N, <= C)` character ids and `(N, 0 or 1)` word ids -> `(N, P)`."""
        embedded = self.char_embedding(char_ids).transpose(1, 2)  # (N, char_dim, C)
        # Max over positions before the activation, as bilm-tf does (both activations are monotonic anyway).
        pooled = [conv(embedded).amax(dim=-1) for conv in self.convolutions]
        x = self.activation(torch.cat(pooled, dim=-1))
        use_onednn = self.runtime_options.use_onednn
        for highway in self.highways:
            x = highway(x, use_onednn)
        if self.word_embedding is not None:
            x = torch.cat([self.word_embedding(word_ids[:, 0]).to(x.dtype), x], dim=-1)
        if self.projection is None:
            return x
        return inference_linear(x, self.projection.weight, self.projection.bias, use_onednn)

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
        # Prepacked weights and captured graphs derived from the above; not part of the state dict.
        self.runtime_cache = RuntimeCache()

    def weights_in(self, dtype: torch.dtype) -> LayerWeights:
        """The weights in `dtype` (the parameters themselves where they already have it)."""
        parameters = (self.input_weight, self.recurrent_weight, self.bias, self.projection_weight)
        return LayerWeights(*(p.to(dtype) for p in parameters), are_parameters=all(p.dtype == dtype for p in parameters))


class ElmoBiLstm(nn.Module):
    """
    The stacked bidirectional LSTM. The forward and backward directions are separate stacks (bilm-tf's
    `RNN_0` and `RNN_1`): layer l of a direction reads layer l - 1 of the same direction.

    The sentences of a batch are packed back to back into rows (`SentencePacking`), each starting from its own
    initial state, and each sentence's final state is taken at its own last step; `lstm_elmo.select_driver`
    decides how the steps run (see `ElmoRuntimeOptions`).
    """

    def __init__(self, config: ElmoConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            ElmoLstmLayer(config.projection_dim, config.lstm_dim, config.projection_dim)
            for _ in range(config.num_hidden_layers)
        )
        self.runtime_options = ElmoRuntimeOptions()

    def clear_runtime_cache(self) -> None:
        for layer in self.layers:
            layer.runtime_cache.clear()

    def _apply(self, fn, recurse=True):
        self.clear_runtime_cache()  # moved or cast weights invalidate prepacked copies and captured graphs
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        if mode != self.training:  # weights may be changed in training, even through `.data` (no version bump);
            self.clear_runtime_cache()  # Trainer calls train() every step: a frozen biLM keeps its prepacked copy
        return super().train(mode)

    def forward(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_state: bool = False,
        backward_inputs: torch.Tensor | None = None,
        dropout: float = 0.0,
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """
        Args:
            inputs: `(B, T, P)` token vectors, left-aligned (the forward LSTM reads `inputs[b, :lengths[b]]`).
            lengths: `(B,)` int64 sequence lengths.
            initial_state: optional `(h, c)` of shapes `(L, 2, B, P)` / `(L, 2, B, H)`.
            backward_inputs: optional `(B, T, P)`: what the backward LSTM reads, in its reading order. By default
                it reads each row of `inputs` reversed.
            dropout: drop each layer's input with this probability (bilm-tf's training `DropoutWrapper`, new
                masks at every step); a skip connection adds the dropped input, as bilm-tf's wrapper order does.
        Returns:
            Per layer `(B, T, 2P)` outputs `[forward, backward]` (zero past each row's length; the backward half
            aligned with `inputs`, or with `backward_inputs` in its reading order when given), and the final
            `(h, c)` if `return_state`.
        """
        batch, steps, _ = inputs.shape
        needs_grad = torch.is_grad_enabled() and (
            inputs.requires_grad or any(p.requires_grad for p in self.parameters())
            or (initial_state is not None and initial_state[0].requires_grad))
        clips = (self.config.cell_clip, self.config.proj_clip)
        driver = select_driver(inputs, needs_grad, self.runtime_options, clips)
        packing = SentencePacking(lengths, steps, driver.row_multiple, driver.step_multiple,
                                  reverse_backward=backward_inputs is None)
        x = packing.pack(inputs, backward_inputs)  # (2, S, R, P)
        outputs, final_h, final_c = [], [], []
        for depth, layer in enumerate(self.layers):
            if dropout:
                x = F.dropout(x, dropout, training=True)
            weights = layer.weights_in(x.dtype)
            state = None
            if initial_state is not None:
                state = (initial_state[0][depth].to(x.dtype), initial_state[1][depth].to(x.dtype))
            y, final = driver.run_layer(x, packing, weights, state, return_state, layer.runtime_cache)
            if self.config.use_skip_connections and depth > 0:
                y = y + x  # outside the recurrence, as TensorFlow's ResidualWrapper
            outputs.append(packing.unpack(y, steps))
            if return_state:
                final_h.append(final[0])
                final_c.append(final[1])
            x = y
        final_state = (torch.stack(final_h), torch.stack(final_c)) if return_state else None
        return outputs, final_state


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
        """
        `PreTrainedModel.from_pretrained`, restricted to safetensors (a pickled checkpoint is never loaded), also
        taking `ElmoRuntimeOptions` as keywords (e.g. `prepack_cpu_weights=False`), which are never stored.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("ELMo checkpoints are loaded from safetensors only (use_safetensors=False refused)")
        kwargs["use_safetensors"] = True
        runtime = {name: kwargs.pop(name) for name in ElmoRuntimeOptions.names() if name in kwargs}
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.apply_frozen_parameters()  # loading re-creates every parameter trainable
        model.set_runtime_options(**runtime)
        return loaded

    def apply_frozen_parameters(self) -> None:
        """Mark untrainable what the config fixes: fixed scalar-mix weights (heads add a frozen biLM)."""
        for module in self.modules():
            if isinstance(module, ElmoScalarMix):
                module.freeze_if_fixed()

    def set_runtime_options(self, **options) -> None:
        """
        Change how the model runs (`ElmoRuntimeOptions`: `lstm_backend`, `prepack_cpu_weights`, `use_onednn`,
        chunk sizes); never what it computes. Derived copies of the weights are dropped and rebuilt on use.
        """
        unknown = set(options) - ElmoRuntimeOptions.names()
        if unknown:
            raise ValueError(f"unknown runtime option(s) {sorted(unknown)}; known: {sorted(ElmoRuntimeOptions.names())}")
        for module in self.modules():
            if isinstance(module, (ElmoCharacterEncoder, ElmoBiLstm)):
                module.runtime_options = replace(module.runtime_options, **options)
            if isinstance(module, ElmoBiLstm):
                module.clear_runtime_cache()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """
        A new model starts as bilm-tf's training does (`bilm/training.py`), so that training from scratch follows
        it: character embedding uniform in [-1, 1]; convolutions uniform in [-0.05, 0.05] (relu) or normal with
        std sqrt(1 / (width * char_dim)) (tanh); highway and projection weights normal with std sqrt(1 / fan_in),
        the carry bias -2; LSTM kernels Glorot-uniform over TensorFlow's concatenated `[input; recurrent]` kernel,
        the forget gate's bias 1 (TensorFlow's forget bias, folded in); the softmax normal with std
        1 / sqrt(projection_dim). Modules are visited children first, so a parent's rule wins.
        """
        if isinstance(module, ElmoLstmLayer):
            four_h, in_dim = module.input_weight.shape[1:]
            proj_dim, lstm_dim = module.projection_weight.shape[1:]
            kernel_bound = (6.0 / (in_dim + proj_dim + four_h)) ** 0.5
            init.uniform_(module.input_weight, -kernel_bound, kernel_bound)
            init.uniform_(module.recurrent_weight, -kernel_bound, kernel_bound)
            projection_bound = (6.0 / (lstm_dim + proj_dim)) ** 0.5
            init.uniform_(module.projection_weight, -projection_bound, projection_bound)
            bias = torch.zeros_like(module.bias)
            bias[:, lstm_dim:2 * lstm_dim] = 1.0  # gates are (input, forget, candidate, output)
            init.copy_(module.bias, bias)
        elif isinstance(module, ElmoCharacterEncoder):
            for embedding in (module.char_embedding, module.word_embedding):
                if embedding is not None:
                    weight = torch.empty_like(embedding.weight).uniform_(-1.0, 1.0)
                    weight[0] = 0.0  # id 0: padding
                    init.copy_(embedding.weight, weight)
            for conv in module.convolutions:
                if self.config.char_activation == "relu":
                    init.uniform_(conv.weight, -0.05, 0.05)
                else:
                    init.normal_(conv.weight, std=(1.0 / (conv.kernel_size[0] * conv.in_channels)) ** 0.5)
                init.zeros_(conv.bias)
            for highway in module.highways:
                for linear, bias in ((highway.carry, -2.0), (highway.transform, 0.0)):
                    init.normal_(linear.weight, std=linear.in_features ** -0.5)
                    init.constant_(linear.bias, bias)
            if module.projection is not None:
                init.normal_(module.projection.weight, std=module.projection.in_features ** -0.5)
                init.zeros_(module.projection.bias)
        elif isinstance(module, ElmoForPreTraining) and module.softmax is not None:
            init.normal_(module.softmax.weight, std=module.softmax.in_features ** -0.5)
            init.zeros_(module.softmax.bias)
        elif isinstance(module, ElmoScalarMix):
            fixed = self.config.scalar_mix_parameters
            init.copy_(module.scalar_parameters, torch.tensor(fixed if fixed is not None else
                                                              [0.0] * module.scalar_parameters.shape[0]))
            init.ones_(module.gamma)
        elif isinstance(module, nn.Linear):  # the task heads' classifiers
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
        self._boundary_char_ids = self._boundary_input_ids(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.char_encoder.char_embedding

    @staticmethod
    def _boundary_input_ids(config: ElmoConfig) -> list[list[int]]:
        """The `input_ids` rows (`ids_per_word` ids) of `<S>` and `</S>`: bilm-tf's, or the model's own."""
        if config.boundary_char_ids is None:
            return [list(word_to_char_ids(w, config.max_characters_per_token)) for w in (BOS_WORD, EOS_WORD)]
        word_ids = [[i] for i in config.boundary_word_ids] if config.boundary_word_ids is not None else [[], []]
        return [list(chars) + word for chars, word in zip(config.boundary_char_ids, word_ids)]

    @torch.no_grad()
    def cache_words(self, words: list[str]) -> None:
        """Store the token vectors of `words` in the checkpoint so they skip the character CNN (`vocab_to_cache`)."""
        if self.config.boundary_char_ids is not None:
            raise ValueError("cache_words encodes words with bilm-tf's byte table; this model has its own character "
                             "table (ELMoForManyLangs)")
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

    def boundary_token_vectors(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Validate the inputs and return the character-CNN vectors of `<S> w1 .. wn </S>` per row, `(B, W + 2, P)`
        (zero past each row's `</S>`), with the rows' word counts n, `(B,)` int64.
        """
        char_ids, word_mask = self._check_inputs(input_ids, attention_mask)
        batch, n_words, _ = char_ids.shape
        lengths = word_mask.sum(dim=1)
        # Token vectors of the distinct real words and the two boundary tokens, scattered into (B, T, P).
        real_words = char_ids[word_mask]
        boundaries = torch.tensor(self._boundary_char_ids, dtype=torch.long, device=char_ids.device)
        vectors = self.embed_words(torch.cat([boundaries, real_words])).to(self.char_encoder.char_embedding.weight.dtype)
        tokens = vectors.new_zeros(batch, n_words + 2, self.config.projection_dim)
        rows = torch.arange(batch, device=char_ids.device)
        tokens[:, 0] = vectors[0]
        tokens[:, 1:-1][word_mask] = vectors[2:]
        tokens[rows, lengths + 1] = vectors[1]
        return tokens, lengths

    def forward_bilm(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool = False,
    ) -> ElmoBiLmOutput:
        """
        The biLM on a batch of sentences, `<S>` and `</S>` added around each: the character CNN's token vectors
        and every biLSTM layer at every position, boundaries included (see `ElmoBiLmOutput`). `forward` mixes
        these; heads read them directly.

        Args: as `forward`.
        """
        use_cache = bool(use_cache) or state is not None
        tokens, lengths = self.boundary_token_vectors(input_ids, attention_mask)
        batch, n_words = tokens.shape[0], tokens.shape[1] - 2
        if state is not None:
            state = self._check_state(state, batch)
        positions = torch.arange(n_words + 2, device=tokens.device)
        mask = positions[None, :] < (lengths + 2)[:, None]

        if batch == 0:  # nothing to run: empty outputs of the right widths
            empty = tokens.new_zeros(0, n_words + 2, self.config.output_dim)
            return ElmoBiLmOutput(token_vectors=tokens, layer_outputs=(empty,) * self.config.num_hidden_layers,
                                  mask=mask, state=self._zero_state(0, tokens) if use_cache else None)
        layer_outputs, final_state = self.encoder(tokens, lengths + 2, state, return_state=use_cache)
        return ElmoBiLmOutput(token_vectors=tokens, layer_outputs=tuple(layer_outputs), mask=mask, state=final_state)

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
            input_ids: `(B, W, C)` int64 character ids from [`ElmoTokenizer`]; a padding word is all zeros. Models
                with a word embedding take `(B, W, C + 1)`, the word id last (`ElmoManyLangsTokenizer`).
            attention_mask: `(B, W)`, 1 for words and 0 for padding (right padding), or booleans. Derived from
                `input_ids` if omitted.
            state: `(h, c)` from a previous call's `output.state`, with one row per row of this batch: row i
                continues from where row i of that call stopped. Slice it to continue fewer rows.
            use_cache: Return the final LSTM state in `output.state`.
            output_hidden_states: Return every layer in `output.hidden_states`.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        bilm = self.forward_bilm(input_ids, attention_mask, state, use_cache)
        word_mask = bilm.mask[:, 2:]  # position i + 1 holds word i
        keep = word_mask[..., None].to(bilm.token_vectors.dtype)
        words = slice(1, word_mask.shape[1] + 1)  # drop <S>, and </S>, which falls on padding or past the end
        tokens = bilm.token_vectors[:, words]
        layers = [torch.cat([tokens, tokens], dim=-1).mul_(keep)]
        # The encoder's outputs are fresh tensors: mask them in place rather than holding masked copies too.
        layers += [out[:, words].mul_(keep) for out in bilm.layer_outputs]
        mixed = self.dropout(self.scalar_mix(layers, word_mask))

        hidden_states = tuple(layers) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (mixed, bilm.state, hidden_states) if v is not None)
        return ElmoModelOutput(last_hidden_state=mixed, state=bilm.state, hidden_states=hidden_states)

    def _zero_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        return (like.new_zeros(cfg.num_hidden_layers, 2, batch, cfg.projection_dim),
                like.new_zeros(cfg.num_hidden_layers, 2, batch, cfg.lstm_dim))

    def _check_inputs(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate `(B, W, C)` ids and a right-padded mask; return long ids and a bool `(B, W)` mask."""
        c = self.config.ids_per_word
        if input_ids is None:
            raise ValueError("input_ids is required")
        what = "character ids" if c == self.config.max_characters_per_token else "character ids and a last word id"
        if not torch.is_tensor(input_ids) or input_ids.dim() != 3 or input_ids.shape[-1] != c:
            shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, words, {c}) tensor of {what}, got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer {what}, got dtype {input_ids.dtype}")
        input_ids = input_ids.to(device=self.device, dtype=torch.long)
        columns = [("character ids", input_ids[..., : self.config.max_characters_per_token], self.config.num_characters)]
        if self.config.word_embedding_dim:
            columns.append(("word ids (last column)", input_ids[..., -1], self.config.word_vocab_size))
        for name, ids, size in columns:
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
                raise ValueError(f"input_ids must hold {name} in [0, {size}), got values "
                                 f"in [{int(ids.min())}, {int(ids.max())}]")
        if attention_mask is None:
            mask = (input_ids != 0).any(dim=-1)
        else:
            if tuple(attention_mask.shape) != tuple(input_ids.shape[:2]):
                raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape[:2])} (batch, words), "
                                 f"got {tuple(attention_mask.shape)}")
            if not torch.is_tensor(attention_mask):
                attention_mask = torch.as_tensor(attention_mask)
            if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
                odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)].flatten()[0].item()
                raise ValueError(f"attention_mask must hold 0 and 1 (or booleans), got the value {odd}")
            mask = attention_mask.to(self.device) != 0
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, positions[None, :] < mask.sum(dim=1, keepdim=True)):
            raise ValueError("attention_mask must be right-padded: ones for the words, then zeros")
        return input_ids, mask

    def _check_state(self, state, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(h, c)` as returned in `output.state`, one row per batch row, finite; on the model's device."""
        cfg = self.config
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("state must be the (h, c) pair returned in output.state")
        h, c = state
        if not (torch.is_tensor(h) and torch.is_tensor(c)):
            raise ValueError(f"state must hold torch tensors (as returned in output.state), got "
                             f"{type(h).__name__} / {type(c).__name__}; convert with torch.as_tensor")
        want_h = (cfg.num_hidden_layers, 2, batch, cfg.projection_dim)
        want_c = (cfg.num_hidden_layers, 2, batch, cfg.lstm_dim)
        if h.dim() != 4 or c.dim() != 4 or (h.shape[0], h.shape[1], h.shape[3]) != (want_h[0], 2, want_h[3]) or (
                c.shape[0], c.shape[1], c.shape[3]) != (want_c[0], 2, want_c[3]):
            raise ValueError(f"state has shapes {tuple(h.shape)} / {tuple(c.shape)}; expected "
                             f"({want_h[0]}, 2, rows, {want_h[3]}) / ({want_c[0]}, 2, rows, {want_c[3]})")
        if h.shape[2] != batch or c.shape[2] != batch:
            raise ValueError(f"state holds {h.shape[2]} rows but the batch has {batch}: row i of the state continues "
                             f"row i of the batch, so both need the same number of rows (to continue only the "
                             f"first {batch}, pass (h[:, :, :{batch}], c[:, :, :{batch}]))")
        if not (h.dtype.is_floating_point and c.dtype.is_floating_point):
            raise ValueError(f"state must be floating point, got {h.dtype} / {c.dtype}")
        if not (torch.isfinite(h).all() and torch.isfinite(c).all()):
            raise ValueError("state holds non-finite values (NaN or infinity)")
        return h.to(self.device), c.to(self.device)


# ----------------------------------------------------------------------------------------------------------------
# The language model: the biLM with its softmax, bilm-tf's training objective and streaming protocol.
class ElmoNoLMHeadError(ValueError):
    """The checkpoint has no softmax (`lm_vocab_size` 0): it embeds, but it cannot score or predict words."""


@dataclass
class ElmoForPreTrainingOutput(ModelOutput):
    r"""
    The biLM as a language model. Column j (0 <= j <= n for an n-word row; the row's `W + 1` columns hold n + 1
    predictions per direction) pairs:

    - the forward LM after reading `<S> w1 .. wj`, predicting `w(j+1)` (`</S>` at j = n);
    - the backward LM after reading `</S> wn .. w(j+1)`, predicting `wj` (`<S>` at j = 0).

    loss (`torch.FloatTensor` of shape `()`, with `labels`):
        bilm-tf's `total_loss`: the mean over predictions of `0.5 * (forward + backward)` negative log-likelihood
        (full softmax).
    forward_nll / backward_nll (`torch.FloatTensor` of shape `(batch, words + 1)`, with `labels`):
        `-log p(target)` per column, zero where `prediction_mask` is False.
    prediction_mask (`torch.BoolTensor` of shape `(batch, words + 1)`):
        True at the columns that predict something (and, with `labels`, whose targets are not -100).
    forward_hidden / backward_hidden (`torch.FloatTensor` of shape `(batch, words + 1, projection_dim)`):
        The top LSTM outputs that the softmax reads, per column; zero past each row's n + 1 columns.
    state (`tuple(torch.FloatTensor)`, with `use_cache=True`):
        `(h, c)` as `ElmoModelOutput.state`, but in bilm-tf's streaming protocol: the forward LM's state after
        `wn` and the backward LM's after `w1` (neither reads the other boundary), so feeding it back as `state=`
        continues each row's stream of sentences exactly as bilm-tf's `test()` does.
    """

    loss: torch.FloatTensor | None = None
    forward_nll: torch.FloatTensor | None = None
    backward_nll: torch.FloatTensor | None = None
    prediction_mask: torch.BoolTensor | None = None
    forward_hidden: torch.FloatTensor | None = None
    backward_hidden: torch.FloatTensor | None = None
    state: tuple[torch.FloatTensor, torch.FloatTensor] | None = None


class ElmoForPreTraining(ElmoPreTrainedModel):
    """
    ELMo's biLM with the softmax its two directions share (`softmax`: `Linear(projection_dim, lm_vocab_size)`, row
    i = word i of the folder's `lm_vocab.txt`), as bilm-tf trains it. `self.elmo` is a complete `ElmoModel`, so an
    LM checkpoint also loads with `AutoModel`, and a checkpoint without a softmax loads here (`softmax` is None and
    scoring raises `ElmoNoLMHeadError`).

    The softmax is never applied to a whole batch at once: `lm_softmax` walks the vocabulary in chunks (the
    Original model's has 793,471 words).
    """

    # The loss is a mean per direction, never a sum over `num_items_in_batch`: Trainer must divide it for
    # gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: ElmoConfig):
        super().__init__(config)
        self.elmo = ElmoModel(config)
        self.softmax = nn.Linear(config.projection_dim, config.lm_vocab_size) if config.lm_vocab_size else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.elmo.get_input_embeddings()

    def softmax_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared softmax's `(weight (V, P), bias (V,))`; `ElmoNoLMHeadError` for a checkpoint without one."""
        if self.softmax is None:
            raise ElmoNoLMHeadError(
                "this checkpoint has no language-model head (no softmax; lm_vocab_size is 0): it computes ELMo "
                "vectors, but scoring or predicting words needs a checkpoint converted with --softmax-weight-file "
                "or --tf-checkpoint (and the softmax's --vocab-file)"
            )
        return self.softmax.weight, self.softmax.bias

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        backward_input_ids: torch.Tensor | None = None,
        backward_labels: torch.Tensor | None = None,
        negative_samples: int | None = None,
        **kwargs,
    ) -> ElmoForPreTrainingOutput | tuple:
        r"""
        Two forms of input:

        - Sentences (without `backward_input_ids`): `input_ids` / `attention_mask` as `ElmoModel.forward`,
          `(B, W, C)` character ids and a `(B, W)` mask; the model adds `<S>` and `</S>`. `labels`: `(B, W)`
          softmax rows of the words (`<UNK>`'s for words outside the vocabulary; -100 to leave a word out as a
          target); the model adds the `</S>` (forward) and `<S>` (backward) targets itself. Outputs have W + 1
          columns (see `ElmoForPreTrainingOutput`).
        - Streams (with `backward_input_ids`), bilm-tf's training batches (`hf_elmo.training.data`): `input_ids`
          `(B, T, C)` what the forward LSTM reads at each step and `backward_input_ids` `(B, T, C)` what the
          backward LSTM reads, in its reading order, boundaries already in the data; `labels` / `backward_labels`
          `(B, T)` what each direction predicts at each step (-100: nothing); `attention_mask` `(B, T)`. Column t
          of the outputs is step t of each direction; `state` continues each row's two streams.

        Args:
            state: a previous call's `output.state`: row i continues row i's stream (bilm-tf's `test()`).
            use_cache: return the final state (streaming protocol, see `ElmoForPreTrainingOutput.state`).
            negative_samples: in train mode, score with bilm-tf's sampled softmax (`n_negative_samples_batch`
                log-uniform candidates per direction, shared by the batch) instead of the full softmax. Evaluation
                (eval mode) always uses the full softmax.

        In train mode `config.dropout` applies as in bilm-tf: to every LSTM layer's input and to the top layer's
        output before the softmax.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = bool(use_cache) or state is not None
        dropout = self.config.dropout if self.training else 0.0
        if backward_input_ids is not None:
            forward_hidden, backward_hidden, mask, final_state = self._stream_hidden(
                input_ids, backward_input_ids, attention_mask, state, use_cache, dropout)
            targets = None
            if labels is not None or backward_labels is not None:
                if labels is None or backward_labels is None:
                    raise ValueError("streams need both labels and backward_labels (or neither)")
                targets = (self._check_labels(labels, mask.shape, "labels"),
                           self._check_labels(backward_labels, mask.shape, "backward_labels"))
        else:
            if backward_labels is not None:
                raise ValueError("backward_labels goes with backward_input_ids (stream batches); sentence batches "
                                 "take labels only")
            forward_hidden, backward_hidden, mask, lengths, final_state = self._sentence_hidden(
                input_ids, attention_mask, state, use_cache, dropout)
            targets = None if labels is None else self._sentence_targets(labels, mask, lengths)

        loss = forward_nll = backward_nll = None
        if targets is not None:
            scored = torch.stack([mask & (targets[0] != -100), mask & (targets[1] != -100)])  # (2, B, columns)
            hidden = torch.stack([forward_hidden, backward_hidden])
            if dropout:
                hidden = F.dropout(hidden, dropout, training=True)
            nll = self._negative_log_likelihoods(hidden, torch.stack(targets), scored, negative_samples)
            means = nll.sum(dim=(1, 2)) / scored.sum(dim=(1, 2)).clamp(min=1)
            forward_nll, backward_nll, loss = nll[0], nll[1], 0.5 * means.sum()
        output = ElmoForPreTrainingOutput(loss=loss, forward_nll=forward_nll, backward_nll=backward_nll,
                                          prediction_mask=mask, forward_hidden=forward_hidden,
                                          backward_hidden=backward_hidden, state=final_state)
        return output if return_dict else output.to_tuple()

    def _sentence_hidden(self, input_ids, attention_mask, state, use_cache: bool, dropout: float):
        """Top-layer outputs `(B, W + 1, P)` per direction of sentences, the column mask, word counts, final state."""
        elmo = self.elmo
        tokens, lengths = elmo.boundary_token_vectors(input_ids, attention_mask)
        batch, columns = tokens.shape[0], tokens.shape[1] - 1
        if state is not None:
            state = elmo._check_state(state, batch)
        column = torch.arange(columns, device=tokens.device)
        mask = column[None, :] <= lengths[:, None]
        # The forward LM reads <S> w1 .. wn (the first n + 1 boundary positions); the backward LM reads
        # </S> wn .. w1: reading step r is boundary position n + 1 - r, and its output belongs to column n - r.
        reverse = (lengths[:, None] - column[None, :]).clamp(min=0)  # (B, W + 1): column j <-> reading step n - j
        backward_inputs = tokens.gather(1, (reverse + 1)[..., None].expand(-1, -1, tokens.shape[-1]))
        if batch == 0:
            top = tokens.new_zeros(0, columns, self.config.output_dim)
            final_state = elmo._zero_state(0, tokens) if use_cache else None
        else:
            outputs, final_state = elmo.encoder(tokens[:, :columns], lengths + 1, state, return_state=use_cache,
                                                backward_inputs=backward_inputs, dropout=dropout)
            top = outputs[-1]
        projection = self.config.projection_dim
        keep = mask[..., None].to(top.dtype)
        forward_hidden = top[..., :projection]
        backward_hidden = top[..., projection:].gather(1, reverse[..., None].expand(-1, -1, projection)) * keep
        return forward_hidden, backward_hidden, mask, lengths, final_state

    def _stream_hidden(self, input_ids, backward_input_ids, attention_mask, state, use_cache: bool, dropout: float):
        """Top-layer outputs `(B, T, P)` of the two streams (each in its reading order), the step mask, final state."""
        elmo = self.elmo
        forward_ids, mask = elmo._check_inputs(input_ids, attention_mask)
        if not torch.is_tensor(backward_input_ids) or tuple(backward_input_ids.shape) != tuple(forward_ids.shape):
            shape = tuple(backward_input_ids.shape) if torch.is_tensor(backward_input_ids) else type(
                backward_input_ids).__name__
            raise ValueError(f"backward_input_ids must have input_ids' shape {tuple(forward_ids.shape)}, got {shape}")
        backward_ids, _ = elmo._check_inputs(backward_input_ids, mask)
        batch, steps = mask.shape
        if batch == 0:
            raise ValueError("a stream batch needs at least one row")
        if state is not None:
            state = elmo._check_state(state, batch)
        real = torch.stack([mask, mask])
        vectors = elmo.embed_words(torch.stack([forward_ids, backward_ids])[real])
        tokens = vectors.new_zeros(2, batch, steps, self.config.projection_dim)
        tokens[real] = vectors
        outputs, final_state = elmo.encoder(tokens[0], mask.sum(dim=1), state, return_state=use_cache,
                                            backward_inputs=tokens[1], dropout=dropout)
        projection = self.config.projection_dim
        return outputs[-1][..., :projection], outputs[-1][..., projection:], mask, final_state

    def _sentence_targets(self, labels: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each direction's `(B, W + 1)` targets from the words' `labels` `(B, W)`, with `</S>` and `<S>` added."""
        batch, columns = mask.shape
        labels = self._check_labels(labels, (batch, columns - 1), "labels")
        rows = torch.arange(batch, device=mask.device)
        ignore = torch.full((batch, 1), -100, dtype=torch.long, device=mask.device)
        forward_targets = torch.cat([labels, ignore], dim=1)
        forward_targets[rows, lengths] = self.config.lm_eos_id
        backward_targets = torch.cat([ignore, labels], dim=1)
        backward_targets[:, 0] = self.config.lm_bos_id
        return forward_targets, backward_targets

    def _check_labels(self, labels: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
        """`labels` as long on the model's device, `shape`, holding softmax rows or -100."""
        vocabulary_size = self.softmax_parameters()[0].shape[0]
        if not torch.is_tensor(labels) or tuple(labels.shape) != tuple(shape):
            got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
            raise ValueError(f"{name} must be a {tuple(shape)} tensor of softmax rows, got {got}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer softmax rows, got dtype {labels.dtype}")
        labels = labels.to(device=self.device, dtype=torch.long)
        bad = (labels != -100) & ((labels < 0) | (labels >= vocabulary_size))
        if bool(bad.any()):
            raise ValueError(f"{name} must hold softmax rows in [0, {vocabulary_size}) or -100, got "
                             f"{int(labels[bad][0])}")
        return labels

    def _negative_log_likelihoods(
        self, hidden: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor, negative_samples: int | None
    ) -> torch.Tensor:
        """
        `(2, B, columns)` negative log-likelihoods of `targets` (`(2, B, columns)`) from `hidden`
        (`(2, B, columns, P)`) where `scored`, zero elsewhere: the full softmax, or in train mode with
        `negative_samples` bilm-tf's sampled softmax (each direction its own candidates).
        """
        weight, bias = self.softmax_parameters()
        nll = hidden.new_zeros(scored.shape, dtype=torch.promote_types(hidden.dtype, torch.float32))
        if negative_samples and self.training:
            for direction in (0, 1):
                rows, wanted = hidden[direction][scored[direction]], targets[direction][scored[direction]]
                candidates = sample_log_uniform_candidates(wanted, negative_samples, weight.shape[0])
                nll[direction][scored[direction]] = sampled_softmax_loss(rows, weight, bias, wanted, candidates)
            return nll
        # Both directions in one pass over the vocabulary: the softmax weight is read once, in larger GEMMs.
        nll[scored] = -target_log_probs(hidden[scored], weight, bias, targets[scored])
        return nll


# ----------------------------------------------------------------------------------------------------------------
# Task heads: ELMo inside a task model, the biLM frozen by default (config.freeze_bilm) and the scalar mix trained.


class ElmoTaskHeadModel(ElmoPreTrainedModel):
    """
    Base of the task heads: an `ElmoModel` at `self.elmo` (so a converted `ElmoModel` checkpoint loads into a
    head, the head's weights newly initialised) whose biLM is frozen when `config.freeze_bilm` is true, and a
    linear `classifier` from the ELMo vectors (the trained scalar mix of the biLM's layers, with dropout
    `config.mix_dropout` in train mode) to `config.num_labels` logits. Subclasses say what the classifier reads
    (`_features`), how the loss is computed (`_loss`) and the output class.
    """

    output_class: type[ModelOutput]

    def __init__(self, config: ElmoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.elmo = ElmoModel(config)
        self.classifier = nn.Linear(config.output_dim, config.num_labels)
        self.post_init()

    def apply_frozen_parameters(self) -> None:
        """As `ElmoPreTrainedModel`'s, and the character CNN and LSTMs trainable only when `config.freeze_bilm` is
        false; the mix is untouched."""
        super().apply_frozen_parameters()
        trainable = not self.config.freeze_bilm
        for module in (self.elmo.char_encoder, self.elmo.encoder):
            module.requires_grad_(trainable)

    def post_init(self) -> None:
        super().post_init()
        self.apply_frozen_parameters()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ModelOutput | tuple:
        r"""
        Args:
            input_ids / attention_mask: as [`ElmoModel`], `(B, W, C)` / `(B, W)`.
            labels: see the head's class.
            output_hidden_states: also return `ElmoModel`'s `hidden_states`.
        Returns:
            `output_class(loss, logits, hidden_states)` (`loss` only with `labels`), or the tuple of those present.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.elmo(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                            return_dict=True)
        logits = self.classifier(self._features(outputs.last_hidden_state, input_ids, attention_mask))
        loss = self._loss(logits, labels.to(logits.device)) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return self.output_class(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def _features(self, vectors: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                  ) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ElmoForTokenClassification(ElmoTaskHeadModel):
    """
    `num_labels` logits `(B, W, num_labels)` per word from its ELMo vector. `labels`: `(B, W)` int64, word-aligned
    (ELMo has one position per word); -100 (padding, or words to skip) is ignored by the cross-entropy loss.
    """

    output_class = TokenClassifierOutput

    def _features(self, vectors, input_ids, attention_mask):
        return vectors

    def _loss(self, logits, labels):
        return F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=-100)


class ElmoForSequenceClassification(ElmoTaskHeadModel):
    """
    Logits `(B, num_labels)` from the masked mean of a sentence's ELMo vectors (a sentence of no words pools to
    zeros). ELMo has no summary token, and its final LSTM states summarise only the top layer while the trained
    mix weighs every layer; the mean of the mixed word vectors (allennlp's averaged "bag of embeddings" encoder)
    keeps the mix meaningful. `labels` and `problem_type` as BERT's: `(B,)` floats (or `(B, num_labels)`) for
    "regression" (MSE), `(B,)` class ids for "single_label_classification" (cross-entropy), `(B, num_labels)` 0/1
    floats for "multi_label_classification" (BCE with logits); chosen from `num_labels` and the labels' dtype
    when unset, and then stored in the config.
    """

    output_class = SequenceClassifierOutput

    def _features(self, vectors, input_ids, attention_mask):
        word_mask = self.elmo._check_inputs(input_ids, attention_mask)[1]
        counts = word_mask.sum(dim=1, keepdim=True).clamp_min(1).to(vectors.dtype)
        return vectors.sum(dim=1) / counts  # the vectors are zero at padding (dropout keeps zeros)

    def _loss(self, logits, labels):
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.reshape(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


__all__ = ["ElmoBiLmOutput", "ElmoModel", "ElmoModelOutput", "ElmoPreTrainedModel"]
__all__ += ["ElmoForPreTraining", "ElmoForPreTrainingOutput", "ElmoForSequenceClassification",
            "ElmoForTokenClassification", "ElmoNoLMHeadError"]
