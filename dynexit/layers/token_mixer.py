"""Between latent stages: halve the token count (token mixer) and widen the channels (expander)."""

from __future__ import annotations

import torch
from torch import nn


class TokenMixer(nn.Module):
    """LayerNorm + Linear over the token axis: (B, N_in, C) -> (B, N_out, C)."""

    def __init__(self, tokens_in: int, tokens_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(tokens_in)
        self.fc = nn.Linear(tokens_in, tokens_out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(z.transpose(1, 2))).transpose(1, 2)


class LatentTransition(nn.Module):
    """Token mixer then channel expander (LayerNorm + Linear): (B, N_in, C_in) -> (B, N_out, C_out)."""

    def __init__(self, tokens_in: int, tokens_out: int, dim_in: int, dim_out: int):
        super().__init__()
        self.mixer = TokenMixer(tokens_in, tokens_out)
        self.expand = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, dim_out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.expand(self.mixer(z))
