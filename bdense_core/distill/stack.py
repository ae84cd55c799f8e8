"""N students of one architecture as one batched model: stacked parameters, run with vmap.

Every parameter of the students is one tensor ``[N, ...]`` (slot n = student n). The forward pass runs
``torch.func.functional_call`` of one template network under ``torch.func.vmap`` over the slot dimension: the
template is the unmodified UNet (one definition of the network), and vmap's batching rules turn each
convolution into one grouped convolution over the N students, each linear layer into one batched matmul and
each GroupNorm/attention into one call over N*B samples. Nothing mixes slots, so student n's outputs and
gradients are those it would have alone (within float rounding), and an elementwise optimiser (Adam) over the
stacked tensors is N independent optimisers.

Grouped convolutions written by hand would need a second UNet; a Python loop over students would multiply
the kernel launches by N. vmap gives one launch per layer for all N, which is what matters for these small
networks, and it compiles (torch.compile traces through vmap and functional_call).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..edm import EDMPrecond


class _AllBranches(nn.Module):
    def __init__(self, denoiser: EDMPrecond):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser.all_branches(x, sigma)


class StudentStack(nn.Module):
    """N copies of ``template``'s architecture (``[N, ...]`` parameters in ``flat``), run as one model.

    ``forward(x, sigma)`` with ``x`` of shape ``[N, B, C, H, W]`` returns ``[N, B, K, C, H, W]``: slot n's
    ``all_branches(x[n], sigma)``. With ``batched=False`` the slots run one after another (plain calls, the
    eager single-student path); with ``batched=True`` through vmap.
    """

    def __init__(self, template: EDMPrecond, n: int, batched: bool = True):
        super().__init__()
        # the template's own weights are never used; eval mode: students train without dropout
        self.template = _AllBranches(template).eval().requires_grad_(False)
        self.names = [name for name, _ in self.template.named_parameters()]
        self.flat = nn.ParameterList(
            nn.Parameter(p.detach().unsqueeze(0).repeat(n, *([1] * p.dim()))) for p in self.template.parameters()
        )
        self.n = n
        self.batched = batched

    def _one(self, params, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, dict(zip(self.names, params)), (x, sigma))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.batched:
            return vmap(self._one, in_dims=(0, 0, None))(tuple(self.flat), x, sigma)
        return torch.stack([self._one(tuple(p[i] for p in self.flat), x[i], sigma) for i in range(self.n)])

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], slots=None) -> None:
        """Copy ``state`` (the template's state-dict names, under ``denoiser.``) into ``slots`` (default: all)."""
        for name, p in zip(self.names, self.flat):
            src = state[name.removeprefix("denoiser.")].to(p.device, p.dtype)
            if slots is None:
                p.copy_(src.expand_as(p))
            else:
                for i in slots:
                    p[i].copy_(src)

    @torch.no_grad()
    def state(self, slot: int) -> dict[str, torch.Tensor]:
        """Slot ``slot``'s weights as a denoiser state dict (copies)."""
        return {name.removeprefix("denoiser."): p[slot].detach().clone() for name, p in zip(self.names, self.flat)}
