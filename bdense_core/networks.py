"""A compact UNet for EDM teachers and the B-DENSE branched head.

The UNet follows the DDPM++ layout in miniature (residual blocks with a noise embedding, self-attention at
chosen resolutions, skip connections) and ends in one 3x3 convolution, ``out_conv``. B-DENSE widens exactly
that convolution from C to K*C output channels; :func:`widen_head` builds such a student from a teacher.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    img_channels: int = 1
    resolution: int = 32
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if self.img_channels not in (1, 2, 3):
            raise ValueError(f"img_channels must be 1 to 3, got {self.img_channels}")
        if self.channels < 8 or self.channels % 8:
            raise ValueError(f"channels must be a positive multiple of 8, got {self.channels}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.resolution % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"resolution {self.resolution} is not divisible by 2^{len(self.channel_mult) - 1}; "
                "use fewer channel_mult levels"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(ch: int) -> int:
    return math.gcd(32, ch)


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise followed by a two-layer MLP."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
        args = c_noise.float()[:, None] * 1000 * freqs[None]  # c_noise = ln(sigma)/4 spans a few units
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=1))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_ch)
        self.norm1 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = SelfAttention(out_ch) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(self.dropout(h))
        x = (h + self.skip(x)) / math.sqrt(2)
        if self.attn is not None:
            x = self.attn(x)
        return x


class SelfAttention(nn.Module):
    def __init__(self, ch: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class UNet(nn.Module):
    """``F(x, c_noise)``: image in, ``out_channels`` channels out (``img_channels`` for a teacher)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.out_channels = config.img_channels
        ch, emb_dim = config.channels, 4 * config.channels
        self.embed = NoiseEmbedding(ch, emb_dim)
        self.in_conv = nn.Conv2d(config.img_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        res, cur = config.resolution, ch
        for level, mult in enumerate(config.channel_mult):
            if level > 0:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                res //= 2
                skips.append(cur)
            for _ in range(config.num_res_blocks):
                out = ch * mult
                self.down.append(ResBlock(cur, out, emb_dim, config.dropout, res in config.attn_resolutions))
                cur = out
                skips.append(cur)
        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, emb_dim, config.dropout, True), ResBlock(cur, cur, emb_dim, config.dropout, False)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                out = ch * mult
                self.up.append(
                    ResBlock(cur + skips.pop(), out, emb_dim, config.dropout, res in config.attn_resolutions)
                )
                cur = out
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2
        self.out_norm = nn.GroupNorm(_groups(cur), cur)
        self.out_conv = nn.Conv2d(cur, config.img_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.embed(c_noise)
        h = self.in_conv(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out_conv(F.silu(self.out_norm(h)))


def widen_head(teacher_net: UNet, branches: int) -> UNet:
    """The B-DENSE student: a copy of ``teacher_net`` whose last convolution has ``branches * C`` outputs.

    Every C-channel group (branch) starts as an exact copy of the teacher's last layer, so at
    initialisation each branch reproduces the teacher's output.
    """
    if branches < 1:
        raise ValueError(f"branches (K) must be >= 1, got {branches}")
    student = copy.deepcopy(teacher_net)
    old = teacher_net.out_conv
    c = old.out_channels
    new = nn.Conv2d(old.in_channels, branches * c, old.kernel_size, padding=old.padding)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(branches, 1, 1, 1))
        new.bias.copy_(old.bias.repeat(branches))
    student.out_conv = new
    student.out_channels = branches * c
    return student


def select_branches(state: dict[str, torch.Tensor], channels: int, branches, prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` (a branched UNet's state dict, keys under ``prefix``) with the head keeping only the C-channel
    groups ``branches`` (a list of 0-based branch indices, in the order they should appear). Every other entry
    is passed through unchanged; loading the result into a UNet with ``len(branches) * C`` outputs gives a
    network whose branch j computes exactly what branch ``branches[j]`` computed."""
    rows = torch.cat([torch.arange(b * channels, (b + 1) * channels) for b in branches])
    out = dict(state)
    for name in ("out_conv.weight", "out_conv.bias"):
        key = prefix + name
        out[key] = state[key].index_select(0, rows.to(state[key].device))
    return out


@dataclass
class HeadOverhead:
    branches: int
    params_base: int
    params_extra: int
    flops_base: int
    flops_extra: int

    @property
    def params_pct(self) -> float:
        return 100.0 * self.params_extra / self.params_base

    @property
    def flops_pct(self) -> float:
        return 100.0 * self.flops_extra / self.flops_base


def count_flops(net: nn.Module, config: UNetConfig, batch: int = 1) -> int:
    """Forward FLOPs (multiply-adds counted as 2) of one call, measured with torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(net.parameters())
    x = torch.zeros(batch, config.img_channels, config.resolution, config.resolution, device=p.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.zeros(batch, device=p.device))
    return int(counter.get_total_flops())


def head_overhead(teacher_net: UNet, branches: int) -> HeadOverhead:
    """Parameter and FLOP cost of the widened head relative to the teacher network."""
    student = widen_head(teacher_net, branches)
    pb = sum(p.numel() for p in teacher_net.parameters())
    ps = sum(p.numel() for p in student.parameters())
    fb = count_flops(teacher_net, teacher_net.config)
    fs = count_flops(student, teacher_net.config)
    return HeadOverhead(branches, pb, ps - pb, fb, fs - fb)
