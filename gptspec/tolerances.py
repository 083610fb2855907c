"""Every numerical bound gptspec's tests and reports use, with its derivation.

All comparisons are against the *float64 spec* unless stated otherwise; the float64 spec's own
rounding (~1e-16 relative) is negligible next to every bound below.

The error model (standard floating-point analysis, used in its probabilistic form)
----------------------------------------------------------------------------------
u = eps / 2 is the unit roundoff of the computation dtype.  A dot product of length K
accumulated in that dtype carries a relative error that grows like sqrt(K) * u for
rounding errors of random sign (the worst case, K * u, is never approached in practice
and would make every bound useless).  One transformer block chains six matmuls (c_attn,
q k^T, weights v, c_proj, c_fc, c_proj); the largest reduction is K = 4C (mlp.c_proj).
Errors made in a block are carried on by the residual stream and add up over the depth;
LayerNorm rescales but does not amplify them beyond a constant.  So the relative error of
the logits is about

    (n_layer + 1) * 6 * u * sqrt(4 C)        (+1 for the embedding sum and the logits matmul)

and a bound is that times SAFETY, a constant factor for what the model leaves out (the
Lipschitz constants of LayerNorm, softmax and GELU, and the rounding of exp/tanh/sqrt).
"Relative" is relative to the scale of the reference tensor: bounds are applied as
max|a - b| <= bound * max(1, max|reference|).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAFETY = 4.0

# Unit roundoff u = eps / 2 for the dtypes we compute in.
UNIT_ROUNDOFF = {
    "float64": float(np.finfo(np.float64).eps) / 2,  # 1.1e-16
    "float32": float(np.finfo(np.float32).eps) / 2,  # 6.0e-8
    "float16": float(np.finfo(np.float16).eps) / 2,  # 4.9e-4
    "bfloat16": 2.0 ** -8 / 2,  # 2.0e-3 (8 significand bits); numpy has no bfloat16
}

MATMULS_PER_BLOCK = 6


@dataclass(frozen=True)
class Bound:
    """A tolerance and the sentence that justifies it.  `relative` bounds scale with the
    reference (value * max(1, max|reference|)); an absolute one is the allowed error itself."""
    value: float
    reason: str
    relative: bool = True

    def allowed(self, reference) -> float:
        """The absolute error allowed against `reference`."""
        if not self.relative:
            return self.value
        scale = float(np.max(np.abs(reference))) if np.size(reference) else 0.0
        return self.value * max(1.0, scale)


def unit_roundoff(dtype) -> float:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"no tolerance model for dtype {name!r}; known: {', '.join(UNIT_ROUNDOFF)}")
    return UNIT_ROUNDOFF[name]


def forward_bound(config, dtype, depth: int | None = None) -> Bound:
    """Logits (or any activation) of a `dtype` forward pass vs the float64 spec.

    `depth` is how many error-adding stages the tensor has passed (see `trace_depth`); the
    default, n_layer + 1, is the logits'."""
    u = unit_roundoff(dtype)
    depth = config.n_layer + 1 if depth is None else depth
    value = SAFETY * depth * MATMULS_PER_BLOCK * u * math.sqrt(4 * config.n_embd)
    return Bound(value, f"{SAFETY:g} x (depth={depth}) x {MATMULS_PER_BLOCK} matmuls x u={u:.2g} "
                        f"x sqrt(4C={4 * config.n_embd})")


def trace_depth(config, name: str) -> int:
    """Stages of rounding behind a traced tensor ("embed", "blocks.3.mlp", "ln_f", "logits"):
    1 for the embedding sum, +1 per block up to and including the tensor's own block; ln_f and
    the logits count as the last stage, n_layer + 1.  Deeper tensors may carry more error, so a
    layer-by-layer comparison gets the tightest bound each tensor can be held to."""
    if name == "embed":
        return 1
    if name.startswith("blocks."):
        layer = int(name.split(".")[1])
        return min(layer + 2, config.n_layer + 1)
    if name in ("ln_f", "logits"):
        return config.n_layer + 1
    raise ValueError(f"no depth for traced tensor {name!r}")


