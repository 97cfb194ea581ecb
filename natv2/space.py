"""The search space and its integer encoding (design.md §3; NAT, extended as in NATv2).

A genome is an int vector laid out as

    [r, w, s1b1 .. s1bM, s2b1 .. s2bM, ..., sSb1 .. sSbM, (exit)]

``r`` indexes ``resolutions``, ``w`` indexes ``widths``; each block slot is 0 = skipped, or
``len(kernels) * idx(expand) + idx(kernel) + 1`` (1..9 for the OFA space). The first
``min(depths)`` slots of a stage are never skipped. With ``n_exits > 0`` the last gene is the
exit (1..n_exits) whose head produces the output. Parallel-block supernets (OFAv2 *_P, *_DP;
``levels`` non-empty) fold the block's branch set into its slot code, as OFAv2's parallel
search space does (``NAT_extended/search/search_spaces/ea_ofa_search_spaces.py:264-286``):
``len(kernels) * len(expands) * idx(branches) + len(kernels) * idx(expand) + idx(kernel) + 1``
(1..63 for the OFA space), ``branches`` one of ``branch_keys`` (natv2.variants.branch_keys:
the original's nw keys with ``levels`` active branches, in its order).
``from_config`` derives ``n_exits`` and ``levels`` from ``supernet.variant`` (natv2.variants).

A *valid* genome is canonical: in every stage the active blocks form a prefix (skips only at
the end). ``repair`` maps any integer (or float, as pymoo operators produce) vector onto a
valid genome: NAT's "push" moves skips to the end of the stage, NATv2's "fill" zeroes every
slot after the first skip.

Every bound (``n_var``, ``xl``, ``xu``) and gene position is derived from the fields, so a
different space (more stages, other kernels) needs no other code change.

Example::

    space = SearchSpace(resolutions=(32, 40))
    X = space.sample(8, np.random.default_rng(0), policy="natv2")  # or "nat", "balanced"
    arch = space.decode(X[0]); assert (space.encode(arch) == X[0]).all()
    s = space.to_string(X[0])   # 'r32-w1.0-k3e4.k5e6-k7e3.k3e3.k3e3-...'
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Mapping, Sequence

import numpy as np

from natv2.config import setting
from natv2.errors import Natv2Error
from natv2.variants import PARALLEL_LEVELS, branch_keys

POLICIES = ("nat", "natv2", "balanced")
#: NATv2's initial sampling: probability that an optional block slot (after the first
#: ``min(depths)``) is drawn as a skip (NAT_extended/search/search_spaces/ea_ofa_search_spaces.py:196-211)
NATV2_SKIP_P = 1 / 3
REPAIR_MODES = ("push", "fill")

Block = tuple[int, int]  # (kernel, expand)


@dataclass(frozen=True)
class Arch:
    """A decoded genome: the architecture in words.

    ``stages[i]`` lists the (kernel, expand) of the active blocks of stage i, in order;
    ``branches[i]`` (parallel-block spaces) the branch-set key of each of them (natv2.variants).
    """

    resolution: int
    width: float
    stages: tuple[tuple[Block, ...], ...]
    exit: int | None = None
    branches: tuple[tuple[int, ...], ...] | None = None  # per stage, per active block: branch-set key

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "resolution": self.resolution,
            "width": self.width,
            "stages": [[list(b) for b in s] for s in self.stages],
            "exit": self.exit,
            "branches": None if self.branches is None else [list(b) for b in self.branches],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Arch":
        return cls(
            resolution=int(d["resolution"]),
            width=float(d["width"]),
            stages=tuple(tuple((int(b[0]), int(b[1])) for b in s) for s in d["stages"]),
            exit=None if d.get("exit") is None else int(d["exit"]),
            branches=None if d.get("branches") is None else tuple(tuple(int(v) for v in b) for b in d["branches"]),
        )


def _as_tuple(values: Sequence, kind: type, name: str) -> tuple:
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise Natv2Error(f"search space {name}: expected a list of {kind.__name__}, got {values!r}") from None
    if not out:
        raise Natv2Error(f"search space {name}: must not be empty")
    if len(set(out)) != len(out):
        raise Natv2Error(f"search space {name}: duplicate values in {list(out)}")
    return out


@dataclass(frozen=True)
class SearchSpace:
    """The genome layout and its rules; see the module docstring."""

    resolutions: tuple[int, ...] = (32,)
    widths: tuple[float, ...] = (1.0,)
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    n_stages: int = 5
    max_blocks: int = 4
    n_exits: int = 0
    levels: tuple[int, ...] = ()  # allowed numbers of parallel branches per block (empty = plain blocks)

    def __post_init__(self) -> None:
        # normalise lists (from YAML) to tuples so the space is hashable and comparable
        object.__setattr__(self, "resolutions", _as_tuple(self.resolutions, int, "resolutions"))
        object.__setattr__(self, "widths", _as_tuple(self.widths, float, "widths"))
        object.__setattr__(self, "kernels", _as_tuple(self.kernels, int, "kernels"))
        object.__setattr__(self, "expands", _as_tuple(self.expands, int, "expands"))
        depths = tuple(sorted(_as_tuple(self.depths, int, "depths")))
        object.__setattr__(self, "depths", depths)
        if self.n_stages < 1 or self.max_blocks < 1:
            raise Natv2Error(f"search space: n_stages and max_blocks must be >= 1, got {self.n_stages}, {self.max_blocks}")
        # repair can only move or drop skips, so every depth from min to max must be allowed
        if depths != tuple(range(depths[0], self.max_blocks + 1)) or depths[0] < 1:
            raise Natv2Error(
                f"search space depths: expected consecutive depths ending at max_blocks={self.max_blocks} "
                f"(e.g. [2, 3, 4]), got {list(depths)}"
            )
        if self.n_exits < 0:
            raise Natv2Error(f"search space n_exits: expected >= 0, got {self.n_exits}")
        levels = tuple(sorted(_as_tuple(self.levels, int, "levels"))) if len(tuple(self.levels or ())) else ()
        if any(v not in PARALLEL_LEVELS for v in levels):
            raise Natv2Error(f"search space levels: expected branch counts in {list(PARALLEL_LEVELS)}, got {list(levels)}")
        object.__setattr__(self, "levels", levels)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(cls, cfg: Any) -> "SearchSpace":
        """Build from a ``supernet:`` config section (dataclass or mapping)."""
        from natv2.variants import space_fields

        get = partial(setting, cfg)
        kwargs = {}
        for name in ("resolutions", "widths", "kernels", "expands", "depths", "n_stages", "max_blocks"):
            value = get(name)
            if value is not None:
                kwargs[name] = value
        # the variant implies the exit gene and the branch sets (natv2.variants)
        kwargs.update(space_fields(get("variant"), int(kwargs.get("n_stages", cls.n_stages)),
                                   n_exits=get("n_exits"), levels=get("levels")))
        return cls(**kwargs)

    # ---------------------------------------------------------------- layout (derived)

    @property
    def branch_keys(self) -> tuple[int, ...]:
        """Branch-set keys a parallel block may take, in code order (empty: plain blocks)."""
        return branch_keys(self.levels) if self.levels else ()

    @property
    def n_choices(self) -> int:
        """Number of non-skip codes per block slot: (kernel, expand) [x branch set]."""
        return len(self.kernels) * len(self.expands) * max(1, len(self.branch_keys))

    @property
    def min_depth(self) -> int:
        return self.depths[0]

    @property
    def block_offset(self) -> int:
        """Position of the first block slot (after r and w)."""
        return 2

    @property
    def n_blocks(self) -> int:
        return self.n_stages * self.max_blocks

    @property
    def exit_position(self) -> int | None:
        return self.block_offset + self.n_blocks if self.n_exits else None

    @property
    def n_var(self) -> int:
        return self.block_offset + self.n_blocks + (1 if self.n_exits else 0)

    @cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        xl = np.zeros(self.n_var, dtype=np.int64)
        xu = np.zeros(self.n_var, dtype=np.int64)
        xu[0] = len(self.resolutions) - 1
        xu[1] = len(self.widths) - 1
        slots = self._slot_matrix  # (n_stages, max_blocks) gene positions
        xu[slots] = self.n_choices
        xl[slots[:, : self.min_depth]] = 1  # the first min(depths) slots are never skipped
        if self.n_exits:
            xl[self.exit_position] = 1
            xu[self.exit_position] = self.n_exits
        xl.setflags(write=False)
        xu.setflags(write=False)
        return xl, xu

    @property
    def xl(self) -> np.ndarray:
        """Lower bound of every gene (read-only int array)."""
        return self._bounds[0]

    @property
    def xu(self) -> np.ndarray:
        """Upper bound of every gene (read-only int array)."""
        return self._bounds[1]

    @cached_property
    def _slot_matrix(self) -> np.ndarray:
        return self.block_offset + np.arange(self.n_blocks).reshape(self.n_stages, self.max_blocks)

    def slot_position(self, stage: int, block: int) -> int:
        """Gene position of block slot ``block`` (0-based) of stage ``stage`` (0-based)."""
        return int(self._slot_matrix[stage, block])

    def describe_position(self, pos: int) -> str:
        """A human name for gene ``pos``, used in error messages."""
        if pos == 0:
            return "resolution gene"
        if pos == 1:
            return "width gene"
        if self.n_exits and pos == self.exit_position:
            return "exit gene"
        stage, block = divmod(pos - self.block_offset, self.max_blocks)
        return f"stage {stage + 1} block {block + 1}"

    def code(self, kernel: int, expand: int, branches: int | None = None) -> int:
        """Block code of (kernel, expand) and, in parallel-block spaces, the branch-set key."""
        if kernel not in self.kernels:
            raise Natv2Error(f"kernel {kernel}: expected one of {list(self.kernels)}")
        if expand not in self.expands:
            raise Natv2Error(f"expand ratio {expand}: expected one of {list(self.expands)}")
        ke = len(self.kernels) * self.expands.index(expand) + self.kernels.index(kernel)
        if not self.levels:
            if branches is not None:
                raise Natv2Error(f"branches {branches}: this search space has plain blocks (no parallel branches)")
            return ke + 1
        if branches not in self.branch_keys:
            raise Natv2Error(f"branches {branches}: expected one of {list(self.branch_keys)} (levels {list(self.levels)})")
        return len(self.kernels) * len(self.expands) * self.branch_keys.index(branches) + ke + 1

    def block(self, code: int) -> Block:
        """(kernel, expand) of a non-zero block code."""
        e, k = divmod((int(code) - 1) % (len(self.kernels) * len(self.expands)), len(self.kernels))
        return self.kernels[k], self.expands[e]

    def branches(self, code: int) -> int | None:
        """Branch-set key of a non-zero block code (None in a plain-block space)."""
        if not self.levels:
            return None
        return self.branch_keys[(int(code) - 1) // (len(self.kernels) * len(self.expands))]

    # ---------------------------------------------------------------- sampling

    def sample(self, n: int, rng: np.random.Generator, policy: str = "nat") -> np.ndarray:
        """``n`` valid genomes, shape (n, n_var).

        ``nat``: every gene uniform in its bounds, then "push" repair — depth is biased to the
        maximum (P(depth 4) = 0.81 in the OFA space). ``natv2``: NATv2's initial sampling
        (``set_initial_probs``, NAT_extended/search/search_spaces/ea_ofa_search_spaces.py:196-211,
        used by ``initialize_archive``, NAT_extended/search/algorithms/nat_new.py:97-139): each
        optional slot is a skip with probability 1/3, else a uniform block code, then "fill"
        repair — depths 2/3/4 with probability 1/3, 2/9, 4/9 in the OFA space; the other genes
        uniform. ``balanced``: the depth of each stage uniform over ``depths`` and the active
        blocks' codes uniform (OFA's progressive-shrinking sampling).
        """
        if policy not in POLICIES:
            raise Natv2Error(f"sampling policy {policy!r}: expected one of {list(POLICIES)}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng must be a numpy.random.Generator")
        xl, xu = self.xl, self.xu
        X = rng.integers(xl, xu + 1, size=(n, self.n_var), dtype=np.int64)
        if policy == "nat":
            return self.repair(X, mode="push")
        shape = (n, self.n_stages, self.max_blocks)
        if policy == "natv2":
            codes = rng.integers(1, self.n_choices + 1, size=shape)
            optional = np.arange(self.max_blocks)[None, None, :] >= self.min_depth
            skip = optional & (rng.random(shape) < NATV2_SKIP_P)
            X[:, self._slot_matrix] = np.where(skip, 0, codes)
            return self.repair(X, mode="fill")
        depth = rng.choice(np.asarray(self.depths), size=(n, self.n_stages))
        codes = rng.integers(1, self.n_choices + 1, size=shape)
        active = np.arange(self.max_blocks)[None, None, :] < depth[:, :, None]  # (n, S, M)
        X[:, self._slot_matrix] = np.where(active, codes, 0)
        return X

    def smallest(self) -> np.ndarray:
        """Lowest resolution and width, minimum depth, smallest kernel and expand everywhere."""
        g = np.zeros(self.n_var, dtype=np.int64)
        # parallel blocks: the first branch set of the fewest branches (key 1 = the pool branch alone)
        g[self._slot_matrix[:, : self.min_depth]] = self.code(
            min(self.kernels), min(self.expands), self.branch_keys[0] if self.levels else None)
        if self.n_exits:
            g[self.exit_position] = 1
        return g

    def uniform(self, resolution: int, width: float, kernel: int, expand: int, exit: int | None = None,
                branch_set: int | None = None) -> Arch:
        """Every block of every stage at full depth with one kernel x expand (and branch set):
        the subnets a latency table times and the part-costs table counts. An early exit's
        architecture still lists every stage (those after the exit are unused)."""
        blocks = tuple(((kernel, expand),) * self.max_blocks for _ in range(self.n_stages))
        branches = None if branch_set is None else tuple((branch_set,) * self.max_blocks for _ in range(self.n_stages))
        return Arch(resolution=resolution, width=width, stages=blocks, exit=exit, branches=branches)

    def largest(self) -> np.ndarray:
        """Highest resolution and width, full depth, largest kernel and expand everywhere."""
        g = np.zeros(self.n_var, dtype=np.int64)
        g[0] = len(self.resolutions) - 1
        g[1] = len(self.widths) - 1
        # parallel blocks: OFAv2's max net width, max(get_valid_nw_keys(max(levels))) (7 = every branch)
        top = max(branch_keys((max(self.levels),))) if self.levels else None
        g[self._slot_matrix] = self.code(max(self.kernels), max(self.expands), top)
        if self.n_exits:
            g[self.exit_position] = self.n_exits
        return g

    # ---------------------------------------------------------------- repair / validation

    def repair(self, X: np.ndarray, mode: str = "push") -> np.ndarray:
        """Map genomes (n, n_var) or one genome (n_var,) onto valid genomes; idempotent.

        Values are rounded and clipped to the bounds. ``push`` moves every skip to the end of
        its stage (keeping the order of the active blocks, NAT); ``fill`` zeroes every slot
        after the first skip (NATv2). A skip left in the first ``min(depths)`` slots becomes
        code 1 (smallest kernel and expand).
        """
        if mode not in REPAIR_MODES:
            raise Natv2Error(f"repair mode {mode!r}: expected one of {list(REPAIR_MODES)}")
        X = np.asarray(X)
        single = X.ndim == 1
        X2 = np.atleast_2d(X)
        if X2.ndim != 2 or X2.shape[1] != self.n_var:
            raise Natv2Error(f"genomes: expected shape (n, {self.n_var}), got {tuple(X.shape)}")
        X2 = np.rint(X2).astype(np.int64)
        X2 = np.clip(X2, 0, self.xu)
        blocks = X2[:, self._slot_matrix]  # (n, S, M) copy
        if mode == "push":
            # stable partition: active slots first, in order, then the skips
            order = np.argsort(blocks == 0, axis=2, kind="stable")
            blocks = np.take_along_axis(blocks, order, axis=2)
            blocks[:, :, : self.min_depth] = np.maximum(blocks[:, :, : self.min_depth], 1)
        else:
            blocks[:, :, : self.min_depth] = np.maximum(blocks[:, :, : self.min_depth], 1)
            after_skip = np.cumsum(blocks == 0, axis=2) > 0
            blocks = np.where(after_skip, 0, blocks)
        X2[:, self._slot_matrix] = blocks
        X2 = np.maximum(X2, self.xl)  # e.g. the exit gene's lower bound is 1
        return X2[0] if single else X2

    def _errors(self, g: Any) -> str | None:
        """The first problem with genome ``g``, or None when it is valid."""
        try:
            arr = np.asarray(g)
        except Exception:  # noqa: BLE001 - anything unconvertible is simply invalid
            return f"genome: expected a sequence of {self.n_var} integers, got {g!r}"
        if arr.ndim != 1 or arr.shape[0] != self.n_var:
            return f"genome: expected {self.n_var} genes, got shape {tuple(arr.shape)}"
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
            if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
                return f"genome: expected integer genes, got {arr.tolist()}"
        arr = arr.astype(np.int64)
        for pos in range(self.n_var):
            v, lo, hi = int(arr[pos]), int(self.xl[pos]), int(self.xu[pos])
            if not lo <= v <= hi:
                what = self.describe_position(pos)
                if v == 0 and lo == 1 and pos >= self.block_offset and pos != self.exit_position:
                    return (
                        f"genome position {pos} ({what}): 0 = skipped is not allowed in the first "
                        f"{self.min_depth} slots of a stage; allowed {lo}..{hi}"
                    )
                return f"genome position {pos} ({what}): value {v} out of range; allowed {lo}..{hi}"
        for s in range(self.n_stages):
            row = arr[self._slot_matrix[s]]
            skipped = np.flatnonzero(row == 0)
            if skipped.size and np.any(row[skipped[0]:] != 0):
                b = skipped[0] + int(np.flatnonzero(row[skipped[0]:] != 0)[0])
                pos = self.slot_position(s, b)
                return (
                    f"genome position {pos} ({self.describe_position(pos)}): active block after a "
                    f"skipped slot; allowed 0 here (skips only at the end of a stage — use repair)"
                )
        return None

    def validate(self, g: Any) -> np.ndarray:
        """Return ``g`` as an int array, or raise Natv2Error naming the position and allowed values."""
        err = self._errors(g)
        if err:
            raise Natv2Error(err)
        return np.asarray(g).astype(np.int64)

    def is_valid(self, g: Any) -> bool:
        return self._errors(g) is None

    # ---------------------------------------------------------------- decode / encode

    def decode(self, g: Any) -> Arch:
        g = self.validate(g)
        stages = tuple(
            tuple(self.block(c) for c in g[self._slot_matrix[s]] if c != 0) for s in range(self.n_stages)
        )
        branches = None
        if self.levels:
            branches = tuple(
                tuple(self.branches(c) for c in g[self._slot_matrix[s]] if c != 0) for s in range(self.n_stages)
            )
        return Arch(
            resolution=self.resolutions[g[0]],
            width=self.widths[g[1]],
            stages=stages,
            exit=int(g[self.exit_position]) if self.n_exits else None,
            branches=branches,
        )

    def encode(self, arch: Arch) -> np.ndarray:
        if arch.resolution not in self.resolutions:
            raise Natv2Error(f"resolution {arch.resolution}: expected one of {list(self.resolutions)}")
        widths = [w for w in self.widths if abs(w - arch.width) < 1e-9]
        if not widths:
            raise Natv2Error(f"width {arch.width}: expected one of {list(self.widths)}")
        if len(arch.stages) != self.n_stages:
            raise Natv2Error(f"architecture: expected {self.n_stages} stages, got {len(arch.stages)}")
        if self.levels:
            if arch.branches is None or [len(b) for b in arch.branches] != [len(s) for s in arch.stages]:
                raise Natv2Error(
                    f"branches {arch.branches}: expected one branch-set key per active block "
                    f"(keys {list(self.branch_keys)})"
                )
        elif arch.branches is not None:
            raise Natv2Error(f"branches {[list(b) for b in arch.branches]}: this search space has plain blocks")
        g = np.zeros(self.n_var, dtype=np.int64)
        g[0] = self.resolutions.index(arch.resolution)
        g[1] = self.widths.index(widths[0])
        for s, blocks in enumerate(arch.stages):
            if len(blocks) not in self.depths:
                raise Natv2Error(f"stage {s + 1}: depth {len(blocks)} not allowed; expected one of {list(self.depths)}")
            for b, (k, e) in enumerate(blocks):
                g[self.slot_position(s, b)] = self.code(k, e, arch.branches[s][b] if self.levels else None)
        if self.n_exits:
            if arch.exit is None or not 1 <= arch.exit <= self.n_exits:
                raise Natv2Error(f"exit {arch.exit}: expected 1..{self.n_exits}")
            g[self.exit_position] = arch.exit
        elif arch.exit is not None:
            raise Natv2Error(f"exit {arch.exit}: this search space has no exit gene")
        return g

    # ---------------------------------------------------------------- string form

    def to_string(self, g: Any) -> str:
        """One CSV-safe token, e.g. ``r32-w1.0-k3e4.k5e6-k7e3.k3e3.k3e3-...(-x3)``.

        Parallel-block spaces append each block's branch-set key: ``k3e4b7`` (natv2.variants).
        """
        arch = self.decode(g)
        parts = [f"r{arch.resolution}", f"w{arch.width!r}"]
        if arch.branches is None:
            parts += [".".join(f"k{k}e{e}" for k, e in stage) for stage in arch.stages]
        else:
            parts += [".".join(f"k{k}e{e}b{n}" for (k, e), n in zip(stage, nws))
                      for stage, nws in zip(arch.stages, arch.branches)]
        if arch.exit is not None:
            parts.append(f"x{arch.exit}")
        return "-".join(parts)

    _BLOCK_RE = re.compile(r"^k(\d+)e(\d+)(?:b(\d+))?$")

    def from_string(self, s: str) -> np.ndarray:
        """Inverse of :meth:`to_string`; a malformed string raises Natv2Error naming it."""
        if not isinstance(s, str):
            raise Natv2Error(f"genome string: expected text, got {s!r}")
        parts = s.strip().split("-")
        expected = 2 + self.n_stages + (1 if self.n_exits else 0)
        if len(parts) != expected:
            raise Natv2Error(
                f"genome string {s!r}: expected {expected} '-'-separated parts "
                f"(r<res>-w<width>-<stage>x{self.n_stages}{'-x<exit>' if self.n_exits else ''})"
            )
        try:
            if not parts[0].startswith("r") or not parts[1].startswith("w"):
                raise ValueError
            resolution, width = int(parts[0][1:]), float(parts[1][1:])
            stages, branches = [], []
            for part in parts[2 : 2 + self.n_stages]:
                blocks, nws = [], []
                for tok in part.split("."):
                    m = self._BLOCK_RE.match(tok)
                    if m is None or (m.group(3) is None) == bool(self.levels):
                        raise ValueError
                    blocks.append((int(m.group(1)), int(m.group(2))))
                    nws.append(None if m.group(3) is None else int(m.group(3)))
                stages.append(tuple(blocks))
                branches.append(tuple(nws))
            exit_ = None
            if self.n_exits:
                if not parts[-1].startswith("x"):
                    raise ValueError
                exit_ = int(parts[-1][1:])
        except ValueError:
            form = "r32-w1.0-k3e4b7.k5e6b1-..." if self.levels else "r32-w1.0-k3e4.k5e6-..."
            raise Natv2Error(f"genome string {s!r}: not of the form {form}") from None
        try:
            return self.encode(Arch(resolution, width, tuple(stages), exit_, tuple(branches) if self.levels else None))
        except Natv2Error as e:
            raise Natv2Error(f"genome string {s!r}: {e}") from None
