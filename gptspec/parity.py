"""Parity between a backend and the float64 spec: every traced tensor, the logits' agreement,
the AMP policy's dtypes and a greedy generation -- the report behind `gptspec parity` and the
parity tests.

Two references per traced tensor:
  * the float64 spec (its own rounding, ~1e-16, is negligible): the error is held to the derived
    bound of `gptspec.tolerances` for its depth and the backend's precision (err/bound);
  * the spec computed at the backend's precision (float32, or the AMP level's float16 casts,
    `gptspec.emulate`) against the float64 spec: the rounding noise of *this* model and input;
    the backend's error may be NOISE_MULTIPLE times it (err/noise).
Under AMP the dtype each operation actually ran in (the backend's dtype_log(); ms_backend's Cells
record it) is checked against amp.py's table: a policy violation is invisible to error bounds.
The backend is anything that follows gptspec/backend.py's protocol (default: ms_backend); what
it does not provide (trace, KV cache, dtype log) is left out of the report with a note saying so.

The input is a batch of two rows: the prompt, and the prompt with its first positions left
padded (attention_mask 0), so masking is exercised at every level and mode.  Rows of the padded
row are named "padded: ..." and compare the real (non-padding) positions only; at padding
positions the spec defines no meaningful value (a padding query attends nothing real: its
attention row is uniform), so there the backend's values must only be finite -- which is what
a mask minimum overflowing to -inf or a softmax without the max subtracted breaks.
"""
from __future__ import annotations

import dataclasses

import numpy as np

import ref_numpy
from gptspec.backend import OPTIONAL_PARTS, BackendUnderTest
from gptspec.compare import Comparison, compare
from gptspec.emulate import emulated_forward
from gptspec.parity_report import GenerationCheck, ParityReport, PolicyCheck
from gptspec.tolerances import (Bound, amp_bound, conditioned, forward_bound, layer_norm_condition, near_tie_gap,
                                noise_bound, trace_depth)
from ref_numpy.validation import as_token_ids, check_length

__all__ = ["run_parity", "probe_params", "compare_traces", "precision_bound", "reference_layer_norm_condition",
           "check_greedy", "logits_agreement",
           "padded_batch", "default_padding", "ParityReport", "GenerationCheck", "PolicyCheck"]


def precision_bound(config, amp_level: str = "O0", dtype: str | None = None, depth: int | None = None) -> Bound:
    """The bound for a backend running at `amp_level` with low dtype `dtype` (default float16);
    at O0 `dtype` is the dtype it computes in (float32, the default, or float64)."""
    if amp_level == "O0":
        return forward_bound(config, dtype if dtype in ("float32", "float64") else "float32", depth)
    return amp_bound(config, amp_level, dtype or "float16", depth)


def float64_params(params) -> dict:
    """`params` in float64: the same dict when it already is (a 124M copy costs ~1 GB and seconds)."""
    return ref_numpy.cast_params(params, np.float64, copy=False)


def reference_layer_norm_condition(config, params, ids, attention_mask=None) -> float:
    """The worst LayerNorm condition (gptspec.tolerances.layer_norm_condition) of the float64
    spec's forward pass on `ids`: its LayerNorm inputs are the ones train_forward keeps for the
    backward (GPT-2: x before ln_1, x1 before ln_2, the input of ln_f; GPT-1: s1, s2)."""
    params64 = float64_params(params)
    _, tape = ref_numpy.train_forward(config, params64, ids, attention_mask=attention_mask)
    inputs = [block[key] for block in tape["blocks"] for key in ("x", "x1", "s1", "s2") if key in block]
    if tape.get("ln_f_input") is not None:
        inputs.append(tape["ln_f_input"])
    return layer_norm_condition(inputs, config.layer_norm_epsilon)


