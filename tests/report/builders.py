"""Records and results directories for the report's tests, written by hand: what the
report must make of them is worked out in each test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

from benchmark.config import compose_all, expand
from benchmark.report.command import write_reports
from benchmark.report.load import load
from tests.conftest import SMALL_DATA

TASKS = ["semseg", "human_parts", "sal", "normals"]


# protocol §3.2 (MTLoRA, CVPR 2024, Table 1): label -> (method, semseg, parts, sal, normals)
PUBLISHED = {
    "single task": ("single_task", 67.21, 61.93, 62.35, 17.97),
    "full_ft": ("full_ft", 67.56, 60.24, 65.21, 16.64),
    "decoders_only": ("decoders_only", 65.09, 53.48, 57.46, 20.69),
    "mtlora r=16": ("mtlora", 68.19, 58.99, 64.48, 17.03),
    "mtlora r=32": ("mtlora", 67.74, 59.46, 64.90, 16.59),
    "mtlora r=64": ("mtlora", 67.90, 59.84, 65.40, 16.60),
}


TRAINABLE = {"single task": 112_017_896, "full_ft": 29_464_442, "decoders_only": 1_946_624,
             "mtlora r=16": 4_953_146, "mtlora r=32": 6_083_642, "mtlora r=64": 8_344_634}


def make_record(label, method, values, seed=0, trainable=1_000_000, dataset="pascal_context",
                backbone="swin_tiny", budget="paper", seconds=100.0, memory=1000.0):
    semseg, parts, sal, normals = values
    return {
        "schema": 1, "status": "ok", "error": None, "method": method, "label": label,
        "method_config": {}, "dataset": dataset, "tasks": list(TASKS), "backbone": backbone,
        "budget": budget, "seed": seed, "eval_resolution": "448",
        "params": {"trainable": trainable, "total": 30_000_000, "decoders": 1_946_624},
        "metrics": {"semseg": {"miou": semseg}, "human_parts": {"miou": parts},
                    "sal": {"miou": sal, "maxf": sal + 10},
                    "normals": {"mean": normals, "median": normals - 2}},
        "primary": {t: k for t, k in zip(TASKS, ["semseg.miou", "human_parts.miou",
                                                 "sal.miou", "normals.mean"])},
        "delta_m": 99.0,  # wrong on purpose: the report must recompute it
        "reference": None,
        "cost": {"train_seconds": seconds, "train_images": 1000,
                 "train_images_per_second": 1000 / seconds, "peak_memory_mb": memory,
                 "memory_kind": "cuda_allocated", "device": "test gpu", "world_size": 1},
        "config": {"method": {"name": method, "label": label}},
    }


def failed_record(method, seed=0, error="RuntimeError: out of memory", **group):
    record = {"schema": 1, "status": "failed", "error": error, "method": method,
              "label": method, "dataset": "pascal_context", "tasks": list(TASKS),
              "backbone": "swin_tiny", "budget": "paper", "seed": seed,
              "config": {"method": {"name": method, "label": method}}}
    record.update(group)
    return record


def write(results: Path, record: dict, name: str | None = None) -> Path:
    name = name or f"{record['label']}-seed{record['seed']}".replace(" ", "-")
    path = results / record["dataset"] / record["backbone"] / record["budget"] / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "result.json").write_text(json.dumps(record))
    return path / "result.json"


def published_records(results: Path, seed: int = 0) -> None:
    for label, (method, *values) in PUBLISHED.items():
        write(results, make_record(label, method, values, seed, TRAINABLE[label]))


def build(results: Path, out: Path, figures: bool = False) -> list[Path]:
    records, _ = load(results)
    return write_reports(records, out, figures=figures)


def read_csv(out: Path) -> dict[str, dict[str, str]]:
    (path,) = out.glob("*/summary.csv")
    with path.open() as f:
        return {row["label"]: row for row in csv.DictReader(f)}


T_975_2 = 4.302652729911275


# semseg per seed (0, 1, 2), the other tasks at the reference: Δm = (semseg - 50) / 50 * 100 / 4
SEMSEG = {
    "best": ("mtlora", (54.0, 52.0, 56.0)),  # Δm 2.0, 1.0, 3.0
    "close": ("lora", (53.0, 53.0, 55.4)),  # Δm 1.5, 1.5, 2.7: -0.5, +0.5, -0.3 from best
    "full_ft": ("full_ft", (52.0, 50.0, 54.0)),  # Δm 1.0, 0.0, 2.0: always 1 below best
    "far": ("bitfit", (44.0, 41.6, 46.4)),  # Δm -3.0, -4.2, -1.8
}


def three_seed_records(results: Path, curves: bool = False) -> None:
    for seed in range(3):
        write(results, make_record("single task", "single_task", (50, 50, 50, 20), seed))
        for label, (method, semseg) in SEMSEG.items():
            record = make_record(label, method, (semseg[seed], 50, 50, 20), seed)
            if curves:
                record["curves"] = {
                    "train_loss": {t: [2.0 - 0.1 * seed, 1.0, 0.5 + 0.01 * seed] for t in TASKS},
                    "val": [{"epoch": e, "metrics": {"semseg": {"miou": 40.0 + e + seed}}}
                            for e in (1, 2, 3)],
                }
            write(results, record)


SWEEP = ["method=full_ft", "budget=smoke", *SMALL_DATA, "budget.lr=1e+40,1e-40"]


def swept_records(results) -> list[tuple]:
    records = []
    for cfg in compose_all(expand(SWEEP)):
        record = make_record("full_ft", "full_ft", (60, 50, 50, 20), dataset="synthetic",
                             backbone="swin_micro", budget="smoke")
        record["config"] = OmegaConf.to_container(cfg, resolve=True)
        record["config"]["results_dir"] = str(results)
        records.append((cfg, record))
    return records
