"""HiPPO pieces: Legendre polynomials, the LegT (translated) and LegS (scaled) operators.

Notation follows HiPPO / LMU:
- LegT memory of window theta: c(t) in R^N holds the Legendre coefficients of x on
  [t - theta, t]; continuous dynamics dc/dt = A c + B x with (LMU form)
      A_ij = (2i+1)/theta * (-1 if i < j else (-1)^(i-j+1)),   B_i = (2i+1)/theta * (-1)^i
  Discretised with zero-order hold at dt = 1 (one observation per step).
- LegS: M = -(tril(r) - diag(q)), r_q = 2q+1  (so diag(M) = -(q+1)); A = T M T^-1,
  T = diag(sqrt(2q+1)), B = sqrt(2q+1). FLAME initialises the SSD decays from diag(A).

The model itself uses :func:`legt_coefficients` (the closed form the LegT recurrence
approximates: a discrete Legendre projection of the last theta observations), so a
series' environment summary is exact and identical in the streaming and batch paths.
"""
from __future__ import annotations

import numpy as np
import torch


def legendre(n: int, u: torch.Tensor) -> torch.Tensor:
    """P_0..P_{n-1} evaluated at u (any shape) -> (*u.shape, n), by Bonnet's recurrence."""
    out = [torch.ones_like(u), u]
    for k in range(1, n - 1):
        out.append(((2 * k + 1) * u * out[k] - k * out[k - 1]) / (k + 1))
    return torch.stack(out[:n], dim=-1)


def legt_lmu(n: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous LegT (LMU) matrices A (n, n), B (n,)."""
    q = np.arange(n, dtype=np.float64)
    r = (2 * q + 1)[:, None] / theta
    i, j = np.meshgrid(q, q, indexing="ij")
    A = np.where(i < j, -1.0, (-1.0) ** (i - j + 1)) * r
    B = (2 * q + 1) * (-1.0) ** q / theta
    return A, B


def legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """LegS matrices A (n, n), B (n,) in HiPPO's normalised form."""
    q = np.arange(n, dtype=np.float64)
    r = 2 * q + 1
    M = -(np.tril(np.ones((n, n))) * r[None, :] - np.diag(q))      # M_ij = -(2j+1) for i > j
    T = np.sqrt(r)
    A = T[:, None] * M / T[None, :]
    return A, np.sqrt(r)


def zoh(A: np.ndarray, B: np.ndarray, dt: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order-hold discretisation: Ad = exp(A dt), Bd = A^-1 (Ad - I) B."""
    n = A.shape[0]
    # exp of the augmented matrix [[A, B], [0, 0]] gives both blocks at once.
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n], aug[:n, n] = A * dt, B * dt
    E = torch.linalg.matrix_exp(torch.from_numpy(aug)).numpy()
    return E[:n, :n], E[:n, n]


def legt_recurrence(x: np.ndarray, n: int, theta: float) -> np.ndarray:
    """Run the discretised LegT memory over x (T,) -> memories (T, n). Reference / tests."""
    Ad, Bd = zoh(*legt_lmu(n, theta))
    c = np.zeros(n)
    out = np.empty((len(x), n))
    for t, v in enumerate(x):
        c = Ad @ c + Bd * v
        out[t] = c
    return out


def legt_reconstruct(c: np.ndarray, theta: float, delays: np.ndarray) -> np.ndarray:
    """Evaluate the LMU memory c (n,) at delays in [0, theta] -> values (len(delays),)."""
    n = c.shape[-1]
    # LMU convention: x(t - d) ~ sum_i c_i P_i(2 d / theta - 1) (shifted Legendre, flipped).
    basis = legendre(n, torch.from_numpy(2 * np.asarray(delays, dtype=np.float64) / theta - 1)).numpy()
    return basis @ c


def legt_coefficients(window: torch.Tensor, valid: torch.Tensor, theta: torch.Tensor, n: int) -> torch.Tensor:
    """Legendre coefficients of the last `theta` entries of each window (discrete LegT projection).

    window: (..., W) values (NaN-free; missing entries must be zero)
    valid:  (..., W) bool, which entries are observed
    theta:  (...,) integer window lengths, 1 <= theta <= W
    returns (..., n): c_k = (2k+1)/2 * integral of x(u) P_k(u) du by the midpoint rule, with
      u = -1 + (2 (i - (W - theta)) + 1) / theta for the last theta positions i.
    Missing entries are left out and the sum is renormalised by the observed count.
    """
    W = window.shape[-1]
    i = torch.arange(W, dtype=window.dtype, device=window.device)
    th = theta.to(window.dtype).unsqueeze(-1)
    inside = (i >= (W - th)) & valid                           # (..., W)
    # P depends on theta only: evaluate it once per distinct theta (a batch holds few). Same
    # elementwise operations on the same numbers, so the same bits as evaluating it per row; each
    # row's projection is the same (1, W) @ (W, n) product as a bmm over per-row copies of P
    # (what a gather gave: 32 MB for a training batch), here over a stride-0 view per theta.
    uniq, inv = torch.unique(theta.reshape(-1), return_inverse=True)
    th_u = uniq.to(window.dtype).unsqueeze(-1)
    u = -1 + (2 * (i - (W - th_u)) + 1) / th_u                 # (U, W), midpoints inside the window
    P = legendre(n, u.clamp(-1, 1))                            # (U, W, n)
    w = inside.to(window.dtype)
    cnt = w.sum(-1, keepdim=True).clamp_min(1)                 # observed points in the window
    xw = (window * w).reshape(-1, 1, W)
    proj = xw.new_empty(xw.shape[0], n)
    for j in range(len(uniq)):
        rows = (inv == j).nonzero()[:, 0]
        # A lone row would be one (1, W) @ (W, n) product, which a threaded BLAS sums in another
        # order than each matrix of a larger bmm (>= 2 threads): it goes as a batch of two, so a
        # row's bits never depend on how many rows of its batch share its theta.
        both = rows.repeat(2) if len(rows) == 1 else rows
        proj[rows] = torch.bmm(xw[both], P[j].expand(len(both), W, n))[:len(rows), 0]
    k = torch.arange(n, dtype=window.dtype, device=window.device)
    # (2k+1)/2 * integral over [-1, 1]  ~  (2k+1)/2 * (2 / count) * sum  =  (2k+1) * mean
    return (2 * k + 1) * proj.reshape(*theta.shape, n) / cnt
