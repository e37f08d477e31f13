"""Classical forecasters on the same systems and metric as the language model.

persistence: repeat the last observed step.
parroting: copy what followed the stretch of the context most like its last steps (Zhang & Gilpin
2025, "context parroting"); the next-best stretches give samples.
ode_fit: fit the model family the simulator draws from (Rosenzweig-MacArthur by default, or the
classical Lotka-Volterra) to the observed context by least squares, then integrate forward.

The Rosenzweig-MacArthur fit integrates the forward sensitivity equations with the state, so one
integration gives the residuals and their exact Jacobian (no finite differences), in log-parameters
(all positive). It starts from the previous context's fit when given (warm start) and from a few
points spread over the simulator's ranges, stops early once a start fits to noise level, and the
caller can spread systems over processes.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.integrate import solve_ivp as _solve_ivp
from scipy.optimize import least_squares

from .simulate import CLASSICAL_RANGES, RM_RANGES

RM_PARAMS = ("a", "b", "g", "K", "c", "h", "x0", "y0")
CLASSICAL_PARAMS = ("a", "b", "g", "c", "x0", "y0")


def persistence(context: np.ndarray, horizon: int) -> np.ndarray:
    """(ctx, 2) -> (horizon, 2): the last step repeated."""
    return np.repeat(context[-1:], horizon, axis=0)


PARROT_WINDOW = 5  # time steps matched; fixed, not fitted


def parroting(context: np.ndarray, horizon: int, samples: int = 1, window: int = PARROT_WINDOW) -> np.ndarray:
    """(ctx, 2) -> (samples, horizon, 2): for each of the `samples` stretches of `window` steps most like
    the context's last `window` (Euclidean distance over both species, the nearest first), what
    followed it, copied. A copy that reaches the end of the context goes on from its own copied
    values, so a periodic series continues period after period."""
    ctx = len(context)
    window = max(1, min(window, ctx - 1))
    last = context[ctx - window:]
    starts = np.arange(0, ctx - window)  # stretches that have at least one step after them
    distance = np.array([np.linalg.norm(context[i:i + window] - last) for i in starts])
    order = starts[np.lexsort((-starts, distance))]  # nearest first; of equals, the most recent
    out = []
    for i in np.resize(order, samples):  # fewer stretches than samples: some repeat
        series = list(context)
        for k in range(horizon):
            series.append(series[i + window + k])
        out.append(np.array(series[ctx:]))
    return np.stack(out)


STATISTICAL = {"arima": "AutoARIMA", "ets": "AutoETS", "theta": "AutoTheta"}  # our names: statsforecast's models
LEVELS = (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95)  # quantiles they give


def statistical(contexts: np.ndarray, horizon: int, names=tuple(STATISTICAL),
                report: dict | None = None) -> dict[str, np.ndarray]:
    """{name: quantiles (systems, horizon, 2, len(LEVELS))} of statsforecast's automatic models, fitted to
    each system's each species alone (season length 1), their prediction intervals read as quantiles
    (the point forecast as the median). `contexts` (systems, ctx, 2). A series whose model gives
    anything but finite numbers (a fit that failed) forecasts persistence instead, and `report`, if
    given, gets {name: how many did}. Needs `statsforecast` (`pip install -e ".[baselines]"`); raises
    ImportError without it."""
    import pandas as pd  # statsforecast's own dependency; both optional, so imported only here
    import statsforecast.models
    from statsforecast import StatsForecast

    n, ctx, _ = contexts.shape
    frame = pd.DataFrame({"unique_id": np.repeat(np.arange(n * 2), ctx), "ds": np.tile(np.arange(ctx), n * 2),
                          "y": contexts.transpose(0, 2, 1).reshape(-1)})
    widths = sorted({round(abs(1 - 2 * q) * 100) for q in LEVELS if q != 0.5})
    models = [getattr(statsforecast.models, STATISTICAL[name])(alias=name) for name in names]
    fc = StatsForecast(models=models, freq=1, n_jobs=1).forecast(df=frame, h=horizon, level=widths)
    fc = fc.sort_values(["unique_id", "ds"])
    out = {}
    for name in names:
        columns = [name if q == 0.5 else f"{name}-{'lo' if q < 0.5 else 'hi'}-{round(abs(1 - 2 * q) * 100)}"
                   for q in LEVELS]
        values = fc[columns].to_numpy().reshape(n, 2, horizon, len(LEVELS)).transpose(0, 2, 1, 3)
        failed = ~np.isfinite(values).all(axis=(1, 3))  # (systems, 2): a series that did not fit
        last = np.broadcast_to(contexts[:, -1][:, None, :, None], values.shape)
        values = np.where(failed[:, None, :, None], last, values)
        if report is not None:
            report[name] = report.get(name, 0) + int(failed.sum())
        out[name] = np.clip(np.sort(values, axis=-1), 0.0, None)  # populations: never below zero
    return out


def _rm_with_sensitivities(t, z, a, b, g, K, c, h):
    """State (x, y) and S = d(x, y)/d(a, b, g, K, c, h, x0, y0), flattened: 2 + 16 values."""
    x, y = z[0], z[1]
    S = z[2:].reshape(2, 8)
    q = 1.0 + h * x
    P = b * x * y / q
    dP_dx, dP_dy = b * y / q**2, b * x / q
    dP_db, dP_dh = x * y / q, -b * x * x * y / q**2
    f = np.array([a * x * (1 - x / K) - P, c * P - g * y])
    Jz = np.array([[a * (1 - 2 * x / K) - dP_dx, -dP_dy],
                   [c * dP_dx, c * dP_dy - g]])
    Jp = np.array([[x * (1 - x / K), -dP_db, 0.0, a * x * x / K**2, 0.0, -dP_dh, 0.0, 0.0],
                   [0.0, c * dP_db, -y, 0.0, P, c * dP_dh, 0.0, 0.0]])
    return np.concatenate([f, (Jz @ S + Jp).ravel()])


class OutOfEvaluations(Exception):
    """A fit used up its evaluations of the right-hand side (raised from inside the integrator, so
    no integration can run on without bound, however stiff the trial parameters make it)."""


class Evaluations:
    """What a fit may still spend: calls of the ODE's right-hand side. A count, not seconds, so the
    bound and the result are the same on every machine (about 30,000 calls per second here)."""

    def __init__(self, limit: float):
        self.left = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise OutOfEvaluations


UNBOUNDED = float("inf")


def solve_ivp(fun, *args, evaluations: Evaluations | None = None, **kwargs):
    """scipy's solve_ivp without its warnings (a trial parameter set the integrator can't follow is
    an unsuccessful solution, which the fit scores as a bad start, not a message for the user),
    each call of `fun` spent from `evaluations`."""
    budget = evaluations or Evaluations(UNBOUNDED)

    def counted(t, z, *a):
        budget.spend()
        return fun(t, z, *a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _solve_ivp(counted, *args, **kwargs)


def _rm_solve(p: np.ndarray, t: np.ndarray, sensitivities: bool, evaluations: Evaluations | None = None):
    a, b, g, K, c, h, x0, y0 = p
    if sensitivities:
        S0 = np.zeros((2, 8))
        S0[0, 6] = S0[1, 7] = 1.0
        z0 = np.concatenate([[x0, y0], S0.ravel()])
        sol = solve_ivp(_rm_with_sensitivities, (t[0], t[-1]), z0, t_eval=t, args=(a, b, g, K, c, h),
                        method="LSODA", rtol=1e-7, atol=1e-9, evaluations=evaluations)
    else:
        def f(_, z):
            x, y = z
            P = b * x * y / (1 + h * x)
            return [a * x * (1 - x / K) - P, c * P - g * y]
        sol = solve_ivp(f, (t[0], t[-1]), [x0, y0], t_eval=t, method="LSODA", rtol=1e-7, atol=1e-9, evaluations=evaluations)
    return sol


def _classical_solve(p: np.ndarray, t: np.ndarray, evaluations: Evaluations | None = None):
    a, b, g, c, x0, y0 = p

    def f(_, z):
        x, y = z
        return [a * x - b * x * y, c * b * x * y - g * y]
    return solve_ivp(f, (t[0], t[-1]), [x0, y0], t_eval=t, method="LSODA", rtol=1e-7, atol=1e-9, evaluations=evaluations)


def _starts(model: str, context: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    ranges = RM_RANGES if model == "rosenzweig-macarthur" else CLASSICAL_RANGES
    names = RM_PARAMS if model == "rosenzweig-macarthur" else CLASSICAL_PARAMS
    out = []
    for k in range(n):
        p = np.array([(lo + hi) / 2 if k == 0 else rng.uniform(lo, hi) for lo, hi in (ranges[m] for m in names)])
        p[-2:] = np.maximum(context[0], 1e-3)  # the initial state is observed
        out.append(p)
    return out


def ode_fit(time: np.ndarray, context: np.ndarray, horizon: int, model: str = "rosenzweig-macarthur",
            starts: int = 8, warm: np.ndarray | None = None, seed: int = 0, tol: float = 1e-6,
            max_evaluations: float = UNBOUNDED, report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit to `context` (ctx, 2) observed at time[:ctx]; return (forecast (horizon, 2), fitted parameters).

    Tries `warm` (e.g. the fit on a shorter context) first, then `starts` points; stops as soon as
    the RMS residual is below `tol` times the data's scale, or when the search has called the ODE's
    right-hand side `max_evaluations` times: the best fit so far is kept. The forecast's integration
    may spend as many again. Never raises: a failed fit (or none within the bound) falls back to
    persistence (parameters NaN). `report`, if given, gets `bounded`: whether the bound stopped the search.
    """
    evaluations = Evaluations(max_evaluations)
    ctx = len(context)
    t_fit, t_all = time[:ctx], time[:ctx + horizon]
    scale = max(float(np.abs(context).max()), 1e-9)
    rng = np.random.default_rng(seed)
    candidates = ([warm] if warm is not None and np.all(np.isfinite(warm)) else []) + _starts(model, context, starts, rng)
    best_cost, best = np.inf, None
    for p0 in candidates:
        theta0 = np.log(np.maximum(p0, 1e-6))
        try:
            if model == "rosenzweig-macarthur":
                fit = least_squares(_rm_residuals, theta0, jac=_rm_jacobian, args=(t_fit, context, evaluations),
                                    method="trf", x_scale=1.0, max_nfev=200)
            else:
                fit = least_squares(_classical_residuals, theta0, args=(t_fit, context, evaluations), method="trf",
                                    max_nfev=60)
        except (ValueError, FloatingPointError, OverflowError):
            continue
        except OutOfEvaluations:
            if report is not None:
                report["bounded"] = True
            break
        if fit.cost < best_cost:
            best_cost, best = fit.cost, fit.x
        if np.sqrt(2 * best_cost / context.size) < tol * scale:
            break
    if best is None:
        return persistence(context, horizon), np.full(len(candidates[0]), np.nan)
    p = np.exp(best)
    try:
        again = Evaluations(max_evaluations)
        sol = _rm_solve(p, t_all, False, again) if model == "rosenzweig-macarthur" else _classical_solve(p, t_all, again)
    except OutOfEvaluations:
        return persistence(context, horizon), p
    if not sol.success or sol.y.shape[1] != len(t_all) or not np.all(np.isfinite(sol.y)):
        return persistence(context, horizon), p
    return np.clip(sol.y.T[ctx:], 0.0, None), p


