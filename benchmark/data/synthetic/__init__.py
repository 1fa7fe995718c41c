"""The embedded synthetic benchmark: ray-cast scenes with exact dense labels.

Scene model
-----------
Every image is rendered by casting rays against analytic primitives with numpy, one
vectorised pass per primitive over the pixels it can cover (a screen-space bound of its
bounding sphere), so every label is exact at the pixel centres.

* Camera: a pinhole at the origin in the OpenCV camera frame (x right, y down, z forward),
  square pixels, principal point at the image centre. Per scene the horizontal field of view
  (50-65 degrees), the height above the ground (1.2-2.0 m) and the downward pitch (10-20
  degrees) vary. `camera_intrinsics` returns the 3x3 matrix K of a scene; the ray through
  pixel (u, v) is K^-1 (u + 0.5, v + 0.5, 1).
* Ground: a horizontal plane below the camera, a disc of radius `FLOOR_RADIUS` (30 m, measured
  horizontally from the camera). Beyond it, and above the horizon, is sky: no geometry.
* Shapes (`SHAPE_CLASSES`): sphere, box (rotated about the vertical only), cylinder (upright
  or lying on its side), cone (apex up), ellipsoid (one axis stretched 1.6-2.5x, rotated about
  the vertical) and square pyramid, 3-6 per scene, 0.2-0.9 m in their half extents, 1.4-4.5 m
  from the camera (`SHAPE_DISTANCES`); a quarter of them float 0.1-0.6 m above the ground,
  the rest stand on it.
* Figures (the person analogue, 0-3 per scene, present in about 60 % of the images):
  articulated bodies of height 1.5-2.0 m made of a head (sphere), a torso (ellipsoid,
  leaning), upper and lower arms and legs (capsules, `LIMB_SCALE` = 1.6 times as thick as the
  upstream set's figures) with random shoulder, elbow, hip and knee angles, yaw and position
  (1.2-3 m away, `FIGURE_DISTANCES`). They stand on the ground (their lowest point touches
  it).
* Appearance: each shape class has a hue band (class k of the six: hue k/6 +- 0.04,
  saturation 0.55-0.95, value 0.5-1), which 75 % of its instances wear (`CLASS_HUE_SHARE`);
  the other quarter, the figures and all textures take colours drawn independently of the
  class, so colour is a strong cue but not a label. Object textures are solid (3D) patterns
  in the object's own frame: checker, stripes, dots or blotchy noise (a sum of random
  sinusoids), each in two colours. Figures wear per-figure colours on head / shirt / sleeves /
  trousers groups. The
  ground gets tiles, stripes, noise or a plain colour; the sky a two-colour gradient. Shading
  is Lambertian under one random directional light plus ambient, with a Blinn-Phong specular
  term, cast shadows (a shadow ray from every lit point against every other primitive) and
  distance fog towards the horizon colour, then gamma and mild Gaussian sensor noise.
* Anti-aliasing: each pixel averages five rays (the pixel centre and a rotated 4-sample grid
  at offsets of 1/8 and 3/8 pixel); every label comes from the centre ray alone.

Labels (H x W per image)
------------------------
* `semseg` uint8: the class of what the centre ray hits first: 0 background (ground and
  sky), 1 figure, 2.. the shapes in `SHAPE_CLASSES` order (see `SEMSEG_CLASSES`).
* `human_parts` uint8: if any figure pixel is visible, 0 everywhere except figure pixels,
  which carry the part id (1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg, 6 lower
  leg); if no figure pixel is visible, 255 (ignored) everywhere.
* `sal` uint8: 1 on the visible pixels of every object (shape or figure) whose ground
  position lies less than `SALIENT_DISTANCE` (2.6 m, measured horizontally from the camera to
  the centre of the object's footprint) from the camera, 0 elsewhere. Ground and sky are
  never salient; distant objects are not salient.
* `normals` float32 (H, W, 3): the unit surface normal in the camera frame, oriented towards
  the camera (its dot product with the viewing ray is negative); (0, 0, 0) on sky.
* `depth` float32: the z coordinate in the camera frame of the hit point, in metres
  (roughly 1.5-30); 0 on sky (no label). The ground is valid up to its 30 m edge.
* `edge` uint8: 1 on pixels with a 4-neighbour that belongs to another instance (every
  shape and every figure is one instance; the ground and the sky are one instance each).
* `image` uint8 (H, W, 3) RGB.

Determinism
-----------
Image `index` of `split` depends only on (seed, split, index, image_size): its random stream
is `np.random.SeedSequence([seed, domain, split_code, index])` (domain 0 for the scenes, 1 for
the upstream set; split codes train 1, val 2, test 3), spawned into independent streams for
the camera, the scene and the sensor noise. The scene itself does not depend on the image
size, so one scene can be rendered at 64 and at 128 pixels. Rendering in a process pool gives
the same arrays as rendering serially.

Upstream classification set
---------------------------
`render_upstream` draws a separate distribution for pre-training a backbone: one object
roughly centred (position jitter of up to 15 % of the frame, 45-80 % of the half-frame in
radius, any yaw, up to 35 degrees of tilt and roll), no ground, over a background of smooth
random colour noise. Its textures are none of the scene textures: marble (turbulent
sinusoids), linear gradients, grid lines and hexagon lines. The label is the object's index
in `UPSTREAM_CLASSES`: the six scene shapes, the figure, and three extra shapes: a capsule,
an octahedron and a ring (a torus approximated by twelve capsules). Upstream images have no
cast shadows.

Caching
-------
`load_split` and `load_upstream` render on first use and keep the arrays as one
uncompressed .npz under `cache_dir()/synthetic/` (`benchmark.data.cache`), named by
`RENDER_VERSION` (`UPSTREAM_VERSION` for the upstream set), seed, split, size and image
size. A file is written to a temporary name and
renamed into place, so a crash never leaves a partial file; a file that cannot be read back is
rendered again.

Modules
-------
`constants` (classes, distances, the versions), `geometry` (primitives, ray intersection,
normals), `camera` (the pinhole camera, its rays and the random streams), `textures`,
`objects` (shapes and figures), `sampling` (a random scene), `render` (tracing, shadows,
shading), `scene` (`render_scene`: an image and its labels), `upstream` (the upstream set) and
`store` (whole splits, the process pool and the cache). This package exports the public
names of all of them.
"""

