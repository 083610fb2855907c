"""`gptspec classify`: a fine-tuned checkpoint's answer probabilities on texts, for inference only.

The model and its head are loaded once, in float32 as fine-tuning trained them, and run through
the spec's forward (classify_backend.task_logits); no optimizer state or training backend is built."""
from __future__ import annotations

import numpy as np

TEXT_FORMS = {"classify": "a text", "entail": "'premise<TAB>hypothesis'", "similar": "'text_a<TAB>text_b'",
              "choice": "'context<TAB>answer<TAB>answer...' (2 answers or more)"}


class FineTunedClassifier:
    """A checkpoint of `gptspec finetune` (load_classifier): config, float32 params and head, its
    tokenizer, task, labels and special tokens."""

    def __init__(self, folder):
        import ref_numpy

        from .classify_backend import load_classifier

        self.config, params, head, saved = load_classifier(folder)
        self.params = ref_numpy.cast_params(params, np.float32)
        self.head = {name: np.asarray(value, np.float32) for name, value in head.items()}
        self.tokenizer = ref_numpy.Tokenizer.from_dir(folder)
        self.labels, self.task, self.special = saved["labels"], saved.get("task", "classify"), saved["special_tokens"]

    def rows(self, texts: list[str]) -> list[tuple]:
        """classify_data's rows of `texts` (a placeholder label: nothing is trained on it); an entail
        or similar text is 'first<TAB>second', a choice text 'context<TAB>answer<TAB>...'."""
        rows = []
        for i, text in enumerate(texts):
            parts = tuple(text.split("\t")) if self.task != "classify" else (text,)
            if (self.task in ("entail", "similar") and len(parts) != 2) or (self.task == "choice" and len(parts) < 3):
                raise ValueError(f"text {i + 1}: a {self.task} model takes {TEXT_FORMS[self.task]}, got {text!r}")
            rows.append((parts, "0" if self.task == "choice" else self.labels[0], f"text {i + 1}"))
        return rows

    def classify(self, texts: list[str]) -> tuple[list[tuple[list[str], np.ndarray]], list[str]]:
        """([(names, probabilities)] per text, truncation notes).  A choice model scores any number
        >= 2 of answers (its head scores each answer alone); its names are the answer indices."""
        from .classify_backend import task_logits
        from .objectives import probabilities
        from .classify_data import encode_task, longest_row

        rows = self.rows(texts)
        seq_len = min(self.config.n_ctx, longest_row(self.task, rows, self.tokenizer))
        # choice examples may differ in their number of answers: each is encoded on its own
        groups = [[row] for row in rows] if self.task == "choice" else [rows]
        results, notes = [], []
        for group in groups:
            names = [str(k) for k in range(len(group[0][0]) - 1)] if self.task == "choice" else self.labels
            encoded = encode_task(self.task, group, self.tokenizer, self.special, names, seq_len=seq_len,
                                  argument="text")
            notes += [note for note in encoded.notes if "lost the tail" in note]
            logits = task_logits(self.task, self.config, self.params, self.head, encoded.ids, encoded.positions,
                                 encoded.attention_mask)
            results += [(names, p) for p in probabilities(logits)]
        return results, notes


def classify_texts(folder, texts: list[str]) -> tuple[list[tuple[list[str], np.ndarray]], list[str]]:
    """FineTunedClassifier(folder).classify(texts)."""
    return FineTunedClassifier(folder).classify(texts)
