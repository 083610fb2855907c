"""The parity report: per-tensor rows (single row and padded row), the AMP policy's dtype check,
the logits' agreement and the greedy generation -- as a table (`gptspec parity`) or JSON.  The
training report (`gptspec parity --train`) uses the same rows for the loss, every gradient and
every parameter after one update, plus Checks (the injected overflow)."""
from __future__ import annotations

from dataclasses import dataclass, field

from gptspec.compare import Comparison
from gptspec.tolerances import NOISE_MULTIPLE


@dataclass
class GenerationCheck:
    """Greedy continuations of the same prompt by the spec and by the backend."""
    reference: list[int]
    actual: list[int]
    first_divergence: int | None = None  # index into the new tokens
    top2_gap: float | None = None  # the spec's top-1 minus top-2 logit at that step
    allowed_gap: float | None = None  # near_tie_gap of the precision's bound

    @property
    def passed(self) -> bool:
        """Identical, or diverging first where the spec itself sees a near tie."""
        return self.first_divergence is None or self.top2_gap <= self.allowed_gap

    @property
    def distinct_tokens(self) -> int:
        """How many different tokens the spec's continuation holds: a continuation repeating one
        token compares almost nothing."""
        return len(set(self.reference))

    def describe(self) -> str:
        if self.first_divergence is None:
            return (f"greedy generation: {len(self.reference)} tokens identical "
                    f"({self.distinct_tokens} distinct tokens compared)")
        verdict = "allowed: near tie" if self.passed else "FAIL: not a near tie"
        return (f"greedy generation diverges at new token {self.first_divergence} "
                f"(spec {self.reference[self.first_divergence]}, backend {self.actual[self.first_divergence]}); "
                f"spec top-2 gap {self.top2_gap:.3g} vs allowed {self.allowed_gap:.3g} ({verdict}); "
                f"{self.distinct_tokens} distinct tokens in the spec's continuation")


@dataclass
class PolicyCheck:
    """One kind of operation under the AMP level's policy: the dtype amp.py's table gives it, the
    dtypes the backend's Cells recorded it running in, and how many times it ran."""
    operation: str
    expected: str
    observed: list[str]
    count: int
    expected_count: int

    @property
    def passed(self) -> bool:
        return self.count == self.expected_count and all(d == self.expected for d in self.observed)

    def describe(self) -> str:
        status = "ok" if self.passed else "FAIL"
        ran = ", ".join(self.observed) or "nothing recorded"
        count = "" if self.count == self.expected_count else (
            f"; recorded {self.count} times, expected {self.expected_count} (a Cell computed without recording)")
        return f"{status} dtype policy: {self.operation} must run in {self.expected}, ran in {ran}{count}"


@dataclass
class Check:
    """A pass/fail check that is not a tensor comparison (the injected overflow of `--train`)."""
    name: str
    passed: bool
    detail: str

    def describe(self) -> str:
        return f"{'ok' if self.passed else 'FAIL'} {self.name}: {self.detail}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@dataclass
