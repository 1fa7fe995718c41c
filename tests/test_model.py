"""The harness model: backbone layout, decoder size, encoder modes, trainability."""

import pytest
import torch
from torch import nn

from benchmark.backbone import SwinBackbone, TaskStreams, build_backbone, build_swin
from benchmark.method import Encoder, PerTaskEncoder, TaskContext, TaskStreamEncoder
from benchmark.model import Decoder, MultiTaskModel, build_decoders, count_parameters
from methods.decoders_only import DecodersOnly
from methods.full_ft import FullFineTuning
from tests.helpers import DECODERS, arch, tiny_backbone

PASCAL_OUTPUTS = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3}


def test_swin_tiny_stage_outputs_follow_the_official_layout():
    # protocol §2.1: 192x56x56, 384x28x28, 768x14x14, 768x14x14 at 448 px, after each merging.
    with torch.device("meta"):
        backbone = build_backbone(arch("swin_tiny"), 448, 0.0, load_weights=False)
        maps = backbone(torch.empty(2, 3, 448, 448), ["semseg"])["semseg"]
    assert [tuple(m.shape[1:]) for m in maps] == [
        (192, 56, 56), (384, 28, 28), (768, 14, 14), (768, 14, 14)
    ]
    assert backbone.out_dims == [192, 384, 768, 768]


def test_decoders_for_swin_tiny_and_pascal_have_exactly_the_mtlora_count():
    with torch.device("meta"):
        backbone = build_backbone(arch("swin_tiny"), 448, 0.0, load_weights=False)
        decoders = build_decoders(backbone, PASCAL_OUTPUTS)
    assert count_parameters(decoders) == DECODERS
    # the harness drops timm's final norm (2 x 768) and its ImageNet head (768 x 1000 + 1000)
    # from timm's Swin-T (28,288,354 parameters): backbone + decoders = 29,464,442
    with torch.device("meta"):
        timm_swin_t = build_swin(arch("swin_tiny"), 224, 0.0, num_classes=1000)
    assert count_parameters(timm_swin_t) == 28_288_354
    assert count_parameters(timm_swin_t.norm) == 2 * 768 == 1_536
    assert count_parameters(timm_swin_t.head) == 768 * 1000 + 1000 == 769_000
    assert count_parameters(backbone) + count_parameters(decoders) == (
        28_288_354 - 1_536 - 769_000 + DECODERS
    ) == 29_464_442


def test_backbone_matches_timm_stage_by_stage():
    """Regrouping timm's modules must not change the computation: the post-merging output
    of stage i equals timm's stage i + 1 after its downsample."""
    torch.manual_seed(0)
    swin = build_swin(arch("swin_micro"), 32, drop_path=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = swin.patch_embed(x)
        stage_outputs = []
        for layer in swin.layers:  # timm: merging first, then the blocks
            h = layer(h)
            stage_outputs.append(h)
        expected = [swin.layers[i + 1].downsample(stage_outputs[i]) for i in range(3)]
        expected.append(stage_outputs[3])
        ours = SwinBackbone(swin)(x, ["t"])["t"]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b.permute(0, 3, 1, 2))


def test_decoder_output_size_and_scaled_widths():
    backbone = tiny_backbone()
    decoders = build_decoders(backbone, {"semseg": 5, "normals": 3})
    maps = backbone(torch.randn(2, 3, 32, 32), ["semseg"])["semseg"]
    out = decoders["semseg"](maps, (32, 32))
    assert out.shape == (2, 5, 32, 32)
    # widths scale with embed_dim (32 / 96 of [18, 36, 72, 144])
    assert [c.out_channels for c in decoders["semseg"].downsample] == [6, 12, 24, 48]
    assert decoders["semseg"].head[0].out_channels == 4 * 90


def test_decoders_only_freezes_the_backbone_and_its_gradients_are_none():
    backbone = tiny_backbone()
    model = MultiTaskModel(
        DecodersOnly().build_encoder(backbone, ["semseg", "sal"]),
        build_decoders(backbone, {"semseg": 4, "sal": 1}),
    )
    out = model(torch.randn(2, 3, 32, 32))
    (out["semseg"].square().mean() + out["sal"].mean()).backward()
    for name, p in model.encoder.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.decoders.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_full_ft_trains_every_parameter():
    backbone = tiny_backbone()
    model = MultiTaskModel(
        FullFineTuning().build_encoder(backbone, ["semseg"]),
        build_decoders(backbone, {"semseg": 3}),
    )
    model(torch.randn(2, 3, 32, 32))["semseg"].square().mean().backward()
    for name, p in model.named_parameters():
        assert p.requires_grad and p.grad is not None, name


