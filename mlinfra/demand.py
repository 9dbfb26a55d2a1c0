"""The reference server's model: ridge regression for hourly demand, fitted on a seeded
synthetic dataset, its fitted weights cached on disk, and the validation of /predict bodies.

No HTTP here (that is ``serve.py``). On a GCP node this file is shipped beside ``serve.py``
and imported from there; in the package, as ``mlinfra.demand``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "demand-ridge"
MODEL_VERSION = "1"
MAX_INSTANCES = 1000
DEFAULT_SEED = 20240601
# From this many instances numpy predicts (imported on first use); below it a dot product in
# Python is faster than building arrays (about equal at 64 instances on this project's machine).
NUMPY_MIN_BATCH = 64

# Defaults for features a request leaves out: a mild Wednesday noon at list price,
# no promotion. day_of_week: 0 = Monday ... 6 = Sunday; temperature in Celsius.
FEATURE_DEFAULTS = {"hour": 12, "day_of_week": 2, "price": 10.0, "promo": 0, "temperature": 15.0}
FEATURE_NAMES = (
    ["hour_sin", "hour_cos", "hour_sin2", "hour_cos2"]
    + [f"dow_{d}" for d in range(1, 7)]  # Monday is the baseline level
    + ["price", "promo", "temperature", "temperature_sq"]
)


def build_features(hour, day_of_week, price, promo, temperature) -> np.ndarray:
    """Design matrix (n, len(FEATURE_NAMES)) from raw feature arrays.

    Hour is encoded with two harmonics of sin/cos so that 23:00 sits next to
    00:00 and a daily profile with two peaks (lunch, evening) can be represented.
    Temperature gets a squared term around 15 C: demand is best on mild days.
    """
    import numpy as np

    hour = np.asarray(hour, dtype=float)
    angle = 2.0 * np.pi * hour / 24.0
    dow = np.asarray(day_of_week, dtype=int)
    dow_onehot = (dow[:, None] == np.arange(1, 7)[None, :]).astype(float)
    temperature = np.asarray(temperature, dtype=float)
    return np.column_stack(
        [
            np.sin(angle),
            np.cos(angle),
            np.sin(2 * angle),
            np.cos(2 * angle),
            dow_onehot,
            np.asarray(price, dtype=float),
            np.asarray(promo, dtype=float),
            temperature,
            (temperature - 15.0) ** 2,
        ]
    )


def generate_demand_data(n_samples: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic hourly demand: returns (design matrix, target units sold).

    Demand peaks in the evening and around lunch, is higher on Friday and the
    weekend, falls with price, rises by ~25 units on promotion and is best at
    mild temperatures. Gaussian noise (sd 6) keeps the fit honest.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, n_samples)
    dow = rng.integers(0, 7, n_samples)
    price = rng.uniform(5.0, 15.0, n_samples)
    promo = (rng.random(n_samples) < 0.2).astype(float)
    temperature = rng.normal(15.0, 8.0, n_samples)
    daily = 25.0 * np.cos(2 * np.pi * (hour - 18) / 24) + 10.0 * np.cos(4 * np.pi * (hour - 12) / 24)
    weekly = np.select([dow == 4, dow >= 5], [8.0, 15.0], 0.0)
    demand = (
        100.0
        + daily
        + weekly
        - 4.0 * (price - 10.0)
        + 25.0 * promo
        + 1.2 * (temperature - 15.0)
        - 0.04 * (temperature - 15.0) ** 2
        + rng.normal(0.0, 6.0, n_samples)
    )
    return build_features(hour, dow, price, promo, temperature), demand


@dataclass(frozen=True)
class DemandModel:
    coef: np.ndarray  # one weight per FEATURE_NAMES entry, in raw feature units
    intercept: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        import numpy as np

        # Demand cannot be negative, whatever a far extrapolation says.
        return np.maximum(features @ self.coef + self.intercept, 0.0)


def fit_ridge(features: np.ndarray, target: np.ndarray, alpha: float = 1.0) -> DemandModel:
    """Closed-form ridge regression on standardized features.

    Standardizing makes one alpha mean the same for every feature; the
    intercept is not penalized. Weights are mapped back to raw units so that
    prediction is a single matrix-vector product.
    """
    import numpy as np

    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    z = (features - mean) / scale
    y_mean = float(target.mean())
    gram = z.T @ z + alpha * np.eye(z.shape[1])
    weights = np.linalg.solve(gram, z.T @ (target - y_mean))
    coef = weights / scale
    return DemandModel(coef=coef, intercept=y_mean - float(mean @ coef))


def fit_demand_model(seed: int = DEFAULT_SEED, n_samples: int = 20_000, alpha: float = 1.0) -> DemandModel:
    features, target = generate_demand_data(n_samples, seed)
    return fit_ridge(features, target, alpha)


class FittedWeights:
    """A fitted model as plain floats. ``predict`` takes ``_columns``' lists and returns
    floats: a dot product in Python below ``NUMPY_MIN_BATCH`` instances, ``DemandModel``
    from there on (the same sum, to rounding in the last bits)."""

    def __init__(self, coef, intercept: float) -> None:
        self.coef, self.intercept = tuple(float(c) for c in coef), float(intercept)
        if len(self.coef) != len(FEATURE_NAMES) or not all(map(math.isfinite, self.coef + (self.intercept,))):
            raise ValueError(f"need {len(FEATURE_NAMES)} finite weights and a finite intercept")
        self._model: DemandModel | None = None

    @property
    def model(self) -> DemandModel:
        if self._model is None:
            import numpy as np

            self._model = DemandModel(coef=np.array(self.coef), intercept=self.intercept)
        return self._model

    def predict(self, hours, dows, prices, promos, temps) -> list[float]:
        if len(hours) >= NUMPY_MIN_BATCH:
            return self.model.predict(build_features(hours, dows, prices, promos, temps)).tolist()
        w_sin, w_cos, w_sin2, w_cos2, *w_dow, w_price, w_promo, w_temp, w_temp_sq = self.coef
        dow_w, b, sin, cos, turn = (0.0, *w_dow), self.intercept, math.sin, math.cos, 2.0 * math.pi
        out = []
        for h, d, p, pr, t in zip(hours, dows, prices, promos, temps, strict=True):
            angle, u = turn * h / 24.0, t - 15.0
            y = (
                w_sin * sin(angle)
                + w_cos * cos(angle)
                + w_sin2 * sin(2 * angle)
                + w_cos2 * cos(2 * angle)
                + dow_w[d]
                + w_price * p
                + w_promo * pr
                + w_temp * t
                + w_temp_sq * (u * u)
                + b
            )
            out.append(y if y > 0.0 else 0.0)  # demand cannot be negative
        return out


def load_weights(seed: int = DEFAULT_SEED, n_samples: int = 20_000, alpha: float = 1.0) -> FittedWeights:
    """``fit_demand_model(seed, n_samples, alpha)`` from the cache, else fitted and cached.

    The cache (``$XDG_CACHE_HOME/mlinfra``) is keyed by this file's bytes, numpy's version
    file and the parameters, so it only ever holds what a fit here would return. A missing
    or damaged file means a fit; writes are atomic, so servers that all miss at once each
    write a whole file."""
    path = _cache_path(seed, n_samples, alpha)
    weights = _read_cache(path)
    if weights is None:
        model = fit_demand_model(seed, n_samples, alpha)
        weights = FittedWeights(model.coef.tolist(), model.intercept)
        weights._model = model
        if path is not None:
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(f"{path}.{os.getpid()}.tmp", "w", encoding="utf-8") as f:
                    json.dump({"coef": weights.coef, "intercept": weights.intercept}, f)
                os.replace(f"{path}.{os.getpid()}.tmp", path)
    return weights


def cached_weights(seed: int = DEFAULT_SEED, n_samples: int = 20_000, alpha: float = 1.0) -> FittedWeights | None:
    """``load_weights``' answer if the cache holds it, else None (nothing is fitted)."""
    return _read_cache(_cache_path(seed, n_samples, alpha))


