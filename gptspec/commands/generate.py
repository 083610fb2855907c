"""gptspec generate: continue a prompt with the NumPy spec, printing tokens as they come."""
from __future__ import annotations

import codecs
import sys

import numpy as np

import ref_numpy
from gptspec.common import add_model_args, load_model, parse_ids


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
    parser.set_defaults(func=run)


def load_tokenizer(args) -> ref_numpy.Tokenizer:
    """The tokenizer for --prompt: --vocab DIR, else the --weights folder if it holds tokenizer files."""
    if args.vocab:
        return ref_numpy.Tokenizer.from_dir(args.vocab)
    if not args.weights:
        raise ValueError("--prompt needs a tokenizer: pass --vocab DIR (or --weights DIR holding tokenizer files)")
    try:
        return ref_numpy.Tokenizer.from_dir(args.weights)
    except FileNotFoundError as error:
        raise ValueError(f"--prompt needs a tokenizer: pass --vocab DIR ({error})") from None


def run(args) -> int:
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ValueError("give a prompt with either --prompt TEXT or --prompt-ids IDS")
    tokenizer = load_tokenizer(args) if args.prompt is not None else None
    prompt = np.array(tokenizer.encode(args.prompt) if tokenizer else parse_ids(args.prompt_ids), dtype=np.int64)
    config, params = load_model(args)
    if tokenizer and tokenizer.n_vocab != config.n_vocab:
        raise ValueError(f"the tokenizer {tokenizer.name} has {tokenizer.n_vocab} ids but the model has "
                         f"n_vocab={config.n_vocab}")
    stream = ref_numpy.decode_stream(
        ref_numpy.numpy_step(config, params), config, prompt, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
        seed=args.seed, eos_id=args.eos_id, top_p_convention=args.top_p_convention)
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
