"""Data loaders shared by the built-in task pairs. Everything ships inside installed packages or
is generated: nothing here touches the network.

The leading underscore keeps the registry from importing this module as a task pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mtl_bench.errors import UserError, check_param

#: Columns of the vega ``cars`` table used as inputs (``Year`` as the model year, an integer).
CARS_INPUTS = ["Cylinders", "Displacement", "Horsepower", "Weight_in_lbs", "Acceleration", "Year"]

#: Measurement columns of the diabetes table used as inputs (age and sex are the targets).
DIABETES_INPUTS = ["bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]

#: Upper edges of the diabetes age classes: <30, 30-39, 40-49, 50-59, >=60 years. Decades,
#: with the sparse ends merged (3 patients are in their teens and 13 in their seventies).
DIABETES_AGE_EDGES = (30, 40, 50, 60)
DIABETES_AGE_CLASSES = ("<30", "30-39", "40-49", "50-59", "60+")


def check_synthetic_options(n_samples: Any, n_features: Any, n_classes: Any,
                            target_scale: Any, noise: Any) -> None:
    """Validate the options of the synthetic teacher shared by clsreg and clsreg-2sets."""
    check_param(isinstance(n_samples, int) and not isinstance(n_samples, bool)
                and n_samples >= 20, "n_samples", "an integer >= 20", n_samples)
    check_param(isinstance(n_features, int) and n_features >= 1, "n_features",
                "a positive integer", n_features)
    check_param(isinstance(n_classes, int) and n_classes >= 2, "n_classes",
                "an integer >= 2", n_classes)
    check_param(isinstance(target_scale, (int, float)) and target_scale > 0, "target_scale",
                "a positive float", target_scale)
    check_param(isinstance(noise, (int, float)) and noise >= 0, "noise",
                "a non-negative float", noise)


def load_failed(pair: str, dataset: str, exc: BaseException) -> UserError:
    return UserError(f"task pair '{pair}': dataset '{dataset}' failed to load: "
                     f"{type(exc).__name__}: {exc}")


def cars_frame(pair: str = "clsreg") -> pd.DataFrame:
    """The vega ``cars`` table (406 cars, 1970-1982) shipped inside ``vega_datasets``.

    The JSON file the package ships is read directly with pandas: the package's own reader
    passes a pandas option that newer pandas deprecates with a warning. ``Year`` (an ISO date
    string) becomes the integer model year.
    """
    try:
        from vega_datasets import local_data

        frame = pd.read_json(local_data.cars.filepath)
        frame["Year"] = frame["Year"].astype(str).str[:4].astype(int)
    except Exception as exc:
        raise load_failed(pair, "cars", exc) from exc
    return frame


def diabetes_frame(pair: str) -> pd.DataFrame:
    """scikit-learn's diabetes table in original units (442 patients; ships with sklearn).

    Columns: age (years), sex (coded 1 / 2 in the source), bmi, bp, s1..s6 (serum
    measurements) and ``target`` (disease progression one year later).
    """
    try:
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(scaled=False, as_frame=True).frame
    except Exception as exc:
        raise load_failed(pair, "diabetes", exc) from exc
    return frame


def diabetes_arrays(pair: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Inputs (the 8 measurement columns), age in years, sex as 0 / 1 (source codes 1 / 2).

    The disease-progression ``target`` column is left out: it is an outcome measured a year
    after the inputs, not a baseline measurement, and it adds nothing to predicting age or sex
    (5-fold logistic / linear regression: sex accuracy 0.68 with it, 0.69 without; age R^2
    0.10 either way). The table has no missing values; the rule (drop a row with any missing
    value in the columns used) is applied anyway and counted.
    """
    frame = diabetes_frame(pair)
    used = [*DIABETES_INPUTS, "age", "sex"]
    clean = frame[used].dropna()
    sex_codes = sorted(clean["sex"].unique())
    if len(sex_codes) != 2:
        raise UserError(f"task pair '{pair}': dataset 'diabetes' should code sex with two "
                        f"values, found {sex_codes}")
    sex = (clean["sex"].to_numpy() == sex_codes[1]).astype(np.int64)
    info = {"rows_total": int(len(frame)), "rows_dropped_missing": int(len(frame) - len(clean)),
            "features": list(DIABETES_INPUTS), "sex_codes": [float(c) for c in sex_codes]}
    return (clean[DIABETES_INPUTS].to_numpy(dtype=np.float64),
            clean["age"].to_numpy(dtype=np.float64), sex, info)


def diabetes_age_class(age: np.ndarray) -> np.ndarray:
    """Age in years -> class index of :data:`DIABETES_AGE_CLASSES`."""
    return np.digitize(age, DIABETES_AGE_EDGES).astype(np.int64)


class Teacher:
    """A random two-layer teacher that ties a classification and a regression target to the
    same hidden features: z = tanh(2 x A), class = argmax(z C), y = scale (z b + noise eps),
    with x ~ N(0, I), A ~ N(0, 1 / n_features), C ~ N(0, 1), b ~ N(0, 1 / width). A, C, b depend
    on ``seed`` alone, so samples of any size drawn from it (with their own seeds) pose the
    same problem."""

    def __init__(self, n_features: int, n_classes: int, seed: int = 1234, width: int = 16):
        rng = np.random.default_rng(seed)
        self.a = rng.standard_normal((n_features, width)) / np.sqrt(n_features)
        self.c = rng.standard_normal((width, n_classes))
        self.b = rng.standard_normal(width) / np.sqrt(width)
        self.seed = seed

    def sample(self, n: int, seed: int, target_scale: float = 1.0, noise: float = 0.1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` rows: inputs, class labels and regression targets."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, self.a.shape[0]))
        z = np.tanh(2.0 * x @ self.a)
        y = target_scale * (z @ self.b + noise * rng.standard_normal(n))
        return x, (z @ self.c).argmax(axis=1).astype(np.int64), y
