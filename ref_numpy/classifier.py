"""GPT-1's fine-tuning: a linear classifier on the hidden state of a classify token (works on GPT-2).

Radford et al. (2018), section 3.2: a task's input is written as one token sequence, e.g.
`_start_ text _classify_`, the model runs over it, and a linear layer reads the final hidden
state at the `_classify_` token:

    hidden = model(ids)                   [B, T, C]   (after ln_f for GPT-2; GPT-1 has none)
    h      = hidden[b, clf_positions[b]]  [B, C]      one position per row
    logits = h @ head["w"] + head["b"]    [B, n_classes]

Training minimises L3 = L2 + lm_coef * L1: the classification cross-entropy L2 plus the language-
modelling loss L1 of the same rows (ids[:, :-1] predicting ids[:, 1:], padding ignored as in
shift_targets), with lm_coef = 0.5 in OpenAI's code.  Both losses read the same forward pass, so
their gradients meet in d hidden and flow back through the model once.

The three special tokens are new rows of wte (add_tokens); the head starts as OpenAI's `clf`
layer: w ~ N(0, 0.02), b = 0 (init_classifier).

The paper's four tasks (section 3.3, figure 1), all on one shared pass (fine_tuning_pass):
  classification, entailment  one row per example       classifier_logits / classifier_loss_and_grads
  similarity                  rows a-b and b-a, summed   similarity_logits / similarity_loss_and_grads
  multiple choice             one row per answer, one    init_choice_head, choice_logits /
                              score each, softmax        choice_loss_and_grads
"""
from __future__ import annotations

import math

import numpy as np

from .backward import lm_head_backward
from .config import GPTConfig
from .data import shift_targets
from .loss import IGNORE_INDEX, cross_entropy, cross_entropy_backward
from .model import lm_head, prepare_inputs
from .params import check_params
from .train import apply_dropout, dropout_scale, train_backward, train_forward
from .validation import check_dropout

INIT_STD = 0.02  # OpenAI's clf head and every GPT weight matrix


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def init_classifier(config: GPTConfig, n_classes: int, seed: int = 0, *, dtype=np.float32) -> dict:
    """A new head {"w": [C, n_classes] ~ N(0, 0.02), "b": [n_classes] = 0} (drawn in float32, then
    cast, like init_params).  n_classes >= 2: the head's softmax runs over the classes of each row,
    and with one class it is always 1 (a zero loss, nothing to learn).  (OpenAI's ROCStories head has
    one output because it scores each candidate ending as its own row and takes the softmax across
    the rows of a pair; write such a task as one row per pair with 2 classes, or score with
    classifier_logits.)"""
    if not _is_int(n_classes) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2 (a softmax over one class is constant), got {n_classes!r}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((config.n_embd, n_classes), dtype=np.float32) * np.float32(INIT_STD)
    return {"w": w.astype(dtype), "b": np.zeros(n_classes, dtype=dtype)}


def add_tokens(params: dict, n: int, seed: int = 0) -> dict:
    """params with wte grown by n rows ~ N(0, 0.02), as wte was initialised (GPT-1's `_start_`,
    `_delimiter_`, `_classify_`).  The new ids are old n_vocab .. old n_vocab + n - 1.

    Returns a new params dict; wte is a new [n_vocab + n, C] array, every other array is shared with
    the input (not copied).  The config must grow with it: `config.replace(n_vocab=config.n_vocab + n)`.
    """
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of new tokens), got {n!r}")
    if not isinstance(params, dict) or not isinstance(params.get("wte"), np.ndarray) or params["wte"].ndim != 2:
        raise ValueError("params must be a model's params dict with a 2-D 'wte' [n_vocab, C]")
    wte = params["wte"]
    rng = np.random.default_rng(seed)
    new_rows = rng.standard_normal((n, wte.shape[1]), dtype=np.float32) * np.float32(INIT_STD)
    return {**params, "wte": np.concatenate([wte, new_rows.astype(wte.dtype)], axis=0)}


