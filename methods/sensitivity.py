"""Per-layer quantization sensitivity and a bits allocator (HAWQ-style: Dong et al. 2019,
"HAWQ: Hessian AWare Quantization of Neural Networks with Mixed-Precision"; HAWQ-V2, 2020,
uses the Hessian trace; HAWQ-V3, 2021, picks bits under a size budget).

Sensitivity of transformer layer i, from calibration batches and the task loss L:
- "fisher": sum over batches of sum over the layer's Linear weights of (dL/dW)^2, divided by
  the layer's number of Linear weights (an empirical-Fisher estimate of the mean Hessian
  diagonal, i.e. Tr(H_i) / n_i);
- "hessian": Hutchinson's estimate of Tr(H_i) / n_i, E[v^T H v] with Rademacher v, from
  Hessian-vector products (double backward; slower).
The loss change from perturbing layer i's weights by dW is then about 1/2 (Tr(H_i)/n_i) ||dW||^2,
so a layer at b bits costs sensitivity_i * ||RTN_b(W_i) - W_i||^2 (HAWQ-V3's metric).

`bits_for_size` lowers, one step at a time, the layer whose next-lower bit-width adds the least
cost per byte saved until the layers fit the target, then raises the most sensitive layers
again while they still fit. Sizes follow `size.model_size` exactly.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .adapters import Adapter, get_adapter
from .plan import DistillSpec, Plan
from .surgery import is_conv1d, weight_out_in

__all__ = ["layer_sensitivity", "hutchinson_trace", "layer_bytes", "weight_errors", "bits_for_size",
           "inverse_order", "sensitivity_plans", "uniform_sizes", "SENSITIVITY"]

SENSITIVITY = ("fisher", "hessian")


def _weights(adapter: Adapter) -> list[list[torch.Tensor]]:
    """Per layer position, the weight tensors of its Linears/Conv1Ds."""
    out = []
    for layer in adapter.layers():
        out.append([m.weight for m in layer.modules()
                    if (isinstance(m, nn.Linear) or is_conv1d(m)) and m.weight.numel()])
    return out


def hutchinson_trace(loss_fn, params: list[torch.Tensor], samples: int = 1,
                     generator: torch.Generator | None = None) -> float:
    """Hutchinson's estimate of Tr(d^2 loss / d params^2): mean over `samples` Rademacher
    vectors v of v^T H v, with Hv from double backward."""
    total = 0.0
    for _ in range(samples):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        vs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
        hv = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), params)
        total += float(sum((h * v).sum() for h, v in zip(hv, vs)))
    return total / samples


def layer_sensitivity(model: nn.Module, calibration, method: str = "fisher", samples: int = 1,
                      seed: int = 0, log=lambda m: None) -> list[float]:
    """Per transformer layer (current positions), Tr(H)/n estimated by `method`."""
    if method not in SENSITIVITY:
        raise ValueError(f"sensitivity method must be one of {', '.join(SENSITIVITY)}, got {method!r}")
    if calibration is None:
        raise ValueError("sensitivity needs calibration batches with a task loss: set data.calibration")
    adapter = get_adapter(model)
    weights = _weights(adapter)
    flat = [w for ws in weights for w in ws]
    was_training = model.training
    model.eval()
    req = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in req:
        p.requires_grad_(False)
    for w in flat:
        w.requires_grad_(True)
    scores = [0.0] * len(weights)
    gen = torch.Generator().manual_seed(seed)
    try:
        for b, batch in enumerate(calibration.batches):
            if method == "fisher":
                loss = calibration.loss_fn(model, batch)
                grads = torch.autograd.grad(loss, flat)
                it = iter(grads)
                for i, ws in enumerate(weights):
                    scores[i] += float(sum(next(it).pow(2).sum() for _ in ws))
                log(f"sensitivity: batch {b + 1}/{len(calibration.batches)} loss {loss.item():.4f}")
            else:  # double backward: the math attention kernel (the fused CPU kernels have no 2nd derivative)
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    for i, ws in enumerate(weights):
                        if ws:
                            scores[i] += hutchinson_trace(lambda b_=batch: calibration.loss_fn(model, b_), ws, samples, gen)
                log(f"sensitivity: batch {b + 1}/{len(calibration.batches)} (hutchinson)")
    finally:
        for p, r in req:
            p.requires_grad_(r)
        model.train(was_training)
    n = len(calibration.batches)
    return [s / n / max(1, sum(w.numel() for w in ws)) for s, ws in zip(scores, weights)]


def layer_bytes(layer: nn.Module, bits: int, group_size: int = 64) -> float:
    """Bytes of one transformer layer at `bits`, counted as `size.model_size` counts them."""
    total = 0.0
    for module in layer.modules():
        linear = isinstance(module, nn.Linear) or is_conv1d(module)
        for name, p in module.named_parameters(recurse=False):
            n = p.numel()
            if linear and name == "weight":
                out_f = weight_out_in(module).shape[0]
                total += {32: 4 * n, 16: 2 * n, 8: (n + 4 * out_f) if n else 0}.get(bits, n * bits / 8 + n / group_size * 2)
            else:
                total += n * (2 if bits == 16 else 4)
    return total


def _rounding_error(w: torch.Tensor, bits: int, group_size: int) -> float:
    from .quantize import fake_quantize_weight

    w = w.detach().float()
    if bits == 32:
        return 0.0
    if bits == 16:
        return float((w.bfloat16().float() - w).pow(2).sum())
    g = w.shape[1] if bits == 8 else group_size  # int8 is per output channel
    return float((fake_quantize_weight(w, bits, g) - w).pow(2).sum())


def weight_errors(model: nn.Module, allowed_bits, group_size: int = 64) -> list[dict[int, float]]:
    """Per layer and bit-width, ||RTN_b(W) - W||^2 summed over the layer's Linear weights."""
    adapter = get_adapter(model)
    return [{b: sum(_rounding_error(weight_out_in(m), b, group_size) for m in layer.modules()
                    if (isinstance(m, nn.Linear) or is_conv1d(m)) and m.weight.numel())
             for b in allowed_bits}
            for layer in adapter.layers()]


