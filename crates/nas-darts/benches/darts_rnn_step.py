"""One DARTS recurrent-cell search step (PTB setting) in PyTorch, for the RNN step benchmark.

usage: darts_rnn_step.py ORDER BATCH BPTT NHID VOCAB REPEATS   (ORDER: first | second)
paper workload: darts_rnn_step.py first 256 35 300 10000 3

The DARTS RNN search model as in the reference rnn/model_search.py: an embedding (ninp = nhid)
tied to a decoder with bias, one search cell (W0 [2 nhid, 2 nhid], eight Ws [nhid, 2 nhid], one
shared BatchNorm1d(nhid, affine=False) on s0 and on every node, a softmax over the [36, 5]
architecture weights with primitives none / tanh / relu / sigmoid / identity, output = mean of
the last 8 states), locked dropouts (output 0.75, hidden 0.25, input-to-cell 0.75, embedding
0.2, embedding rows 0). One step is what rnn/train_search.py does per batch: an architecture
step on a validation batch (Adam lr 3e-3, betas (0.9, 0.999), weight decay 1e-3; first order:
backward of the validation loss; second order: the unrolled step of rnn/architect.py, with its
gradient clipping and the `eta * clip_coef` factor on the finite-difference Hessian term), then
a weight step on a training batch (NLL + 1e-3 * mean squared difference of consecutive raw cell
outputs, SGD lr 20, weight decay 5e-7, clipping at norm 0.25). Hidden states are carried from
step to step, detached. Tokens are random ids in [0, VOCAB) (seeded). One warm-up step, then
REPEATS timed steps.
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

PRIMITIVES = ["none", "tanh", "relu", "sigmoid", "identity"]
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}
STEPS = 8
CONCAT = 8
INIT_RANGE = 0.04
# rnn/architect.py builds the unrolled model with load_state_dict(state_dict updated with the stepped
# named_parameters); the stale `decoder.weight` entry is loaded after `encoder.weight` into the same tied
# tensor, so the reference's unrolled model keeps the un-stepped embedding / decoder weight. Kept here.
UNROLL_TIED_EMBEDDING = False


def keep_mask(shape, p):
    """Bernoulli(1 - p) mask scaled by 1 / (1 - p)."""
    keep = 1.0 - p
    return torch.empty(shape).bernoulli_(keep) / keep


def locked_dropout(x, p, training):
    """One mask per sequence, shared over time: x is [T, B, D]."""
    if not training or p == 0:
        return x
    return x * keep_mask((1, x.size(1), x.size(2)), p)


class SearchCell(nn.Module):
    def __init__(self, nhid, dropouth, dropoutx):
        super().__init__()
        self.nhid = nhid
        self.dropouth = dropouth
        self.dropoutx = dropoutx
        self._W0 = nn.Parameter(torch.empty(2 * nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self._Ws = nn.ParameterList(
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE)) for _ in range(STEPS))
        self.bn = nn.BatchNorm1d(nhid, affine=False)

    def forward(self, xs, h, probs):
        """xs [T, B, nhid], h [1, B, nhid], probs [36, 5] -> outputs [T, B, nhid], last [1, B, nhid]."""
        b = xs.size(1)
        if self.training:
            x_mask = keep_mask((b, xs.size(2)), self.dropoutx)
            h_mask = keep_mask((b, self.nhid), self.dropouth)
        else:
            x_mask = h_mask = None
        h = h[0]
        outs = []
        for t in range(xs.size(0)):
            h = self.step(xs[t], h, x_mask, h_mask, probs)
            outs.append(h)
        outs = torch.stack(outs)
        return outs, outs[-1:]

    def step(self, x, h_prev, x_mask, h_mask, probs):
        n = self.nhid
        if self.training:
            xh = torch.cat([x * x_mask, h_prev * h_mask], dim=-1)
        else:
            xh = torch.cat([x, h_prev], dim=-1)
        c0, h0 = (xh @ self._W0).split(n, dim=-1)
        s0 = h_prev + c0.sigmoid() * (h0.tanh() - h_prev)
        states = self.bn(s0).unsqueeze(0)  # [nodes so far, B, n]
        row = 0
        for i in range(STEPS):
            preds = states * h_mask if self.training else states
            c, h = (preds.reshape(-1, n) @ self._Ws[i]).view(i + 1, -1, 2 * n).split(n, dim=-1)
            c = c.sigmoid()
            node = torch.zeros_like(states[0])
            for k, name in enumerate(PRIMITIVES):
                if name == "none":
                    continue
                candidate = states + c * (ACTIVATIONS[name](h) - states)
                w = probs[row:row + i + 1, k].view(-1, 1, 1)
                node = node + (w * candidate).sum(0)
            states = torch.cat([states, self.bn(node).unsqueeze(0)], 0)
            row += i + 1
        return states[-CONCAT:].mean(0)


class SearchModel(nn.Module):
    def __init__(self, ntoken, nhid, dropout=0.75, dropouth=0.25, dropoutx=0.75, dropouti=0.2, dropoute=0.0):
        super().__init__()
        self.ntoken, self.nhid = ntoken, nhid
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.encoder = nn.Embedding(ntoken, nhid)
        self.rnns = nn.ModuleList([SearchCell(nhid, dropouth, dropoutx)])
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight
        with torch.no_grad():
            self.encoder.weight.uniform_(-INIT_RANGE, INIT_RANGE)
            self.decoder.bias.zero_()
        # a plain tensor, not a Parameter: model.parameters() are the weights only
        self.alphas = (1e-3 * torch.randn(sum(range(1, STEPS + 1)), len(PRIMITIVES))).requires_grad_()

    def init_hidden(self, batch):
        return torch.zeros(1, batch, self.nhid)

    def forward(self, tokens, hidden):
        """tokens [T, B] -> log-probs [T, B, ntoken], new hidden [1, B, nhid], raw cell outputs [T, B, nhid]."""
        weight = self.encoder.weight
        if self.training and self.dropoute:
            weight = weight * keep_mask((weight.size(0), 1), self.dropoute)
        emb = locked_dropout(F.embedding(tokens, weight), self.dropouti, self.training)
        raw, hidden = self.rnns[0](emb, hidden, F.softmax(self.alphas, dim=-1))
        out = locked_dropout(raw, self.dropout, self.training)
        logits = self.decoder(out.reshape(-1, self.nhid))
        return F.log_softmax(logits, dim=-1).view(tokens.size(0), tokens.size(1), -1), hidden, raw

    def loss(self, hidden, batch):
        x, y = batch
        log_prob, hidden, raw = self(x, hidden)
        return F.nll_loss(log_prob.view(-1, self.ntoken), y.reshape(-1)), hidden, raw


def clip_(grads, max_norm):
    """rnn/architect.py `_clip`: scale in place when over max_norm; return max_norm / (norm + 1e-6)."""
    norm = torch.cat([g.flatten() for g in grads]).norm().item()
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    return coef


def arch_step(net, opt, arch_opt, hidden_train, train, hidden_val, val, second, clip=0.25, wd=5e-7, r=1e-2):
    """The architecture step of rnn/architect.py; returns the next validation hidden state."""
    arch_opt.zero_grad()
    if not second:
        loss, hidden_next, _ = net.loss(hidden_val, val)
        loss.backward()  # as the reference: also fills the weight grads, cleared before the weight step
        arch_opt.step()
        return hidden_next.detach()
    ws = list(net.parameters())
    eta = opt.param_groups[0]["lr"]
    saved = [w.detach().clone() for w in ws]
    loss, _, _ = net.loss(hidden_train, train)
    g = list(torch.autograd.grad(loss, ws))
    clip_coef = clip_(g, clip)
    # the unrolled model w' = w - eta * (clipped grad + wd * w); it has its own copy of the BN buffers
    buffers = [b.clone() for b in net.buffers()]
    with torch.no_grad():
        for w, w0, gi in zip(ws, saved, g):
            if w is net.encoder.weight and not UNROLL_TIED_EMBEDDING:
                continue
            w.copy_(w0 - eta * (gi + wd * w0))
    loss, hidden_next, _ = net.loss(hidden_val, val)
    out = torch.autograd.grad(loss, [net.alphas] + ws)
    dalpha, v = out[0], list(out[1:])
    with torch.no_grad():
        for b, b0 in zip(net.buffers(), buffers):
            b.copy_(b0)
    clip_(v, clip)
    eps = r / torch.cat([t.flatten() for t in v]).norm()

    def alpha_grad_at(sign):
        with torch.no_grad():
            for w, w0, vi in zip(ws, saved, v):
                w.copy_(w0 + sign * eps * vi)
        return torch.autograd.grad(net.loss(hidden_train, train)[0], net.alphas)[0]

    gp, gn = alpha_grad_at(1.0), alpha_grad_at(-1.0)
    with torch.no_grad():
        for w, w0 in zip(ws, saved):
            w.copy_(w0)
    net.alphas.grad = (dalpha - eta * clip_coef * (gp - gn) / (2 * eps)).detach()
    arch_opt.step()
    return hidden_next.detach()


def weight_step(net, opt, hidden, train, clip=0.25, beta=1e-3):
    """The weight step of rnn/train_search.py (NLL + TAR); returns the next training hidden state."""
    opt.zero_grad()
    loss, hidden_next, raw = net.loss(hidden, train)
    loss = loss + beta * (raw[1:] - raw[:-1]).pow(2).mean()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    return hidden_next.detach()


def make_optimizers(net):
    opt = torch.optim.SGD(net.parameters(), lr=20.0, weight_decay=5e-7)
    arch_opt = torch.optim.Adam([net.alphas], lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-3)
    return opt, arch_opt


def main():
    order, batch, bptt, nhid, vocab, repeats = sys.argv[1], *map(int, sys.argv[2:7])
    if order not in ("first", "second"):
        raise SystemExit(__doc__)
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    cuda = os.environ.get("NAS_DEVICE") == "cuda"
    if cuda:
        # Every tensor the model and the step create (parameters, masks, tokens) on the GPU.
        torch.set_default_device("cuda")
    torch.manual_seed(0)
    net = SearchModel(vocab, nhid)
    net.train()
    opt, arch_opt = make_optimizers(net)
    train_tokens = torch.randint(0, vocab, (bptt + 1, batch))
    val_tokens = torch.randint(0, vocab, (bptt + 1, batch))
    train = (train_tokens[:-1], train_tokens[1:])
    val = (val_tokens[:-1], val_tokens[1:])
    hidden_train, hidden_val = net.init_hidden(batch), net.init_hidden(batch)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        hidden_val = arch_step(net, opt, arch_opt, hidden_train, train, hidden_val, val, order == "second")
        hidden_train = weight_step(net, opt, hidden_train, train)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    rest = sorted(times[1:])
    median = rest[len(rest) // 2]
    print(json.dumps({
        "impl": "pytorch " + torch.__version__, "device": "cuda" if cuda else "cpu", "order": order,
        "batch": batch, "bptt": bptt, "nhid": nhid,
        "vocab": vocab, "params": sum(p.numel() for p in net.parameters()),
        "seconds_per_step": median, "tokens_per_second": batch * bptt / median, "steps": rest,
        "peak_rss_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
    }))


if __name__ == "__main__":
    main()
