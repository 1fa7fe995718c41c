"""Streaming evaluation meters for the dense-prediction tasks and the multi-task score Δm.

Every meter accumulates sufficient statistics over a whole split and turns them into metrics
only in :meth:`Meter.compute`. The protocol (protocol §1.4, following the MTI-Net / ATRC evaluation
code that MTLoRA reports with):

* ``semseg`` / ``human_parts`` -- one confusion matrix over the split (argmax of the logits
  against the label, label 255 ignored); ``miou`` is the mean of TP / (TP + FP + FN) over *all*
  classes, background included, where a class absent from both ground truth and prediction
  scores 0; ``pixel_acc`` is the share of valid pixels predicted correctly.
* ``sal`` -- ``miou``: for each threshold of ``linspace(0.2, 0.9, 15)`` the IoU of
  ``sigmoid(logit) > t`` against the label per image (1 when both masks are empty), averaged
  over images, then the maximum over thresholds. ``maxf``: F-measure with beta^2 = 0.3 from
  precision and recall pooled over all pixels of the split, maximum over the thresholds
  ``0.05, 0.10, ..., 0.95``. ``maxf_official``: the number the official MTLoRA / ASTMT
  evaluator prints as "Beta maxF", which applies a second sigmoid to the probabilities and
  counts a pixel salient when ``sigmoid(prob) >= t`` (same thresholds, same pooling); it is
  kept only so that results can be set beside papers that report it (``maxf`` is the correct
  formula).
* ``normals`` -- angle in degrees between the L2-normalised prediction and label over every
  valid pixel of the split (label of non-zero norm): ``mean`` (the primary metric; the papers
  and the official evaluator call it "rmse"), ``median``, ``rms`` (the true root mean square
  of the angle; records written before it was renamed call it ``rmse`` and are migrated when
  read, see ``benchmark.records``), and the shares of pixels below 11.25, 22.5 and 30
  degrees.
* ``depth`` -- ``rmse`` and ``abs_rel`` over the valid pixels of the split (label > 0).
* ``edge`` -- pixel-level ``maxf`` (beta^2 = 1), see :class:`EdgeMeter`.

All values are percentages except angles (degrees) and depth errors (label units).

State lives in tensors on the device of the predictions; ``update`` issues no host
synchronisation (no ``.item()``, no data-dependent Python branching, no boolean indexing), so
it can run inside an asynchronous evaluation loop. Every piece of state is a sum: distributed
evaluation reduces the tensors of :meth:`Meter.state_tensors` with ``all_reduce`` (SUM, in
place) on every rank before calling ``compute``.

The base class is in ``meter``, the meters in ``segmentation`` (``semseg``, ``human_parts``),
``binary`` (``sal``, ``edge``) and ``geometry`` (``normals``, ``depth``); ``multitask`` builds
the meters of a model (``build_meter``, ``TaskMeters``) and computes ``delta_m``.
"""

from __future__ import annotations

from benchmark.metrics.binary import EdgeMeter, SaliencyMeter
from benchmark.metrics.geometry import DepthMeter, NormalsMeter
from benchmark.metrics.meter import Meter
from benchmark.metrics.multitask import TaskMeters, build_meter, delta_m
from benchmark.metrics.segmentation import SegmentationMeter

__all__ = [
    "DepthMeter",
    "EdgeMeter",
    "Meter",
    "NormalsMeter",
    "SaliencyMeter",
    "SegmentationMeter",
    "TaskMeters",
    "build_meter",
    "delta_m",
]
