"""ENAS micro search steps in PyTorch, for `cargo xtask bench enas-step`: a port that
follows the reference (melodyguan/enas, src/cifar10/micro_child.py and
micro_controller.py) with its weight tables (one row per possible input, picked by
the sampled index), computing only the sampled child.

Usage: python enas_step.py [shared|controller|fixed] [filters] [layers] [batch] [repeats] [aggregate]
Prints one JSON line: the median seconds per step (every arc's forward and backward runs
once before the clock) and the peak resident memory.

- shared: the controller scores one child, the child's forward and backward (loss + 0.4
  aux), global clipping at 5, Nesterov SGD with L2 over the shared weights;
- controller: the controller over `aggregate` children in one batch, each child's forward
  on its own batch, REINFORCE's loss, backward, Adam (beta1 0, eps 1e-3);
- fixed: the same children, each trained alone (SGD over only the weights it uses).

Step i uses arc i of the same SplitMix64 stream as examples/bench_enas_step.rs."""

import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))

MASK = (1 << 64) - 1


class SplitMix:
    def __init__(self, seed):
        self.s = seed

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n


def arcs(count, nodes):
    rng = SplitMix(7)
    out = []
    for _ in range(count):
        arc = []
        for _cell in range(2):
            for t in range(2, nodes + 2):
                for _branch in range(2):
                    arc.append(rng.below(t))
                    arc.append(rng.below(5))
        out.append(arc)
    return out


def batch(n, seed):
    s = SplitMix(seed)
    x = [((s.next() >> 40) / float(1 << 24)) * 2.0 - 1.0 for _ in range(n * 3 * 32 * 32)]
    y = [s.next() % 10 for _ in range(n)]
    return torch.tensor(x, dtype=torch.float32).view(n, 3, 32, 32), torch.tensor(y)


def bn(x, scale, offset):
    return F.batch_norm(x, None, None, scale, offset, training=True, eps=1e-5)


class Bn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c))
        self.offset = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return bn(x, self.scale, self.offset)


