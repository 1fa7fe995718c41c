"""One scene of the benchmark: sampled, rendered, and labelled from its centre rays (the
label definitions are in the package docstring)."""

from __future__ import annotations

import numpy as np

from benchmark.data.labels import boundaries
from benchmark.data.synthetic.camera import _camera_from, _streams
from benchmark.data.synthetic.constants import _SCENE_DOMAIN, FIGURE_CLASS, IGNORE
from benchmark.data.synthetic.render import _finish_image, _render
from benchmark.data.synthetic.sampling import _sample_scene


def render_scene(seed: int, split: str, index: int, image_size: int) -> dict[str, np.ndarray]:
    """One image and all its labels (see the package docstring for the definitions)."""
    cam_ss, scene_ss, noise_ss = _streams(_SCENE_DOMAIN, seed, split, index)
    n = int(image_size)
    cam = _camera_from(cam_ss, n)
    sc = _sample_scene(np.random.default_rng(scene_ss), cam)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        samples, t, pid, hit, normals = _render(sc, cam, ground=True, shadows=True)
    image = _finish_image(samples, sc.noise, np.random.default_rng(noise_ss))

    # Labels from the centre samples (the first n*n entries).
    centre = hit < n * n
    hc = hit[centre]
    pid_c = pid[: n * n]
    lookup = np.array([0, 0] + [p.inst for p in sc.prims], dtype=np.int32)  # pid + 2
    inst = lookup[pid_c + 2].reshape(n, n)  # 0 sky, 1 ground, 2.. objects
    inst[pid_c.reshape(n, n) == -1] = 0  # sky
    inst[pid_c.reshape(n, n) == -2] = 1  # ground
    classes = np.asarray(sc.classes, dtype=np.uint8)
    semseg = classes[inst]
    parts = np.array([0, 0] + [p.part for p in sc.prims], dtype=np.uint8)[pid_c + 2].reshape(n, n)
    if (semseg == FIGURE_CLASS).any():
        human = np.where(semseg == FIGURE_CLASS, parts, 0).astype(np.uint8)
    else:
        human = np.full((n, n), IGNORE, dtype=np.uint8)
    sal = np.asarray(sc.salient, dtype=np.uint8)[inst]

    depth = np.zeros(n * n)
    depth[hc] = t[hc]
    nrm = np.zeros((n * n, 3))
    nrm[hc] = np.stack(cam.to_camera(*normals[centre].T), axis=1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)

    return {
        "image": image,
        "semseg": semseg,
        "human_parts": human,
        "sal": sal,
        "normals": nrm.reshape(n, n, 3).astype(np.float32),
        "depth": depth.reshape(n, n).astype(np.float32),
        "edge": boundaries(inst),
    }