def check_head(config: GPTConfig, head, dtype) -> int:
    """head {"w": [C, n], "b": [n]} in the params' dtype, n >= 2; returns n_classes."""
    if not isinstance(head, dict) or set(head) != {"w", "b"}:
        raise ValueError(f"head must be a dict with exactly 'w' [n_embd, n_classes] and 'b' [n_classes], got "
                         f"{sorted(head) if isinstance(head, dict) else type(head).__name__}")
    w, b = head["w"], head["b"]
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.shape[0] != config.n_embd:
        raise ValueError(f"head['w'] has shape {getattr(w, 'shape', None)}, expected [n_embd={config.n_embd}, "
                         f"n_classes]")
    n_classes = w.shape[1]
    if n_classes < 2:
        raise ValueError(f"head['w'] has {n_classes} class column(s): need n_classes >= 2")
    if not isinstance(b, np.ndarray) or b.shape != (n_classes,):
        raise ValueError(f"head['b'] has shape {getattr(b, 'shape', None)}, expected [n_classes={n_classes}]")
    for name, array in head.items():
        if array.dtype != dtype:
            raise ValueError(f"head[{name!r}] has dtype {array.dtype}, but the params have {dtype}: use one dtype")
    return n_classes


def check_positions(clf_positions, attention_mask, batch: int, n_tokens: int) -> np.ndarray:
    """clf_positions int [B]: each row's classify token, in [0, T) and not on padding."""
    pos = np.asarray(clf_positions)
    if pos.dtype == bool or not np.issubdtype(pos.dtype, np.integer):
        raise TypeError(f"clf_positions must be integers, got dtype {pos.dtype}")
    if pos.shape != (batch,):
        raise ValueError(f"clf_positions has shape {pos.shape}, expected one position per row: ({batch},)")
    outside = (pos < 0) | (pos >= n_tokens)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ValueError(f"clf_positions[{row}] = {pos[row]} is outside the row's positions [0, {n_tokens})")
    if attention_mask is not None:
        on_padding = attention_mask[np.arange(batch), pos] == 0
        if on_padding.any():
            row = int(np.flatnonzero(on_padding)[0])
            raise ValueError(f"clf_positions[{row}] = {pos[row]} is a padding slot (attention_mask is 0 there): "
                             f"the classify token must be a real token")
    return pos.astype(np.int64)


def check_labels(labels, batch: int, n_classes: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"labels has shape {arr.shape}, expected one label per row: ({batch},)")
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels[{row}] = {arr[row]} is outside the classes [0, {n_classes})")
    return arr.astype(np.int64)


def _checked(config, params, head, ids, clf_positions, attention_mask):
    check_params(config, params)
    n_classes = check_head(config, head, params["wte"].dtype)
    inputs = prepare_inputs(config, ids, attention_mask=attention_mask)
    batch, n_tokens = inputs.ids.shape
    positions = check_positions(clf_positions, inputs.attention_mask, batch, n_tokens)
    return inputs, positions, n_classes


def classifier_logits(config: GPTConfig, params: dict, head: dict, ids, clf_positions, *, attention_mask=None):
    """logits [B, n_classes] of the head on the hidden state at each row's classify token.
    ids int [B, T]; clf_positions int [B]; attention_mask 0/1 [B, T] (left or right padding) or None."""
    inputs, positions, _ = _checked(config, params, head, ids, clf_positions, attention_mask)
    hidden, _ = train_forward(config, params, inputs.ids, attention_mask=inputs.attention_mask)
    h = hidden[np.arange(len(positions)), positions]  # [B, C]
    return h @ head["w"] + head["b"]


def check_lm_coef(lm_coef) -> float:
    if isinstance(lm_coef, bool) or not isinstance(lm_coef, (int, float, np.integer, np.floating)) \
            or not math.isfinite(lm_coef) or lm_coef < 0:
        raise ValueError(f"lm_coef must be a finite number >= 0, got {lm_coef!r}")
    return lm_coef


