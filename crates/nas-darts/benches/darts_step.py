"""One DARTS search step in PyTorch, for `cargo xtask bench darts-step`.

usage: darts_step.py ORDER C LAYERS BATCH REPEATS   (ORDER: first | second)

The same network and step as `examples/bench_step.rs`: the DARTS search network (stem,
cells of MixedOps over the 8 primitives, reductions at layers/3 and 2 layers/3, global
pooling, linear), one architecture step (Adam; first order, or the unrolled second-order
step with the finite-difference Hessian-vector product) and one weight step (SGD with
momentum 0.9, weight decay 3e-4, clipping at norm 5) on random 3x32x32 batches.
Prints one JSON line: the median seconds per step and the peak resident memory.
Written for this project; threads follow RAYON_NUM_THREADS (default 2).
"""

import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def bn(c, affine):
    return nn.BatchNorm2d(c, affine=affine)


class ReluConvBn(nn.Sequential):
    def __init__(self, c_in, c_out, k, stride, pad, affine):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), bn(c_out, affine))


class DwPw(nn.Sequential):
    """ReLU, depthwise k x k (stride, dilation), pointwise, BN."""

    def __init__(self, c_in, c_out, k, stride, dilation, affine):
        pad = dilation * (k - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            bn(c_out, affine))


class Sep(nn.Sequential):
    def __init__(self, c, k, stride, affine):
        super().__init__(DwPw(c, c, k, stride, 1, affine), DwPw(c, c, k, 1, 1, affine))


class Reduce(nn.Module):
    def __init__(self, c_in, c_out, affine):
        super().__init__()
        self.a = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.b = nn.Conv2d(c_in, c_out // 2, 1, 2, bias=False)
        self.norm = bn(c_out, affine)

    def forward(self, x):
        x = F.relu(x)
        return self.norm(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], dim=1))


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride] * 0.0


def make_op(name, c, stride):
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), bn(c, False))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), bn(c, False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else Reduce(c, c, False)
    if name.startswith("sep_conv"):
        return Sep(c, int(name[-1]), stride, False)
    return DwPw(c, c, int(name[-1]), stride, 2, False)


class Mixed(nn.Module):
    def __init__(self, c, stride):
        super().__init__()
        self.ops = nn.ModuleList(make_op(p, c, stride) for p in PRIMITIVES)

    def forward(self, x, w):
        return sum(wi * op(x) for wi, op in zip(w, self.ops))


class Cell(nn.Module):
    def __init__(self, cpp, cp, c, reduction, reduction_prev, steps=4):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.pre0 = Reduce(cpp, c, False) if reduction_prev else ReluConvBn(cpp, c, 1, 1, 0, False)
        self.pre1 = ReluConvBn(cp, c, 1, 1, 0, False)
        self.ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self.ops.append(Mixed(c, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights):
        states = [self.pre0(s0), self.pre1(s1)]
        k = 0
        for _ in range(self.steps):
            s = 0
            for h in list(states):
                s = s + self.ops[k](h, weights[k])
                k += 1
            states.append(s)
        return torch.cat(states[-4:], dim=1)


class Net(nn.Module):
    def __init__(self, c, layers, classes=10):
        super().__init__()
        cs = 3 * c
        self.stem = nn.Sequential(nn.Conv2d(3, cs, 3, padding=1, bias=False), nn.BatchNorm2d(cs))
        cpp, cp, cur = cs, cs, c
        self.cells = nn.ModuleList()
        red_prev = False
        for i in range(layers):
            red = i in (layers // 3, 2 * layers // 3)
            if red:
                cur *= 2
            self.cells.append(Cell(cpp, cp, cur, red, red_prev))
            red_prev = red
            cpp, cp = cp, 4 * cur
        self.classifier = nn.Linear(cp, classes)
        self.alphas = [(1e-3 * torch.randn(14, 8)).requires_grad_() for _ in range(2)]

    def weights(self):
        return list(self.parameters())

    def forward(self, x):
        wn = F.softmax(self.alphas[0], dim=-1)
        wr = F.softmax(self.alphas[1], dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, wr if cell.reduction else wn)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)


def arch_grads(net, opt, train, val, second, momentum=0.9, wd=3e-4):
    ws = net.weights()
    if not second:
        return torch.autograd.grad(net.loss(val), net.alphas)
    xi = opt.param_groups[0]["lr"]
    saved = [w.detach().clone() for w in ws]
    g = torch.autograd.grad(net.loss(train), ws, allow_unused=True)
    with torch.no_grad():
        for w, w0, gi in zip(ws, saved, g):
            d = (gi if gi is not None else torch.zeros_like(w0)) + wd * w0
            buf = opt.state.get(w, {}).get("momentum_buffer")
            if buf is not None:
                d = d + momentum * buf
            w.copy_(w0 - xi * d)
    out = torch.autograd.grad(net.loss(val), net.alphas + ws, allow_unused=True)
    dalpha, v = out[:2], [o if o is not None else torch.zeros_like(w) for o, w in zip(out[2:], ws)]
    eps = 0.01 / torch.cat([t.flatten() for t in v]).norm()

    def at(sign):
        with torch.no_grad():
            for w, w0, vi in zip(ws, saved, v):
                w.copy_(w0 + sign * eps * vi)
        return torch.autograd.grad(net.loss(train), net.alphas)

    gp, gn = at(1.0), at(-1.0)
    with torch.no_grad():
        for w, w0 in zip(ws, saved):
            w.copy_(w0)
    return [d - xi * (p - n) / (2 * eps) for d, p, n in zip(dalpha, gp, gn)]


def main():
    order, c, layers, batch, repeats = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    torch.manual_seed(0)
    net = Net(c, layers)
    opt = torch.optim.SGD(net.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    arch_opt = torch.optim.Adam(net.alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    train = (torch.rand(batch, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (batch,)))
    val = (torch.rand(batch, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (batch,)))
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        grads = arch_grads(net, opt, train, val, order == "second")
        for a, g in zip(net.alphas, grads):
            a.grad = g.detach()
        arch_opt.step()
        opt.zero_grad()
        net.loss(train).backward()
        nn.utils.clip_grad_norm_(net.weights(), 5.0)
        opt.step()
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    print(json.dumps({
        "impl": "pytorch " + torch.__version__, "order": order, "channels": c, "layers": layers,
        "batch": batch, "seconds_per_step": rest[len(rest) // 2], "steps": rest,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
