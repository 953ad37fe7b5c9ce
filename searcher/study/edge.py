"""Feasibility first: find the budget's edge along the space's size axis before the sampler explores.

At the start of a new study a few plans along the size axis are built cheaply (magnitude importance,
no recovery, no distillation: the latency and the size do not depend on those) and timed against the
uncompressed model in interleaved rounds (searcher/devices/latency.py). Step k of K puts depth, heads,
FFN neurons and rank at fraction k/K of their choices, with the space's lowest bits and first choice
of everything else: step 0 is the smallest plan, step K the largest widths at the lowest bits. At most
`MAX_MEASURED` steps are measured (0, K/3, 2K/3, K); the smallest in every runtime that can run it, the
others in the runtime that ran the smallest fastest.

- A budget even the smallest plan clearly misses is refused: the upper end of its measured spread is
  below the target. That end is the 90th percentile of its per-round speedups (paired ratios against
  the uncompressed model), and never below the 99% upper bound of their median (a bootstrap,
  searcher/devices/adaptive.py): the noise allowance is what these rounds spread, not a fixed margin.
  A quiet machine gets a tight allowance, a busy one a wide one (one start-up measurement of the same
  plan has moved by 20% between runs on a shared VM: its rounds spread that much too).
- Otherwise the edge is the largest measured step that holds the budget as a trial would (its lower
  bound at `budget.confidence` meets the target; its size fits), or the smallest plan when none does.
  The edge plan and one neighbour (the step above when interpolation says it holds, else the step
  below) are queued FIRST with `seeded: "edge"`: a feasible trial comes early whenever the space holds
  one, whatever the sampler. Queued plans are stored trials (they survive a kill -9 and run once).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

import numpy as np
from slimformer.methods import Plan, model_size

from ..config import StudyConfig
from ..devices.adaptive import speedup_interval
from ..devices.registry import fastest
from ..errors import UserError
from .budget import Budget

__all__ = ["EDGE", "MAX_MEASURED", "REFUSE_CONFIDENCE", "SPREAD_QUANTILE", "AxisPoint", "axis_params", "measured_steps", "measure_axis",
           "check_reach", "edge_seeds", "find_edge", "Edge", "scheme_choices"]

EDGE = "edge"  # user_attrs[SEEDED] of the queued edge plans
SCHEME = "int8_scheme"  # the space's parameter for the int8 scheme (spaces/space.py)
MAX_MEASURED = 4  # plans timed at the start, the smallest included
REFUSE_CONFIDENCE = 0.99  # the upper bound of the median at this confidence, at least, must miss the budget
SPREAD_QUANTILE = 0.9  # ... and this quantile of the per-round speedups (the measured spread)


@dataclass
class AxisPoint:
    """One measured step of the size axis."""
    step: int
    params: dict
    speedup: float | None = None  # median paired ratio against the uncompressed model
    low: float | None = None  # one-sided lower bound at budget.confidence
    high: float | None = None  # upper end of the measured spread (SPREAD_QUANTILE of the rounds, REFUSE_CONFIDENCE)
    latency_ms: float | None = None  # median candidate time in these rounds
    baseline_ms: float | None = None  # median baseline time in the same rounds
    size_mb: float = 0.0
    runtime: str | None = None
    scheme: str | None = None  # the axis's int8 scheme: the one step 0 ran fastest in (None: not a choice)

    def text(self) -> str:
        timing = "" if self.speedup is None else f"{self.speedup:.2f}x [{self.low:.2f}, {self.high:.2f}] "
        return f"step {self.step}: {timing}{self.size_mb:.1f} MB"


_SIZE_NAME = re.compile(r"^(depth|heads|ffn|rank)(_[LB]\d+)?$")  # the space's size parameters (spaces/space.py)


class _Walk:
    """A trial for `Space.sample` that answers each parameter with `pick(name, kind, choices)` and
    records what it answered: exactly the params of the plan, as `study.enqueue_trial` takes them."""

    def __init__(self, pick):
        self.pick, self.params = pick, {}

    def _answer(self, name: str, choices: list):
        size = _SIZE_NAME.match(name)
        self.params[name] = self.pick(name, size.group(1) if size else None, choices)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self._answer(name, list(range(low, high + 1)))

    def suggest_categorical(self, name: str, choices):
        return self._answer(name, list(choices))


def _order(kind: str, choices: list) -> list:
    """A size dimension's choices from cheapest to most expensive (rank: lowest real rank first, dense last)."""
    if kind == "rank":
        return [r for r in choices if r > 0] + ([0] if 0 in choices else [])
    return sorted(choices)


