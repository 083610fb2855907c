"""Data parallel under msrun (ms_backend/distributed.py): 2 ranks compute what one process computes
on the whole batch, and rank / world-size problems end in one line, not a hang.

One module-wide launch runs seven jobs at once (each bounded by JOB_TIMEOUT):
  * msrun, 2 workers, parity_tests/dp_worker.py on a tiny GPT-2 and a padded batch whose rows give
    rank 0 15 targets and rank 1 only 3 (a per-rank mean would weigh them alike);
  * the same script as one plain process on the whole batch (the reference);
  * `gptspec train` under msrun (2 ranks, graph mode) and as one process, on a tiny config;
  * `gptspec train` under msrun with a SIGTERM to rank 1 alone during its first step (then
    --resume under msrun, started by the test itself);
  * msrun, 2 workers, a global batch of 3 rows (does not split over 2 ranks);
  * the script alone with msrun's variables but no scheduler (the cluster cannot form).
All together ~2 minutes on this 2-core machine (graph compilation in the CLI jobs; after a worker
fails, msrun's scheduler notices within its ~30 s heartbeat timeout).  Skipped when msrun is not on
PATH; any other failure to start is a failure (the worker logs are shown).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mindspore", reason="data parallel needs the `mindspore` extra")

import ref_numpy as R  # noqa: E402
import weights  # noqa: E402
from gptspec.tolerances import data_parallel_grad_bounds, data_parallel_param_bound, lm_loss_bound  # noqa: E402
from gptspec.training.loop import read_log  # noqa: E402
from ms_backend.distributed import (DataParallelError, Topology, check_global_batch, init_data_parallel,  # noqa: E402
                                    msrun_world_size, shard, under_msrun)

from . import bpe_trainer, dp_worker  # noqa: E402
from .interrupts import logs_without_timings  # noqa: E402

pytestmark = [pytest.mark.mindspore, pytest.mark.slow]

WORKER = Path(dp_worker.__file__).resolve()
# PyNative: ~10 s per process instead of ~35 s of graph compilation on this CPU; the graph path (the
# gradient all-reduce compiled into the step) runs in the CLI jobs, graph mode being its default.
WORKER_MODE = ["--mode", "pynative"]
CLI = WORKER.with_name("dp_cli.py")  # `gptspec` as a script msrun can start
# A tiny GPT-2 with its own BPE on pydoc text: 2 steps of a global batch of 4 rows (2 per rank).
CLI_ARGS = ["train", "--config", "gpt2", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--n-ctx", "32",
            "--train-tokenizer", "300", "--pack", "--seq-len", "16", "--batch-size", "4", "--lr", "3e-3",
            "--warmup", "1", "--steps", "2", "--eval-every", "2", "--no-progress", "--backend", "mindspore"]
CLUSTER_TIME_OUT = 120  # msrun --cluster_time_out: how long ranks wait for each other to join
JOB_TIMEOUT = 400       # a job that has not ended by then hangs: the test fails
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_job(log_dir: Path, *worker_args, script=WORKER) -> list[str]:
    msrun = shutil.which("msrun")
    if msrun is None:
        pytest.skip("msrun (MindSpore's launcher) is not on PATH: data parallel cannot start here")
    return [msrun, f"--worker_num={WORLD}", f"--local_worker_num={WORLD}", f"--master_port={free_port()}",
            f"--log_dir={log_dir}", "--join=True", f"--cluster_time_out={CLUSTER_TIME_OUT}",
            str(script), *worker_args]


class Job:
    """A started subprocess; `wait()` -> (returncode, stdout + stderr, seconds), failing on a hang."""

    def __init__(self, name, command, cwd, log_dir=None, env=None):
        self.name, self.log_dir, self.started = name, log_dir, time.perf_counter()
        # output to a file, not a pipe: nobody reads a pipe while the other jobs are awaited
        self.output = Path(cwd) / f"{name.replace(' ', '_').replace(',', '')}.out"
        with open(self.output, "w") as sink:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        self.result = None

    def wait(self):
        if self.result is None:
            try:
                self.process.wait(timeout=max(1.0, JOB_TIMEOUT - (time.perf_counter() - self.started)))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"{self.name} did not end within {JOB_TIMEOUT} s: a hang\n{self.logs()}")
            output = self.output.read_text(errors="replace")
            self.result = (self.process.returncode, output, time.perf_counter() - self.started)
        return self.result

    def logs(self) -> str:
        if self.log_dir is None or not self.log_dir.is_dir():
            return ""
        text = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = [x for x in path.read_text(errors="replace").splitlines()
                     if not x.startswith(("[WARNING]", "[INFO]"))]
            text.append(f"--- {path.name} (last lines)\n" + "\n".join(lines[-25:]))
        return "\n".join(text)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_parallel")
    no_cluster = {**os.environ, "MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": str(WORLD), "MS_NODE_ID": "0",
                  "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(free_port()), "MS_TOPO_TIMEOUT": "5"}
    started = {  # run in root: MindSpore writes rank_N/ (compile dumps) into the working directory
        "parallel": Job("msrun, 2 ranks", msrun_job(root / "logs", str(root / "parallel"), *WORKER_MODE), root,
                        root / "logs"),
        "single": Job("one process", [sys.executable, str(WORKER), str(root / "single"), *WORKER_MODE], root),
        "uneven": Job("msrun, 3 rows over 2 ranks",
                      msrun_job(root / "logs-uneven", str(root / "uneven"), "--rows", "3"), root, root / "logs-uneven"),
        "no_cluster": Job("a rank without a scheduler", [sys.executable, str(WORKER), str(root / "none")], root,
                          env=no_cluster),
    }
    data = root / "doc.txt"
    data.write_text(bpe_trainer.training_text(max_chars=12_000), encoding="utf-8")
    cli = [*CLI_ARGS, "--data", str(data)]
    started["cli_parallel"] = Job("gptspec train under msrun", msrun_job(root / "logs-cli", *cli, "--out",
                                                                         str(root / "cli-parallel"), script=CLI),
                                  root, root / "logs-cli")
    started["cli_single"] = Job("gptspec train", [sys.executable, str(CLI), *cli, "--out", str(root / "cli-single")],
                                root)
    # a SIGTERM to rank 1 alone during step 1 of 2: every rank stops after it, rank 0 saves it
    started["cli_signalled"] = Job("gptspec train under msrun, rank 1 signalled",
                                   msrun_job(root / "logs-signalled", *cli, "--out", str(root / "cli-signalled"),
                                             script=CLI),
                                   root, root / "logs-signalled", env={**os.environ, "GPTSPEC_TEST_SIGTERM": "1:0"})
    # finetune --task similar (two rows per example: a rank's rows of the masks are two slices),
    # with dropout and 2 micro-batches, 2 ranks vs 1 process, and a signal to rank 1 during step 2;
    # the 2-rank runs with --recompute (block-wise gradients summed, then all-reduced), the 1 without
    similar = [*FINETUNE_ARGS, "--data", str(similar_pairs(root / "pairs.csv"))]
    started["finetune_parallel"] = Job("gptspec finetune under msrun",
                                       msrun_job(root / "logs-finetune", *similar, "--recompute", "--out",
                                                 str(root / "ft-parallel"), script=CLI), root, root / "logs-finetune")
    started["finetune_single"] = Job("gptspec finetune", [sys.executable, str(CLI), *similar, "--out",
                                                          str(root / "ft-single")], root)
    started["finetune_signalled"] = Job("gptspec finetune under msrun, rank 1 signalled",
                                        msrun_job(root / "logs-ft-signalled", *similar, "--recompute", "--out",
                                                  str(root / "ft-signalled"), script=CLI),
                                        root, root / "logs-ft-signalled", env={**os.environ, "GPTSPEC_TEST_SIGTERM": "1:1"})
    started["root"] = root
    return started


FINETUNE_ARGS = ["finetune", "--task", "similar", "--text-a-column", "first", "--text-b-column", "second",
                 "--label-column", "kind", "--config", "openai-gpt", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                 "--n-ctx", "48", "--train-tokenizer", "300", "--seq-len", "40", "--batch-size", "8", "--grad-accum",
                 "2", "--dropout", "0.1", "--lr", "3e-3", "--warmup", "1", "--steps", "3", "--eval-every", "3",
                 "--no-progress", "--backend", "mindspore"]


def similar_pairs(path: Path) -> Path:
    """40 pairs of pydoc paragraphs labelled by how many are code (test_cli_finetune_tasks.py's task)."""
    import csv

    from .test_cli_train_finetune import prose_and_code

    rows = [(text[:80], kind) for text, kind in prose_and_code()[:80]]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["first", "second", "kind"])
        for (a, kind_a), (b, kind_b) in zip(rows[::2], rows[1::2]):
            writer.writerow([a, b, f"{(kind_a == 'code') + (kind_b == 'code')} code"])
    return path


