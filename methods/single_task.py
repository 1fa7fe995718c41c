"""Single-task models: the reference of the multi-task score Δm (protocol §1.4, 3.2).

One complete model per task (its own fully fine-tuned Swin encoder and its decoder), each
trained on its own loss only, with its own optimiser, schedule and gradient clipping, exactly
as a separate training run would; the harness trains them one after the other and records
their metrics as one result. The trainable count is the sum over the task models (the
paper's 112.62 M for Swin-T and four tasks; the code-level sum is 4 x 27,517,818 + decoders).
"""

from collections.abc import Sequence

from benchmark.method import Method


class SingleTask(Method):
    paper_trainable_m = 112.62

    @property
    def label(self) -> str:
        return "single task"

    def task_groups(self, tasks: Sequence[str]) -> list[list[str]]:
        return [[task] for task in tasks]