def compare_traces(config, reference: dict, actual: dict, *, amp_level="O0", dtype=None, emulated=None,
                   padding: int = 0, layer_norm_condition: float = 1.0) -> list[Comparison]:
    """One Comparison per tensor of the reference trace, in the order the model computes them.
    A tensor missing from `actual` is an error: a backend must trace everything the spec does.
    layer_norm_condition: reference_layer_norm_condition of the same input (widens the derived
    bounds past LAYER_NORM_CONDITION_COVERED, see gptspec.tolerances).

    emulated: the spec's trace at the backend's precision (gptspec.emulate) for the noise bound.
    padding > 0: the traces hold [the prompt, the prompt left padded by `padding`]; the padded
    row's rows ("padded: ...") follow the single row's."""
    missing = [name for name in reference if name not in actual]
    if missing:
        raise ValueError(f"the backend's trace lacks {', '.join(missing[:5])}")
    rows = []
    for padded in ((False, True) if padding else (False,)):
        for name in reference:
            bound = conditioned(precision_bound(config, amp_level, dtype, trace_depth(config, name)),
                                layer_norm_condition)
            rows.append(compare_row(name, actual[name], reference[name], None if emulated is None else emulated[name],
                                    bound, padding if padded else None, single=not padding))
    return rows


def compare_row(name, actual, reference, emulated, bound: Bound, padding: int | None,
                single: bool = False, first_position: int = 0) -> Comparison:
    """One Comparison of a traced tensor [B, T, ...] ([B, H, T, S] for attention weights).

    single: the tensors hold one row (compared whole).  Otherwise padding None compares row 0
    (the prompt); an int compares row 1 (left padded by `padding`) at its real positions only --
    the query positions >= padding, `first_position` being the position of the tensors' first
    query -- and requires the whole row, padding positions included, to be finite."""
    query_axis = 2 if name.endswith("attn_weights") else 1
    if single:
        select = np.s_[:]
    elif padding is None:
        select = np.s_[0:1]
    else:
        first_real = max(padding - first_position, 0)
        select = (np.s_[1:2],) + (np.s_[:],) * (query_axis - 1) + (np.s_[first_real:],)
    noise = None if emulated is None else noise_bound(np.asarray(emulated)[select], np.asarray(reference)[select])
    row = compare(name if padding is None else f"padded: {name}", np.asarray(actual)[select],
                  np.asarray(reference)[select], bound, noise)
    if padding is not None and not np.isfinite(np.asarray(actual, dtype=np.float64)[1]).all():
        row = dataclasses.replace(row, finite=False)  # a padding position went inf/NaN
    return row


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


def check_greedy(config, params64, prompt, reference_tokens, actual_tokens, bound: Bound) -> GenerationCheck:
    """Compare two greedy continuations of `prompt` [T]; at the first difference, measure the
    spec's top-2 gap on the common prefix.  A backend may pick the other token only when the
    two best logits are closer than its own error could move them (near_tie_gap of `bound`)."""
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


def default_padding(n_tokens: int) -> int:
    """Left padding of the default padded row: a quarter of the prompt, at least one position
    (none for a one-token prompt: the padded row needs a real token)."""
    return 0 if n_tokens < 2 else max(1, n_tokens // 4)


def padded_batch(prompt, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """[the prompt, the prompt with its first `padding` positions left padding]:
    (ids [2, T], attention_mask [2, T]).  Padding positions hold token 0 (masked: any id does)."""
    prompt = np.asarray(prompt, dtype=np.int64)
    ids = np.stack([prompt, prompt])
    ids[1, :padding] = 0
    mask = np.ones_like(ids)
    mask[1, :padding] = 0
    return ids, mask


def check_padding(padding, n_tokens: int) -> int:
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)):
        raise TypeError(f"padding must be an int, got {type(padding).__name__}")
    if not 0 <= padding < n_tokens:
        raise ValueError(f"padding must be in [0, {n_tokens - 1}] for a prompt of {n_tokens} tokens "
                         f"(the padded row keeps at least one real token), got {padding}")
    return int(padding)


def dtype_name(dtype) -> str:
    return str(dtype).lower()  # mindspore.float16 -> "float16"


def policy_checks(config, amp_level: str, dtype, log) -> list[PolicyCheck]:
    """The dtypes recorded by the backend's Cells (ms_backend.amp.record_dtypes) against
    amp.py's table for `amp_level`: one check per kind of operation, with how often it ran."""
    from ms_backend import amp

    precision = amp.precision_for(amp_level, dtype)
    counts = amp.expected_records(config.n_layer, config.arch == "gpt2")
    checks = []
    for operation, field in amp.OPERATION_PRECISION.items():
        ran = [dtypes for op, dtypes in log if op == operation]
        observed = sorted({dtype_name(d) for dtypes in ran for d in dtypes})
        checks.append(PolicyCheck(operation, dtype_name(getattr(precision, field)), observed, len(ran),
                                  counts[operation]))
    return checks


