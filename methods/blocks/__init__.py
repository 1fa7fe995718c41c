"""The building blocks the methods are made of; a method file (`methods.<name>`) holds the
method's class and puts these together.

- `options`: checks of constructor arguments shared by the methods;
- `inject`: freezing, unfreezing and replacing the backbone's linears;
- `lowrank`: LoRA, MTLoRA's multi-task and DoRA's weight-decomposed linears;
- `task_streams`: MTLoRA's task-stream block, the shared base of the task-stream methods;
- `spectral`, `cpab`: DiTASK's singular-value-warped linears and the warp;
- `tadformer`: TADFormer's prompted blocks, task-adapted linears and encoder;
- `bottleneck`: bottleneck adapters and where they go in a Swin block;
- `phm`: Compacter's parameterised hypercomplex multiplication layers;
- `hypernet`: adapters whose weights a hypernetwork generates per task, and their encoder;
- `factor_heads`, `stage_hypernet`: Polyhistor's and HyperFormer's hypernetworks;
- `prompts`: VPT's prompt tokens in Swin's windowed attention.
"""
