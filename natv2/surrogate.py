"""Accuracy predictors (surrogates) on integer genomes, and NAT's adaptive choice among them.

Kinds (config ``search.surrogate``; by default NATv2 uses ``lgbm``, NAT ``adaptive``):

- ``lgbm``: NATv2's choice — ``LGBMRegressor(objective="huber")`` with LightGBM's defaults on
  the integer genes (NAT_extended/search/surrogate_models/__init__.py:57-62, integer features as
  run_nat_new.py:202), one per fold of a k-fold split; the prediction is the mean of the k fold
  models (``cross_validation``, __init__.py:99-125; NATv2 uses k = 10). ``lgbm_params`` may
  override LightGBM settings (empty = the original's defaults).
- ``rbf`` (scipy ``RBFInterpolator``, cubic kernel with a linear tail as the original's pySOT
  RBF, surrogate_models/rbf.py), ``gp`` (scikit-learn Gaussian process with kernel
  ``DotProduct() + WhiteKernel()``, __init__.py:36-39), ``carts`` (scikit-learn
  ``DecisionTreeRegressor()``, __init__.py:32-34), ``mlp`` (scikit-learn ``MLPRegressor()``,
  __init__.py:23-25): NAT's predictors, gp/carts/mlp on NAT's one-hot genes (run_nat.py:202),
  rbf on the integer genes scaled to [0, 1] (see ``_make``); each refit on all data after
  cross-validation.
- ``adaptive``: NAT's adaptive switching (Lu et al. 2021, §3.2) — cross-validate the pool
  (``NAT_KINDS`` = rbf, gp, carts, mlp; the MLP is optional: pass ``pool``), pick the one with
  the best Kendall tau mean minus std over the folds, refit it on all data.

Every fit reports ``cv_tau`` (Kendall tau of the pooled out-of-fold predictions) and
``cv_rmse``; for lgbm the out-of-fold predictions come from the ensemble's own fold models.
The NAT kinds are fit on standardised targets (a unit-scale error suits the GP and MLP; the
ranking of rbf and carts does not change).

Example::

    s = fit_surrogate(X, y, "lgbm", rng, folds=10)
    s.predict(X_new); s.cv_tau, s.cv_rmse; s.summary()  # JSON-able
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.preprocessing import StandardScaler

from natv2.errors import Natv2Error
from natv2.rng import draw_seed

log = logging.getLogger(__name__)

KINDS = ("lgbm", "adaptive", "rbf", "gp", "carts", "mlp")
#: the candidates of NAT's adaptive switching (the MLP optional)
NAT_KINDS = ("rbf", "gp", "carts", "mlp")

# NATv2's LGBMRegressor(objective='huber') keeps LightGBM's defaults; only what does not change
# the model is set here: one thread (a shared machine; results do not depend on it), no logging.
_LGBM_PARAMS = dict(objective="huber", n_jobs=1, verbose=-1)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b of two score vectors; NaN when undefined (constant input, < 2 points).

    NaN, not 0: an undefined rank correlation is no evidence of an uncorrelated surrogate.
    """
    from scipy.stats import kendalltau

    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def candidate_tau(evaluated, predicted: dict) -> dict:
    """Kendall tau and RMSE of predicted vs measured top-1 error on the candidates (``natv2 update``)."""
    known = evaluated[evaluated["genome"].isin(predicted)]
    pred = np.array([predicted[g] for g in known["genome"]], dtype=float)
    meas = known["top1_err"].to_numpy(float)
    tau = kendall_tau(pred, meas) if len(known) >= 2 else None
    if tau is not None and not np.isfinite(tau):
        logging.getLogger("natv2.update").warning(
            "Kendall tau of the surrogate on the %d candidates is undefined (constant predictions or errors): "
            "recorded as NaN", len(known))
    return {"n": len(known),
            "tau": tau,
            "rmse": rmse(pred, meas) if len(known) else None}


# --------------------------------------------------------------------------------------------
# the models: factories returning objects with fit(X, y) -> self and predict(X)


