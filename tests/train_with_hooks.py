"""Runs ``train_gta2cityscapes_multi.py`` with two test hooks, for the tests that need them in a real process
(``torchrun`` ranks) or in-process. The training script has no test-only flags: this wrapper patches its functions.

    python tests/train_with_hooks.py [--dump-ranks DIR] [--signal-at I] TRAINING FLAGS...

``--dump-ranks DIR``: after the run, every rank writes its final weights to ``DIR/rank<R>.pth`` (keys
``model.*``, ``D1.*``, ``D2.*``). ``--signal-at I``: the last rank sends itself SIGTERM during iteration ``I``.
``--wait-at I --until FILE``: iteration ``I`` starts only once ``FILE`` exists (a run kept alive while a test
does something beside it).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_gta2cityscapes_multi as train  # noqa: E402
from utils.distributed import unwrap  # noqa: E402
from utils.files import atomic_torch_save  # noqa: E402


def run(argv: list[str]) -> int:
    hooks = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    hooks.add_argument("--dump-ranks", default=None)
    hooks.add_argument("--signal-at", type=int, default=None)
    hooks.add_argument("--wait-at", type=int, default=None)
    hooks.add_argument("--until", default=None)
    h, rest = hooks.parse_known_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    seen = []
    step = train.train_step

    def hooked_step(t, source, target, i_iter, **kw):
        seen[:] = [t]
        if h.signal_at == i_iter and rank == world - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        while h.wait_at == i_iter and not os.path.exists(h.until):
            time.sleep(0.05)
        return step(t, source, target, i_iter, **kw)

    train.train_step = hooked_step
    try:
        rc = train.main(train.get_args_parser().parse_args(rest))
    finally:
        train.train_step = step
    if h.dump_ranks and seen:
        t = seen[0]
        atomic_torch_save({f"{key}.{k}": v.detach().cpu() for key, net in
                           (("model", t.model), ("D1", t.model_D1), ("D2", t.model_D2))
                           for k, v in unwrap(net).state_dict().items()}, Path(h.dump_ranks) / f"rank{rank}.pth")
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