def finished(job) -> tuple[str, float]:
    code, output, seconds = job.wait()
    assert code == 0, f"{job.name} failed (exit {code}):\n{output[-3000:]}\n{job.logs()}"
    return output, seconds


def load(folder: Path, rank: int) -> dict:
    with np.load(folder / f"rank-{rank}.npz") as stored:
        return dict(stored)


def split(arrays: dict, kind: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(kind + "/")}


def spec_gradients(precision):
    """The float32 / float64 spec's gradients of the worker's model on the whole batch."""
    config = dp_worker.tiny_config()
    params = R.cast_params(dp_worker.tiny_params(config), precision)
    inputs, targets, mask = dp_worker.global_batch(config, len(dp_worker.ROW_LENGTHS))
    _, grads = R.loss_and_grads(config, params, inputs, targets, attention_mask=mask)
    return R.flatten_params(grads)


def test_two_ranks_compute_what_one_process_computes_on_the_whole_batch(jobs):
    finished(jobs["parallel"])
    finished(jobs["single"])
    ranks = [load(jobs["root"] / "parallel", r) for r in range(WORLD)]
    single = load(jobs["root"] / "single", 0)
    assert int(ranks[0]["world_size"]) == WORLD and int(single["world_size"]) == 1
    # The replicas stay identical: every rank reduced to the same gradients, norm and update.
    for name in ranks[0]:
        np.testing.assert_array_equal(ranks[1][name], ranks[0][name], err_msg=f"rank 1 != rank 0: {name}")

    config = dp_worker.tiny_config()
    inputs, _, _ = dp_worker.global_batch(config, len(dp_worker.ROW_LENGTHS))
    spec32, spec64 = spec_gradients(np.float32), spec_gradients(np.float64)
    grads, grads_single = split(ranks[0], "grad"), split(single, "grad")
    params, params_single = split(ranks[0], "param"), split(single, "param")
    assert list(grads) == list(spec64) and list(params) == list(grads)
    failures, report = [], []
    settings = dp_worker.TRAINER_SETTINGS
    for name, reference in grads_single.items():
        derived, measured = data_parallel_grad_bounds(config, inputs.size, spec32[name], spec64[name])
        grad_error = float(np.max(np.abs(grads[name] - reference)))
        allowed = min(derived.allowed(reference), measured.allowed(reference))
        param_bound = data_parallel_param_bound(params_single[name], allowed, dp_worker.N_STEPS,
                                                settings["lr"], settings["eps"])
        param_error = float(np.max(np.abs(params[name] - params_single[name])))
        report.append(f"{name:28s} grad {grad_error:.2e} <= {allowed:.2e}   params {param_error:.2e} <= "
                      f"{param_bound.allowed(params_single[name]):.2e}")
        if grad_error > allowed:
            failures.append(f"gradient {name}: {grad_error:.3g} > {allowed:.3g} ({measured.reason})")
        if param_error > param_bound.allowed(params_single[name]):
            failures.append(f"parameters {name} after {dp_worker.N_STEPS} steps: {param_error:.3g} > "
                            f"{param_bound.allowed(params_single[name]):.3g} ({param_bound.reason})")
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    # The logged numbers are the global batch's: loss, and the norm the clipping used (|a| - |b| <=
    # |a - b|, plus each norm's own float32 sum).
    np.testing.assert_allclose(ranks[0]["loss"], single["loss"], rtol=1e-6)
    norm_gap = np.sqrt(sum(float(np.sum((grads[k] - grads_single[k]) ** 2)) for k in grads))
    assert abs(ranks[0]["grad_norm"][0] - single["grad_norm"][0]) <= norm_gap + 1e-6 * single["grad_norm"][0]
    assert not ranks[0]["skipped"].any()


