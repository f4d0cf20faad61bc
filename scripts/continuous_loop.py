#!/usr/bin/env python3
"""The afs_continuous daemon (same as the ``afs-continuous-loop`` console command).

    python scripts/continuous_loop.py                      # run the loop (checks every hour)
    python scripts/continuous_loop.py --status             # print the metrics summary
    python scripts/continuous_loop.py --trigger --no-train # prepare training data only
    python scripts/continuous_loop.py --config config.json --train-fn my_training:train_model

Run with --help for every flag.
"""

import sys
from pathlib import Path

try:
    from afs_continuous.cli import daemon_main
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from afs_continuous.cli import daemon_main

if __name__ == "__main__":
    daemon_main()