class _TaskBias(nn.Module):
    """A toy task-conditioned layer: adds a learned bias per task after `inner`."""

    def __init__(self, inner: nn.Linear, context: TaskContext):
        super().__init__()
        self.inner, self.context = inner, context
        self.bias = nn.Parameter(torch.zeros(len(context.tasks), inner.out_features))

    def forward(self, x):
        ids = self.context.current()
        return self.inner(x) + self.bias[ids].view(ids.shape[0], *([1] * (x.dim() - 2)), -1)


def test_per_task_encoder_batches_tasks_and_matches_separate_passes():
    tasks = ["semseg", "sal", "normals"]
    backbone = tiny_backbone().eval()
    context = TaskContext(tasks)
    for block in backbone.blocks():
        block.mlp.fc2 = _TaskBias(block.mlp.fc2, context)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        zero = PerTaskEncoder(backbone, tasks, context)(x)
        for block in backbone.blocks():
            block.mlp.fc2.bias.normal_()
        out = PerTaskEncoder(backbone, tasks, context, tasks_per_pass=2)(x)
        for i, task in enumerate(tasks):
            with context.bind(torch.full((2,), i)):
                alone = backbone(x, ["x"])["x"]
            for a, b in zip(out[task], alone):
                torch.testing.assert_close(a, b)
    # with all biases zero every task sees the same features; with biases they differ
    for a, b in zip(zero["semseg"], zero["sal"]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(out["semseg"][-1], out["sal"][-1])


class _StreamBlock(nn.Module):
    """A toy task-stream block: returns the shared stream and a shifted copy per task."""

    def __init__(self, block: nn.Module, tasks):
        super().__init__()
        self.block, self.tasks = block, tasks

    def forward(self, x):
        y = self.block(x)
        return TaskStreams(y, {t: y + i + 1.0 for i, t in enumerate(self.tasks)})


def test_task_streams_leave_every_stage_but_only_the_shared_stream_continues():
    tasks = ["semseg", "sal"]
    backbone = tiny_backbone().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = backbone(x, tasks)
        stage0 = backbone.stages[0]
        stage0.blocks[-1] = _StreamBlock(stage0.blocks[-1], tasks)
        streams = TaskStreamEncoder(backbone, tasks)(x)
        h = backbone.patch_embed(x)
        y = stage0.blocks[:-1](h)
        y = stage0.blocks[-1].block(y)
    for i, task in enumerate(tasks):
        expected = stage0.merge(y + i + 1.0).permute(0, 3, 1, 2)
        torch.testing.assert_close(streams[task][0], expected)
        for s in range(1, 4):  # the later stages only see the shared stream
            torch.testing.assert_close(streams[task][s], plain[task][s])


def test_decoder_rejects_nothing_and_counts_by_formula():
    dec = Decoder([10, 20, 40, 40], [2, 4, 8, 16], outputs=3)
    widths = 30
    expected = (10 * 2 + 20 * 4 + 40 * 8 + 40 * 16) + (widths * 120 + 120) + 2 * 120 + (120 * 3 + 3)
    assert count_parameters(dec) == expected


def test_model_refuses_decoders_without_features():
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="normals"):
        MultiTaskModel(Encoder(backbone, ["semseg"]), build_decoders(backbone, {"normals": 3}))


def test_the_shipped_checkpoint_matches_its_card_and_loads_completely():
    import hashlib

    from benchmark.backbone import WEIGHTS_DIR, load_checkpoint, read_weights_card

    cfg = arch("swin_micro")
    path = WEIGHTS_DIR / cfg.default_weights
    card = read_weights_card(cfg.default_weights)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    assert card["command"].startswith("python -m benchmark.pretrain")
    swin = build_swin(cfg, 64, drop_path=0.0)
    before = {k: v.clone() for k, v in swin.state_dict().items()}
    load_checkpoint(swin, path)  # raises if any backbone tensor is missing
    changed = [k for k, v in swin.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * len(before)