def classifier_loss_and_grads(config: GPTConfig, params: dict, head: dict, ids, labels, clf_positions, *,
                              attention_mask=None, lm_coef=0.5, dropout=0.0, seed=None):
    """GPT-1's fine-tuning loss L3 = L2 + lm_coef * L1 and its gradients, from one forward pass.

    ids int [B, T]; labels int [B] in [0, n_classes); clf_positions int [B] (the classify token of
    each row, a real token); attention_mask 0/1 [B, T] or None; lm_coef >= 0 (0.5 in OpenAI's code;
    0 skips the LM loss and its [B, T, V] logits).  dropout p (model dropout as in loss_and_grads,
    plus, as in OpenAI's code, on the classifier's input h) with masks from default_rng(seed), the
    head's mask drawn after the model's.

        L2 = mean over rows of -log softmax(h @ w + b)[label]
        L1 = mean over the counted targets of all rows of -log softmax(logits)[next token]
             (a token mean, so a long row weighs more; OpenAI averages each row first)

    Returns (loss: float, grads with the structure of params, head_grads {"w", "b"})."""
    inputs, positions, n_classes = _checked(config, params, head, ids, clf_positions, attention_mask)
    labels = check_labels(labels, len(positions), n_classes)

    def head_loss(h):  # h [B, C] -> (L2, d h [B, C], head grads)
        logits = h @ head["w"] + head["b"]  # [B, n]
        d_logits = cross_entropy_backward(logits, labels)  # [B, n]
        return (cross_entropy(logits, labels), d_logits @ head["w"].T,
                {"w": h.T @ d_logits, "b": d_logits.sum(axis=0)})

    return fine_tuning_pass(config, params, inputs.ids, inputs.attention_mask, positions, head_loss,
                            lm_coef=lm_coef, dropout=dropout, seed=seed)


NO_LM_TARGETS = "no row has two real tokens in a row: the LM loss has no targets (pass lm_coef=0)"


def fine_tuning_lm_targets(ids, mask, lm_coef, *, require_one: bool = True):
    """The auxiliary LM loss's targets [R, T-1] of fine-tuning rows (hidden[:, :-1] predicts
    ids[:, 1:]: shift_targets), or None when lm_coef == 0.  require_one=False lets a micro-batch of
    a larger batch have none (the batch as a whole must: NO_LM_TARGETS)."""
    if lm_coef == 0:
        return None
    if ids.shape[1] < 2:
        raise ValueError("ids has one token per row: the LM loss needs at least 2 (or pass lm_coef=0)")
    _, lm_targets, _ = shift_targets(ids, mask)
    if require_one and (lm_targets == IGNORE_INDEX).all():
        raise ValueError(NO_LM_TARGETS)
    return lm_targets


