"""Run configuration: YAML presets, ``--set key=value`` overrides, validation.

Only this module (and the CLI) reads YAML. Everything below it takes typed keyword
arguments. The ``method`` and ``views`` sections are checked against the signature of the
method's class and of its view generator, so their defaults live in one place: the code
(with the paper they come from in its docstring). The resolved config, defaults filled in,
is what a run directory stores.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import SelfsupError, closest


@dataclass
class DataConfig:
    """Where the images come from (see ``selfsup data inspect``)."""

    name: str = "fashion_mnist"
    """Dataset name: fashion_mnist, mnist, cifar10, cifar100, stl10, imagefolder, tensors."""
    root: str | None = None
    """Folder (or file, for ``tensors``); None searches the usual places."""
    train_split: str = "train"
    """Split used for pretraining (stl10: ``train+unlabeled`` uses the 100k unlabeled images)."""
    test_split: str = "test"
    image_size: int | None = None
    """Stored image size; None keeps the native size (ImageFolder needs one: 64 by default)."""
    subset: int | None = None
    """Use a class-balanced subset of this many training images (seeded), e.g. for quick runs."""
    download: bool = False
    """Fetch the dataset from its official URL when it is not found."""
    skip_bad: bool = False
    """Skip corrupt or unreadable images (counted in the log) instead of stopping."""
    on_device: Literal["auto", "always", "never"] = "auto"
    """Hold the uint8 image tensor on the training device (auto: when it takes < 25% of free memory)."""


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    """resnet18, resnet34, resnet50, or toy (tests)."""
    small_stem: bool | None = None
    """3x3 stride-1 first conv and no max-pool, for 28-64 px images; None: when image_size <= 64."""
    width: int = 64
    """Channels of the first stage (64 in torchvision); 32 or 16 for CPU-sized experiments."""


@dataclass
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = 0.3
    """Learning rate for a batch of 256; scaled by ``lr_scaling`` to the global batch size."""
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """SimCLR's rules: lr * B / 256 (linear) or lr * sqrt(B / 256); none keeps lr."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine schedule, as a fraction of the peak."""
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-6
    exclude_norm_bias: bool = True
    """No weight decay (and no LARS adaptation) for norm weights and biases."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW only."""
    trust_coefficient: float = 0.001
    """LARS only (You et al. 2017)."""


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    """Global batch size: split evenly over the processes of a torchrun launch."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPUs and on CPUs with AVX-512 BF16/AMX, fp16 on older GPUs, else fp32."""
    channels_last: bool | None = None
    """None: on for convolutional backbones (measured faster on CPU and GPU)."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, cuda:1, ..."""
    seed: int = 0
    log_every: int = 10
    """Steps between metric rows (the progress bar updates every step)."""
    knn_every: int = 1
    """Epochs between kNN monitor evaluations (0: never)."""
    knn_bank_size: int = 10000
    """Training images in the monitor's kNN bank (a seeded subset; the final eval uses all)."""
    knn_test_size: int = 2000
    checkpoint_every_steps: int = 0
    """Also write last.pt every N steps inside an epoch (0: only at epoch ends)."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under DDP (statistics over the global batch)."""
    max_steps: int | None = None
    """Stop after this many steps in total (for smoke tests and benchmarks)."""


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.07
    """NPID's weighted kNN: votes exp(cosine / T) of the k nearest training images."""
    linear_solver: Literal["lbfgs", "sgd"] = "lbfgs"
    """lbfgs: full-batch on the cached features; sgd: mini-batches, for feature sets too large for that."""
    linear_max_iter: int = 300
    """L-BFGS iterations."""
    linear_epochs: int = 100
    """SGD passes over the cached features."""
    linear_weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3])
    """Chosen on a held-out 10% of the training set, then refit on all of it."""
    batch_size: int = 512


@dataclass
class RunConfig:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})
    """``name`` plus the keyword arguments of the method's class."""
    views: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the method's view generator (augmentation strengths)."""
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
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- type checking