def test_the_test_batch_tells_a_per_rank_mean_from_the_global_mean():
    """The uneven batch makes the wrong normalisation (each rank's mean, then their average) differ
    from the whole batch's mean by far more than the gradient bound: the parity test can fail."""
    config = dp_worker.tiny_config()
    params = R.cast_params(dp_worker.tiny_params(config), np.float64)
    inputs, targets, mask = dp_worker.global_batch(config, len(dp_worker.ROW_LENGTHS))
    _, whole = R.loss_and_grads(config, params, inputs, targets, attention_mask=mask)
    half = len(inputs) // WORLD
    shards = [R.loss_and_grads(config, params, inputs[s], targets[s], attention_mask=mask[s])[1]
              for s in (slice(0, half), slice(half, None))]
    spec32 = spec_gradients(np.float32)
    whole, shards = R.flatten_params(whole), [R.flatten_params(g) for g in shards]
    ratios = []
    for name, reference in whole.items():
        per_rank_mean = (shards[0][name] + shards[1][name]) / WORLD
        _, measured = data_parallel_grad_bounds(config, inputs.size, spec32[name], reference)
        ratios.append(float(np.max(np.abs(per_rank_mean - reference))) / measured.allowed(reference))
    # Every tensor would fail, by far: observed >= 6.6e4 x its bound (errors ~100% of the gradient).
    assert min(ratios) > 1000, ratios


