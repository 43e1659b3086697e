"""FedAvg and friends for numpy and torch state, so users don't rewrite them in every notebook.

``fedavg`` averages *structures*: numpy arrays, numbers, dicts/lists/tuples of them, torch tensors,
torch state dicts and ``torch.nn.Module`` objects (a module comes back as a copy of the first one
with averaged parameters and buffers). Weights (e.g. sample counts) are optional.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_BLOCK = 1 << 16  # elements per block when accumulating arrays (fits in L2 cache)


def fedavg(values: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
    """The (weighted) average of ``values``, which must all have the same structure."""
    if len(values) == 0:
        raise ValueError("fedavg() needs at least one value to average")
    norm = _normalised(weights, len(values))
    return _average(list(values), norm, path="value")


FedAvg = fedavg  # the name the Workflow API tutorials use


def weighted_mean(numbers: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """Weighted mean of plain numbers (e.g. per-collaborator accuracies)."""
    norm = _normalised(weights, len(numbers))
    return float(sum(w * float(x) for w, x in zip(norm, numbers, strict=True)))


def _normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    if count == 0:
        raise ValueError("nothing to average")
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} values")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    return [float(w) / total for w in weights]


def _average(values: list[Any], weights: list[float], path: str) -> Any:
    first = values[0]
    if _is_torch_module(first):
        return _average_module(values, weights, path)
    if _is_torch_tensor(first):
        _check_same_shapes(values, path)
        return _average_tensors(values, weights)
    if isinstance(first, np.ndarray | np.generic):
        _check_same_shapes(values, path)
        return _average_arrays(values, weights)
    if isinstance(first, bool):
        return first
    if isinstance(first, int | float):
        return sum(w * v for w, v in zip(weights, values, strict=True))
    if isinstance(first, Mapping):
        _check_same_keys(values, path)
        items = [(k, _average([v[k] for v in values], weights, f"{path}[{k!r}]")) for k in first]
        mapping_type: Any = type(first)
        return dict(items) if mapping_type is dict else mapping_type(items)
    if isinstance(first, list | tuple):
        return type(first)(_average([v[i] for v in values], weights, f"{path}[{i}]")
                           for i in range(len(first)))
    raise TypeError(f"{path}: don't know how to average {type(first).__name__}; pass numpy "
                    "arrays, numbers, torch tensors/modules, or dicts/lists of them")


def _check_same_keys(values: list[Any], path: str) -> None:
    keys = set(values[0])
    for i, v in enumerate(values):
        if not isinstance(v, Mapping) or set(v) != keys:
            found = sorted(map(str, v)) if isinstance(v, Mapping) else type(v).__name__
            raise ValueError(f"{path}: value {i} has keys {found}, expected "
                             f"{sorted(map(str, keys))}")


def _check_same_shapes(values: list[Any], path: str) -> None:
    shape = getattr(values[0], "shape", ())
    for i, v in enumerate(values):
        if tuple(getattr(v, "shape", ())) != tuple(shape):
            raise ValueError(f"{path}: value {i} has shape {tuple(getattr(v, 'shape', ()))}, "
                             f"expected {tuple(shape)} (all collaborators must send the same "
                             "shapes)")


def _average_arrays(values: list[Any], weights: list[float]) -> Any:
    first = np.asarray(values[0])
    if not np.issubdtype(first.dtype, np.floating):
        # Integer counters (e.g. batch-norm's num_batches_tracked) are averaged then cast back.
        acc = sum(w * np.asarray(v, dtype=np.float64) for w, v in zip(weights, values, strict=True))
        return np.asarray(acc).astype(first.dtype)
    if first.dtype.itemsize < 4:  # float16: accumulate in float32, or sums lose digits
        wide = [np.asarray(v, dtype=np.float32) for v in values]
        return _average_arrays(wide, weights).astype(first.dtype)
    # Accumulate in place, block by block: one output buffer, no N x P stack, and a scratch
    # buffer of one block rather than of one model.
    out = np.multiply(first, first.dtype.type(weights[0]))
    if out.size <= _BLOCK:  # small models (many of them at large N): no per-block overhead
        scratch = np.empty_like(out)
        for w, v in zip(weights[1:], values[1:], strict=True):
            np.multiply(v, first.dtype.type(w), out=scratch)
            out += scratch
        return out
    flat_out = out.reshape(-1)
    scratch = np.empty(_BLOCK, dtype=out.dtype)
    for w, v in zip(weights[1:], values[1:], strict=True):
        flat_v = np.asarray(v).reshape(-1)
        for start in range(0, flat_out.size, _BLOCK):
            stop = min(start + _BLOCK, flat_out.size)
            part = scratch[:stop - start]
            np.multiply(flat_v[start:stop], first.dtype.type(w), out=part)
            flat_out[start:stop] += part
    return out


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "is_floating_point")


def _is_torch_module(value: Any) -> bool:
    return any(c.__module__ == "torch.nn.modules.module" and c.__name__ == "Module"
               for c in type(value).__mro__)


def _average_tensors(values: list[Any], weights: list[float]) -> Any:
    import torch

    first = values[0].detach()
    if first.is_floating_point() and first.element_size() < 4:  # fp16/bf16: sum in float32
        return _average_tensors([v.detach().float() for v in values], weights).to(first.dtype)
    if not first.is_floating_point():
        acc = sum(w * v.detach().double() for w, v in zip(weights, values, strict=True))
        return torch.as_tensor(acc).to(first.dtype)
    out = first.mul(weights[0])
    for w, v in zip(weights[1:], values[1:], strict=True):
        out.add_(v.detach().to(out.device), alpha=w)
    return out


def _average_module(values: list[Any], weights: list[float], path: str) -> Any:
    states = [m.state_dict() for m in values]
    averaged = _average(states, weights, f"{path}.state_dict()")
    model = copy.deepcopy(values[0])
    model.load_state_dict(averaged)
    return model
