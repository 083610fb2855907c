"""gptspec classify: label texts with a model fine-tuned by `gptspec finetune`.

Each TEXT (or line of --file) is, by the model's task: classify, a text; entail, premise<TAB>hypothesis;
similar, text_a<TAB>text_b; choice, context<TAB>answer<TAB>answer... (prints the right answer's index
and the probabilities over the answers)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("classify", help="label texts with a fine-tuned classifier",
                                   description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", metavar="DIR", required=True, help="the fine-tuning run's folder (or a "
                                                                         "checkpoints/step-N inside it)")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    parser.add_argument("--file", metavar="FILE", help="classify each non-blank line of FILE")
    parser.set_defaults(func=run)


def run(args) -> int:
    from gptspec.training.classify_infer import classify_texts
    from gptspec.training.data import read_text_file

    texts = list(args.texts)
    if args.file:
        texts += [line for line in read_text_file(Path(args.file), "--file").splitlines() if line.strip()]
    if not texts:
        raise ValueError("give texts to classify as arguments or with --file FILE")
    results, notes = classify_texts(args.weights, texts)
    for note in notes:
        print(note, file=sys.stderr)
    for text, (labels, p) in zip(texts, results):
        best = int(p.argmax())
        shown = text.replace("\t", " | ")
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        print(f"{labels[best]}\t" + "  ".join(f"{label}={q:.3f}" for label, q in zip(labels, p)) + f"\t{shown}")
    return 0
