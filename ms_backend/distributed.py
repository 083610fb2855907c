"""Data parallel training with MindSpore's own launcher, msrun: N processes, one model each, one
global batch split between them, and exactly what one process computes on the whole batch.

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=LOGS \\
          --join=True --cluster_time_out=120 train.py

msrun starts a scheduler and N workers, each running the same script, and tells them their place
through environment variables (MS_ROLE, MS_WORKER_NUM, MS_SCHED_HOST, MS_SCHED_PORT,
MS_TOPO_TIMEOUT = --cluster_time_out).  A plain `python train.py` has none of them:
`init_data_parallel` then returns rank 0 of 1 and nothing communicates.

Why the loss is normalised globally.  The spec's loss is the mean over the batch's target tokens,

    loss = sum over every non-ignored target t of -log p(t)  /  n_targets(whole batch).

If each rank took the mean of its own shard and the ranks then averaged those means, a rank whose
rows hold more padding would count its tokens more -- a different loss and different gradients.
So every rank divides its shard's token-loss SUM by the GLOBAL count (the ranks' counts summed with
one AllReduce before the step); the gradients of those partial losses are then SUMMED over the
ranks (nn.DistributedGradReducer, mean=False) -- and a sum of partial sums over the same
denominator is the whole batch's mean, whatever the padding.  After the reduction every rank holds
the same gradients, so the global norm (clipping), the finite check (loss scaling) and the AdamW
update are the same everywhere and the replicas stay identical.  Only the summation order differs
from one process: rounding, bounded in gptspec.tolerances.

The scheduler process runs the script too: inside `mindspore.communication.init()` it serves the
cluster and exits, so nothing after `init_data_parallel()` runs there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# What msrun exports to every process it starts (mindspore/parallel/cluster/process_entity/_api.py).
MSRUN_ROLE, MSRUN_WORKERS = "MS_ROLE", "MS_WORKER_NUM"
MSRUN_HOST, MSRUN_PORT, MSRUN_TIMEOUT = "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_TOPO_TIMEOUT"
COUNT_SPLIT = 4096  # global_count sends a token count in two float32 parts


class DataParallelError(ValueError):
    """A rank / world-size problem, said in one line (every rank raises the same one).  A ValueError:
    the job's set-up (msrun's options, the batch) is wrong, and the CLI prints such errors in one line."""


@dataclass(frozen=True)
class Topology:
    """This process's place: rank in [0, world_size).  One process is rank 0 of 1."""
    rank: int = 0
    world_size: int = 1

    @property
    def writes_files(self) -> bool:
        """Only rank 0 writes logs and checkpoints (the replicas are identical)."""
        return self.rank == 0


def under_msrun(environ=None) -> bool:
    """Was this process started by msrun (as a worker or as its scheduler)?"""
    return MSRUN_ROLE in (os.environ if environ is None else environ)


def msrun_world_size(environ=None) -> int:
    """The number of workers msrun was asked for (--worker_num), checked."""
    environ = os.environ if environ is None else environ
    text = environ.get(MSRUN_WORKERS)
    if text is None:
        raise DataParallelError(f"{MSRUN_ROLE} is set but {MSRUN_WORKERS} is not: start the job with msrun "
                                f"--worker_num=N, or unset {MSRUN_ROLE} to train in one process")
    try:
        world = int(text)
    except ValueError:
        world = 0
    if world < 1:
        raise DataParallelError(f"{MSRUN_WORKERS}={text!r}: msrun's --worker_num must be a positive integer")
    return world


def init_data_parallel() -> Topology:
    """Join the msrun cluster and switch MindSpore to data parallel; rank 0 of 1 outside msrun.

    Raises DataParallelError (one line) when the cluster cannot be built within msrun's
    --cluster_time_out (a worker missing, a port taken, another job's scheduler) or when the
    cluster's size is not the one msrun announced."""
    if not under_msrun():
        return Topology()
    world = msrun_world_size()
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()  # the backend follows the device: mccl on CPU, hccl on Ascend, nccl on GPU
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if os.environ.get(MSRUN_ROLE) == "MS_SCHED":  # the scheduler outlived its workers
            raise DataParallelError(f"msrun's scheduler: a worker of {world} failed or timed out (see the "
                                    f"worker logs in msrun's --log_dir): {first_line}") from None
        raise DataParallelError(
            f"could not join the msrun cluster of {world} workers (scheduler "
            f"{os.environ.get(MSRUN_HOST)}:{os.environ.get(MSRUN_PORT)}) within msrun's --cluster_time_out="
            f"{os.environ.get(MSRUN_TIMEOUT)} s: {first_line}") from None
    rank, size = get_rank(), get_group_size()
    if size != world:
        raise DataParallelError(f"the msrun cluster has {size} ranks but {MSRUN_WORKERS}={world}")
    # gradients_mean=False: the gradients are summed, each rank's loss already carries the global
    # 1 / n_targets (see the module docstring).
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=False,
                                 device_num=size)
    return Topology(rank, size)


