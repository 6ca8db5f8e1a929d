"""How a lowbit network starts: random (Kaiming) kernels, seeded random +-1 kernels, or the
+-1 kernels of a searched LB-CNN (``lbcnn search``'s model), and in the last two cases the
ELM's closed-form ridge head as the initial output layer.

An LB-CNN's final channel ``f`` is a path through its layers (``LBCNNBody``: output channel
``c * nf + j`` of a depthwise conv descends from input channel ``c``); layer ``l``'s main
kernel and its ``nl - 1`` extra kernels are that path's convs in order. So its kernels fill
a lowbit network exactly when the lowbit net has ``C * prod(filters)`` paths of
``len(filters) * nl`` convs each, one input plane a path (``first="depthwise"``, or a
gray image). The ridge head is solved on the network's own (fake-quantized) input of the
output layer, on training images only: a fit part and a held-out part that picks the
ridge strength; never the validation split.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..errors import ConfigError, DataError

RIDGE_FIT = 8000        # training images the ridge head is solved on (at most)
RIDGE_HOLDOUT = 2000    # further training images that choose its strength
RIDGE_STRENGTHS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)   # x n: relative to the Gram's diagonal
INIT_MODES = ("random", "lbcnn")


@torch.no_grad()
def estimate_norm_statistics(net, x: torch.Tensor, batch_size: int = 500) -> None:
    """Batch-norm running statistics as the equal-weight average over ``x`` (and the LSQ
    steps, initialized on the first batch); the net is left in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    try:
        for i in range(0, len(x), batch_size):
            if len(x[i:i + batch_size]) >= 2 or not bns:
                net(x[i:i + batch_size])
    finally:
        for m in bns:
            m.momentum = 0.1
        net.eval()


