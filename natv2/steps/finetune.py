"""``natv2 finetune``: NATv2 two-step fine-tune of ONE front member, tested and exported.

    natv2 finetune --data results/cifar10/data/split.json --supernet results/cifar10/search/iter3/supernet.pt \
        --front results/cifar10/front.csv --id 7 --out results/cifar10/nets/7

Writes the member's directory whole or not at all: weights.pt, config.json, model.ts (see
natv2.export) and metrics.json (test top-1 before and after fine-tuning, val top-1, params,
MACs, latency, the best epoch and the val curve). Every column but the ``search_*`` ones
describes the exported net (for early-exit members the AEP net, its genome's exit gene its
deepest kept exit); ``search_*`` are those of the single-exit net the search chose. A killed job resumes from the hidden
folder ``.{id}.state`` beside the output (removed once the member is written). One job per
member: a failing member leaves the others' directories untouched.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("finetune", help="two-step fine-tune (NATv2) of one front member; test; export")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the dataset")
    p.add_argument("--supernet", required=True, metavar="PT", help="the supernet checkpoint the front was searched on")
    p.add_argument("--front", required=True, metavar="CSV", help="front.csv (columns id, genome)")
    p.add_argument("--id", required=True, help="id of the front member to fine-tune")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory of the member (nets/{id})")
    p.set_defaults(func=run)


def front_member(front, member_id: str, source: str) -> dict:
    """The row of ``front`` whose ``id`` is ``member_id``, as a dict."""
    from natv2.errors import Natv2Error

    if len(front) == 0:
        raise Natv2Error(f"{source}: the front is empty")
    for column in ("id", "genome"):
        if column not in front.columns:
            raise Natv2Error(f"{source}: column {column!r} missing")
    rows = front[front["id"].astype(str) == str(member_id)]
    if len(rows) != 1:
        raise Natv2Error(f"{source}: {len(rows)} rows with id {member_id!r}, expected exactly 1")
    return rows.iloc[0].to_dict()


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import shutil
    import time
    from pathlib import Path

    from natv2.config import settings_from_args
    from natv2.costs import count_macs, count_params, measure_latency
    from natv2.data import load_data
    from natv2.evaluate import recalibrate_bn, top1
    from natv2.export import export_network
    from natv2.exits import exit_weights
    from natv2.finetune import FinetuneState, aep_exits, aep_finetune, two_step_finetune
    from natv2.io import check_writable, read_csv, write_json
    from natv2.nets.checkpoint import check_classes, load_supernet
    from natv2.resume import fingerprint, split_files
    from natv2.rng import torch_stream

    import sys

    log = logging.getLogger("natv2.finetune")
    progress = sys.stderr.isatty()  # bars on a terminal, log lines with rates in a job's log file
    t0 = time.perf_counter()
    settings = settings_from_args(args)
    cfg = settings.finetune
    member = front_member(read_csv(args.front), args.id, args.front)
    check_writable(args.out, directory=True)  # before the training, not after it
    device = settings.torch_device()
    data = load_data(Path(args.data))
    supernet, _meta = load_supernet(args.supernet)
    check_classes(supernet, data.n_classes, args.supernet, args.data)
    supernet = supernet.to(device).eval()
    space = supernet.space
    genome = space.from_string(str(member["genome"]))
    resolution = int(space.decode(genome).resolution)
    early_exit = bool(getattr(space, "n_exits", 0))
    common = dict(resolution=resolution, mean=data.mean, std=data.std, batch_size=cfg.batch_size, device=device)
    bn_images = data.train.subset(cfg.bn_images, torch_stream(settings.seed, "bn-images")) if cfg.bn_images else None

    def extract():
        """A fresh copy of the member with the supernet's weights and its own BN statistics."""
        net = supernet.extract(genome).to(device)
        if bn_images is not None:
            recalibrate_bn(net, bn_images, **common)
        return net.eval()

    def extract_with_exits(exits=None):
        """For AEP: the member's body with exits 1..nd (or ``exits``) attached, forward = their logits."""
        net = supernet.extract(genome, exits=aep_exits(space, genome) if exits is None else exits).to(device)
        if bn_images is not None:
            recalibrate_bn(net, bn_images, **common)
        return net.eval()

    # part of val stays out of step 2: the ensembles are chosen, and compared with this net, on it
    val_fit, val_select = data.holdout(cfg.selection_holdout, settings.seed)
    out = Path(args.out)
    state = FinetuneState(out.parent / f".{out.name}.state", fingerprint(
        {"supernet": args.supernet, **split_files(args.data)},
        {"genome": str(member["genome"]), "seed": settings.seed, "finetune": cfg, "data": settings.data},
    ))

    # the net the search chose (single exit), kept as the search-time columns
    searched = extract()
    search = {"search_genome": str(member["genome"]), "search_val_top1": float(top1(searched, data.val, **common)),
              "search_test_top1": float(top1(searched, data.test, **common))}
    searched = searched.to("cpu")
    search.update(search_params=int(count_params(searched)), search_macs=int(count_macs(searched, resolution)))
    log.info("member %s: searched net val %.2f %%, test %.2f %%", args.id, search["search_val_top1"],
             search["search_test_top1"])
    del searched

    kwargs = dict(resolution=resolution, device=device, seed=settings.seed, step2_images=data.trainval(val_fit),
                  state=state, progress=progress)
    exported_genome = str(member["genome"])
    if early_exit:  # NATv2's AEP: exits 1..nd, weighted sum of their logits
        result = aep_finetune(extract_with_exits, data, cfg, **kwargs)
        # every column describes the exported net: its genome's exit is its deepest kept exit,
        # its before-fine-tune accuracies those of the same exits fresh from the supernet
        g = genome.copy()
        g[space.exit_position] = result.exits[-1]
        exported_genome = space.to_string(g)
        before = extract_with_exits(result.exits).with_exits(result.exits, weights=exit_weights(result.exits),
                                                              output="weighted").eval()
        val_before, test_before = top1(before, data.val, **common), top1(before, data.test, **common)
        del before
    else:
        result = two_step_finetune(extract, data, cfg, **kwargs)
        val_before, test_before = search["search_val_top1"], search["search_test_top1"]
    log.info("member %s: before fine-tune val %.2f %%, test %.2f %%", args.id, val_before, test_before)
    net = result.model.eval()
    test_after = top1(net, data.test, **common)
    select_after = top1(net, val_select, **common)
    log.info("member %s: after fine-tune test %.2f %%, held-out val %.2f %% (best epoch %d)", args.id, test_after,
             select_after, result.best_epoch)

    cpu_net = net.to("cpu")
    metrics = {
        "id": str(args.id),
        "genome": exported_genome,
        "resolution": resolution,
        "params": int(count_params(cpu_net)),
        "macs": int(count_macs(cpu_net, resolution)),
        "latency_ms": float(measure_latency(net.to(device), resolution, batch_size=cfg.latency_batch_size,
                                            repeats=cfg.latency_repeats, warmup=3, device=device,
                                            min_time=settings.evaluation.latency_min_time,
                                            threads=settings.evaluation.latency_threads)),
        "latency_device": str(device),
        "val_top1": float(val_before),
        "test_top1": float(test_before),
        "test_top1_finetuned": float(test_after),
        "finetune_gain": float(test_after - test_before),
        # top-1 on the part of val that step 2 did not train on (where the ensembles are chosen)
        "select_top1_finetuned": float(select_after),
        "select_images": len(val_select),
        **search,
        **result.summary(),
        "seconds": time.perf_counter() - t0,
    }
    # build the directory next to its final name, then rename it into place (whole or not at all)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        export_network(net.to("cpu"), tmp, classes=data.classes, resolution=resolution, mean=data.mean, std=data.std,
                       extra={"id": str(args.id), "genome": exported_genome, "image_size": int(data.image_size)})
        write_json(tmp / "metrics.json", metrics)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    state.remove()  # the member is done: its resume state has served
    print(f"{args.id}: test top-1 {test_before:.2f} % -> {test_after:.2f} % after {result.step2_epochs} epochs on "
          f"train + {len(val_fit)} of {len(data.val)} val images")
    return 0