def _smallest_choice(smallest: Plan, name: str, choices: list, scheme: str | None = None):
    """What the space's smallest plan chose for a parameter that is not a size (bits: the lowest; the
    int8 scheme: `scheme` when given; the methods and their settings: as `Space.smallest_plan` picks
    them, read back from that plan)."""
    if name.startswith("bits"):
        return min(choices)
    if name == SCHEME and scheme in choices:
        return scheme
    if name.startswith("distill_"):
        value = getattr(smallest.distill, name.removeprefix("distill_"), None)
        value = "+".join(value) if isinstance(value, tuple) else value
    else:
        value = getattr(smallest, name, None)
    return value if value in choices else choices[0]


def scheme_choices(space) -> list:
    """The int8 schemes the space's smallest plan can take ([None] when the scheme is not searched)."""
    found: list = []

    def probe(name, kind, choices):
        if name == SCHEME:
            found.extend(choices)
        return _order(kind, choices)[0] if kind is not None else _smallest_choice(smallest, name, choices)

    smallest = space.smallest_plan()
    space.sample(_Walk(probe))
    return found or [None]


def axis_params(space, scheme: str | None = None) -> list[dict]:
    """Params (as `study.enqueue_trial` takes them) of the plans along the size axis, step 0 (the
    smallest plan) to step K, with the int8 `scheme` (default: the smallest plan's); K is the longest
    size dimension's number of choices less one."""
    smallest = space.smallest_plan()
    lengths = []

    def probe(name, kind, choices):
        if kind is not None:
            lengths.append(len(choices) - 1)
            return _order(kind, choices)[0]
        return _smallest_choice(smallest, name, choices, scheme)

    space.sample(_Walk(probe))  # the smallest plan's walk sees every size dimension (all layers share choices)
    steps = max(lengths, default=0)
    out: list[dict] = []
    for k in range(steps + 1):
        fraction = k / steps if steps else 0.0

        def pick(name, kind, choices, fraction=fraction):
            if kind is None:
                return _smallest_choice(smallest, name, choices, scheme)
            order = _order(kind, choices)
            return order[math.floor(fraction * (len(order) - 1) + 0.5)]

        walk = _Walk(pick)
        space.sample(walk)
        if walk.params not in out:
            out.append(walk.params)
    return out


def measured_steps(count: int) -> list[int]:
    """Which of `count` axis steps to measure: at most MAX_MEASURED, spread from the first to the last."""
    last = count - 1
    return sorted({round(i * last / (MAX_MEASURED - 1)) for i in range(MAX_MEASURED)}) if last > 0 else [0]


def _cheap(plan: Plan) -> Plan:
    return Plan.from_dict({**plan.to_dict(), "importance": "magnitude", "recovery": "none", "distill": {"steps": 0}})


def _timed(point: AxisPoint, samples: dict, name: str, runtime: str, confidence: float) -> AxisPoint:
    base, cand = samples["baseline"].samples_ms, samples[name].samples_ms
    ratios = [b / c for b, c in zip(base, cand)]
    low, _ = speedup_interval(ratios, confidence)
    _, high = speedup_interval(ratios, REFUSE_CONFIDENCE)
    high = max(high, float(np.quantile(ratios, SPREAD_QUANTILE)))
    point.speedup, point.low, point.high = statistics.median(ratios), low, high
    point.latency_ms, point.baseline_ms = samples[name].median_ms, samples["baseline"].median_ms
    point.runtime = runtime
    return point


