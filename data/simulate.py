"""Simulate predator-prey systems with scipy's solve_ivp and write them in the reference HDF5 format.

    python -m data.simulate --out data/lotka_volterra_data.h5 --systems 1000 --seed 0
    python -m data.simulate --model classical --systems 200 --out /tmp/lv.h5
    python -m data.simulate --set other-family --out runs/sets/other-family.h5

The reference set is not the classical Lotka-Volterra model (its oscillations damp, which the
classical model can't do) but its Rosenzweig-MacArthur form: logistic prey, saturating predation

    dx/dt = a x (1 - x/K) - b x y / (1 + h x)
    dy/dt = c b x y / (1 + h x) - g y

with x prey, y predator, time in the file's units (0..200 over 100 points). Parameters are drawn
per system, uniformly in the ranges of `RM_RANGES` (or `CLASSICAL_RANGES`); a seed fixes everything.
The ranges are those fitted to the reference set, with K in (4, 14) and b in (0.22, 0.5) rather than
(5, 15) and (0.2, 0.5): with those the 1,000-system summary (max, mean, 99th percentile, fraction
below 0.1, per species) lands within 15% of the reference's on every figure (see the README).

Other families (`RANGES`): the classical model (no carrying capacity, predation b x y), Holling type
III (predation b x^2 y / (1 + h x^2)), Ivlev's response (b (1 - exp(-h x)) y / h, saturating as an
exponential), Holling-Tanner (Rosenzweig-MacArthur's prey, predators growing logistically towards
q x: dy/dt = s y (1 - y / (q x)), Leslie-Gower's form) and Beddington-DeAngelis (b x y / (1 + h x + e y),
predators interfering). A `World` mixes families, widens the ranges, and adds observation noise; `WORLDS` are
where training systems come from, `SETS` the test sets that no training run draws from.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

from commandline import Parser, exit_status

from .io import DEFAULT_PATH, DataError, Series, load_series, write_series

RM_RANGES = {"a": (0.1, 0.3), "b": (0.22, 0.5), "g": (0.1, 0.3), "K": (4.0, 14.0), "c": (0.3, 0.7),
             "h": (0.05, 0.2), "x0": (0.8, 1.2), "y0": (0.8, 1.2)}
CLASSICAL_RANGES = {"a": (0.1, 0.3), "b": (0.1, 0.3), "g": (0.1, 0.3), "c": (0.3, 0.7),
                    "x0": (0.8, 1.2), "y0": (0.8, 1.2)}
# family -> the ranges its parameters are drawn from (the fitted ones, or near them)
RANGES = {
    "rosenzweig-macarthur": RM_RANGES,
    "classical": CLASSICAL_RANGES,
    "holling-iii": {**RM_RANGES, "b": (0.1, 0.3), "h": (0.02, 0.1)},  # predation b x^2 / (1 + h x^2)
    "ivlev": {**RM_RANGES, "h": (0.05, 0.3)},  # predation b (1 - exp(-h x)) / h
    # predators s y (1 - y / (q x)) in place of c P - g y
    "holling-tanner": {**{k: r for k, r in RM_RANGES.items() if k not in ("c", "g")}, "s": (0.01, 0.1), "q": (0.2, 1.0)},
    "beddington-deangelis": {**RM_RANGES, "e": (0.1, 0.5)},  # predation b x / (1 + h x + e y)
}
MODELS = tuple(RANGES)


def draw_parameters(n: int, rng: np.random.Generator, model: str = "rosenzweig-macarthur",
                    ranges: dict | None = None) -> dict[str, np.ndarray]:
    return {name: rng.uniform(lo, hi, size=n) for name, (lo, hi) in (ranges or RANGES[model]).items()}


def predation(params: dict[str, np.ndarray], model: str):
    """The predators' functional response P(x, y): prey eaten per unit time (the predators grow by c P)."""
    b = params["b"]
    if model == "classical":
        return lambda x, y: b * x * y
    if model == "holling-iii":
        return lambda x, y: b * x * x * y / (1 + params["h"] * x * x)
    if model == "ivlev":
        return lambda x, y: b * (1 - np.exp(-params["h"] * x)) * y / params["h"]
    if model == "beddington-deangelis":
        return lambda x, y: b * x * y / (1 + params["h"] * x + params["e"] * y)
    return lambda x, y: b * x * y / (1 + params["h"] * x)


