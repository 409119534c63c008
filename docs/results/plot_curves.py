"""Draws the epoch curves of a run's metrics.jsonl as an SVG (no dependencies).

usage: python3 plot_curves.py RUN_DIR OUT.svg
Plots train and validation accuracy (left axis, %) and train, validation and
architecture-validation loss (right axis) per epoch.
"""
import json
import sys

run, out = sys.argv[1], sys.argv[2]
epochs = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"kind":"epoch"' in l]
W, H, L, R, T, B = 640, 360, 60, 60, 30, 50
pw, ph = W - L - R, H - T - B
n = max(len(epochs) - 1, 1)


def x(i):
    return L + pw * i / n


def series(key, lo, hi, scale=1.0):
    pts = [(x(i), T + ph * (1 - (e[key] * scale - lo) / (hi - lo))) for i, e in enumerate(epochs) if key in e]
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)


losses = [e[k] for e in epochs for k in ("train_loss", "val_loss", "arch_val_loss") if k in e]
lmax = max(losses) * 1.05
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
for k in range(0, 101, 20):
    y = T + ph * (1 - k / 100)
    svg.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{k}%</text>')
    svg.append(f'<text x="{W - R + 6}" y="{y + 4:.1f}">{lmax * k / 100:.2f}</text>')
for i in range(len(epochs)):
    svg.append(f'<text x="{x(i):.1f}" y="{H - B + 16}" text-anchor="middle">{i + 1}</text>')
svg.append(f'<text x="{L + pw / 2}" y="{H - 12}" text-anchor="middle">epoch</text>')
lines = [("train_accuracy", 0, 100, 100, "#1f77b4", "train accuracy", ""),
         ("val_accuracy", 0, 100, 100, "#2ca02c", "validation accuracy", ""),
         ("train_loss", 0, lmax, 1, "#1f77b4", "train loss", "4 3"),
         ("val_loss", 0, lmax, 1, "#2ca02c", "validation loss", "4 3"),
         ("arch_val_loss", 0, lmax, 1, "#d62728", "architecture-step loss", "4 3")]
for j, (key, lo, hi, sc, color, label, dash) in enumerate(lines):
    if not any(key in e for e in epochs):
        continue
    svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{series(key, lo, hi, sc)}"/>')
    svg.append(f'<line x1="{L + pw * 0.55}" x2="{L + pw * 0.55 + 30}" y1="{T + 75 + 16 * j}" y2="{T + 75 + 16 * j}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
    svg.append(f'<text x="{L + pw * 0.55 + 36}" y="{T + 79 + 16 * j}">{label}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
