"""What the synthetic benchmark is made of: its classes, tasks, distances and splits (the
package docstring defines them). `RENDER_VERSION` (the scenes) and `UPSTREAM_VERSION` (the
upstream classification set) name the cache files, and each changes whenever an array it
names would."""

from __future__ import annotations

RENDER_VERSION = 3
# Version 3 changed the scenes alone: the upstream set is still rendered as in version 2.
UPSTREAM_VERSION = 2

SPLIT_SIZES_DEFAULT = {"train": 1000, "val": 250}
TASK_ARRAYS = ("image", "semseg", "human_parts", "sal", "normals", "depth", "edge")

SHAPE_CLASSES = ("sphere", "box", "cylinder", "cone", "ellipsoid", "pyramid")
SEMSEG_CLASSES: tuple[str, ...] = ("background", "figure", *SHAPE_CLASSES)
NUM_SEMSEG_CLASSES = len(SEMSEG_CLASSES)
FIGURE_CLASS = 1
UPSTREAM_CLASSES: tuple[str, ...] = (*SHAPE_CLASSES, "figure", "capsule", "octahedron", "ring")

SALIENT_DISTANCE = 2.6  # metres, horizontal distance from the camera to the object's footprint
FLOOR_RADIUS = 30.0  # metres, horizontal radius of the ground disc around the camera
# Distances (metres, log-uniform) at which figures and shapes stand. The decoders' finest map
# has stride 8 (an 8x8 grid at 64 px), so objects stand near enough to span several of its
# cells, as PASCAL's objects do at 448 px.
FIGURE_DISTANCES = (1.2, 3.0)
SHAPE_DISTANCES = (1.4, 4.5)
# A scene's figures have limbs this many times as thick as the upstream task's (and as render
# v2's): at 64 px a limb of the upstream proportions is 2-4 pixels wide.
LIMB_SCALE = 1.6
# Each shape class has its own hue band (class k of n: hue k/n, +- CLASS_HUE_SPREAD), which
# this share of its instances wears; the others take any colour. Shape alone is too weak a cue
# for a 64-px image (the backbone's upstream accuracy is 75 % on large centred objects).
CLASS_HUE_SHARE = 0.75
CLASS_HUE_SPREAD = 0.04
IGNORE = 255

_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
_SCENE_DOMAIN, _UPSTREAM_DOMAIN = 0, 1