from __future__ import annotations

from benchmark.data.synthetic.camera import camera_intrinsics
from benchmark.data.synthetic.constants import (
    FIGURE_CLASS,
    FIGURE_DISTANCES,
    FLOOR_RADIUS,
    IGNORE,
    NUM_SEMSEG_CLASSES,
    RENDER_VERSION,
    SALIENT_DISTANCE,
    SEMSEG_CLASSES,
    SHAPE_CLASSES,
    SHAPE_DISTANCES,
    SPLIT_SIZES_DEFAULT,
    TASK_ARRAYS,
    UPSTREAM_CLASSES,
    UPSTREAM_VERSION,
)
from benchmark.data.synthetic.scene import render_scene
from benchmark.data.synthetic.store import load_split, load_upstream, render_split, render_upstream
from benchmark.data.synthetic.upstream import render_upstream_image

__all__ = [
    "FIGURE_CLASS",
    "FIGURE_DISTANCES",
    "FLOOR_RADIUS",
    "IGNORE",
    "NUM_SEMSEG_CLASSES",
    "RENDER_VERSION",
    "SALIENT_DISTANCE",
    "SEMSEG_CLASSES",
    "SHAPE_CLASSES",
    "SHAPE_DISTANCES",
    "SPLIT_SIZES_DEFAULT",
    "TASK_ARRAYS",
    "UPSTREAM_CLASSES",
    "UPSTREAM_VERSION",
    "camera_intrinsics",
    "load_split",
    "load_upstream",
    "render_scene",
    "render_split",
    "render_upstream",
    "render_upstream_image",
]
