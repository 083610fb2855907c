"""`gptspec ...` as a script, for msrun (which starts `python SCRIPT ARGS` on every rank):

    msrun --worker_num=2 --local_worker_num=2 --master_port=P --log_dir=LOGS --join=True \\
          --cluster_time_out=120 parity_tests/dp_cli.py train --backend mindspore ...
"""
import sys

from gptspec.cli import main

if __name__ == "__main__":
    sys.exit(main())
