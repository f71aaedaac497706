"""
The biLSTM recurrence for GPUs: fixed-shape chunks of time steps, captured once as CUDA graphs and replayed.

On a GPU each time step is a dozen small kernels (a matmul per direction pair, the gate nonlinearities, the
clipping, the projection), so an eager step loop is bound by kernel-launch latency rather than by the GPU. Here a
chunk of `STEPS_PER_GRAPH` steps is written so that nothing in it depends on the batch's values or on Python-side
bookkeeping: which rows start a sentence at a step is a `keep` mask, initial states come in as tensors, and every
result lands in a preallocated buffer. That chunk is captured as one CUDA graph per (layer, rows, dtype, flags)
and replayed `ceil(S / STEPS_PER_GRAPH)` times per layer. On other devices (and wherever capture fails) the same
chunk function runs eagerly, which is how the tests check it on CPU.

Shapes: R = packed rows (padded to a multiple of `ROW_MULTIPLE` so that graphs are reused across batches),
k = `STEPS_PER_GRAPH`, P = projection size, H = LSTM cell size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Steps per captured graph: larger saves replays, smaller bounds the (2, k, R, 4H) input buffer.
STEPS_PER_GRAPH = 8
# Packed rows are padded to a multiple of this, so that batches of similar size share graphs.
ROW_MULTIPLE = 8


def chunk_shape() -> tuple[int, int]:
    """`(ROW_MULTIPLE, STEPS_PER_GRAPH)`: what a packing plan for `LstmChunkRunner` is padded to."""
    return ROW_MULTIPLE, STEPS_PER_GRAPH


def lstm_steps(
    pre: torch.Tensor,
    keep: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    recurrent_weight: torch.Tensor,
    projection_weight: torch.Tensor,
    output: torch.Tensor,
    cell_history: torch.Tensor | None,
    start_h: torch.Tensor | None,
    start_c: torch.Tensor | None,
    cell_clip: float | None,
    proj_clip: float | None,
) -> None:
    """
    k steps of both directions of one layer, in place and without host synchronisation.

    Args:
        pre: `(2, k, R, 4H)` input contributions plus bias, gates in (input, forget, candidate, output) order.
        keep: `(k, R, 1)` 0.0 where a sentence starts at that step (the state is reset), else 1.0.
        h, c: `(2, R, P)` / `(2, R, H)` running state, updated.
        recurrent_weight, projection_weight: `(2, 4H, P)` / `(2, P, H)`.
        output: `(2, k, R, P)` receives each step's projected output.
        cell_history: `(2, k, R, H)` receives each step's cell, or None.
        start_h, start_c: `(2, k, R, P)` / `(2, k, R, H)` initial states placed where `keep` is 0 (zero
            elsewhere), or None for zero initial states.
    """
    lstm_dim = c.shape[-1]
    recurrent_t, projection_t = recurrent_weight.transpose(1, 2), projection_weight.transpose(1, 2)
    for t in range(pre.shape[1]):
        h.mul_(keep[t])
        c.mul_(keep[t])
        if start_h is not None:
            h.add_(start_h[:, t])
            c.add_(start_c[:, t])
        gates = torch.baddbmm(pre[:, t], h, recurrent_t)
        input_gate, forget_gate = gates[..., :lstm_dim].sigmoid(), gates[..., lstm_dim : 2 * lstm_dim].sigmoid()
        candidate = gates[..., 2 * lstm_dim : 3 * lstm_dim].tanh()
        output_gate = gates[..., 3 * lstm_dim :].sigmoid()
        c.mul_(forget_gate).addcmul_(input_gate, candidate)
        if cell_clip is not None:
            c.clamp_(-cell_clip, cell_clip)
        new_h = torch.bmm(output_gate * c.tanh(), projection_t)
        if proj_clip is not None:
            new_h.clamp_(-proj_clip, proj_clip)
        h.copy_(new_h)
        output[:, t] = new_h
        if cell_history is not None:
            cell_history[:, t] = c


@dataclass
class _StaticBuffers:
    """Inputs and outputs of one chunk at a fixed shape; the graphs read and write only these."""

    pre: torch.Tensor
    keep: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor
    output: torch.Tensor
    cell_history: torch.Tensor | None
    start_h: torch.Tensor | None
    start_c: torch.Tensor | None


class LstmChunkRunner:
    """
    Runs `lstm_steps` chunk by chunk over a packed layer, replaying a captured CUDA graph per chunk on CUDA
    (eagerly elsewhere). One runner lives on each `ElmoBiLstm`; graphs and buffers are cached by shape.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, _StaticBuffers] = {}
        self._graphs: dict[tuple, Callable[[], None]] = {}
        self.capture_devices: tuple[str, ...] = ("cuda",)
        self.capture_failed = False

    def __deepcopy__(self, memo):  # graphs and their buffers belong to this model's tensors: a copy starts afresh
        return type(self)()

    def __reduce__(self):
        return (type(self), ())

    def clear(self) -> None:
        self._buffers.clear()
        self._graphs.clear()

    def _static(self, like: torch.Tensor, rows: int, lstm_dim: int, proj_dim: int, with_state: bool,
                with_history: bool) -> tuple[tuple, _StaticBuffers]:
        # Buffers made in inference mode cannot be updated outside it (and the other way round).
        key = (like.device, like.dtype, STEPS_PER_GRAPH, rows, lstm_dim, proj_dim, with_state, with_history,
               torch.is_inference_mode_enabled())
        if key not in self._buffers:
            k = STEPS_PER_GRAPH
            new = lambda *shape: like.new_zeros(shape)  # noqa: E731
            self._buffers[key] = _StaticBuffers(
                pre=new(2, k, rows, 4 * lstm_dim), keep=new(k, rows, 1), h=new(2, rows, proj_dim),
                c=new(2, rows, lstm_dim), output=new(2, k, rows, proj_dim),
                cell_history=new(2, k, rows, lstm_dim) if with_history else None,
                start_h=new(2, k, rows, proj_dim) if with_state else None,
                start_c=new(2, k, rows, lstm_dim) if with_state else None,
            )
        return key, self._buffers[key]

    def _step_function(self, static: _StaticBuffers, weights, clips):
        recurrent_weight, projection_weight = weights

        def run() -> None:
            lstm_steps(static.pre, static.keep, static.h, static.c, recurrent_weight, projection_weight,
                       static.output, static.cell_history, static.start_h, static.start_c, *clips)

        return run

    def _replay_function(self, key: tuple, static: _StaticBuffers, weights, clips, capturable: bool):
        """The captured chunk's replay for this layer and shape, or None to run eagerly (a device without graphs,
        temporary weights, or a failed capture)."""
        if static.pre.device.type not in self.capture_devices or self.capture_failed or not capturable:
            return None
        # A graph holds the weights' addresses: it stays valid for in-place updates, not for moved weights.
        graph_key = key + tuple(w.data_ptr() for w in weights) + (clips,)
        replay = self._graphs.get(graph_key)
        if replay is None:
            try:
                replay = self._capture(self._step_function(static, weights, clips), static.pre.device)
            except Exception as error:  # a driver or torch build that cannot capture: stay correct, run eagerly
                warnings.warn(f"CUDA graph capture of the ELMo LSTM failed ({error}); running it eagerly",
                              RuntimeWarning, stacklevel=4)
                self.capture_failed = True
                return None
            self._graphs[graph_key] = replay
        return replay

    @staticmethod
    def _capture(run: Callable[[], None], device: torch.device) -> Callable[[], None]:
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

    def run_layer(
        self,
        x: torch.Tensor,
        plan,
        weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        initial: tuple[torch.Tensor, torch.Tensor] | None,
        return_state: bool,
        clips: tuple[float | None, float | None],
        capturable: bool = True,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """
        `x`: packed `(2, S, R, In)` with `S` a multiple of `STEPS_PER_GRAPH` -> packed `(2, S, R, P)` outputs and,
        if `return_state`, each sentence's final `(h, c)` `(2, B, P)` / `(2, B, H)`. `capturable=False` when
        `weights` are temporaries (converted to another dtype), whose addresses a graph must not keep.
        """
        input_weight, recurrent_weight, bias, projection_weight = weights
        _, steps, rows, in_dim = x.shape
        proj_dim, lstm_dim = projection_weight.shape[1:]
        k = STEPS_PER_GRAPH
        key, static = self._static(x, rows, lstm_dim, proj_dim, initial is not None, return_state)
        run = self._replay_function(key, static, (recurrent_weight, projection_weight), clips, capturable)
        if run is None:
            run = self._step_function(static, (recurrent_weight, projection_weight), clips)
        keep = plan.keep_mask(x)  # (S, R, 1)
        if initial is not None:
            start_h, start_c = plan.scatter_initial_state(initial[0]), plan.scatter_initial_state(initial[1])
        output = x.new_empty(2, steps, rows, proj_dim)
        cell_history = x.new_empty(2, steps, rows, lstm_dim) if return_state else None
        static.h.zero_()
        static.c.zero_()
        for start in range(0, steps, k):
            chunk = slice(start, start + k)
            torch.baddbmm(bias[:, None], x[:, chunk].reshape(2, k * rows, in_dim), input_weight.transpose(1, 2),
                          out=static.pre.view(2, k * rows, -1))
            static.keep.copy_(keep[chunk])
            if initial is not None:
                static.start_h.copy_(start_h[:, chunk])
                static.start_c.copy_(start_c[:, chunk])
            run()
            output[:, chunk] = static.output
            if return_state:
                cell_history[:, chunk] = static.cell_history
        final = None
        if return_state:
            final = (plan.final_state(output, initial[0] if initial is not None else None),
                     plan.final_state(cell_history, initial[1] if initial is not None else None))
        return output, final


__all__ = ["LstmChunkRunner", "chunk_shape", "lstm_steps", "ROW_MULTIPLE", "STEPS_PER_GRAPH"]
