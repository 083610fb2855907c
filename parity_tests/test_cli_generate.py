"""`gptspec generate`, the command a new user runs first: offline, seeded, streaming."""
from __future__ import annotations

import numpy as np
import pytest

import ref_numpy as R
from gptspec.cli import main


def test_generate_prints_what_the_spec_generates(capsys):
    assert main(["generate", "--model", "distilgpt2", "--random-init", "--seed", "3", "--prompt-ids", "464,3290",
                 "--max-new-tokens", "4", "--greedy"]) == 0
    out = capsys.readouterr().out.splitlines()
    config = R.GPTConfig.from_name("distilgpt2")
    expected = R.generate(config, R.init_params(config, 3), [464, 3290], 4, greedy=True)
    assert out[0] == "prompt: 464 3290"
    assert out[1] == "generated: " + " ".join(map(str, expected[2:].tolist()))


def test_sampling_is_seeded(capsys):
    args = ["generate", "--model", "distilgpt2", "--random-init", "--prompt-ids", "1 2 3", "--max-new-tokens", "3",
            "--top-k", "5", "--temperature", "0.8"]
    main(args + ["--seed", "1"])
    first = capsys.readouterr().out
    main(args + ["--seed", "1"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("args, message", [
    (["--prompt-ids", "1,x"], "token ids must be integers"),
    (["--prompt-ids", "1,99999"], "token id 99999, outside the vocabulary"),
    (["--prompt-ids", "1", "--top-p", "0"], "top_p must lie in"),
    (["--prompt-ids", "1", "--max-new-tokens", "2000"], "exceeds n_ctx=1024"),
    (["--prompt-ids", "1", "--weights", "x"], "--random-init and --weights exclude each other"),
])
def test_bad_arguments_give_one_clear_line(capsys, args, message):
    assert main(["generate", "--model", "distilgpt2", "--random-init"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_model_name(capsys):
    assert main(["generate", "--model", "gpt5", "--random-init", "--prompt-ids", "1"]) == 2
    assert "unknown model name 'gpt5'" in capsys.readouterr().err