class ParityReport:
    settings: dict
    rows: list[Comparison]
    agreement: dict | None  # the logits' top-1 agreement and KL (forward parity only)
    generation: GenerationCheck | None = None
    notes: list[str] = field(default_factory=list)
    policy: list[PolicyCheck] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (all(row.passed for row in self.rows) and all(check.passed for check in self.policy)
                and all(check.passed for check in self.checks)
                and (self.generation is None or self.generation.passed))

    def failures(self) -> list[str]:
        failed = [row.describe() for row in self.rows if not row.passed]
        failed += [check.describe() for check in self.policy if not check.passed]
        failed += [check.describe() for check in self.checks if not check.passed]
        if self.generation is not None and not self.generation.passed:
            failed.append(self.generation.describe())
        return failed

    def slack(self) -> dict:
        """The worst error / derived bound and error / measured noise over all rows."""
        bound = [r.bound_ratio for r in self.rows if r.bound_ratio is not None]
        noise = [r.noise_ratio for r in self.rows if r.noise_ratio is not None]
        return {"worst_error_over_bound": max(bound, default=None),
                "worst_error_over_noise": max(noise, default=None), "noise_multiple": NOISE_MULTIPLE}

    def table(self) -> str:
        """The per-tensor table, the dtype policy, the logits' agreement, the generation, the verdict.
        err/bound fails above 1, err/noise above the noise multiple."""
        lines = [" ".join(f"{k}={v}" for k, v in self.settings.items()), *self.notes,
                 f"| {'tensor':<34} | {'shape':<18} | {'max abs err':>11} | {'bound':>9} | {'err/bound':>9} | "
                 f"{'err/noise':>9} | {'where':<16} | result    |",
                 f"|{'-' * 36}|{'-' * 20}|{'-' * 13}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 18}|-----------|"]
        for row in self.rows:
            result = "ok" if row.passed else ("NONFINITE" if not row.finite else "FAIL")
            lines.append(f"| {row.name:<34} | {str(list(row.shape)):<18} | {row.max_abs:>11.3e} | "
                         f"{row.allowed:>9.2e} | {_ratio(row.bound_ratio):>9} | {_ratio(row.noise_ratio):>9} | "
                         f"{str(list(row.where)):<16} | {result:<9} |")
        slack = self.slack()
        lines.append(f"worst err/bound {_ratio(slack['worst_error_over_bound'])} (fails above 1), worst err/noise "
                     f"{_ratio(slack['worst_error_over_noise'])} (fails above {NOISE_MULTIPLE:g}: gptspec.tolerances."
                     f"NOISE_MULTIPLE; noise = the spec at this precision vs float64)")
        if self.policy:
            bad = [check for check in self.policy if not check.passed]
            lines.append(f"dtype policy ({len(self.policy)} kinds of operation, as ms_backend/amp.py's table): "
                         + ("ok" if not bad else "FAIL"))
            lines += [f"  {check.describe()}" for check in bad]
        lines += [check.describe() for check in self.checks]
        a = self.agreement
        if a is not None:
            lines.append(f"top-1 agreement {a['top1_agreement']:.4f}, KL(spec || backend) mean {a['kl_mean']:.3e} "
                         f"max {a['kl_max']:.3e}")
        if self.generation is not None:
            lines.append(self.generation.describe())
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(f.split(":")[0] for f in self.failures()))
        return "\n".join(lines)

    def to_json(self) -> dict:
        rows = [{"tensor": r.name, "shape": list(r.shape), "max_abs_err": r.max_abs, "max_rel_err": r.max_rel,
                 "where": list(r.where), "allowed_abs_err": r.allowed, "bound": r.bound.value if r.bound else None,
                 "bound_reason": r.bound.reason if r.bound else None, "error_over_bound": r.bound_ratio,
                 "noise_allowed_abs_err": r.noise_bound.value if r.noise_bound else None,
                 "noise_reason": r.noise_bound.reason if r.noise_bound else None,
                 "error_over_noise": r.noise_ratio, "finite": r.finite, "passed": r.passed}
                for r in self.rows]
        policy = [{"operation": c.operation, "expected": c.expected, "observed": c.observed, "count": c.count,
                   "expected_count": c.expected_count, "passed": c.passed} for c in self.policy]
        generation = None
        if self.generation is not None:
            g = self.generation
            generation = {"reference": g.reference, "backend": g.actual, "first_divergence": g.first_divergence,
                          "top2_gap": g.top2_gap, "allowed_gap": g.allowed_gap,
                          "distinct_tokens": g.distinct_tokens, "passed": g.passed}
        checks = [{"check": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks]
        return {"settings": self.settings, "notes": self.notes, "tensors": rows, "dtype_policy": policy,
                "checks": checks, **self.slack(), **(self.agreement or {}), "generation": generation,
                "passed": self.passed}
