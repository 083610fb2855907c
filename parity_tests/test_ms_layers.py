"""ms_backend's layers and model against the float64 spec: function by function, then the
whole fp32 model on random small configs of both architectures, names, epsilon, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="the MindSpore backend needs the `mindspore` extra")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mindspore import Tensor  # noqa: E402

import ms_backend as M  # noqa: E402
import ref_numpy as R  # noqa: E402
from gptspec.compare import assert_close  # noqa: E402
from gptspec.parity import reference_layer_norm_condition  # noqa: E402
from gptspec.tolerances import conditioned, forward_bound, reorder_bound  # noqa: E402

from .strategies import configs, left_padding_mask, model_for, token_batches  # noqa: E402

pytestmark = pytest.mark.mindspore

ONE_LAYER = R.GPTConfig(n_vocab=32, n_ctx=8, n_embd=16, n_head=4, n_layer=1)
FP32 = forward_bound(ONE_LAYER, "float32")


def tensors(*arrays):
    return [Tensor(np.asarray(a, np.float32)) for a in arrays]


def test_fp16_matmul_accumulates_in_float32():
    """gptspec.tolerances.amp_bound assumes it: summed in float16, 4096 ones would stall at 2048."""
    ones = np.ones((1, 4096), np.float16)
    out = M.linear(Tensor(ones), Tensor(ones.T), Tensor(np.zeros(1, np.float16)))
    assert out.dtype == ms.float16 and float(out.asnumpy()[0, 0]) == 4096.0


def test_elementwise_layers_match_the_spec():
    rng = np.random.default_rng(0)
    x, g, b = rng.standard_normal((2, 3, 16)), 1 + 0.1 * rng.standard_normal(16), rng.standard_normal(16)
    xt, gt, bt = tensors(x, g, b)
    assert_close("gelu", M.gelu(xt).asnumpy(), R.gelu(x), FP32)
    assert_close("softmax", M.softmax(xt * 50).asnumpy(), R.softmax(x * 50), FP32)
    assert_close("layer_norm", M.layer_norm(xt, gt, bt).asnumpy(), R.layer_norm(x, g, b), FP32)
    w = rng.standard_normal((16, 5))
    assert_close("linear", M.linear(xt, *tensors(w, b[:5])).asnumpy(), R.linear(x, w, b[:5]), FP32)
    heads = M.split_heads(xt, 4)
    np.testing.assert_array_equal(heads.asnumpy(), R.split_heads(x.astype(np.float32), 4))
    np.testing.assert_array_equal(M.merge_heads(heads).asnumpy(), x.astype(np.float32))


def test_gelu_is_the_tanh_form_and_layer_norm_uses_its_eps():
    x = np.linspace(-5, 5, 101)
    erf_form = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    tanh_gelu = M.gelu(Tensor(x.astype(np.float32))).asnumpy()
    assert_close("gelu tanh form", tanh_gelu, R.gelu(x), FP32)
    assert np.abs(tanh_gelu - erf_form).max() > 1e-4  # the two forms really differ
    flat, one = np.array([[0.0, 0.0, 0.0, 1e-3]]), np.ones(4)
    for eps in (1e-5, 1e-7):
        out = M.layer_norm(*tensors(flat, one, 0 * one), eps).asnumpy()
        assert_close(f"layer_norm eps={eps}", out, R.layer_norm(flat, one, 0 * one, eps), FP32)


@pytest.mark.parametrize("n_query, n_key", [(3, 3), (2, 4), (1, 5)])
def test_causal_mask_matches_the_spec(n_query, n_key):
    np.testing.assert_array_equal(M.causal_mask(n_query, n_key).asnumpy(), R.causal_mask(n_query, n_key))
    # In a static cache of 8 slots the same mask, with the empty slots never attended.
    wide = M.causal_mask(n_query, Tensor(n_key, ms.int64), 8).asnumpy()
    np.testing.assert_array_equal(wide[:, :n_key], R.causal_mask(n_query, n_key))
    assert not wide[:, n_key:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_attention_and_mha_match_the_spec_with_fully_masked_rows(dtype):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 4, 3, 4)) for _ in range(3))
    mask = R.attention_mask_4d(3, 3, [[0, 0, 1], [1, 1, 1]])  # row 0: two fully masked queries
    out, weights = M.attention(*[Tensor(a.astype(dtype)) for a in (q, k, v)], Tensor(mask))
    ref_out, ref_weights = R.attention(q, k, v, mask)
    assert np.isfinite(out.asnumpy()).all() and np.isfinite(weights.asnumpy()).all()
    bound = forward_bound(ONE_LAYER, np.dtype(dtype).name)
    assert_close("attention out", out.asnumpy(), ref_out, bound)
    assert_close("attention weights", weights.asnumpy(), ref_weights, bound)

    params = model_for(ONE_LAYER, 0)["blocks"][0]
    to_tensors = lambda d: {n: (to_tensors(c) if isinstance(c, dict) else Tensor(c.astype(np.float32)))  # noqa: E731
                            for n, c in d.items()}
    x = rng.standard_normal((2, 3, 16))
    got, (k_got, _), _ = M.mha(Tensor(x.astype(np.float32)), to_tensors(params["attn"]), 4, Tensor(mask))
    want, (k_want, _), _ = R.mha(x, params["attn"], 4, mask)
    assert_close("mha", got.asnumpy(), want, FP32)
    assert_close("mha k", k_got.asnumpy(), k_want, FP32)
    assert_close("mlp", M.mlp(Tensor(x.astype(np.float32)), to_tensors(params["mlp"])).asnumpy(),
                 R.mlp(x, params["mlp"]), FP32)


@given(data=st.data(), config=configs(), seed=st.integers(0, 1000))
def test_fp32_model_matches_the_float64_spec(data, config, seed):
    params = model_for(config, seed)
    ids = data.draw(token_batches(config))
    lengths = data.draw(st.lists(st.integers(1, ids.shape[1]), min_size=ids.shape[0], max_size=ids.shape[0]))
    mask = left_padding_mask(lengths, ids.shape[1])
    want_trace, got_trace = {}, {}
    want, want_present = R.forward(config, params, ids, attention_mask=mask, trace=want_trace)
    got, present = M.GPTModel(config, params).forward_numpy(ids, attention_mask=mask, trace=got_trace)
    bound = conditioned(forward_bound(config, "float32"), reference_layer_norm_condition(config, params, ids, mask))
    assert_close("logits", got, want, bound)
    assert sorted(got_trace) == sorted(want_trace)
    for name in want_trace:
        assert_close(name, got_trace[name], want_trace[name], bound)
    for i, ((k, v), (k_want, v_want)) in enumerate(zip(present, want_present)):
        assert_close(f"present[{i}] k", k, k_want, bound)
        assert_close(f"present[{i}] v", v, v_want, bound)


def test_an_ill_conditioned_layer_norm_widens_the_bound_by_its_condition():
    """The dev profile's falsifying example: a 2-wide model whose residual stream before ln_2 is
    [0.0747, 0.0689] -- LayerNorm cancels most of its digits (condition 16.8), and the float32
    MLP output landed 3.2x beyond forward_bound with nothing wrong (observed here; the size of
    the amplified rounding depends on the machine, so it is not asserted).  The conditioned bound admits
    it; a centred input (condition ~1) leaves the bound as it was."""
    config = R.GPTConfig(arch="gpt2", n_vocab=2, n_ctx=3, n_embd=2, n_head=1, n_layer=1)
    params, ids = model_for(config, 2), np.array([[1]])
    want_trace, got_trace = {}, {}
    R.forward(config, params, ids, trace=want_trace)
    M.GPTModel(config, params).forward_numpy(ids, trace=got_trace)
    condition = reference_layer_norm_condition(config, params, ids)
    assert 15 < condition < 20
    plain = forward_bound(config, "float32")
    for name in want_trace:
        assert_close(name, got_trace[name], want_trace[name], conditioned(plain, condition))
    assert conditioned(plain, 1.0) == plain


def test_kv_cache_of_the_spec_format_continues_a_forward():
    config = R.GPTConfig(arch="gpt1", n_vocab=40, n_ctx=12, n_embd=12, n_head=3, n_layer=2)
    params = model_for(config, 3)
    ids = np.random.default_rng(3).integers(0, 40, (2, 9))
    model = M.GPTModel(config, params)
    full, _ = model.forward_numpy(ids)
    _, spec_past = R.forward(config, params, ids[:, :5])  # float64 cache made by the spec
    rest, _ = model.forward_numpy(ids[:, 5:], past=spec_past)
    assert_close("logits after a spec cache", rest, full[:, 5:], reorder_bound(config, "float32"))


def test_epsilon_is_read_from_the_config():
    config = ONE_LAYER.replace(layer_norm_epsilon=0.5)  # large enough to change every output
    params = model_for(config, 2)
    ids = np.arange(6)[None]
    got, _ = M.GPTModel(config, params).forward_numpy(ids)
    assert_close("logits, eps=0.5", got, R.forward(config, params, ids)[0], FP32)
    other_eps, _ = R.forward(ONE_LAYER, params, ids)
    assert np.abs(got - other_eps).max() > 100 * FP32.allowed(other_eps)


def test_parameter_names_are_the_spec_names_and_weights_loads_the_checkpoint(tmp_path):
    """mindspore.save_checkpoint(model) is a checkpoint weights/ reads back into the same model."""
    from weights import load
    from weights.mindspore_ckpt import write_marker

    for arch in ("gpt1", "gpt2"):
        config = ONE_LAYER.replace(arch=arch)
        params = model_for(config, 4)
        model = M.GPTModel(config, params)
        assert sorted(p.name for p in model.get_parameters()) == sorted(R.expected_shapes(config))
        folder = tmp_path / arch
        folder.mkdir()
        ms.save_checkpoint(model, str(folder / "model.ckpt"))
        write_marker(config, folder)
        loaded_config, loaded = load(str(folder))
        assert loaded_config == config
        for name, array in R.flatten_params(loaded).items():
            np.testing.assert_array_equal(array, R.flatten_params(params)[name].astype(np.float32), err_msg=name)


BAD_FORWARD_INPUTS = [
    ([[1, 32]], {}), ([[1.0, 2.0]], {}), (np.zeros((1, 0), int), {}), (np.zeros((1, 9), int), {}),
    ([[1, 2]], {"attention_mask": [[1, 2]]}), ([[1, 2]], {"attention_mask": [[1, 1, 1]]}),
    ([[1, 2]], {"position_ids": [[0, 8]]}), ([[1, 2]], {"past": [(np.zeros((1, 4, 3, 5)),) * 2]}),
]


def error_of(fn, *args, **kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("ids, kwargs", BAD_FORWARD_INPUTS)
def test_bad_forward_input_gives_the_spec_error(ids, kwargs):
    params = R.init_params(ONE_LAYER, 0)
    spec_error = error_of(R.forward, ONE_LAYER, params, ids, **kwargs)
    assert error_of(M.GPTModel(ONE_LAYER, params).forward_numpy, ids, **kwargs) == spec_error


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=1.5), dict(eos_id=32),
                                    dict(attention_mask=[[0, 0]]), dict(max_new_tokens=7)])
def test_bad_generate_input_gives_the_spec_error(kwargs):
    params = R.init_params(ONE_LAYER, 0)
    kwargs = {"max_new_tokens": 2, **kwargs}
    spec_error = error_of(R.generate, ONE_LAYER, params, [[1, 2]], **kwargs)
    assert error_of(M.generate, ONE_LAYER, params, [[1, 2]], **kwargs) == spec_error


@pytest.mark.parametrize("kwargs, match", [
    (dict(amp_level="O4"), "amp_level must be one of"),
    (dict(dtype="float16"), "needs an amp_level of O1, O2 or O3"),
    (dict(amp_level="O2", dtype="int8"), "'float16' or 'bfloat16'"),
    (dict(mode="eager"), "mode must be one of"),
])
def test_bad_model_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.GPTModel(ONE_LAYER, R.init_params(ONE_LAYER, 0), **kwargs)


def test_a_model_for_another_config_is_refused_by_generate():
    model = M.GPTModel(ONE_LAYER, R.init_params(ONE_LAYER, 0))
    with pytest.raises(ValueError, match="the model was built for"):
        M.generate(ONE_LAYER.replace(n_layer=2), model, [[1, 2]], 1)


def test_bfloat16_gives_a_clear_error_where_the_device_has_no_kernel():
    device = M.device_target()
    if M.device._matmul_error(device, "bfloat16") is None:
        pytest.skip(f"{device} runs bfloat16 matmuls: nothing to refuse here")
    with pytest.raises(ValueError, match=f"cannot compute matmuls in bfloat16 on device {device}"):
        M.GPTModel(ONE_LAYER, R.init_params(ONE_LAYER, 0), amp_level="O2", dtype="bfloat16")