def run_parity(config, params, ids, *, backend=None, amp_level="O0", dtype=None, mode="pynative", max_new_tokens=8,
               model=None, padding=None) -> ParityReport:
    """Run the float64 spec and a backend on the same prompt `ids` [T] (or [1, T]) and compare
    (see the module docstring).

    backend: a gptspec.backend.BackendUnderTest, or any object following the protocol
    (gptspec/backend.py); default the MindSpore backend at amp_level / dtype / mode, built from
    `params` or around `model` (a prebuilt ms_backend.GPTModel, whose own settings then apply).
    What the backend does not provide (trace, cache, dtype log) is left out with a note saying so.
    padding: left padding positions of the second, padded row (default `default_padding`: T // 4,
    at least 1); 0 runs the prompt alone.  max_new_tokens greedy tokens are generated from the
    prompt by both (0 skips)."""
    if backend is None:
        from gptspec.backends.mindspore import factory  # the optional mindspore extra

        backend = BackendUnderTest(factory(config, params, amp_level=amp_level, dtype=dtype, mode=mode, model=model),
                                   config, "mindspore")
    elif not isinstance(backend, BackendUnderTest):
        backend = BackendUnderTest(backend, config)
    ids = as_token_ids(ids, config)
    if ids.shape[0] != 1:
        raise ValueError(f"parity runs one prompt at a time (it adds the padded row itself), got a batch of "
                         f"{ids.shape[0]}")
    T = ids.shape[1]
    check_length(T, max_new_tokens, config)
    padding = default_padding(T) if padding is None else check_padding(padding, T)
    params64 = float64_params(params)
    amp_level, dtype = backend.amp_level, backend.dtype
    batch, mask = padded_batch(ids[0], padding) if padding else (ids, None)

    reference, emulated, notes = {}, None, []
    ref_numpy.forward(config, params64, batch, attention_mask=mask, trace=reference)
    if dtype in ("float32", "float16"):
        emulated = {}
        emulated_forward(config, params, batch, amp_level=amp_level, dtype=None if amp_level == "O0" else dtype,
                         attention_mask=mask, trace=emulated)
    else:
        notes.append(f"no measured noise at {dtype}: NumPy has no {dtype} spec to emulate it with (derived bounds "
                     f"only)" if dtype != "float64" else "no measured noise at float64 (derived bounds only)")
    condition = reference_layer_norm_condition(config, params64, batch, mask)
    rows, policy = [], []
    if backend.provides["trace"]:
        actual = {}
        backend.forward(batch, mask, trace=actual)
        rows = compare_traces(config, reference, actual, amp_level=amp_level, dtype=dtype, emulated=emulated,
                              padding=padding, layer_norm_condition=condition)
    else:
        notes.append(f"layer-by-layer trace: not provided by the backend ({OPTIONAL_PARTS['trace']}): only its "
                     f"logits are compared")
    if backend.provides["dtype_log"]:
        policy = policy_checks(config, amp_level, dtype, backend.dtype_log())
    else:
        notes.append(f"AMP dtype policy: not provided by the backend ({OPTIONAL_PARTS['dtype_log']})")
    logits_bound = conditioned(precision_bound(config, amp_level, dtype), condition)
    emulated_logits = None if emulated is None else emulated["logits"]

    def logits_rows(name, logits, reference_logits, emulated_logits, first_position=0):
        views = (None, padding) if padding else (None,)
        return [compare_row(name, logits, reference_logits, emulated_logits, logits_bound, view,
                            single=not padding, first_position=first_position) for view in views]

    # The backend's plain forward (graph mode's compiled path) besides its traced run.
    logits = backend.forward(batch, mask)
    output_rows = logits_rows("logits (model output)", logits, reference["logits"], emulated_logits)
    rows += output_rows
    if T > 1 and backend.provides["cache"]:  # the second half through the KV cache of the first
        half = T // 2
        _, past = backend.forward_cached(batch[:, :half], None if mask is None else mask[:, :half])
        cached, _ = backend.forward_cached(batch[:, half:], mask, past)
        rows += logits_rows("logits (KV cache)", cached, reference["logits"][:, half:],
                            None if emulated is None else emulated_logits[:, half:], first_position=half)
    elif T > 1:
        notes.append(f"KV cache: not provided by the backend ({OPTIONAL_PARTS['cache']}); generation recomputes "
                     f"the whole sequence at every token")
    info = backend.describe()
    settings = {"backend": info["name"], "version": info["version"], "device": info["device"],
                "arch": config.arch, "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
                "n_vocab": config.n_vocab, "tokens": T, "padded_row_padding": padding, "amp_level": amp_level,
                "dtype": dtype}
    if getattr(backend.backend, "mode", None):
        settings["mode"] = backend.backend.mode
    if padding:
        notes.append(f"rows: the prompt, and 'padded:' the prompt with its first {padding} positions left padded "
                     f"(compared at its real positions; padding positions must be finite)")
    report = ParityReport(settings, rows, logits_agreement(reference["logits"][:1], logits[:1]), notes=notes,
                          policy=policy)
    if max_new_tokens:
        spec_tokens = ref_numpy.generate(config, params64, ids[0], max_new_tokens, greedy=True)[T:]
        backend_tokens = backend.generate(ids[0], max_new_tokens, greedy=True)[T:]
        # A flip is allowed where the spec's top-2 gap is within what the backend's error may move:
        # the measured-noise bound of the logits when there is one (far tighter than the derived one).
        near_tie = output_rows[0].noise_bound or logits_bound
        report.generation = check_greedy(config, params64, ids[0], spec_tokens, backend_tokens, near_tie)
    return report


