"""gptspec attention: heatmaps of one layer's attention weights, one panel per head.

  gptspec attention --random-init --vocab DIR --prompt "The cat sat" --layer 0 --out attn.png
  gptspec attention --weights CKPT --prompt-ids 464,3290,318 --layer 5 --head 3 --out head.png

Rows are queries, columns keys, both labelled with the tokens (ids without a tokenizer). Cells the
causal mask hides (a query looking at a later key) are drawn grey, not as a weight of 0.
Needs matplotlib: pip install 'gptspec[plot]'.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import ref_numpy
from gptspec.common import add_model_args, check_tokenizer_fits, load_model, load_tokenizer, parse_ids

DPI = 100
MAX_COLUMNS = 4
MAX_PANEL = 12.0  # inches: a 1024-token prompt still gives a figure matplotlib can draw
MAX_LABELS = 64  # tick labels per axis; longer prompts label every k-th token
MASKED_COLOR = "#c8c8c8"
TITLE_BAND = 0.9  # inches above the panels for the two-line title
COLORBAR_BAND = 1.0  # inches right of the panels for the colour bar


def register(subparsers):
    parser = subparsers.add_parser("attention", help="plot attention weights per head as heatmaps (PNG)",
                                   description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--prompt", metavar="TEXT", help="prompt as text; needs --vocab (or --weights DIR "
                                                         "holding tokenizer files)")
    parser.add_argument("--prompt-ids", metavar="IDS", help="prompt as token ids, e.g. '464,3290,318'")
    parser.add_argument("--vocab", metavar="DIR", help="tokenizer folder: encodes --prompt and labels the axes")
    parser.add_argument("--layer", type=int, default=0, help="which block, 0-based (default %(default)s)")
    parser.add_argument("--head", type=int, help="plot only this head (0-based); default: every head in a grid")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="where to write the PNG")
    parser.set_defaults(func=run)


def import_pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or an error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("gptspec attention needs matplotlib: pip install 'gptspec[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def check_out_path(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out!r}")
    if not path.parent.is_dir():
        raise ValueError(f"--out: the directory {str(path.parent)!r} does not exist")
    return path


def check_index(value: int | None, count: int, option: str, what: str) -> None:
    if value is not None and not 0 <= value < count:
        raise ValueError(f"{option} {value} is out of range: the model has {count} {what} (0..{count - 1})")


def labels_tokenizer(args):
    """For --prompt-ids without --vocab: the tokenizer of the --weights folder if it has one, else None
    (the axes then show ids)."""
    if not args.weights:
        return None
    try:
        return ref_numpy.Tokenizer.from_dir(args.weights)
    except FileNotFoundError:
        return None


def token_labels(ids: list[int], tokenizer) -> list[str]:
    """Axis labels: each token's text with spaces as '·' (GPT-2 tokens usually start with one), or its id."""
    if tokenizer is None:
        return [str(i) for i in ids]
    texts = (tokenizer.decode_bytes([i]).decode("utf-8", errors="replace") for i in ids)
    return [text.replace(" ", "\u00b7").replace("\n", "\\n").replace("\t", "\\t") or "''" for text in texts]


def attention_weights(config, params, ids, layer: int) -> np.ndarray:
    """Attention weights of block `layer` for one prompt: [H, T, T] (queries x keys)."""
    trace: dict = {}
    ref_numpy.forward(config, params, np.asarray(ids, dtype=np.int64)[None, :], trace=trace)
    return trace[f"blocks.{layer}.attn_weights"][0]


def figure_size(n_panels: int, n_tokens: int) -> tuple[float, float]:
    """(width, height) in inches: square panels that grow with the prompt, MAX_COLUMNS per row,
    plus the bands for the title and the colour bar."""
    panel = min(max(3.5, 0.3 * n_tokens + 1.5), MAX_PANEL)
    columns = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / columns)
    return columns * panel + COLORBAR_BAND, rows * panel + TITLE_BAND


def labelled_positions(n_tokens: int) -> list[int]:
    """Every token's position, or every k-th when there are more than MAX_LABELS (they would overlap)."""
    return list(range(0, n_tokens, math.ceil(n_tokens / MAX_LABELS)))


def plot_heads(pyplot, weights: np.ndarray, heads: list[int], labels: list[str], title: str):
    """One heatmap per head of weights [H, T, T]; masked (future) cells in MASKED_COLOR."""
    n_tokens = weights.shape[-1]
    allowed = ref_numpy.causal_mask(n_tokens, n_tokens)
    columns = min(len(heads), MAX_COLUMNS)
    rows = math.ceil(len(heads) / columns)
    width, height = figure_size(len(heads), n_tokens)
    figure, axes = pyplot.subplots(rows, columns, figsize=(width, height), dpi=DPI, squeeze=False)
    cmap = pyplot.get_cmap("viridis").with_extremes(bad=MASKED_COLOR)
    for ax in axes.flat[len(heads):]:
        ax.set_visible(False)
    for ax, head in zip(axes.flat, heads):
        image = ax.imshow(np.ma.masked_where(~allowed, weights[head]), cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(f"head {head}", fontsize=9)
        ticks = labelled_positions(n_tokens)
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
    figure.suptitle(title, fontsize=9)
    panels_right = 1 - COLORBAR_BAND / width
    # tight_layout only arranges the panels inside the rect; the canvas stays figsize x DPI pixels.
    figure.tight_layout(rect=(0, 0, panels_right, 1 - TITLE_BAND / height))
    colorbar_axes = figure.add_axes((panels_right + 0.2 / width, 0.15, 0.15 / width, 0.7))
    figure.colorbar(image, cax=colorbar_axes, label="attention weight")
    return figure


def run(args) -> int:
    pyplot = import_pyplot()
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ValueError("give a prompt with either --prompt TEXT or --prompt-ids IDS")
    out = check_out_path(args.out)
    tokenizer = load_tokenizer(args) if args.prompt is not None or args.vocab else labels_tokenizer(args)
    ids = tokenizer.encode(args.prompt) if args.prompt is not None else parse_ids(args.prompt_ids)
    if not ids:
        raise ValueError("the prompt encodes to no tokens: give some text")
    config, params = load_model(args)
    if tokenizer:
        check_tokenizer_fits(tokenizer, config)
    check_index(args.layer, config.n_layer, "--layer", "layers")
    check_index(args.head, config.n_head, "--head", "heads")
    weights = attention_weights(config, params, ids, args.layer)
    heads = list(range(config.n_head)) if args.head is None else [args.head]
    model = args.weights or (f"random-init {args.model} (seed {args.seed})" if args.random_init else args.model)
    title = (f"{model}, layer {args.layer}: attention weights\n"
             f"rows: queries, columns: keys; grey: hidden by the causal mask")
    figure = plot_heads(pyplot, weights, heads, token_labels(ids, tokenizer), title)
    figure.savefig(out, dpi=DPI, metadata={"Software": None})
    pyplot.close(figure)
    print(f"wrote {out} ({len(heads)} head(s) of layer {args.layer}, {len(ids)} tokens)")
    return 0
