"""The backends a property test can run on, behind one small interface.

A backend turns the spec's float64 params into its own model and answers `forward` and
`generate` with NumPy results, so one property test checks every backend the same way.
`BACKENDS` lists what is importable here; tests parametrize over `backend_names()`.
"""
from __future__ import annotations

import numpy as np

import ref_numpy


class NumpyBackend:
    """The spec itself, computing in `dtype` (float64 is the exact reference)."""

    def __init__(self, dtype="float64"):
        self.dtype = np.dtype(dtype)
        self.name = f"numpy-{self.dtype.name}"

    def prepare(self, config, params):
        """Backend-specific model from float64 spec params (here: a cast copy)."""
        return config, ref_numpy.cast_params(params, self.dtype)

    def forward(self, model, ids, **kwargs):
        config, params = model
        return ref_numpy.forward(config, params, ids, **kwargs)

    def generate(self, model, ids, max_new_tokens, **kwargs):
        config, params = model
        return ref_numpy.generate(config, params, ids, max_new_tokens, **kwargs)


class MindSporeBackend:
    """ms_backend.GPTModel in float32 (amp O0), run in `mode` ("pynative" or "graph").

    Only PyNative is registered: the six properties take ~2 min on it with the ci profile's 20
    examples, while graph mode compiles new graphs for every random config and shape (~1.5 s
    each).  Graph mode is checked against PyNative in test_ms_graph.py instead."""

    dtype = np.dtype("float32")

    def __init__(self, mode="pynative"):
        self.mode = mode
        self.name = f"mindspore-{mode}"

    def prepare(self, config, params):
        import ms_backend

        return ms_backend.GPTModel(config, params, mode=self.mode)

    def forward(self, model, ids, **kwargs):
        return model.forward_numpy(ids, **kwargs)

    def generate(self, model, ids, max_new_tokens, **kwargs):
        import ms_backend

        return ms_backend.generate(model.config, model, ids, max_new_tokens, **kwargs)


def _available_backends():
    backends = [NumpyBackend("float64"), NumpyBackend("float32")]
    try:
        import mindspore  # noqa: F401  (optional: the `mindspore` extra)
    except ImportError:
        return backends
    return backends + [MindSporeBackend("pynative")]


BACKENDS = {b.name: b for b in _available_backends()}


def backend_names():
    return list(BACKENDS)