def reorder_bound(config, dtype) -> Bound:
    """The same computation in the same dtype, summed in a different order: KV cache vs full
    recompute, a padded row vs the unpadded row, batched vs single.  Each side has its own
    rounding error of forward_bound's size, so the difference is at most twice that."""
    one_side = forward_bound(config, dtype)
    return Bound(2 * one_side.value, f"2 x forward bound ({one_side.reason})")


# Hugging Face oracle, float32 on both sides: issue 2 asks for <= 1e-5 relative.  With
# small test configs (C <= 64, <= 3 layers) forward_bound(float32) is ~5e-5, so 1e-5 is a
# product requirement *tighter* than the generic model; it holds because both sides run
# the same matmul shapes through similar BLAS kernels.  The float64 comparison, bounded by
# reorder_bound(float64), is the exact check; this one guards the float32 path users run.
HF_FLOAT32_RELATIVE = Bound(1e-5, "issue 2 requirement: spec fp32 vs HF fp32, relative to max|logit|")

# MindSpore float32 vs the float64 spec on the 124M config: issue 5 asks for <= 1e-4 *absolute*
# on the logits, a product requirement tighter than forward_bound(gpt2, float32) (1e-3 relative)
# for the same reason as above; the derived bound is still asserted next to it.
MS_FLOAT32_124M_ABSOLUTE = Bound(1e-4, "issue 5 requirement: MindSpore fp32 vs float64 spec logits on 124M, "
                                       "absolute", relative=False)


# Mixed precision (AMP) against the float64 spec
# ----------------------------------------------
# Under AMP a matmul rounds both operands to the low dtype (u each) and its result back to
# it (u), while the kernel accumulates in float32 (MindSpore's CPU and Ascend fp16 MatMul,
# like every tensor-core kernel; parity_tests checks that sums of 4096 ones come out exact).
# So a matmul adds ~3 u of relative error, independent of its length K: the sqrt(K) term of
# forward_bound belongs to the float32 accumulation and is negligible here.  Levels add the
# element-wise work they move to the low dtype, per block:
#   O1  only matmuls are low precision:                 6 matmuls x 3 roundings = 18
#   O2  plus bias adds, GELU and the residual adds:     18 + 4 = 22
#   O3  plus LayerNorm and softmax (the whole network): 22 + 3 = 25
# O0 is plain float32 and uses forward_bound.  Depth and SAFETY as in forward_bound.
AMP_ROUNDINGS_PER_BLOCK = {"O1": 18, "O2": 22, "O3": 25}
AMP_LEVELS = ("O0", "O1", "O2", "O3")


def amp_bound(config, amp_level: str, dtype="float16", depth: int | None = None) -> Bound:
    """Logits of an AMP forward pass (`amp_level`, low dtype `dtype`) vs the float64 spec;
    `depth` as in forward_bound."""
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {AMP_LEVELS}, got {amp_level!r}")
    if amp_level == "O0":
        return forward_bound(config, "float32", depth)
    u = unit_roundoff(dtype)
    depth = config.n_layer + 1 if depth is None else depth
    roundings = AMP_ROUNDINGS_PER_BLOCK[amp_level]
    return Bound(SAFETY * depth * roundings * u,
                 f"{SAFETY:g} x (depth={depth}) x {roundings} {dtype} roundings per block at {amp_level} "
                 f"x u={u:.2g}")


def near_tie_gap(bound: Bound, logits) -> float:
    """Two backends may pick different argmax tokens only when the top two logits are closer than
    this: each logit may move by `allowed`, so a gap above 2 x allowed cannot flip."""
    return 2 * bound.allowed(logits)