def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def check_value(path: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` (lists to tuples, ints to floats) or raise.

    Supports the types configs use: bool, int, float, str, None, Literal, unions,
    tuple[...] and list[...], dict.
    """
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return check_value(path, value, option)
            except SelfsupError:
                continue
    elif origin is Literal:
        if value in args:
            return value
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) == len(args):
            return tuple(check_value(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    elif origin is list and isinstance(value, (list, tuple)):
        return [check_value(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
    raise SelfsupError(f"config key '{path}': expected {_type_name(annotation)}, got {value!r}")


def _unknown_key(path: str, key: str, valid: list[str]) -> SelfsupError:
    where = f"'{path}.{key}'" if path else f"'{key}'"
    return SelfsupError(
        f"unknown config key {where}{closest(key, valid)}. Valid keys here: {', '.join(sorted(valid))}"
    )


def _build_dataclass(cls: type, values: dict[str, Any], path: str) -> Any:
    if not isinstance(values, dict):
        raise SelfsupError(f"config section '{path}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(path, key, names)
        sub_path = f"{path}.{key}" if path else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build_dataclass(hint, value, sub_path)
        else:
            kwargs[key] = check_value(sub_path, value, hint)
    return cls(**kwargs)


def signature_defaults(fn: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of the keyword parameters of ``fn`` (a class or function).

    A class whose ``__init__`` takes ``**kwargs`` also accepts the keyword parameters of the
    base class it passes them to (the next ``__init__`` up its MRO).
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target)
    out = {}
    forwards_kwargs = False
    for name, param in inspect.signature(target).parameters.items():
        if param.kind == param.VAR_KEYWORD:
            forwards_kwargs = True
        if name in ("self", *skip) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, Any), param.default)
    if forwards_kwargs and inspect.isclass(fn):
        base = next((b for b in fn.__mro__[1:] if "__init__" in vars(b)), None)
        if base is not None and base is not object:
            for name, value in signature_defaults(base, skip).items():
                out.setdefault(name, value)
    return out


def check_kwargs(path: str, values: dict[str, Any], fn: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate ``values`` against the signature of ``fn`` and fill in its defaults."""
    spec = signature_defaults(fn, skip)
    for key in values:
        if key not in spec:
            raise _unknown_key(path, key, list(spec))
    resolved = {}
    for name, (annotation, default) in spec.items():
        if name in values:
            resolved[name] = check_value(f"{path}.{name}", values[name], annotation)
        elif default is inspect.Parameter.empty:
            raise SelfsupError(f"config key '{path}.{name}' is required")
        else:
            resolved[name] = default
    return resolved


# ---------------------------------------------------------------- loading

def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=0.3'`` -> (['optim', 'lr'], 0.3); values are parsed as YAML."""
    if "=" not in text:
        raise SelfsupError(f"override '{text}' must look like section.key=value (e.g. optim.lr=0.3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SelfsupError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise SelfsupError(f"override '{text}': cannot parse the value ({err})") from None
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
        raise SelfsupError(f"config file {path} does not exist (presets are in configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SelfsupError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SelfsupError(f"config file {path} must hold a mapping at the top level")
    return raw


def resolve(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw dict (from YAML + overrides) into a complete :class:`RunConfig`."""
    from .methods import get_method  # the registry imports torch models; keep config import light

    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if isinstance(method_raw, str):
        method_raw = {"name": method_raw}
    if not isinstance(method_raw, dict):
        raise SelfsupError("config section 'method' must be a mapping with a 'name' (see --list-methods)")
    method_raw = {"name": RunConfig().method_name, **method_raw}
    views_raw = raw.pop("views", None) or {}
    config = _build_dataclass(RunConfig, raw, "")
    method_cls = get_method(method_raw["name"])
    method_args = {k: v for k, v in method_raw.items() if k != "name"}
    config.method = {"name": method_raw["name"],
                     **check_kwargs("method", method_args, method_cls, skip=method_cls.injected_args)}
    config.views = check_kwargs("views", views_raw, method_cls.views_class, skip=VIEW_INJECTED_ARGS)
    return config


#: View-generator arguments that come from the dataset, not from the config.
VIEW_INJECTED_ARGS = ("image_size", "channels", "mean", "std")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    raw = read_yaml(path) if path else {}
    return resolve(apply_overrides(raw, list(overrides)))


def to_yaml(config: RunConfig) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return yaml.safe_dump(plain(config.to_dict()), sort_keys=False)
