"""The reference implementations the tests compare hf_elmo with, all in one place.

- `ReferenceBiLM`: an independent, deliberately plain NumPy biLM that reads the original hdf5 datasets directly.
  Written from the format facts (TensorFlow layout, gate order (i, j, f, o), forget bias added at run time,
  one sentence and one time step at a time), it shares no code with hf_elmo's weight mapping or model, so it
  checks both. It is trusted because it reproduces bilm-tf's own outputs on the fixture (test_parity.py).
- `reference_bilstm` / `reference_char_cnn`: straightforward float64 PyTorch versions of hf_elmo's own biLSTM
  and character CNN modules (one sentence, direction and step at a time; every window of every word), which the
  fast paths (packed rows, oneDNN, chunks, length cuts) must match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from hf_elmo.tokenization_elmo import word_to_char_ids

if TYPE_CHECKING:
    from hf_elmo.modeling_elmo import ElmoBiLstm, ElmoCharacterEncoder


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class ReferenceBiLM:
    def __init__(self, options: dict, weight_file: str):
        self.options = options
        with h5py.File(weight_file, "r") as f:
            self.w = {}
            f.visititems(lambda name, obj: self.w.__setitem__(name, obj[...].astype(np.float64))
                         if isinstance(obj, h5py.Dataset) else None)

    def token_vector(self, word: str) -> np.ndarray:
        cnn = self.options["char_cnn"]
        ids = np.array(word_to_char_ids(word, cnn["max_characters_per_token"]))
        table = np.concatenate([np.zeros((1, cnn["embedding"]["dim"])), self.w["char_embed"]])
        chars = table[ids]  # (50, d)
        pooled = []
        for i, (width, _) in enumerate(cnn["filters"]):
            kernel, bias = self.w[f"CNN/W_cnn_{i}"][0], self.w[f"CNN/b_cnn_{i}"]  # (width, d, n)
            windows = [np.einsum("wd,wdn->n", chars[p : p + width], kernel) for p in range(len(ids) - width + 1)]
            pooled.append(np.max(windows, axis=0) + bias)
        x = np.concatenate(pooled)
        x = np.tanh(x) if cnn["activation"] == "tanh" else np.maximum(x, 0)
        for k in range(cnn["n_highway"]):
            g = _sigmoid(x @ self.w[f"CNN_high_{k}/W_carry"] + self.w[f"CNN_high_{k}/b_carry"])
            t = np.maximum(x @ self.w[f"CNN_high_{k}/W_transform"] + self.w[f"CNN_high_{k}/b_transform"], 0)
            x = g * t + (1 - g) * x
        if "CNN_proj/W_proj" in self.w:
            x = x @ self.w["CNN_proj/W_proj"] + self.w["CNN_proj/b_proj"]
        return x

    def _cell(self, direction: int, layer: int, x: np.ndarray, r: np.ndarray, c: np.ndarray):
        lstm = self.options["lstm"]
        prefix = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
        z = np.concatenate([x, r]) @ self.w[f"{prefix}/W_0"] + self.w[f"{prefix}/B"]
        i, j, f, o = np.split(z, 4)
        c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
        if lstm.get("cell_clip") is not None:  # bilm-tf reads the clips with .get: absent means none
            c = np.clip(c, -lstm["cell_clip"], lstm["cell_clip"])
        r = (_sigmoid(o) * np.tanh(c)) @ self.w[f"{prefix}/W_P_0"]
        if lstm.get("proj_clip") is not None:
            r = np.clip(r, -lstm["proj_clip"], lstm["proj_clip"])
        return r, c

    def layers(self, words: list[str]) -> np.ndarray:
        """`(n_layers + 1, len(words), 2P)`: token layer repeated, then each layer [forward, backward]; zero state."""
        lstm = self.options["lstm"]
        tokens = np.stack([self.token_vector(w) for w in ["<S>", *words, "</S>"]])
        n_steps, p, h = len(tokens), lstm["projection_dim"], lstm["dim"]
        outputs = [np.concatenate([tokens, tokens], axis=1)]
        per_direction = [tokens, tokens[::-1]]
        for layer in range(lstm["n_layers"]):
            new = []
            for direction in (0, 1):
                inputs = per_direction[direction]
                r, c, out = np.zeros(p), np.zeros(h), []
                for t in range(n_steps):
                    r, c = self._cell(direction, layer, inputs[t], r, c)
                    out.append(r + inputs[t] if lstm.get("use_skip_connections") and layer > 0 else r)
                new.append(np.stack(out))
            per_direction = new
            outputs.append(np.concatenate([new[0], new[1][::-1]], axis=1))
        return np.stack(outputs)[:, 1:-1]


class ReferenceLM(ReferenceBiLM):
    """
    `ReferenceBiLM` with bilm-tf's softmax (`W` (V, P), `b` (V,), shared by both directions) and its two
    language models, one token at a time: the forward LM reads `<S> w1 .. wn`, the backward LM `</S> wn .. w1`,
    each from a given state, as bilm-tf's graph does at unroll_steps 1. `vocabulary` maps words to softmax rows.
    """

    def __init__(self, options: dict, weight_file: str, softmax_weight: np.ndarray, softmax_bias: np.ndarray,
                 vocabulary: list[str]):
        super().__init__(options, weight_file)
        self.softmax_weight, self.softmax_bias = softmax_weight.astype(np.float64), softmax_bias.astype(np.float64)
        self.word_ids = {word: i for i, word in enumerate(vocabulary)}

    def zero_state(self) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per direction, per layer `(r, c)`."""
        lstm = self.options["lstm"]
        return [[(np.zeros(lstm["projection_dim"]), np.zeros(lstm["dim"])) for _ in range(lstm["n_layers"])]
                for _ in (0, 1)]

    def step(self, direction: int, word: str, state: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list]:
        """One token through one direction's stack: the log-softmax over the vocabulary `(V,)` and the new state."""
        lstm = self.options["lstm"]
        x, new_state = self.token_vector(word), []
        for layer, (r, c) in enumerate(state):
            r, c = self._cell(direction, layer, x, r, c)
            new_state.append((r, c))
            x = r + x if lstm.get("use_skip_connections") and layer > 0 else r
        logits = self.softmax_weight @ x + self.softmax_bias
        top = logits.max()
        return logits - top - np.log(np.exp(logits - top).sum()), new_state

    def sentence(self, words: list[str], state=None):
        """
        One sentence continuing `state` (zero if None): per direction the NLLs `(n + 1,)` and log-softmax rows
        `(n + 1, V)` in reading order, and the state after it (forward after wn, backward after w1: neither LM
        reads the other boundary, as in bilm-tf's streams).
        """
        state = state if state is not None else self.zero_state()
        unk = self.word_ids["<UNK>"]
        streams = [(["<S>", *words], [*words, "</S>"]), (["</S>", *words[::-1]], [*words[::-1], "<S>"])]
        nlls, rows, new_state = [], [], []
        for direction, (inputs, targets) in enumerate(streams):
            s, nll, logps = state[direction], [], []
            for word, target in zip(inputs, targets):
                logp, s = self.step(direction, word, s)
                nll.append(-logp[self.word_ids.get(target, unk)])
                logps.append(logp)
            nlls.append(np.array(nll))
            rows.append(np.stack(logps))
            new_state.append(s)
        return nlls, rows, new_state


