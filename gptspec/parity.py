"""Parity between a backend and the float64 spec: every traced tensor, the logits' agreement,
and a greedy generation -- the report behind `gptspec parity` and the parity tests.

The reference is always `ref_numpy` in float64 (its own rounding, ~1e-16, is negligible next to
every bound).  Each traced tensor is held to the bound of `gptspec.tolerances` for its depth and
the backend's precision, and a failure names the tensor, the position of the worst error and the
bound's derivation, like llm.c's test_gpt2.c.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import ref_numpy
from gptspec.compare import Comparison, compare
from gptspec.tolerances import Bound, amp_bound, near_tie_gap, trace_depth
from ref_numpy.validation import as_token_ids, check_length


def precision_bound(config, amp_level: str = "O0", dtype: str | None = None, depth: int | None = None) -> Bound:
    """The bound for a backend running at `amp_level` with low dtype `dtype` (O0: float32)."""
    return amp_bound(config, amp_level, dtype or "float16", depth)


def compare_traces(config, reference: dict, actual: dict, *, amp_level="O0", dtype=None) -> list[Comparison]:
    """One Comparison per tensor of the reference trace, in the order the model computes them.
    A tensor missing from `actual` is an error: a backend must trace everything the spec does."""
    missing = [name for name in reference if name not in actual]
    if missing:
        raise ValueError(f"the backend's trace lacks {', '.join(missing[:5])}")
    return [compare(name, actual[name], reference[name],
                    precision_bound(config, amp_level, dtype, trace_depth(config, name)))
            for name in reference]


def log_softmax64(logits):
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logits_agreement(reference, actual) -> dict:
    """Top-1 agreement and KL(reference || actual) over all positions of logits [..., V]."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, np.shape(reference)[-1])
    act = np.asarray(actual, dtype=np.float64).reshape(ref.shape)
    log_p, log_q = log_softmax64(ref), log_softmax64(act)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return {"top1_agreement": float((ref.argmax(-1) == act.argmax(-1)).mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max())}


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

    def describe(self) -> str:
        if self.first_divergence is None:
            return f"greedy generation: {len(self.reference)} tokens identical"
        verdict = "allowed: near tie" if self.passed else "FAIL: not a near tie"
        return (f"greedy generation diverges at new token {self.first_divergence} "
                f"(spec {self.reference[self.first_divergence]}, backend {self.actual[self.first_divergence]}); "
                f"spec top-2 gap {self.top2_gap:.3g} vs allowed {self.allowed_gap:.3g} ({verdict})")


def check_greedy(config, params64, prompt, reference_tokens, actual_tokens, bound: Bound) -> GenerationCheck:
    """Compare two greedy continuations of `prompt` [T]; at the first difference, measure the
    spec's top-2 gap on the common prefix.  A backend may pick the other token only when the
    two best logits are closer than its own error could move them (near_tie_gap)."""
    reference, actual = [int(t) for t in reference_tokens], [int(t) for t in actual_tokens]
    check = GenerationCheck(reference, actual)
    differs = [i for i, (a, b) in enumerate(zip(reference, actual)) if a != b]
    if len(reference) != len(actual) and not differs:
        differs = [min(len(reference), len(actual))]
    if differs:
        first = differs[0]
        prefix = np.concatenate([np.asarray(prompt, dtype=np.int64), np.asarray(reference[:first], dtype=np.int64)])
        logits, _ = ref_numpy.forward(config, params64, prefix)
        last = np.sort(logits[0, -1])[::-1]
        check.first_divergence = first
        check.top2_gap = float(last[0] - last[1])
        check.allowed_gap = near_tie_gap(bound, logits[0, -1])
    return check


@dataclass
class ParityReport:
    settings: dict
    rows: list[Comparison]
    agreement: dict
    generation: GenerationCheck | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows) and (self.generation is None or self.generation.passed)

    def failures(self) -> list[str]:
        failed = [row.describe() for row in self.rows if not row.passed]
        if self.generation is not None and not self.generation.passed:
            failed.append(self.generation.describe())
        return failed

    def table(self) -> str:
        """The per-tensor table, then the logits' agreement, the generation and the verdict."""
        lines = [" ".join(f"{k}={v}" for k, v in self.settings.items()), *self.notes,
                 f"| {'tensor':<24} | {'shape':<18} | {'max abs err':>11} | {'max rel err':>11} | "
                 f"{'bound':>9} | {'where':<16} | result |",
                 f"|{'-' * 26}|{'-' * 20}|{'-' * 13}|{'-' * 13}|{'-' * 11}|{'-' * 18}|--------|"]
        for row in self.rows:
            result = "ok" if row.passed else ("NONFINITE" if not row.finite else "FAIL")
            lines.append(f"| {row.name:<24} | {str(list(row.shape)):<18} | {row.max_abs:>11.3e} | "
                         f"{row.max_rel:>11.3e} | {row.allowed:>9.2e} | {str(list(row.where)):<16} | {result:<6} |")
        a = self.agreement
        lines.append(f"top-1 agreement {a['top1_agreement']:.4f}, KL(spec || backend) mean {a['kl_mean']:.3e} "
                     f"max {a['kl_max']:.3e}")
        if self.generation is not None:
            lines.append(self.generation.describe())
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(f.split(":")[0] for f in self.failures()))
        return "\n".join(lines)

    def to_json(self) -> dict:
        rows = [{"tensor": r.name, "shape": list(r.shape), "max_abs_err": r.max_abs, "max_rel_err": r.max_rel,
                 "where": list(r.where), "allowed_abs_err": r.allowed, "bound": r.bound.value if r.bound else None,
                 "bound_reason": r.bound.reason if r.bound else None, "finite": r.finite, "passed": r.passed}
                for r in self.rows]
        generation = None
        if self.generation is not None:
            g = self.generation
            generation = {"reference": g.reference, "backend": g.actual, "first_divergence": g.first_divergence,
                          "top2_gap": g.top2_gap, "allowed_gap": g.allowed_gap, "passed": g.passed}
        return {"settings": self.settings, "notes": self.notes, "tensors": rows, **self.agreement,
                "generation": generation, "passed": self.passed}