def fine_tuning_pass(config: GPTConfig, params: dict, ids, mask, positions, head_loss, *, lm_coef, dropout, seed):
    """What every GPT-1 task shares: one forward pass over all rows, the task's loss on the hidden
    states at the classify tokens, plus lm_coef x the rows' LM loss, and one backward pass.

    ids int [R, T] (validated), mask 0/1 [R, T] or None, positions int [R] (validated);
    head_loss(h [R, C]) -> (task loss, d task loss / d h [R, C], head grads).  h is dropped out
    (a mask drawn after the model's) before head_loss sees it.  The LM loss is the token mean over
    the counted targets of all R rows (shift_targets).  Returns (loss, grads, head_grads)."""
    lm_coef, dropout = check_lm_coef(lm_coef), check_dropout(dropout)
    n_rows, n_tokens = ids.shape
    lm_targets = fine_tuning_lm_targets(ids, mask, lm_coef)

    rng = np.random.default_rng(seed)
    hidden, tape = train_forward(config, params, ids, attention_mask=mask, dropout=dropout, rng=rng)  # [R, T, C]
    rows = np.arange(n_rows)
    clf_drop = dropout_scale((n_rows, config.n_embd), dropout, rng, hidden.dtype)
    h = apply_dropout(hidden[rows, positions], clf_drop)  # [R, C]
    loss, d_h, head_grads = head_loss(h)
    d_hidden = np.zeros_like(hidden)
    d_hidden[rows, positions] = apply_dropout(d_h, clf_drop)  # one classify position per row

    d_wte_head = None
    if lm_targets is not None:  # the LM loss of the same rows: hidden[:, :-1] predicts ids[:, 1:]
        lm_hidden = hidden[:, :-1]
        lm_logits = lm_head(params, lm_hidden)  # [R, T-1, V]
        loss += lm_coef * cross_entropy(lm_logits, lm_targets)
        d_lm_logits = cross_entropy_backward(lm_logits, lm_targets) * hidden.dtype.type(lm_coef)
        d_lm_hidden, d_wte_head = lm_head_backward(d_lm_logits, lm_hidden, params["wte"])
        d_hidden[:, :-1] += d_lm_hidden

    grads = train_backward(config, params, tape, d_hidden)
    if d_wte_head is not None:
        grads["wte"] += d_wte_head  # the tied head's share
    return float(loss), grads, head_grads


# ---- Similarity: both orders, summed (GPT-1 section 3.3) -------------------------------------------
#
# The two texts of a similarity pair have no natural order, so the model reads both,
# `[_start_] a [_delimiter_] b [_classify_]` and `[_start_] b [_delimiter_] a [_classify_]`, and the
# two classify-token states are added element-wise before the linear head:
#
#     h_ab, h_ba = hidden_ab[b, clf_ab[b]], hidden_ba[b, clf_ba[b]]   [B, C] each
#     logits     = (h_ab + h_ba) @ head["w"] + head["b"]              [B, n_classes]
#
# The 2B rows go through the model as one batch [ids_ab; ids_ba] (rows 0..B-1 then B..2B-1).

def _checked_pairs(config, params, head, ids_ab, ids_ba, clf_ab, clf_ba, mask_ab, mask_ba):
    """The two orders stacked: (ids [2B, T], mask [2B, T] or None, positions [2B], n_classes)."""
    shapes = {}
    for name, ids in (("ids_ab", ids_ab), ("ids_ba", ids_ba)):
        shapes[name] = np.shape(ids)
        if len(shapes[name]) != 2:
            raise ValueError(f"{name} must be [B, T] token ids, got shape {shapes[name]}")
    if shapes["ids_ab"] != shapes["ids_ba"]:
        raise ValueError(f"ids_ab has shape {shapes['ids_ab']} but ids_ba has {shapes['ids_ba']}: the two orders of "
                         f"each pair must be padded to one length")
    ids = np.concatenate([np.asarray(ids_ab), np.asarray(ids_ba)])
    mask = None
    if mask_ab is not None or mask_ba is not None:
        full = np.ones(shapes["ids_ab"], np.int64)
        parts = []
        for name, m in (("attention_mask_ab", mask_ab), ("attention_mask_ba", mask_ba)):
            m = full if m is None else np.asarray(m)
            if m.shape != full.shape:
                raise ValueError(f"{name} has shape {m.shape}, expected the ids' {full.shape}")
            parts.append(m)
        mask = np.concatenate(parts)
    for name, pos in (("clf_ab", clf_ab), ("clf_ba", clf_ba)):
        if np.shape(pos) != (shapes["ids_ab"][0],):
            raise ValueError(f"{name} has shape {np.shape(pos)}, expected one position per pair: "
                             f"({shapes['ids_ab'][0]},)")
    positions = np.concatenate([np.asarray(clf_ab), np.asarray(clf_ba)])
    inputs, positions, n_classes = _checked(config, params, head, ids, positions, mask)
    return inputs.ids, inputs.attention_mask, positions, n_classes


