"""One DARTS search step in PyTorch, for `cargo xtask bench darts-step`.

usage: darts_step.py ORDER C LAYERS BATCH REPEATS   (ORDER: first | second | train)

The same network and step as `examples/bench_step.rs`: the DARTS search network (stem,
cells of MixedOps over the 8 primitives, reductions at layers/3 and 2 layers/3, global
pooling, linear), one architecture step (Adam; first order, or the unrolled second-order
step with the finite-difference Hessian-vector product) and one weight step (SGD with
momentum 0.9, weight decay 3e-4, clipping at norm 5) on random 3x32x32 batches.
`train` times a training step of the DARTS-V2 evaluation network instead (affine BN,
auxiliary head weighted 0.4 after cell 2 layers / 3, drop path 0.2, SGD, clip 5).
Prints one JSON line: the median seconds per step and the peak resident memory.
Written for this project; threads follow RAYON_NUM_THREADS (default 2). NAS_DEVICE=cuda
runs on the first GPU (each step ends with a synchronisation; memory is then the peak
allocated on the GPU).
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


DARTS_V2 = {
    "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
               ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
}


def eval_op(name, c, stride):
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else Reduce(c, c, True)
    if name.startswith("sep_conv"):
        return Sep(c, int(name[-1]), stride, True)
    return DwPw(c, c, int(name[-1]), stride, 2, True)


def drop_path(x, p):
    keep = 1.0 - p
    mask = torch.empty(x.size(0), 1, 1, 1).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    def __init__(self, cpp, cp, c, reduction, reduction_prev):
        super().__init__()
        self.pre0 = Reduce(cpp, c, True) if reduction_prev else ReluConvBn(cpp, c, 1, 1, 0, True)
        self.pre1 = ReluConvBn(cp, c, 1, 1, 0, True)
        edges = DARTS_V2["reduce" if reduction else "normal"]
        self.inputs = [i for _, i in edges]
        self.ops = nn.ModuleList(eval_op(n, c, 2 if reduction and i < 2 else 1) for n, i in edges)

    def forward(self, s0, s1, p):
        states = [self.pre0(s0), self.pre1(s1)]
        for node in range(4):
            s = 0
            for k in (2 * node, 2 * node + 1):
                h = self.ops[k](states[self.inputs[k]])
                if self.training and p > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, p)
                s = s + h
            states.append(s)
        return torch.cat(states[2:], dim=1)


class EvalNet(nn.Module):
    def __init__(self, c, layers, classes=10):
        super().__init__()
        cs = 3 * c
        self.stem = nn.Sequential(nn.Conv2d(3, cs, 3, padding=1, bias=False), nn.BatchNorm2d(cs))
        cpp, cp, cur, red_prev = cs, cs, c, False
        self.cells = nn.ModuleList()
        self.aux_at = 2 * layers // 3
        for i in range(layers):
            red = i in (layers // 3, 2 * layers // 3)
            if red:
                cur *= 2
            self.cells.append(EvalCell(cpp, cp, cur, red, red_prev))
            red_prev = red
            cpp, cp = cp, 4 * cur
            if i == self.aux_at:
                c_aux = cp
        self.aux = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(5, 3, 0, count_include_pad=False), nn.Conv2d(c_aux, 128, 1, bias=False),
            nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(),
            nn.Flatten(), nn.Linear(768, classes))
        self.classifier = nn.Linear(cp, classes)

    def forward(self, x, p):
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, p)
            if i == self.aux_at and self.training:
                aux = self.aux(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), aux


DEV = torch.device("cuda" if os.environ.get("NAS_DEVICE") == "cuda" else "cpu")


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def peak_mb():
    if DEV.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def data(batch):
    return (torch.rand(batch, 3, 32, 32) * 2 - 1).to(DEV), torch.randint(0, 10, (batch,)).to(DEV)


def train_bench(c, layers, batch, repeats):
    net = EvalNet(c, layers).to(DEV)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    x, y = data(batch)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        opt.zero_grad()
        logits, aux = net(x, 0.2)
        loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])


def main():
    order, c, layers, batch, repeats = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    torch.manual_seed(0)
    if order == "train":
        rest = train_bench(c, layers, batch, repeats)
        print(json.dumps({
            "impl": "pytorch " + torch.__version__, "device": DEV.type, "order": order, "channels": c,
            "layers": layers, "batch": batch, "seconds_per_step": rest[len(rest) // 2],
            "images_per_second": batch / rest[len(rest) // 2], "steps": rest,
            "peak_rss_mb": peak_mb(),
        }))
        return
    net = Net(c, layers).to(DEV)
    net.alphas = [a.detach().to(DEV).requires_grad_() for a in net.alphas]
    opt = torch.optim.SGD(net.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    arch_opt = torch.optim.Adam(net.alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    train = data(batch)
    val = data(batch)
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
        sync()
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    print(json.dumps({
        "impl": "pytorch " + torch.__version__, "device": DEV.type, "order": order, "channels": c,
        "layers": layers, "batch": batch, "seconds_per_step": rest[len(rest) // 2], "steps": rest,
        "peak_rss_mb": peak_mb(),
    }))


if __name__ == "__main__":
    main()
