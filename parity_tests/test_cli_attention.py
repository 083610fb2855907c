"""`gptspec attention`: a valid PNG of the expected size, the right weights, the mask shown, clear errors."""
from __future__ import annotations

import argparse
import shutil
import struct
import sys

import numpy as np
import pytest

import ref_numpy as R
from gptspec.cli import main
from parity_tests.conftest import require_reference

pytest.importorskip("matplotlib", reason="gptspec attention needs the plot extra (matplotlib)")
from gptspec.commands import attention  # noqa: E402  (after the skip: it is only usable with matplotlib)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--model", "distilgpt2", "--random-init", "--seed", "1"]  # 6 layers, 12 heads: the smallest preset


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has first, right after the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    assert chunk_type == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_one_head_png_has_the_size_of_its_figure(tmp_path, capsys):
    out = tmp_path / "head.png"
    assert main(["attention", *TINY, "--prompt-ids", " ".join(map(str, range(20))), "--layer", "5", "--head", "11",
                 "--out", str(out)]) == 0
    # 20 tokens make the panel 0.3 * 20 + 1.5 = 7.5 inches; + 1.0 for the colour bar, + 0.9 for the title
    assert png_size(out) == (850, 840)
    width, height = attention.figure_size(1, 20)
    assert (round(width * attention.DPI), round(height * attention.DPI)) == (850, 840)
    assert "1 head(s) of layer 5, 20 tokens" in capsys.readouterr().out


def test_every_head_in_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["attention", *TINY, "--prompt-ids", "464,3290,318", "--out", str(out)]) == 0
    # 12 heads in 3 rows of 4 panels of 3.5 inches (the smallest panel)
    assert png_size(out) == (1500, 1140)  # 100 dpi x (4 x 3.5 + 1.0 colour bar, 3 x 3.5 + 0.9 title)


def test_long_prompts_keep_the_figure_drawable_and_the_labels_readable():
    assert attention.figure_size(12, 1024) == (4 * 12.0 + 1.0, 3 * 12.0 + 0.9)  # panels stop growing at 12 in
    assert attention.labelled_positions(5) == [0, 1, 2, 3, 4]
    assert attention.labelled_positions(64) == list(range(64))
    assert attention.labelled_positions(65) == list(range(0, 65, 2))
    assert attention.labelled_positions(1024) == list(range(0, 1024, 16))


def test_weights_are_the_spec_trace_and_masked_cells_are_marked():
    config = R.GPTConfig(n_vocab=50, n_ctx=16, n_embd=16, n_head=2, n_layer=2)
    params = R.init_params(config, seed=4)
    ids = [3, 1, 4, 1, 5]
    trace: dict = {}
    R.forward(config, params, np.array([ids]), trace=trace)
    weights = attention.attention_weights(config, params, ids, layer=1)
    # Exact: attention_weights runs this same forward ([1, 5] ids, same params, same order).
    np.testing.assert_array_equal(weights, trace["blocks.1.attn_weights"][0])
    pyplot = attention.import_pyplot()
    figure = attention.plot_heads(pyplot, weights, [0, 1], attention.token_labels(ids, None), "t")
    for ax, head in zip(figure.axes, [0, 1]):
        shown = ax.images[0].get_array()
        future = ~R.causal_mask(5, 5)
        np.testing.assert_array_equal(np.ma.getmaskarray(shown), future)  # grey exactly where the mask hides
        np.testing.assert_array_equal(shown.data[~future], weights[head][~future])
        assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "1", "4", "1", "5"]
    pyplot.close(figure)


def test_labels_are_the_tokens_of_the_real_gpt2_tokenizer(tmp_path):
    vocab = require_reference("gpt2")
    tokenizer = R.Tokenizer.from_dir(vocab)
    assert attention.token_labels(tokenizer.encode("Hello world\n"), tokenizer) == ["Hello", "\u00b7world", "\\n"]
    out = tmp_path / "text.png"
    assert main(["attention", *TINY, "--vocab", str(vocab), "--prompt", "Hello world", "--head", "0",
                 "--out", str(out)]) == 0
    assert png_size(out) == (450, 440)