def predator_growth(params: dict[str, np.ndarray], model: str):
    """dy/dt(x, y, P) with P the prey eaten: the predators grow by c P and die at rate g, but in
    Holling-Tanner, where they grow logistically towards q predators a prey (Leslie-Gower)."""
    if model == "holling-tanner":
        s, q = params["s"], params["q"]
        return lambda x, y, p: s * y * (1 - y / (q * np.maximum(x, 1e-9)))
    c, g = params["c"], params["g"]
    return lambda x, y, p: c * p - g * y


def rhs(params: dict[str, np.ndarray], model: str, tempo: np.ndarray | None = None):
    """The right-hand side for n systems at once; the state is (x_1..x_n, y_1..y_n). Every family but
    the classical one has logistic prey growth (carrying capacity K). `tempo` (n,) scales each system's
    clock: every rate of its ODE times tempo, the same orbit run through tempo times as fast."""
    a = params["a"]
    eaten, predators = predation(params, model), predator_growth(params, model)
    growth = (lambda x: a * x) if model == "classical" else (lambda x: a * x * (1 - x / params["K"]))
    clock = 1.0 if tempo is None else np.concatenate([tempo, tempo])

    def f(t, z):
        x, y = np.split(z, 2)
        p = eaten(x, y)
        return clock * np.concatenate([growth(x) - p, predators(x, y, p)])
    return f


def integrate(params: dict[str, np.ndarray], time: np.ndarray, model: str = "rosenzweig-macarthur",
              tempo: np.ndarray | None = None) -> np.ndarray:
    """Trajectories (n, len(time), 2) for the given per-system parameters, [..., 0] prey, [..., 1] predator;
    `tempo` (n,), if given, speeds each system's clock (see `rhs`)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    z0 = np.concatenate([params["x0"], params["y0"]])
    sol = solve_ivp(rhs(params, model, tempo), (float(time[0]), float(time[-1])), z0, t_eval=time,
                    method="LSODA", rtol=1e-8, atol=1e-10)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    x, y = np.split(sol.y, 2)  # each (n, T)
    return np.clip(np.stack([x, y], axis=-1), 0.0, None)


@dataclass(frozen=True)
class World:
    """Where systems come from: their families (each system one, equally likely), how wide the
    parameter ranges are (`width` times each fitted range's width, around its centre, never below
    half its low end), the starting populations' range (None: the family's own), multiplicative
    observation noise (each system's sigma drawn uniformly in `noise`, or 0 for a share `clean` of
    the systems; each value times exp(sigma N(0, 1))), an amplitude factor exp(U(-jitter, jitter))
    per system, and a tempo factor exp(U(-tempo, tempo)) per system that runs its clock faster or
    slower (every rate of its ODE scaled together: the time-scale symmetry every family here has, as
    the amplitude factor is the population-scale one)."""

    families: tuple[str, ...] = ("rosenzweig-macarthur",)
    width: float = 1.0
    starts: tuple[float, float] | None = None
    noise: tuple[float, float] = (0.0, 0.0)
    clean: float = 0.0
    jitter: float = 0.0
    tempo: float = 0.0

    def ranges(self, family: str) -> dict[str, tuple[float, float]]:
        out = {}
        for name, (lo, hi) in RANGES[family].items():
            if name in ("x0", "y0") and self.starts is not None:
                out[name] = self.starts
            elif self.width == 1:
                out[name] = (lo, hi)
            else:
                centre, half = (lo + hi) / 2, self.width * (hi - lo) / 2
                out[name] = (max(centre - half, lo / 2), centre + half)
        return out


# where the training systems come from (train.py --world): the ranges fitted to the reference set,
# or a wider world: three (or five) families, 1.5 times the fitted ranges, noise and amplitude jitter
WORLDS = {
    "fitted": World(),
    "wide": World(families=("rosenzweig-macarthur", "classical", "holling-iii"), width=1.5, starts=(0.6, 1.6),
                  noise=(0.0, 0.08), jitter=0.25),
    "wide-half-clean": World(families=("rosenzweig-macarthur", "classical", "holling-iii"), width=1.5,
                             starts=(0.6, 1.6), noise=(0.01, 0.08), clean=0.5, jitter=0.25),
    "wide-families": World(families=("rosenzweig-macarthur", "classical", "holling-iii", "ivlev", "holling-tanner"),
                           width=1.5, starts=(0.6, 1.6), noise=(0.01, 0.08), clean=0.5, jitter=0.25),
    "wide-tempo": World(families=("rosenzweig-macarthur", "classical", "holling-iii"), width=1.5,
                        starts=(0.6, 1.6), noise=(0.01, 0.08), clean=0.5, jitter=0.25, tempo=0.3),
}
# test sets no training run uses, each harder than the fitted world in one way: (world, seed)
SETS = {
    "fresh": (WORLDS["fitted"], 424242),
    "shifted": (World(width=2.0, starts=(0.5, 2.0)), 424243),  # wider than the wide training world too
    "other-family": (World(families=("beddington-deangelis",)), 424244),  # a family no world trains on
    "noisy": (World(noise=(0.05, 0.05)), 424242),  # the fresh systems, observed with 5% noise
}


def simulate(systems: int = 1000, seed: int = 0, points: int = 100, t_end: float = 200.0,
             model: str = "rosenzweig-macarthur") -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(trajectories float32 (systems, points, 2), time float64 (points,), parameters drawn) of one
    family with its fitted ranges."""
    return simulate_world(World(families=(model,)), systems, seed, points, t_end)