def measure_axis(cfg: StudyConfig, space, bench, log, rounds: int | None = None) -> list[AxisPoint]:
    """Build and time the measured steps of the size axis (see the module docstring). The smallest plan
    comes first and alone, in every int8 scheme the space offers and every runtime that can run it; the
    fastest pair is the axis's scheme and runtime. When it clearly misses the budget (see `check_reach`)
    nothing else is built."""
    b = Budget.from_section(cfg.budget)
    timed = b.times_one_forward
    rounds = rounds or max(10, cfg.device.rounds)
    schemes = scheme_choices(space)
    smallest = {scheme: _cheap(space.plan_from_params(axis_params(space, scheme)[0])) for scheme in schemes}
    built = {scheme: bench.build(plan) for scheme, plan in smallest.items()}
    scheme, runtime, lat0 = schemes[0], None, None
    if timed:
        pairs = {(sc, rt): built[sc] for sc in schemes for rt in bench.runtimes_for(smallest[sc])}
        names = {pair: (pair[1] if len(schemes) == 1 else f"{pair[1]} int8 {pair[0]}") for pair in pairs}
        lat0 = bench.latency({names[pair]: model for pair, model in pairs.items()}, rounds,
                             runtimes={names[pair]: pair[1] for pair in pairs})
        scheme, runtime = fastest({pair: lat0[names[pair]].speedup for pair in pairs})
    params = axis_params(space, scheme)
    steps = measured_steps(len(params))
    points = [AxisPoint(0, params[0], size_mb=model_size(built[scheme])["size_mb"], scheme=scheme)]
    if timed:
        _timed(points[0], lat0, names[(scheme, runtime)], runtime, b.confidence)
    check_reach(cfg, points[0])
    models = {}
    for k in steps[1:]:
        models[k] = bench.build(_cheap(space.plan_from_params(params[k])))
        points.append(AxisPoint(k, params[k], size_mb=model_size(models[k])["size_mb"], scheme=scheme))
    if timed and len(points) > 1:
        rest = {f"step{p.step}": models[p.step] for p in points[1:]}
        lat = bench.latency(rest, rounds, runtimes={name: runtime for name in rest})
        for p in points[1:]:
            _timed(p, lat, f"step{p.step}", runtime, b.confidence)
    where = "" if points[0].runtime is None else f" ({points[0].runtime}" + (f", int8 {scheme}" if scheme else "") + ")"
    log("size axis (cheap builds, lowest bits; speedup [low, spread high], size): "
        + "; ".join(p.text() for p in points) + where)
    return points


def check_reach(cfg: StudyConfig, smallest: AxisPoint) -> None:
    """Refuse (UserError: one line, exit 2) a budget the smallest plan of the space clearly misses."""
    b = Budget.from_section(cfg.budget)
    if not b.fits_size(smallest.size_mb):
        raise UserError(f"budget size_mb {b.size_mb} is out of reach: the smallest plan in the space is "
                        f"{smallest.size_mb:.1f} MB; widen the space or relax the budget")
    if smallest.baseline_ms is None or not b.misses(smallest.high, smallest.baseline_ms):
        return
    how = (f"{smallest.speedup:.2f}x faster (at most {smallest.high:.2f}x in the measured spread, "
           f"{smallest.runtime})")
    if b.speedup is not None:
        raise UserError(f"budget speedup {b.speedup} is out of reach: the smallest plan in the space runs only "
                        f"{how} on this device; widen the space or relax the budget")
    raise UserError(f"budget latency_ms {b.latency_ms} is out of reach: the smallest plan in the space takes "
                    f"{smallest.latency_ms:.1f} ms here ({how}); widen the space or relax the budget")


def _holds(cfg: StudyConfig, p: AxisPoint) -> bool:
    b = Budget.from_section(cfg.budget)
    return b.fits_size(p.size_mb) and (p.baseline_ms is None or b.holds(p.low, p.baseline_ms))


