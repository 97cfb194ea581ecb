"""Supernets: registry, elastic forward == extracted static net, configs, checkpoints, official weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from net_helpers import randomize

from natv2.errors import Natv2Error
from natv2.nets import SUPERNETS, build_supernet, official, static_from_config
from natv2.nets.checkpoint import load_static, load_supernet, save_static, save_supernet
from natv2.nets.elastic import ElasticMBConv

CFG = {"variant": "ofa_mbv3", "resolutions": [32, 40], "stem_stride": 1}


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return randomize(build_supernet(CFG, 10), 1).eval()


@pytest.mark.parametrize("variant", sorted(SUPERNETS))
def test_registry_forward_backward(variant):
    torch.manual_seed(0)
    net = build_supernet({**CFG, "resolutions": [32], "variant": variant}, 7)
    space = net.space
    for g in (space.largest(), space.sample(1, np.random.default_rng(0), "natv2")[0]):
        net.set_active(g)
        res = space.decode(g).resolution
        out = net(torch.randn(2, 3, res, res))
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        out.square().mean().backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        net.zero_grad()


def test_extract_equals_dynamic_forward(supernet):
    space = supernet.space
    genomes = np.concatenate([space.sample(6, np.random.default_rng(3), "natv2"), [space.smallest(), space.largest()]])
    x_by_res = {r: torch.randn(3, 3, r, r, generator=torch.Generator().manual_seed(r)) for r in space.resolutions}
    for g in genomes:
        x = x_by_res[space.decode(g).resolution]
        supernet.set_active(g)
        with torch.no_grad():
            dyn = supernet(x)
            static = supernet.extract(g).eval()
            st = static(x)
            fused = static.fused()(x)
        assert dyn.abs().max() > 1e-3
        assert (dyn - st).abs().max().item() < 1e-5
        assert (dyn - fused).abs().max().item() < 1e-4  # BN folded: same function, other rounding
        # a plain module: no elastic layer inside, smaller than the supernet
        assert not any(isinstance(m, ElasticMBConv) for m in static.modules())
        assert [len(s) for s in static.stages] == list(space.decode(g).depths)


def test_extract_leaves_active_subnet_and_matches_in_train_mode(supernet):
    space = supernet.space
    g1, g2 = space.sample(2, np.random.default_rng(5), "natv2")
    supernet.set_active(g1)
    static = supernet.extract(g2)
    assert np.array_equal(supernet.active_genome, g1)
    # train mode (batch statistics): the same function too
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net = build_supernet(CFG, 10)
    net.load_state_dict(supernet.state_dict())
    net.set_active(g2)
    net.train()
    static = net.extract(g2).train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(0)
    b = static(x)
    assert (a - b).abs().max().item() < 1e-4


def test_static_config_json_round_trip(supernet, tmp_path):
    g = supernet.space.sample(1, np.random.default_rng(9), "natv2")[0]
    static = supernet.extract(g).eval()
    cfg = json.loads(json.dumps(static.config))
    assert cfg["variant"] == "ofa_mbv3" and cfg["resolution"] == supernet.space.decode(g).resolution
    assert cfg["genome"] == supernet.space.to_string(g)
    again = static_from_config(cfg)
    again.load_state_dict(static.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), static(x))
    save_static(tmp_path / "net.pt", static, {"id": "a"})
    loaded, meta = load_static(tmp_path / "net.pt")
    assert meta == {"id": "a"}
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), static(x))
    with pytest.raises(Natv2Error, match="variant 'nope'"):
        static_from_config({**cfg, "variant": "nope"})


def test_supernet_checkpoint_round_trip_and_bad_files(supernet, tmp_path):
    path = tmp_path / "super.pt"
    save_supernet(path, supernet, {"phase": "full"})
    net, meta = load_supernet(path)
    assert meta == {"phase": "full"} and net.space == supernet.space
    g = supernet.space.largest()
    x = torch.randn(2, 3, 40, 40)
    net.eval().set_active(g)
    supernet.set_active(g)
    with torch.no_grad():
        assert torch.equal(net(x), supernet(x))
    # truncated file -> clear error, never a partial load
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(Natv2Error, match="truncated.pt: not a readable checkpoint"):
        load_supernet(bad)
    # keys / shapes that do not fit -> the first mismatches, listed
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["head.classifier.weight"] = torch.zeros(3, 1280)
    del obj["state_dict"]["stages.0.0.dw.conv.weight"]
    obj["state_dict"]["bogus.key"] = torch.zeros(1)
    torch.save(obj, tmp_path / "mismatch.pt")
    with pytest.raises(Natv2Error) as err:
        load_supernet(tmp_path / "mismatch.pt")
    msg = str(err.value)
    assert "missing stages.0.0.dw.conv.weight" in msg
    assert "head.classifier.weight: shape (3, 1280) in file, (10, 1280) expected" in msg
    assert "unexpected bogus.key" in msg
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(Natv2Error, match="not a natv2-supernet checkpoint"):
        load_supernet(tmp_path / "other.pt")


def test_bad_genomes_are_rejected(supernet):
    with pytest.raises(Natv2Error, match="expected 22 genes"):
        supernet.set_active([1, 2, 3])
    g = supernet.space.largest()
    g[2] = 0
    with pytest.raises(Natv2Error, match=r"position 2 \(stage 1 block 1\)"):
        supernet.extract(g)


def test_reorder_channels_keeps_the_largest_subnet_and_ranks_channels():
    torch.manual_seed(0)
    net = randomize(build_supernet(CFG, 10), 2).eval()
    g = net.space.largest()
    net.set_active(g)
    x = torch.randn(2, 3, 32, 32)
    block = net.stages[1][0]
    importance = block.project.conv.weight.abs().sum(dim=(0, 2, 3))
    small_mid = block.mid_channels(3)
    top = set(torch.topk(importance, small_mid).indices.tolist())
    before_w = block.project.conv.weight.detach().clone()
    with torch.no_grad():
        before = net(x)
        net.reorder_channels()
        after = net(x)
    assert (before - after).abs().max().item() < 1e-5
    new_importance = block.project.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(new_importance[:-1] >= new_importance[1:])  # sorted, most important first
    # the leading channels (used by expand ratio 3) are the originally most important ones
    lead = {int(torch.nonzero((before_w == block.project.conv.weight[:, i : i + 1]).all(0).flatten())[0]) for i in range(small_mid)}
    assert lead == top


def test_stem_stride_and_width():
    torch.manual_seed(0)
    s1 = build_supernet({**CFG, "stem_stride": 1}, 10).eval()
    s2 = build_supernet({**CFG, "stem_stride": 2}, 10).eval()
    assert sum(p.numel() for p in s1.parameters()) == sum(p.numel() for p in s2.parameters())
    x = torch.randn(1, 3, 32, 32)
    assert s1.forward_features(x).shape[-1] == 2 and s2.forward_features(x).shape[-1] == 1
    w12 = build_supernet({**CFG, "widths": [1.2]}, 10)
    assert w12.stages[0][0].out_chs == 32 and s1.stages[0][0].out_chs == 24  # make_divisible(24 * 1.2)
    with pytest.raises(Natv2Error, match="supernet.variant 'nope'"):
        build_supernet({**CFG, "variant": "nope"}, 10)
    from natv2.nets.mbv3 import MBv3Spec, OFAMobileNetV3
    from natv2.space import SearchSpace

    with pytest.raises(Natv2Error, match="one supernet holds one width"):
        OFAMobileNetV3(MBv3Spec(width_mult=1.0), SearchSpace(widths=(1.0, 1.2)), 10)


def test_kernel_transform_starts_as_centre_crop():
    torch.manual_seed(0)
    net = build_supernet(CFG, 10)
    conv = net.stages[0][0].dw.conv
    w = conv.filter(conv.weight.shape[0], 3)
    assert torch.allclose(w, conv.weight[:, :, 2:5, 2:5])
    assert conv.filter(8, 5).shape == (8, 1, 5, 5)


# ------------------------------------------------------------------------------------ official weights


def _ofa_layout_file(tmp_path, n_classes=1000):
    """A checkpoint in the official layout (their OFAMobileNetV3, random weights)."""
    torch.manual_seed(0)
    ofa = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ofa.OFAMobileNetV3(n_classes=n_classes, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    path = tmp_path / "src" / "ofa_mbv3_d234_e346_k357_w1.0"
    path.parent.mkdir()
    torch.save({"state_dict": theirs.state_dict()}, path)
    return path, theirs


def test_fetch_official_from_a_local_mirror_records_and_checks_sha(tmp_path):
    src, _ = _ofa_layout_file(tmp_path)
    cache = tmp_path / "cache"
    name = "ofa_mbv3_d234_e346_k357_w1.0"
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / name).write_text("<html>404 not found</html>")  # a mirror serving an error page
    mirrors = ["file:///nonexistent/{name}", garbage.as_uri() + "/{name}", src.parent.as_uri() + "/{name}"]
    path = official.fetch_official(name, cache, mirrors)
    assert path == cache / name and path.read_bytes() == src.read_bytes()
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest[name]["sha256"]) == 64
    assert official.fetch_official(name, cache, []) == path  # cached: no mirror needed
    # a replaced / corrupt cached file is caught by the recorded hash
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupt!")
    with pytest.raises(Natv2Error, match="does not match the recorded"):
        official.fetch_official(name, cache, [])


def test_fetch_official_offline_says_where_to_place_the_file(tmp_path):
    name = "ofa_mbv3_d234_e346_k357_w1.2"
    with pytest.raises(Natv2Error, match=f"place the file at {tmp_path / name}"):
        official.fetch_official(name, tmp_path, ["file:///nonexistent/{name}"])
    with pytest.raises(Natv2Error, match="downloads are off; place the file at"):
        official.fetch_official(name, tmp_path, download=False)
    with pytest.raises(Natv2Error, match="expected one of"):
        official.fetch_official("ofa_mbv3_w9", tmp_path, [])


def test_official_supernet_new_head_and_bad_checkpoints(tmp_path):
    src, theirs = _ofa_layout_file(tmp_path)
    cfg = {"resolutions": [32], "stem_stride": 2, "widths": [1.0], "weights_dir": str(tmp_path / "cache"),
           "mirrors": [src.parent.as_uri() + "/{name}"], "download": True}
    net = official.official_supernet(cfg, 10, generator=torch.Generator().manual_seed(0))
    assert net.head.classifier.weight.shape == (10, 1280)
    assert torch.equal(net.stages[2][1].expand.conv.weight, theirs.blocks[10].conv.inverted_bottleneck.conv.conv.weight)
    assert torch.equal(net.stem.first.conv.weight, theirs.first_conv.conv.weight)
    # truncated file
    bad = tmp_path / "bad.pth"
    bad.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(Natv2Error, match="bad.pth: not a readable checkpoint"):
        official.load_official(bad, cfg, 10)
    # keys / shapes that do not fit: listed
    state = dict(theirs.state_dict())
    state["blocks.3.conv.point_linear.conv.conv.weight"] = torch.zeros(24, 5, 1, 1)
    del state["first_conv.conv.weight"]
    torch.save({"state_dict": state}, tmp_path / "mismatch.pth")
    with pytest.raises(Natv2Error) as err:
        official.load_official(tmp_path / "mismatch.pth", cfg, 10)
    assert "missing stem.first.conv.weight" in str(err.value)
    assert "stages.0.2.project.conv.weight: shape (24, 5, 1, 1) in file" in str(err.value)
    state = dict(theirs.state_dict())
    state["blocks.1.conv.weird_layer.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "unknown.pth")
    with pytest.raises(Natv2Error, match="not in the OFA MobileNetV3 layout: blocks.1.conv.weird_layer.weight"):
        official.load_official(tmp_path / "unknown.pth", cfg, 10)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(Natv2Error, match="'state_dict' entry"):
        official.load_official(tmp_path / "list.pth", cfg, 10)


def test_two_saves_of_a_supernet_give_identical_bytes(supernet, tmp_path):
    save_supernet(tmp_path / "a.pt", supernet, {"phase": "full"})
    save_supernet(tmp_path / "b.pt", supernet, {"phase": "full"})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


@pytest.mark.parametrize("key, value, why", [("variant", "nope", "supernet.variant 'nope'"),
                                             ("kernels", "x", "kernels: expected a list of int")])
def test_a_bad_config_stored_in_a_checkpoint_names_the_file(supernet, tmp_path, key, value, why):
    save_supernet(tmp_path / "super.pt", supernet)
    obj = torch.load(tmp_path / "super.pt", weights_only=True)
    obj["config"][key] = value
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(Natv2Error) as err:
        load_supernet(tmp_path / "bad.pt")
    assert str(err.value).startswith(f"{tmp_path / 'bad.pt'}: the network config stored in this checkpoint")
    assert why in str(err.value)
    static = supernet.extract(supernet.space.largest())
    save_static(tmp_path / "static.pt", static)
    obj = torch.load(tmp_path / "static.pt", weights_only=True)
    obj["config"]["stages"] = 3
    torch.save(obj, tmp_path / "bad_static.pt")
    with pytest.raises(Natv2Error, match=r"bad_static.pt: the network config stored in this checkpoint"):
        load_static(tmp_path / "bad_static.pt")


def test_fetch_official_over_http_checks_the_recorded_hash(tmp_path):
    """A local http.server mirror (torch.hub's download path); a re-download must match the recorded hash."""
    import functools
    import http.server
    import threading

    src, _ = _ofa_layout_file(tmp_path)
    name = src.name
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/{{name}}"
        cache = tmp_path / "cache"
        path = official.fetch_official(name, cache, [mirror])
        assert path.read_bytes() == src.read_bytes()
        # the hosted file changes: the recorded hash refuses the new download, in one line
        path.unlink()
        torch.save({"state_dict": {}}, src)
        with pytest.raises(Natv2Error, match="could not download .*invalid hash value") as err:
            official.fetch_official(name, cache, [mirror])
        assert "\n" not in str(err.value) and not path.exists()
    finally:
        server.shutdown()
        server.server_close()
