"""Building a run from its options: the documents, the tokenizer, the model, the windows, the backend.

`opts` is the plain dict of run options that run.json stores (gptspec/commands/train.py parses
them), so a resumed run rebuilds exactly what the first one built.
"""
from __future__ import annotations

import hashlib
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

import ref_numpy

from .data import Document, TokenWindows, make_windows, read_documents, tokenize

DEMO_SOURCE = "pydoc_data.topics"


# -- documents ------------------------------------------------------------------------------------
def demo_documents() -> tuple[list[Document], list[Document]]:
    """Python's own reference-manual topics (shipped with CPython): every 10th topic is held out."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    docs = [Document(topics[name], source=f"{DEMO_SOURCE}[{name!r}]") for name in names]
    return [d for i, d in enumerate(docs) if i % 10 != 5], [d for i, d in enumerate(docs) if i % 10 == 5]


def warn_about_files(command: str, opts: dict) -> None:
    """data.file_warnings on --data and --valid, one stderr line each."""
    import sys

    from .data import file_warnings

    for warning in file_warnings(opts.get("data"), opts.get("valid")):
        print(f"gptspec {command}: warning: {warning}", file=sys.stderr)


def load_documents(opts: dict) -> tuple[list[Document], list[Document] | None]:
    """(training documents, held-out documents or None)."""
    if opts["demo"]:
        return demo_documents()
    train = read_documents(opts["data"], split_on_blank_lines=opts["split_on_blank_lines"], argument="--data")
    valid = (read_documents(opts["valid"], split_on_blank_lines=opts["split_on_blank_lines"], argument="--valid")
             if opts["valid"] else None)
    return train, valid


# -- tokenizer and model --------------------------------------------------------------------------
def build_model(opts: dict, documents: list[Document], say) -> tuple[ref_numpy.GPTConfig, dict, ref_numpy.Tokenizer]:
    """(config, float32 params, tokenizer) from --model / --weights / --config and --vocab / --train-tokenizer."""
    sources = [name for name in ("model", "weights", "config") if opts[name]]
    if len(sources) != 1:
        raise ValueError("give exactly one of --model NAME (published weights), --weights DIR (a checkpoint) or "
                         f"--config NAME (train from scratch); got {', '.join('--' + s for s in sources) or 'none'}")
    overrides = {field: opts[field] for field in ("n_layer", "n_embd", "n_head", "n_ctx") if opts[field] is not None}
    if opts["config"] is None:
        given = [f"--{f.replace('_', '-')}" for f in overrides] + (["--train-tokenizer"] if opts["train_tokenizer"] else [])
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --config (a new model); a loaded model keeps its sizes "
                             f"and vocabulary")
        import weights
        from gptspec.common import checked_weights

        if opts["weights"]:
            checked_weights(opts["weights"])
        config, params = weights.load(opts["model"] or opts["weights"])
        tokenizer = _tokenizer_for(opts, weights.cache.resolve(opts["model"] or opts["weights"]))
    else:
        if opts["vocab"] and opts["train_tokenizer"]:
            raise ValueError("--vocab DIR and --train-tokenizer N exclude each other: give one tokenizer")
        if not opts["vocab"] and not opts["train_tokenizer"]:
            raise ValueError("--config (a new model) needs a tokenizer: either --vocab DIR or --train-tokenizer N")
        if opts["vocab"]:
            tokenizer = ref_numpy.Tokenizer.from_dir(opts["vocab"])
        else:
            text = "\n".join((d.prompt + d.text) for d in documents)
            say(f"learning a byte-level BPE of {opts['train_tokenizer']} tokens on {len(text):,} characters ...")
            tokenizer = ref_numpy.train_bpe(text, opts["train_tokenizer"], name="trained-bpe")
        config = ref_numpy.GPTConfig.from_name(opts["config"]).replace(n_vocab=tokenizer.n_vocab, **overrides)
        params = ref_numpy.init_params(config, opts["seed"], dtype=np.float32)
    if tokenizer.n_vocab != config.n_vocab:
        raise ValueError(f"the tokenizer {tokenizer.name} has {tokenizer.n_vocab} ids but the model has "
                         f"n_vocab={config.n_vocab}")
    return config, ref_numpy.cast_params(params, np.float32), tokenizer


def _tokenizer_for(opts: dict, model_folder) -> ref_numpy.Tokenizer:
    folder = opts["vocab"] or model_folder
    try:
        return ref_numpy.Tokenizer.from_dir(folder)
    except FileNotFoundError as error:
        raise ValueError(f"training needs the model's tokenizer: pass --vocab DIR ({error})") from None


def write_tokenizer(tokenizer: ref_numpy.Tokenizer, folder: Path) -> None:
    """The tokenizer's files beside the weights, so Tokenizer.from_dir(checkpoint) reads it:
    encoder.json + vocab.bpe (GPT-2 style), vocab.json + merges.txt (GPT-1: '</w>' marks it)."""
    from ref_numpy.bpe_gpt2 import GPT2Tokenizer

    if isinstance(tokenizer, GPT2Tokenizer):
        ref_numpy.save_bpe(tokenizer, folder)
        return
    import json

    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.__getitem__)
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


# -- windows --------------------------------------------------------------------------------------
def checkpoint_writer(folder, backend, tokenizer, order):
    """save(step) for the loop: the backend's files and the tokenizer into the run folder, with the
    data position (the batch order's state) so a resumed run reads the batches it would have read."""
    def save(step: int) -> None:
        def write_files(target: Path) -> None:
            backend.write_files(target)
            write_tokenizer(tokenizer, target)
        folder.save(step, write_files, {"data": order.state(), "backend": backend.name})
    return save


def build_windows(opts: dict, config, tokenizer, train_docs, valid_docs) -> tuple[TokenWindows, TokenWindows | None, list[str]]:
    """(training windows, held-out windows or None, notes). Without --valid the last --valid-fraction
    of the training windows is held out."""
    eos = getattr(tokenizer, "eot_token", None)
    pad = eos if eos is not None else 0

    def windows(docs, argument):
        tokenized, notes = tokenize(docs, tokenizer, loss_on=opts["loss_on"])
        made = make_windows(tokenized, seq_len=opts["seq_len"], pack=opts["pack"], eos_id=eos, pad_id=pad)
        return made, [f"{argument}: {note}" for note in notes + made.notes]

    train, notes = windows(train_docs, "--data" if not opts["demo"] else DEMO_SOURCE)
    if valid_docs is not None:
        valid, valid_notes = windows(valid_docs, "--valid" if not opts["demo"] else f"{DEMO_SOURCE} (held out)")
        return train, valid, notes + valid_notes
    n_valid = int(round(len(train) * opts["valid_fraction"]))
    if n_valid == 0:
        return train, None, notes + ["no held-out data (--valid FILES or --valid-fraction): no evaluation"]
    if n_valid >= len(train):
        raise ValueError(f"--valid-fraction {opts['valid_fraction']} leaves no training windows of {len(train)}")
    cut = len(train) - n_valid
    held = TokenWindows(*train.rows(slice(cut, None)), notes=[])
    kept = TokenWindows(*train.rows(slice(0, cut)), notes=train.notes)
    return kept, held, notes + [f"held out the last {n_valid} of {len(train)} windows for evaluation "
                                f"(--valid-fraction {opts['valid_fraction']})"]


def data_fingerprint(train: TokenWindows, valid: TokenWindows | None) -> str:
    """sha256 of the token windows: --resume refuses data files that changed since the run began."""
    digest = hashlib.sha256()
    for windows in (train, valid):
        if windows is not None:
            for array in (windows.inputs, windows.targets, windows.attention_mask):
                digest.update(b"-" if array is None else np.ascontiguousarray(array, np.int64).tobytes())
    return digest.hexdigest()


# -- backends -------------------------------------------------------------------------------------
def default_backend() -> str:
    """MindSpore (graph mode) when it and its Trainer are installed, else the NumPy spec."""
    try:
        import ms_backend
    except ImportError:
        return "numpy"
    return "mindspore" if hasattr(ms_backend, "Trainer") else "numpy"


def check_amp_backend(opts: dict) -> None:
    """--amp O1..O3 runs on MindSpore only: the NumPy spec trains in float32."""
    if opts["backend"] == "numpy" and opts["amp"] != "O0":
        raise ValueError(f"--amp {opts['amp']} needs --backend mindspore (the NumPy spec trains in float32)")


def make_backend(opts: dict, config, params, hyper, objective, head=None, *, recompute: bool = False):
    """The --backend's trainer of `objective` (objectives.py), the model and head as given;
    recompute: --recompute (MindSpore only)."""
    from .backends import NumpyBackend

    check_amp_backend(opts)
    if opts["backend"] == "numpy":
        if recompute:
            raise ValueError("--recompute needs --backend mindspore: the NumPy spec's backward reads the "
                             "activations its forward kept (ref_numpy.train_forward's tape)")
        return NumpyBackend(config, params, hyper, objective, head)
    from .ms_backend_adapter import MindSporeBackend

    return MindSporeBackend(config, params, hyper, objective, head, amp_level=opts["amp"], recompute=recompute)


# -- the run folder -------------------------------------------------------------------------------
class RunSession:
    """The run folder's side of `train` and `finetune`: with --resume the folder is locked first
    and its newest complete checkpoint found; a new run only checks --out at first, and locks and
    starts the folder in `begin`, once every option and file has been checked. Only the writing
    rank (rank 0) locks and writes."""

    def __init__(self, folder, args, writer: bool, stack: ExitStack, say):
        self.folder, self.args, self.writer, self.stack, self.say = folder, args, writer, stack, say

    def resume_point(self):
        """(checkpoint folder, its train_state) to resume from: DIR, or its newest intact checkpoints/step-N."""
        checkpoint, state, note = self.folder.latest()
        if note:
            self.say(note)
        return checkpoint, state

    def begin(self, identity: dict, checkpoint) -> None:
        """The first write. A resumed run whose DIR copy was damaged gets it back from `checkpoint`
        (so DIR holds the latest checkpoint again); a new run locks and starts DIR."""
        if not self.writer:
            return
        if self.args.resume:
            if checkpoint != self.folder.path:
                self.folder.repair_from(checkpoint)
                self.say(f"copied {checkpoint} back into {self.folder.path}")
            return
        self.stack.enter_context(self.folder.locked("--out", self.say))
        try:
            self.folder.start(identity, overwrite=bool(self.args.overwrite))
        except BaseException:
            self.folder.abandon_if_unsaved()
            raise


@contextmanager
def run_folder_session(folder, args, *, writer: bool, say=print):
    """A RunSession for the command's body; the lock (if taken) is released at the end."""
    with ExitStack() as stack:
        if writer and args.resume:
            folder.identity()       # a clear error for a folder that is no run, before creating .lock in it
            stack.enter_context(folder.locked("--resume", say))
        elif writer:
            folder.check_start(overwrite=bool(args.overwrite))
        yield RunSession(folder, args, writer, stack, say)