def _read_cache(path: str | None) -> FittedWeights | None:
    try:
        with open(path or "", encoding="utf-8") as f:
            saved = json.load(f)
        return FittedWeights(saved["coef"], saved["intercept"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_path(seed: int, n_samples: int, alpha: float) -> str | None:
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    key = hashlib.sha256(repr((seed, n_samples, alpha)).encode())
    try:
        for name in (__file__, os.path.join(list(spec.submodule_search_locations)[0], "version.py")):
            with open(name, "rb") as f:
                key.update(f.read())
    except OSError:
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mlinfra", f"{MODEL_NAME}-v{MODEL_VERSION}-{key.hexdigest()[:20]}.json")


# field -> (lowest, highest, highest is excluded, must be whole). Hour may be
# fractional (14.5) but must stay below 24, since 24:00 is 0:00 of the next day.
_FEATURE_RANGES = {
    "hour": (0, 24, True, False),
    "day_of_week": (0, 6, False, True),
    "price": (0, 1e6, False, False),
    "promo": (0, 1, False, True),
    "temperature": (-60, 60, False, False),
}
_KNOWN = FEATURE_DEFAULTS.keys()


class InputError(ValueError):
    """A request the client must fix (HTTP 400); the message names the field."""


def _check_value(value, where: str, low: float, high: float, exclusive: bool, whole: bool) -> None:
    """Raise an InputError that says what is wrong with one value (the slow path)."""
    # bool is an int subclass in Python; "price": true is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number, got {json.dumps(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite, however large
        raise InputError(f"{where} must be a finite number, got {value}")
    if not low <= value <= high or (exclusive and value == high):
        raise InputError(f"{where} must be in [{low:g}, {high:g}{')' if exclusive else ']'}, got {value}")
    if whole and value != int(value):
        raise InputError(f"{where} must be a whole number, got {value}")


Columns = tuple[list, list, list, list, list]  # hour, day_of_week, price, promo, temperature


def _columns(body) -> Columns:
    """Validate a /predict body; return its columns (hour, day_of_week, price, promo,
    temperature) as lists of Python numbers, day_of_week as ints.

    The fast path is one pass of exact type and range checks (NaN fails them all).
    Whatever it does not take, valid (a day_of_week of 2.0) or not, goes through every
    rule in turn, which words the first error or accepts the body."""
    instances = body.get("instances") if type(body) is dict else None
    if type(instances) is list and 0 < len(instances) <= MAX_INSTANCES:
        columns: Columns = ([], [], [], [], [])
        hours, dows, prices, promos, temps = columns
        for instance in instances:
            if type(instance) is not dict or not instance.keys() <= _KNOWN:
                break
            get = instance.get
            h, d, p, pr, t = (
                get("hour", 12),
                get("day_of_week", 2),
                get("price", 10.0),
                get("promo", 0),
                get("temperature", 15.0),
            )
            if not (
                (type(h) is int or type(h) is float)
                and 0 <= h < 24
                and type(d) is int
                and 0 <= d <= 6
                and (type(p) is float or type(p) is int)
                and 0 <= p <= 1e6
                and (type(pr) is int or type(pr) is bool)
                and (pr == 0 or pr == 1)
                and (type(t) is float or type(t) is int)
                and -60 <= t <= 60
            ):
                break
            hours.append(h)
            dows.append(d)
            prices.append(p)
            promos.append(pr)
            temps.append(t)
        else:
            return columns
    if not isinstance(body, dict) or "instances" not in body:
        raise InputError('body must be a JSON object with an "instances" list')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InputError('"instances" must be a non-empty list')
    if len(instances) > MAX_INSTANCES:
        raise InputError(f'"instances" has {len(instances)} items; at most {MAX_INSTANCES} are allowed')
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InputError(f"instances[{i}] must be a JSON object")
        if not instance.keys() <= _KNOWN:
            # A typo like "temprature" must not silently become the default.
            unknown = sorted(instance.keys() - _KNOWN)[0]
            raise InputError(f"instances[{i}].{unknown} is not a known field (known: {', '.join(FEATURE_DEFAULTS)})")
    columns = ([], [], [], [], [])
    for column, (name, (low, high, exclusive, whole)) in zip(columns, _FEATURE_RANGES.items(), strict=True):
        for i, instance in enumerate(instances):
            value = instance.get(name, FEATURE_DEFAULTS[name])
            # JSON true/false is a natural way to say promo; for anything else a bool is a bug.
            value = int(value) if name == "promo" and isinstance(value, bool) else value
            _check_value(value, f"instances[{i}].{name}", low, high, exclusive, whole)
            column.append(int(value) if whole else value)
    return columns


def parse_instances(body) -> np.ndarray:
    """Validate a /predict body and return its design matrix."""
    return build_features(*_columns(body))