# The measured reference: the rounding noise of this model and input
# -------------------------------------------------------------------
# The derived bounds above hold for every model and input, so on one run they sit far above the
# error that really happens (default random 124M, float32: ~250x).  The second reference is measured: the spec
# itself computed the way the backend's level computes (float32 at O0; at O1-O3 with the level's
# float16 casts, gptspec.emulate) against the float64 spec.  Its error on a tensor is the rounding
# noise a faithful backend makes on *this* model and input there.
#
# The measure, per tensor: the max abs error over the whole tensor (robust: the maximum of many
# independent roundings, not one element's luck), floored at NOISE_FLOOR_ROUNDINGS roundings of
# the tensor's largest element, 4 u max|reference|: every traced tensor ends in an operation
# that combines several roundings of its own (a softmax row: exp, a sum, a division; LayerNorm:
# mean, variance, square root, division; a residual add of two rounded terms), each allowed one
# more ulp in a vendor kernel, so no correct computation in that dtype reliably does better.  A
# tensor whose measured noise is near zero by luck then cannot make the bound absurdly tight:
# NumPy's softmax of nearly uniform rows (GPT-1's first block) is exact to ~1 u, where
# MindSpore's errs by ~8 u.
#
# The backend's error against the float64 spec may be NOISE_MULTIPLE x that noise:
#   x2  the backend's errors are another realisation of the same rounding process (other
#       summation orders, blocked matmuls): the maximum over a tensor of an independent
#       realisation varies by up to ~2x from one realisation to the next;
#   x2  fused kernels and vendor element-wise functions (exp, tanh, rsqrt) may round to 1-2 ulp
#       where NumPy's round to ~0.5-1 ulp: each of the backend's roundings up to twice as large;
#   x2  the noise is measured with *this* machine's BLAS; another BLAS (a different blocking,
#       FMA) may make the spec's own float32 noise up to 2x smaller, tightening the bound by that
#       much, and the suite must not become flaky there.
# Observed (gptspec parity defaults, random 124M GPT-2 and GPT-1, single and padded row): the
# MindSpore backend's error is at most ~2.7x the noise in float32 and ~1.5x at O1-O3 (small
# configs, 2 layers, C = 32, several seeds: <= ~3.5x in float32 -- fewer elements, a less steady
# maximum -- and <= 1.8x under AMP).
# What it lets through: a bug whose effect on every tensor stays below 8x the float32 noise, on
# the 124M default run < 5e-6 of the tensor's magnitude (the noisiest tensor's noise is 6.2e-7 of
# it), so a 1e-5 relative effect fails (measured: ~20x the noise, 0.04 of the derived bound); under AMP below 8x float16 rounding noise (~1e-2 relative)
# -- which is why the AMP policy is checked by the dtype each operation runs in, not by error.
NOISE_MULTIPLE = 8.0
NOISE_FLOOR_ROUNDINGS = 4


def noise_floor(reference, dtype) -> float:
    """NOISE_FLOOR_ROUNDINGS roundings of the tensor's largest element in `dtype`: the least
    noise a computed tensor has."""
    magnitude = float(np.max(np.abs(reference))) if np.size(reference) else 0.0
    return NOISE_FLOOR_ROUNDINGS * unit_roundoff(dtype) * magnitude


def noise_bound(emulated, reference, dtype=None) -> Bound:
    """The absolute error allowed a backend on `reference` (float64 spec) given `emulated`, the
    same tensor computed by the spec at the backend's precision.  NOISE_MULTIPLE x
    max(measured noise, noise_floor); the floor's dtype is the one `emulated` was computed in
    (default: its own dtype -- at O1 the softmax weights are float32, the matmuls' float16)."""
    dtype = np.asarray(emulated).dtype.name if dtype is None else dtype
    reference = np.asarray(reference, dtype=np.float64)
    measured = float(np.max(np.abs(np.asarray(emulated, dtype=np.float64) - reference))) if reference.size else 0.0
    floor = noise_floor(reference, dtype)
    noise = max(measured, floor)
    return Bound(NOISE_MULTIPLE * noise,
                 f"{NOISE_MULTIPLE:g} x measured {dtype} noise {noise:.2g} (spec at the same precision vs float64; "
                 f"floor {NOISE_FLOOR_ROUNDINGS} u x max|ref| = {floor:.2g})", relative=False)


def op_bound(dtype, n_roundings: int) -> Bound:
    """A short computation of `n_roundings` rounded operations (a softmax of a few logits, one
    LayerNorm, a textbook re-derivation of one attention row) against the same formula computed
    another way: each side may round n_roundings times, errors of up to u each, times SAFETY."""
    u = unit_roundoff(dtype)
    return Bound(SAFETY * n_roundings * u, f"{SAFETY:g} x {n_roundings} roundings x u={u:.2g}")


