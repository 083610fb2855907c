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


BACKENDS = {b.name: b for b in (NumpyBackend("float64"), NumpyBackend("float32"))}


def backend_names():
    return list(BACKENDS)