def probe_params(config, seed: int = 0, dtype=np.float32) -> dict:
    """Random weights that probe parity where it matters: every matmul weight ~ N(0, 1/fan_in),
    so each projection keeps its input's scale and GELU sees inputs of order 1 (as in a trained
    model); the residual projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2 n_layer) as in
    GPT-2's own initialisation, so the blocks do not drown what the embeddings put into the
    residual stream.  wte keeps GPT-2's N(0, 0.02) (the first LayerNorms see a small variance:
    their epsilon matters) and wpe is N(0, 0.3): each position's hidden state differs, so the
    greedy continuation is varied (with N(0, 0.02) it repeats one token and compares almost
    nothing; measured on the default 124M prompts: 4-8 distinct tokens of 8 instead of 1-2).
    Biases ~ N(0, 0.02), norm gains ~ 1 + N(0, 0.1).

    GPT-2's own initialisation (N(0, 0.02) everywhere) makes a weak probe: at C = 768 the GELU
    inputs are ~0.5, where the erf and tanh forms differ by ~2e-5, so a backend with the wrong
    GELU would pass.  Deterministic in `seed`; drawn in float32 and cast, like init_params.
    (The tests chose seeds whose models keep every greedy decision clear of a tie: changing how
    the values are drawn changes those models.  The scaling runs in place: the same float32
    operations, half the fresh memory, which is slow to get on a VM.)"""
    rng = np.random.default_rng(seed)
    residual_scale = np.float32(1 / np.sqrt(2 * config.n_layer))
    flat = {}
    for name, shape in ref_numpy.expected_shapes(config).items():
        noise = rng.standard_normal(shape, dtype=np.float32)
        leaf = name.rsplit(".", 1)[-1]
        if name == "wte":
            noise *= np.float32(0.02)
        elif name == "wpe":
            noise *= np.float32(0.3)
        elif leaf == "w":
            noise /= np.float32(np.sqrt(shape[0]))
            if name.endswith(".c_proj.w"):
                noise *= residual_scale
        elif leaf == "g":
            noise *= np.float32(0.1)
            noise += np.float32(1)
        else:
            noise *= np.float32(0.02)
        flat[name] = noise
    params = ref_numpy.unflatten_params(flat)
    return params if np.dtype(dtype) == np.float32 else ref_numpy.cast_params(params, dtype)
