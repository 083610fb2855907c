"""Compare two tensors the way llm.c's test_gpt2.c does: worst error, where it happened, loudly."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerances import Bound


@dataclass(frozen=True)
class Comparison:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float  # max |a - b| / max(1, max|b|): the quantity bounds are stated in
    where: tuple  # index of the worst absolute error
    allowed: float  # the absolute error the bound allows for this reference
    bound: Bound | None
    finite: bool

    @property
    def passed(self) -> bool:
        return self.finite and (self.bound is None or self.max_abs <= self.allowed)

    def describe(self) -> str:
        status = "ok" if self.passed else "FAIL"
        bound = "" if self.bound is None else f" (allowed {self.allowed:.3g}: {self.bound.reason})"
        finite = "" if self.finite else " NON-FINITE VALUES"
        return (f"{status} {self.name} {list(self.shape)}: max abs err {self.max_abs:.3g} at {list(self.where)}, "
                f"max rel err {self.max_rel:.3g}{bound}{finite}")


def compare(name: str, actual, reference, bound: Bound | None = None) -> Comparison:
    """Compare `actual` with `reference` (same shape); both are cast to float64 first."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: shape {a.shape} does not match reference shape {b.shape}")
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    diff = np.abs(a - b)
    if diff.size == 0:
        return Comparison(name, a.shape, 0.0, 0.0, (), 0.0, bound, finite)
    flat = int(np.nanargmax(diff)) if not np.isnan(diff).all() else 0
    where = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_abs = float(diff.flat[flat])
    scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]))) if np.isfinite(b).any() else 1.0)
    allowed = bound.allowed(b) if bound is not None else float("inf")
    return Comparison(name, a.shape, max_abs, max_abs / scale, where, allowed, bound, finite)


def assert_close(name: str, actual, reference, bound: Bound) -> Comparison:
    """compare(), raising AssertionError with the full description when the bound fails."""
    result = compare(name, actual, reference, bound)
    if not result.passed:
        raise AssertionError(result.describe())
    return result
