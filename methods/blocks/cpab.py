"""The 1-D CPAB transform (continuous piecewise-affine based diffeomorphisms; Freifeld et
al., TPAMI 2017) that DiTASK applies to the singular values of a frozen weight, in plain
PyTorch: no compiled extension, forward and gradient on any device through autograd.

It computes what the `difw` library's `transform_data` computes for DiTASK's settings
(domain [0, 1], zero velocity at both ends, the reduced-row-echelon basis, integration time
1, closed-form integration):

- Velocity. `cells` equal cells of width h = 1 / cells; the field v is continuous, affine in
  each cell and zero at 0 and 1, so it is the linear interpolant of its values u_j at the
  knots j / cells, u_0 = u_cells = 0. The `cells - 1` parameters theta give the knot values
  through difw's basis (column k: slope 1 / k on cells 0..k-1, slope -1 and intercept
  (k + 1) / cells on cell k, zero beyond; `knot_velocities`):

      u_j = (j / cells) * sum_{k = j}^{cells - 1} theta_k / k

- Integration. phi(x) solves dphi/dt = v(phi), phi(0) = x, at t = 1. Inside a cell with
  v(x) = a x + b the flow is psi(x, t) = x + v(x) (e^{a t} - 1) / a, and a point moving with
  velocity v reaches the cell edge x_e (velocity v_e of the same sign) after
  log(v_e / v) / a. A point never crosses a knot whose velocity is zero or of the other sign
  (a fixed point of the flow), so it moves monotonically through whole cells and stops in
  the first one where the time left runs out. Instead of difw's loop over crossings (one
  step per cell crossed), `integrate` gets every cell's crossing time at once, sums them
  along the direction of motion and picks the cell where the cumulative time passes 1: a
  fixed number of tensor operations, whatever the tessellation. The small-`a` limits are
  taken through expm1 and log1p, where difw switches formula below float32's epsilon, and
  a crossing lands on the edge itself rather than epsilon beyond it: the results agree to
  float rounding.
- Resampling (`warp_signal`). A signal of k samples at x_i = i / (k - 1) (here the sorted
  singular values) is read at phi(x_i) by linear interpolation between its neighbours.
  phi is increasing with phi(0) = 0 and phi(1) = 1, so the first and last samples are kept,
  a non-increasing signal stays non-increasing and theta = 0 is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def knot_velocities(theta: Tensor) -> Tensor:
    """(..., cells - 1) parameters -> (..., cells + 1) velocities at the knots j / cells."""
    cells = theta.shape[-1] + 1
    k = torch.arange(1, cells, device=theta.device, dtype=theta.dtype)
    # suffix sums of theta_k / k: entry j - 1 holds sum_{k >= j}
    tails = (theta / k).flip(-1).cumsum(-1).flip(-1)
    inner = tails * k / cells
    zero = inner.new_zeros(*inner.shape[:-1], 1)
    return torch.cat([zero, inner, zero], dim=-1)


def _expm1_ratio(z: Tensor) -> Tensor:
    """(e^z - 1) / z, 1 at z = 0 (a second-order series near 0)."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(safe) / safe)


def _log1p_ratio(z: Tensor) -> Tensor:
    """log(1 + z) / z for z > -1, 1 at z = 0."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - z / 2 + z * z / 3, torch.log1p(safe) / safe)


def _travel_time(distance: Tensor, v: Tensor, a: Tensor, valid: Tensor) -> Tensor:
    """Time to move `distance` > 0 from velocity v > 0 in a cell of slope a; inf where not
    `valid` (the velocity at the end is not positive)."""
    v = torch.where(valid, v, torch.ones_like(v))
    z = torch.where(valid, a * distance / v, torch.zeros_like(v))  # v_end / v - 1 > -1
    return torch.where(valid, distance / v * _log1p_ratio(z), torch.full_like(v, torch.inf))


def _integrate_rightwards(u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """phi(x) for the points of x (..., n) whose velocity is positive (others: as if they
    did not leave their cell), for knot velocities u (..., cells + 1); and v(x)."""
    cells = u.shape[-1] - 1
    left_u, right_u = u[..., :-1], u[..., 1:]
    slope = cells * (right_u - left_u)  # (..., cells)
    cell = (x * cells).floor().long().clamp(0, cells - 1)  # (..., n)
    lower = cell.to(x.dtype) / cells
    a0 = slope.gather(-1, cell)
    v0 = u.gather(-1, cell) + a0 * (x - lower)
    edge_u = u.gather(-1, cell + 1)
    t0 = _travel_time(lower + 1 / cells - x, v0, a0, (v0 > 0) & (edge_u > 0))
    # whole-cell crossing times, and the arrival time at the left edge of every later cell
    crossing = _travel_time(
        torch.full_like(left_u, 1 / cells), left_u, slope, (left_u > 0) & (right_u > 0)
    )
    later = torch.arange(cells, device=x.device) > cell.unsqueeze(-1)  # (..., n, cells)
    between = crossing.unsqueeze(-2).where(later, 0)
    zero = between.new_zeros(*between.shape[:-1], 1)
    before = torch.cat([zero, between.cumsum(-1)[..., :-1]], dim=-1)  # exclusive sums
    arrival = t0.unsqueeze(-1) + before
    final = cell + (later & (arrival <= 1)).sum(-1)  # the cell where the time runs out
    moved = final > cell
    start = torch.where(moved, final.to(x.dtype) / cells, x)
    arrived = arrival.gather(-1, final.unsqueeze(-1)).squeeze(-1).where(moved, 0)
    remaining = torch.where(moved, 1 - arrived, 1)
    a = slope.gather(-1, final)
    v = u.gather(-1, final) + a * (start - final.to(x.dtype) / cells)
    return start + v * remaining * _expm1_ratio(a * remaining), v0


def integrate(theta: Tensor, x: Tensor) -> Tensor:
    """phi_theta(x): the flow of the CPA field of `theta` (..., cells - 1) at time 1, for
    points x (..., n) in [0, 1] (leading dimensions broadcast)."""
    u = knot_velocities(theta)
    shape = torch.broadcast_shapes(u.shape[:-1], x.shape[:-1])
    u = u.expand(*shape, u.shape[-1])
    x = x.expand(*shape, x.shape[-1])
    # leftward motion is rightward motion of the mirrored field v'(y) = -v(1 - y), y = 1 - x;
    # both directions in one pass
    phi, v = _integrate_rightwards(torch.stack([u, -u.flip(-1)]), torch.stack([x, 1 - x]))
    return torch.where(v[0] < 0, 1 - phi[1], phi[0])


def warp_signal(signal: Tensor, theta: Tensor) -> Tensor:
    """Resample `signal` (..., k), sampled at linspace(0, 1, k), at phi_theta of those
    locations by linear interpolation (difw's `transform_data` with outsize k)."""
    k = signal.shape[-1]
    grid = torch.linspace(0, 1, k, device=signal.device, dtype=theta.dtype)
    position = integrate(theta, grid) * (k - 1)
    low = position.floor().long().clamp(0, k - 1)
    high = (low + 1).clamp(max=k - 1)
    weight = position - low
    shape = torch.broadcast_shapes(signal.shape[:-1], position.shape[:-1])
    signal = signal.to(theta.dtype).expand(*shape, k)
    low, high, weight = (t.expand(*shape, k) for t in (low, high, weight))
    return (1 - weight) * signal.gather(-1, low) + weight * signal.gather(-1, high)