# Gradients (issue 11): the backward pass against an oracle and against finite differences
# -----------------------------------------------------------------------------------------
# A gradient is the end of a longer chain than the logits: the forward pass (depth n_layer + 1,
# 6 matmuls per stage) and then the backward pass back down the same stages, where every forward
# matmul becomes two (d_input = d_out @ w^T and d_w = x^T @ d_out).  So a gradient carries about
# 3x the forward's roundings.  The reductions are longer too: d_w sums over the N = B * T token
# positions, d_hidden = d_logits @ wte over the V vocabulary entries, so sqrt(K) uses the
# longest of 4C, V and N.  Applied per tensor like every Bound: max(1, max|reference|).
BACKWARD_CHAIN_FACTOR = 3


def backward_bound(config, dtype, n_tokens: int) -> Bound:
    """Gradients of a `dtype` backward pass vs an independent float64 one (HF + torch autograd),
    per parameter tensor; `n_tokens` = B * T of the batch."""
    u = unit_roundoff(dtype)
    depth = config.n_layer + 1
    reduction = max(4 * config.n_embd, config.n_vocab, n_tokens)
    value = SAFETY * BACKWARD_CHAIN_FACTOR * depth * MATMULS_PER_BLOCK * u * math.sqrt(reduction)
    return Bound(value, f"{SAFETY:g} x {BACKWARD_CHAIN_FACTOR} (forward + 2 backward matmuls per matmul) x "
                        f"(depth={depth}) x {MATMULS_PER_BLOCK} matmuls x u={u:.2g} x sqrt(K={reduction}: "
                        f"max(4C, V, tokens))")


# Finite differences.  A central difference D(h) = (f(x + h v) - f(x - h v)) / 2h along a
# direction v (|v| = 1) differs from the directional derivative f'(x) . v by
#   truncation  h^2 f'''/6 + O(h^4)   and   rounding  <= e |f| / h,
# e the relative error of one evaluation of f (each of the two evaluations errs by e |f|; their
# difference is divided by 2h).  The truncation term is measured, not guessed: D(2h) - D(h) =
# h^2 f''' / 2 + O(h^4) (Richardson), so truncation(h) ~= |D(2h) - D(h)| / 3, taken SAFETY times.
# h balances the two terms: with e ~ 1e-13 (forward_bound in float64 for the small test models),
# |f| ~ 4 (a loss near log V) and f''' of order 1, h^3 ~ 3 e |f| / |f'''| gives h ~ 1e-4, where both
# terms are ~1e-9 -- six orders below a directional derivative of order 1e-3 to 1, so a wrong
# term in a backward function (of the size of the gradient it belongs to) crosses the bound.
FINITE_DIFFERENCE_STEP = 1e-4


def finite_difference_bound(f_magnitude: float, evaluation_error: float, richardson_gap: float,
                            h: float = FINITE_DIFFERENCE_STEP) -> Bound:
    """Allowed |D(h) - grad . v| (absolute): rounding evaluation_error * f_magnitude / h plus the
    measured truncation SAFETY * |D(2h) - D(h)| / 3 (derivation above).  `f_magnitude` bounds |f|
    (for f = sum(r * y) use sum|r * y|, which bounds the rounding of the sum too)."""
    rounding = evaluation_error * max(1.0, f_magnitude) / h
    truncation = SAFETY * richardson_gap / 3
    return Bound(rounding + truncation,
                 f"central difference, h={h:g}: rounding {evaluation_error:.2g} x |f|={f_magnitude:.3g} / h "
                 f"+ {SAFETY:g} x Richardson truncation |D(2h) - D(h)|/3 = {richardson_gap / 3:.2g}",
                 relative=False)


def layer_evaluation_error(n_roundings: int, n_terms: int, dtype="float64") -> float:
    """Relative error of f = sum(r * layer(x)) for one layer function: its chain of n_roundings
    rounded operations per element plus the sum of n_terms products, sqrt(n) u for random signs."""
    u = unit_roundoff(dtype)
    return SAFETY * (n_roundings + math.sqrt(n_terms)) * u


def backward_reorder_bound(config, dtype, n_tokens: int) -> Bound:
    """The same gradients computed in two orders (a padded row vs the unpadded row, other tokens
    after the last scored position): each side within backward_bound of the exact gradient, so
    they differ by at most twice that."""
    one_side = backward_bound(config, dtype, n_tokens)
    return Bound(2 * one_side.value, f"2 x backward bound ({one_side.reason})")


