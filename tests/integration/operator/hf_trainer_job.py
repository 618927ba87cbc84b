"""A custom training image's entry point, as a user without our runner would write it: a plain
`transformers.Trainer` on a tiny, randomly initialised GPT-2, on the CPU, for a few steps.

Nothing in it knows about the operator: transformers' own KubeflowCallback turns itself on because the
environment has KUBEFLOW_TRAINER_SERVER_URL (with _CA_CERT and _TOKEN), as the operator renders it into
every training pod. Run by the trainer venv's Python (torch, transformers) from
test_operator_progress_kubeflow.py; prints the Trainer's log history as JSON on its last line.

    python hf_trainer_job.py OUTPUT_DIR STEPS SECONDS_PER_STEP
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the model learns a little, enough for a loss that moves."""

    def __init__(self, count: int = 64, length: int = 16, vocab: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, vocab, (count, length), generator=generator)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


class Slow(TrainerCallback):
    """Steps of a real size: the callback sends at most one report per 5 s, so some land mid-run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(self.seconds)


def main() -> None:
    output_dir, steps, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",  # KubeflowCallback is added anyway: the environment turns it on
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    assert "kubeflow" in args.report_to, args.report_to
    trainer = Trainer(
        model=GPT2LMHeadModel(config), args=args, train_dataset=Tokens(), callbacks=[Slow(seconds)]
    )
    trainer.train()
    print(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main()
