"""Surrogates on the real genome encoding: they must rank a synthetic target with known structure."""
from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_nas import SPACE, error

from natv2.errors import Natv2Error
from natv2.surrogate import KINDS, NAT_KINDS, fit_surrogate, kendall_tau


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = SPACE.sample(120, rng, "natv2")
    X_test = SPACE.sample(200, rng, "natv2")
    return X, error(SPACE, X, rng), X_test, error(SPACE, X_test)


def test_lgbm_kfold_ensemble_ranks_the_target(data):
    X, y, X_test, y_test = data
    s = fit_surrogate(X, y, "lgbm", np.random.default_rng(1), folds=5)
    assert s.kind == "lgbm" and len(s.models) == 5  # one model per fold, averaged
    assert s.cv_tau > 0.5
    assert kendall_tau(s.predict(X_test), y_test) > 0.5
    assert 0 < s.cv_rmse < np.std(y)  # better than predicting the mean
    assert s.predict(X_test).shape == (200,)


# a single unpruned regression tree (NAT's CART) ranks worse than the smooth models
MIN_TAU = {"rbf": 0.5, "gp": 0.5, "mlp": 0.5, "carts": 0.2}


@pytest.mark.parametrize("kind", NAT_KINDS)
def test_nat_models_rank_the_target(data, kind):
    X, y, X_test, y_test = data
    s = fit_surrogate(X, y, kind, np.random.default_rng(1), folds=4)
    assert s.kind == kind and len(s.models) == 1  # refit on all data after cross-validation
    assert s.cv_tau > MIN_TAU[kind]
    assert kendall_tau(s.predict(X_test), y_test) > MIN_TAU[kind]


def test_models_are_the_originals():
    """NATv2's surrogate (NAT_extended/search/surrogate_models/__init__.py:57-62): LGBMRegressor
    with objective 'huber' and LightGBM's defaults otherwise; ``cross_validation``
    (__init__.py:99-125) keeps one model per fold of a 10-fold split and predicts their mean.
    NAT's pool (__init__.py:23-39): GP with DotProduct + WhiteKernel, a DecisionTreeRegressor,
    an MLPRegressor, all with scikit-learn's defaults, on one-hot genes (run_nat.py:202)."""
    from lightgbm import LGBMRegressor
    from sklearn.gaussian_process.kernels import DotProduct, WhiteKernel
    from sklearn.neural_network import MLPRegressor
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(0)
    X = SPACE.sample(100, rng, "natv2")
    y = error(SPACE, X, rng)
    s = fit_surrogate(X, y, "lgbm", np.random.default_rng(1), folds=10)
    assert len(s.models) == 10
    defaults = LGBMRegressor().get_params()
    for m in s.models:
        params = m.get_params()
        assert params["objective"] == "huber"
        for key in ("n_estimators", "learning_rate", "num_leaves", "min_child_samples", "subsample",
                    "colsample_bytree", "max_depth", "reg_alpha", "reg_lambda"):
            assert params[key] == defaults[key], key
    assert np.allclose(s.predict(X[:7]), np.mean([m.predict(X[:7].astype(float)) for m in s.models], axis=0))
    assert NAT_KINDS == ("rbf", "gp", "carts", "mlp")
    gp = fit_surrogate(X, y, "gp", np.random.default_rng(1), folds=3).models[0].regressor_
    kernel = gp.steps[-1][1].kernel
    assert gp.steps[0][0] == "onehotencoder"
    assert isinstance(kernel.k1, DotProduct) and isinstance(kernel.k2, WhiteKernel)
    cart = fit_surrogate(X, y, "carts", np.random.default_rng(1), folds=3).models[0].regressor_.steps[-1][1]
    assert isinstance(cart, DecisionTreeRegressor) and cart.get_params()["max_depth"] is None
    mlp = fit_surrogate(X, y, "mlp", np.random.default_rng(1), folds=3).models[0].regressor_.steps[-1][1]
    assert isinstance(mlp, MLPRegressor) and mlp.hidden_layer_sizes == (100,)


def test_adaptive_pool_without_the_mlp(data):
    X, y, _, _ = data
    s = fit_surrogate(X, y, "adaptive", np.random.default_rng(2), folds=3, pool=("rbf", "gp", "carts"))
    assert set(s.scores) == {"rbf", "gp", "carts"}
    with pytest.raises(Natv2Error, match="surrogate_pool"):
        fit_surrogate(X, y, "adaptive", np.random.default_rng(2), folds=3, pool=("rbf", "lgbm"))


