"""Batched geometry for images of varying size: resize, flip, rotation and scale (protocol §1.1).

The prepared arrays of a real dataset hold every image of a split in the top-left corner of
one canvas, with each image's true size beside it (`benchmark.data.prepared`). A batch is
gathered from the canvas and brought to the square model input by one sampling grid for
the whole batch (`affine_grid`; `grid_sample` for the image, an index gather for the
labels), on whatever device the batch is on.

Per image, the training transform composes what the reference pipelines apply one after the
other: a horizontal flip (probability 1/2); a rotation by an angle drawn from [-20, 20]
degrees and a scaling by a factor drawn from [0.75, 1.25], both about the image centre, the
result keeping the image's own size; then a resize to `size` x `size`, which ignores the
aspect ratio. Evaluation uses the resize alone. All three steps are affine, so they collapse
into one sampling grid and each pixel is interpolated once.

Two modes (`dataset.augment`, `Geometry.augment`) settle what the interpolation is and what
a rotation or a zoom-out brings in from outside the image; both apply to training and
evaluation batches alike (evaluation only resizes, so only the interpolation differs there):

- `official` (the default of `pascal_context`): what the official MTLoRA pipeline does. The
  image and the normals are interpolated bicubically, with 0 outside the image (black for
  the image, clamped to 0..255; the zero vector, no label, for normals), and the normals
  are scaled back to unit length wherever they are not zero; class maps are picked at the
  nearest pixel, and outside the image they are 0, which counts: background for `semseg`
  and `human_parts`, not salient for `sal`, no edge for `edge`. As in the official code, a
  `human_parts` map that is 0 everywhere after the transform (an image without people, or
  one whose people all left the view) is no label at all. Depth is picked at the nearest
  pixel, 0 (no label) outside, and divided by the scale factor as the official transform
  does. The official code rotates at the image's size and then resizes (two
  interpolations); here the two are one sampling grid, interpolated once.
- `clean` (the default of `nyud`, and our choice before the official behaviour was
  reproduced): bilinear for the image; nearest for every label (the source pixel whose area
  holds the sampling point), gathered in the stored dtype, so no label mixes two classes or
  a valid and an invalid pixel. What comes from outside the image is the ImageNet mean
  colour for the image (0 after normalisation) and no label for every task (255 for class
  maps, the zero vector for normals, 0 for depth), so the loss and the meters skip it.
  Depth values are not divided by the scale factor: a zoom is treated as a crop, not as the
  camera moving closer.

Choices the protocol leaves open, fixed here:
- Normals are vectors, not colours: the flip negates their x component and the rotation
  turns their in-plane (x, y) component by the angle the image content turns, so that a
  normal keeps pointing the same way relative to the surface it belongs to; z is unchanged.
  `Geometry.normals_y` says which image direction the normals' +y axis points to ("down":
  the camera frame x right, y down, z forward, as in the synthetic benchmark; "up" flips the
  sense of the rotation). Scaling and the aspect change of the resize leave normals as
  they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALS_Y = ("down", "up")
AUGMENT_MODES = ("official", "clean")


@dataclass(frozen=True)
class Geometry:
    """How the images of a split, of varying size, become batches of one size."""

    size: int  # side of the square model input
    max_rotation: float = 20.0  # degrees, protocol §1.1
    scale: tuple[float, float] = (0.75, 1.25)  # protocol §1.1
    flip: bool = True
    normals_y: str = "down"  # image direction of the normals' +y axis
    original_resolution: bool = False  # score at each image's own size (else at `size`)
    augment: str = "clean"  # what comes from outside the image, and the interpolation

    def __post_init__(self):
        if self.normals_y not in NORMALS_Y:
            raise ValueError(f"normals_y must be one of {NORMALS_Y}, got {self.normals_y!r}")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {self.augment!r}")

    @property
    def official(self) -> bool:
        return self.augment == "official"


@dataclass
class Augmentation:
    """One draw of the random transform for each image of a batch (CPU tensors)."""

    flip: Tensor  # (N,) bool
    angle: Tensor  # (N,) degrees; positive turns the content clockwise on screen
    scale: Tensor  # (N,) > 1 zooms in

    def __getitem__(self, index: slice) -> Augmentation:
        """The draws of some of the images (a rank's share of a global batch)."""
        return Augmentation(self.flip[index], self.angle[index], self.scale[index])

    @classmethod
    def identity(cls, n: int) -> Augmentation:
        return cls(torch.zeros(n, dtype=torch.bool), torch.zeros(n), torch.ones(n))

    @classmethod
    def draw(cls, geometry: Geometry, n: int, generator: torch.Generator) -> Augmentation:
        flip = torch.rand(n, generator=generator) < 0.5
        if not geometry.flip:
            flip = torch.zeros_like(flip)
        u = torch.rand(n, generator=generator)
        angle = (2 * u - 1) * geometry.max_rotation
        lo, hi = geometry.scale
        scale = lo + (hi - lo) * torch.rand(n, generator=generator)
        return cls(flip, angle, scale)


def sampling_grid(
    sizes: Tensor, canvas: tuple[int, int], size: int, aug: Augmentation, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The `grid_sample` grid (N, size, size, 2) and validity mask (N, 1, size, size).

    `sizes` (N, 2) holds each image's (height, width) inside a canvas of `canvas` = (H, W).
    In centre-relative pixel coordinates of the image, an output pixel at normalised
    position (a, b) in [-1, 1]^2 comes from v = R(-angle) diag(w/2, h/2) (a, b) / scale,
    mirrored in x when flipped; `grid_sample`'s normalised canvas coordinates follow.
    """
    h = sizes[:, 0].double()
    w = sizes[:, 1].double()
    big_h, big_w = canvas
    rad = torch.deg2rad(aug.angle.double())
    cos, sin = torch.cos(rad), torch.sin(rad)
    sign = torch.where(aug.flip, -1.0, 1.0).double()
    inv_s = 1.0 / aug.scale.double()
    # v = inv_s * [[cos, sin], [-sin, cos]] @ [[w/2, 0], [0, h/2]] @ (a, b)
    vx_a, vx_b = inv_s * cos * w / 2, inv_s * sin * h / 2
    vy_a, vy_b = -inv_s * sin * w / 2, inv_s * cos * h / 2
    # canvas x = (w + 2 sign vx) / W - 1, canvas y = (h + 2 vy) / H - 1
    theta = torch.stack(
        [
            torch.stack([2 * sign * vx_a / big_w, 2 * sign * vx_b / big_w, w / big_w - 1], -1),
            torch.stack([2 * vy_a / big_h, 2 * vy_b / big_h, h / big_h - 1], -1),
        ],
        dim=1,
    ).float()
    n = sizes.shape[0]
    theta = theta.to(device, non_blocking=True)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    # Back to canvas pixels: inside the image where 0 <= x < w and 0 <= y < h.
    x = (grid[..., 0] + 1) * (big_w / 2)
    y = (grid[..., 1] + 1) * (big_h / 2)
    # small host tensors: copied without blocking, so batches never wait for the GPU
    w_dev = w.float().to(device, non_blocking=True).view(n, 1, 1)
    h_dev = h.float().to(device, non_blocking=True).view(n, 1, 1)
    valid = (x >= 0) & (x < w_dev) & (y >= 0) & (y < h_dev)
    return grid, valid.unsqueeze(1)


def nearest_indices(grid: Tensor, canvas: tuple[int, int]) -> Tensor:
    """(N, size, size) flat indices y * W + x of the canvas pixel nearest to each sampling
    point (the one whose area contains it), clamped into the canvas; the labels are
    gathered at these indices, in their stored dtype. Points outside the image are masked
    by `sampling_grid`'s validity mask."""
    big_h, big_w = canvas
    x = torch.floor((grid[..., 0] + 1) * (big_w / 2)).long().clamp_(0, big_w - 1)
    y = torch.floor((grid[..., 1] + 1) * (big_h / 2)).long().clamp_(0, big_h - 1)
    return y * big_w + x


def normals_rotation(aug: Augmentation, normals_y: str) -> Tensor:
    """(N, 2, 2) matrices that carry the in-plane normal (x, y) along with the image.

    In image coordinates (x right, y down) the content at input direction d appears along
    R(angle) F d in the output, F = diag(-1, 1) when flipped; normals whose +y points up
    see the same motion as R(-angle) F.
    """
    rad = torch.deg2rad(aug.angle.double())
    if normals_y == "up":
        rad = -rad
    cos, sin = torch.cos(rad), torch.sin(rad)
    sign = torch.where(aug.flip, -1.0, 1.0).double()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], dim=1)
    return (rot * torch.stack([sign, torch.ones_like(sign)], -1).unsqueeze(1)).float()


