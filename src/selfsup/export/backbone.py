"""``selfsup export``: a checkpoint's encoder as weights for plain torchvision or timm, a JSON
card, and optionally an ONNX file checked with onnxruntime."""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import SelfsupError
from ..files import user_file_mode
from ..models.backbones import ResNet
from ..models.vit import VisionTransformer
from ..recipes.loading import load_encoder
from .card import preprocessing, provenance, results, write_card
from .onnx_check import RELATIVE_TOLERANCE, check_onnx_target, export_onnx
from .resnet import resnet_target
from .target import FORMATS, Target
from .vit import vit_target

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def target_for(encoder: torch.nn.Module, library: str, source: str, backbone_name: str) -> Target:
    """The ``library`` model (torchvision or timm) equal to ``encoder``, or an error saying why there is none."""
    if isinstance(encoder, ResNet):
        return resnet_target(encoder, library)
    if isinstance(encoder, VisionTransformer):
        return vit_target(encoder, library)
    raise SelfsupError(f"{source} uses the backbone '{backbone_name}'; export knows ResNets (resnet18/34/50) and "
                       "ViTs (vit_tiny/vit_small). Pretrain with one of those (--set backbone.name=resnet18).")


def write_weights(weights: dict[str, torch.Tensor], out: Path) -> None:
    """Write to a temporary file beside ``out``, then rename: a full disk or a kill never leaves a
    truncated weights file under the name."""
    partial = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(weights, str(partial))
            os.chmod(partial, user_file_mode())  # safetensors writes 0600; a shared model should read like any file
        else:
            torch.save(weights, partial)
        os.replace(partial, out)
    except Exception as err:  # noqa: BLE001 - OSError, SafetensorError, torch's RuntimeError: all a failed write
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:200]
        raise SelfsupError(f"could not write {out}: {reason}; choose another --out (or free disk space)") from None


@torch.no_grad()
def check_recipe(target: Target, encoder: torch.nn.Module, weights_file: Path, input_shape: tuple[int, ...]) -> dict:
    """Run the card's recipe on the written file and compare its model with ``encoder`` on random input;
    the file is removed when the recipe fails or its model differs.

    Skipped (and said so) when the target library is not installed here: writing needs none."""
    if importlib.util.find_spec(target.library) is None:
        return {"skipped": f"{target.library} is not installed where the export ran"}
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    expected = encoder.eval()(x)
    namespace: dict = {}
    version = "unknown"
    try:
        version = getattr(importlib.import_module(target.library), "__version__", "unknown")
        exec(target.recipe(str(weights_file.resolve())), namespace)  # noqa: S102 - our own lines: torch, the library
        diff = (namespace["model"].eval()(x) - expected).abs().max().item()
    except Exception as err:  # noqa: BLE001 - an older or newer library without an argument or a name the recipe uses
        weights_file.unlink(missing_ok=True)
        raise SelfsupError(f"the card's recipe for {weights_file} fails with {target.library} {version} "
                           f"({type(err).__name__}: {str(err)[:300]}), so the file was removed; upgrade it "
                           f"(pip install -U {target.library}) or export with the other --format") from None
    tolerance = RELATIVE_TOLERANCE * max(expected.abs().max().item(), 1.0)
    if not diff <= tolerance:
        weights_file.unlink()
        raise SelfsupError(f"{weights_file}: the {target.library} model built by its recipe differs from the encoder "
                           f"by {diff:.3g} (tolerance {tolerance:.3g}), so the file was removed; export with the "
                           f"other --format, and report this with the versions of torch and {target.library} {version}")
    return {"max_abs_diff": diff, "batch_size": 2, "library_version": version}


def export_backbone(checkpoint_path: str | Path, out: str | Path, library: str = "torchvision",
                    onnx: str | Path | None = None, network: str | None = None, quiet: bool = False) -> dict:
    """Write the encoder of ``checkpoint_path`` as a ``library`` (torchvision or timm) state dict to
    ``out`` (.safetensors or .pt), its card to ``out``.json and, when ``onnx`` is given, an ONNX
    file (``""``: ``out`` with the suffix .onnx) checked with onnxruntime. ``network`` (student or
    teacher; None: the one the method's paper evaluates, DINO's teacher) for methods with a
    momentum teacher. Returns the card."""
    out = Path(out)
    if out.suffix not in WEIGHT_SUFFIXES:
        raise SelfsupError(f"--out {out}: use a .safetensors (recommended) or .pt file name")
    if library not in FORMATS:
        raise SelfsupError(f"--format {library}: choose one of {', '.join(FORMATS)}")
    onnx_path = None if onnx is None else (Path(onnx) if str(onnx) else out.with_suffix(".onnx"))
    if onnx_path is not None:  # before any work: a missing package or a bad name is known now
        check_onnx_target(onnx_path)
    steps = ["read checkpoint", "convert", "provenance", "write weights", "check recipe"] + \
        (["ONNX export and check"] if onnx_path else [])
    with tqdm(total=len(steps), desc="export", unit="step", disable=quiet, leave=False) as bar:
        def step(name: str) -> None:  # the previous step is done; show the one starting
            if steps.index(name):
                bar.update()
            bar.set_postfix_str(name)

        step("read checkpoint")
        encoder, config, meta = load_encoder(checkpoint_path, [f"eval.network={network}"] if network else [])
        encoder.eval()
        backbone_name = config.backbone.name
        kind = "ViT" if isinstance(encoder, VisionTransformer) else "ResNet"
        head_layers = meta.encoder.head_layers
        if head_layers:
            raise SelfsupError(f"{meta.path} was fine-tuned with {head_layers} projection-head layer(s) on its "
                               f"trunk, which a plain {library} model has no place for; export the pretraining "
                               "checkpoint, or a network fine-tuned with --head-layers 0")
        step("convert")
        target = target_for(encoder, library, str(meta.path), backbone_name)
        data = meta.data
        input_shape = (data.channels, data.image_size, data.image_size)
        step("provenance")  # before writing: an unreadable meta/results file stops the export with nothing written
        card = {
            "format": "selfsup-export", "version": 1, "weights": out.name,
            "architecture": {**target.architecture(), "selfsup_backbone": backbone_name, "selfsup_arch": encoder.arch},
            "num_features": encoder.num_features,
            "output": f"features float32 (B, {encoder.num_features}): " + (
                ("the mean of the patch tokens after the final LayerNorm" if encoder.arch.get("pool") == "mean"
                 else "the [CLS] token after the final LayerNorm") if kind == "ViT" else "globally average-pooled res5"),
            "preprocessing": preprocessing(data, kind == "ViT"),
            "provenance": provenance(meta),
            "results": results(meta),
            "recipe": target.recipe(out.name),
        }
        step("write weights")
        for stale in (out.with_suffix(".json"), onnx_path):  # an earlier export's card or ONNX file must not
            if stale is not None:                             # outlive weights this export may yet remove
                with contextlib.suppress(OSError):  # an unwritable place: the write below says so
                    stale.unlink(missing_ok=True)
        write_weights(target.weights, out)
        step("check recipe")
        card["recipe_check"] = check_recipe(target, encoder, out, input_shape)
        write_card(out.with_suffix(".json"), card)
        if onnx_path is not None:  # the card is written first: a failed ONNX check leaves usable weights
            step("ONNX export and check")
            card["onnx"] = export_onnx(encoder, input_shape, onnx_path)
            card["onnx"]["file"] = os.path.relpath(onnx_path, out.parent)  # like "weights": relative to the card
            write_card(out.with_suffix(".json"), card)
        bar.update()
    return card