@pytest.mark.parametrize("args, message", [
    (["--prompt-ids", "1,2", "--layer", "6"], "--layer 6 is out of range: the model has 6 layers (0..5)"),
    (["--prompt-ids", "1,2", "--layer", "-1"], "--layer -1 is out of range"),
    (["--prompt-ids", "1,2", "--head", "12"], "--head 12 is out of range: the model has 12 heads (0..11)"),
    ([], "give a prompt with either --prompt TEXT or --prompt-ids IDS"),
    (["--prompt-ids", "1", "--prompt", "a"], "give a prompt with either"),
    (["--prompt", "hello"], "--prompt needs a tokenizer"),
    (["--prompt-ids", "1,99999"], "token id 99999, outside the vocabulary"),
])
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, args, message):
    assert main(["attention", *TINY, *args, "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("out, message", [
    ("missing/a.png", "/missing' does not exist"),
    ("a.jpg", "--out must name a .png file"),
])
def test_bad_output_path(tmp_path, capsys, out, message):
    assert main(["attention", *TINY, "--prompt-ids", "1", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"pip install 'gptspec\[plot\]'"):
        attention.import_pyplot()


def test_a_checkpoint_folder_with_its_own_tokenizer(tmp_path, capsys):
    """--weights DIR: a saved (tiny) checkpoint; DIR also holds GPT-2's tokenizer files, which
    encode --prompt and label the axes."""
    pytest.importorskip("safetensors", reason="saving a checkpoint needs the weights extra (safetensors)")
    import weights

    vocab = require_reference("gpt2")
    config = R.GPTConfig(n_vocab=50257, n_ctx=32, n_embd=16, n_head=4, n_layer=2)
    folder = weights.save(R.init_params(config, seed=2), config, tmp_path / "ckpt", format="safetensors")
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(vocab / name, folder / name)
    out = tmp_path / "ckpt.png"
    assert main(["attention", "--weights", str(folder), "--prompt", "Hello world, hi", "--layer", "1",
                 "--out", str(out)]) == 0
    assert "4 head(s) of layer 1, 4 tokens" in capsys.readouterr().out
    # 4 heads in one row of 4 panels of 3.5 inches (4 tokens are below the panel's minimum size)
    assert png_size(out) == (1500, 440)  # 100 dpi x (4 x 3.5 + 1.0 colour bar, 3.5 + 0.9 title)
    assert main(["attention", "--weights", str(folder), "--prompt-ids", "15496,995", "--head", "0",
                 "--out", str(out)]) == 0  # ids in, token strings on the axes (from the folder's tokenizer)
    capsys.readouterr()
    labels = attention.labels_tokenizer(argparse.Namespace(weights=str(folder)))
    assert attention.token_labels([15496, 995], labels) == ["Hello", "\u00b7world"]
    assert attention.labels_tokenizer(argparse.Namespace(weights=str(tmp_path))) is None  # no tokenizer files
    assert attention.labels_tokenizer(argparse.Namespace(weights=None)) is None
    assert main(["attention", "--weights", str(folder), "--prompt-ids", "1,2", "--layer", "2",
                 "--out", str(out)]) == 2
    assert "--layer 2 is out of range: the model has 2 layers (0..1)" in capsys.readouterr().err


def test_a_gpt1_checkpoint_with_the_gpt1_tokenizer(tmp_path, capsys):
    """GPT-1 (post-LN) checkpoints work the same; its tokens end words with '</w>', shown decoded."""
    pytest.importorskip("safetensors", reason="saving a checkpoint needs the weights extra (safetensors)")
    import weights

    vocab = require_reference("openai-gpt")
    config = R.GPTConfig(arch="gpt1", n_vocab=40478, n_ctx=32, n_embd=16, n_head=2, n_layer=1)
    folder = weights.save(R.init_params(config, seed=5), config, tmp_path / "gpt1", format="safetensors")
    out = tmp_path / "gpt1.png"
    assert main(["attention", "--weights", str(folder), "--vocab", str(vocab), "--prompt", "Hello world",
                 "--out", str(out)]) == 0
    assert "2 head(s) of layer 0, 2 tokens" in capsys.readouterr().out
    assert png_size(out) == (800, 440)  # 100 dpi x (2 x 3.5 + 1.0 colour bar, 3.5 + 0.9 title)
    tokenizer = R.Tokenizer.from_dir(vocab)
    assert attention.token_labels(tokenizer.encode("Hello world"), tokenizer) == ["hello\u00b7", "world\u00b7"]