def similarity_logits(config: GPTConfig, params: dict, head: dict, ids_ab, ids_ba, clf_ab, clf_ba, *,
                      attention_mask_ab=None, attention_mask_ba=None):
    """logits [B, n_classes] = (h_ab + h_ba) @ w + b.  ids_ab, ids_ba int [B, T] (pair b's two orders
    in row b of each); clf_ab, clf_ba int [B] their classify tokens; masks 0/1 [B, T] or None."""
    ids, mask, positions, _ = _checked_pairs(config, params, head, ids_ab, ids_ba, clf_ab, clf_ba,
                                             attention_mask_ab, attention_mask_ba)
    hidden, _ = train_forward(config, params, ids, attention_mask=mask)
    h = hidden[np.arange(len(positions)), positions]  # [2B, C]
    n_pairs = len(positions) // 2
    return (h[:n_pairs] + h[n_pairs:]) @ head["w"] + head["b"]


def similarity_loss_and_grads(config: GPTConfig, params: dict, head: dict, ids_ab, ids_ba, labels, clf_ab, clf_ba,
                              *, attention_mask_ab=None, attention_mask_ba=None, lm_coef=0.5, dropout=0.0,
                              seed=None):
    """L3 = L2 + lm_coef * L1 for similarity pairs.  Arguments as similarity_logits, labels int [B].

        L2 = mean over pairs of -log softmax((h_ab + h_ba) @ w + b)[label]
        L1 = token mean over the counted targets of all 2B rows (both orders; so each text's tokens
             are predicted twice, once in each context)

    The sum's gradient reaches both rows unchanged: d h_ab = d h_ba = d logits @ w.T.  dropout as in
    classifier_loss_and_grads (on each of the 2B rows' h, before the sum).
    Returns (loss: float, grads with the structure of params, head_grads {"w", "b"})."""
    ids, mask, positions, n_classes = _checked_pairs(config, params, head, ids_ab, ids_ba, clf_ab, clf_ba,
                                                     attention_mask_ab, attention_mask_ba)
    n_pairs = len(positions) // 2
    labels = check_labels(labels, n_pairs, n_classes)

    def head_loss(h):  # h [2B, C] -> (L2, d h [2B, C], head grads)
        pair = h[:n_pairs] + h[n_pairs:]  # [B, C]
        logits = pair @ head["w"] + head["b"]  # [B, n]
        d_logits = cross_entropy_backward(logits, labels)  # [B, n]
        d_pair = d_logits @ head["w"].T  # [B, C]
        return (cross_entropy(logits, labels), np.concatenate([d_pair, d_pair]),
                {"w": pair.T @ d_logits, "b": d_logits.sum(axis=0)})

    return fine_tuning_pass(config, params, ids, mask, positions, head_loss, lm_coef=lm_coef, dropout=dropout,
                            seed=seed)


# ---- Multiple choice: one score per answer, softmax over the answers (GPT-1 section 3.3) ------------
#
# Example e has a context and N answers; each answer is its own row
# `[_start_] context [_delimiter_] answer_i [_classify_]`, rows e*N .. e*N + N-1.  A head with ONE
# output scores each row; the softmax runs over the N scores of an example:
#
#     scores = (h @ head["w"] + head["b"]).reshape(E, N)     h [E*N, C], w [C, 1], b [1]
#     loss   = mean over examples of -log softmax(scores[e])[label[e]]

def init_choice_head(config: GPTConfig, seed: int = 0, *, dtype=np.float32) -> dict:
    """A new scoring head {"w": [C, 1] ~ N(0, 0.02), "b": [1] = 0} (OpenAI's ROCStories `clf` layer)."""
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((config.n_embd, 1), dtype=np.float32) * np.float32(INIT_STD)
    return {"w": w.astype(dtype), "b": np.zeros(1, dtype=dtype)}


