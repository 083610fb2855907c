"""gptspec convert: rewrite a checkpoint in another format.

  gptspec convert ~/.cache/gptspec/openai/gpt2 gpt2-st --to safetensors
  gptspec convert gpt2 gpt2-ms --to mindspore          (a fetched model, by name)

SRC is any folder weights.load reads (OpenAI GPT-2/GPT-1 releases, Hugging Face, MindSpore)
or the name of a fetched model.  DST must not exist or be empty, unless --force.
Arrays are copied bit for bit; tokenizer files in SRC are copied along.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import weights

TOKENIZER_FILES = ("encoder.json", "vocab.bpe", "encoder_bpe_40000.json", "vocab_40000.bpe", "vocab.json",
                   "merges.txt")


def register(subparsers):
    parser = subparsers.add_parser("convert", help="convert a checkpoint to safetensors or MindSpore",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint folder or fetched model name")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--to", required=True, choices=weights.SAVE_FORMATS, help="output format")
    parser.add_argument("--force", action="store_true", help="write into a non-empty DST (replacing its files)")
    parser.add_argument("--check-finite", action="store_true", help="refuse weights holding NaN or Inf")
    parser.set_defaults(func=run)


def run(args) -> int:
    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} exists and is a file; DST must be a folder")
    if dst.is_dir() and any(dst.iterdir()) and not args.force:
        raise ValueError(f"{dst} is not empty; pass --force to write into it anyway")
    src = weights.cache.resolve(args.src)
    config, params = weights.load(src, check_finite=args.check_finite)
    weights.save(params, config, dst, format=args.to)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    extra = f" (+ {', '.join(copied)})" if copied else ""
    print(f"wrote {args.to} checkpoint of {config} to {dst}{extra}")
    return 0
