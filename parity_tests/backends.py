"""The backends the property tests run on, all through gptspec/backend.py's protocol.

By default: the spec in float64 (the exact reference: every property must hold there first), the
spec in float32, and MindSpore in PyNative where the extra is installed.  With

    python -m pytest parity_tests --gptspec-backend NAME|MODULE:FACTORY [--gptspec-option K=V ...]

only that backend (the conftest parametrizes every test that takes `gpt_backend`).  A property
that needs an optional part the backend lacks is skipped with the reason (`require`).

MindSpore runs in PyNative only: the properties take ~2 min on it with the ci profile's 20
examples, while graph mode compiles new graphs for every random config and shape (~1.5 s each);
graph mode is checked against PyNative in test_ms_graph.py instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gptspec.backend import OPTIONAL_PARTS, BackendUnderTest, check_options, load_factory, parse_options
from gptspec.parity import precision_bound
from gptspec.tolerances import Bound, reorder_bound


@dataclass(frozen=True)
class BackendEntry:
    """A backend factory with its options, as the tests build it."""
    name: str
    spec: str
    options: dict = field(default_factory=dict)

    def build(self, config, params) -> BackendUnderTest:
        return BackendUnderTest(load_factory(self.spec)(config, params, **self.options), config, self.spec)


def default_backends() -> list[BackendEntry]:
    entries = [BackendEntry("numpy-float64", "numpy", {"dtype": "float64"}),
               BackendEntry("numpy-float32", "numpy", {"dtype": "float32"})]
    try:
        import mindspore  # noqa: F401  (optional: the `mindspore` extra)
    except ImportError:
        return entries
    return entries + [BackendEntry("mindspore-pynative", "mindspore", {"mode": "pynative"})]


def selected_backends(config) -> list[BackendEntry]:
    """The --gptspec-backend one, or the defaults.  A backend that cannot be loaded stops the run
    with its reason (pytest.UsageError), never an empty parametrization that passes."""
    spec = config.getoption("gptspec_backend")
    options = config.getoption("gptspec_option")
    if spec is None:
        if options:
            raise pytest.UsageError("--gptspec-option needs --gptspec-backend")
        return default_backends()
    try:
        options = parse_options(options)
        check_options(load_factory(spec), options, spec)
    except ValueError as error:
        raise pytest.UsageError(f"--gptspec-backend: {error}") from None
    label = spec + "".join(f"-{k}={v}" for k, v in options.items())
    return [BackendEntry(label, spec, options)]


def require(backend: BackendUnderTest, part: str) -> None:
    """Skip, saying why, a property that needs an optional part this backend does not provide."""
    if not backend.provides[part]:
        pytest.skip(f"the {backend.spec} backend does not provide {OPTIONAL_PARTS[part]} (for {backend.config.arch})")


def same_computation_bound(config, backend: BackendUnderTest) -> Bound:
    """Two orders of the same computation on one backend (cache vs recompute, padded vs alone):
    twice its precision's bound (reorder_bound in float32/64, the AMP bound under AMP)."""
    if backend.amp_level == "O0":
        return reorder_bound(config, backend.dtype)
    one_side = precision_bound(config, backend.amp_level, backend.dtype)
    return Bound(2 * one_side.value, f"2 x ({one_side.reason})")
