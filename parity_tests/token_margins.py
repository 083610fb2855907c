"""Why a backend's tokens may be compared with the spec's *exactly*: the decision margin.

A float32 (or AMP) backend's logits differ from the float64 spec's by up to a bound's allowed
error e.  Its tokens still equal the spec's as long as no decision along the spec's own path is
closer than that: for greedy, every top-2 gap exceeds near_tie_gap (2e); for sampling, a logit
move of e moves each processed probability by a factor within exp(+-2e / temperature), so each
CDF value by at most d = expm1(2e / temperature), and the token, the top-k set and the top-p set
stay put while the uniform's target, the k-th/(k+1)-th gap and the top-p crossings are further
than that.  `token_margin` returns the smallest (distance / what the error could move) over every
step and row: above 1, exact token equality is implied by the bound, on any machine.
"""
from __future__ import annotations

import math

import numpy as np

import ref_numpy as R
from gptspec.tolerances import Bound, near_tie_gap


def sampling_margin(logits, uniform, allowed, temperature, top_k=None, top_p=None) -> float:
    """Margin of one sampled decision: logits [V] (float64 spec), the row's uniform in [0, 1)."""
    scaled = np.asarray(logits, np.float64) / temperature
    logit_move = 2 * allowed / temperature
    cdf_move = math.expm1(logit_move)
    margins = []
    if top_k is not None and top_k < scaled.size:
        ordered = np.sort(scaled)[::-1]
        margins.append((ordered[top_k - 1] - ordered[top_k]) / logit_move)
        scaled = R.top_k_filter(scaled[None], top_k)[0]
    if top_p is not None and top_p < 1:
        ordered = np.sort(scaled)[::-1]
        probs = np.exp(ordered - ordered[0])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs  # the mass before each token: HF keeps it while < p
        margins.append(np.abs(before[np.isfinite(ordered)] - top_p).min() / cdf_move)
    probs = R.processed_probs(logits[None], temperature=temperature, top_k=top_k, top_p=top_p)[0]
    cdf = np.cumsum(probs)
    margins.append(np.abs(cdf[:-1] - uniform * cdf[-1]).min() / cdf_move if cdf.size > 1 else math.inf)
    return float(min(margins))


def token_margin(config, params64, prompt, out, bound: Bound, *, attention_mask=None, eos_id=None,
                 sampling=None, seed=None) -> float:
    """Smallest decision margin along the spec's continuation `out` ([B, T + n] or [T + n]) of
    `prompt`, for a backend within `bound` of the float64 spec.  sampling: None for greedy, else
    dict(temperature, top_k, top_p) with the generation's `seed` (one uniform per row per step)."""
    prompt, out = np.atleast_2d(prompt), np.atleast_2d(out)
    batch, n_prompt = prompt.shape
    mask = np.ones((batch, n_prompt), np.int64) if attention_mask is None else np.asarray(attention_mask)
    rng = np.random.default_rng(seed)
    worst = math.inf
    for t in range(n_prompt, out.shape[1]):
        uniforms = rng.random(batch)
        step_mask = np.concatenate([mask, np.ones((batch, t - n_prompt), np.int64)], axis=1)
        logits = R.forward(config, params64, out[:, :t], attention_mask=step_mask)[0][:, -1]
        for row in range(batch):
            if eos_id is not None and (out[row, n_prompt:t] == eos_id).any():
                continue  # a finished row repeats eos whatever the logits say
            if sampling is None:
                top = np.sort(logits[row])[::-1]
                worst = min(worst, (top[0] - top[1]) / near_tie_gap(bound, logits[row]))
            else:
                worst = min(worst, sampling_margin(logits[row], uniforms[row], bound.allowed(logits[row]),
                                                   **sampling))
    return worst
