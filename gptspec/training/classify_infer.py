"""`gptspec classify`: a fine-tuned checkpoint's probabilities on texts (moved from commands/finetune.py)."""
from __future__ import annotations

import numpy as np


TEXT_FORMS = {"classify": "a text", "entail": "'premise<TAB>hypothesis'", "similar": "'text_a<TAB>text_b'",
              "choice": "'context<TAB>answer<TAB>answer...' (2 answers or more)"}


def classify_texts(folder, texts: list[str]) -> tuple[list[tuple[list[str], np.ndarray]], list[str]]:
    """([(names, probabilities)] per text, truncation notes) of a fine-tuned checkpoint on `texts`.
    An entail or similar model takes 'first<TAB>second'; a choice model 'context<TAB>answer<TAB>...'
    with any number >= 2 of answers (its head scores each answer alone), and its names are the answer
    indices."""
    import ref_numpy
    from gptspec.training.backends import Hyper
    from gptspec.training.classify_backend import NumpyClassifierBackend, load_classifier
    from gptspec.training.classify_data import encode_task, longest_row

    config, params, head, saved = load_classifier(folder)
    tokenizer = ref_numpy.Tokenizer.from_dir(folder)
    labels, task = saved["labels"], saved.get("task", "classify")
    rows = []
    for i, text in enumerate(texts):
        parts = tuple(text.split("\t")) if task != "classify" else (text,)
        if (task in ("entail", "similar") and len(parts) != 2) or (task == "choice" and len(parts) < 3):
            raise ValueError(f"text {i + 1}: a {task} model takes {TEXT_FORMS[task]}, got {text!r}")
        rows.append((parts, "0" if task == "choice" else labels[0], f"text {i + 1}"))
    seq_len = min(config.n_ctx, longest_row(task, rows, tokenizer))
    # choice examples may differ in their number of answers: each is encoded on its own
    groups = [[row] for row in rows] if task == "choice" else [rows]
    results, notes = [], []
    for group in groups:
        names = [str(k) for k in range(len(group[0][0]) - 1)] if task == "choice" else labels
        encoded = encode_task(task, group, tokenizer, saved["special_tokens"], names, seq_len=seq_len,
                              argument="text")
        notes += [note for note in encoded.notes if "lost the tail" in note]
        backend = NumpyClassifierBackend(config, params, head, Hyper(lr=1.0, total_steps=1), lm_coef=0.0,
                                         labels=labels, special=saved["special_tokens"], task=task)
        results += [(names, p) for p in backend.probabilities(encoded.ids, encoded.positions, encoded.attention_mask)]
    return results, notes
