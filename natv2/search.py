"""The surrogate search (pymoo) and the choice of candidates to evaluate (design.md §2, §4).

One iteration of NAT / NATv2, in ask / tell style across files: the search step reads the
archive, fits a surrogate (natv2.surrogate), runs :func:`search_candidates` and writes the K
candidates; the lead's evaluate step measures them; the update step tells the archive.

- :class:`SurrogateProblem`: a vectorised pymoo ``Problem`` — top-1 error predicted by the
  surrogate for the whole population at once, costs computed exactly by a ``cost_fn`` through a
  :class:`CostCache` (the cost of a genome never changes, so each is computed once).
- NSGA-II for 2 objectives, NSGA-III with energy reference directions for 3+ (NAT); integer
  two-point crossover and polynomial mutation (eta from config) with rounding repair followed by
  the space's repair (NAT "push" / NATv2 "fill"); duplicate elimination. The initial population
  (``search.initial_population``): ``random`` = a fresh integer Latin hypercube over the genes'
  bounds, repaired, every iteration, as the original (``select_solver``'s ``int_lhs`` sampling,
  NAT_extended/search/algorithms/msunas.py:178-229, run from scratch in ``_next``, :274-304);
  ``archive`` = the archive's non-dominated genomes, topped up by samples of the algorithm's policy.
- candidate choice (:func:`choose_candidates`): drop genomes already in the archive and
  repeats; if more than K remain, NAT's subset-selection GA picks, from the whole final
  population (msunas.py:298), the K that spread the cost objectives most evenly together with
  the archive's front (:func:`subset_selection`); if K or fewer remain, all of them.

``cost_fn(genomes: int array (n, n_var)) -> {name: array (n,)}`` must return every cost
objective of the run (``params``, ``macs``, ``latency_ms``, ``latency_lut``) and every cost column
named in ``search.constraints``; the lead connects it to natv2.costs / natv2.latency_table.

Hard constraints (``search.constraints``, issue 15): pymoo inequality constraints of the
surrogate problem (NSGA-II/III then rank feasible before infeasible genomes), and the
candidates are chosen among the feasible genomes of the final population first.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from natv2.archive import ERROR, genomes_of, objective_matrix
from natv2.archive_policies import sample_unique
from natv2.constraints import violation
from natv2.errors import Natv2Error
from natv2.rng import draw_seed as _seed
from natv2.survival import non_dominated, reference_directions, survive

log = logging.getLogger(__name__)

CostFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
PredictFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# costs


class CostCache:
    """Exact costs of genomes, computed once per genome by ``cost_fn`` and remembered.

    ``cache(X)`` returns an (n, len(names)) float matrix in the order of ``names``.
    """

    def __init__(self, cost_fn: CostFn, names: Sequence[str]) -> None:
        self.cost_fn = cost_fn
        self.names = tuple(names)
        self._known: dict[bytes, np.ndarray] = {}
        self.n_computed = 0

    @staticmethod
    def _key(g: np.ndarray) -> bytes:
        return np.asarray(g, dtype=np.int64).tobytes()

    def add(self, X: np.ndarray, C: np.ndarray) -> None:
        """Remember known costs (e.g. the archive's measured ones)."""
        for g, c in zip(X, np.asarray(C, dtype=float)):
            self._known[self._key(g)] = c

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.int64)
        out = np.empty((len(X), len(self.names)))
        if not self.names:
            return out
        keys = [self._key(g) for g in X]
        todo = {k: i for i, k in enumerate(keys) if k not in self._known}
        if todo:
            rows = list(todo.values())
            costs = self.cost_fn(X[rows])
            missing = [n for n in self.names if n not in costs]
            if missing:
                raise Natv2Error(f"cost function: returned {sorted(costs)}, missing {missing}")
            C = np.column_stack([np.asarray(costs[n], dtype=float).reshape(-1) for n in self.names])
            if C.shape[0] != len(rows) or not np.isfinite(C).all():
                raise Natv2Error(f"cost function: expected {len(rows)} finite values per cost, got shape {C.shape}")
            for k, c in zip(todo, C):
                self._known[k] = c
            self.n_computed += len(rows)
        for i, k in enumerate(keys):
            out[i] = self._known[k]
        return out


# --------------------------------------------------------------------------------------------
# the pymoo problem and operators


