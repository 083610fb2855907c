"""Params that do not fit the config are refused at every entry point (issue 14, item 2).

Four mismatches, each at forward, generate, numpy_step, weights.load, ms_backend.GPTModel /
ms_backend.generate and the CLI: a config with more layers than the params, a wider config than
the params, a GPT-1 config over GPT-2 params (ln_f left over) and the reverse (ln_f missing).
The error names the first array that does not fit, its shape and the expected one.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

import ref_numpy as R
import weights

SMALL = R.GPTConfig(arch="gpt2", n_vocab=23, n_ctx=8, n_embd=32, n_head=2, n_layer=1)

# (config the caller passes, config the params were made for, pattern the message must match)
MISMATCHES = {
    "n_layer=3 over 1-layer params": (SMALL.replace(n_layer=3), SMALL,
                                      r"missing 'blocks\.1\.ln_1\.g'.*1 block\(s\), the config n_layer=3"),
    "n_embd=64 over 32-wide params": (SMALL.replace(n_embd=64), SMALL,
                                      r"params\['wte'\] has shape \(23, 32\), expected \(23, 64\)"),
    "GPT-1 config over GPT-2 params": (SMALL.replace(arch="gpt1"), SMALL,
                                       r"unexpected array 'ln_f\.g' \(shape \(32,\)\) and 1 more.*no final LayerNorm"),
    "GPT-2 config over GPT-1 params": (SMALL, SMALL.replace(arch="gpt1"),
                                       r"missing 'ln_f\.g' \(expected shape \(32,\)\).*GPT-1 has none"),
}
CASES = pytest.mark.parametrize("claimed, actual, message", list(MISMATCHES.values()), ids=list(MISMATCHES))
IDS = np.array([[1, 2, 3]])


def params_for(config):
    return R.init_params(config, 0, dtype=np.float64)


@CASES
def test_check_params_names_the_first_array_that_does_not_fit(claimed, actual, message):
    with pytest.raises(ValueError, match=message):
        R.check_params(claimed, params_for(actual))


@CASES
def test_forward_refuses_params_of_another_config(claimed, actual, message):
    with pytest.raises(ValueError, match=message):
        R.forward(claimed, params_for(actual), IDS)


@CASES
def test_generate_and_numpy_step_refuse_params_of_another_config(claimed, actual, message):
    with pytest.raises(ValueError, match=message):
        R.generate(claimed, params_for(actual), IDS, 2, greedy=True)
    with pytest.raises(ValueError, match=message):  # at construction, before any token
        R.numpy_step(claimed, params_for(actual))


def test_generate_checks_once_per_call_not_per_token(monkeypatch):
    """The per-token step skips the check: check_params runs once however many tokens come."""
    generate_module = sys.modules["ref_numpy.generate"]  # (ref_numpy.generate is the function)
    calls = []
    real = generate_module.check_params
    monkeypatch.setattr(generate_module, "check_params", lambda *a: calls.append(1) or real(*a))
    out = R.generate(SMALL, params_for(SMALL), IDS, 4, greedy=True)
    assert out.shape == (1, 7) and len(calls) == 1


def test_n_head_is_not_visible_in_the_shapes():
    """Documented limit: the same arrays fit n_head=2 and n_head=4 (C=32 splits either way), and
    give different logits -- which is why loaders read n_head from the checkpoint's own config."""
    params = params_for(SMALL)
    R.check_params(SMALL.replace(n_head=4), params)
    two, _ = R.forward(SMALL, params, IDS)
    four, _ = R.forward(SMALL.replace(n_head=4), params, IDS)
    assert not np.allclose(two, four)
    assert "n_head" in R.check_params.__doc__ and "cannot check" in R.check_params.__doc__


def edit_json(path, **changes):
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


@pytest.mark.parametrize("change, message", [
    (dict(n_layer=3), r"missing tensor\(s\) 'blocks\.1\.ln_1\.g'"),
    (dict(n_embd=64), r"'(transformer\.)?wte\.weight' \(our 'wte'\) has shape \(23, 32\), but the config .* needs \(23, 64\)"),
    (dict(model_type="openai-gpt"), r"unknown tensor '(transformer\.)?ln_f\.\w+' for a gpt1 checkpoint"),
], ids=["n_layer=3", "n_embd=64", "gpt1 config over gpt2 tensors"])
def test_weights_load_checks_the_tensors_against_the_checkpoints_own_config(tmp_path, change, message):
    weights.save(params_for(SMALL), SMALL, tmp_path, format="safetensors")
    edit_json(tmp_path / "config.json", **change)
    with pytest.raises(weights.CheckpointError, match=message):
        weights.load(tmp_path)


def test_weights_load_refuses_gpt1_tensors_under_a_gpt2_config(tmp_path):
    gpt1 = SMALL.replace(arch="gpt1")
    weights.save(params_for(gpt1), gpt1, tmp_path, format="safetensors")
    edit_json(tmp_path / "config.json", model_type="gpt2")
    with pytest.raises(weights.CheckpointError, match=r"unknown tensor '(transformer\.)?positions_embed\.weight' for a gpt2"):
        weights.load(tmp_path)


def test_the_cli_refuses_a_checkpoint_whose_config_does_not_fit_in_one_line(tmp_path, capsys):
    from gptspec.cli import main

    weights.save(params_for(SMALL), SMALL, tmp_path, format="safetensors")
    edit_json(tmp_path / "config.json", n_layer=2)
    assert main(["generate", "--weights", str(tmp_path), "--prompt-ids", "1,2", "--max-new-tokens", "2",
                 "--greedy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing tensor(s) 'blocks.1.ln_1.g'" in err, err


@pytest.mark.mindspore
@CASES
def test_mindspore_model_and_generate_refuse_params_of_another_config(claimed, actual, message):
    pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")
    import ms_backend

    with pytest.raises(ValueError, match=message):
        ms_backend.GPTModel(claimed, params_for(actual))
    with pytest.raises(ValueError, match=message):
        ms_backend.generate(claimed, params_for(actual), IDS, 2, greedy=True)


def per_token_seconds(step_factory, config, params, n_tokens=32, repeats=5):
    """Best-of-`repeats` seconds per decoded token of `step_factory(config, params)`."""
    best = float("inf")
    for _ in range(repeats):
        step = step_factory(config, params)
        mask = np.ones((1, 1), np.int64)
        step(np.array([[1]]), mask)
        start = time.perf_counter()
        for t in range(n_tokens):
            mask = np.ones((1, t + 2), np.int64)
            step(np.array([[1]]), mask)
        best = min(best, (time.perf_counter() - start) / n_tokens)
    return best


if __name__ == "__main__":  # python -m parity_tests.test_params_fit_config: the per-token cost of the check
    config = R.GPTConfig(n_vocab=50257, n_ctx=64, n_embd=768, n_head=12, n_layer=12)
    params = R.init_params(config, 0)

    def checking_every_token(config, params):
        step = R.numpy_step(config, params)
        return lambda ids, mask: (R.check_params(config, params), step(ids, mask))[1]

    checks = []
    for _ in range(50):
        start = time.perf_counter()
        R.check_params(config, params)
        checks.append(time.perf_counter() - start)
    print(f"check_params on 124M: {min(checks) * 1e6:.0f} us")
    for name, factory in (("numpy_step (checks once)", R.numpy_step), ("checking every token", checking_every_token)):
        print(f"{name:28s} {per_token_seconds(factory, config, params) * 1e3:.2f} ms/token (124M, fp32)")
