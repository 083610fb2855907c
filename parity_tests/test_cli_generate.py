"""`gptspec generate`, the command a new user runs first: offline, seeded, streaming."""
from __future__ import annotations

import io

import numpy as np
import pytest

import ref_numpy as R
from gptspec.cli import main
from gptspec.commands.generate import PROGRESS_THRESHOLD, ProgressBar, wants_progress


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


# -- the progress bar (stderr) -------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def ticking_clock(step=1.0):
    """A clock that advances `step` seconds per reading: rates and ETAs become exact."""
    readings = iter(range(10_000))
    return lambda: next(readings) * step


def test_progress_bar_redraws_one_line_on_a_terminal():
    out = FakeTerminal()
    bar = ProgressBar(4, out, clock=ticking_clock())
    bar.update(1)
    bar.update(2)
    bar.finish(4)
    frames = out.getvalue().split("\r")[1:]
    assert frames[0] == "[#######-----------------------] 1/4 tokens  1.0 tok/s  ETA 3s"
    assert frames[1] == "[###############---------------] 2/4 tokens  1.0 tok/s  ETA 2s"
    assert frames[2] == "[##############################] 4/4 tokens  1.3 tok/s\n"


def test_progress_in_a_log_is_one_line_per_tenth():
    out = io.StringIO()
    bar = ProgressBar(25, out, clock=ticking_clock())
    for done in range(1, 26):
        bar.update(done)
    bar.finish(25)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("]")[1].split("tokens")[0].strip() for line in lines] == \
        ["3/25", "5/25", "8/25", "10/25", "13/25", "15/25", "18/25", "20/25", "23/25", "25/25"]


def test_progress_says_when_eos_stopped_the_run_early():
    out = io.StringIO()
    ProgressBar(100, out, clock=ticking_clock()).finish(7)
    assert out.getvalue().endswith("   7/100 tokens  7.0 tok/s (stopped early at --eos-id after 7)\n")


@pytest.mark.parametrize("option, max_new_tokens, stdout_is_terminal, expected", [
    (None, PROGRESS_THRESHOLD, False, True),       # a long run written to a file or pipe
    (None, PROGRESS_THRESHOLD - 1, False, False),  # short runs stay quiet
    (None, 1000, True, False),                     # on a terminal the streamed tokens are the progress
    (True, 1, True, True),                         # --progress forces it
    (False, 1000, False, False),                   # --no-progress
])
def test_when_the_bar_is_shown(option, max_new_tokens, stdout_is_terminal, expected):
    stdout = FakeTerminal() if stdout_is_terminal else io.StringIO()
    assert wants_progress(option, max_new_tokens, stdout) is expected


def test_long_runs_report_progress_on_stderr_and_leave_stdout_alone(capsys):
    args = ["generate", "--model", "distilgpt2", "--random-init", "--prompt-ids", "464", "--greedy",
            "--max-new-tokens", str(PROGRESS_THRESHOLD)]
    assert main(args) == 0
    with_bar = capsys.readouterr()
    assert with_bar.err.splitlines()[-1].startswith(f"[{'#' * 30}] {PROGRESS_THRESHOLD}/{PROGRESS_THRESHOLD} tokens")
    assert len(with_bar.err.splitlines()) == 10
    assert main(args + ["--no-progress"]) == 0
    without = capsys.readouterr()
    assert without.err == "" and without.out == with_bar.out


def test_progress_of_a_run_stopped_by_eos(capsys):
    config = R.GPTConfig.from_name("distilgpt2")
    first = int(R.generate(config, R.init_params(config, 0), [464], 1, greedy=True)[-1])
    assert main(["generate", "--model", "distilgpt2", "--random-init", "--prompt-ids", "464", "--greedy",
                 "--max-new-tokens", "5", "--eos-id", str(first), "--progress"]) == 0
    last = capsys.readouterr().err.splitlines()[-1]
    assert " 1/5 tokens" in last and last.endswith("(stopped early at --eos-id after 1)")
