"""`python -m benchmark.pretrain [key=value ...]`: pre-train `swin_micro` upstream (protocol §1.3).

On PASCAL the backbone arrives pre-trained on ImageNet; on the synthetic benchmark it
arrives pre-trained on the synthetic *upstream* task: classifying the shape of a single
object rendered with other textures and backgrounds than the downstream scenes
(`benchmark.data.synthetic.render_upstream`). The run is deterministic for a given seed,
thread count and PyTorch build. It writes the backbone without its classifier head as
safetensors, and beside it a JSON card with the sha256, the command, the settings, the
upstream validation accuracy and the machine; the suite ships both, so the default benchmark
needs no pre-training.

Both files are written only after the pre-training succeeded, each atomically, to the cache
($MTPEFT_CACHE/weights/, else ~/.cache/mtpeft/weights/) or to `output=PATH`; train from
them with `backbone.weights=PATH`. The shipped checkpoint is checked against its card's
sha256 whenever it is loaded, so regenerating it (output=benchmark/weights/...) also
changes the run keys: results of the old and the new weights never mix.

Keys (defaults in `DEFAULTS`, each checked before anything runs): epochs, batch_size, lr,
weight_decay, drop_path, train_size, val_size, image_size, seed, data_seed, output (the
checkpoint path).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save
from tqdm.auto import tqdm

from benchmark.atomic import atomic_write
from benchmark.backbone import build_swin
from benchmark.config import (
    CONF_DIR,
    Float,
    Int,
    Str,
    check_output_dir,
    parse_options,
    parse_value,
)
from benchmark.data import IMAGENET_MEAN, IMAGENET_STD
from benchmark.errors import UserError, report_user_error

OUTPUT_NAME = "swin_micro_upstream.safetensors"

DEFAULTS = {
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-4,  # a transformer from scratch: higher rates stall at chance for long
    "weight_decay": 0.05,
    "drop_path": 0.05,
    "train_size": 40000,
    "val_size": 1000,
    "image_size": 64,
    "seed": 0,
    "data_seed": 1,
    "output": None,  # default: the cache (`default_output`)
}
KEYS = {
    "epochs": Int(ge=1),
    "batch_size": Int(ge=1),
    "lr": Float(gt=0),
    "weight_decay": Float(ge=0),
    "drop_path": Float(ge=0, lt=1),
    "train_size": Int(ge=1),
    "val_size": Int(ge=1),
    "image_size": Int(ge=32),
    "seed": Int(ge=0),
    "data_seed": Int(ge=0),
    "output": Str(null=True, what="a path ending in .safetensors", pattern=r".+\.safetensors"),
}


def default_output() -> Path:
    from benchmark.data.cache import cache_dir

    return cache_dir() / "weights" / OUTPUT_NAME


def parse(argv: Sequence[str]) -> dict:
    """The settings of a command line, each checked (one-line `UserError`s)."""
    given = parse_options(argv, dict.fromkeys(DEFAULTS), f"keys: {', '.join(DEFAULTS)}")
    settings = dict(DEFAULTS)
    for key, value in given.items():
        if value is not None:
            settings[key] = value if key == "output" else parse_value(value)
    for key, spec in KEYS.items():
        spec.check(key, settings[key])
    if settings["image_size"] % 32:
        raise UserError(f"image_size must be a multiple of 32, got {settings['image_size']}")
    if settings["train_size"] < settings["batch_size"]:
        raise UserError(
            f"train_size={settings['train_size']} is smaller than batch_size="
            f"{settings['batch_size']}: no full batch to train on"
        )
    output = Path(settings["output"]).expanduser() if settings["output"] else default_output()
    check_output_dir(output.parent, "output")
    settings["output"] = str(output)
    return settings


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (images.permute(0, 3, 1, 2).float() - mean) / std


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of up to 1/8 of the image (NCHW)."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=gen) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    pad = h // 8
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def pretrain(settings: dict, progress: bool = True) -> dict:
    from benchmark.data.synthetic import UPSTREAM_CLASSES, load_upstream

    torch.manual_seed(settings["seed"])
    size = settings["image_size"]
    train_x, train_y = load_upstream(
        settings["data_seed"], "train", settings["train_size"], size, progress=progress
    )
    val_x, val_y = load_upstream(
        settings["data_seed"], "val", settings["val_size"], size, progress=progress
    )
    train_x, val_x = normalise(torch.from_numpy(train_x)), normalise(torch.from_numpy(val_x))
    train_y, val_y = torch.from_numpy(train_y).long(), torch.from_numpy(val_y).long()

    arch = OmegaConf.load(CONF_DIR / "backbone" / "swin_micro.yaml")
    model = build_swin(arch, size, settings["drop_path"], num_classes=len(UPSTREAM_CLASSES))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "relative_position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "relative_position" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=settings["lr"],
    )
    batch = settings["batch_size"]
    steps_per_epoch = len(train_x) // batch
    total = settings["epochs"] * steps_per_epoch
    warmup = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return settings["lr"] * (step + 1) / warmup
        return 0.5 * settings["lr"] * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    gen = torch.Generator().manual_seed(settings["seed"])
    start = time.perf_counter()
    bar = tqdm(total=total, desc="pre-training swin_micro", unit="step", disable=not progress)
    step = 0
    for epoch in range(settings["epochs"]):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            logits = model(augment(train_x[idx], gen))
            loss = F.cross_entropy(logits, train_y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            step += 1
            bar.update()
        accuracy = evaluate(model, val_x, val_y)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", val_acc=f"{accuracy:.1f}%")
    bar.close()
    seconds = time.perf_counter() - start

    if not math.isfinite(loss.item()):
        raise UserError(
            f"the pre-training loss became {loss.item()}; lower lr (lr={settings['lr']})"
        )
    output = Path(settings["output"])
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    blob = save(state)
    card = {
        "backbone": "swin_micro",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "command": "python -m benchmark.pretrain "
        + " ".join(f"{k}={v}" for k, v in settings.items() if k != "output"),
        "settings": {k: v for k, v in settings.items() if k != "output"},
        "classes": list(UPSTREAM_CLASSES),
        "val_accuracy": round(accuracy, 2),
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    # the weights first, then their card: a file whose card is missing or stale is refused
    atomic_write(output, lambda f: f.write(blob))
    text = json.dumps(card, indent=1, allow_nan=False) + "\n"
    atomic_write(output.with_suffix(".json"), lambda f: f.write(text), "w")
    return card


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), 256):
        logits = model(images[start : start + 256])
        correct += (logits.argmax(1) == labels[start : start + 256]).sum().item()
    return 100.0 * correct / len(images)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    try:
        settings = parse(argv)
        card = pretrain(settings)
    except UserError as err:
        return report_user_error(err)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {settings['output']} (upstream val accuracy {card['val_accuracy']}%); "
          f"train from it with backbone.weights={settings['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
