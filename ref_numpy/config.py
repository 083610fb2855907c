"""Model hyper-parameters: one frozen dataclass for GPT-1 and GPT-2.

The two architectures share every size; they differ only in where LayerNorm sits
(`arch="gpt1"`: after each residual add, no final norm; `arch="gpt2"`: before each
sub-layer, plus a final `ln_f`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ARCHITECTURES = ("gpt1", "gpt2")


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT model.  C = n_embd, H = n_head, D = C // H (head_dim)."""

    arch: str = "gpt2"
    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        for field in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, field)
            # bool is an int subclass; True as a size is always a mistake.
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"layer_norm_epsilon must be a positive number, got {eps!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str) -> "GPTConfig":
        """The published sizes: `openai-gpt`, `gpt2`, `gpt2-medium`, `gpt2-large`,
        `gpt2-xl`, `distilgpt2`."""
        if name not in PRESETS:
            raise ValueError(f"unknown model name {name!r}; known: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)


def _gpt2(n_embd, n_head, n_layer):
    return dict(arch="gpt2", n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=n_head, n_layer=n_layer)


PRESETS = {
    # GPT-1 (Radford et al. 2018): 40478 = 40000 merges + 478 base symbols; 512 positions.
    "openai-gpt": dict(arch="gpt1", n_vocab=40478, n_ctx=512, n_embd=768, n_head=12, n_layer=12),
    "gpt2": _gpt2(768, 12, 12),  # 124M
    "gpt2-medium": _gpt2(1024, 16, 24),  # 355M
    "gpt2-large": _gpt2(1280, 20, 36),  # 774M
    "gpt2-xl": _gpt2(1600, 25, 48),  # 1558M
    "distilgpt2": _gpt2(768, 12, 6),  # 82M, GPT-2 tokenizer and sizes, half the depth
}
