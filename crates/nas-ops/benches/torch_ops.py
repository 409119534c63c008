"""The workloads of benches/workloads.rs in PyTorch: forward + backward, median ms.

Usage: python torch_ops.py [N C SIZE [REPEATS]]; prints one JSON object. Run with the
same thread count as the Rust side (the xtask sets torch.set_num_threads from
RAYON_NUM_THREADS).
"""
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timed(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


class SepConv(nn.Module):
    def __init__(self, c, k, stride, pad):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(c, c, k, stride, pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False),
            nn.ReLU(inplace=False), nn.Conv2d(c, c, k, 1, pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, c, k, stride, pad, dil):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(c, c, k, stride, pad, dilation=dil, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))

    def forward(self, x):
        return self.op(x)


class MixedOp(nn.Module):
    """DARTS's search MixedOp at stride 1 (none is zero, skip is identity)."""

    def __init__(self, c):
        super().__init__()
        self._ops = nn.ModuleList([
            nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(c, affine=False)),
            nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False)),
            nn.Identity(),
            SepConv(c, 3, 1, 1), SepConv(c, 5, 1, 2), DilConv(c, 3, 1, 2, 2), DilConv(c, 5, 1, 4, 2)])

    def forward(self, x, weights):
        return x.mul(0.0) * weights[0] + sum(w * op(x) for w, op in zip(weights[1:], self._ops))


def rnn_node(states, ch, probs):
    """DARTS's recurrent-cell node update (rnn/model_search.py), n=4 B=256 H=300."""
    c, h = torch.split(ch, states.size(-1), dim=-1)
    c = c.sigmoid()
    out = torch.zeros_like(states[0])
    for k, fn in enumerate([torch.tanh, torch.relu, torch.sigmoid, lambda t: t], start=1):
        out = out + torch.sum(probs[:, k, None, None] * (states + c * (fn(h) - states)), dim=0)
    return out


def main():
    args = [int(a) for a in sys.argv[1:]]
    n, c, size, repeats = (args + [16, 16, 32, 20][len(args):])[:4]
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    torch.manual_seed(0)
    shape = (n, c, size, size)
    res = {}

    def leaf(*s):
        return torch.randn(*s, requires_grad=True)

    x, w3, w5 = leaf(*shape), leaf(c, 1, 3, 3), leaf(c, 1, 5, 5)
    res["depthwise_3x3"] = timed(lambda: F.conv2d(x, w3, padding=1, groups=c).sum().backward(), repeats)
    res["depthwise_5x5_dil2"] = timed(lambda: F.conv2d(x, w5, padding=4, dilation=2, groups=c).sum().backward(), repeats)
    res["max_pool_3x3"] = timed(lambda: F.max_pool2d(x, 3, 1, 1).sum().backward(), repeats)
    res["avg_pool_3x3"] = timed(lambda: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).sum().backward(), repeats)
    gamma, beta = leaf(c), leaf(c)
    res["batch_norm"] = timed(lambda: F.batch_norm(x, None, None, gamma, beta, training=True).sum().backward(), repeats)
    sep, dil = SepConv(c, 3, 1, 1), DilConv(c, 3, 1, 2, 2)
    res["sep_conv_3x3"] = timed(lambda: sep(x).sum().backward(), repeats)
    res["dil_conv_3x3"] = timed(lambda: dil(x).sum().backward(), repeats)
    op = MixedOp(c)
    alpha = leaf(8)
    res["mixed_op"] = timed(lambda: op(x, F.softmax(alpha, dim=0)).sum().backward(), repeats)
    states, ch = leaf(4, 256, 300), leaf(4, 256, 600)
    probs = F.softmax(torch.randn(4, 5), dim=1).requires_grad_()
    res["rnn_node"] = timed(lambda: rnn_node(states, ch, probs).sum().backward(), repeats)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
