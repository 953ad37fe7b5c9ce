"""Seed trials whose per-layer bits follow each layer's quantization sensitivity
(`search.seed_sensitivity`): HAWQ-style Fisher traces from the calibration data, bits allocated
by `methods.sensitivity.sensitivity_plans` at sizes halfway between the uniform bit-widths of the
space, turned back into the space's params by `Space.params_for_bits`."""

from __future__ import annotations

import time

__all__ = ["sensitivity_seeds"]


def sensitivity_seeds(space, bench, log=print) -> list[dict]:
    """Params dicts to enqueue (largest plan, mixed bits), one per pair of consecutive bit-widths
    of the space's bits choices; [] (with one line saying why) when the space cannot mix bits.
    The study has checked that calibration data exist."""
    from slimformer.methods.sensitivity import layer_sensitivity, sensitivity_plans, uniform_sizes

    why = space.why_no_mixed_bits()
    if why is not None:
        log(f"search.seed_sensitivity: nothing to seed, {why}")
        return []
    started = time.monotonic()
    largest = space.largest_plan()
    allowed = sorted(space.bits_choices(), reverse=True)
    scores = layer_sensitivity(bench.model, bench.calibration, "fisher")
    uniform = uniform_sizes(bench.model, largest, allowed)
    targets = [(hi + lo) / 2 for hi, lo in zip(uniform, uniform[1:])]
    plans = sensitivity_plans(bench.model, bench.calibration, largest, allowed, targets, sensitivity=scores)
    log(f"sensitivity seeds: Fisher trace per layer on {len(bench.calibration.batches)} calibration batches "
        f"({time.monotonic() - started:.1f} s)")
    seeds = []
    for hi, lo, mb, plan in zip(allowed, allowed[1:], targets, plans):
        params = space.params_for_bits(plan.bits)
        bits = space.plan_from_params(params).resolve(space.shape).bits
        log(f"  seeded plan: bits {list(bits)} per layer (target {mb:.1f} MB, between uniform {hi} and {lo} bits)")
        seeds.append(params)
    return seeds
