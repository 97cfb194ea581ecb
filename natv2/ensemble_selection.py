"""OFA3 ensembles of the fine-tuned front (Ito, Von Zuben et al.): which members to average.

The selection split is the part of val held out of the members' fine-tuning
(``finetune.selection_holdout``; ensembles.csv's ``val_top1`` is on it), so no member has
trained on the images an ensemble is chosen and judged on. Each front member's softmax on the
selection split is computed once and kept as **sparse top-k** (``TopKProbs``: class indices
and probabilities, k per image). An ensemble's output is
the mean of its members' probabilities; its top-1 is scored from the sparse tables without
ever building a dense members x images x classes array:

* every (image, class) pair that occurs in some member's top-k gets a *slot*; the tables become
  one sparse matrix ``A`` (slots x members) holding the probabilities;
* a whole population of membership vectors ``X`` (ensembles x members, 0/1) is scored with one
  sparse-dense product ``A @ X.T`` (slots x ensembles), a per-image max over its slots
  (``np.maximum.reduceat``) and a look-up of the true class's slot.

Renormalisation: the kept probabilities are **not** renormalised over the top-k. Then the
ensemble's summed probability is exact for every class that is in some member's top-k, and
only the (small) mass outside the top-k is dropped (counted as 0). A class outside every
member's top-k has true mean probability at most ``mean_i (1 - sum of member i's top-k)``, so
the argmax is exact whenever that residual is smaller than the best kept score (almost always
for k >= 5). A true class outside every member's top-k counts as an error; ties count as correct.

The search is pymoo's NSGA-II over binary membership vectors as OFA3's
(ito-rafael/once-for-all-3@cfd3007, jupyter-notebooks/ofa3-max-latency.ipynb; cells numbered from 0): population 100 for 2000
generations (cell 29), the initial population all-members ensembles (``np.ones((P, P))``, cell
49), uniform crossover (prob 1, cell 39) and a random-choice mutation that redraws each bit with
probability 0.01 (``ChoiceRandomMutation(prob=1.0, prob_var=0.01)``, cell 38). A repair keeps
each ensemble between ``min_members`` (>= 2; OFA3: the constraint ``2 - size <= 0``) and
``max_members`` (0 = no cap, as OFA3); objectives = (val error %, cost),
where cost is the ensemble's latency (max of the members' for ``parallel`` execution, sum for
``sequential``), or its summed params / MACs. Every ensemble evaluated during the search is
remembered; the rows returned are the non-dominated ones among all of them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from natv2.errors import Natv2Error
from natv2.rng import draw_seed

log = logging.getLogger(__name__)

COST_COLUMNS = ("params", "macs", "latency_ms", "latency_lut")  # latency_lut: the target device's table
MODES = ("parallel", "sequential")
CSV_COLUMNS = ["id", "members", "mode", "params", "macs", "latency_ms", "val_top1", "test_top1"]


# --------------------------------------------------------------------------------------------
# sparse top-k probabilities


@dataclass(frozen=True)
class TopKProbs:
    """A member's softmax on one split, top-k per image: ``indices`` int32 (N, k), ``probs`` float32 (N, k)."""

    indices: np.ndarray
    probs: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        if self.indices.shape != self.probs.shape or self.indices.ndim != 2:
            raise Natv2Error(
                f"top-k table: indices {self.indices.shape} and probs {self.probs.shape} must be equal (N, k) shapes"
            )

    @property
    def n_images(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def top1(self, labels: np.ndarray) -> float:
        """The member's own top-1 in percent."""
        return float(np.mean(self.indices[:, 0] == np.asarray(labels)) * 100.0)


def topk_from_probs(probs, k: int) -> TopKProbs:
    """Keep the k most probable classes of each row of a (N, classes) probability array or tensor."""
    import torch

    p = torch.as_tensor(probs, dtype=torch.float32)
    k = min(int(k), p.shape[1])
    values, indices = torch.topk(p, k, dim=1)  # sorted, descending
    return TopKProbs(indices.to(torch.int32).numpy(), values.numpy(), int(p.shape[1]))


def cache_topk(model, batches: Iterable, k: int, *, device=None, outputs: str = "logits") -> tuple[TopKProbs, np.ndarray]:
    """Run ``model`` once over ``batches`` of (x, y) and keep its softmax as top-k.

    ``outputs`` says whether the model returns ``logits`` (softmax applied here) or ``probs``
    (an exported ensemble). Returns the table and the labels seen, in batch order.
    """
    import torch

    model.eval()
    idx_parts, prob_parts, labels = [], [], []
    n_classes = None
    with torch.no_grad():
        for x, y in batches:
            if device is not None:
                x = x.to(device)
            out = model(x).float()
            p = out.softmax(dim=1) if outputs == "logits" else out
            n_classes = p.shape[1]
            values, indices = torch.topk(p, min(k, n_classes), dim=1)
            idx_parts.append(indices.to(torch.int32).cpu())
            prob_parts.append(values.cpu())
            labels.append(torch.as_tensor(y).cpu())
    if n_classes is None:
        raise Natv2Error("cache_topk: the selection split has no images")
    table = TopKProbs(torch.cat(idx_parts).numpy(), torch.cat(prob_parts).numpy(), int(n_classes))
    return table, torch.cat(labels).numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------
# scoring many ensembles at once


class EnsembleScorer:
    """Top-1 (percent) of mean-probability ensembles of ``members``, many membership vectors at a time."""

    def __init__(self, members: Sequence[TopKProbs], labels: np.ndarray, *, max_block_bytes: int = 64 << 20):
        import scipy.sparse as sp

        if len(members) == 0:
            raise Natv2Error("ensemble: no members to score")
        labels = np.asarray(labels, dtype=np.int64)
        n, n_classes = labels.shape[0], members[0].n_classes
        for i, m in enumerate(members):
            if m.n_images != n or m.n_classes != n_classes:
                raise Natv2Error(
                    f"ensemble member {i}: top-k table has {m.n_images} images / {m.n_classes} classes, "
                    f"expected {n} / {n_classes} like the others and the labels"
                )
        self.n_members, self.n_images = len(members), n
        # key of every (image, class) entry; unique keys are the slots, sorted by image then class
        image_of = np.arange(n, dtype=np.int64)[:, None]
        keys = np.concatenate([(image_of * n_classes + m.indices).ravel() for m in members])
        probs = np.concatenate([m.probs.ravel() for m in members]).astype(np.float32)
        member_of = np.repeat(np.arange(len(members), dtype=np.int64), [m.indices.size for m in members])
        slot_keys, slot_of = np.unique(keys, return_inverse=True)
        self.n_slots = int(slot_keys.size)
        # slots x members; each (image, class, member) occurs once, so no duplicates are summed
        self._matrix = sp.csr_matrix((probs, (slot_of.ravel(), member_of)), shape=(self.n_slots, len(members)))
        # every image has at least k slots, so its first slot exists
        self._starts = np.searchsorted(slot_keys, np.arange(n, dtype=np.int64) * n_classes)
        true_keys = np.arange(n, dtype=np.int64) * n_classes + labels
        pos = np.minimum(np.searchsorted(slot_keys, true_keys), self.n_slots - 1)
        found = slot_keys[pos] == true_keys
        self._true_slot = np.where(found, pos, -1)
        self._block = max(1, int(max_block_bytes // (4 * max(self.n_slots, 1))))

    def top1(self, X: np.ndarray) -> np.ndarray:
        """Top-1 in percent of every row of the 0/1 membership matrix ``X`` (ensembles x members)."""
        X = np.atleast_2d(np.asarray(X)).astype(np.float32)
        if X.shape[1] != self.n_members:
            raise Natv2Error(f"ensemble: membership vectors have {X.shape[1]} entries, expected {self.n_members}")
        if np.any(X.sum(axis=1) == 0):
            raise Natv2Error("ensemble: an ensemble without members cannot be scored")
        has_true = self._true_slot >= 0
        out = np.empty(X.shape[0])
        for lo in range(0, X.shape[0], self._block):
            scores = np.asarray(self._matrix @ X[lo : lo + self._block].T, dtype=np.float32)  # slots x block
            best = np.maximum.reduceat(scores, self._starts, axis=0)  # images x block
            true = np.where(has_true[:, None], scores[np.maximum(self._true_slot, 0)], -np.inf)
            out[lo : lo + self._block] = np.mean(true >= best, axis=0) * 100.0
        return out


# --------------------------------------------------------------------------------------------
# costs


def check_costs(costs: pd.DataFrame, ids: Sequence[str], objective: str) -> None:
    """Raise a Natv2Error when the ``objective`` cost was not measured for some member."""
    if objective not in COST_COLUMNS:
        raise Natv2Error(f"ensemble.objective: {objective!r} is not one of {', '.join(COST_COLUMNS)}")
    if objective not in costs.columns:
        raise Natv2Error(f"ensemble costs: column {objective!r} was not measured (columns: {', '.join(costs.columns)})")
    missing = [str(i) for i in ids if i not in costs.index]
    if missing:
        raise Natv2Error(f"ensemble costs: no row for member(s) {', '.join(missing[:5])}")
    values = pd.to_numeric(costs.loc[list(ids), objective], errors="coerce")
    bad = [str(i) for i, v in values.items() if not np.isfinite(v)]
    if bad:
        raise Natv2Error(f"ensemble costs: {objective} not measured (missing or non-numeric) for member(s) {', '.join(bad[:5])}")


def ensemble_costs(member_costs: pd.DataFrame, X: np.ndarray, mode: str) -> pd.DataFrame:
    """Costs of every row of the 0/1 membership matrix ``X`` (columns of ``member_costs`` in member order).

    params and MACs are summed; latency is the members' max when they run in ``parallel``
    (each on its own device/stream) and their sum when they run ``sequential``ly.
    """
    if mode not in MODES:
        raise Natv2Error(f"ensemble mode: {mode!r} is not one of {', '.join(MODES)}")
    X = np.atleast_2d(np.asarray(X)).astype(bool)
    out = {}
    for col in COST_COLUMNS:
        if col not in member_costs.columns:
            continue
        v = member_costs[col].to_numpy(dtype=float)
        if col in ("latency_ms", "latency_lut") and mode == "parallel":
            out[col] = np.where(X, v[None, :], -np.inf).max(axis=1)
        else:
            out[col] = (X * v[None, :]).sum(axis=1)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# search


INITIAL = ("all", "random")


def _size_bounds(n_members: int, min_members: int, max_members: int) -> tuple[int, int]:
    """The smallest and largest ensemble size allowed (``max_members`` 0 = no cap)."""
    return min_members, (n_members if max_members == 0 else min(max_members, n_members))


class EnsembleProblem(Problem):
    """Membership bit vectors -> (val error in percent, ``objective`` cost of the ensemble).

    Remembers every ensemble it evaluated (``seen``: packed membership bits -> (error, cost)),
    each computed once; :meth:`front` picks the non-dominated ones among all of them.
    """

    def __init__(self, scorer: EnsembleScorer, member_costs: pd.DataFrame, mode: str, objective: str) -> None:
        super().__init__(n_var=len(member_costs), n_obj=2, xl=0, xu=1, vtype=bool)
        self.scorer, self.member_costs, self.mode, self.objective = scorer, member_costs, mode, objective
        self.seen: dict[bytes, tuple[float, float]] = {}

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.asarray(X).astype(bool)
        keys = [np.packbits(row).tobytes() for row in X]
        todo = [i for i, key in enumerate(keys) if key not in self.seen]
        if todo:
            err = 100.0 - self.scorer.top1(X[todo])
            cost = ensemble_costs(self.member_costs, X[todo], self.mode)[self.objective].to_numpy()
            for i, e, c in zip(todo, err, cost):
                self.seen[keys[i]] = (float(e), float(c))
        out["F"] = np.array([self.seen[key] for key in keys])

    def front(self) -> tuple[np.ndarray, np.ndarray]:
        """(membership bits, objectives) of the non-dominated ensembles seen, sorted by cost: one
        per distinct objective vector (equal vectors do not dominate each other), the smallest."""
        from natv2.survival import non_dominated

        bits = np.array([np.unpackbits(np.frombuffer(k, dtype=np.uint8))[: self.n_var] for k in self.seen], dtype=bool)
        F = np.array(list(self.seen.values()))
        front = np.flatnonzero(non_dominated(F))
        chosen: dict[tuple[float, float], int] = {}
        for i in sorted(front, key=lambda i: (bits[i].sum(), tuple(np.flatnonzero(bits[i])))):
            chosen.setdefault((F[i, 0], F[i, 1]), i)
        rows = sorted(chosen.values(), key=lambda i: (F[i, 1], F[i, 0]))
        return bits[rows], F[rows]


class SizeRepair(Repair):
    """Add random members to ensembles below ``lo``, drop random ones above ``hi``."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def _do(self, problem, X, random_state=None, **kwargs):
        X = np.asarray(X).astype(bool).copy()
        for row in X:
            size = int(row.sum())
            if size < self.lo:
                row[random_state.choice(np.flatnonzero(~row), self.lo - size, replace=False)] = True
            elif size > self.hi:
                row[random_state.choice(np.flatnonzero(row), size - self.hi, replace=False)] = False
        return X


class SizeSampling(Sampling):
    """Ensembles of a uniformly drawn size in [lo, hi] (a 50 % bit sampling would give huge ones)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        X = np.zeros((n_samples, problem.n_var), dtype=bool)
        for row in X:
            row[random_state.choice(problem.n_var, int(random_state.integers(self.lo, self.hi + 1)), replace=False)] = True
        return X


class RedrawMutation(Mutation):
    """OFA3's ``ChoiceRandomMutation(prob=1.0, prob_var=p)`` on {0, 1}: every bit of every
    offspring is redrawn uniformly from {0, 1} with probability ``p`` (so it flips with p / 2)."""

    def __init__(self, prob_var: float) -> None:
        super().__init__()
        self.prob_var = prob_var

    def _do(self, problem, X, random_state=None, **kwargs):
        X = np.asarray(X).astype(bool).copy()
        redraw = random_state.random(X.shape) < self.prob_var
        X[redraw] = random_state.random(int(redraw.sum())) < 0.5
        return X


def select_ensembles(
    members: Mapping[str, TopKProbs],
    labels: np.ndarray,
    costs: pd.DataFrame,
    *,
    mode: str,
    objective: str = "latency_ms",
    min_members: int = 2,
    max_members: int = 8,
    population: int = 40,
    generations: int = 30,
    initial: str = "all",
    mutation_prob: float = 0.01,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """NSGA-II over membership vectors; the non-dominated ensembles on (val error, cost).

    ``initial``: ``all`` = OFA3's start, every individual the all-members ensemble (repaired
    down to ``max_members``); ``random`` = ensembles of a uniformly drawn size.
    ``mutation_prob``: OFA3's per-bit redraw probability. ``max_members`` 0 = no cap.

    ``members``: id -> top-k table on the selection split; ``costs``: indexed by member id with
    columns params, macs, latency_ms. Returns columns ``members, mode, params, macs, latency_ms,
    val_top1`` sorted by cost, one row per distinct objective vector, mutually non-dominated.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.ux import UniformCrossover
    from pymoo.optimize import minimize

    ids = [str(i) for i in members]
    if len(ids) < max(2, min_members):
        raise Natv2Error(f"ensemble: the front has {len(ids)} usable member(s); an ensemble needs at least {max(2, min_members)}")
    if min_members < 2 or (max_members != 0 and max_members < min_members):
        raise Natv2Error(f"ensemble: need 2 <= min_members <= max_members (or max_members 0), got {min_members}, {max_members}")
    if initial not in INITIAL:
        raise Natv2Error(f"ensemble.initial: {initial!r} is not one of {', '.join(INITIAL)}")
    if not 0 <= mutation_prob <= 1:
        raise Natv2Error(f"ensemble.mutation_prob: {mutation_prob} is not a probability")
    costs = costs.copy()
    costs.index = costs.index.map(str)
    check_costs(costs, ids, objective)
    member_costs = costs.loc[ids, [c for c in COST_COLUMNS if c in costs.columns]].apply(pd.to_numeric, errors="coerce")
    problem = EnsembleProblem(EnsembleScorer([members[i] for i in ids], labels), member_costs, mode, objective)
    lo, hi = _size_bounds(len(ids), min_members, max_members)
    algorithm = NSGA2(
        pop_size=population,
        sampling=np.ones((population, len(ids)), dtype=bool) if initial == "all" else SizeSampling(lo, hi),
        crossover=UniformCrossover(prob=1.0),
        mutation=RedrawMutation(mutation_prob),
        repair=SizeRepair(lo, hi),
        eliminate_duplicates=True,
    )
    # every operator draws from the algorithm's random_state, seeded from ``rng``
    minimize(problem, algorithm, ("n_gen", generations), seed=draw_seed(rng), verbose=False)

    X, F = problem.front()
    table = ensemble_costs(member_costs, X, mode)
    table.insert(0, "mode", mode)
    table.insert(0, "members", [";".join(ids[j] for j in np.flatnonzero(x)) for x in X])
    table["val_top1"] = 100.0 - F[:, 0]
    log.info("ensembles (%s): %d evaluated, %d non-dominated", mode, len(problem.seen), len(X))
    return table.reset_index(drop=True)


def score_members(members_column: Sequence[str], tables: Mapping[str, TopKProbs], labels: np.ndarray) -> np.ndarray:
    """Top-1 (percent) of ensembles given as ``a;b;c`` strings, on the split of ``tables``."""
    ids = [str(i) for i in tables]
    pos = {m: j for j, m in enumerate(ids)}
    X = np.zeros((len(members_column), len(ids)), dtype=bool)
    for r, text in enumerate(members_column):
        for m in str(text).split(";"):
            if m not in pos:
                raise Natv2Error(f"ensemble {text!r}: member {m!r} has no probability table")
            X[r, pos[m]] = True
    return EnsembleScorer([tables[i] for i in ids], labels).top1(X)


# --------------------------------------------------------------------------------------------
# from the fine-tuned front to ensembles.csv


def member_tables(paths: Mapping[str, str], splits: Mapping[str, object], *, mean, std, k: int, batch_size: int,
                  device=None) -> tuple[dict[str, dict[str, TopKProbs]], dict[str, np.ndarray], dict[str, str]]:
    """Each exported member's sparse top-k softmax on every split, computed once per member.

    ``paths``: member id -> exported network directory; ``splits``: name -> ImageSet. A member
    that cannot be loaded (missing or corrupt files) is reported and left out; the others are
    kept. Returns (split -> id -> table, split -> labels, id -> error message).
    """
    from natv2.export import load_network
    from natv2.splits import batches

    tables: dict[str, dict[str, TopKProbs]] = {name: {} for name in splits}
    labels: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for mid, path in paths.items():
        try:
            net = load_network(path)
        except Natv2Error as e:
            failed[mid] = str(e)
            log.error("ensemble member %s left out: %s", mid, e)
            continue
        if device is not None:
            net = net.to(device)
        resolution = int(net.natv2_config["resolution"])
        outputs = net.natv2_config.get("outputs", "logits")
        for name, images in splits.items():
            table, y = cache_topk(net, batches(images, batch_size, resolution=resolution, mean=mean, std=std,
                                                train=False, device=device), k, device=device, outputs=outputs)
            tables[name][mid] = table
            labels.setdefault(name, y)
        log.info("cached top-%d probabilities of member %s (%s)", k, mid, path)
    return tables, labels, failed


def ensembles_table(pareto: pd.DataFrame, val: Mapping[str, TopKProbs], val_labels: np.ndarray,
                    test: Mapping[str, TopKProbs], test_labels: np.ndarray, cfg, *,
                    rng: np.random.Generator) -> pd.DataFrame:
    """Search every mode of ``cfg`` (the ``ensemble:`` section) and test the non-dominated ensembles.

    Columns as ensembles.csv: ``id, members, mode, params, macs, latency_ms, val_top1, test_top1``.
    """
    if len(pareto) == 0:
        raise Natv2Error("pareto.csv is empty: no front member to build ensembles from")
    costs = pareto.assign(id=pareto["id"].astype(str)).set_index("id")
    frames = []
    for mode in cfg.modes:
        table = select_ensembles(
            val, val_labels, costs, mode=mode, objective=cfg.objective, min_members=cfg.min_members,
            max_members=cfg.max_members, population=cfg.population, generations=cfg.generations,
            initial=getattr(cfg, "initial", "all"), mutation_prob=getattr(cfg, "mutation_prob", 0.01), rng=rng,
        )
        table["test_top1"] = score_members(table["members"], test, test_labels)
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "id", [f"e{i:03d}" for i in range(len(out))])
    return out[CSV_COLUMNS + (["latency_lut"] if "latency_lut" in out.columns else [])]


def dominated_pairs(singles: pd.DataFrame, ensembles: pd.DataFrame, *, single_top1: str, ensemble_top1: str = "val_top1",
                    cost: str = "latency_ms") -> pd.DataFrame:
    """Every (ensemble, single net) pair where the ensemble dominates the net on (error, ``cost``).

    Dominates: top-1 at least as high and cost at least as low, one of them strictly. The two
    accuracy columns must come from the same images (the held-out selection split, or test).
    Columns: ``ensemble, mode, members, net, ensemble_top1, net_top1, ensemble_cost, net_cost``.
    """
    columns = ["ensemble", "mode", "members", "net", "ensemble_top1", "net_top1", "ensemble_cost", "net_cost"]
    rows = []
    for _, e in ensembles.iterrows():
        for _, s in singles.iterrows():
            acc_e, acc_s, cost_e, cost_s = (float(e[ensemble_top1]), float(s[single_top1]), float(e[cost]),
                                            float(s[cost]))
            if acc_e >= acc_s and cost_e <= cost_s and (acc_e > acc_s or cost_e < cost_s):
                rows.append([e["id"], e["mode"], e["members"], str(s["id"]), acc_e, acc_s, cost_e, cost_s])
    return pd.DataFrame(rows, columns=columns)


def dominance_lines(singles: pd.DataFrame, ensembles: pd.DataFrame, *, single_top1: str = "select_top1",
                    cost: str = "latency_ms") -> list[str]:
    """Readable lines: which single nets each ensemble dominates on the selection split (or that none does)."""
    pairs = dominated_pairs(singles, ensembles, single_top1=single_top1, cost=cost)
    if pairs.empty:
        return [f"no ensemble dominates a single net of the front on (held-out val error, {cost})"]
    return [f"ensemble {p.ensemble} ({p.mode}, members {p.members}) dominates net {p.net} on (held-out val error, "
            f"{cost}): {p.ensemble_top1:.2f} % at {p.ensemble_cost:.4g} vs {p.net_top1:.2f} % at {p.net_cost:.4g}"
            for p in pairs.itertuples()]


# --------------------------------------------------------------------------------------------
# the library side of ``natv2 ensembles``


@dataclass
class FrontEnsembles:
    """What ``natv2 ensembles`` found: the ensembles.csv table, the usable front members with
    their top-1 on the selection split (``select_top1``), and the members left out (id -> why)."""

    table: pd.DataFrame
    singles: pd.DataFrame
    failed: dict[str, str]


def cost_objective(settings, columns) -> str:
    """ensemble.objective, except latency_ms means latency_lut when the run has a latency table
    (search.latency_table: the target device's latency) and the front carries it."""
    objective = settings.ensemble.objective
    if objective == "latency_ms" and settings.search.latency_table and "latency_lut" in set(columns):
        return "latency_lut"
    return objective


def front_ensembles(pareto: pd.DataFrame, data, settings, *, source: str = "pareto.csv") -> FrontEnsembles:
    """OFA3 ensembles of the exported front members listed in ``pareto`` (columns ``id``, ``path``).

    Chosen on the part of val that no member's fine-tune trained on (``finetune.selection_holdout``)
    and tested on the test split. A member that cannot be loaded is left out (``failed``); fewer
    usable members than an ensemble needs give an empty table (a valid result).
    """
    import dataclasses

    from natv2.rng import stream

    # on the target device's latency when the run has a latency table (see cost_objective)
    cfg = dataclasses.replace(settings.ensemble, objective=cost_objective(settings, pareto.columns))
    if len(pareto) == 0:
        raise Natv2Error(f"{source}: the front is empty; no ensembles to build")
    for column in ("id", "path"):
        if column not in pareto.columns:
            raise Natv2Error(f"{source}: column {column!r} missing")
    paths = {str(r["id"]): str(r["path"]) for _, r in pareto.iterrows()}
    # ensembles are chosen on the part of val that no member's fine-tune trained on (its "val_top1")
    _fit, select = data.holdout(settings.finetune.selection_holdout, settings.seed)
    tables, labels, failed = member_tables(paths, {"val": select, "test": data.test}, mean=data.mean, std=data.std,
                                           k=cfg.top_k, batch_size=cfg.batch_size, device=settings.torch_device())
    usable = pareto[pareto["id"].astype(str).isin(tables["val"].keys())]
    if len(usable) == 0:
        raise Natv2Error(f"{source}: no usable front member (every member failed to load)")
    if len(usable) < max(2, cfg.min_members):
        # a one-member front is a valid result: there is simply no ensemble of it
        logging.getLogger("natv2.ensembles").warning(
            "the front has %d usable member(s); an ensemble needs at least %d: no ensembles", len(usable),
            max(2, cfg.min_members))
        table = pd.DataFrame(columns=CSV_COLUMNS)
    else:
        table = ensembles_table(usable, tables["val"], labels["val"], tables["test"], labels["test"], cfg,
                                rng=stream(settings.seed, "ensembles"))
    singles = usable.assign(select_top1=[tables["val"][str(i)].top1(labels["val"]) for i in usable["id"].astype(str)])
    return FrontEnsembles(table, singles, failed)
