"""Names of our parameters in Hugging Face `transformers` state dicts.

Both GPT2LMHeadModel and OpenAIGPTLMHeadModel use the same Conv1D layout as OpenAI's code:
weights are stored [in, out], exactly as ours, so *no transpose is needed* anywhere -- unlike
a torch.nn.Linear port, which stores [out, in].  LayerNorm's g/b are HF's weight/bias.
The output layer `lm_head.weight` is tied to the token embedding and is not a separate array.
"""
from __future__ import annotations

import re

# Top-level arrays: our name -> HF name (inside the `transformer.` module).
_TOP = {
    "gpt2": {"wte": "wte.weight", "wpe": "wpe.weight", "ln_f.g": "ln_f.weight", "ln_f.b": "ln_f.bias"},
    "gpt1": {"wte": "tokens_embed.weight", "wpe": "positions_embed.weight"},
}
_LEAF = {"w": "weight", "b": "bias", "g": "weight"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.([wbg])$")


def hf_name(name: str, arch: str, prefix: str = "transformer.") -> str:
    """Our flat name ("blocks.3.attn.c_attn.w") -> HF's ("transformer.h.3.attn.c_attn.weight")."""
    if name in _TOP[arch]:
        return prefix + _TOP[arch][name]
    match = _BLOCK.match(name)
    if not match:
        raise ValueError(f"no Hugging Face name for parameter {name!r} of arch {arch!r}")
    layer, module, leaf = match.groups()
    return f"{prefix}h.{layer}.{module}.{_LEAF[leaf]}"


def hf_names(names, arch: str, prefix: str = "transformer.") -> dict[str, str]:
    """{our name: HF name} for every name in `names`."""
    return {name: hf_name(name, arch, prefix) for name in names}