class GenomeRepair(Repair):
    """Round, clip and make genomes valid with the space's repair (NAT push / NATv2 fill)."""

    def __init__(self, space, mode: str) -> None:
        super().__init__()
        self.space, self.mode = space, mode

    def _do(self, problem, X, **kwargs):
        return self.space.repair(X, mode=self.mode)


class SurrogateProblem(Problem):
    """Objectives of a whole population at once: predicted error, exact cached costs.

    ``constraints`` ({column: upper bound}, ``search.constraints``) become pymoo inequality
    constraints ``G = value - bound <= 0``; a constrained cost that is not an objective follows
    the objective costs in the cost cache's names, a bound on ``top1_err`` uses the prediction.
    """

    def __init__(self, space, objectives: Sequence[str], predict_error: PredictFn, costs: CostCache,
                 constraints: Mapping[str, float] | None = None) -> None:
        constraints = dict(constraints or {})
        super().__init__(n_var=space.n_var, n_obj=len(objectives), n_ieq_constr=len(constraints),
                         xl=space.xl.astype(float), xu=space.xu.astype(float), vtype=int)
        self.objectives = tuple(objectives)
        self.error_col = self.objectives.index(ERROR)
        self.cost_cols = [i for i, o in enumerate(self.objectives) if o != ERROR]
        n_cost = len(self.cost_cols)
        if tuple(self.objectives[i] for i in self.cost_cols) != costs.names[:n_cost]:
            raise Natv2Error(f"surrogate problem: cost cache has {costs.names}, objectives are {self.objectives}")
        missing = [c for c in constraints if c != ERROR and c not in costs.names]
        if missing:
            raise Natv2Error(f"surrogate problem: constrained column(s) {missing} not in the cost cache {costs.names}")
        self.predict_error = predict_error
        self.costs = costs
        self.constraints = constraints

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.rint(X).astype(np.int64)
        F = np.empty((len(X), self.n_obj))
        error = self.predict_error(X)
        C = self.costs(X)
        F[:, self.error_col] = error
        F[:, self.cost_cols] = C[:, : len(self.cost_cols)]
        out["F"] = F
        if self.constraints:
            value = {ERROR: error, **{n: C[:, j] for j, n in enumerate(self.costs.names)}}
            out["G"] = np.column_stack([value[c] - bound for c, bound in self.constraints.items()])


class PolicySampling(Sampling):
    """Distinct valid genomes from the space's sampling ``policy``, none of them in ``exclude``.

    ``natv2``: NATv2's initialisation (each optional block slot skipped with probability 1/3,
    then "fill"; see ``natv2.space.SearchSpace.sample``); ``nat``: uniform genes, then "push";
    ``balanced``: uniform depths. Draws from pymoo's ``random_state`` (a numpy Generator).
    """

    def __init__(self, space, policy: str, exclude: Iterable[np.ndarray] = ()) -> None:
        super().__init__()
        self.space, self.policy, self.exclude = space, policy, exclude

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        return sample_unique(self.space, n_samples, random_state, self.policy, exclude=self.exclude)

    def draw(self, n_samples: int, random_state: np.random.Generator) -> np.ndarray:
        """``n_samples`` genomes (int array) drawn from ``random_state``, outside an algorithm."""
        return np.asarray(self.do(None, n_samples, random_state=random_state).get("X"), dtype=np.int64).reshape(
            n_samples, self.space.n_var)


def make_algorithm(space, cfg, n_obj: int, initial: np.ndarray):
    """NSGA-II (2 objectives) or NSGA-III with energy reference directions (3+), NAT's operators."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.operators.crossover.pntx import TwoPointCrossover
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    repair = GenomeRepair(space, cfg.repair_mode)
    parts = dict(
        pop_size=cfg.pop_size,
        sampling=np.asarray(initial, dtype=np.int64),
        crossover=TwoPointCrossover(prob=cfg.crossover_prob),
        # prob=1: every offspring is mutated, each gene with probability 1/n_var (pymoo's default)
        mutation=PM(prob=1.0, eta=cfg.mutation_eta, vtype=float, repair=RoundingRepair()),
        repair=repair,
        eliminate_duplicates=True,
    )
    if n_obj == 2:
        return NSGA2(**parts)
    return NSGA3(ref_dirs=reference_directions(n_obj, cfg.pop_size), **parts)


def lhs_population(space, n: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` genomes from an integer Latin hypercube over the genes' bounds, then ``mode`` repair.

    The original's ``get_sampling('int_lhs')`` (msunas.py:187): a Latin hypercube of floats in
    [xl, xu] per gene, rounded to integers.
    """
    from scipy.stats import qmc

    u = qmc.LatinHypercube(d=space.n_var, seed=_seed(rng)).random(n)
    X = np.rint(space.xl + u * (space.xu - space.xl)).astype(np.int64)
    return space.repair(X, mode=mode)


