"""A TinyVLA-style diffusion action head: DDPM training, DDIM sampling, a small MLP denoiser.

TinyVLA keeps a compact pretrained vision-language backbone and generates actions with a
diffusion-policy head instead of action tokens. The denoiser here is a residual MLP that
sees the noisy chunk, the encoder's features and a sinusoidal embedding of the diffusion
step. Training (DDPM, Ho et al. 2020): draw a step ``t`` and Gaussian noise ``eps``, form
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` from the clean normalised chunk ``x_0``,
and regress ``eps`` with MSE over the unpadded steps. The noise schedule is the cosine one
of Nichol & Dhariwal 2021 (``squaredcos_cap_v2`` in diffusers, LeRobot's diffusion
policy default) over ``num_train_timesteps = 100`` steps.

Sampling (DDIM, Song et al. 2021, ``eta = 0``): deterministic, in ``num_inference_steps``
(10) evenly spaced steps (``T/n * [n-1, ..., 0]``, diffusers' "leading" spacing). At each step
the clean chunk is estimated from the predicted noise, clipped to [-1, 1] (diffusers'
``clip_sample``), the noise re-derived from the clipped estimate, and the sample moved to the
previous step. The starting noise comes from a generator seeded with ``seed``, so the same
features always give the same chunk; the output is clipped to [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apps.robotics.policies.base import ActionHead


def cosine_betas(steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Betas of the cosine schedule: ``abar(t) = cos²((t/T + s)/(1 + s) · π/2)``."""

    def abar(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)]
    return torch.tensor(betas, dtype=torch.float64)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``(B, dim)`` of integer steps ``t`` (B,), as in transformers."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class _Block(nn.Module):
    """Pre-norm residual MLP block; the conditioning vector is added to its input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        return h + self.fc2(F.gelu(self.fc1(self.norm(h) + cond)))


class Denoiser(nn.Module):
    """``eps_hat(x_t, t, features)``: a residual MLP over the flattened chunk."""

    def __init__(
        self, sample_dim: int, feature_dim: int, hidden_dim: int, blocks: int, time_dim: int
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.cond = nn.Sequential(
            nn.Linear(feature_dim + time_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
        )
        self.inp = nn.Linear(sample_dim, hidden_dim)
        self.blocks = nn.ModuleList(_Block(hidden_dim) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, sample_dim))

    def forward(self, x: Tensor, t: Tensor, features: Tensor) -> Tensor:
        cond = self.cond(torch.cat([features, timestep_embedding(t, self.time_dim)], dim=-1))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


class DiffusionHead(ActionHead):
    """DDPM-trained, DDIM-sampled action chunks conditioned on the features.

    Args:
        feature_dim, action_dim, chunk_size: See :class:`ActionHead`.
        hidden_dim: Width of the denoiser.
        blocks: Residual blocks of the denoiser.
        time_dim: Size of the sinusoidal step embedding.
        num_train_timesteps: Diffusion steps ``T`` of training.
        num_inference_steps: DDIM steps at inference (at most ``T``).
        seed: Seed of the starting noise at inference (same features -> same chunk).
    """

    name = "diffusion"

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        chunk_size: int,
        hidden_dim: int = 256,
        blocks: int = 3,
        time_dim: int = 64,
        num_train_timesteps: int = 100,
        num_inference_steps: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(feature_dim, action_dim, chunk_size)
        if num_train_timesteps < 1 or not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(
                f"diffusion head: need 1 <= num_inference_steps ({num_inference_steps}) <= "
                f"num_train_timesteps ({num_train_timesteps})"
            )
        self.num_train_timesteps = num_train_timesteps
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.sample_dim = chunk_size * action_dim
        self.denoiser = Denoiser(self.sample_dim, feature_dim, hidden_dim, blocks, time_dim)
        abar = torch.cumprod(1 - cosine_betas(num_train_timesteps), dim=0)
        # Derived from the constructor arguments: not saved with the weights.
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)

    def noisy(self, actions: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t`` of clean flattened chunks ``actions`` (B, chunk*A) at steps ``t`` (B,)."""
        abar = self.alphas_cumprod[t][:, None]
        return abar.sqrt() * actions + (1 - abar).sqrt() * noise

    def loss(
        self,
        features: Tensor,
        actions: Tensor,
        pad_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Noise-prediction MSE over unpadded steps (``t`` and noise from ``generator``)."""
        actions, valid = self.prepare_targets(features, actions, pad_mask)
        b = features.shape[0]
        x0 = actions.reshape(b, self.sample_dim)
        t = torch.randint(
            0, self.num_train_timesteps, (b,), device=features.device, generator=generator
        )
        noise = torch.randn(x0.shape, device=features.device, dtype=x0.dtype, generator=generator)
        eps_hat = self.denoiser(self.noisy(x0, t, noise), t, features)
        per_value = (eps_hat - noise).pow(2).view_as(actions)
        return self.masked_mean(per_value, valid)

    def inference_timesteps(self) -> list[int]:
        """DDIM steps from noisiest to cleanest (diffusers' "leading" spacing)."""
        step = self.num_train_timesteps // self.num_inference_steps
        return [i * step for i in reversed(range(self.num_inference_steps))]

    @torch.no_grad()
    def predict(self, features: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """DDIM (eta = 0) sample from seeded noise, clipped to [-1, 1]."""
        self.check_features(features)
        b = features.shape[0]
        if generator is None:
            generator = torch.Generator(device=features.device).manual_seed(self.seed)
        x = torch.randn(
            (b, self.sample_dim), device=features.device, dtype=features.dtype, generator=generator
        )
        timesteps = self.inference_timesteps()
        step = self.num_train_timesteps // self.num_inference_steps
        for t in timesteps:
            abar = self.alphas_cumprod[t]
            abar_prev = self.alphas_cumprod[t - step] if t - step >= 0 else abar.new_tensor(1.0)
            eps = self.denoiser(x, torch.full((b,), t, device=features.device), features)
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        return x.clamp(-1.0, 1.0).view(b, self.chunk_size, self.action_dim)