class _RBF(RegressorMixin, BaseEstimator):
    """scipy's RBFInterpolator as a fit/predict regressor (cubic kernel, light smoothing).

    Smoothing > 0 makes repeated genomes (same X, different measured error) solvable; the
    linear tail needs more points than genes, so tiny folds fall back to a constant tail.
    """

    def __init__(self, smoothing: float = 1e-3) -> None:
        self.smoothing = smoothing

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_RBF":
        from scipy.interpolate import RBFInterpolator

        # constant genes (e.g. a single width) make the linear tail singular: leave them out
        self.cols_ = np.flatnonzero(X.max(axis=0) > X.min(axis=0))
        X = X[:, self.cols_]
        tail = np.column_stack([np.ones(len(X)), X])
        degree = 1 if np.linalg.matrix_rank(tail) == tail.shape[1] else 0
        self.model_ = RBFInterpolator(X, y, kernel="cubic", degree=degree, smoothing=self.smoothing)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_(X[:, self.cols_])


def _scaled(model) -> Any:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    return make_pipeline(MinMaxScaler(), model)


def _one_hot(model) -> Any:
    """NAT's features: the one-hot genes (values unseen in training encode as all zeros)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    return make_pipeline(OneHotEncoder(handle_unknown="ignore", sparse_output=False), model)


def _make(kind: str, seed: int, lgbm_params: Mapping[str, Any] | None = None) -> Any:
    """An unfitted model of ``kind`` (not adaptive); the original's constructors, seeded."""
    if kind == "rbf":
        # the original warns its RBF "might not work with one-hot encoding" (__init__.py:13-16):
        # on one-hot genes every pair of genomes is almost equally far apart, so it gets the
        # integer genes scaled to [0, 1]
        return _scaled(_RBF())
    if kind == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import DotProduct, WhiteKernel

        return _one_hot(GaussianProcessRegressor(kernel=DotProduct() + WhiteKernel(), random_state=seed))
    if kind == "carts":
        from sklearn.tree import DecisionTreeRegressor

        return _one_hot(DecisionTreeRegressor(random_state=seed))
    if kind == "mlp":
        from sklearn.neural_network import MLPRegressor

        return _one_hot(MLPRegressor(random_state=seed))
    if kind == "lgbm":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(random_state=seed, **{**_LGBM_PARAMS, **dict(lgbm_params or {})})
    raise Natv2Error(f"surrogate kind {kind!r}: expected one of {list(KINDS)}")


def _standardised(model) -> TransformedTargetRegressor:
    """``model`` fit on standardised targets (GP/MLP/RBF behave better on unit-scale errors):
    mean and population std of the targets (a constant target keeps scale 1); the fitted
    clone of ``model`` is ``regressor_``."""
    return TransformedTargetRegressor(regressor=model, transformer=StandardScaler(), check_inverse=False)


def _fit_quietly(model, X: np.ndarray, y: np.ndarray, quiet: bool = True):
    with warnings.catch_warnings():
        if quiet:  # MLP convergence and GP length-scale bound warnings are expected on small archives
            warnings.simplefilter("ignore")
        return model.fit(X, y)


# --------------------------------------------------------------------------------------------
# the fitted surrogate


@dataclass
class Surrogate:
    """A fitted predictor: ``predict`` is the mean of ``models``' predictions."""

    kind: str
    models: list = field(repr=False)
    cv_tau: float
    cv_rmse: float
    n_train: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        with _one_blas_thread():
            return np.mean([m.predict(X) for m in self.models], axis=0)

    def summary(self) -> dict[str, Any]:
        """JSON-able record of the fit (written to surrogate.json). Its fit time goes to the log only, so
        that identical runs write identical bytes."""
        return {
            "kind": self.kind,
            "cv_tau": self.cv_tau,
            "cv_rmse": self.cv_rmse,
            "n_train": self.n_train,
            "n_models": len(self.models),
            "scores": self.scores,
        }


def _folds(n: int, k: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=k, shuffle=True, random_state=draw_seed(rng)).split(np.arange(n)))


def _cross_validate(make: Callable[[int], Any], X, y, splits, quiet: bool = False) -> tuple[np.ndarray, list, list[float]]:
    """Out-of-fold predictions, the fold models and the per-fold Kendall tau (``make(fold)`` -> model;
    ``quiet``: without the models' warnings)."""
    oof = np.empty(len(y))
    models, taus = [], []
    for fold, (train, test) in enumerate(splits):
        model = _fit_quietly(make(fold), X[train], y[train], quiet)
        oof[test] = model.predict(X[test])
        models.append(model)
        taus.append(kendall_tau(oof[test], y[test]))
    return oof, models, taus


