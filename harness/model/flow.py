"""Flow matching conventions shared by every variant (DESIGN.md, "Flow matching conventions").

x_σ = (1 − σ)·x₀ + σ·ε with σ = 1 pure noise; the network predicts v = ε − x₀; sampling is Euler
over a shifted σ grid from 1 to 0.
"""
from __future__ import annotations

import torch


def shift(u: torch.Tensor, s: float) -> torch.Tensor:
    """Time shift: σ = s·u / (1 + (s − 1)·u); s > 1 spends more time at high noise."""
    return s * u / (1 + (s - 1) * u)


def sample_sigma(shape, s: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return shift(torch.rand(shape, generator=generator), s)


def sample_beta_sigma(shape, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flash schedule: σ ~ Beta(α, 1), noise-heavy (mean α/(α+1)), via inverse CDF u^(1/α)."""
    return torch.rand(shape, generator=generator) ** (1.0 / alpha)


def add_noise(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * eps


def velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def sigma_grid(steps: int, s: float) -> torch.Tensor:
    """steps+1 noise levels from 1 to 0 (Euler takes `steps` steps)."""
    return shift(torch.linspace(1.0, 0.0, steps + 1), s)


def euler(x: torch.Tensor, v: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    return x + (sigma_to - sigma_from) * v


def loss_weight(sigma: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token loss weight: 'none' or a bell curve in σ peaking at 0.5 (mean ≈ 1)."""
    if kind == "none":
        return torch.ones_like(sigma)
    if kind == "bell":
        return 1.5 * torch.exp(-((sigma - 0.5) ** 2) / (2 * 0.25 ** 2))
    raise ValueError(f"unknown sigma_weighting '{kind}' (none | bell)")
