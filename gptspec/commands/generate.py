"""gptspec generate: continue a prompt with the NumPy spec, printing tokens as they come."""
from __future__ import annotations

import argparse
import codecs
import sys
import time
from typing import Iterator, TextIO

import numpy as np

import ref_numpy
from gptspec.common import add_model_args, check_tokenizer_fits, load_model, load_tokenizer, parse_ids

PROGRESS_THRESHOLD = 64  # runs this long get a progress bar by default


def register(subparsers):
    parser = subparsers.add_parser("generate", help="generate tokens with the NumPy spec",
                                   description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--prompt-ids", metavar="IDS", help="prompt as token ids, e.g. '464,3290,318'")
    parser.add_argument("--prompt", metavar="TEXT", help="prompt as text; needs --vocab, or --weights DIR holding "
                                                         "tokenizer files; the continuation is printed as text")
    parser.add_argument("--vocab", metavar="DIR", help="tokenizer folder for --prompt (see `gptspec tokenize -h`)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-p-convention", choices=("hf", "openai"), default="hf")
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--eos-id", type=int)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"progress bar on stderr; default: on for --max-new-tokens >= {PROGRESS_THRESHOLD} "
                             f"when stdout is not a terminal (on a terminal the streamed tokens show progress)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ValueError("give a prompt with either --prompt TEXT or --prompt-ids IDS")
    tokenizer = load_tokenizer(args) if args.prompt is not None else None
    prompt = np.array(tokenizer.encode(args.prompt) if tokenizer else parse_ids(args.prompt_ids), dtype=np.int64)
    config, params = load_model(args)
    if tokenizer:
        check_tokenizer_fits(tokenizer, config)
    stream = ref_numpy.decode_stream(
        ref_numpy.numpy_step(config, params), config, prompt, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
        seed=args.seed, eos_id=args.eos_id, top_p_convention=args.top_p_convention)
    if wants_progress(args.progress, args.max_new_tokens, sys.stdout):
        stream = with_progress(stream, ProgressBar(args.max_new_tokens, sys.stderr))
    if tokenizer:
        print_text_stream(tokenizer, prompt, stream)
        return 0
    print("prompt:", " ".join(map(str, prompt.tolist())), flush=True)
    print("generated:", end="", flush=True)
    for token in stream:
        print(f" {int(token[0])}", end="", flush=True)
    print(file=sys.stdout)
    return 0


def print_text_stream(tokenizer, prompt, stream) -> None:
    """The prompt's text, then each new token's text as it comes (a character whose bytes span two
    tokens is printed when complete). GPT-1 shows the prompt as the model saw it: normalized."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    print(utf8.decode(tokenizer.decode_bytes(prompt)), end="", flush=True)
    for token in stream:
        print(utf8.decode(tokenizer.decode_bytes([int(token[0])])), end="", flush=True)
    print(utf8.decode(b"", final=True))


def wants_progress(option: bool | None, max_new_tokens: int, stdout: TextIO) -> bool:
    """--progress / --no-progress decide; by default long runs get a bar unless stdout is a terminal,
    where the bar and the streamed text would share (and garble) one screen."""
    if option is not None:
        return option
    return max_new_tokens >= PROGRESS_THRESHOLD and not stdout.isatty()


def with_progress(stream: Iterator, bar: "ProgressBar") -> Iterator:
    """The same tokens, updating `bar` after each one and closing it when the stream ends."""
    done = 0
    for token in stream:
        done += 1
        yield token
        bar.update(done)
    bar.finish(done)


class ProgressBar:
    """Plain-text progress on `out`: one line redrawn in place on a terminal; elsewhere (a log
    file, CI) one line per tenth of the run, so the log does not fill with carriage returns."""
    WIDTH = 30

    def __init__(self, total: int, out: TextIO, clock=time.monotonic):
        self.total, self.out, self.clock = total, out, clock
        self.interactive = out.isatty()
        self.start = clock()
        self.last_tenth = 0

    def line(self, done: int, final: bool = False) -> str:
        """'[########----------------------]  16/64 tokens  8.0 tok/s  ETA 6s' (no ETA when final)"""
        filled = self.WIDTH * done // max(self.total, 1)
        elapsed = self.clock() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"  ETA {(self.total - done) / rate:.0f}s" if rate > 0 and not final else ""
        return f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {done:>{len(str(self.total))}}/{self.total} tokens" \
               f"  {rate:.1f} tok/s{eta}"

    def update(self, done: int) -> None:
        if self.interactive:
            self.out.write("\r" + self.line(done))
            self.out.flush()
            return
        tenth = 10 * done // max(self.total, 1)
        if tenth > self.last_tenth and done < self.total:
            self.last_tenth = tenth
            print(self.line(done), file=self.out, flush=True)

    def finish(self, done: int) -> None:
        """The final state, on its own line; says so when generation stopped early (eos)."""
        early = f" (stopped early at --eos-id after {done})" if done < self.total else ""
        print(("\r" if self.interactive else "") + self.line(done, final=True) + early, file=self.out, flush=True)