# Optimizer (issue 11): ref_numpy.adamw_step / clip_grad_norm against torch, same dtype on both sides
# ---------------------------------------------------------------------------------------------------
# One AdamW step rounds each element about 12 times, but only 2 of those roundings are at the
# parameter's scale: the decay product p (1 - lr wd) and the subtraction p - update.  The other ~10
# (m = b1 m + (1-b1) g: 3, v = b2 v + (1-b2) g^2: 4, sqrt, / sqrt(1 - b2^t), + eps, m / denom,
# x step size) are relative errors of the update, whose size is at most lr x |m_hat / sqrt(v_hat)|
# <= lr x (1-b1) / sqrt(1-b2) ~ 3 lr (the largest ratio a moment pair can reach; ~lr in practice).
# Errors of earlier steps are carried on undamped (p's own error passes with factor 1 - lr wd <= 1;
# m's and v's relative errors reach p only through the update), so after S steps each side is
# within S x (2 + 10 x 3 lr) u of max(1, max|p|); two independent sides, times SAFETY.  A bug in the
# update (eps placement, a missing bias correction, decay on the wrong tensors) moves parameters by
# a fraction of lr, far above this.
ADAMW_PARAM_ROUNDINGS, ADAMW_UPDATE_ROUNDINGS, ADAMW_MAX_UPDATE_PER_LR = 2, 10, 3.0


def optimizer_bound(dtype, n_steps: int, max_lr: float) -> Bound:
    """Parameters after `n_steps` AdamW steps (learning rates <= max_lr) of the spec vs
    torch.optim.AdamW, both in `dtype`, relative to max(1, max|reference parameter|)."""
    u = unit_roundoff(dtype)
    per_step = ADAMW_PARAM_ROUNDINGS + ADAMW_UPDATE_ROUNDINGS * ADAMW_MAX_UPDATE_PER_LR * max_lr
    value = 2 * SAFETY * n_steps * per_step * u
    return Bound(value, f"2 sides x {SAFETY:g} x (steps={n_steps}) x ({ADAMW_PARAM_ROUNDINGS} roundings at |p| + "
                        f"{ADAMW_UPDATE_ROUNDINGS} at the update's scale <= {ADAMW_MAX_UPDATE_PER_LR:g} x "
                        f"lr={max_lr:g}) x u={u:.2g}")


def grad_norm_bound(dtype, n_elements: int, n_tensors: int) -> Bound:
    """A global gradient norm (or gradients scaled by max_norm / norm) computed by two implementations
    in `dtype`: a sum of n_elements squares (positive terms, no cancellation: sqrt(n) u for
    random-sign roundings), the per-tensor norms' squares summed again (n_tensors), a sqrt and
    the scaling (2 more), on each of 2 sides, times SAFETY; relative to max(1, |reference|)."""
    u = unit_roundoff(dtype)
    value = 2 * SAFETY * (math.sqrt(n_elements) + math.sqrt(n_tensors) + 2) * u
    return Bound(value, f"2 sides x {SAFETY:g} x (sqrt(N={n_elements}) + sqrt(tensors={n_tensors}) + 2) "
                        f"x u={u:.2g}")


# MindSpore training (issue 12): autodiff gradients and the compiled update against the spec
# ------------------------------------------------------------------------------------------
# MindSpore's value_and_grad differentiates the same forward the backend runs for inference; the
# derivative it builds performs the operations ref_numpy/backward.py writes out (two matmuls per
# forward matmul, the softmax and LayerNorm backward), in float32, with other summation orders and
# fused kernels.  So the float32 gradients carry the error of backward_bound(config, "float32",
# n_tokens) against the float64 spec, the same derivation as the spec's own float32 gradients.
# That bound holds for every model and input and sits far above the observed error (~1e-3 of it on
# the tiny test models), so each tensor is ALSO held to the measured noise (noise_bound): the spec's
# own float32 loss_and_grads against its float64 one is the rounding noise of *this* model, input
# and tensor, and MindSpore may be NOISE_MULTIPLE x that (why 8: see NOISE_MULTIPLE).  A wrong term in
# the autodiff graph (a missing mask, the tied head counted once, a wrong normaliser) moves a
# gradient by a fraction of its magnitude, orders above float32 noise.