def rotate_normals(normals: Tensor, matrices: Tensor) -> Tensor:
    """Apply (N, 2, 2) `matrices` to the (x, y) channels of (N, 3, H, W) `normals`."""
    xy = torch.einsum(
        "nij,njhw->nihw", matrices.to(normals.device, non_blocking=True), normals[:, :2]
    )
    return torch.cat([xy, normals[:, 2:]], dim=1)


def inside_mask(sizes: Tensor, canvas: tuple[int, int], device: torch.device) -> Tensor:
    """(N, 1, H, W) bool: the pixels of each image inside the canvas (its top-left corner)."""
    big_h, big_w = canvas
    n = sizes.shape[0]
    sizes = sizes.to(device, non_blocking=True)
    rows = torch.arange(big_h, device=device).view(1, big_h, 1) < sizes[:, 0].view(n, 1, 1)
    cols = torch.arange(big_w, device=device).view(1, 1, big_w) < sizes[:, 1].view(n, 1, 1)
    return (rows & cols).unsqueeze(1)


def sample_image(image: Tensor, sizes: Tensor, grid: Tensor, official: bool) -> Tensor:
    """The (N, 3, size, size) float image in 0..255 at the sampling points of `grid`, from
    the (N, H, W, 3) canvas crop `image`: bilinear (`clean`; the canvas repeats each image's
    border, so the border does not blend in black), or bicubic with black outside the image,
    clamped to 0..255 (`official`). Pixels from outside the image are the caller's to mask
    in `clean` mode; in `official` they are already black."""
    x = image.permute(0, 3, 1, 2).float()
    if not official:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
    x = torch.where(inside_mask(sizes, tuple(x.shape[2:]), x.device), x, 0.0)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 255.0)


