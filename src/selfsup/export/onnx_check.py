"""ONNX export of an encoder, checked with onnxruntime against the PyTorch output.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is tried first: it needs no
onnxscript and takes a fraction of a second; the torch.export-based exporter is the fallback.
The batch dimension is dynamic, and the check runs several batch sizes to prove it.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import SelfsupError

OPSET = 17  # LayerNormalization is one ONNX operator from opset 17
CHECKED_BATCH_SIZES = (2, 1, 5)
RELATIVE_TOLERANCE = 1e-4  # of the output's scale (its largest magnitude, at least 1)


def require(package: str, why: str) -> object:
    """Import ``package`` or raise an error naming it and the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise SelfsupError(f"{why} needs the '{package}' package, which is not installed: "
                           "pip install 'selfsup[export]'") from None


def check_onnx_target(path: Path) -> tuple[object, object]:
    """The onnx and onnxruntime modules, once ``path`` is known to be an .onnx name (errors say the fix)."""
    if path.suffix != ".onnx":
        raise SelfsupError(f"--onnx {path}: use a file name ending in .onnx")
    return require("onnx", "--onnx"), require("onnxruntime", "--onnx (to check the exported model)")


def _reason(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``module`` to ``path`` with a dynamic batch; returns the exporter that succeeded."""
    names = {"input_names": ["images"], "output_names": ["features"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer notes
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, **names)
            return "torchscript"
        except Exception as err:  # noqa: BLE001 - removed from a later torch, or an operator it lacks
            legacy = f"the TorchScript exporter failed ({_reason(err)})"
        try:
            importlib.import_module("onnxscript")
        except ImportError:
            raise SelfsupError(f"could not export the encoder to {path}: {legacy}, and the torch.export-based "
                               "exporter needs the 'onnxscript' package: pip install 'selfsup[export]'") from None
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=max(OPSET, 18),
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
                              verbose=False, **names)
            return "dynamo"
        except Exception as err:  # noqa: BLE001
            raise SelfsupError(f"could not export the encoder to {path}: {legacy}, and so did the torch.export-based "
                               f"one ({_reason(err)}). Export the weights without --onnx, or try another torch "
                               "version.") from None


@torch.no_grad()
def export_onnx(encoder: nn.Module, input_shape: tuple[int, int, int], path: Path,
                batch_sizes: tuple[int, ...] = CHECKED_BATCH_SIZES) -> dict:
    """Write ``encoder`` ((B, C, H, W) -> (B, D)) to ``path`` as ONNX, run it with onnxruntime on
    seeded random inputs of every batch size in ``batch_sizes`` and compare with PyTorch.

    Returns the card's ``onnx`` entry; raises when the largest difference exceeds
    :data:`RELATIVE_TOLERANCE` times the output's scale."""
    onnx, ort = check_onnx_target(path)
    encoder = encoder.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn((b, *input_shape), generator=generator) for b in batch_sizes]
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = _export(encoder, inputs[0], path)
    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = [torch.from_numpy(session.run(None, {"images": x.numpy()})[0]) for x in inputs]
    except Exception as err:  # noqa: BLE001 - onnx and onnxruntime raise their own types
        path.unlink(missing_ok=True)
        raise SelfsupError(f"onnx/onnxruntime cannot run the exported {path} ({str(err)[:300]}), so it was removed; "
                           "export without --onnx, or report this with the versions of torch and onnxruntime") from None
    expected = [encoder(x) for x in inputs]
    diff = max((out - ref).abs().max().item() for out, ref in zip(outputs, expected))
    scale = max(max(ref.abs().max().item() for ref in expected), 1.0)
    tolerance = RELATIVE_TOLERANCE * scale
    if not diff <= tolerance:
        path.unlink()
        raise SelfsupError(f"{path}: onnxruntime's output differs from PyTorch's by {diff:.3g} (tolerance "
                           f"{tolerance:.3g}), so the file was removed; export without --onnx, or report this with "
                           "the versions of torch and onnxruntime")
    opset = next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))
    return {"file": str(path), "exporter": exporter, "opset": opset,
            "input": f"images float32 (batch, {', '.join(map(str, input_shape))})",
            "output": f"features float32 (batch, {expected[0].shape[1]})", "max_abs_diff": diff,
            "tolerance": tolerance, "checked_batch_sizes": list(batch_sizes),
            "onnxruntime": getattr(ort, "__version__", "unknown")}