def ms_backward_bounds(config, n_tokens: int, spec_float32_grad, spec_float64_grad) -> tuple[Bound, Bound]:
    """(derived, measured) bounds for one MindSpore float32 gradient tensor vs the float64 spec:
    backward_bound(config, float32, n_tokens) and noise_bound(spec float32, spec float64)."""
    return (backward_bound(config, "float32", n_tokens),
            noise_bound(spec_float32_grad, spec_float64_grad, "float32"))


# One compiled update (clip + AdamW in float32) against ref_numpy.clip_grad_norm + adamw_step in
# float64 given the SAME gradients and optimizer state (the Trainer's own, read back): the error is
# the float32 arithmetic of one optimizer step, optimizer_bound("float32", 1, lr) -- the derivation
# above (2 roundings at |p|, 10 at the update's scale) -- plus the clipping coefficient computed from a
# float32 norm, relative error grad_norm_bound(float32, n_elements, n_tensors) on every gradient;
# Adam's m_hat / sqrt(v_hat) is invariant to a common scale of the gradients up to eps, and the
# later moments mix at most that relative error, so it reaches p as at most 2 x that x the update
# (<= ADAMW_MAX_UPDATE_PER_LR x lr).  Why per step and with the same gradients: Adam divides by
# sqrt(v), so a gradient element near zero whose float32 rounding flips its sign moves the parameter
# by ~2 lr in one step whatever the precision -- trajectories of two correct implementations
# separate at such elements, and no rounding bound describes them.

def ms_update_bound(n_elements: int, n_tensors: int, lr: float) -> Bound:
    """One MindSpore float32 AdamW update (with clipping) vs the spec's float64 one from the same
    gradients and state, relative to max(1, max|reference parameter|)."""
    step = optimizer_bound("float32", 1, lr)
    clip = grad_norm_bound("float32", n_elements, n_tensors)
    value = step.value + 2 * clip.value * ADAMW_MAX_UPDATE_PER_LR * lr
    return Bound(value, f"{step.reason} + 2 x clipping coefficient ({clip.reason}) x "
                        f"{ADAMW_MAX_UPDATE_PER_LR:g} x lr={lr:g}")


# Training through the CLI (issue 13): a logged loss against the float64 spec's loss of the same
# parameters on the same batch
# -----------------------------------------------------------------------------------------------
# The loss is the mean over N targets of logsumexp(logits) - logits[target].  Both terms move by at
# most max|d logits| when the logits do (log-sum-exp is 1-Lipschitz in the max norm), so a per-target
# loss, and their mean, is off by at most 2 x the logits' error: forward_bound x max(1, max|logit|).
# The loss's own arithmetic adds a sum of V exponentials per target and a mean of N terms, each
# within (sqrt(V) + sqrt(N) + 2) u (random-sign roundings, the log and the division) of a per-target
# loss no larger than log V + 2 max|logit|; times SAFETY.  A wrong target shift, a loss over padding
# or a logged loss of other parameters moves the loss by ~1e-2 or more, far above this (~1e-4 for
# the tiny test models in float32).
def lm_loss_bound(config, dtype, logit_scale: float, n_targets: int) -> Bound:
    """|loss of a `dtype` forward pass - float64 spec loss| for logits of max magnitude
    `logit_scale` and `n_targets` counted targets (absolute)."""
    u = unit_roundoff(dtype)
    logits = forward_bound(config, dtype)
    through_logits = 2 * logits.value * max(1.0, logit_scale)
    loss_scale = math.log(config.n_vocab) + 2 * logit_scale
    arithmetic = SAFETY * (math.sqrt(config.n_vocab) + math.sqrt(n_targets) + 2) * u * max(1.0, loss_scale)
    return Bound(through_logits + arithmetic,
                 f"2 x logits error ({logits.reason}) x max(1, max|logit|={logit_scale:.3g}) + {SAFETY:g} x "
                 f"(sqrt(V={config.n_vocab}) + sqrt(N={n_targets}) + 2) x u={u:.2g} x (log V + 2 max|logit|)",
                 relative=False)


