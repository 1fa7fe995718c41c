"""What the synthetic benchmark is made of: its classes, tasks, distances and splits (the
package docstring defines them); `RENDER_VERSION` names the cache files and changes whenever
a rendered array would."""

from __future__ import annotations

RENDER_VERSION = 2

SPLIT_SIZES_DEFAULT = {"train": 1000, "val": 250}
TASK_ARRAYS = ("image", "semseg", "human_parts", "sal", "normals", "depth", "edge")

SHAPE_CLASSES = ("sphere", "box", "cylinder", "cone", "ellipsoid", "pyramid")
SEMSEG_CLASSES: tuple[str, ...] = ("background", "figure", *SHAPE_CLASSES)
NUM_SEMSEG_CLASSES = len(SEMSEG_CLASSES)
FIGURE_CLASS = 1
UPSTREAM_CLASSES: tuple[str, ...] = (*SHAPE_CLASSES, "figure", "capsule", "octahedron", "ring")

SALIENT_DISTANCE = 3.5  # metres, horizontal distance from the camera to the object's footprint
FLOOR_RADIUS = 30.0  # metres, horizontal radius of the ground disc around the camera
# Distances (metres, log-uniform) at which figures and shapes stand. Objects are near enough
# to span several cells of the decoders' finest map (stride 8, an 8x8 grid at 64 px), as
# PASCAL's objects do at 448 px; farther ones would be a few pixels wide.
FIGURE_DISTANCES = (2.2, 7.0)
SHAPE_DISTANCES = (1.8, 8.0)
IGNORE = 255

_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
_SCENE_DOMAIN, _UPSTREAM_DOMAIN = 0, 1
