"""`gptspec ...` as a script, for msrun (which starts `python SCRIPT ARGS` on every rank):

    msrun --worker_num=2 --local_worker_num=2 --master_port=P --log_dir=LOGS --join=True \\
          --cluster_time_out=120 parity_tests/dp_cli.py train --backend mindspore ...

GPTSPEC_TEST_SIGTERM="RANK:STEP" (tests only): that rank sends itself SIGTERM during step STEP
(0-based) -- a scheduler preempting one worker; the other ranks get no signal.
"""
import os
import signal
import sys

from gptspec.cli import main


def signal_one_rank(rank: int, at_step: int) -> None:
    from gptspec.training.ms_backend_adapter import MindSporeBackend
    from interrupts import signal_during_step  # beside this script (msrun runs it as a script)

    signal_during_step(MindSporeBackend, at_step, signum=signal.SIGTERM,
                       only_if=lambda backend: backend.trainer.topology.rank == rank)


if __name__ == "__main__":
    if os.environ.get("GPTSPEC_TEST_SIGTERM"):
        signal_one_rank(*(int(part) for part in os.environ["GPTSPEC_TEST_SIGTERM"].split(":")))
    sys.exit(main())