def _noise(bits: int) -> float:
    """Relative rounding-noise power of a bit-width when no measured errors are given."""
    return 0.0 if bits == 32 else 4.0 ** -(10 if bits == 16 else bits)


def bits_for_size(sensitivity, sizes, allowed_bits, target: float, errors=None) -> list[int]:
    """Bits per layer with sum(sizes[i][bits_i]) <= target, spending precision where it is most
    sensitive. sizes[i]: {bits: bytes}; errors[i]: {bits: squared rounding error} (default: a
    4^-bits noise model); cost of layer i at b bits = sensitivity[i] * errors[i][b]."""
    allowed = sorted(set(allowed_bits), reverse=True)
    if not allowed:
        raise ValueError("allowed bits is empty")
    n = len(sensitivity)
    if len(sizes) != n or (errors is not None and len(errors) != n):
        raise ValueError("sensitivity, sizes and errors need one entry per layer")

    def cost(i, b):  # a negative estimate (Hutchinson noise) counts as insensitive
        return max(0.0, float(sensitivity[i])) * (errors[i][b] if errors is not None else _noise(b))

    floor = sum(sizes[i][allowed[-1]] for i in range(n))
    if floor > target:
        raise ValueError(f"size target {target:,.0f} bytes is below the smallest reachable "
                         f"({floor:,.0f} bytes with every layer at {allowed[-1]} bits)")
    bits = [allowed[0]] * n
    total = sum(sizes[i][bits[i]] for i in range(n))
    while total > target:  # lower the step with the least added cost per byte saved
        best = None
        for i in range(n):
            k = allowed.index(bits[i])
            if k + 1 == len(allowed):
                continue
            nxt = allowed[k + 1]
            saved = sizes[i][bits[i]] - sizes[i][nxt]
            if saved <= 0:
                continue
            ratio = (cost(i, nxt) - cost(i, bits[i])) / saved
            if best is None or ratio < best[0]:
                best = (ratio, i, nxt, saved)
        _, i, nxt, saved = best
        bits[i] = nxt
        total -= saved
    order = sorted(range(n), key=lambda i: -float(sensitivity[i]))
    raised = True
    while raised:  # spend what is left, most sensitive layers first
        raised = False
        for i in order:
            k = allowed.index(bits[i])
            if k and total - sizes[i][bits[i]] + sizes[i][allowed[k - 1]] <= target:
                total += sizes[i][allowed[k - 1]] - sizes[i][bits[i]]
                bits[i] = allowed[k - 1]
                raised = True
                break
    return bits


def inverse_order(bits: list[int], sensitivity) -> list[int]:
    """The same bit-widths handed out in the opposite order: fewest bits to the most sensitive
    layer (a control for the allocator; same size when the layers are the same size)."""
    order = sorted(range(len(bits)), key=lambda i: -float(sensitivity[i]))
    out = [0] * len(bits)
    for i, b in zip(order, sorted(bits)):
        out[i] = b
    return out


def uniform_sizes(model: nn.Module, base_plan: Plan, bits) -> list[float]:
    """Size in MB (as `model_size` counts it) of `base_plan` with every layer at each of `bits`:
    the size targets a mixed-precision allocation sits between. Structure-only builds (sizes
    depend on shapes and bits only)."""
    from .registry import apply_plan
    from .size import model_size

    return [model_size(apply_plan(model, replace(base_plan, bits=b), structure_only=True),
                       base_plan.group_size)["size_mb"] for b in bits]


def sensitivity_plans(model: nn.Module, calibration, base_plan: Plan, allowed_bits, targets,
                      method: str = "fisher", sensitivity=None, log=lambda m: None) -> list[Plan]:
    """One plan per size target (MB of the whole model, as `model_size` counts it): `base_plan`
    with per-layer bits chosen by sensitivity (for seeding a search). Layers `base_plan` drops
    keep bits 32 (they are gone anyway)."""
    from .registry import apply_plan
    from .size import model_size

    adapter = get_adapter(model)
    resolved = base_plan.resolve(adapter.shape())
    if sensitivity is None:
        sensitivity = layer_sensitivity(model, calibration, method, log=log)
    shape_only = replace(base_plan, bits=32, smooth=0.0, recovery="none", distill=DistillSpec())
    shaped = apply_plan(model, shape_only, structure_only=True)  # sizes only: shapes are what count
    kept = list(resolved.layers)
    layers = get_adapter(shaped).layers()
    gs = base_plan.group_size
    sizes = [{b: layer_bytes(layers[pos], b, gs) for b in allowed_bits} for pos in range(len(kept))]
    all_errors = weight_errors(model, allowed_bits, gs)
    errors = [all_errors[i] for i in kept]
    rest = model_size(shaped, gs)["size_bytes"] - sum(layer_bytes(layer, 32, gs) for layer in layers)
    plans = []
    for mb in targets:
        chosen = bits_for_size([sensitivity[i] for i in kept], sizes, allowed_bits, mb * 2**20 - rest, errors)
        per_layer = [32] * len(resolved.bits)
        for i, b in zip(kept, chosen):
            per_layer[i] = b
        plans.append(replace(base_plan, bits=tuple(per_layer)))
    return plans
