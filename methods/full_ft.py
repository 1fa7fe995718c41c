"""Multi-task full fine-tuning (the MTL baseline of MTLoRA, CVPR 2024, Table 1).

One shared Swin encoder and one decoder per task, all trained jointly on the weighted sum of
the task losses. Trains: every backbone parameter and every decoder. Frozen: nothing.
"""

from benchmark.method import Method


class FullFineTuning(Method):
    paper_trainable_m = 30.06
