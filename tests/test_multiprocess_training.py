"""Two CPU processes (torchrun, gloo) train a few steps and end with identical weights."""

import os
from pathlib import Path

import torch

from helpers import run_torchrun

WORKER = Path(__file__).with_name("mp_train_worker.py")


def test_two_processes_agree_on_the_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run_torchrun([WORKER, tmp_path], env=env)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    moved = 0
    for name, weight in ranks[0]["final"].items():
        assert torch.equal(weight, ranks[1]["final"][name]), name
        moved += not torch.equal(weight, ranks[0]["initial"][name])
    assert moved > 10  # training happened (everything but the vision tower trains under "full")
    # Budget statistics are reduced over both processes: every rank logs the same numbers.
    assert ranks[0]["logs"] == ranks[1]["logs"] and "units_mean" in ranks[0]["logs"][0]