# Data parallel (issue 12): N ranks under msrun against one process on the whole batch
# ------------------------------------------------------------------------------------
# Both runs compute the same float32 gradients of the same global mean loss (ms_backend/distributed.py:
# every rank divides its token-loss sum by the global count, the ranks' gradients are summed).  What
# differs is only the order of the additions -- the token sum inside each weight gradient is split
# at the shard boundary and finished by the AllReduce -- and the batch shape each BLAS call sees.
# Each run is within backward_bound of the exact gradients, so they differ by at most twice that:
# backward_reorder_bound.  It is loose (its sqrt(K) model is a worst case for these tiny models), so
# each tensor is also held to the measured noise: each run may be NOISE_MULTIPLE x the spec's own
# float32 noise away from the float64 spec (ms_backward_bounds), so the two by twice that.  A wrong
# normaliser (each rank's mean, then averaged) moves the gradients by the shards' token imbalance --
# tens of percent in the test's batch, where the measured bound is ~1e-6 of the gradient.
#
# Parameters after S AdamW steps (with clipping): the updates of the two runs see gradients that
# differ by the bound above.  The clipping coefficient min(1, M / |g|) changes by the gradients'
# relative error at most (the norm is 1-Lipschitz), so the clipped gradients differ by at most 2 x
# the gradient bound.  AdamW's direction m_hat / (sqrt(v_hat) + eps) moves by at most
# ADAM_GRADIENT_LIPSCHITZ / eps per unit of gradient: for two steps with betas (0.9, 0.999) the
# derivative's sum over both steps' gradients is at most sum(a_k) + sum(sqrt(b_k)) = 1 + 1.41
# (a_k, b_k the bias-corrected weights of g_k in m_hat and v_hat; |m_hat| <= sqrt(v_hat) by
# Cauchy-Schwarz), rounded up to 3.  Times lr per step, summed over the S steps, plus each side's own
# update rounding (optimizer_bound).  With eps = 1e-8 there is no such constant: the first update is
# lr x sign(g) and an element within rounding of zero flips by 2 lr -- so the test trains with eps = 1.
# The second step's gradients are taken at parameters already this close, which moves them by far
# less than the gradient bound's SAFETY margin.
ADAM_GRADIENT_LIPSCHITZ = 3.0


def data_parallel_grad_bounds(config, n_tokens: int, spec_float32_grad, spec_float64_grad) -> tuple[Bound, Bound]:
    """(derived, measured) bounds for one gradient tensor, N data-parallel ranks vs one process on
    the whole batch (both MindSpore float32): 2 x backward_bound and 2 x noise_bound (above)."""
    derived = backward_reorder_bound(config, "float32", n_tokens)
    noise = noise_bound(spec_float32_grad, spec_float64_grad, "float32")
    return derived, Bound(2 * noise.value, f"2 runs x {noise.reason}", relative=False)


def data_parallel_param_bound(param_reference, grad_error: float, n_steps: int, lr: float, eps: float) -> Bound:
    """Allowed |parameter difference| (absolute) after `n_steps` AdamW steps (lr <= `lr`, eps `eps`,
    clipping allowed) of N ranks vs one process, when the tensor's gradients may differ by
    `grad_error` (absolute: a data_parallel_grad_bounds bound's allowed error)."""
    rounding = optimizer_bound("float32", n_steps, lr)
    through_grads = n_steps * ADAM_GRADIENT_LIPSCHITZ * lr / eps * 2 * grad_error
    return Bound(rounding.allowed(param_reference) + through_grads,
                 f"{rounding.reason} x max(1, max|p|) + steps={n_steps} x {ADAM_GRADIENT_LIPSCHITZ:g} x lr={lr:g} / "
                 f"eps={eps:g} x 2 (clipping) x gradient error {grad_error:.2g}", relative=False)


