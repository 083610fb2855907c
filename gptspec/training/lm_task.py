"""The language-modelling task of `gptspec train`: documents -> token windows, the next-token loss on
either backend (data-parallel under msrun on MindSpore), held-out perplexity, and with --demo a few
samples at the end.  run.py runs it."""
from __future__ import annotations

import math

import numpy as np

from . import setup
from .run import Built, Task, data_parallel

DEMO_PROMPTS = ("The for statement", "A class definition")


class LanguageModelling(Task):
    command = "train"
    out_hint = "the run's folder (checkpoints, log.jsonl, loss.png)"

    def default_out(self, opts):
        return "gptspec-demo" if opts["demo"] else None

    def build(self, args, opts, session, say):
        checkpoint = start_state = None
        source = opts
        if args.resume:
            checkpoint, start_state = session.resume_point()
            source = dict(opts, model=None, config=None, weights=str(checkpoint), vocab=str(checkpoint),
                          train_tokenizer=None, n_layer=None, n_embd=None, n_head=None, n_ctx=None)
        train_docs, valid_docs = setup.load_documents(opts)
        setup.warn_about_files("train", opts)
        config, params, tokenizer = setup.build_model(source, train_docs, say)
        return Built(config=config, tokenizer=tokenizer, model={"params": params},
                     data={"train": train_docs, "valid": valid_docs}, checkpoint=checkpoint, start_state=start_state)

    def default_seq_len(self, opts, built):
        return min(1024, built.config.n_ctx)

    def encode(self, opts, built):
        return setup.build_windows(opts, built.config, built.tokenizer, built.data["train"], built.data["valid"])

    def default_steps(self, opts, train):
        return math.ceil((opts["epochs"] or self.default_epochs) * len(train) / opts["batch_size"])

    def identity(self, opts, free, built, train, valid):
        return {**super().identity(opts, free, built, train, valid),
                "data_sha256": setup.data_fingerprint(train, valid)}

    def check_resumed(self, folder, identity, built):
        super().check_resumed(folder, identity, built)
        if folder.identity()["data_sha256"] != identity["data_sha256"]:
            raise ValueError(f"--resume {folder.path}: the data files changed since the run began (their token "
                             f"windows differ); a resumed run must see the same data")

    def make_backend(self, opts, built, hyper, rank, world_size, *, recompute=False):
        from .objectives import LanguageModelling as Objective

        backend = setup.make_backend(opts, built.config, built.model["params"], hyper, Objective(), recompute=recompute)
        return data_parallel(backend, opts, rank, world_size)

    def announce(self, opts, prepared, say):
        config = prepared.built.config
        say(f"training {config.arch} ({config.n_layer} layers, n_embd {config.n_embd}, n_vocab {config.n_vocab}) "
            f"on {len(prepared.train)} windows of {opts['seq_len']} tokens, backend {prepared.backend.name}, "
            f"{opts['steps']} steps of {opts['batch_size']} rows")

    def report(self, summary, folder, opts, prepared, say):
        from .objectives import LOG_FLOAT_MAX
        from .checkpoint import LOG_FILE, PLOT_FILE, checkpoint_problem
        from .loop import perplexity_text, plot_losses

        if plot_losses(folder.path / LOG_FILE, folder.path / PLOT_FILE) is None:
            say("loss.png not drawn: matplotlib is not installed (pip install 'gptspec[plot]')")
        problem = checkpoint_problem(folder.path)
        where = f"latest checkpoint in {folder.path}" if problem is None else f"but {folder.path} is damaged: {problem}"
        say(f"trained to step {summary['steps']} in {summary['seconds']:.1f} s; {where}")
        before, after = [summary[k] and summary[k]["valid_loss"] for k in ("before", "after")]
        if before is not None and after is not None:
            say(f"held-out perplexity: {perplexity_text(before)} before, {perplexity_text(after)} after "
                f"(loss {before:.4f} -> {after:.4f} nats/token)")
        elif after is not None:
            say(f"held-out perplexity: {perplexity_text(after)} (loss {after:.4f} nats/token)")
        if after is not None and not after < LOG_FLOAT_MAX:
            say("the held-out loss exploded: the run diverged; lower --lr, or clip with --max-grad-norm")
        if opts["demo"]:
            demo_samples(prepared.built.config, prepared.backend.params_numpy(), prepared.built.tokenizer,
                         opts["seed"], say)


def demo_samples(config, params, tokenizer, seed: int, say) -> None:
    """--demo: a few continuations of DEMO_PROMPTS by the trained model (the spec's sampler)."""
    import ref_numpy

    for i, prompt in enumerate(DEMO_PROMPTS):
        ids = tokenizer.encode_ordinary(prompt)
        out = ref_numpy.generate(config, params, np.array(ids), 48, top_k=20, temperature=0.8, seed=seed + i,
                                 eos_id=tokenizer.eot_token)
        text = tokenizer.decode([t for t in out.tolist() if t != tokenizer.eot_token])
        say(f"--- sample {i + 1} ---\n{text}")
