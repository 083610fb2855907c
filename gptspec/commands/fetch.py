"""gptspec fetch: download a published model into the cache ($GPTSPEC_HOME, default ~/.cache/gptspec).

  gptspec fetch gpt2                       OpenAI's original 124M files (TensorFlow checkpoint)
  gptspec fetch openai-gpt                 OpenAI's GPT-1 release (params_0..9.npy)
  gptspec fetch gpt2-medium --format hf    Hugging Face's config.json + model.safetensors

Interrupted downloads resume; sizes and sha256 are checked before a file is put in place.
Afterwards `--model NAME` (or weights.load("NAME")) finds the files.
"""
from __future__ import annotations

import sys

from weights import cache, fetch


def register(subparsers):
    parser = subparsers.add_parser("fetch", help="download published weights into the cache",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(set(cache.NAMES["openai"]) | set(cache.NAMES["hf"])))
    parser.add_argument("--format", dest="fmt", choices=cache.FORMATS, default="openai",
                        help="openai: the original release files; hf: Hugging Face safetensors (default %(default)s)")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts per file after a dropped "
                                                               "connection (default %(default)s)")
    parser.add_argument("--base-url", help="download from this mirror instead: {BASE}/{format}/{name}/{file} "
                                           "(also GPTSPEC_FETCH_BASE_URL)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    folder = fetch.fetch(args.name, args.fmt, base_url=args.base_url, retries=args.retries,
                         progress=None if args.quiet else sys.stderr)
    print(folder)
    return 0