# Mixed-precision training: gradients under AMP, and the loss curve
# -----------------------------------------------------------------
# Under AMP the backward pass runs the same low-precision matmuls as the forward, two per forward
# matmul (autodiff differentiates through the casts: each gradient is rounded where its forward
# value was), so a gradient carries BACKWARD_CHAIN_FACTOR x the forward's roundings: amp_bound x 3,
# relative to max(1, max|reference gradient|) per tensor.  Loss scaling changes nothing here: the
# scale is a power of two, multiplying and dividing by it is exact.
#
# The loss curve of a whole AMP run against the float32 run from the same weights and batches: at
# equal weights the two losses differ by at most 2 x the logits' error (|d loss / d logit| sums to
# <= 2 over a row), i.e. 2 x amp_bound relative to max(1, loss).  Trajectories then separate -- every
# update is computed from slightly different gradients -- but on a run that converges (a small model
# fitting its batches) the separation stays below that per-step bound: the test asserts it at every
# step, comparing the runs after the same number of APPLIED updates (a step skipped on overflow
# changes nothing, so the AMP run lags by one step after each skip).  Observed (GPT-2 C=32, 2 layers,
# 300 steps fitting 8 x 15 targets, fp16, parity_tests/test_ms_train_amp.py): max difference O1 4.0e-5,
# O2 2.0e-4, O3 0.22 (2 skipped steps: its learning-rate schedule runs 2 steps ahead of its updates);
# worst difference / allowed at that step: O1 1.8e-4, O2 7.2e-4, O3 0.43.  So the bound is tight only
# for O3; at O1/O2 it catches a broken run (updates on overflowed steps, NaN weights, a diverging or
# stalled curve), not a small drift -- the gradient test (amp_backward_bound) is the precise check.

def amp_backward_bound(config, amp_level: str, dtype="float16") -> Bound:
    """Gradients of an AMP training step vs the float64 spec, per tensor."""
    forward = amp_bound(config, amp_level, dtype)
    return Bound(BACKWARD_CHAIN_FACTOR * forward.value,
                 f"{BACKWARD_CHAIN_FACTOR} (forward + 2 backward matmuls per matmul) x ({forward.reason})")


def amp_loss_curve_bound(config, amp_level: str, dtype="float16") -> Bound:
    """|loss of the AMP run - loss of the float32 run| after the same number of applied updates,
    relative to max(1, float32 loss)."""
    forward = amp_bound(config, amp_level, dtype)
    return Bound(2 * forward.value, f"2 (loss vs logit error) x ({forward.reason})")


# LayerNorm's conditioning (found by the `dev` hypothesis profile on n_embd = 2 models)
# -----------------------------------------------------------------------------------
# The model at the top of this module lets LayerNorm "rescale but not amplify" errors.  That holds
# for inputs centred near zero.  LayerNorm computes (x - mean) / sqrt(var + eps): an error delta in x,
# of the size of the roundings behind x (relative to x's own scale, its root mean square), becomes
# delta / sqrt(var + eps) in an output of scale 1 -- LayerNorm multiplies the relative error by
#
#     condition = sqrt(mean(x^2) / (var(x) + eps))  =  sqrt(1 + mean^2 / (var + eps))    (>= ~1),
#
# 1 for a centred input, large when the entries nearly agree and (x - mean) cancels most of their
# digits: [0.0747, 0.0689] (a 2-wide residual stream of a random model) has condition 25, and its
# MLP output was 3x beyond forward_bound in float32 with nothing wrong.  SAFETY covers a condition
# up to LAYER_NORM_CONDITION_COVERED (a mean up to 1.7 standard deviations); beyond it the bound
# grows in proportion.  The condition is measured on the float64 reference's own LayerNorm inputs
# (gptspec.parity.reference_layer_norm_condition), worst row, worst LayerNorm, so it widens every
# tensor's bound of that input, never by more than the cancellation actually there.  Measured:
# 1.0-1.1 on the default `gptspec parity` models (no widening); the fp32 and AMP slack figures stand.
LAYER_NORM_CONDITION_COVERED = 2.0


def layer_norm_condition(layer_norm_inputs, eps: float) -> float:
    """The worst sqrt(mean(x^2) / (var(x) + eps)) over the rows (last axis) of the given LayerNorm
    inputs; 1.0 for none."""
    worst = 1.0
    for x in layer_norm_inputs:
        x = np.asarray(x, np.float64)
        ratio = np.sqrt(np.mean(x * x, axis=-1) / (np.var(x, axis=-1) + eps))
        worst = max(worst, float(np.max(ratio)) if ratio.size else 1.0)
    return worst


def conditioned(bound: Bound, condition: float) -> Bound:
    """`bound` widened by max(1, condition / LAYER_NORM_CONDITION_COVERED) (see above)."""
    factor = max(1.0, condition / LAYER_NORM_CONDITION_COVERED)
    if factor == 1.0:
        return bound
    return Bound(bound.value * factor, f"{bound.reason} x LayerNorm condition {condition:.3g} / "
                                       f"{LAYER_NORM_CONDITION_COVERED:g}", bound.relative)
