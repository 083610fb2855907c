"""The training layer of `gptspec train`, `finetune` and `classify`, above the two backends.

    run.py        the one run body of `train` and `finetune`: options (options.py) -> run folder ->
                  data, model and backend -> the loop -> the report
    lm_task.py    the language-modelling task (`train`); classify_task.py GPT-1's four
                  classification tasks (`finetune`); classify_infer.py `classify`'s inference
    loop.py       the loop, written once; backends.py what a backend supplies, and the NumPy spec's
    data.py, classify_data.py   files -> token windows / encoded examples and their batches
    checkpoint.py the run folder and atomic checkpoints; setup.py building a run from its options

The training math itself is ref_numpy's (loss_and_grads, adamw_step, ...) or ms_backend's (Trainer)."""