def test_adaptive_picks_best_mean_minus_std(data):
    X, y, X_test, y_test = data
    s = fit_surrogate(X, y, "adaptive", np.random.default_rng(2), folds=4)
    assert set(s.scores) == set(NAT_KINDS)
    best = max(NAT_KINDS, key=lambda k: s.scores[k]["tau_mean_minus_std"])
    assert s.kind == best
    assert s.cv_tau == pytest.approx(s.scores[best]["tau"])
    assert kendall_tau(s.predict(X_test), y_test) > 0.5
    summary = json.loads(json.dumps(s.summary()))
    assert summary["kind"] == best and summary["n_train"] == 120


def test_same_seed_same_predictions(data):
    X, y, X_test, _ = data
    for kind in ("lgbm", "mlp"):
        a = fit_surrogate(X, y, kind, np.random.default_rng(7), folds=3)
        b = fit_surrogate(X, y, kind, np.random.default_rng(7), folds=3)
        assert np.array_equal(a.predict(X_test), b.predict(X_test))
        assert a.cv_tau == b.cv_tau


def test_repeated_genomes_do_not_break_the_fit():
    rng = np.random.default_rng(3)
    X = SPACE.sample(30, rng, "natv2")
    X = np.concatenate([X, X[:10]])  # the same genome measured twice (e.g. after re-evaluation)
    y = error(SPACE, X, rng)
    for kind in ("rbf", "gp"):
        assert np.isfinite(fit_surrogate(X, y, kind, rng, folds=3).predict(X)).all()


def test_bad_input_is_a_clear_error(data):
    X, y, _, _ = data
    rng = np.random.default_rng(0)
    with pytest.raises(Natv2Error, match="'xgb' is not a surrogate kind"):
        fit_surrogate(X, y, "xgb", rng)
    with pytest.raises(Natv2Error, match="at least 4 evaluated genomes"):
        fit_surrogate(X[:3], y[:3], "lgbm", rng)
    bad = y.copy()
    bad[5] = np.nan
    with pytest.raises(Natv2Error, match="NaN"):
        fit_surrogate(X, bad, "lgbm", rng)
    with pytest.raises(Natv2Error, match="n targets"):
        fit_surrogate(X, y[:-1], "lgbm", rng)
    assert set(KINDS) == {"lgbm", "adaptive", *NAT_KINDS}


def test_undefined_kendall_tau_is_nan_with_a_warning(caplog):
    """A constant target has no ranking: its tau is NaN (not 0), the fit logs a warning, hv.csv keeps NaN."""
    import pandas as pd

    from natv2.hypervolume import add_tau_columns
    from natv2.surrogate import candidate_tau

    assert np.isnan(kendall_tau(np.ones(5), np.arange(5.0)))
    assert np.isnan(kendall_tau(np.ones(1), np.ones(1)))
    X = SPACE.sample(12, np.random.default_rng(0), "natv2")
    with caplog.at_level("WARNING", logger="natv2.surrogate"):
        s = fit_surrogate(X, np.full(12, 30.0), "lgbm", np.random.default_rng(1), folds=3)
    assert np.isnan(s.cv_tau) and "cv Kendall tau undefined" in caplog.text
    evaluated = pd.DataFrame({"genome": ["a", "b", "c"], "top1_err": [20.0, 20.0, 20.0]})
    with caplog.at_level("WARNING", logger="natv2.update"):
        report = candidate_tau(evaluated, {"a": 1.0, "b": 2.0, "c": 3.0})
    assert np.isnan(report["tau"]) and "candidates is undefined" in caplog.text
    table = add_tau_columns(pd.DataFrame({"iteration": [0, 1]}), [{"iteration": 1, "surrogate": {"cv_tau": s.cv_tau},
                                                                   "candidates": report}])
    assert table["cv_tau"].isna().all() and table["tau_candidates"].isna().all()


class _StandardisedBefore:
    """The hand-written standardisation natv2 used before TransformedTargetRegressor (the reference)."""

    def __init__(self, model) -> None:
        self.model = model

    def fit(self, X, y):
        self.mu, self.sd = float(np.mean(y)), float(np.std(y)) or 1.0
        self.model.fit(X, (y - self.mu) / self.sd)
        return self

    def predict(self, X):
        return np.asarray(self.model.predict(X), dtype=float) * self.sd + self.mu


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["rbf", "gp", "carts"])
def test_transformed_target_standardises_as_before(data, kind):
    """sklearn's TransformedTargetRegressor + StandardScaler fits and predicts as the old wrapper did."""
    from natv2.surrogate import _make, _standardised

    X, y, X_test, _ = data
    X, X_test = X.astype(float), X_test.astype(float)
    for target in (y, np.full(len(y), 3.25)):  # a constant target keeps scale 1 in both
        new = _standardised(_make(kind, 7)).fit(X, target).predict(X_test)
        old = _StandardisedBefore(_make(kind, 7)).fit(X, target).predict(X_test)
        np.testing.assert_array_equal(new, old)  # bit for bit: the same archives from the same seed
