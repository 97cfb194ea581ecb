"""The OFAv2 supernets (Sarti et al., arXiv 2302.01888): early exits, dense skips, parallel blocks.

Every variant is the OFA MobileNetV3 supernet of :mod:`natv2.nets.mbv3` with up to three
additions, named ``<exits>_<blocks>`` (see :mod:`natv2.variants`):

- **EE, early exits**: an exit head after each of the 5 stages (1x1 expand -> pool -> 1x1 mix
  -> linear, as the OFA head, widths scaled with the stage's width: 6x and 8x its channels, so
  the last exit is exactly OFA's 960/1280 head). The genome's exit gene picks the exit; the
  forward stops at that stage. ``extract(g, all_exits=True)`` gives a multi-exit static net
  whose forward returns every exit's logits, shallowest first (teacher ensemble, AEP).
- **D, dense skips** (OFAv2 ``dyn_stages.py:189-197`` with ``common_tools.py:29-42``
  ``get_input_tensor``): with block outputs o1..o4, the blocks of a stage get x, o1, o2, o3 + o1
  and the stage outputs o_d at depth d <= 2, o3 + o1 at depth 3, o4 + o1 + o2 at depth 4 (in
  general block d >= 3 adds o1 .. o_{d-2}). Inactive blocks (elastic depth) do not contribute.
- **P, parallel blocks** (``dyn_layers_builders.py:76-129``, ``stat_layers.py:50-85``): each
  block position holds three branches, summed: the MBConv (with its residual), a 1x1 conv + BN +
  activation, and the "transformation" branch: max-pool (kernel = stride, ceil mode) when the
  block strides, a 1x1 conv (with bias) when the width changes, BN + activation. The genome's
  slot code picks any non-empty subset per block (its branch-set key, natv2.variants).

State-dict keys of a static net are a subset of its supernet's (``exits.{i}`` for the exit
after stage i+1, ``stages.{s}.{b}.mbconv|conv|pool`` for parallel blocks), so BN statistics
recalibrated on a static net write back by name (``load_bn_stats_from``).

    net = build_supernet({"variant": "EE_D", "resolutions": [32]}, n_classes=10)
    g = net.space.sample(1, np.random.default_rng(0), "natv2")[0]
    static = net.extract(g)                      # single exit: logits
    multi = net.extract(g, all_exits=True)       # list of 5 exit logits
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from natv2.config import setting
from natv2.errors import Natv2Error
from natv2.nets.elastic import ElasticMBConv
from natv2.nets.layers import ConvBNAct, MBConv, make_divisible
from natv2.nets.mbv3 import ConfigNet, Head, MBv3Spec, OFAMobileNetV3, Stem
from natv2.space import SearchSpace
from natv2.variants import BRANCH_KEYS, OFAV2_VARIANTS, VariantFeatures, features

OUTPUTS = ("list", "weighted")  # multi-exit forward: every exit's logits, or their weighted sum


# ------------------------------------------------------------------------------------- layers


class PoolBranch(ConvBNAct):
    """OFAv2's ``TransformationLayer`` (``stat_layers.py:50-85``): [max-pool] -> [1x1 conv] -> BN -> act.

    Max-pool (kernel = stride = the block's stride, ceil mode) only when the block strides; the
    1x1 conv (with bias, as ``nn.Conv2d``'s default) only when the width changes.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, act: str) -> None:
        super().__init__(in_chs, out_chs, 1, act=act, bias=True)
        if in_chs == out_chs:
            self.conv = nn.Identity()
        self.pool = nn.MaxPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pool(x))


def _branches_on(branches: int) -> tuple[bool, bool, bool]:
    if branches not in BRANCH_KEYS:
        raise ValueError(f"parallel block branches {branches}: expected a key in 1..7")
    return BRANCH_KEYS[branches]


class ParallelBlock(nn.Module):
    """Static parallel block: the sum of the active branches among MBConv, 1x1 conv, pool.

    ``mbconv`` is the MBConv's config (it also gives the widths, stride and activation of the
    other branches, and is kept when the MBConv branch is off); ``branches`` the branch-set key.
    """

    def __init__(self, mbconv: Mapping[str, Any], branches: int) -> None:
        super().__init__()
        use_mb, use_conv, use_pool = _branches_on(int(branches))
        self.branches = int(branches)
        self._mbconv_cfg = dict(mbconv)
        m = self._mbconv_cfg
        self.mbconv = MBConv(**m) if use_mb else None
        self.conv = ConvBNAct(m["in_chs"], m["out_chs"], 1, m["stride"], act=m["act"]) if use_conv else None
        self.pool = PoolBranch(m["in_chs"], m["out_chs"], m["stride"], m["act"]) if use_pool else None

    def config(self) -> dict:
        return {"mbconv": dict(self._mbconv_cfg), "branches": self.branches}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # OFAv2 dyn_stages.py:300-311: branch results summed in branch order
        ys = [branch(x) for branch in (self.mbconv, self.conv, self.pool) if branch is not None]
        y = ys[0]
        for other in ys[1:]:
            y = y + other
        return y


class ElasticParallelBlock(nn.Module):
    """An elastic MBConv with the two static parallel branches; ``active_branches`` say which run."""

    def __init__(self, in_chs: int, out_chs: int, *, branch_keys: tuple[int, ...], **mbconv: Any) -> None:
        super().__init__()
        self.branch_keys = tuple(branch_keys)
        self.mbconv = ElasticMBConv(in_chs, out_chs, **mbconv)
        stride, act = mbconv["stride"], mbconv["act"]
        # the extra branches have no elastic dimension (as in OFAv2): every block holds all three
        self.conv = ConvBNAct(in_chs, out_chs, 1, stride, act=act)
        self.pool = PoolBranch(in_chs, out_chs, stride, act)
        self.active_branches = max(self.branch_keys)

    def set_active(self, kernel: int, expand: int, branches: int | None = None) -> None:
        self.mbconv.set_active(kernel, expand)
        if branches is not None:
            if branches not in self.branch_keys:
                raise ValueError(f"branches {branches} not in {self.branch_keys}")
            self.active_branches = int(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = BRANCH_KEYS[self.active_branches]
        ys = [branch(x) for branch, use in zip((self.mbconv, self.conv, self.pool), on) if use]
        y = ys[0]
        for other in ys[1:]:
            y = y + other
        return y

    def active_config(self) -> dict:
        return {"mbconv": self.mbconv.active_config(), "branches": self.active_branches}

    @torch.no_grad()
    def extract(self) -> ParallelBlock:
        block = ParallelBlock(self.mbconv.active_config(), self.active_branches)
        if block.mbconv is not None:
            block.mbconv = self.mbconv.extract()
        if block.conv is not None:
            block.conv.load_state_dict(self.conv.state_dict())
        if block.pool is not None:
            block.pool.load_state_dict(self.pool.state_dict())
        return block

    def reorder_channels(self) -> None:
        # the branches have no hidden channels; only the MBConv's are sorted
        self.mbconv.reorder_channels()


def dense_input(d: int, outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """OFAv2's ``get_input_tensor`` (``common_tools.py:29-42``) without its in-place add.

    ``outs`` = [x, o1, .., o_d]; d <= 2 gives ``outs[d]``, d >= 3 gives o_d + o1 + .. + o_{d-2}.
    """
    t = outs[d]
    for o in outs[1 : d - 1]:
        t = t + o
    return t


def run_stage(blocks: Sequence[nn.Module], x: torch.Tensor, dense: bool) -> torch.Tensor:
    """Run a stage's active blocks; ``dense`` wires them as OFAv2's dense stage (``dyn_stages.py:189-197``)."""
    if not dense:
        for block in blocks:
            x = block(x)
        return x
    outs = [x]
    for d, block in enumerate(blocks):
        outs.append(block(dense_input(d, outs)))
    return dense_input(len(blocks), outs)


def exit_widths(spec: MBv3Spec, stage_chs: int) -> tuple[int, int]:
    """(expand, mix) widths of the exit after a stage of ``stage_chs`` channels.

    OFA's head is 960/1280 after 160 channels (6x, 8x); earlier exits keep those ratios.
    """
    last = spec.stage_chs[-1]
    return (make_divisible(spec.head_mid * stage_chs / last, 8), make_divisible(spec.head_out * stage_chs / last, 8))


def _weights(stages: Sequence[int], weights: Sequence[float] | None) -> list[float]:
    """Exit-combination weights (natv2.exits): the original's defaults of ``stages`` unless given (one per exit)."""
    from natv2.exits import exit_weights, normalise

    if weights is None:
        return exit_weights(stages)
    if len(weights) != len(stages):
        raise Natv2Error(f"exit weights {list(weights)}: expected {len(stages)} (one per attached exit)")
    return normalise(weights)


# ------------------------------------------------------------------------------------- static


class OFAv2StaticNet(ConfigNet):
    """A static OFAv2 subnet: stem, stages (dense / parallel as configured), head or exits.

    ``config["exits"]`` (early-exit nets) lists the attached exit heads, each with its ``stage``
    (1-based); the stages run up to the deepest one. One exit: the forward returns its logits.
    Several: ``config["output"]`` = ``list`` returns every exit's logits (shallowest first),
    ``weighted`` their sum weighted by ``config["exit_weights"]`` (normalised; null = the
    original's default weights of those exits, natv2.exits).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = copy.deepcopy(dict(config))
        self._config = cfg
        self.variant = cfg["variant"]
        self.dense = bool(cfg["dense"])
        self.parallel = bool(cfg["parallel"])
        st = cfg["stem"]
        self.stem = Stem(3, st["chs"], st["block_chs"], st["stride"])
        make = (lambda b: ParallelBlock(b["mbconv"], int(b["branches"]))) if self.parallel else (lambda b: MBConv(**b))
        self.stages = nn.ModuleList(nn.ModuleList(make(b) for b in stage) for stage in cfg["stages"])
        self.head: nn.Module | None = None
        self.exits = nn.ModuleDict()
        self.exit_stages: list[int] = []  # 0-based stage index of each attached exit, in order
        if cfg.get("exits"):
            for ex in cfg["exits"]:
                s = int(ex["stage"]) - 1
                if not 0 <= s < len(self.stages):
                    raise ValueError(f"exit after stage {s + 1}, but the net has {len(self.stages)} stages")
                self.exits[str(s)] = Head(ex["in_chs"], ex["mid_chs"], ex["out_chs"], cfg["n_classes"], ex["dropout"])
                self.exit_stages.append(s)
            if self.exit_stages != sorted(set(self.exit_stages)):
                raise ValueError(f"exits {[s + 1 for s in self.exit_stages]}: expected distinct stages in ascending order")
            self.output = cfg.get("output", "list")
            if self.output not in OUTPUTS:
                raise ValueError(f"output {self.output!r}: expected one of {OUTPUTS}")
            self.exit_weights = _weights([s + 1 for s in self.exit_stages], cfg.get("exit_weights"))
        else:
            hd = cfg["head"]
            self.head = Head(hd["in_chs"], hd["mid_chs"], hd["out_chs"], cfg["n_classes"], hd["dropout"])

    @property
    def n_outputs(self) -> int:
        """Number of logits tensors the forward returns (1 unless a multi-exit ``list`` net)."""
        return len(self.exit_stages) if self.head is None and self.output == "list" else 1

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every attached exit (or of the head), shallowest first."""
        return self._exits_after_stem(self.stem(x))

    def _exits_after_stem(self, x: torch.Tensor, heads_to_bn: bool = False) -> list[torch.Tensor]:
        """Logits of every exit (or the head) from the stem's output ``x``; with ``heads_to_bn``
        each exit / head runs only its expand conv + BN (its last BN layer) and that is returned."""
        outs: list[torch.Tensor] = []
        for s, stage in enumerate(self.stages):
            x = run_stage(stage, x, self.dense)
            if str(s) in self.exits:
                head = self.exits[str(s)]
                outs.append(head.expand(x) if heads_to_bn else head(x))
        if self.head is not None:
            outs.append(self.head.expand(x) if heads_to_bn else self.head(x))
        return outs

    def _combine(self, outs: list[torch.Tensor]):
        if len(outs) == 1:
            return outs[0]
        if self.output == "list":
            return outs
        return sum(w * z for w, z in zip(self.exit_weights, outs))

    def forward(self, x: torch.Tensor):
        return self._combine(self.forward_exits(x))

    def forward_after_stem(self, x: torch.Tensor):
        """``forward`` given the stem's output ``x`` (natv2.evaluate's stem cache)."""
        return self._combine(self._exits_after_stem(x))

    def forward_to_last_bn(self, x: torch.Tensor, *, after_stem: bool = False) -> list[torch.Tensor]:
        """The forward up to the last BN layer of every exit / the head (what BN recalibration
        needs to run). ``after_stem``: ``x`` is the stem's output."""
        return self._exits_after_stem(x if after_stem else self.stem(x), heads_to_bn=True)

    def with_exits(self, stages: Sequence[int], *, weights: Sequence[float] | None = None,
                   output: str = "weighted") -> "OFAv2StaticNet":
        """A copy keeping only the exits after ``stages`` (1-based) and the stages they need."""
        keep = sorted(int(s) for s in stages)
        have = [s + 1 for s in self.exit_stages]
        if not keep or any(s not in have for s in keep):
            raise Natv2Error(f"exits {keep}: expected a non-empty subset of the attached exits {have}")
        cfg = self.config
        cfg["exits"] = [ex for ex in cfg["exits"] if int(ex["stage"]) in keep]
        cfg["stages"] = cfg["stages"][: keep[-1]]
        cfg["output"] = output
        cfg["exit_weights"] = None if weights is None else list(map(float, weights))
        net = type(self)(cfg)
        own = self.state_dict()
        net.load_state_dict({k: own[k] for k in net.state_dict()})
        p = next(self.parameters())
        return net.to(p.device).train(self.training)


# ------------------------------------------------------------------------------------- supernet


class OFAv2MobileNetV3(OFAMobileNetV3):
    """An OFAv2 supernet: the OFA MobileNetV3 with early exits, dense skips and/or parallel blocks."""

    static_class = OFAv2StaticNet

    def __init__(self, spec: MBv3Spec, space: SearchSpace, n_classes: int, feats: VariantFeatures) -> None:
        # plain attributes, read by the construction hooks the base constructor calls
        self.variant = feats.name
        self.feats = feats
        self.dense, self.parallel, self.early_exits = feats.dense, feats.parallel, feats.early_exits
        super().__init__(spec, space, n_classes)
        # joint training of the exits (OFAv2 full phase, warm-up): forward returns exits 1..active
        self.joint_exits = False

    def _block(self, in_chs: int, out_chs: int, **kw: Any) -> nn.Module:
        if self.parallel:
            return ElasticParallelBlock(in_chs, out_chs, branch_keys=self.space.branch_keys, **kw)
        return ElasticMBConv(in_chs, out_chs, **kw)

    def _add_heads(self, in_chs: int, n_classes: int) -> None:
        if self.early_exits:
            spec = self.spec
            self.exits = nn.ModuleList(
                Head(c, *exit_widths(spec, c), n_classes, spec.dropout) for c in spec.stage_chs
            )
        else:
            super()._add_heads(in_chs, n_classes)

    @property
    def config(self) -> dict[str, Any]:
        cfg = super().config
        cfg["levels"] = list(self.space.levels)
        return cfg

    def _head_device(self) -> torch.device:
        return self.stem.first.conv.weight.device

    # ------------------------------------------------------------------ active subnet

    def set_active(self, genome: Any) -> None:
        g = self.space.validate(genome)
        arch = self.space.decode(g)
        for s, blocks in enumerate(arch.stages):
            self.active_depths[s] = len(blocks)
            for b, (k, e) in enumerate(blocks):
                if self.parallel:
                    self.stages[s][b].set_active(k, e, arch.branches[s][b])
                else:
                    self.stages[s][b].set_active(k, e)
        self.active_exit = arch.exit
        self.active_genome = g

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        last = self.active_exit if self.early_exits else self.space.n_stages
        for s in range(last):
            x = run_stage(self.stages[s][: self.active_depths[s]], x, self.dense)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.early_exits and self.joint_exits:
            return self.forward_exits(x)
        x = self.forward_features(x)
        return self.exits[self.active_exit - 1](x) if self.early_exits else self.head(x)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of exits 1..active_exit of the active subnet, shallowest first (one pass).

        The output of OFAv2's full net trained on all exits at once
        (``OFA_mbv3_extended/run_manager/early_exit_run_manager.py:311-324``).
        """
        if not self.early_exits:
            raise Natv2Error(f"forward_exits: the {self.variant} supernet has no early exits")
        x = self.stem(x)
        outs = []
        for s in range(self.active_exit):
            x = run_stage(self.stages[s][: self.active_depths[s]], x, self.dense)
            outs.append(self.exits[s](x))
        return outs

    # ------------------------------------------------------------------ extraction

    @staticmethod
    def _head_config(head: Head, dropout: float) -> dict[str, Any]:
        return {
            "in_chs": head.expand.conv.in_channels,
            "mid_chs": head.expand.conv.out_channels,
            "out_chs": head.mix.conv.out_channels,
            "dropout": dropout,
        }

    def active_config(self, exits: Sequence[int] | None = None) -> dict[str, Any]:
        """Static config of the active subnet; ``exits`` (1-based) overrides the genome's exit."""
        arch = self.space.decode(self.active_genome)
        first = self.stem.first.conv
        if self.early_exits:
            exits = [arch.exit] if exits is None else sorted(int(e) for e in exits)
            n_run = exits[-1]
        else:
            n_run = self.space.n_stages
        cfg: dict[str, Any] = {
            "variant": self.variant,
            "n_classes": self.n_classes,
            "resolution": arch.resolution,
            "width": arch.width,
            "genome": self.space.to_string(self.active_genome),
            "dense": self.dense,
            "parallel": self.parallel,
            "stem": {"chs": first.out_channels, "block_chs": self.spec.stem_block_chs, "stride": first.stride[0]},
            "stages": [
                [self.stages[s][b].active_config() for b in range(self.active_depths[s])] for s in range(n_run)
            ],
        }
        if self.early_exits:
            cfg["exits"] = [{"stage": e, **self._head_config(self.exits[e - 1], self.spec.dropout)} for e in exits]
            cfg["output"] = "list"
            cfg["exit_weights"] = None
        else:
            cfg["head"] = self._head_config(self.head, self.spec.dropout)
        return cfg

    @torch.no_grad()
    def extract(self, genome: Any | None = None, *, all_exits: bool = False,
                exits: Sequence[int] | None = None) -> OFAv2StaticNet:
        """A static net equal to the subnet ``genome`` (default: the active one).

        Early-exit supernets: the genome's exit by default; ``all_exits=True`` attaches every
        exit (forward returns the list of their logits, shallowest first); ``exits`` attaches
        the given ones (1-based, e.g. the chosen exit and all later ones for AEP).
        """
        if (all_exits or exits is not None) and not self.early_exits:
            raise Natv2Error(f"extract: the {self.variant} supernet has no early exits")
        previous = self.active_genome
        if genome is not None:
            self.set_active(genome)
        try:
            if all_exits:
                exits = range(1, self.space.n_stages + 1)
            if exits is not None:
                exits = sorted({int(e) for e in exits})
                if not exits or exits[0] < 1 or exits[-1] > self.space.n_stages:
                    raise Natv2Error(f"extract: exits {exits}: expected values in 1..{self.space.n_stages}")
            net = self.static_class(self.active_config(exits))
            net.stem.load_state_dict(self.stem.state_dict())
            for s, stage in enumerate(net.stages):
                for b in range(len(stage)):
                    stage[b] = self.stages[s][b].extract()
            if self.early_exits:
                for s in net.exit_stages:
                    net.exits[str(s)].load_state_dict(self.exits[s].state_dict())
            else:
                net.head.load_state_dict(self.head.state_dict())
        finally:
            self.set_active(previous)
        return net.to(self._head_device()).train(self.training)

    def reset_classifier(self, n_classes: int, generator: torch.Generator | None = None) -> None:
        heads = list(self.exits) if self.early_exits else [self.head]
        for head in heads:
            head.reset_classifier(n_classes, generator)
        self.n_classes = n_classes


def build_ofav2(cfg: Any, n_classes: int) -> OFAv2MobileNetV3:
    """Registry builder: the OFAv2 supernet named by ``cfg.variant``."""
    get = partial(setting, cfg)
    feats = features(get("variant"))
    space = SearchSpace.from_config(cfg)  # derives the exit gene and the branch sets from the variant
    # stem_stride and dropout: MBv3Spec's defaults (OFA's, as the schema's) unless the config sets them
    given = {k: cast(get(k)) for k, cast in (("stem_stride", int), ("dropout", float)) if get(k) is not None}
    spec = MBv3Spec(width_mult=space.widths[0], **given)
    return OFAv2MobileNetV3(spec, space, n_classes, feats)


__all__ = [
    "ElasticParallelBlock",
    "OFAV2_VARIANTS",
    "OFAv2MobileNetV3",
    "OFAv2StaticNet",
    "ParallelBlock",
    "PoolBranch",
    "dense_input",
    "build_ofav2",
    "run_stage",
]