def run_parity(config, params, ids, *, amp_level="O0", dtype=None, mode="pynative", max_new_tokens=8,
               model=None) -> ParityReport:
    """Run the float64 spec and an `ms_backend.GPTModel` on the same `ids` [T] and compare.

    `model` may be a prebuilt GPTModel (its own amp_level, dtype and mode then apply); otherwise
    one is built from `params`.  max_new_tokens greedy tokens are generated by both (0 skips)."""
    import ms_backend  # the optional mindspore extra; imported here so the spec never needs it

    ids = as_token_ids(ids, config)
    if ids.shape[0] != 1:
        raise ValueError(f"parity runs one prompt at a time, got a batch of {ids.shape[0]}")
    check_length(ids.shape[1], max_new_tokens, config)
    params64 = ref_numpy.cast_params(params, np.float64)
    if model is None:
        model = ms_backend.GPTModel(config, params, amp_level=amp_level, dtype=dtype, mode=mode)
    amp_level, dtype, mode = model.amp_level, model.low_dtype, model.mode
    reference, actual = {}, {}
    ref_numpy.forward(config, params64, ids, trace=reference)
    logits, _ = model.forward_numpy(ids, trace=actual)
    rows = compare_traces(config, reference, actual, amp_level=amp_level, dtype=dtype)
    logits_bound = precision_bound(config, amp_level, dtype)
    # The model's own output (graph mode's compiled path) besides its traced run.
    rows.append(compare("logits (model output)", logits, reference["logits"], logits_bound))
    if ids.shape[1] > 1:  # the second half through the KV cache of the first: positions must continue
        half = ids.shape[1] // 2
        _, past = model.forward_numpy(ids[:, :half])
        cached, _ = model.forward_numpy(ids[:, half:], past=past)
        rows.append(compare("logits (KV cache)", cached, reference["logits"][:, half:], logits_bound))
    settings = {"arch": config.arch, "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
                "n_vocab": config.n_vocab, "tokens": int(ids.shape[1]), "amp_level": amp_level,
                "dtype": dtype or ("float16" if amp_level != "O0" else "float32"), "mode": mode}
    report = ParityReport(settings, rows, logits_agreement(reference["logits"], logits))
    if max_new_tokens:
        spec_tokens = ref_numpy.generate(config, params64, ids[0], max_new_tokens, greedy=True)[ids.shape[1]:]
        ms_tokens = ms_backend.generate(model.config, model, ids[0], max_new_tokens, greedy=True)[ids.shape[1]:]
        report.generation = check_greedy(config, params64, ids[0], spec_tokens, ms_tokens,
                                         precision_bound(config, amp_level, dtype))
    return report


def probe_params(config, seed: int = 0, dtype=np.float32) -> dict:
    """Random weights that probe parity where it matters: every matmul weight ~ N(0, 1/fan_in),
    so each projection keeps its input's scale and GELU sees inputs of order 1 (as in a trained
    model), while the embeddings keep GPT-2's N(0, 0.02), so the first LayerNorms see a small
    variance and their epsilon matters.  Biases ~ N(0, 0.02), norm gains ~ 1 + N(0, 0.1).

    GPT-2's own initialisation (N(0, 0.02) everywhere) makes a weak probe: at C = 768 the GELU
    inputs are ~0.5, where the erf and tanh forms differ by ~2e-5, so a backend with the wrong
    GELU would pass.  Deterministic in `seed`; drawn in float32 and cast, like init_params."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in ref_numpy.expected_shapes(config).items():
        noise = rng.standard_normal(shape, dtype=np.float32)
        leaf = name.rsplit(".", 1)[-1]
        if name in ("wte", "wpe"):
            flat[name] = noise * np.float32(0.02)
        elif leaf == "w":
            flat[name] = noise / np.float32(np.sqrt(shape[0]))
        elif leaf == "g":
            flat[name] = 1 + noise * np.float32(0.1)
        else:
            flat[name] = noise * np.float32(0.02)
    params = ref_numpy.unflatten_params(flat)
    return params if np.dtype(dtype) == np.float32 else ref_numpy.cast_params(params, dtype)
