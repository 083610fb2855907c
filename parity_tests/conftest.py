"""Shared test set-up: hypothesis profiles, reference data lookup, optional-dependency skips.

Hypothesis profiles (choose with `pytest --hypothesis-profile=NAME`, default `ci`):
  ci   bounded example counts, no deadline, derandomized: CI is reproducible run to run
  dev  many more examples, random seeds: for hunting bugs locally
  tokenizer-exhaustive  100k examples per property, for the tokenizer tests only:
       pytest parity_tests/test_tokenizer_*.py --hypothesis-profile=tokenizer-exhaustive
A failing example prints `@reproduce_failure(...)` and the seed (print_blob) to replay it.

Backends (parity_tests/backends.py): every test taking `gpt_backend` runs on the spec (float64,
float32) and MindSpore by default, or on one backend named on the command line:
  --gptspec-backend NAME|MODULE:FACTORY   mindspore, hf, numpy, or any gptspec/backend.py factory
  --gptspec-option K=V                    an option for its factory (repeatable)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("tokenizer-exhaustive", max_examples=100_000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("GPTSPEC_HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    group = parser.getgroup("gptspec", "gptspec backends")
    group.addoption("--gptspec-backend", metavar="NAME|MODULE:FACTORY", default=None,
                    help="run the backend-facing properties on this backend only: mindspore, hf, numpy, or "
                         "MODULE:FACTORY importable from the current directory (gptspec/backend.py's protocol)")
    group.addoption("--gptspec-option", metavar="K=V", action="append", default=[],
                    help="an option for --gptspec-backend's factory (repeatable), e.g. dtype=float16")


def pytest_configure(config):
    from .backends import selected_backends

    selected_backends(config)  # a --gptspec-backend that cannot be loaded stops here (pytest.UsageError)


def pytest_generate_tests(metafunc):
    if "gpt_backend" in metafunc.fixturenames:
        from .backends import selected_backends

        entries = selected_backends(metafunc.config)
        metafunc.parametrize("gpt_backend", entries, ids=[entry.name for entry in entries])


def reference_dir() -> Path:
    """OpenAI's tokenizer files: $GPTSPEC_REFERENCE_DIR, else ../shared/reference beside the repo."""
    return Path(os.environ.get("GPTSPEC_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def require_reference(*parts: str) -> Path:
    """Path to a reference file or folder, or skip the test saying where it was looked for."""
    path = reference_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} not found: set GPTSPEC_REFERENCE_DIR to the folder holding "
                    f"gpt2/ and openai-gpt/ (OpenAI's tokenizer files)")
    return path
