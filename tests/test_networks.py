import pytest
import torch

from bdense_core.edm import EDMPrecond
from bdense_core.distill.common import make_student
from bdense_core.networks import UNet, UNetConfig, head_overhead, widen_head

CFG = UNetConfig(img_channels=1, resolution=16, channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def trained_like_teacher(cfg=CFG, seed=0):
    """A teacher network with non-trivial weights everywhere (zero-initialised layers randomised)."""
    torch.manual_seed(seed)
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return EDMPrecond(net, cfg.img_channels).eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_student_has_k_times_c_outputs_and_copies_the_head(channels):
    cfg = UNetConfig(img_channels=channels, resolution=16, channels=16, channel_mult=(1, 2), num_res_blocks=1)
    teacher = trained_like_teacher(cfg)
    student = make_student(teacher, 4)
    head, old = student.net.out_conv, teacher.net.out_conv
    assert head.out_channels == 4 * channels and student.branches == 4
    for k in range(4):
        assert torch.equal(head.weight[k * channels:(k + 1) * channels], old.weight)
        assert torch.equal(head.bias[k * channels:(k + 1) * channels], old.bias)
    # the backbone is a copy, not shared with the teacher
    assert student.net.in_conv.weight.data_ptr() != teacher.net.in_conv.weight.data_ptr()


def test_endpoint_branch_reproduces_teacher_one_step_euler_at_init():
    teacher = trained_like_teacher()
    student = make_student(teacher, 4).eval()
    x = torch.randn(5, 1, 16, 16) * 20
    t, t_next = torch.tensor(20.0), torch.tensor(5.0)
    with torch.no_grad():
        branches = student.all_branches(x, t)
        teacher_d = teacher(x, t)
        teacher_step = x + (t_next - t) * (x - teacher_d) / t
        student_step = x + (t_next - t) * (x - student(x, t)) / t
    assert branches.shape == (5, 4, 1, 16, 16)
    for k in range(4):
        assert torch.equal(branches[:, k], teacher_d)
    assert torch.equal(student_step, teacher_step)


def test_widen_rejects_bad_k_and_head_overhead_is_small():
    net = UNet(UNetConfig())
    with pytest.raises(ValueError, match="K"):
        widen_head(net, 0)
    o = head_overhead(net, 4)
    c_in = net.out_conv.in_channels
    assert o.params_extra == 3 * (c_in * 9 + 1)  # three extra 3x3 filters of one output channel each
    # the extra FLOPs are exactly three more output channels of the last conv at full resolution
    assert o.flops_extra == 3 * 2 * c_in * 9 * 32 * 32
    assert o.params_pct < 0.1 and o.flops_pct < 0.5


def test_unet_config_validation():
    with pytest.raises(ValueError, match="img_channels"):
        UNetConfig(img_channels=4)
    with pytest.raises(ValueError, match="not divisible"):
        UNetConfig(resolution=30, channel_mult=(1, 2, 2))
