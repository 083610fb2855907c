"""Benchmark: gptspec's pure-Python tokenizers against tiktoken and Hugging Face tokenizers, same run.

    python benchmarks/bench_tokenizer.py [--reference DIR] [--megabytes 5.3] [--repeats 3]

Encodes one corpus of real English text with each tokenizer and prints MB/s (UTF-8 megabytes of
input per second), the ratio to tiktoken and to HF tokenizers, and whether the ids are identical.
"cold" is the first encode by a freshly loaded tokenizer; "warm" the best of --repeats further
encodes of the same text (gptspec's caches are full by then, tiktoken and HF have none).

The corpus is built from text that ships with Python and the OS, in this order, until --megabytes:
pydoc's reference topics (pydoc_data.topics), /usr/share/common-licenses/*, then the readmes,
news, changelogs, copyright and *.txt / *.md files under /usr/share/doc (gzip or plain UTF-8,
sorted by path). The sources used are printed. Needs the oracle extra (tiktoken, tokenizers,
transformers) and OpenAI's files in DIR/gpt2 and DIR/openai-gpt.
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import time
from pathlib import Path

import ref_numpy

DOC_NAMES = re.compile(r"^(copyright|changelog.*|NEWS.*|README.*|TODO.*|AUTHORS.*|THANKS.*|FAQ.*|.*\.txt(\.gz)?|"
                       r".*\.md(\.gz)?)$", re.IGNORECASE)


def build_corpus(target_bytes: int) -> tuple[str, list[str]]:
    """(text, description of the sources) of about target_bytes UTF-8 bytes."""
    from pydoc_data.topics import topics

    parts = [topics[name] for name in sorted(topics)]
    sources = [f"pydoc_data.topics ({len(parts)} topics)"]
    size = sum(len(p.encode()) for p in parts)
    doc = Path("/usr/share/doc")
    files = sorted(Path("/usr/share/common-licenses").glob("*"))
    files += sorted(p for p in doc.rglob("*") if DOC_NAMES.match(p.name)) if doc.is_dir() else []
    used = 0
    for path in files:
        if size >= target_bytes:
            break
        if path.is_symlink() or not path.is_file():
            continue
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        parts.append(text)
        size += len(raw)
        used += 1
    sources.append(f"{used} files from /usr/share/common-licenses and /usr/share/doc (first {files[0] if files else '-'})")
    return "\n".join(parts), sources


def timed(encode, text: str, repeats: int) -> tuple[float, float, list[int]]:
    """(cold seconds, best warm seconds, ids)."""
    start = time.perf_counter()
    ids = encode(text)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(text)
        warm.append(time.perf_counter() - start)
    return cold, min(warm), list(ids)


def hf_gpt2_tokenizers(folder: Path):
    """HF `tokenizers` configured as GPT-2 (byte-level BPE, no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return lambda text: tokenizer.encode(text).ids


def tiktoken_gpt2(folder: Path):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # read the local files, write no cache
    ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    encoding = tiktoken.Encoding(name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})
    return encoding.encode_ordinary


def hf_openai_gpt(folder: Path, scratch: Path):
    """transformers' OpenAIGPTTokenizer (HF tokenizers inside) from OpenAI's GPT-1 files."""
    import transformers

    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "vocab.json").write_bytes((folder / "encoder_bpe_40000.json").read_bytes())
    (scratch / "merges.txt").write_bytes((folder / "vocab_40000.bpe").read_bytes())
    tokenizer = transformers.OpenAIGPTTokenizer.from_pretrained(str(scratch))
    return tokenizer.encode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=os.environ.get("GPTSPEC_REFERENCE_DIR", "../shared/reference"),
                        help="folder holding gpt2/ and openai-gpt/ (default $GPTSPEC_REFERENCE_DIR or %(default)s)")
    parser.add_argument("--megabytes", type=float, default=5.3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    reference = Path(args.reference)

    text, sources = build_corpus(int(args.megabytes * 1e6))
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"corpus: {megabytes:.2f} MB, {len(text):,} characters, {sum(not c.isascii() for c in text):,} non-ASCII")
    for source in sources:
        print(f"  {source}")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs\n")

    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        runs = {
            "GPT-2": [("gptspec", ref_numpy.Tokenizer.from_dir(reference / "gpt2").encode_ordinary),
                      ("tiktoken", tiktoken_gpt2(reference / "gpt2")),
                      ("HF tokenizers", hf_gpt2_tokenizers(reference / "gpt2"))],
            "GPT-1": [("gptspec", ref_numpy.Tokenizer.from_dir(reference / "openai-gpt").encode),
                      ("HF OpenAIGPTTokenizer", hf_openai_gpt(reference / "openai-gpt", Path(scratch)))],
        }
        print(f"{'model':6} {'tokenizer':22} {'cold MB/s':>10} {'warm MB/s':>10} {'/tiktoken':>10} {'/HF':>7}  ids")
        for model, tokenizers in runs.items():
            results = {name: timed(encode, text, args.repeats) for name, encode in tokenizers}
            baseline_ids = results["gptspec"][2]
            speed = {name: megabytes / warm for name, (_, warm, _) in results.items()}
            hf_name = [name for name in results if name.startswith("HF")][0]
            for name, (cold, warm, ids) in results.items():
                vs_tiktoken = f"{speed[name] / speed['tiktoken']:.2f}x" if "tiktoken" in speed else "-"
                same = "reference" if name == "gptspec" else ("identical" if ids == baseline_ids else "DIFFERENT")
                print(f"{model:6} {name:22} {megabytes / cold:10.2f} {speed[name]:10.2f} {vs_tiktoken:>10} "
                      f"{speed[name] / speed[hf_name]:6.2f}x  {same} ({len(ids):,} tokens)")


if __name__ == "__main__":
    main()
