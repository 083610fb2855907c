"""`gptspec parity`: the per-layer report, its JSON, its exit status, and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

import ref_numpy as R
from gptspec.cli import main
from gptspec.parity import probe_params

from .conftest import require_reference
from .test_parity_mutations import tiny_checkpoint  # noqa: F401  (the fixture: the mutations' small checkpoint)

pytest.importorskip("mindspore", reason="mindspore extra not installed")
ms_backend = pytest.importorskip("ms_backend", reason="mindspore extra not installed")
weights = pytest.importorskip("weights")
pytestmark = pytest.mark.mindspore

TINY = R.GPTConfig(arch="gpt2", n_vocab=57, n_ctx=16, n_embd=16, n_head=2, n_layer=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    weights.save(probe_params(TINY, 4), TINY, folder, format="safetensors")
    return str(folder)


def test_json_report_covers_every_tensor_and_passes(capsys, checkpoint):
    assert main(["parity", "--weights", checkpoint, "--prompt-ids", "1 2 3 4 5", "--max-new-tokens", "3",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [row["tensor"] for row in report["tensors"]]
    expected = {}
    R.forward(TINY, probe_params(TINY, 4), np.array([1, 2, 3, 4, 5]), trace=expected)
    single = [*expected, "logits (model output)", "logits (KV cache)"]
    padded = [f"padded: {name}" for name in single]  # the prompt with its first position left padded
    assert names == [*expected, *padded[:len(expected)], single[-2], padded[-2], single[-1], padded[-1]]
    assert report["settings"]["padded_row_padding"] == 1
    assert report["passed"] and all(row["passed"] for row in report["tensors"])
    assert report["settings"]["amp_level"] == "O0" and report["settings"]["dtype"] == "float32"
    assert report["top1_agreement"] == 1.0 and report["generation"]["first_divergence"] is None
    assert all(0 <= row["max_abs_err"] <= row["allowed_abs_err"] for row in report["tensors"])


def test_table_at_an_amp_level(capsys, checkpoint):
    assert main(["parity", "--weights", checkpoint, "--amp", "O2", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "amp_level=O2" in out and "dtype=float16" in out and "mode=pynative" in out
    assert "| blocks.1.mlp " in out and "| padded: blocks.1.mlp " in out and "err/noise" in out
    assert "dtype policy" in out and "top-1 agreement" in out and out.rstrip().endswith("PASS")


@pytest.mark.parametrize("mode", ("pynative", "graph"))
@pytest.mark.parametrize("amp", ("O0", "O1", "O2", "O3"))
def test_every_mode_and_amp_level_the_cli_offers_passes(capsys, tiny_checkpoint, mode, amp):
    """Each --mode x --amp through the CLI, on the small checkpoint the mutation tests break (these
    are the unbroken runs they are measured against): every traced tensor of the prompt and of its
    left-padded copy, the model's own output (graph mode: the compiled static step), the second
    half of the prompt through a KV cache handed over as NumPy arrays, the dtype policy, and a
    greedy continuation (PyNative: the dynamic cache; graph: the static one)."""
    assert main(["parity", "--weights", tiny_checkpoint, "--amp", amp, "--mode", mode, "--max-new-tokens", "3",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    settings = report["settings"]
    assert (settings["amp_level"], settings["mode"]) == (amp, mode)
    assert settings["dtype"] == ("float32" if amp == "O0" else "float16")
    rows = {row["tensor"]: row for row in report["tensors"]}
    for name in ("logits (model output)", "logits (KV cache)", "padded: logits (KV cache)", "blocks.1.attn_weights"):
        assert rows[name]["passed"] and rows[name]["finite"], rows[name]
    assert report["dtype_policy"] and all(check["passed"] for check in report["dtype_policy"])
    generation = report["generation"]
    assert generation["passed"] and len(generation["backend"]) == len(generation["reference"]) == 3


def test_a_broken_backend_exits_1_and_names_the_tensor(capsys, checkpoint, monkeypatch):
    from mindspore import ops

    monkeypatch.setattr(ms_backend.layers, "gelu", lambda x: ops.gelu(x, approximate="none"))
    assert main(["parity", "--weights", checkpoint, "--max-new-tokens", "0"]) == 1
    out = capsys.readouterr().out
    assert "| blocks.0.mlp " in out and "FAIL: FAIL blocks.0.mlp" in out


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["parity", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 every bound held" in out
    assert "1 a bound failed" in out and "2 bad input" in out and "3 the backend raised" in out


def exploding_gelu(x):
    raise RuntimeError("kernel exploded\n(a second line that must not be printed)")


def test_a_crash_inside_the_backend_exits_3_with_one_line_naming_it(capsys, checkpoint, monkeypatch):
    monkeypatch.setattr(ms_backend.layers, "gelu", exploding_gelu)
    assert main(["parity", "--weights", checkpoint, "--max-new-tokens", "0"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("gptspec parity: error: the backend raised RuntimeError: kernel exploded at "
                                   "parity_tests/test_cli_parity.py:")
    assert "(exploding_gelu)" in captured.err and "exit status 3" in captured.err


def test_a_value_error_raised_inside_the_backend_is_a_crash_not_bad_input(capsys, checkpoint, monkeypatch):
    """MindSpore reports a wrong reshape as a ValueError: still exit 3, since every input was
    checked before the backend ran."""
    monkeypatch.setattr(ms_backend.layers, "split_heads", lambda x, n_head: x.reshape(x.shape[0], n_head, -1, 5))
    assert main(["parity", "--weights", checkpoint, "--max-new-tokens", "0"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("gptspec parity: error: the backend raised ValueError: ") and err.count("\n") == 1, err


def test_gptspec_debug_shows_the_crash_itself(checkpoint, monkeypatch):
    monkeypatch.setattr(ms_backend.layers, "gelu", exploding_gelu)
    monkeypatch.setenv("GPTSPEC_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kernel exploded"):
        main(["parity", "--weights", checkpoint, "--max-new-tokens", "0"])


def test_text_prompt_through_the_real_gpt2_tokenizer(capsys, tmp_path):
    vocab = require_reference("gpt2")
    config = TINY.replace(n_vocab=50257)
    weights.save(probe_params(config, 0), config, tmp_path, format="safetensors")
    assert main(["parity", "--weights", str(tmp_path), "--vocab", str(vocab), "--prompt", "Hello world, again",
                 "--max-new-tokens", "1"]) == 0
    assert "tokens=4" in capsys.readouterr().out  # Hello | world | , | again


def test_a_tokenizer_of_another_vocabulary_is_refused(capsys, checkpoint):
    vocab = require_reference("openai-gpt")
    assert main(["parity", "--weights", checkpoint, "--vocab", str(vocab), "--prompt", "hello"]) == 2
    assert "has 40478 ids but the model has n_vocab=57" in capsys.readouterr().err


@pytest.mark.slow
def test_the_default_runs_offline_on_a_random_124m_gpt2(capsys):
    assert main(["parity", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "n_layer=12 n_embd=768" in out and "seeded random gpt2" in out and "| blocks.11.out " in out


@pytest.mark.parametrize("args, message", [
    (["--arch", "gpt1", "--model", "gpt2"], "--arch chooses the random model"),
    (["--dtype", "float16"], "--dtype float16 needs an AMP level"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--prompt", "hi", "--prompt-ids", "1"], "either --prompt or --prompt-ids"),
    (["--random-init", "--weights", "x"], "--random-init and --weights exclude each other"),
    (["--weights", "/nonexistent/folder"], "'/nonexistent/folder' is neither an existing checkpoint folder"),
    (["--prompt", "hi", "--model", "distilgpt2", "--random-init"], "--prompt needs a tokenizer"),
    (["--prompt-ids", "5 99999", "--model", "distilgpt2", "--random-init"], "token id 99999, outside"),
])
def test_bad_arguments_give_one_clear_line(capsys, args, message):
    assert main(["parity"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bfloat16_where_the_device_has_no_kernel_is_a_clear_error(capsys, checkpoint):
    if ms_backend.device_target() != "CPU":
        pytest.skip(f"bfloat16 matmuls are supported on {ms_backend.device_target()}")
    assert main(["parity", "--weights", checkpoint, "--amp", "O2", "--dtype", "bfloat16"]) == 2
    assert "cannot compute matmuls in bfloat16 on device CPU" in capsys.readouterr().err


def test_without_the_mindspore_extra_it_says_how_to_install_it(capsys, checkpoint, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ms_backend", None)  # `import ms_backend` now fails
    assert main(["parity", "--weights", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "needs the MindSpore backend" in err and "pip install -e '.[mindspore]'" in err