def test_a_global_batch_that_does_not_split_over_the_ranks_is_one_line_and_no_hang(jobs):
    job = jobs["uneven"]
    code, output, seconds = job.wait()
    assert code != 0, output[-2000:]
    expected = f"dp_worker: error: the global batch has 3 rows, which does not split evenly over {WORLD} ranks"
    for rank in range(WORLD):
        log = (job.log_dir / f"worker_{rank}.log").read_text(errors="replace")
        assert expected in log, job.logs()
        assert "Traceback" not in log, job.logs()
    assert not (jobs["root"] / "uneven").exists()


def test_a_rank_whose_cluster_cannot_form_says_so_in_one_line(jobs):
    """msrun's variables but no scheduler: init gives up after MS_TOPO_TIMEOUT (msrun's
    --cluster_time_out) and the worker says so in one line instead of waiting for ever."""
    code, output, seconds = jobs["no_cluster"].wait()
    assert code == 2, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("dp_worker: error:")]
    assert len(errors) == 1 and "could not join the msrun cluster of 2 workers" in errors[0], output[-2000:]
    assert "cluster_time_out=5 s" in errors[0] and "Traceback" not in output


def test_gptspec_train_under_msrun_trains_what_one_process_trains(jobs):
    """The real CLI, 2 ranks vs 1 process, the same global batch: the same logged losses (each
    within lm_loss_bound of the float64 spec's), and only rank 0 writes the log and checkpoints."""
    finished(jobs["cli_parallel"])
    finished(jobs["cli_single"])
    parallel, single = jobs["root"] / "cli-parallel", jobs["root"] / "cli-single"
    rows, rows_single = read_log(parallel / "log.jsonl"), read_log(single / "log.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2], rows  # one writer: every row once
    config, params = weights.load(parallel)  # the final checkpoint is complete and loads
    tokens = np.random.default_rng(0).integers(0, config.n_vocab, (4, 16))
    logit_scale = float(np.max(np.abs(R.forward(config, weights.load(single)[1], tokens)[0])))
    bound = lm_loss_bound(config, "float32", logit_scale, n_targets=4 * 16)
    for row, row_single in zip(rows, rows_single):
        for key in ("loss", "valid_loss"):
            if key in row_single:
                assert abs(row[key] - row_single[key]) <= 2 * bound.value, (key, row, row_single, bound.reason)
    worker_1 = (jobs["cli_parallel"].log_dir / "worker_1.log").read_text(errors="replace")
    assert "trained to step 2" in (jobs["cli_parallel"].log_dir / "worker_0.log").read_text(errors="replace")
    assert "step 2/2 loss" in worker_1 and "trained to step" not in worker_1  # rank 1 trained, wrote nothing


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step_and_resume_is_bit_exact(jobs):
    """A scheduler's SIGTERM reaches rank 1 only, during step 1: the ranks agree after the step to
    stop (no rank left waiting in an all-reduce), rank 0 saves step 1 before anyone exits, and
    `--resume` under msrun ends bit for bit where the uninterrupted 2-rank run ended."""
    code, output, _ = jobs["cli_signalled"].wait()
    logs = jobs["cli_signalled"].log_dir
    worker_0, worker_1 = ((logs / f"worker_{r}.log").read_text(errors="replace") for r in range(WORLD))
    assert code != 0 and "SIGTERM: finishing this step" in worker_1, output[-3000:] + jobs["cli_signalled"].logs()
    assert "SIGTERM" not in worker_0 and "interrupted: saved step 1" in worker_0, jobs["cli_signalled"].logs()
    root = jobs["root"]
    assert [r["step"] for r in read_log(root / "cli-signalled" / "log.jsonl")] == [0, 1]  # held-out at 0, step 1
    resumed = Job("gptspec train --resume under msrun",
                  msrun_job(root / "logs-resumed", "train", "--resume", str(root / "cli-signalled"), "--no-progress",
                            script=CLI), root, root / "logs-resumed")
    finished(resumed)
    finished(jobs["cli_parallel"])
    whole = R.flatten_params(weights.load(root / "cli-parallel")[1])
    parts = R.flatten_params(weights.load(root / "cli-signalled")[1])
    assert all(np.array_equal(whole[name], parts[name]) for name in whole)
    assert logs_without_timings(root / "cli-signalled") == logs_without_timings(root / "cli-parallel")


def test_finetune_under_msrun_trains_what_one_process_trains_and_resumes_bit_for_bit(jobs):
    """finetune --task similar with --dropout 0.1 and --grad-accum 2: the ranks divide by the global
    example and LM-target counts and keep their rows (a+b and b+a) of the whole micro-batch's masks,
    so every logged loss is one process's within twice forward_bound -- the ranks computing their
    gradients block by block (--recompute), the one process in one graph; a SIGTERM to rank 1
    during step 2, then --resume under msrun (which keeps --recompute), ends where the
    uninterrupted 2-rank run ends, bit for bit."""
    from gptspec.tolerances import forward_bound
    from gptspec.training.classify_backend import load_classifier

    finished(jobs["finetune_parallel"])
    finished(jobs["finetune_single"])
    root = jobs["root"]
    rows, rows_single = read_log(root / "ft-parallel" / "log.jsonl"), read_log(root / "ft-single" / "log.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3], rows
    config = load_classifier(root / "ft-parallel")[0]
    bound = forward_bound(config, "float32")
    for row, row_single in zip(rows, rows_single):
        for key in ("loss", "valid_loss"):
            if key in row_single:
                assert abs(row[key] - row_single[key]) <= 2 * bound.allowed(row_single[key]), (key, row, row_single)
    code, output, _ = jobs["finetune_signalled"].wait()
    assert code != 0 and "interrupted: saved step 2" in output + jobs["finetune_signalled"].logs(), \
        output[-3000:] + jobs["finetune_signalled"].logs()
    resumed = Job("gptspec finetune --resume under msrun",
                  msrun_job(root / "logs-ft-resumed", "finetune", "--resume", str(root / "ft-signalled"),
                            "--no-progress", script=CLI), root, root / "logs-ft-resumed")
    finished(resumed)
    _, whole, whole_head, _ = load_classifier(root / "ft-parallel")
    _, parts, parts_head, _ = load_classifier(root / "ft-signalled")
    whole, parts = R.flatten_params(whole), R.flatten_params(parts)
    assert all(np.array_equal(whole[name], parts[name]) for name in whole)
    assert all(np.array_equal(whole_head[name], parts_head[name]) for name in whole_head)


# -- the checks, without a cluster ---------------------------------------------------------------

def test_shards_are_contiguous_and_cover_the_batch():
    batch = np.arange(12).reshape(6, 2)
    parts = [shard(batch, Topology(r, 3)) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    np.testing.assert_array_equal(parts[1], batch[2:4])
    assert shard(None, Topology(1, 3)) is None
    np.testing.assert_array_equal(shard(batch, Topology()), batch)


@pytest.mark.parametrize("rows, world, message", [
    (3, 2, "the global batch has 3 rows, which does not split evenly over 2 ranks (msrun --worker_num=2) "
           "(use a multiple of 2)"),
    (2, 4, "the global batch has 2 rows, which does not split evenly over 4 ranks (msrun --worker_num=4)"),
])
def test_a_batch_that_does_not_split_is_refused(rows, world, message):
    with pytest.raises(DataParallelError) as error:
        check_global_batch(rows, Topology(0, world))
    assert str(error.value) == message


def test_msrun_variables():
    assert not under_msrun({}) and under_msrun({"MS_ROLE": "MS_WORKER"})
    assert msrun_world_size({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8"}) == 8
    for bad in ({"MS_ROLE": "MS_WORKER"}, {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "0"},
                {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "two"}):
        with pytest.raises(DataParallelError, match="MS_WORKER_NUM"):
            msrun_world_size(bad)


def test_one_process_needs_no_cluster(monkeypatch):
    monkeypatch.delenv("MS_ROLE", raising=False)
    assert init_data_parallel() == Topology(0, 1) and Topology().writes_files


def test_gptspec_train_refuses_what_cannot_run_data_parallel():
    """Under msrun (world size 2 here, no cluster needed for the checks): a --batch-size that does
    not split over the ranks, and the NumPy backend (no all-reduce), are one-line errors."""
    from gptspec.training.run import data_parallel

    with pytest.raises(DataParallelError, match=r"^--batch-size has 5 rows, which does not split evenly over 2 ranks"):
        data_parallel(object(), {"backend": "mindspore", "batch_size": 5, "grad_accum": 1}, 0, 2)
    with pytest.raises(ValueError, match=r"^--backend numpy cannot train data-parallel under msrun \(2 workers\)"):
        data_parallel(object(), {"backend": "numpy", "batch_size": 4, "grad_accum": 1}, 0, 2)
    backend = object()
    assert data_parallel(backend, {"backend": "numpy", "batch_size": 5}, 0, 1) is backend


def test_micro_batches_that_do_not_split_over_the_ranks_are_refused():
    """--grad-accum under msrun: each micro-batch (--batch-size / --grad-accum rows) is split over the
    ranks, so it must divide evenly too -- one line naming both options."""
    from gptspec.training.run import data_parallel

    with pytest.raises(DataParallelError, match=r"^each micro-batch \(--batch-size 6 / --grad-accum 2\) has 3 rows"):
        data_parallel(object(), {"backend": "mindspore", "batch_size": 6, "grad_accum": 2}, 0, 2)
