"""The classification task of `gptspec finetune` (GPT-1's four: classify, entail, similar, choice):
labelled rows -> encoded examples, GPT-1's head and its combined loss (task + lm_coef x LM),
held-out accuracy, and the best checkpoint kept (DIR/best.json).  run.py runs it.

Both backends fine-tune every task (objectives.Classification); MindSpore also data-parallel under
msrun, where the loss's means take the global counts (examples, LM targets)."""
from __future__ import annotations

import math

from . import setup
from .checkpoint import BEST_FILE
from .run import Built, Task, data_parallel

TASKS = ("classify", "entail", "similar", "choice")
DEFAULT_EPOCHS = 3


class Classification(Task):
    command = "finetune"
    default_epochs = DEFAULT_EPOCHS

    def build(self, args, opts, session, say):
        import ref_numpy

        from .classify_backend import load_classifier
        from .classify_data import read_task_rows, special_ids, task_labels
        from .data import Document

        task = opts["task"]
        train_rows = read_task_rows(task, opts["data"], opts, argument="--data")
        valid_rows = read_task_rows(task, opts["valid"], opts, argument="--valid") if opts["valid"] else None
        labels = task_labels(task, train_rows)
        setup.warn_about_files("finetune", opts)
        checkpoint = start_state = None
        if args.resume:
            checkpoint, start_state = session.resume_point()
            config, params, head, saved = load_classifier(checkpoint)
            tokenizer = ref_numpy.Tokenizer.from_dir(checkpoint)
            special = saved["special_tokens"]
            if saved.get("task", "classify") != task:
                raise ValueError(f"--resume {session.folder.path}: the checkpoint was fine-tuned for --task "
                                 f"{saved.get('task')}, not {task}")
        else:
            documents = [Document("\n".join(texts)) for texts, _, _ in train_rows]
            config, params, tokenizer = setup.build_model(opts, documents, say)
            special = special_ids(tokenizer.n_vocab)
            tokenizer = type(tokenizer)({**tokenizer.vocab, **special}, tokenizer.ranks, name=tokenizer.name)
            params = ref_numpy.add_tokens(params, len(special), seed=opts["seed"])
            config = config.replace(n_vocab=tokenizer.n_vocab)
            head = (ref_numpy.init_choice_head(config, opts["seed"]) if task == "choice" else
                    ref_numpy.init_classifier(config, len(labels), opts["seed"]))
        return Built(config=config, tokenizer=tokenizer,
                     model={"params": params, "head": head, "special": special, "labels": labels},
                     data={"train": train_rows, "valid": valid_rows}, checkpoint=checkpoint, start_state=start_state)

    def default_seq_len(self, opts, built):
        from .classify_data import longest_row

        rows = built.data["train"] + (built.data["valid"] or [])
        return min(built.config.n_ctx, longest_row(opts["task"], rows, built.tokenizer))

    def encode(self, opts, built):
        from .classify_data import encode_task

        def encode(rows, argument):
            return encode_task(opts["task"], rows, built.tokenizer, built.model["special"], built.model["labels"],
                               seq_len=opts["seq_len"], argument=argument)

        train = encode(built.data["train"], "--data")
        valid = encode(built.data["valid"], "--valid") if built.data["valid"] else None
        return train, valid, train.notes + (valid.notes if valid else [])

    def default_steps(self, opts, train):
        return math.ceil((opts["epochs"] or self.default_epochs) * steps_per_epoch(opts, train))

    def identity(self, opts, free, built, train, valid):
        return {**super().identity(opts, free, built, train, valid), "labels": built.model["labels"]}

    def make_backend(self, opts, built, hyper, rank, world_size, *, recompute=False):
        from .objectives import Classification

        model = built.model
        objective = Classification(opts["task"], opts["lm_coef"], model["labels"], model["special"])
        backend = setup.make_backend(opts, built.config, model["params"], hyper, objective, model["head"],
                                     recompute=recompute)
        return data_parallel(backend, opts, rank, world_size)

    def announce(self, opts, prepared, say):
        config, labels, task = prepared.built.config, prepared.built.model["labels"], opts["task"]
        what = f"{len(labels)} answers each" if task == "choice" else f"{len(labels)} labels {labels}"
        say(f"fine-tuning {config.arch} ({config.n_layer} layers) for {task} on {len(prepared.train)} examples, "
            f"{what}, {opts['steps']} steps of {opts['batch_size']}, backend {prepared.backend.name}")

    def default_eval_every(self, opts, prepared):
        return steps_per_epoch(opts, prepared.train)

    def keep_best(self, prepared):
        return "valid_accuracy" if prepared.valid else None

    def report(self, summary, folder, opts, prepared, say):
        say(f"fine-tuned to step {summary['steps']} in {summary['seconds']:.1f} s; latest checkpoint in {folder.path}")
        if summary["before"] and summary["after"]:
            say(f"held-out accuracy: {summary['before']['valid_accuracy']:.3f} before, "
                f"{summary['after']['valid_accuracy']:.3f} after")
        best = folder.path / BEST_FILE
        if best.is_file():
            say(f"best held-out accuracy kept: {best.read_text().strip()}")


def steps_per_epoch(opts: dict, train) -> int:
    return max(1, math.ceil(len(train) / opts["batch_size"]))