def reference_bilstm(encoder: ElmoBiLstm, inputs, lengths, initial_state=None):
    """One sentence and one direction at a time, one step at a time, in float64."""
    cfg = encoder.config
    batch, steps, _ = inputs.shape
    n_layers = len(encoder.layers)
    outputs = [torch.zeros(batch, steps, 2 * cfg.projection_dim, dtype=torch.float64) for _ in range(n_layers)]
    final_h = torch.zeros(n_layers, 2, batch, cfg.projection_dim, dtype=torch.float64)
    final_c = torch.zeros(n_layers, 2, batch, cfg.lstm_dim, dtype=torch.float64)
    for b in range(batch):
        n = int(lengths[b])
        for direction in (0, 1):
            x = inputs[b, :n].double()
            if direction == 1:
                x = x.flip(0)
            for depth, layer in enumerate(encoder.layers):
                w_in, w_rec = layer.input_weight[direction].double().T, layer.recurrent_weight[direction].double().T
                bias, w_proj = layer.bias[direction].double(), layer.projection_weight[direction].double().T
                if initial_state is None:
                    h = torch.zeros(cfg.projection_dim, dtype=torch.float64)
                    c = torch.zeros(cfg.lstm_dim, dtype=torch.float64)
                else:
                    h = initial_state[0][depth, direction, b].double()
                    c = initial_state[1][depth, direction, b].double()
                ys = []
                for t in range(n):
                    i, f, j, o = (x[t] @ w_in + h @ w_rec + bias).chunk(4)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(j)
                    if cfg.cell_clip is not None:
                        c = c.clamp(-cfg.cell_clip, cfg.cell_clip)
                    h = (torch.sigmoid(o) * torch.tanh(c)) @ w_proj
                    if cfg.proj_clip is not None:
                        h = h.clamp(-cfg.proj_clip, cfg.proj_clip)
                    ys.append(h)
                y = torch.stack(ys) if ys else x.new_zeros(0, cfg.projection_dim)
                if cfg.use_skip_connections and depth > 0:
                    y = y + x
                final_h[depth, direction, b], final_c[depth, direction, b] = h, c  # the initial state if n == 0
                half = slice(0, cfg.projection_dim) if direction == 0 else slice(cfg.projection_dim, None)
                outputs[depth][b, :n, half] = y if direction == 0 else y.flip(0)
                x = y
    return outputs, (final_h, final_c)


def reference_char_cnn(encoder: ElmoCharacterEncoder, char_ids: torch.Tensor) -> torch.Tensor:
    """Every word at all `max_characters_per_token` positions, in float64."""
    embedded = F.embedding(char_ids, encoder.char_embedding.weight.double()).transpose(1, 2)
    pooled = [F.conv1d(embedded, conv.weight.double(), conv.bias.double()).amax(-1) for conv in encoder.convolutions]
    x = torch.cat(pooled, -1)
    x = torch.tanh(x) if encoder.config.char_activation == "tanh" else torch.relu(x)
    for highway in encoder.highways:
        gate = torch.sigmoid(F.linear(x, highway.carry.weight.double(), highway.carry.bias.double()))
        x = gate * torch.relu(F.linear(x, highway.transform.weight.double(), highway.transform.bias.double())) + (
            1 - gate) * x
    if encoder.projection is not None:
        x = F.linear(x, encoder.projection.weight.double(), encoder.projection.bias.double())
    return x