def simulate_world(world: World, systems: int = 1000, seed: int = 0, points: int = 100,
                   t_end: float = 200.0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """As `simulate`, from `world`; the seed fixes everything. The parameters come from one stream
    (so a world that only adds noise draws the same systems), the noise and jitter from another, the
    tempo from a third (parameters["tempo"] where the world has one); parameters["noise"] is each
    system's observation noise, the sigma of its factor exp(sigma N(0, 1)) (0 for a clean system),
    where the world observes with noise."""
    rng = np.random.default_rng(seed)
    tempo = np.exp(np.random.default_rng([seed, 2]).uniform(-world.tempo, world.tempo, size=systems)) if world.tempo else None
    time = np.linspace(0.0, t_end, points)
    families = np.zeros(systems, dtype=int) if len(world.families) == 1 else rng.integers(len(world.families), size=systems)
    out = np.zeros((systems, points, 2))
    params: dict[str, np.ndarray] = {"family": families}
    for k, family in enumerate(world.families):
        rows = np.flatnonzero(families == k)
        if not len(rows):
            continue
        drawn = draw_parameters(len(rows), rng, ranges=world.ranges(family))
        out[rows] = integrate(drawn, time, family, None if tempo is None else tempo[rows])
        for name, value in drawn.items():
            params.setdefault(name, np.full(systems, np.nan))[rows] = value
    if tempo is not None:
        params["tempo"] = tempo
    observe = np.random.default_rng([seed, 1])
    if world.jitter:
        out *= np.exp(observe.uniform(-world.jitter, world.jitter, size=(systems, 1, 1)))
    if world.noise[1] > 0:
        sigma = observe.uniform(*world.noise, size=(systems, 1, 1))
        if world.clean:
            sigma *= observe.uniform(size=(systems, 1, 1)) >= world.clean
        out *= np.exp(sigma * observe.standard_normal(out.shape))
        params["noise"] = sigma[:, 0, 0]
    return out.astype(np.float32), time, params


def summary(trajectories: np.ndarray) -> dict[str, dict[str, float]]:
    """Max, mean, 99th percentile and fraction below 0.1, per species."""
    out = {}
    for i, species in enumerate(("prey", "predator")):
        v = trajectories[..., i]
        out[species] = {"max": float(v.max()), "mean": float(v.mean()), "p99": float(np.percentile(v, 99)),
                        "below_0.1": float((v < 0.1).mean())}
    return out


def format_summary(s: dict[str, dict[str, float]]) -> str:
    lines = [f"{'species':<10}{'max':>8}{'mean':>8}{'p99':>8}{'<0.1':>8}"]
    for species, v in s.items():
        lines.append(f"{species:<10}{v['max']:>8.2f}{v['mean']:>8.2f}{v['p99']:>8.2f}{v['below_0.1']:>8.1%}")
    return "\n".join(lines)


def ensure_data(path: str | Path = DEFAULT_PATH) -> Series:
    """Load `path`; if it is the default and missing, simulate the default set there first and say so."""
    path = Path(path)
    if not path.exists() and path.resolve() == DEFAULT_PATH.resolve():
        trajectories, time, _ = simulate()
        write_series(path, trajectories, time)
        print(f"{path} was missing: simulated 1000 systems (seed 0) and wrote them there", file=sys.stderr)
    return load_series(path)


def parser() -> Parser:
    p = Parser("python -m data.simulate", __doc__.split("\n")[0], examples=[
        "python -m data.simulate                                   # the default data set (seed 0)",
        "python -m data.simulate --out runs/tune.h5 --seed 7       # 1000 other systems, a second split",
        "python -m data.simulate --set shifted --out runs/sets/shifted.h5   # a test set harder than the fitted world",
        "python -m data.simulate --out runs/small.h5 --systems 50 --model holling-iii"])
    p.add_argument("--out", default=str(DEFAULT_PATH), help="HDF5 file to write")
    p.add_argument("--set", choices=tuple(SETS), default=None,
                   help="one of the test sets, each from its own world and seed (fresh: the fitted world; shifted: "
                        "ranges twice as wide, starting populations 0.5-2.0; other-family: Beddington-DeAngelis, "
                        "which no world trains on; noisy: the fresh systems with 5%% multiplicative noise) "
                        "(default: none, --model with its fitted ranges)")
    p.add_argument("--world", choices=tuple(WORLDS), default=None,
                   help="draw from a training world instead (with a seed no run trains on: a held-out split to "
                        "fit a forecast's spread on) (default: none)")
    p.add_argument("--systems", type=int, default=1000, help="predator-prey systems, each with its own parameters")
    p.add_argument("--points", type=int, default=100, help="time points per system")
    p.add_argument("--t-end", type=float, default=200.0, help="last time point (the first is 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the parameters and starting populations "
                   "(default: the --set's own, else 0)")
    p.add_argument("--model", choices=MODELS, default="rosenzweig-macarthur", help="the ODE that makes the series")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.systems < 1 or args.points < 2 or args.t_end <= 0:
        print("error: --systems must be >= 1, --points >= 2 and --t-end > 0", file=sys.stderr)
        return 2
    if Path(args.out).is_dir():
        print(f"error: --out {args.out}: is a folder; give the file to write, e.g. {Path(args.out) / 'series.h5'}",
              file=sys.stderr)
        return 2
    if args.set and args.world:
        print("error: --set and --world: give one (a test set, or a training world's systems)", file=sys.stderr)
        return 2
    world, seed = SETS[args.set] if args.set else (WORLDS[args.world] if args.world else World(families=(args.model,)), 0)
    seed = seed if args.seed is None else args.seed
    trajectories, time, _ = simulate_world(world, args.systems, seed, args.points, args.t_end)
    try:
        write_series(args.out, trajectories, time)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = f"set {args.set}" if args.set else f"world {args.world}" if args.world else args.model
    print(f"wrote {args.out}: {args.systems} systems x {args.points} points ({what}, seed {seed})")
    print(format_summary(summary(trajectories)))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