def _one_blas_thread():
    """Small matrices gain nothing from BLAS threads, and on a shared machine the threads of
    several processes thrash (a 120-row GP fit: 0.2 s alone, 4 s with the default pool)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def fit_surrogate(X: np.ndarray, y: np.ndarray, kind: str, rng: np.random.Generator, *, folds: int = 5,
                  pool: Sequence[str] = NAT_KINDS, lgbm_params: Mapping[str, Any] | None = None) -> Surrogate:
    """Fit a surrogate of ``kind`` (see the module docstring) predicting ``y`` from genomes ``X``.

    ``pool``: the candidates of ``adaptive``; ``lgbm_params``: LightGBM overrides (lgbm only).
    """
    with _one_blas_thread():
        return _fit(X, y, kind, rng, folds, tuple(pool), lgbm_params)


def _fit(X: np.ndarray, y: np.ndarray, kind: str, rng: np.random.Generator, folds: int,
         pool: tuple[str, ...] = NAT_KINDS, lgbm_params: Mapping[str, Any] | None = None) -> Surrogate:
    if kind not in KINDS:
        raise Natv2Error(f"search.surrogate: {kind!r} is not a surrogate kind; expected one of {list(KINDS)}")
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (len(X),):
        raise Natv2Error(f"surrogate: expected genomes (n, n_var) and n targets, got {X.shape} and {y.shape}")
    if not np.isfinite(y).all():
        raise Natv2Error("surrogate: the targets contain NaN or infinite errors")
    if kind == "adaptive" and (not pool or any(p not in NAT_KINDS for p in pool)):
        raise Natv2Error(f"search.surrogate_pool: {list(pool)} must be a non-empty subset of {list(NAT_KINDS)}")
    if folds < 2:
        raise Natv2Error(f"search.surrogate_folds: expected >= 2, got {folds}")
    k = min(folds, len(X))
    if len(X) < 4:
        raise Natv2Error(f"surrogate: need at least 4 evaluated genomes to fit and cross-validate, got {len(X)}")
    start = time.perf_counter()
    splits = _folds(len(X), k, rng)

    if kind == "lgbm":
        seeds = [draw_seed(rng) for _ in splits]
        oof, models, taus = _cross_validate(lambda fold: _make("lgbm", seeds[fold], lgbm_params), X, y, splits)
        scores = {"lgbm": _score(oof, y, taus)}
        result = Surrogate("lgbm", models, kendall_tau(oof, y), rmse(oof, y), len(X), scores)
    else:
        candidates = pool if kind == "adaptive" else (kind,)
        scores, oofs = {}, {}
        for name in candidates:
            seed = draw_seed(rng)
            oof, _, taus = _cross_validate(lambda fold, name=name, seed=seed: _standardised(_make(name, seed)), X, y, splits,
                                           quiet=True)
            scores[name], oofs[name] = _score(oof, y, taus), oof
        # NAT: the best mean-minus-std Kendall tau over the folds wins (ties: first in the pool)
        best = max(candidates, key=lambda name: np.nan_to_num(scores[name]["tau_mean_minus_std"], nan=-np.inf))
        final = _fit_quietly(_standardised(_make(best, draw_seed(rng))), X, y)
        result = Surrogate(best, [final], kendall_tau(oofs[best], y), rmse(oofs[best], y), len(X), scores)
    result.seconds = time.perf_counter() - start
    if not np.isfinite(result.cv_tau):
        log.warning("surrogate %s on %d genomes: cv Kendall tau undefined (constant predictions or targets), "
                    "recorded as NaN", result.kind, len(X))
    log.info("surrogate %s (asked %s) on %d genomes: cv tau %.3f, rmse %.3f, %.1fs",
             result.kind, kind, len(X), result.cv_tau, result.cv_rmse, result.seconds)
    return result


def _score(oof: np.ndarray, y: np.ndarray, taus: list[float]) -> dict[str, float]:
    # folds whose tau is undefined (one test row, constant predictions) carry no ranking evidence
    taus = np.asarray(taus, dtype=float)
    taus = taus[np.isfinite(taus)]
    mean, std = (float(np.mean(taus)), float(np.std(taus))) if len(taus) else (float("nan"), float("nan"))
    return {
        "tau": kendall_tau(oof, y),
        "rmse": rmse(oof, y),
        "tau_fold_mean": mean,
        "tau_fold_std": std,
        "tau_mean_minus_std": mean - std,
    }