def sample_normals_cubic(normals: Tensor, grid: Tensor) -> Tensor:
    """`official` normals labels: the (N, 3, H, W) decoded canvas normals (zero vector: no
    label, and outside each image) interpolated bicubically at `grid`, then scaled back to
    unit length where not zero. A point all of whose 16 source pixels carry no label stays
    the zero vector (no label); one near an unlabelled region blends with the zeros before
    it is rescaled, as in the official pipeline."""
    out = F.grid_sample(normals.float(), grid, mode="bicubic", padding_mode="zeros",
                        align_corners=False)
    norm = out.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, out / norm.clamp_min(1e-30), 0.0)


def official_fill(task: str, label: Tensor, valid: Tensor, scale: Tensor) -> Tensor:
    """`official` labels (`benchmark.tasks` formats, picked at the nearest pixel) outside
    `valid` (N, 1, H, W): 0 for class maps, which then counts; 0 (no label) for depth, whose
    values are divided by each image's `scale`. `human_parts`: the stored "no person" map
    (all 255) is 0 like every other background, and a map that is 0 everywhere afterwards
    is no label (255) as a whole."""
    if task == "depth":
        per_image = scale.to(label.device, non_blocking=True).view(-1, 1, 1, 1).float()
        return torch.where(valid, label / per_image, 0.0)
    label = torch.where(valid[:, 0], label, 0)
    if task == "human_parts":
        label = torch.where(label == 255, 0, label)
        empty = (label == 0).flatten(1).all(dim=1).view(-1, 1, 1)
        label = torch.where(empty, 255, label)
    return label