def check_global_batch(rows: int, topology: Topology, *, what: str = "the global batch") -> int:
    """Rows per rank, or a one-line error when `rows` does not split evenly over the ranks."""
    if rows % topology.world_size or rows < topology.world_size:
        multiple = "" if rows < topology.world_size else f" (use a multiple of {topology.world_size})"
        raise DataParallelError(f"{what} has {rows} rows, which does not split evenly over "
                                f"{topology.world_size} ranks (msrun --worker_num={topology.world_size}){multiple}")
    return rows // topology.world_size


def shard(array, topology: Topology):
    """This rank's contiguous share of a global batch's rows: rows [r * B/N, (r + 1) * B/N).
    None stays None (no attention mask)."""
    if array is None:
        return None
    per_rank = check_global_batch(len(array), topology)
    return array[topology.rank * per_rank:(topology.rank + 1) * per_rank]


class DataParallelTrainer:
    """An ms_backend.Trainer run on this rank's shard of each global batch.

    `step(*batch)` / `accumulate_step(micro_batches)` take THIS RANK's rows (`shard` cuts them from
    the global batch), in the Trainer's objective's arguments; the result is the global batch's:
    loss, gradient norm, skipped.  The loss is normalised by the global totals (every rank's
    targets, examples), and with dropout each rank keeps its rows of the masks one process would
    draw for the whole micro-batch (Trainer._dropout_masks): 2 ranks compute what 1 process does.
    Everything else (params_numpy, save, resume, model, step_count, ...) is the wrapped Trainer's.
    Wrap the Trainer before its first step: the gradient all-reduce is compiled into the step."""

    def __init__(self, trainer, topology: Topology):
        self.trainer, self.topology = trainer, topology
        self._sum = None
        if topology.world_size > 1:
            from mindspore import nn, ops

            # Trainer.reduce_grads is applied to the (scaled) gradients before anything reads them.
            trainer.reduce_grads = nn.DistributedGradReducer(trainer.optimizer.parameters, mean=False,
                                                             degree=topology.world_size)
            self._sum = ops.AllReduce(ops.ReduceOp.SUM)

    def __getattr__(self, name):
        return getattr(self.trainer, name)

    def _all_sum(self, values):
        """Element-wise sum over the ranks of a few float32 numbers (AllReduce on CPU takes
        float16/float32 only)."""
        values = np.asarray(values, np.float32)
        if self._sum is None:
            return values
        from mindspore import Tensor

        return self._sum(Tensor(values)).asnumpy()

    def any_rank(self, flag: bool) -> bool:
        """Is `flag` set on any rank?  A collective: every rank must call it at the same point
        (the training loop asks it after every step whether a rank was signalled to stop)."""
        return bool(self._all_sum([1.0 if flag else 0.0])[0] > 0)

    def global_totals(self, micro_arrays: list) -> dict:
        """The objective's counts (targets, examples) over every micro-batch of every rank's shard
        (one AllReduce).  Each count is sent as count // 4096 and count % 4096: float32 sums
        integers exactly below 2^24, so both parts stay exact up to 4096 ranks and 6.8e10 per batch."""
        from .objectives import sum_counts

        local = sum_counts(self.trainer.objective, micro_arrays)
        names = sorted(local)
        parts = self._all_sum([part for name in names for part in divmod(local[name], COUNT_SPLIT)])
        return {name: int(parts[2 * i]) * COUNT_SPLIT + int(parts[2 * i + 1]) for i, name in enumerate(names)}

    def placement(self, arrays: dict) -> tuple[int, int]:
        """(this rank's first example, the examples of the whole micro-batch): every rank holds an
        equal share of each micro-batch (check_global_batch), rank r the r-th."""
        n = self.trainer.objective.n_examples(arrays)
        return self.topology.rank * n, self.topology.world_size * n

    def step(self, *batch, **named):
        """One update of the global batch made of every rank's batch."""
        return self._update([self.trainer.arrays(*batch, **named)])

    def accumulate_step(self, micro_batches):
        """One update of the global batch, each rank's share given as micro-batches."""
        return self._update([self.trainer.arrays(*micro) for micro in micro_batches])

    def _update(self, micro_arrays: list):
        result = self.trainer.update(micro_arrays, self.global_totals(micro_arrays),
                                     [self.placement(arrays) for arrays in micro_arrays])
        # This rank's loss is its share of the global mean: the ranks' shares sum to it.
        return result._replace(loss=float(self._all_sum([result.loss])[0]))

    def grads_numpy(self, *batch, seed=None, **named):
        """(global loss, gradients of the global batch's mean loss, head gradients) -- the same on
        every rank.  seed: the dropout masks of the whole batch (as Trainer.grads_numpy)."""
        arrays = self.trainer.arrays(*batch, **named)
        result = self.trainer.grads_numpy(*batch, seed=seed, totals=self.global_totals([arrays]),
                                          placement=self.placement(arrays), **named)
        return result._replace(loss=float(self._all_sum([result.loss])[0]))