class ConvTable(nn.Module):
    """_enas_conv: two units of ReLU, depthwise k x k, pointwise, BN; one row per input."""

    def __init__(self, rows, k, c):
        super().__init__()
        self.k = k
        self.dw = nn.ParameterList([nn.Parameter(torch.randn(rows, c, 1, k, k) * 0.1) for _ in range(2)])
        self.pw = nn.ParameterList([nn.Parameter(torch.randn(rows, c, c, 1, 1) * 0.1) for _ in range(2)])
        self.scale = nn.ParameterList([nn.Parameter(torch.ones(rows, c)) for _ in range(2)])
        self.offset = nn.ParameterList([nn.Parameter(torch.zeros(rows, c)) for _ in range(2)])

    def forward(self, x, row):
        c = x.shape[1]
        for u in range(2):
            x = F.relu(x)
            x = F.conv2d(x, self.dw[u][row], padding=self.k // 2, groups=c)
            x = F.conv2d(x, self.pw[u][row])
            x = bn(x, self.scale[u][row], self.offset[u][row])
        return x


class Branch(nn.Module):
    def __init__(self, cell, c):
        super().__init__()
        self.conv3 = ConvTable(cell + 2, 3, c)
        self.conv5 = ConvTable(cell + 2, 5, c)

    def forward(self, x, prev, op):
        if op == 0:
            return self.conv3(x, prev)
        if op == 1:
            return self.conv5(x, prev)
        if op == 2:
            return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        if op == 3:
            return F.max_pool2d(x, 3, 1, 1)
        return x


class FactorizedReduction(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.path1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.path2 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.bn = Bn(c_out)

    def forward(self, x):
        p1 = self.path1(x[:, :, ::2, ::2])
        p2 = self.path2(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:][:, :, ::2, ::2])
        return self.bn(torch.cat([p1, p2], 1))


class ReluConvBn(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = Bn(c_out)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


class EnasLayer(nn.Module):
    def __init__(self, c_x, c_y, x_larger, f, nodes):
        super().__init__()
        self.f = f
        if x_larger:
            self.cal_x = FactorizedReduction(c_x, f)
            self.relu_x = True
        else:
            self.cal_x = ReluConvBn(c_x, f) if c_x != f else None
            self.relu_x = False
        self.cal_y = ReluConvBn(c_y, f) if c_y != f else None
        self.cells = nn.ModuleList(nn.ModuleList([Branch(c, f), Branch(c, f)]) for c in range(nodes))
        self.final_w = nn.Parameter(torch.randn(nodes + 2, f * f) * 0.1)
        self.final_bn = Bn(f)

    def forward(self, x, y, arc):
        if self.cal_x is not None:
            x = self.cal_x(F.relu(x) if self.relu_x else x)
        if self.cal_y is not None:
            y = self.cal_y(y)
        layers = [x, y]
        used = [0] * (len(self.cells) + 2)
        for c, (bx, by) in enumerate(self.cells):
            x_id, x_op, y_id, y_op = arc[4 * c : 4 * c + 4]
            layers.append(bx(layers[x_id], x_id, x_op) + by(layers[y_id], y_id, y_op))
            used[x_id] += 1
            used[y_id] += 1
        idx = [i for i, u in enumerate(used) if u == 0]
        out = torch.cat([layers[i] for i in idx], 1)
        w = self.final_w[idx].view(len(idx) * self.f, self.f).t().reshape(self.f, len(idx) * self.f, 1, 1)
        return self.final_bn(F.conv2d(F.relu(out), w))


class AuxHead(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.proj = nn.Conv2d(c, 128, 1, bias=False)
        self.bn1 = Bn(128)
        self.conv = nn.Conv2d(128, 768, 2, bias=False)
        self.bn2 = Bn(768)
        self.fc = nn.Linear(768, 10, bias=False)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(x), 5, 3)
        x = F.relu(self.bn1(self.proj(x)))
        x = F.relu(self.bn2(self.conv(F.pad(x, (0, 1, 0, 1)))))
        return self.fc(x.mean((2, 3)))


class MicroChild(nn.Module):
    def __init__(self, f=20, num_layers=6, nodes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 3 * f, 3, padding=1, bias=False)
        self.stem_bn = Bn(3 * f)
        p = num_layers // 3
        self.pool_layers = [p, 2 * p + 1]
        self.aux_at = self.pool_layers[-1] + 1
        self.layers = nn.ModuleList()
        self.reduce = nn.ModuleDict()
        c = [3 * f, 3 * f]
        for i in range(num_layers + 2):
            if i in self.pool_layers:
                f *= 2
                self.reduce[str(i)] = FactorizedReduction(c[1], f)
                self.layers.append(EnasLayer(c[1], f, True, f, nodes))
                c = [f, f]
            else:
                self.layers.append(EnasLayer(c[0], c[1], False, f, nodes))
                c = [c[1], f]
            if i == self.aux_at:
                self.aux = AuxHead(f)
        self.fc = nn.Linear(f, 10, bias=False)
        self.nodes = nodes

    def forward(self, x, arc, train=True):
        n = 4 * self.nodes
        normal, reduce = arc[:n], arc[n:]
        s = self.stem_bn(self.stem(x))
        older, newer = s, s
        aux = None
        for i, layer in enumerate(self.layers):
            if i in self.pool_layers:
                reduced = self.reduce[str(i)](newer)
                out = layer(newer, reduced, reduce)
                older = reduced
            else:
                out = layer(older, newer, normal)
                older = newer
            newer = out
            if train and i == self.aux_at:
                aux = self.aux(newer)
        h = F.relu(newer).mean((2, 3))
        if train:
            h = F.dropout(h, 0.1)
        return self.fc(h), aux


class Controller(nn.Module):
    """MicroController: a bias-free LSTM, attention over anchors, bounded logits."""

    def __init__(self, h=64, nodes=5):
        super().__init__()
        u = lambda *s: nn.Parameter(torch.empty(*s).uniform_(-0.1, 0.1))
        self.w_lstm = u(2 * h, 4 * h)
        self.g_emb = u(1, h)
        self.w_emb = u(5, h)
        self.w_soft = u(h, 5)
        self.b_soft = nn.Parameter(torch.tensor([[10.0, 10.0, 0.0, 0.0, 0.0]]))
        self.register_buffer("b_no_learn", torch.tensor([[0.25, 0.25, -0.25, -0.25, -0.25]]))
        self.w_attn_1 = u(h, h)
        self.w_attn_2 = u(h, h)
        self.v_attn = u(h, 1)
        self.h = h
        self.nodes = nodes

    def step(self, x, state):
        c, h = state
        z = torch.cat([x, h], 1) @ self.w_lstm
        i, f, o, g = z.split(self.h, 1)
        c = torch.sigmoid(i) * torch.tanh(g) + torch.sigmoid(f) * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (c, h)

    def forward(self, given):
        """-log p of the given arcs (one row each), scored as the sampler scores them."""
        b = len(given)
        zeros = torch.zeros(b, self.h)
        state = (zeros, zeros)
        g = self.g_emb.expand(b, self.h)
        nll = torch.zeros(b)
        rows = torch.arange(b)
        for cell, normal in ((0, True), (1, False)):
            off = cell * 4 * self.nodes
            anchors, keys = [], []
            for _ in range(2):
                h, state = self.step(g, state)
                anchors.append(zeros)
                keys.append(h @ self.w_attn_1)
            x = g
            for t in range(2, self.nodes + 2):
                base = off + 4 * (t - 2)
                for i in range(2):
                    h, state = self.step(x, state)
                    q = h @ self.w_attn_2
                    u = (torch.tanh(torch.stack(keys, 1) + q.unsqueeze(1)) @ self.v_attn).squeeze(2)
                    u = 1.1 * torch.tanh(u)
                    pick = torch.tensor([a[base + 2 * i] for a in given])
                    nll = nll + F.cross_entropy(u, pick, reduction="none")
                    x = torch.stack(anchors, 1)[rows, pick]
                for i in range(2):
                    h, state = self.step(x, state)
                    z = 0.44 * torch.tanh(h @ self.w_soft + self.b_soft)
                    if normal:
                        z = z + self.b_no_learn
                    pick = torch.tensor([a[base + 2 * i + 1] for a in given])
                    nll = nll + F.cross_entropy(z, pick, reduction="none")
                    x = self.w_emb[pick]
                h, state = self.step(x, state)
                anchors.append(h)
                keys.append(h @ self.w_attn_1)
                x = g
        return nll


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    a = sys.argv[1:]
    mode = a[0] if a else "shared"
    num = lambda i, d: int(a[i]) if len(a) > i else d
    filters, layers, n, repeats, aggregate = num(1, 20), num(2, 6), num(3, 160), num(4, 3), num(5, 10)
    torch.manual_seed(0)
    child = MicroChild(filters, layers)
    ctrl = Controller()
    per_step = aggregate if mode == "controller" else 1
    all_arcs = arcs(repeats * per_step, 5)
    batches = [batch(n, 100 + i) for i in range(per_step)]
    sgd = torch.optim.SGD(child.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4, nesterov=True)
    adam = torch.optim.Adam(ctrl.parameters(), lr=0.0035, betas=(0.0, 0.999), eps=1e-3)
    baseline = 0.0
    # Every arc's forward and backward once before the clock runs, as ours.
    # (A controller update only runs the children forward: so does its warm-up.)
    for i, arc in enumerate(all_arcs):
        x, y = batches[i % per_step]
        if mode == "controller":
            with torch.no_grad():
                child(x, arc, train=False)
        else:
            logits, aux = child(x, arc)
            (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)).backward()
    child.zero_grad(set_to_none=True)
    times = []
    for step in range(repeats):
        arcs_now = all_arcs[step * per_step : (step + 1) * per_step]
        start = time.perf_counter()
        if mode == "controller":
            nll = ctrl(arcs_now)
            rewards = []
            with torch.no_grad():
                for arc, (x, y) in zip(arcs_now, batches):
                    logits, _ = child(x, arc, train=False)
                    rewards.append((logits.argmax(1) == y).float().mean().item())
            adv = []
            for r in rewards:
                baseline -= 0.01 * (baseline - r)
                adv.append(r - baseline)
            loss = (nll * torch.tensor(adv)).mean()
            adam.zero_grad()
            loss.backward()
            adam.step()
        else:
            x, y = batches[0]
            arc = arcs_now[0]
            if mode == "shared":
                with torch.no_grad():
                    ctrl([arc])
            sgd.zero_grad(set_to_none=True)
            logits, aux = child(x, arc)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
            loss.backward()
            params = [p for p in child.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            sgd.step()
        times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"mode": mode, "seconds_per_step": times[len(times) // 2], "times": times, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
