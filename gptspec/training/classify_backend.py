"""A fine-tuned classifier's files and the spec's logits for it.

    DIR/classifier_head.npz   the head's w and b          (objectives.Classification.write_files)
    DIR/labels.json           task, label set, special tokens' ids, lm_coef

`load_classifier` reads a fine-tuning run's folder back (`gptspec classify`, --resume);
`task_logits` is the spec's forward for each of GPT-1's four tasks.  The training itself is
backends.py's, on objectives.Classification.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

import ref_numpy

HEAD_FILE = "classifier_head.npz"
LABELS_FILE = "labels.json"


def task_logits(task: str, config, params: dict, head: dict, ids, positions, attention_mask) -> np.ndarray:
    """The spec's logits of a fine-tuned model for `task`: [n, n_classes], or for choice [n, K] answer
    scores.  ids, attention_mask [n, L] (classify, entail) or [n, K, L] (similar: K = 2 orders;
    choice: K = answers); positions [n] or [n, K] (each sequence's classify token)."""
    if task == "similar":
        return ref_numpy.similarity_logits(config, params, head, ids[:, 0], ids[:, 1], positions[:, 0],
                                           positions[:, 1], attention_mask_ab=attention_mask[:, 0],
                                           attention_mask_ba=attention_mask[:, 1])
    if task == "choice":
        n, k, length = ids.shape
        return ref_numpy.choice_logits(config, params, head, ids.reshape(n * k, length), positions.reshape(n * k), k,
                                       attention_mask=attention_mask.reshape(n * k, length))
    return ref_numpy.classifier_logits(config, params, head, ids, positions, attention_mask=attention_mask)


def load_classifier(folder) -> tuple:
    """(config, params, head, {"labels", "special_tokens", "lm_coef"}) of a fine-tuned checkpoint."""
    import weights
    from gptspec.common import checked_weights

    if not Path(folder).is_dir():
        raise ValueError(f"--weights {folder} does not exist" if not Path(folder).exists() else
                         f"--weights {folder} is a file; give the fine-tuning run's folder")
    folder = checked_weights(Path(folder))
    for name in (HEAD_FILE, LABELS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not a fine-tuned classifier: {name} is missing (make one with "
                             f"`gptspec finetune`)")
    config, params = weights.load(folder)
    try:
        with np.load(folder / HEAD_FILE, allow_pickle=False) as stored:
            head = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{folder / HEAD_FILE} is damaged ({type(error).__name__}: {error})") from None
    try:
        saved = json.loads((folder / LABELS_FILE).read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not {"labels", "special_tokens"} <= set(saved):
            raise ValueError("no 'labels' and 'special_tokens' in it")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{folder / LABELS_FILE} is damaged ({error})") from None
    return config, params, head, saved

