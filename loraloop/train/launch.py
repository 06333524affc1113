"""Training under `accelerate launch` (train.launcher: accelerate): the same `loraloop train`
command again, in as many processes as train.num_processes, with the config file from params."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..params import TrainParams
from .errors import TrainingStopped

LAUNCHED = "LORALOOP_LAUNCHED"  # set in the launched processes, which then train


def launched() -> bool:
    return bool(os.environ.get(LAUNCHED))


def accelerate_launch(tp: TrainParams, argv: list[str]) -> int:
    """`loraloop <argv>` under `accelerate launch`; its exit status."""
    config = Path(tp.accelerate_config)
    if not config.is_file():
        raise TrainingStopped(f"train.accelerate_config: {config} not found (see configs/accelerate/)")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(tp.num_processes),
        "-m",
        "loraloop.cli",
        *argv,
    ]
    print(f"launching: {' '.join(cmd)}", file=sys.stderr)
    return subprocess.call(cmd, env={**os.environ, LAUNCHED: "1"})
