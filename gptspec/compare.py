"""Compare two tensors the way llm.c's test_gpt2.c does: worst error, where it happened, loudly."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerances import NOISE_MULTIPLE, Bound


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
    noise_bound: Bound | None = None  # absolute: NOISE_MULTIPLE x the measured noise (tolerances.noise_bound)

    @property
    def passed(self) -> bool:
        return (self.finite and (self.bound is None or self.max_abs <= self.allowed)
                and (self.noise_bound is None or self.max_abs <= self.noise_bound.value))

    @property
    def bound_ratio(self) -> float | None:
        """Error / the derived bound's allowed error (fails above 1)."""
        return None if self.bound is None else self.max_abs / self.allowed if self.allowed else float("inf")

    @property
    def noise_ratio(self) -> float | None:
        """Error / the measured noise (fails above NOISE_MULTIPLE)."""
        if self.noise_bound is None:
            return None
        noise = self.noise_bound.value / NOISE_MULTIPLE
        return self.max_abs / noise if noise else float("inf")

    def describe(self) -> str:
        status = "ok" if self.passed else "FAIL"
        bound = "" if self.bound is None else f" (allowed {self.allowed:.3g}: {self.bound.reason})"
        noise = ("" if self.noise_bound is None else
                 f" (error / measured noise {self.noise_ratio:.3g}, allowed {self.noise_bound.value:.3g}: "
                 f"{self.noise_bound.reason})")
        finite = "" if self.finite else " NON-FINITE VALUES"
        return (f"{status} {self.name} {list(self.shape)}: max abs err {self.max_abs:.3g} at {list(self.where)}, "
                f"max rel err {self.max_rel:.3g}{bound}{noise}{finite}")


def compare(name: str, actual, reference, bound: Bound | None = None, noise_bound: Bound | None = None) -> Comparison:
    """Compare `actual` with `reference` (same shape); both are cast to float64 first.
    `noise_bound` (absolute) is a second limit from the measured noise, see tolerances.noise_bound."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: shape {a.shape} does not match reference shape {b.shape}")
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    diff = np.abs(a - b)
    if diff.size == 0:
        return Comparison(name, a.shape, 0.0, 0.0, (), 0.0, bound, finite, noise_bound)
    flat = int(np.nanargmax(diff)) if not np.isnan(diff).all() else 0
    where = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_abs = float(diff.flat[flat])
    scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]))) if np.isfinite(b).any() else 1.0)
    allowed = bound.allowed(b) if bound is not None else float("inf")
    return Comparison(name, a.shape, max_abs, max_abs / scale, where, allowed, bound, finite, noise_bound)


def assert_close(name: str, actual, reference, bound: Bound) -> Comparison:
    """compare(), raising AssertionError with the full description when the bound fails."""
    result = compare(name, actual, reference, bound)
    if not result.passed:
        raise AssertionError(result.describe())
    return result
