"""`gptspec train`'s machinery above the backends: data files and batches (data.py), the run folder
and atomic checkpoints (checkpoint.py), the loop (loop.py), the backends' common interface
(backends.py) and building a run from its options (setup.py). The training math itself is
ref_numpy's (loss_and_grads, adamw_step, ...) or ms_backend's (Trainer)."""
