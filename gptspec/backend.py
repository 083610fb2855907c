"""The backend protocol: what a GPT implementation provides to be checked against the spec.

A *backend* is any object with a `forward` method that takes token ids and returns logits, NumPy
in and NumPy out.  gptspec builds one from the spec's params dict through a *factory*:

    factory(config, params, **options) -> backend

    config   ref_numpy.GPTConfig (arch "gpt1" or "gpt2", n_vocab, n_ctx, n_embd, n_head, n_layer)
    params   the spec's params dict (ref_numpy.init_params / weights.load: "wte", "wpe",
             "blocks"[i]["attn"]["c_attn"]["w"], ...), float32 NumPy arrays; a backend copies
             them into its own tensors (names and layouts: docs/checkpoints.md)
    options  keyword options, from the CLI's `--option K=V` (values parsed as Python literals:
             dtype=float16, amp_level=O2, mode=graph, threads=1 ...).  A factory refuses an option
             it does not know or a value it cannot use with ValueError (exit status 2).

`gptspec parity --backend MODULE:FACTORY` and `pytest parity_tests --gptspec-backend
MODULE:FACTORY` load the factory (MODULE importable from the current directory or PYTHONPATH);
`mindspore`, `hf` and `numpy` name the built-in ones (BUILTIN_BACKENDS).

Required -- everything else is optional:

    forward(ids, attention_mask=None) -> logits
        ids             int64 [B, T]
        attention_mask  int64 0/1 [B, S] or None; 1 = a real token.  Left padding (prompts,
                        generation) or right padding (training batches); position ids are
                        cumsum(mask) - 1, 0 on padding, as in the spec
        logits          numpy float array [B, T, n_vocab] (float16/32/64; bfloat16 as float32)

Optional parts, each detected from the backend and reported "not provided" when missing (a
check that needs one says so; it is never skipped silently):

    trace      forward(..., trace=dict) fills the dict with every tensor the spec traces, under
               the spec's names (trace_shapes): "embed", "blocks.{i}.attn_weights",
               "blocks.{i}.attn", "blocks.{i}.mlp", "blocks.{i}.out", ("ln_f",) "logits" --
               the layer-by-layer comparison that localises a failure.
    cache      forward(..., past=past) continues from an earlier call's cache and then returns
               (logits, present); `past=None` starts a new cache.  The cache is the backend's
               own object: gptspec only hands it back, and never reuses a past it has passed
               on (a backend may grow it in place).  A backend with `past` may return
               (logits, present) from every call.
    dtype_log  dtype_log() -> [(operation, [dtype names])]: the dtype each kind of operation
               ran in during the last traced forward (gptspec asks right after it), in
               ms_backend/amp.py's operation names, checked
               against amp.py's table for the backend's amp_level (the AMP policy check).
    gradients  loss_and_grads(inputs, targets, attention_mask=None) -> (loss, grads): the mean
               cross-entropy over targets != -100 and its gradient, `grads` in the params dict's
               structure (grads["wte"] holds the embedding's and the tied head's parts).
    optimizer  train_step(inputs, targets, attention_mask=None, *, lr, betas, eps, weight_decay,
               max_grad_norm) -> {"loss", "grad_norm", "params", optional "skipped",
               "loss_scale", "next_loss_scale"}: one update -- gradients, clipping to
               max_grad_norm (grad_norm: the global norm before clipping), torch's AdamW with
               decay on >= 2-D tensors only -- and the params dict after it.  Steps accumulate:
               the backend keeps its weights and optimizer state between calls.  gptspec asks
               for gradients (loss_and_grads, classifier_loss_and_grads) before any train_step,
               at the weights the backend was built with, and passes the same hyper-parameters
               to every train_step (a backend may refuse changed ones with ValueError).
    overflow   train_step(..., overflow=True): this step's loss scale is raised until its
               low-precision gradients overflow; a backend with dynamic loss scaling must skip
               the update (parameters bit-identical) and halve the scale.
    classifier classifier_loss_and_grads(head, ids, labels, clf_positions, attention_mask=None, *,
               lm_coef=0.5) -> (loss, grads, head_grads): GPT-1's fine-tuning objective, as
               ref_numpy.classifier_loss_and_grads.

A part is provided when the method exists and is callable (a backend withholds one, e.g.
train_step at a precision it cannot train in, by setting the attribute to None).

Attributes for the report and the bounds (all optional): `name`, `version`, `device` (strings);
`amp_level` ("O0" default .. "O3", the precision policy of ms_backend/amp.py the backend follows)
and `dtype` (the dtype it computes in: "float32" default, "float64", or the low dtype "float16" /
"bfloat16" under AMP) choose the derived bounds and the measured noise.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np

import ref_numpy
from ref_numpy.validation import as_token_ids

__all__ = ["Backend", "BackendFactory", "BackendProtocolError", "BackendUnderTest", "BUILTIN_BACKENDS",
           "OPTIONAL_PARTS", "load_factory", "make_backend", "parse_options", "trace_shapes"]

BUILTIN_BACKENDS = {
    "mindspore": "gptspec.backends.mindspore:factory",
    "hf": "gptspec.backends.hf:factory",
    "numpy": "gptspec.backends.spec:factory",
}

OPTIONAL_PARTS = {
    "trace": "forward(..., trace=dict): the layer-by-layer trace",
    "cache": "forward(..., past=...): the KV cache",
    "dtype_log": "dtype_log(): the dtypes each operation ran in (AMP policy check)",
    "gradients": "loss_and_grads(inputs, targets, attention_mask=None)",
    "optimizer": "train_step(...): one clipped AdamW update",
    "overflow": "train_step(..., overflow=True): an injected loss-scale overflow",
    "classifier": "classifier_loss_and_grads(head, ids, labels, clf_positions, ...)",
}

EXTRAS = {"mindspore": "mindspore", "hf": "oracle", "numpy": "all"}  # what a built-in backend needs installed
AMP_LEVELS = ("O0", "O1", "O2", "O3")


@runtime_checkable
class Backend(Protocol):
    """A GPT implementation under test (the module docstring states the whole protocol)."""

    def forward(self, ids, attention_mask=None) -> np.ndarray:
        """ids int64 [B, T], attention_mask 0/1 [B, S] or None -> logits float [B, T, n_vocab]."""


class BackendFactory(Protocol):
    def __call__(self, config: ref_numpy.GPTConfig, params: dict, **options: Any) -> Backend:
        """A backend holding `params` (the spec's params dict) for `config`."""


class BackendProtocolError(Exception):
    """The backend answered outside the protocol: a wrong type, shape, dtype or structure, a
    trace with unknown or missing names.  Neither bad input nor a failed bound: the command
    reports it as the backend's fault (exit status 3) in one line naming the problem."""


# -- loading a factory --------------------------------------------------------------------------

def parse_options(pairs) -> dict:
    """["dtype=float16", "threads=1", "debug=True"] -> {"dtype": "float16", "threads": 1, "debug": True}.
    Values are Python literals where they parse as one (numbers, True/False/None, quoted
    strings), else the text itself."""
    options = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--option takes KEY=VALUE with KEY a Python identifier, got {pair!r}")
        if key in options:
            raise ValueError(f"--option {key} is given twice")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def load_factory(spec: str):
    """The factory named by `spec`: a built-in name (BUILTIN_BACKENDS) or "MODULE:FACTORY",
    MODULE importable from the current directory or PYTHONPATH.  ValueError names what failed."""
    path = BUILTIN_BACKENDS.get(spec, spec)
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--backend {spec!r}: expected one of {', '.join(BUILTIN_BACKENDS)} or MODULE:FACTORY "
                         f"(a module importable from the current directory, and the name of its factory)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `gptspec` as a console script does not put it there
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = (f"; the built-in backend {spec!r} needs its extra (pip install -e '.[{EXTRAS.get(spec, 'all')}]')"
                if spec in BUILTIN_BACKENDS else "")
        raise ValueError(f"--backend {spec}: cannot import module {module_name!r} ({error}){hint}") from None
    except Exception as error:  # a module that raises while it is imported
        raise ValueError(f"--backend {spec}: importing module {module_name!r} raised "
                         f"{type(error).__name__}: {error}") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--backend {spec}: module {module_name!r} has no {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"--backend {spec}: {path} is a {type(factory).__name__}, not a callable factory")
    return factory


def check_options(factory, options: dict, spec: str) -> None:
    """Every option must be a keyword the factory takes (unless it takes **options)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin or C callable: let it refuse by itself
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    known = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)][2:]
    unknown = [key for key in options if key not in known]
    if unknown:
        raise ValueError(f"the {spec} backend takes no option {unknown[0]!r} (its options: "
                         f"{', '.join(known) or 'none'})")


def make_backend(spec: str, config, params, options: dict | None = None) -> "BackendUnderTest":
    """Load the factory, build the backend from `params` and wrap it for checking.  A factory
    that refuses its options raises ValueError (bad input); anything else it raises propagates."""
    options = dict(options or {})
    factory = load_factory(spec)
    check_options(factory, options, spec)
    backend = factory(config, params, **options)
    return BackendUnderTest(backend, config, spec)


# -- what the spec traces ---------------------------------------------------------------------

def trace_shapes(config, batch: int, n_new: int, n_keys: int) -> dict[str, tuple]:
    """The spec's trace names for one forward of [batch, n_new] new tokens attending n_keys keys,
    in the order the model computes them, with their shapes."""
    C, H = config.n_embd, config.n_head
    shapes = {"embed": (batch, n_new, C)}
    for i in range(config.n_layer):
        shapes.update({f"blocks.{i}.attn_weights": (batch, H, n_new, n_keys), f"blocks.{i}.attn": (batch, n_new, C),
                       f"blocks.{i}.mlp": (batch, n_new, C), f"blocks.{i}.out": (batch, n_new, C)})
    if config.arch == "gpt2":
        shapes["ln_f"] = (batch, n_new, C)
    shapes["logits"] = (batch, n_new, config.n_vocab)
    return shapes


def _accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


class BackendUnderTest:
    """A backend wrapped for checking: which optional parts it provides, and every answer
    validated against the protocol (BackendProtocolError otherwise) and returned as NumPy."""

    def __init__(self, backend, config, spec: str = "backend"):
        forward = getattr(backend, "forward", None)
        if not callable(forward):
            raise BackendProtocolError(f"the {spec} factory returned a {type(backend).__name__} without a "
                                       f"callable forward(ids, attention_mask=None)")
        self.backend, self.config, self.spec = backend, config, spec
        train_step = getattr(backend, "train_step", None)
        self.provides = {
            "trace": _accepts(forward, "trace"),
            "cache": _accepts(forward, "past"),
            "dtype_log": callable(getattr(backend, "dtype_log", None)),
            "gradients": callable(getattr(backend, "loss_and_grads", None)),
            "optimizer": callable(train_step),
            "overflow": callable(train_step) and _accepts(train_step, "overflow"),
            "classifier": callable(getattr(backend, "classifier_loss_and_grads", None)),
        }
        self.amp_level = str(getattr(backend, "amp_level", "O0") or "O0")
        if self.amp_level not in AMP_LEVELS:
            raise BackendProtocolError(f"{spec}: amp_level must be one of {AMP_LEVELS}, got {self.amp_level!r}")
        default_dtype = "float32" if self.amp_level == "O0" else "float16"
        self.dtype = str(getattr(backend, "dtype", None) or default_dtype)
        allowed = ("float32", "float64") if self.amp_level == "O0" else ("float16", "bfloat16")
        if self.dtype not in allowed:
            raise BackendProtocolError(f"{spec}: dtype {self.dtype!r} does not fit amp_level {self.amp_level} "
                                       f"(expected one of {allowed})")

    # -- the report's header --------------------------------------------------------------------

    def describe(self) -> dict:
        """name, version, device, precision and the optional parts provided."""
        info = {key: str(getattr(self.backend, key, None) or "unknown") for key in ("name", "version", "device")}
        if info["name"] == "unknown":
            info["name"] = self.spec
        return {**info, "amp_level": self.amp_level, "dtype": self.dtype,
                "provides": [part for part, has in self.provides.items() if has],
                "not_provided": [part for part, has in self.provides.items() if not has]}

    def require(self, part: str, for_what: str) -> None:
        if not self.provides[part]:
            raise ValueError(f"{for_what} needs the backend's {OPTIONAL_PARTS[part]}, which the {self.spec} backend "
                             f"does not provide")

    # -- forward --------------------------------------------------------------------------------

    def forward(self, ids, attention_mask=None, *, trace: dict | None = None) -> np.ndarray:
        """Logits [B, T, V] of ids [B, T]; `trace` (needs the trace part) receives the spec's names."""
        ids = as_token_ids(ids, self.config)
        kwargs = {}
        if trace is not None:
            self.require("trace", "a layer-by-layer trace")
            kwargs["trace"] = backend_trace = {}
        out = self.backend.forward(ids, attention_mask, **kwargs)
        logits = self._logits(out, ids.shape, "forward")
        if trace is not None:
            n_keys = ids.shape[1]
            trace.update(self.check_trace(backend_trace, ids.shape[0], ids.shape[1], n_keys))
        return logits

    def forward_cached(self, ids, attention_mask=None, past=None):
        """(logits [B, T, V], present): continue from `past` (None: a new cache)."""
        self.require("cache", "a KV-cache check")
        ids = as_token_ids(ids, self.config)
        out = self.backend.forward(ids, attention_mask, past=past)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise BackendProtocolError(f"forward(..., past=...) must return (logits, present), got "
                                       f"{_kind(out)}")
        return self._logits(out[0], ids.shape, "forward(..., past=...)"), out[1]

    def _logits(self, out, ids_shape, call: str) -> np.ndarray:
        if isinstance(out, tuple) and len(out) == 2 and self.provides["cache"]:
            out = out[0]  # a cache-providing backend may always return (logits, present)
        expected = (*ids_shape, self.config.n_vocab)
        return check_array(out, expected, f"{call} returned logits")

    def check_trace(self, trace, batch: int, n_new: int, n_keys: int) -> dict:
        expected = trace_shapes(self.config, batch, n_new, n_keys)
        if not isinstance(trace, dict):
            raise BackendProtocolError(f"the trace must be a dict, got {_kind(trace)}")
        unknown = [name for name in trace if name not in expected]
        if unknown:
            raise BackendProtocolError(f"the backend's trace has unknown names {', '.join(map(repr, unknown[:5]))} "
                                       f"(the spec traces {', '.join(list(expected)[:5])}, ...: see gptspec.backend."
                                       f"trace_shapes)")
        missing = [name for name in expected if name not in trace]
        if missing:
            raise BackendProtocolError(f"the backend's trace lacks {', '.join(missing[:5])}"
                                       f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(expected)} names)")
        return {name: check_array(trace[name], shape, f"trace[{name!r}]") for name, shape in expected.items()}

    def dtype_log(self) -> list:
        self.require("dtype_log", "the AMP dtype-policy check")
        log = self.backend.dtype_log()
        try:
            return [(str(operation), [str(d).lower() for d in dtypes]) for operation, dtypes in log]
        except (TypeError, ValueError):
            raise BackendProtocolError(f"dtype_log() must return [(operation, [dtype names])], got {_kind(log)}") \
                from None

    # -- generation through forward ---------------------------------------------------------------

    def step(self):
        """A ref_numpy.generate Step on this backend: its KV cache where it has one, else the
        whole sequence recomputed at every token (slower, the same logits)."""
        if self.provides["cache"]:
            past = None

            def cached_step(new_ids, attention_mask):
                nonlocal past
                logits, past = self.forward_cached(new_ids, attention_mask, past)
                return logits[:, -1]

            return cached_step
        seen = None

        def recompute_step(new_ids, attention_mask):
            nonlocal seen
            seen = new_ids if seen is None else np.concatenate([seen, new_ids], axis=1)
            return self.forward(seen, attention_mask)[:, -1]

        return recompute_step

    def generate(self, ids, max_new_tokens, **sampling) -> np.ndarray:
        """ref_numpy.generate's loop, checks and sampling over this backend's forward."""
        stream = ref_numpy.decode_stream(self.step(), self.config, ids, max_new_tokens, **sampling)
        return ref_numpy.collect(ids, stream)

    # -- training ----------------------------------------------------------------------------------

    def loss_and_grads(self, inputs, targets, attention_mask=None, *, params_like: dict):
        self.require("gradients", "a gradient check")
        out = self.backend.loss_and_grads(inputs, targets, attention_mask)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise BackendProtocolError(f"loss_and_grads must return (loss, grads), got {_kind(out)}")
        return check_scalar(out[0], "loss_and_grads's loss"), check_structure(out[1], params_like, "grads")

    def classifier_loss_and_grads(self, head, ids, labels, clf_positions, attention_mask=None, *, lm_coef,
                                  params_like: dict):
        self.require("classifier", "the classifier-head check (--head)")
        out = self.backend.classifier_loss_and_grads(head, ids, labels, clf_positions, attention_mask,
                                                     lm_coef=lm_coef)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise BackendProtocolError(f"classifier_loss_and_grads must return (loss, grads, head_grads), got "
                                       f"{_kind(out)}")
        return (check_scalar(out[0], "classifier_loss_and_grads's loss"), check_structure(out[1], params_like, "grads"),
                check_structure(out[2], head, "head_grads"))

    def train_step(self, inputs, targets, attention_mask=None, *, params_like: dict, overflow=False, **hyper) -> dict:
        self.require("overflow" if overflow else "optimizer", "an injected overflow" if overflow else "an update check")
        extra = {"overflow": True} if overflow else {}
        out = self.backend.train_step(inputs, targets, attention_mask, **hyper, **extra)
        if not isinstance(out, dict) or not {"loss", "grad_norm", "params"} <= set(out):
            raise BackendProtocolError(f"train_step must return a dict with loss, grad_norm and params, got "
                                       f"{_kind(out) if not isinstance(out, dict) else sorted(out)}")
        result = {"loss": check_scalar(out["loss"], "train_step's loss"),
                  "grad_norm": check_scalar(out["grad_norm"], "train_step's grad_norm"),
                  "params": check_structure(out["params"], params_like, "train_step's params"),
                  "skipped": bool(out.get("skipped", False))}
        for key in ("loss_scale", "next_loss_scale"):
            result[key] = None if out.get(key) is None else check_scalar(out[key], f"train_step's {key}")
        return result