def initial_population(archive_X: np.ndarray, archive_F: np.ndarray, space, cfg, rng: np.random.Generator) -> np.ndarray:
    """The search's first population (``cfg.initial_population``, see the module docstring).

    ``random``: :func:`lhs_population` (duplicates after repair are replaced by fresh samples
    of the algorithm's policy); ``archive``: the archive's non-dominated genomes (by survival if
    too many), topped up by samples.
    """
    mode = getattr(cfg, "initial_population", "random")
    if mode not in ("random", "archive"):
        raise Natv2Error(f"search.initial_population: {mode!r} is not one of random, archive")
    if mode == "random":
        X = np.unique(lhs_population(space, cfg.pop_size, cfg.repair_mode, rng), axis=0)
    else:
        X = archive_X[non_dominated(archive_F)] if len(archive_X) else archive_X
        if len(X) > cfg.pop_size:
            X = X[survive(archive_F[non_dominated(archive_F)], cfg.pop_size, rng)]
    extra = PolicySampling(space, cfg.sampling_policy, exclude=X).draw(cfg.pop_size - len(X), rng)
    return np.concatenate([X, extra]).astype(np.int64)


def nsga_search(space, cfg, predict_error: PredictFn, costs: CostCache, initial: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Run the surrogate search; the final population's genomes (int) and objectives."""
    from pymoo.optimize import minimize

    problem = SurrogateProblem(space, cfg.objectives, predict_error, costs, getattr(cfg, "constraints", None))
    algorithm = make_algorithm(space, cfg, problem.n_obj, initial)
    start = time.perf_counter()

    def progress(alg) -> None:  # costs of new genomes (latency, a new part's count) can dominate: show them
        log.info("surrogate search: generation %d/%d, %d exact cost evaluations, %.1fs",
                 alg.n_gen, cfg.generations, costs.n_computed, time.perf_counter() - start)

    res = minimize(problem, algorithm, ("n_gen", cfg.generations), seed=_seed(rng), verbose=False, callback=progress)
    seconds = time.perf_counter() - start
    X = np.rint(res.pop.get("X")).astype(np.int64)
    log.info("surrogate search: %s, %d generations x %d in %.1fs (%.0f genomes/s), %d exact cost evaluations",
             type(algorithm).__name__, cfg.generations, cfg.pop_size, seconds,
             cfg.generations * cfg.pop_size / max(seconds, 1e-9), costs.n_computed)
    if problem.n_ieq_constr:
        n_feasible = int((res.pop.get("CV").reshape(-1) <= 0).sum())
        log.info("surrogate search: %d of %d final genomes satisfy the constraints", n_feasible, len(X))
    return X, res.pop.get("F")


# --------------------------------------------------------------------------------------------
# NAT's subset selection: a small GA over K-subsets


def spread_score(selected: np.ndarray, reference: np.ndarray) -> float:
    """How unevenly ``selected`` and ``reference`` cover the cost axes (lower = more even).

    NAT's criterion (``SubsetSelectionProblem``, msunas.py:75-110): per cost objective, the
    standard deviation of the gaps between the sorted values of the archive's front plus the
    selected candidates; with several cost objectives (3+ objectives in all) the largest of
    them. :func:`subset_selection` normalises the costs to [0, 1] beforehand, so that no unit
    (MACs against params) decides the maximum alone (the original compares raw values).
    """
    values = np.concatenate([reference, selected])
    return float(max(np.std(np.diff(np.sort(values[:, j]))) for j in range(values.shape[1])))


class _SubsetProblem(Problem):
    def __init__(self, pool: np.ndarray, reference: np.ndarray, k: int) -> None:
        super().__init__(n_var=len(pool), n_obj=1, xl=0, xu=1, vtype=bool)
        self.pool, self.reference, self.k = pool, reference, k

    def _evaluate(self, X, out, *args, **kwargs):
        out["F"] = np.array([[spread_score(self.pool[x.astype(bool)], self.reference)] for x in X])


class _SubsetSampling(Sampling):
    """Random subsets of exactly K."""

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        X = np.zeros((n_samples, problem.n_var), dtype=bool)
        for row in X:
            row[random_state.permutation(problem.n_var)[: problem.k]] = True
        return X


class _SubsetCrossover(Crossover):
    """NAT's crossover for K-subsets: keep what both parents share, fill up from the rest of either."""

    def __init__(self) -> None:
        super().__init__(2, 1)

    def _do(self, problem, X, random_state=None, **kwargs):
        _, n_matings, n_var = X.shape
        out = np.zeros((1, n_matings, n_var), dtype=bool)
        for i in range(n_matings):
            a, b = X[0, i].astype(bool), X[1, i].astype(bool)
            child = a & b
            either = np.flatnonzero(a ^ b)
            child[random_state.permutation(either)[: problem.k - child.sum()]] = True
            out[0, i] = child
        return out


class _SubsetMutation(Mutation):
    """Swap one chosen member for one unchosen pool entry."""

    def _do(self, problem, X, random_state=None, **kwargs):
        X = X.astype(bool).copy()
        for row in X:
            on, off = np.flatnonzero(row), np.flatnonzero(~row)
            if len(on) and len(off):
                row[random_state.choice(on)] = False
                row[random_state.choice(off)] = True
        return X


def subset_selection(pool_costs: np.ndarray, reference_costs: np.ndarray, k: int, rng: np.random.Generator,
                     *, pop_size: int = 100, generations: int = 60) -> np.ndarray:
    """Indices of the ``k`` rows of ``pool_costs`` that spread the cost front most evenly.

    NAT's subset-selection GA (pymoo GA over binary K-subset vectors; NSGANetV2's population
    100 and 60 generations by default, the NAT/NATv2 code's 500 x 200 in config/paper.yaml,
    msunas.py:231-263); minimises :func:`spread_score` of the chosen costs together
    with ``reference_costs`` (the archive front's costs). Returns sorted indices.
    """
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.optimize import minimize

    pool_costs = np.asarray(pool_costs, dtype=float)
    n = len(pool_costs)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=int)
    # normalise every cost axis over pool and reference, so axes with large units do not dominate
    both = np.concatenate([pool_costs, np.asarray(reference_costs, dtype=float).reshape(-1, pool_costs.shape[1])])
    lo, span = both.min(axis=0), np.ptp(both, axis=0)
    span[span == 0] = 1.0
    pool_n, ref_n = (pool_costs - lo) / span, (both[n:] - lo) / span
    algorithm = GA(pop_size=pop_size, sampling=_SubsetSampling(), crossover=_SubsetCrossover(),
                   mutation=_SubsetMutation(), eliminate_duplicates=True)
    res = minimize(_SubsetProblem(pool_n, ref_n, k), algorithm, ("n_gen", generations), seed=_seed(rng), verbose=False)
    chosen = np.flatnonzero(np.asarray(res.X, dtype=bool).reshape(-1))
    assert len(chosen) == k, "subset operators keep exactly k members"
    return chosen