def lbcnn_kernels(lb_model, arch: dict) -> list[np.ndarray]:
    """The +-1 kernels of a fitted LB-CNN as one (channels, 1, 3, 3) array per lowbit conv
    layer, or one line saying why its shapes do not fit ``arch``."""
    body = lb_model.body_
    filters, nl = list(body.filters), int(body.nl)
    cin = int(body.input_shape[2])
    n_paths = cin * int(np.prod(filters))
    n_conv = arch["path"].count("c")
    why = []
    if n_paths != arch["channels"]:
        why.append(f"{n_paths} final channels, not {arch['channels']}")
    if len(filters) * nl != n_conv:
        why.append(f"{len(filters) * nl} convs a path, not {n_conv}")
    if cin != arch["input_channels"]:
        why.append(f"{cin} input planes, not {arch['input_channels']}")
    if cin > 1 and arch["first"] != "depthwise":
        why.append("one colour plane a path (use --first depthwise)")
    if why:
        raise ConfigError(f"--init-from: the LB-CNN (filters {','.join(map(str, filters))}, "
                          f"nl {nl}) does not fit this network: it has {'; '.join(why)}")
    out = [np.empty((n_paths, 1, 3, 3), np.float32) for _ in range(n_conv)]
    for f in range(n_paths):
        for layer, kernels in enumerate(body.kernels):
            below = int(np.prod(filters[layer + 1:]))
            ch = f // below                      # this path's channel after layer `layer`
            nf = filters[layer]
            out[layer * nl][f, 0] = kernels["conv"][:, :, ch // nf, ch % nf]
            for e, extra in enumerate(kernels["extras"]):
                out[layer * nl + 1 + e][f, 0] = extra[:, :, ch, 0]
    return out


def random_sign_kernels(arch: dict, seed: int) -> list[np.ndarray]:
    """Seeded random +-1 kernels, one array per conv layer (an LB-CNN body's draw)."""
    from ..models.lowbit import conv_inputs

    rng = np.random.default_rng(seed)
    return [rng.choice(np.array([-1.0, 1.0], np.float32),
                       size=(arch["channels"], conv_inputs(arch, layer), 3, 3))
            for layer in range(arch["path"].count("c"))]


@torch.no_grad()
def set_kernels(net, kernels: list[np.ndarray]) -> None:
    """Latent weights = the +-1 kernels at Kaiming scale; LSQ steps re-initialized."""
    for w, q, k in zip(net.conv_w, net.conv_q, kernels):
        k = torch.as_tensor(k, dtype=w.dtype)
        if k.shape != w.shape:
            raise ConfigError(f"kernel shape {tuple(k.shape)} does not fit {tuple(w.shape)}")
        w.copy_(k * math.sqrt(2.0 / w[0].numel()))
        q.initialized.fill_(False)


@torch.no_grad()
def ridge_head(net, x_fit: torch.Tensor, y_fit: np.ndarray, x_hold: torch.Tensor,
               y_hold: np.ndarray) -> dict:
    """Solve the output layer in closed form on the input it sees (``heads.elm``'s ridge,
    standardized features plus a constant column), pick the strength on the held-out
    images, and write it into the net (rescaled to the layer's current weight size)."""
    from ..heads.elm import RidgeAccumulator, one_vs_rest_targets

    last = len(net.fc_w) - 1
    k = net.arch["n_classes"]

    def inputs(x):
        return torch.cat([net.forward_head(net.forward_features(x[i:i + 1000]), upto=last)
                          for i in range(0, len(x), 1000)]).double().numpy()

    net.eval()
    h_fit, h_hold = inputs(x_fit), inputs(x_hold)
    mu, sd = h_fit.mean(0), h_fit.std(0) + 1e-6

    def design(h):
        return np.concatenate([(h - mu) / sd, np.ones((len(h), 1))], 1).astype(np.float32)

    d_fit, d_hold = design(h_fit), design(h_hold)
    acc = RidgeAccumulator(d_fit.shape[1], k, C=1.0)
    acc.update(d_fit, one_vs_rest_targets(y_fit, k))
    best = None
    try:
        for strength in RIDGE_STRENGTHS:
            acc.C = 1.0 / (strength * len(d_fit))
            w = acc.solve().astype(np.float64)
            score = float(((d_hold @ w).argmax(1) == y_hold).mean()) if len(y_hold) else 0.0
            if best is None or score > best[0]:
                best = (score, strength, w)
    finally:
        acc.release()
    score, strength, w = best
    weight = (w[:-1] / sd[:, None]).T                  # (classes, inputs)
    bias = w[-1] - (mu / sd) @ w[:-1]
    size = float(net.fc_w[last].abs().mean()) / max(float(np.abs(weight).mean()), 1e-12)
    net.fc_w[last].copy_(torch.as_tensor(weight * size, dtype=net.fc_w[last].dtype))
    net.out_bias.copy_(torch.as_tensor(bias * size, dtype=net.out_bias.dtype))
    net.fc_q[last].initialized.fill_(False)
    return {"holdout_accuracy": score, "strength": strength, "fit_images": len(d_fit),
            "holdout_images": len(d_hold)}


def initialize(net, mode: str, init_from, seed: int, x_train: torch.Tensor,
               y_train: np.ndarray, log=None) -> dict:
    """Apply ``mode`` (``random``: as built; ``lbcnn``: +-1 kernels, then the ridge head)
    or the kernels of the LB-CNN in ``init_from``; returns what was done. ``x_train``:
    network input (pixels / 255, resized) of training images only."""
    from ..models.lbcnn import LBCNN

    if mode not in INIT_MODES:
        raise ConfigError(f"init must be one of {', '.join(INIT_MODES)}, got {mode!r}")
    if mode == "random" and init_from is None:
        return {"mode": "random"}
    t0 = time.perf_counter()
    if init_from is not None:
        from ..io.artefacts import load_any
        from ..io.native import resolve_model_path

        path = resolve_model_path(init_from)
        lb = load_any(path)
        if not isinstance(lb, LBCNN):
            raise ConfigError(f"--init-from {init_from}: a {type(lb).__name__}, not an LB-CNN "
                              f"(lbcnn search writes one)")
        kernels = lbcnn_kernels(lb, net.arch)
        info = {"mode": "lbcnn", "from": str(path), "kernel_seed": (lb.meta_ or {}).get(
            "kernel_seed", (lb.meta_ or {}).get("seed"))}
    else:
        kernels = random_sign_kernels(net.arch, seed)
        info = {"mode": "lbcnn", "kernel_seed": int(seed)}
    set_kernels(net, kernels)
    n = len(x_train)
    if n < 20:
        raise DataError(f"the ridge head needs at least 20 training images, got {n}")
    g = np.random.default_rng([seed, 7])
    order = g.permutation(n)
    n_hold = min(RIDGE_HOLDOUT, n // 5)
    hold, fit = order[:n_hold], order[n_hold:n_hold + RIDGE_FIT]
    estimate_norm_statistics(net, x_train[fit[:5000]])
    info["ridge"] = ridge_head(net, x_train[fit], y_train[fit], x_train[hold], y_train[hold])
    estimate_norm_statistics(net, x_train[fit[:5000]])
    info["seconds"] = time.perf_counter() - t0
    if log is not None:
        log(f"init: {'searched LB-CNN kernels' if init_from else '+-1 kernels'}, ridge head "
            f"{100 * info['ridge']['holdout_accuracy']:.2f} % on {n_hold:,} held-out training "
            f"images ({info['seconds']:.1f} s)")
    return info


__all__ = ["INIT_MODES", "estimate_norm_statistics", "initialize", "lbcnn_kernels",
           "random_sign_kernels", "ridge_head", "set_kernels"]
