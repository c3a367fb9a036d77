"""Run configuration: YAML presets, ``--set key=value`` overrides, validation.

Only this module turns YAML into configuration (the report reads a run's config.yaml back for
display only). Everything below it takes typed arguments: each section is the dataclass of the
layer that uses it (``data.DataConfig``, ``models.BackboneConfig``, ``engine.OptimConfig``,
``eval.EvalConfig``); ``train`` is defined here. The ``method`` and ``views`` sections are
checked against the signatures of the method's class and of its view generator, so their
defaults live in one place: the code (with the paper they come from in its docstring). The
resolved config, defaults filled in, is what a run directory stores. Presets ship inside the
package (``selfsup/configs``).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .arguments import Count, NonNegative, Positive, PositiveInt, Range, build_dataclass, check_kwargs, plain
from .data import DataConfig
from .engine import OptimConfig
from .errors import SelfsupError
from .eval import EvalConfig
from .methods import INJECTED_ARGS, get_method
from .models import BackboneConfig


@dataclass
class TrainConfig:
    """How long and where a pretraining run goes (the ``train`` section)."""

    epochs: PositiveInt = 100
    minutes: Positive | None = None
    """Time budget for training: the first steps are timed and the run is sized to end within it
    (``epochs`` is then ignored); None trains for ``epochs``."""
    batch_size: PositiveInt = 256
    """Global batch size: split evenly over the processes of a torchrun launch."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPUs and on CPUs with AVX-512 BF16/AMX, fp16 on older GPUs, else fp32."""
    channels_last: bool | None = None
    """None: channels_last for convolutional backbones on GPUs and bf16 CPUs; on fp32 CPUs the
    faster layout is measured on the first steps. On CPUs, never channels_last for a model with a
    strided 1x1 convolution of fewer than 16 input channels (a ResNet narrower than 16): oneDNN
    computes its weight gradient wrongly there (oneDNN#6035), and ``true`` is refused."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, cuda:1, ..."""
    seed: Count = 0
    log_every: PositiveInt = 10
    """Steps between metric rows (the progress bar updates every step)."""
    knn_every: Count = 1
    """Epochs between kNN monitor evaluations (0: never)."""
    knn_bank_size: PositiveInt = 10000
    """Training images in the monitor's kNN bank (a seeded subset; the final eval uses all)."""
    knn_test_size: PositiveInt = 2000
    """Monitor queries: labelled training images held out of pretraining (class-balanced, seeded)."""
    monitor_split: Literal["holdout", "test"] = "holdout"
    """Where the monitors' queries (and so the choice of best.pt) come from: a held-out part of the
    training set (default), or the test split (then best.pt is selected on test data)."""
    online_probe: bool = True
    """A linear classifier trained beside the run on the evaluated network's detached features of
    labelled training images, its top-1 on the monitor's queries logged every epoch
    (``probe_top1``; :mod:`selfsup.eval.probe`). Runs only when the training set has labels."""
    probe_fraction: Annotated[float, Range(0, 1, open_low=True)] = 0.125
    """Share of each training batch the online probe learns from (one extra forward pass without
    gradient of that many images)."""
    best_by: Literal["auto", "knn_top1", "probe_top1", "loss"] = "auto"
    """What chooses best.pt, for the whole run: auto is the kNN monitor when it runs, else the
    online probe, else the epoch's mean loss."""
    checkpoint_every_steps: Count = 0
    """Also write last.pt every N steps inside an epoch (0: only at epoch ends)."""
    checkpoint_every_minutes: NonNegative = 10.0
    """Also write last.pt when this many minutes have passed since the last write (0: never), so a
    crash loses at most that much of a run shorter than an epoch or of a long epoch."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under DDP (statistics over the global batch)."""
    compile: bool = False
    """Compile the backbones (the student's and a teacher's) with ``torch.compile``, in place: the
    checkpoints' keys do not change. Off by default: the first steps pay minutes of compilation,
    and what it gains depends on the model and the machine (measure it: benchmarks/RESULTS.md)."""
    max_steps: PositiveInt | None = None
    """Stop after this many steps in total (for smoke tests and benchmarks)."""


@dataclass
class RunConfig:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})
    """``name`` plus the keyword arguments of the method's class."""
    views: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the method's view generator (augmentation, tiles, crops)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def method_name(self) -> str:
        return self.method["name"]

    @property
    def method_args(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


# ---------------------------------------------------------------- loading

class NumberLoader(yaml.SafeLoader):
    """YAML as people type numbers: YAML 1.1 (PyYAML) reads ``1e-3``, ``3E4`` and ``1e9`` as strings,
    since its floats need a dot and a signed exponent; here they are floats (``.5``, ``1.5e-4`` and
    ``1_000`` already were numbers). Integers stay integers: their resolver is asked first."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML with :class:`NumberLoader`."""
    return yaml.load(text, Loader=NumberLoader)  # noqa: S506 - a SafeLoader


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=0.3'`` -> (['optim', 'lr'], 0.3); values are parsed as YAML."""
    if "=" not in text:
        raise SelfsupError(f"override '{text}' must look like section.key=value (e.g. optim.lr=0.3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SelfsupError(f"override '{text}': empty key")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise SelfsupError(f"override '{text}': cannot parse the value ({yaml_problem(err)})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise SelfsupError(f"override '{text}': '{key}' is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"config file {path} does not exist (presets: selfsup pretrain --list-methods)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SelfsupError(f"config file {path} is not valid YAML: {yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise SelfsupError(f"config file {path} is not UTF-8 text (byte {err.start}); is it a config?") from None
    if not isinstance(raw, dict):
        raise SelfsupError(f"config file {path} must hold a mapping at the top level")
    return raw


def resolve(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw dict (from YAML + overrides) into a complete :class:`RunConfig`."""
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if isinstance(method_raw, str):
        method_raw = {"name": method_raw}
    if not isinstance(method_raw, dict):
        raise SelfsupError("config section 'method' must be a mapping with a 'name' (see --list-methods)")
    method_raw = {"name": RunConfig().method_name, **method_raw}
    views_raw = raw.pop("views", None) or {}
    config = build_dataclass(RunConfig, raw, "")
    method_cls = get_method(method_raw["name"])
    method_args = {k: v for k, v in method_raw.items() if k != "name"}
    config.method = {"name": method_raw["name"],
                     **plain(check_kwargs("method", method_args, method_cls, skip=INJECTED_ARGS))}
    config.views = plain(check_kwargs("views", views_raw, method_cls.views_class, skip=("image",)))
    return config


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    raw = read_yaml(find_config(str(path))) if path else {}
    return resolve(apply_overrides(raw, list(overrides)))


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------- presets

def preset_folder() -> Path:
    """The presets shipped in the package (``selfsup/configs``)."""
    return Path(str(resources.files("selfsup") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in preset_folder().glob("*.yaml"))


def find_config(name: str) -> Path:
    """A config file path, or a preset name (``simclr_cifar10``) looked up among the shipped presets
    and then in ``./configs``."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in (preset_folder(), Path("configs")):
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise SelfsupError(f"config file {path} does not exist")
    raise SelfsupError(f"config '{name}' not found (presets: {', '.join(list_presets()) or 'none found'})")