def find_edge(cfg: StudyConfig, points: list[AxisPoint], count: int) -> list[int]:
    """The steps to queue: the edge (the largest measured step that holds the budget, else step 0),
    then its neighbour (the step above when it lies between two measured steps and log-linear
    interpolation of their speedups meets the target, else the step below), if any."""
    holding = [p for p in points if _holds(cfg, p)]
    edge = max(holding, key=lambda p: p.step) if holding else points[0]
    if edge.step == count - 1 or not holding:  # all of the space holds, or nothing measured does
        return [edge.step]
    up = edge.step + 1
    above = min((p for p in points if p.step > edge.step), key=lambda p: p.step, default=None)
    b = Budget.from_section(cfg.budget)
    target = None if edge.baseline_ms is None else b.target(edge.baseline_ms)
    if above is not None and up < above.step and target is not None and edge.speedup and above.speedup:
        f = (up - edge.step) / (above.step - edge.step)
        guess = math.exp((1 - f) * math.log(edge.speedup) + f * math.log(above.speedup))
        if b.holds(guess * edge.low / edge.speedup, edge.baseline_ms):  # the edge's own relative spread applied
            return [edge.step, up]
    return [edge.step, edge.step - 1] if edge.step > 0 else [edge.step]


@dataclass
class Edge:
    """What the start-up measurement found: the params to queue first and the measured axis."""
    seeds: list[dict]
    points: list[AxisPoint]

    def worth_trying(self, cfg: StudyConfig, space, candidates: list[dict], log) -> list[dict]:
        """`candidates` (params) less those no cheaper than a measured step that clearly misses the budget
        (the upper end of its spread below the target): at least as many layers, heads, FFN neurons, rank
        and bits in every layer, so at least as slow. The uniform seeds of a tight budget are mostly such
        plans, and a trial spent on one is a trial the sampler does not get near the edge."""
        b = Budget.from_section(cfg.budget)
        missing = [p for p in self.points if p.baseline_ms is not None and b.misses(p.high, p.baseline_ms)]
        if not missing:
            return candidates
        shape = space.shape
        kept = []
        for params in candidates:
            plan = space.plan_from_params(params).resolve(shape)
            slower = next((p for p in missing if _no_cheaper(plan, space.plan_from_params(p.params).resolve(shape))),
                          None)
            if slower is None:
                kept.append(params)
            else:
                log(f"  not seeded: a uniform plan ({_brief(plan)}) no cheaper than axis step {slower.step}, "
                    f"which misses the budget ({slower.speedup:.2f}x, at most {slower.high:.2f}x)")
        return kept


def _brief(plan: Plan) -> str:
    """A resolved plan's widths in a few words: one value per dimension when every kept layer has it."""
    def one(name):
        values = sorted({getattr(plan, name)[i] for i in plan.layers})
        return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return f"{len(plan.layers)} layers, heads {one('heads')}, FFN {one('ffn')}, bits {one('bits')}"


def _no_cheaper(plan: Plan, step: Plan) -> bool:
    """Every size and format of `plan` at least `step`'s (resolved plans): it runs no faster."""
    if not set(step.layers) <= set(plan.layers):
        return False
    def rank(r):
        return math.inf if r == 0 else r  # 0 = dense: the largest

    return all(plan.heads[i] >= step.heads[i] and plan.ffn[i] >= step.ffn[i] and rank(plan.rank[i]) >= rank(step.rank[i])
               and plan.bits[i] >= step.bits[i] for i in step.layers)


def edge_seeds(cfg: StudyConfig, space, bench, log) -> Edge:
    """Measure the size axis, refuse an unreachable budget, and return the params to queue first."""
    points = measure_axis(cfg, space, bench, log)
    params = axis_params(space, points[0].scheme)
    count = len(params)
    steps = find_edge(cfg, points, count)
    noise = "" if any(_holds(cfg, p) for p in points) else " (not clearly holding: within the measured noise)"
    log(f"budget edge: step {steps[0]} of {count - 1}{noise}"
        + (f"; queued first with its neighbour, step {steps[1]}" if len(steps) > 1 else "; queued first"))
    return Edge([params[k] for k in steps], points)