# -- validation of answers ----------------------------------------------------------------------

def _kind(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__module__}.{type(value).__name__}".replace("builtins.", "")


def check_array(value, shape: tuple, what: str) -> np.ndarray:
    """A NumPy float array of exactly `shape` (its values are the comparison's business)."""
    if not isinstance(value, np.ndarray):
        raise BackendProtocolError(f"{what} as {_kind(value)}: the protocol returns numpy.ndarray "
                                   f"(convert with .numpy() / .asnumpy())")
    if not np.issubdtype(value.dtype, np.floating):
        raise BackendProtocolError(f"{what} of dtype {value.dtype}: expected a float dtype")
    if value.shape != tuple(shape):
        raise BackendProtocolError(f"{what} of shape {list(value.shape)}, expected {list(shape)}")
    return value


def check_scalar(value, what: str) -> float:
    """A number (a non-finite one is the comparison's failure, not a protocol error)."""
    try:
        return float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        raise BackendProtocolError(f"{what} must be a number, got {_kind(value)}") from None


def check_structure(tree, like: dict, what: str) -> dict:
    """`tree` must have exactly the structure and shapes of `like` (a params dict or a head)."""
    if not isinstance(tree, dict):
        raise BackendProtocolError(f"{what} must be a dict in the params dict's structure, got {_kind(tree)}")
    try:
        flat = ref_numpy.flatten_params(tree)
    except (TypeError, ValueError, AttributeError) as error:
        raise BackendProtocolError(f"{what} is not in the params dict's structure ({error})") from None
    expected = ref_numpy.flatten_params(like)
    unknown = [name for name in flat if name not in expected]
    missing = [name for name in expected if name not in flat]
    if unknown or missing:
        detail = "; ".join(part for part in (f"unknown {', '.join(unknown[:4])}" if unknown else "",
                                             f"missing {', '.join(missing[:4])}" if missing else "") if part)
        raise BackendProtocolError(f"{what} does not have the params dict's structure: {detail}")
    for name, reference in expected.items():
        check_array(flat[name], np.shape(reference), f"{what}[{name!r}]")
    return ref_numpy.unflatten_params({name: flat[name] for name in expected})
