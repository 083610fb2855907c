"""What every loader shares: the error type, JSON/file helpers, and the final checks.

Each format reader turns its file into {our flat name: array} and hands it to `build_params`,
which checks it against the config -- names, shapes, dtype, optionally finiteness -- with
messages that name the file and the tensor, then nests it into ref_numpy's params dict.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import ref_numpy


class CheckpointError(ValueError):
    """A checkpoint file is malformed or does not match its config (message names file and tensor)."""


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else FileNotFoundError saying which file of which format is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path} ({what})")
    return path


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON object from `path`, naming the file when it is missing or not JSON."""
    text = require_file(path, what).read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({what}): {error}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({what}), got {type(value).__name__}")
    return value


def config_value(values: dict, key: str, path: Path, *alternatives: str):
    """values[key] (or the first alternative key present), or an error naming the file and key."""
    for name in (key, *alternatives):
        if name in values:
            return values[name]
    raise CheckpointError(f"{path} has no {' or '.join(repr(k) for k in (key, *alternatives))} entry")


def make_config(path: Path, **fields) -> ref_numpy.GPTConfig:
    """GPTConfig from values read out of `path`; invalid values name the file."""
    try:
        return ref_numpy.GPTConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def check_finite(flat: dict[str, np.ndarray], source: str) -> None:
    """Raise naming the first tensor that holds a NaN or an infinity (keys: names as printed)."""
    for name, array in flat.items():
        bad = ~np.isfinite(array)
        if bad.any():
            kinds = sorted({"NaN" if np.isnan(v) else "Inf" for v in array[bad][:100]})
            where = np.argwhere(bad)[0].tolist()
            raise CheckpointError(f"{source}: tensor {name} holds {int(bad.sum())} non-finite value(s) "
                                  f"({'/'.join(kinds)}), first at index {where}")


def build_params(config: ref_numpy.GPTConfig, flat: dict[str, np.ndarray], source: str, *,
                 origin: dict[str, str] | None = None, finite: bool = False) -> dict:
    """Check `flat` ({our flat name: array}) against `config` and nest it into ref_numpy's params.

    source: the file or directory, for messages.  origin: our name -> the name in the file, so
    a message can say both.  finite: also refuse NaN/Inf (reads every value, so optional).
    """
    origin = origin or {}

    def label(name):
        return f"{origin[name]!r} (our {name!r})" if name in origin and origin[name] != name else repr(name)

    expected = ref_numpy.expected_shapes(config)
    missing = [name for name in expected if name not in flat]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(map(label, missing[:5]))}"
                              f"{' ...' if len(missing) > 5 else ''} for {config}")
    extra = sorted(set(flat) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: tensor(s) {', '.join(map(label, extra[:5]))} do not belong to {config}")
    for name, shape in expected.items():
        if tuple(flat[name].shape) != shape:
            raise CheckpointError(f"{source}: tensor {label(name)} has shape {tuple(flat[name].shape)}, but the "
                                  f"config ({config}) needs {shape}")
    dtypes = {np.dtype(a.dtype) for a in flat.values()}
    if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
        listing = ", ".join(f"{label(n)}: {a.dtype}" for n, a in list(flat.items())[:3])
        raise CheckpointError(f"{source}: tensors must share one floating-point dtype, found "
                              f"{sorted(map(str, dtypes))} ({listing}, ...)")
    if finite:
        check_finite({label(n): a for n, a in flat.items()}, source)
    params = ref_numpy.unflatten_params({name: flat[name] for name in expected})
    ref_numpy.check_params(config, params)
    return params
