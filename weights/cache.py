"""Where fetched checkpoints live: $GPTSPEC_HOME/<format>/<name>/ (default ~/.cache/gptspec).

    ~/.cache/gptspec/openai/gpt2/       OpenAI's 124M release (TensorFlow checkpoint)
    ~/.cache/gptspec/openai/openai-gpt/ OpenAI's GPT-1 release (params_*.npy)
    ~/.cache/gptspec/hf/gpt2/           Hugging Face's files for "gpt2"
"""
from __future__ import annotations

import os
from pathlib import Path

FORMATS = ("openai", "hf")
# Which names each source publishes (distilgpt2 exists only on the Hugging Face hub).
NAMES = {"openai": ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt"),
         "hf": ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt", "distilgpt2")}


def home() -> Path:
    """The cache root: $GPTSPEC_HOME, else ~/.cache/gptspec."""
    return Path(os.environ.get("GPTSPEC_HOME") or Path.home() / ".cache" / "gptspec")


def model_dir(name: str, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if name not in NAMES[fmt]:
        other = [f for f in FORMATS if f != fmt and name in NAMES[f]]
        hint = f" (it is in the {other[0]!r} format: --format {other[0]})" if other else ""
        raise ValueError(f"{name!r} is not published in the {fmt!r} format{hint}; known: {', '.join(NAMES[fmt])}")
    return home() / fmt / name


def resolve(path_or_name) -> Path:
    """An existing path as is; a model name -> its cached folder (OpenAI's files first)."""
    path = Path(path_or_name)
    if path.exists():
        return path
    name = str(path_or_name)
    formats = [fmt for fmt in FORMATS if name in NAMES[fmt]]
    if not formats:
        known = sorted(set(NAMES["openai"]) | set(NAMES["hf"]))
        raise FileNotFoundError(f"{name!r} is neither an existing checkpoint folder nor a model name "
                                f"(known names: {', '.join(known)})")
    candidates = [model_dir(name, fmt) for fmt in formats]
    for folder in candidates:
        if folder.is_dir():
            return folder
    commands = " or ".join(f"`gptspec fetch {name}{'' if fmt == 'openai' else ' --format hf'}`" for fmt in formats)
    raise FileNotFoundError(f"model {name!r} has not been downloaded (looked in {', '.join(map(str, candidates))}): "
                            f"run {commands} (set GPTSPEC_HOME to use another cache folder)")