_cache: dict = {}


def _rm_eval(theta, t, data, evaluations):
    key = (theta.tobytes(), t.tobytes(), data.tobytes())
    if _cache.get("key") != key:
        sol = _rm_solve(np.exp(theta), t, True, evaluations)
        n = len(t)
        if not sol.success or sol.y.shape[1] != n or not np.all(np.isfinite(sol.y)):
            resid = np.full(data.size, 1e3)
            jac = np.zeros((data.size, len(theta)))
        else:
            states = sol.y[:2].T  # (n, 2)
            sens = sol.y[2:].T.reshape(n, 2, 8) * np.exp(theta)  # d/d log p
            resid = (states - data).ravel()
            jac = sens.reshape(n * 2, 8)
        _cache.update(key=key, resid=resid, jac=jac)
    return _cache["resid"], _cache["jac"]


def _rm_residuals(theta, t, data, evaluations):
    return _rm_eval(theta, t, data, evaluations)[0]


def _rm_jacobian(theta, t, data, evaluations):
    return _rm_eval(theta, t, data, evaluations)[1]


def _classical_residuals(theta, t, data, evaluations):
    sol = _classical_solve(np.exp(theta), t, evaluations)
    if not sol.success or sol.y.shape[1] != len(t) or not np.all(np.isfinite(sol.y)):
        return np.full(data.size, 1e3)
    return (sol.y.T - data).ravel()
