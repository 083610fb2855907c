"""gptspec tokenize / detokenize: text to GPT-1/GPT-2 token ids and back, showing the work.

  gptspec tokenize --vocab DIR "Hello world"            ids, then one line per token
  gptspec tokenize --vocab DIR --explain "Hello world"  the BPE merges of every word
  gptspec detokenize --vocab DIR 15496 995              the text of the ids

DIR holds encoder.json + vocab.bpe (GPT-2), encoder_bpe_40000.json + vocab_40000.bpe (GPT-1) or
vocab.json + merges.txt (either); --vocab is required. TEXT "-" reads standard input.
"""
from __future__ import annotations

import sys

import ref_numpy
from gptspec.common import parse_ids


def register(subparsers):
    tokenize = subparsers.add_parser("tokenize", help="text -> token ids (BPE of GPT-1 or GPT-2)",
                                     description=__doc__.splitlines()[0])
    tokenize.add_argument("text", help='the text to encode ("-" reads standard input)')
    _add_vocab_arg(tokenize)
    tokenize.add_argument("--explain", action="store_true", help="print the merge steps of every word")
    tokenize.add_argument("--allow-special", action="store_true",
                          help="encode special-token text such as <|endoftext|> as the special token "
                               "(default: refuse, like tiktoken)")
    tokenize.set_defaults(func=run_tokenize)

    detokenize = subparsers.add_parser("detokenize", help="token ids -> text",
                                       description="gptspec detokenize: token ids back to text")
    detokenize.add_argument("ids", nargs="+", help="token ids, separated by spaces and/or commas")
    _add_vocab_arg(detokenize)
    detokenize.set_defaults(func=run_detokenize)


def _add_vocab_arg(parser):
    parser.add_argument("--vocab", metavar="DIR", required=True,
                        help="folder with the tokenizer files (OpenAI or Hugging Face names)")


def show_token(tokenizer: ref_numpy.Tokenizer, token_id: int) -> str:
    """The text of one token as a Python literal; bytes that are not whole UTF-8 characters as bytes."""
    raw = tokenizer.decode_bytes([token_id])
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(raw)


def run_tokenize(args) -> int:
    tokenizer = ref_numpy.Tokenizer.from_dir(args.vocab)
    text = sys.stdin.read() if args.text == "-" else args.text
    special = [token for token in tokenizer.special_tokens if token in text]
    if special and not args.allow_special:
        raise ValueError(f"the text contains the special token {special[0]!r}; pass --allow-special to encode "
                         f"it as that token")
    ids = tokenizer.encode(text, allowed_special="all")
    print(f"{tokenizer.name}: {len(ids)} tokens")
    print("ids:", " ".join(map(str, ids)))
    width = max([len(str(i)) for i in ids], default=1)
    for token_id in ids:
        print(f"{token_id:>{width}}  {show_token(tokenizer, token_id):<20} {tokenizer.token_string(token_id)}")
    if args.explain:
        for word in tokenizer.pretokenize(text):
            print_explanation(tokenizer, word)
    return 0


def print_explanation(tokenizer, word: str) -> None:
    """One word: the symbols BPE starts from, then one line per merge (rank = merges-file order)."""
    print(f"\n{word!r}: {' '.join(tokenizer.symbols(word))}")
    steps = tokenizer.explain(word)
    for pair, rank, parts in steps:
        print(f"  rank {rank:>6}  {pair[0]} + {pair[1]}  ->  {' '.join(parts)}")
    if not steps:
        print("  (no merge applies)")


def run_detokenize(args) -> int:
    tokenizer = ref_numpy.Tokenizer.from_dir(args.vocab)
    print(tokenizer.decode(parse_ids(" ".join(args.ids))))
    return 0
