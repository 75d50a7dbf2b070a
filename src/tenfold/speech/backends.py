"""Backends for TaylorSENet's offline network: eager PyTorch, ``torch.compile`` (inductor) or ONNX Runtime.

:func:`inference_network` returns a module that maps compressed spectra (B, 2, T, 161) to the network's output, as
``model(spec)`` does, for ``tenfold enhance --backend`` and the ``taylorsenet`` bench:

* ``eager``: the model itself;
* ``compile``: :func:`tenfold.utils.compile.compile_for_inference` (inductor with freezing; one graph per input
  shape, compiled at its first call and cached by torch; a model that does not compile runs eagerly, with one
  warning);
* ``onnx``: the network exported with ``torch.onnx`` (the frame and batch counts dynamic) and run by ONNX Runtime on
  the CPU (float32; ``pip install onnx onnxscript onnxruntime``, in the ``dev`` extra).

Outputs equal the eager model's to float rounding (tested: 1e-5 compile, 1e-4 ONNX, relative to the output scale).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from tenfold.speech.taylorsenet import TaylorSENet

__all__ = ["BACKENDS", "OnnxTaylorSENet", "inference_network"]

BACKENDS = ("eager", "compile", "onnx")


class OnnxTaylorSENet(nn.Module):
    """A TaylorSENet exported to ONNX and run by ONNX Runtime (CPU, float32): ``forward(spec) -> out`` as the model.

    The eager model stays a submodule (``parameters()`` and ``state_dict()`` are its own; ONNX Runtime runs on a
    copy of the weights taken at export).

    Args:
        model: the network (float32, CPU).
        path: where to write the ``.onnx`` file (default: a temporary folder kept as long as this object).
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).

    Raises:
        ImportError: onnx, onnxscript or onnxruntime is not installed.
        ValueError: the model is not a float32 CPU model.
    """

    def __init__(self, model: TaylorSENet, path: str | Path | None = None, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "the onnx backend needs onnxruntime, onnx and onnxscript: pip install onnx onnxscript onnxruntime "
                "(or tenfold's dev extra)"
            ) from err
        param = next(model.parameters())
        if param.dtype != torch.float32 or param.device.type != "cpu":
            raise ValueError(f"the onnx backend runs float32 CPU models, got {param.dtype} on {param.device}")
        self.model = model.eval()
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tenfold-onnx-")
            path = Path(self._tmp.name) / "taylorsenet.onnx"
        self.path = Path(path)
        bins = model.fft_num // 2 + 1
        example = torch.zeros(2, 2, 16, bins)  # batch 2: a size-1 dimension would be specialised
        dims = {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("frames", min=2, max=1 << 20)}
        with torch.no_grad():
            torch.onnx.export(
                self.model, (example,), str(self.path), input_names=["spec"], output_names=["out"],
                dynamo=True, dynamic_shapes=(dims,), verbose=False,
            )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def forward(self, spec: Tensor) -> Tensor:
        """The network's output (B, 2, T, F) of a compressed spectrum (B, 2, T, F), float32 on the CPU."""
        if spec.dtype != torch.float32 or spec.device.type != "cpu":
            raise ValueError(f"the onnx backend takes float32 CPU spectra, got {spec.dtype} on {spec.device}")
        (out,) = self.session.run(["out"], {"spec": spec.detach().contiguous().numpy()})
        return torch.from_numpy(out)


def inference_network(model: TaylorSENet, backend: str = "eager", example: Tensor | None = None) -> nn.Module:
    """The module that computes ``model(spec)`` with ``backend`` (``eager``, ``compile`` or ``onnx``), in eval mode.

    Args:
        model: the network.
        backend: one of :data:`BACKENDS`.
        example: a spectrum to compile on at once (``compile``; otherwise the first call compiles).

    Raises:
        ValueError: an unknown backend.
    """
    if backend == "eager":
        return model.eval()
    if backend == "compile":
        from tenfold.utils.compile import compile_for_inference

        return compile_for_inference(model, example)  # with freezing: RTF 0.089 vs eager 0.119 (1 thread, quiet)
    if backend == "onnx":
        return OnnxTaylorSENet(model)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
