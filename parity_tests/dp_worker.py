"""The training script test_ms_data_parallel.py runs, under msrun (N ranks) or as a plain process.

    msrun --worker_num=2 --local_worker_num=2 --master_port=P --log_dir=LOGS --join=True \\
          --cluster_time_out=120 parity_tests/dp_worker.py OUT [--rows 4]
    python parity_tests/dp_worker.py OUT                      # one process: the reference

Every rank builds the same tiny model and global batch, keeps its contiguous shard of the rows,
takes the gradients at the start (grads_numpy) and makes 2 AdamW steps; rank r writes
OUT/rank-r.npz: grad/<name>, param/<name> (after the steps), loss, grad_norm, skipped per step.
A rank / world-size problem prints one line `dp_worker: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# Padded row lengths (tokens before padding; length = T + 1): rank 0 of 2 gets rows 0-1, rank 1
# rows 2-3, so rank 0 has 8 + 7 = 15 targets and rank 1 has 2 + 1 = 3 -- a per-rank mean would
# weigh rank 1's 3 tokens like rank 0's 15.
ROW_LENGTHS = (9, 8, 3, 2)
LENGTH = 9
N_STEPS = 2
# AdamW eps = 1 makes an update Lipschitz in the gradients (|d update / d g| <= 3 lr / eps, see
# tolerances.data_parallel_param_bound), so two correct runs whose gradients differ by rounding stay
# close.  With eps = 1e-8 the first update is lr x sign(g), and an element within rounding of 0
# can flip by 2 lr in either run alone.
TRAINER_SETTINGS = dict(lr=0.5, eps=1.0, betas=(0.9, 0.999), weight_decay=0.1, max_grad_norm=0.05,
                        warmup_steps=0, loss_scale=None)


def tiny_config():
    import ref_numpy

    return ref_numpy.GPTConfig(arch="gpt2", n_vocab=48, n_ctx=16, n_embd=24, n_head=3, n_layer=2)


def tiny_params(config):
    from gptspec.parity import probe_params

    return probe_params(config, 7, dtype=np.float32)


def global_batch(config, rows: int):
    """(inputs, targets, attention_mask) [rows, LENGTH - 1], right-padded, ROW_LENGTHS repeated."""
    from ref_numpy.data import pad_or_truncate, shift_targets

    rng = np.random.default_rng(11)
    lengths = [ROW_LENGTHS[i % len(ROW_LENGTHS)] for i in range(rows)]
    ids, mask = pad_or_truncate([rng.integers(0, config.n_vocab, n) for n in lengths], LENGTH, 0, side="right")
    return shift_targets(ids, mask)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=len(ROW_LENGTHS), help="rows of the global batch")
    parser.add_argument("--mode", default="graph", choices=("graph", "pynative"))
    args = parser.parse_args(argv)

    from ms_backend.distributed import DataParallelError, DataParallelTrainer, init_data_parallel, shard
    from ms_backend.train import Trainer
    from ref_numpy import flatten_params

    try:
        topology = init_data_parallel()
        config = tiny_config()
        batch = [shard(array, topology) for array in global_batch(config, args.rows)]
        trainer = DataParallelTrainer(Trainer(config, tiny_params(config), mode=args.mode, **TRAINER_SETTINGS),
                                      topology)
        _, grads, _ = trainer.grads_numpy(*batch)
        results = [trainer.step(*batch) for _ in range(N_STEPS)]
    except DataParallelError as error:
        print(f"dp_worker: error: {error}", file=sys.stderr, flush=True)
        return 2
    arrays = {f"grad/{k}": v for k, v in flatten_params(grads).items()}
    arrays.update({f"param/{k}": v for k, v in flatten_params(trainer.params_numpy()).items()})
    arrays.update(loss=np.array([r.loss for r in results]), grad_norm=np.array([r.grad_norm for r in results]),
                  skipped=np.array([r.skipped for r in results]), world_size=np.array(topology.world_size))
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"rank-{topology.rank}.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
