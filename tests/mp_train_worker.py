"""Worker for test_multiprocess_training: a few AdaLlavaTrainer steps under torchrun (gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/mp_train_worker.py OUT_DIR
Each rank saves its initial and final weights to OUT_DIR/rank{RANK}.pt.
"""

import os
import sys

import torch
from transformers import TrainingArguments

from ada_hf.trainer import AdaLlavaTrainer
from conftest import make_model
from test_trainer import make_rows


def main(out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    model = make_model("L")  # same seed on every rank, as a launcher would load the same checkpoint
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "run"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=3, learning_rate=1e-2, report_to="none", use_cpu=True, ddp_backend="gloo", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    # Ranks see different rows and draw different budgets (the rank is part of the budget seed): only the gradient
    # all-reduce keeps their weights equal.
    trainer = AdaLlavaTrainer(model=model, args=args, train_dataset=make_rows(16), train_preset="full")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"initial": initial, "final": final, "world_size": args.world_size, "logs": logs},
               os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
