"""gptspec generate: continue a prompt with the NumPy spec, printing tokens as they come."""
from __future__ import annotations

import sys

import numpy as np

import ref_numpy
from gptspec.common import add_model_args, load_model, parse_ids


def register(subparsers):
    parser = subparsers.add_parser("generate", help="generate tokens with the NumPy spec",
                                   description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--prompt-ids", metavar="IDS", help="prompt as token ids, e.g. '464,3290,318'")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-p-convention", choices=("hf", "openai"), default="hf")
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--eos-id", type=int)
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.prompt_ids is None:
        raise ValueError("give a prompt with --prompt-ids")
    prompt = np.array(parse_ids(args.prompt_ids), dtype=np.int64)
    config, params = load_model(args)
    stream = ref_numpy.decode_stream(
        ref_numpy.numpy_step(config, params), config, prompt, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
        seed=args.seed, eos_id=args.eos_id, top_p_convention=args.top_p_convention)
    print("prompt:", " ".join(map(str, prompt.tolist())), flush=True)
    print("generated:", end="", flush=True)
    for token in stream:
        print(f" {int(token[0])}", end="", flush=True)
    print(file=sys.stdout)
    return 0
