"""Two CPU processes (torchrun, gloo) train a few steps and end with identical weights."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("mp_train_worker.py")


def test_two_processes_agree_on_the_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(tmp_path)]  # fmt: skip
    # Own session, so a hang can be ended with the launcher's whole process group (its workers included).
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError("torchrun timed out:\n" + output[-4000:]) from None
    assert process.returncode == 0, output[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    moved = 0
    for name, weight in ranks[0]["final"].items():
        assert torch.equal(weight, ranks[1]["final"][name]), name
        moved += not torch.equal(weight, ranks[0]["initial"][name])
    assert moved > 10  # training happened (everything but the vision tower trains under "full")
    # Budget statistics are reduced over both processes: every rank logs the same numbers.
    assert ranks[0]["logs"] == ranks[1]["logs"] and "units_mean" in ranks[0]["logs"][0]