def choose_candidates(pool_X: np.ndarray, pool_F: np.ndarray, archive_X: np.ndarray, archive_F: np.ndarray,
                      k: int, objectives: Sequence[str], rng: np.random.Generator, *,
                      subset_pop_size: int = 100, subset_generations: int = 60,
                      pool_cv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pick up to ``k`` new genomes from the search's final population, as the original's ``_next``.

    Genomes already in the archive and repeated genomes are dropped first (msunas.py:291-293);
    if more than ``k`` remain, the subset-selection GA picks the ``k`` whose cost objectives
    spread most evenly together with the archive's front, over the whole remaining population,
    not only its predicted front (msunas.py:298 passes ``res.pop[not_duplicate]``; :240 takes
    the costs of every member). Ranking the population first would keep the few predicted
    non-dominated genomes and fill up with the lowest predicted errors, which cluster where the
    predicted front is flat (CIFAR-10 default: 16 candidates within 1.5 points of error, so
    their order was noise). Returns (indices into the pool, the source of each: ``"subset"`` =
    chosen by subset selection, ``"all"`` = every new genome, when there are at most ``k``,
    ``"top-up"`` = infeasible, by least violation). With ``pool_cv`` (constraint violation per
    pool genome, 0 = feasible) the subset is drawn from the feasible genomes, and infeasible
    ones fill up only when fewer than ``k`` are feasible (our extension: the original has no
    hard constraints).
    """
    objectives = tuple(objectives)
    cost_cols = [i for i, o in enumerate(objectives) if o != ERROR]
    known = {np.asarray(g, dtype=np.int64).tobytes() for g in archive_X}
    new, seen = [], set()
    for i, g in enumerate(np.asarray(pool_X, dtype=np.int64)):
        key = g.tobytes()
        if key not in known and key not in seen:
            seen.add(key)
            new.append(i)
    new = np.asarray(new, dtype=int)
    if len(new) < k:
        log.warning("only %d new genomes in the search's population; asked for %d candidates", len(new), k)
    rest = np.zeros(0, dtype=int)
    if pool_cv is not None:
        cv = np.asarray(pool_cv, dtype=float).reshape(-1)
        bad = new[cv[new] > 0]
        new = new[cv[new] <= 0]
        rest = bad[np.argsort(cv[bad], kind="stable")][: max(k - len(new), 0)]
    if len(new) <= k:
        return (np.concatenate([new, rest]).astype(int),
                np.array(["all"] * len(new) + ["top-up"] * len(rest)))
    reference = archive_F[non_dominated(archive_F)][:, cost_cols] if len(archive_F) else np.zeros((0, len(cost_cols)))
    pick = new[subset_selection(pool_F[new][:, cost_cols], reference, k, rng,
                                pop_size=subset_pop_size, generations=subset_generations)]
    return pick, np.array(["subset"] * len(pick))


# --------------------------------------------------------------------------------------------
# one iteration's search


def search_candidates(archive: pd.DataFrame, space, surrogate, cost_fn: CostFn, cfg,
                      rng: np.random.Generator) -> pd.DataFrame:
    """Search with the fitted ``surrogate`` and return the K candidates to evaluate.

    Columns: ``genome``, ``predicted_top1_err``, the cost objectives (exact), ``source``.
    """
    objectives = tuple(cfg.objectives)
    constraints = dict(getattr(cfg, "constraints", None) or {})
    cost_names = [o for o in objectives if o != ERROR]
    # constrained costs that are not objectives follow the objective costs in the cache
    cache_names = cost_names + [c for c in constraints if c != ERROR and c not in cost_names]
    archive_X = genomes_of(archive, space)
    archive_F = objective_matrix(archive, objectives)
    costs = CostCache(cost_fn, cache_names)
    costs.add(archive_X, archive[cache_names].to_numpy(dtype=float))  # measured already
    initial = initial_population(archive_X, archive_F, space, cfg, rng)
    X, F = nsga_search(space, cfg, surrogate.predict, costs, initial, rng)
    pool_cv = None
    if constraints:  # violation of the final population (predicted error, exact cached costs)
        values = {ERROR: F[:, objectives.index(ERROR)], **dict(zip(costs.names, costs(X).T))}
        pool_cv = violation(np.column_stack([values[c] - b for c, b in constraints.items()]))
    idx, source = choose_candidates(X, F, archive_X, archive_F, cfg.candidates, objectives, rng,
                                    subset_pop_size=cfg.subset_pop_size, subset_generations=cfg.subset_generations,
                                    pool_cv=pool_cv)
    out = pd.DataFrame({"genome": [space.to_string(g) for g in X[idx]],
                        "predicted_top1_err": F[idx, objectives.index(ERROR)]})
    for name in cost_names:
        out[name] = F[idx, objectives.index(name)]
    out["source"] = source
    return out


# --------------------------------------------------------------------------------------------
# the search step's library side


def supernet_costs(settings, supernet_path, part_costs_path=None):
    """(space, cost_fn) for the search: the supernet's space and exact costs of its subnets.

    The same measurements as ``natv2.evaluate.evaluate_genomes`` (natv2.costs on the extracted
    static subnet, latency with the ``evaluation:`` settings on the configured device), so the
    costs the search sees match the archive's; only the objectives of the run are computed.
    Params and MACs come from natv2.part_costs: the same integers, without building each net;
    from the start with ``part_costs_path``, the run's table of every part (natv2 part-costs).
    """
    from natv2.costs import measure_latency
    from natv2.nets.checkpoint import load_supernet
    from natv2.part_costs import PartCosts, load_part_cost_table

    net, _ = load_supernet(supernet_path)
    net.eval()
    space = net.space
    cfg = settings.search
    names = [o for o in cfg.objectives if o != "top1_err"]
    names += [c for c in cfg.constraints if c != "top1_err" and c not in names]  # constrained costs too
    device = settings.torch_device()
    table = None
    if "latency_lut" in names:  # predicted from the target device's table: no net built
        from natv2.latency_table import load_table

        table = load_table(cfg.latency_table)
        table.check_space(space)

    # params and MACs from cached part counts: no net built once the parts are known
    counts = PartCosts(net, None if part_costs_path is None else load_part_cost_table(part_costs_path, net, supernet_path))

    def architecture(genomes) -> dict:
        """Exact params and MACs of ``genomes`` (strings or arrays), from the part counts."""
        pairs = [counts(g) for g in genomes]
        return {"params": [int(p) for p, _ in pairs], "macs": [int(m) for _, m in pairs]}

    def cost_fn(genomes):
        import numpy as np

        out = {name: np.empty(len(genomes)) for name in names}
        if table is not None:
            out["latency_lut"] = table.predict(space, genomes)
        for i, g in enumerate(genomes):
            if "params" in out or "macs" in out:
                params, macs = counts(g)
                if "params" in out:
                    out["params"][i] = params
                if "macs" in out:
                    out["macs"][i] = macs
            if "latency_ms" in out:
                ev = settings.evaluation
                out["latency_ms"][i] = measure_latency(
                    net.extract(g).to(device), space.decode(g).resolution, **ev.latency_kwargs, device=device,
                    channels_last=ev.channels_last, fold_bn=ev.fold_bn)
        return out

    cost_fn.architecture = architecture
    return space, cost_fn


def with_architecture_costs(candidates, cost_fn):
    """``candidates`` with exact ``params`` and ``macs`` columns where the search's objectives lack them.

    From the part counts the search holds anyway (``cost_fn.architecture``, natv2.part_costs;
    a cost function without it, such as a synthetic one, leaves the table as it is). The
    candidates' evaluation reuses them (``natv2 evaluate --reuse-costs``) instead of counting
    each net under torch's flop counter, whose first use in a job imports torch._dynamo (~1.4 s).
    """
    architecture = getattr(cost_fn, "architecture", None)
    missing = [c for c in ("params", "macs") if c not in candidates.columns]
    if architecture is None or not missing or len(candidates) == 0:
        return candidates
    exact = architecture(list(candidates["genome"]))
    out = candidates.copy()
    at = list(out.columns).index("source") if "source" in out.columns else len(out.columns)
    for offset, column in enumerate(missing):
        out.insert(at + offset, column, exact[column])
    return out


def run_search(archive, space, cost_fn, cfg, rng, iteration: int):
    """One iteration's search step: fit the surrogate on ``archive``, search, choose the candidates.

    Returns (candidates DataFrame with ``iteration``, surrogate summary dict for surrogate.json).
    """
    from natv2.archive import check_table
    from natv2.constraints import checked_columns
    from natv2.surrogate import fit_surrogate

    check_table(archive, checked_columns(cfg), "archive")
    surrogate = fit_surrogate(genomes_of(archive, space), archive["top1_err"].to_numpy(float),
                              cfg.surrogate_kind, rng, folds=cfg.surrogate_folds,
                              pool=tuple(cfg.surrogate_pool), lgbm_params=cfg.lgbm_params)
    candidates = search_candidates(archive, space, surrogate, cost_fn, cfg, rng)
    candidates["iteration"] = iteration
    summary = {"iteration": iteration, "asked": cfg.surrogate_kind, **surrogate.summary(),
               "predicted": dict(zip(candidates["genome"], candidates["predicted_top1_err"].astype(float)))}
    return candidates, summary