def check_choice_head(config: GPTConfig, head, dtype) -> None:
    """head {"w": [C, 1], "b": [1]} in the params' dtype."""
    if not isinstance(head, dict) or set(head) != {"w", "b"}:
        raise ValueError("head must be a dict with exactly 'w' [n_embd, 1] and 'b' [1] (init_choice_head)")
    for name, shape in (("w", (config.n_embd, 1)), ("b", (1,))):
        array = head[name]
        if not isinstance(array, np.ndarray) or array.shape != shape:
            raise ValueError(f"head[{name!r}] has shape {getattr(array, 'shape', None)}, expected {list(shape)} "
                             f"(one score per answer row)")
        if array.dtype != dtype:
            raise ValueError(f"head[{name!r}] has dtype {array.dtype}, but the params have {dtype}: use one dtype")


def check_n_choices(n_choices, n_rows: int) -> int:
    """n_choices: an int >= 2 dividing the row count; returns the number of examples."""
    if not _is_int(n_choices) or n_choices < 2:
        raise ValueError(f"n_choices must be an int >= 2 (a softmax over one answer is constant), got {n_choices!r}")
    if n_rows % n_choices:
        raise ValueError(f"ids has {n_rows} rows, not a multiple of n_choices={n_choices} (one row per answer)")
    return n_rows // n_choices


def _checked_choice(config, params, head, ids, clf_positions, n_choices, attention_mask):
    check_params(config, params)
    check_choice_head(config, head, params["wte"].dtype)
    inputs = prepare_inputs(config, ids, attention_mask=attention_mask)
    n_rows, n_tokens = inputs.ids.shape
    n_examples = check_n_choices(n_choices, n_rows)
    return inputs, check_positions(clf_positions, inputs.attention_mask, n_rows, n_tokens), n_examples


def choice_logits(config: GPTConfig, params: dict, head: dict, ids, clf_positions, n_choices: int, *,
                  attention_mask=None):
    """scores [E, N] of each example's answers.  ids int [E*N, T] (example e's answers in rows
    e*N .. e*N + N-1); clf_positions int [E*N]; attention_mask 0/1 [E*N, T] or None."""
    inputs, positions, n_examples = _checked_choice(config, params, head, ids, clf_positions, n_choices,
                                                    attention_mask)
    hidden, _ = train_forward(config, params, inputs.ids, attention_mask=inputs.attention_mask)
    h = hidden[np.arange(len(positions)), positions]  # [E*N, C]
    return (h @ head["w"] + head["b"]).reshape(n_examples, n_choices)


def choice_loss_and_grads(config: GPTConfig, params: dict, head: dict, ids, labels, clf_positions, n_choices: int,
                          *, attention_mask=None, lm_coef=0.5, dropout=0.0, seed=None):
    """L3 = L2 + lm_coef * L1 for multiple choice.  Arguments as choice_logits; labels int [E], the
    right answer's index in [0, n_choices).

        L2 = mean over examples of -log softmax(scores[e])[labels[e]]
        L1 = token mean over the counted targets of all E*N rows (the context is predicted once per
             answer, as in OpenAI's ROCStories code)

    dropout as in classifier_loss_and_grads (on each row's h).
    Returns (loss: float, grads with the structure of params, head_grads {"w" [C, 1], "b" [1]})."""
    inputs, positions, n_examples = _checked_choice(config, params, head, ids, clf_positions, n_choices,
                                                    attention_mask)
    labels = check_labels(labels, n_examples, n_choices)

    def head_loss(h):  # h [E*N, C] -> (L2, d h [E*N, C], head grads)
        scores = (h @ head["w"] + head["b"]).reshape(n_examples, n_choices)  # [E, N]
        d_scores = cross_entropy_backward(scores, labels).reshape(-1, 1)  # [E*N, 1]
        return (cross_entropy(scores, labels), d_scores @ head["w"].T,
                {"w": h.T @ d_scores, "b": d_scores.sum(axis=0)})

    return fine_tuning_pass(config, params, inputs.ids, inputs.attention_mask, positions, head_loss,
                            lm_coef=lm_coef, dropout=dropout, seed=seed)
