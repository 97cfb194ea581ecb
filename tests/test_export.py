"""Exported networks: reloaded three ways with the same logits; ensembles; `natv2 predict`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import natv2
from natv2.cli import main
from natv2.errors import Natv2Error
from natv2.export import export_ensemble, export_network, load_config, load_network, load_onnx, load_torchscript

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class{i}" for i in range(10)]
N_CLASSES = len(CLASSES)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny convolutions: a second OpenMP thread only adds contention on a shared 2-core machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_net(resolution=32, largest=False, seed=0, n_classes=N_CLASSES):
    from natv2.nets import build_supernet

    torch.manual_seed(seed)  # module init draws from the global generator
    supernet = build_supernet({"variant": "ofa_mbv3", "resolutions": [resolution], "widths": [1.0]}, n_classes)
    genome = supernet.space.largest() if largest else supernet.space.smallest()
    net = supernet.extract(genome)
    # non-trivial BN statistics, so a lost buffer would show in the logits
    with torch.no_grad():
        net.train()
        net(torch.randn(8, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)))
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("net") / "n0"
    net = small_net()
    export_network(net, out, classes=CLASSES, resolution=32, mean=MEAN, std=STD, extra={"id": "n0"})
    return net, out


def test_two_exports_of_a_net_give_identical_files(exported, tmp_path):
    net, out = exported
    export_network(net, tmp_path / "again", classes=CLASSES, resolution=32, mean=MEAN, std=STD, extra={"id": "n0"})
    # (model.ts: TorchScript numbers traced classes per process, so only separate runs compare)
    for name in ("weights.pt", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_the_torchscript_file_holds_no_path_of_the_exporting_machine(exported):
    """A trace records the absolute paths of the source files it ran; model.ts must not, or the same
    net exported from two checkouts (or venvs) differs in bytes (natv2.export._without_local_paths)."""
    import zipfile

    _, out = exported
    local = [str(REPO.resolve()), str(Path(natv2.__file__).resolve().parent), str(Path(torch.__file__).resolve().parent)]
    with zipfile.ZipFile(out / "model.ts") as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    assert any(name.endswith(".debug_pkl") for name in records)  # the messages' source ranges are still there
    leaks = [(name, where) for name, data in records.items() for where in local if where.encode() in data]
    assert leaks == []


def test_reloaded_three_ways_gives_the_same_logits(exported):
    net, out = exported
    assert {p.name for p in out.iterdir()} == {"weights.pt", "config.json", "model.ts", "model.onnx"}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = net(x)
        loaded = natv2.load_network(out)  # the package-level re-export
        ts = load_torchscript(out)
        hub = torch.hub.load(str(REPO), "natnet", source="local", path=str(out), trust_repo=True)
        outputs = [loaded(x), ts(x), hub(x)]
    assert not loaded.training and not hub.training
    for got in outputs:
        assert got.shape == (4, len(CLASSES))
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    config = load_config(out)
    assert config["classes"] == CLASSES and config["resolution"] == 32 and config["id"] == "n0"


def test_ensemble_export_averages_member_probabilities(tmp_path, exported):
    _, first = exported
    second_net = small_net(resolution=24, seed=5)
    second = export_network(second_net, tmp_path / "n1", classes=CLASSES, resolution=24, mean=MEAN, std=STD)
    ens_dir = export_ensemble([first, second], tmp_path / "e0", mode="parallel")
    ens = load_network(ens_dir)
    assert load_config(ens_dir)["resolution"] == 32 and load_config(ens_dir)["outputs"] == "probs"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = load_network(first)(x).softmax(1)
        b = second_net(torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)).softmax(1)
        expected = (a + b) / 2
        torch.testing.assert_close(ens(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(load_torchscript(ens_dir)(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(load_onnx(ens_dir)(x), expected, rtol=0, atol=1e-4)  # onnxruntime, same mean
    torch.testing.assert_close(ens(x).sum(1), torch.ones(3))
    with pytest.raises(Natv2Error, match="at least 2"):
        export_ensemble([first], tmp_path / "e1")


def test_predict_prints_top_classes_and_reports_unreadable_images(tmp_path, exported, capsys):
    from PIL import Image

    _, out = exported
    rng = np.random.default_rng(0)
    good = tmp_path / "cat.png"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    gray = tmp_path / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(gray)
    rc = main(["predict", "--net", str(out), "--top", "3", str(good), str(bad), str(gray)])
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(good), str(gray)]
    assert all(len(line.split(": ", 1)[1].split(", ")) == 3 for line in lines)
    assert all(line.split(": ", 1)[1].split(" ")[0] in CLASSES for line in lines)
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "broken.png" in errors[0] and "cannot read" in errors[0]


def test_missing_or_corrupt_exports_are_one_line_errors(tmp_path, exported):
    _, out = exported
    with pytest.raises(Natv2Error, match="not an exported network directory"):
        load_network(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.ts"):
        (broken / name).write_bytes((out / name).read_bytes())
    (broken / "weights.pt").write_bytes((out / "weights.pt").read_bytes()[:100])  # truncated
    with pytest.raises(Natv2Error, match="weights.pt.*not a readable checkpoint"):
        load_network(broken)
    (broken / "weights.pt").unlink()
    with pytest.raises(Natv2Error, match="weights.pt: checkpoint not found"):
        load_network(broken)
    other = tmp_path / "other"
    export_network(small_net(n_classes=3), other, classes=CLASSES[:3], resolution=32, mean=MEAN, std=STD)
    (broken / "weights.pt").write_bytes((other / "weights.pt").read_bytes())  # weights of another net
    with pytest.raises(Natv2Error, match="does not match config.json's network: .*classifier.*shape"):
        load_network(broken)
    rc = main(["predict", "--net", str(tmp_path / "nowhere"), "x.png"])
    assert rc == 2


def _copy_with(tmp_path: Path, src: Path, name: str, **changes) -> Path:
    """A copy of the export ``src`` whose config.json has ``changes`` (None deletes a key)."""
    import json
    import shutil

    dst = tmp_path / name
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("changes, message", [
    ({"resolution": 0}, r"resolution 0: expected a positive whole number"),
    ({"resolution": "32"}, r"resolution '32': expected a positive whole number"),
    ({"std": [0.2, 0.0, 0.3]}, r"std \[0.2, 0.0, 0.3\]: expected 3 finite numbers above 0"),
    ({"mean": [0.5, 0.5]}, r"mean \[0.5, 0.5\]: expected 3 finite numbers"),
    ({"classes": CLASSES[:3]}, r"3 classes listed, but the network predicts \(10,\) scores"),
    ({"classes": []}, r"classes: expected a non-empty list"),
])
def test_load_network_refuses_a_degenerate_config(tmp_path, exported, changes, message):
    _, out = exported
    bad = _copy_with(tmp_path, out, "bad", **changes)
    with pytest.raises(Natv2Error, match=message):
        load_network(bad)
    assert main(["predict", "--net", str(bad), "x.png"]) == 2


def test_load_network_refuses_a_degenerate_ensemble(tmp_path, exported):
    _, first = exported
    second = export_network(small_net(seed=5), tmp_path / "n1", classes=CLASSES, resolution=32, mean=MEAN, std=STD)
    ens = export_ensemble([first, second], tmp_path / "e0")
    assert load_network(ens) is not None
    with pytest.raises(Natv2Error, match=r"members None: an ensemble needs a list of at least 2 member folders"):
        load_network(_copy_with(tmp_path, ens, "no_members", members=None))
    # members must live inside the ensemble's own folder
    outside = _copy_with(tmp_path, ens, "outside", members=["m0", "../n1"])
    with pytest.raises(Natv2Error, match=r"member '\.\./n1' is outside the ensemble's folder"):
        load_network(outside)
    with pytest.raises(Natv2Error, match=r"member '/.*' is outside the ensemble's folder"):
        load_network(_copy_with(tmp_path, ens, "absolute", members=["m0", str(second.resolve())]))
    with pytest.raises(Natv2Error, match=r"member '\.' is outside the ensemble's folder"):
        load_network(_copy_with(tmp_path, ens, "itself", members=["m0", "."]))


@pytest.mark.parametrize("variant", ["SE_D", "EE_DP"])
def test_exported_ofav2_nets_keep_the_original_wiring(tmp_path, variant):
    """Exported dense / parallel nets rebuild with OFAv2's wiring: dense inputs x, o1, o2, o3 + o1
    and outputs o4 + o1 + o2 (``OFA_mbv3_extended/utils/common_tools.py:29-42``), per-block branch
    sets with blocks lacking the MBConv (``OFA_mbv3_extended/networks/stages/static_stages/stat_stages.py:173-186``
    static dense stage, ``:280-308`` static dense-parallel stage); reloaded and TorchScript logits
    equal the supernet's."""
    import dataclasses

    from natv2.nets import build_supernet

    torch.manual_seed(0)
    supernet = build_supernet({"variant": variant, "resolutions": [32], "stem_stride": 1}, len(CLASSES)).eval()
    space = supernet.space
    g = space.sample(1, np.random.default_rng(3), "natv2")[0]
    arch = space.decode(g)
    if arch.branches is not None:  # make sure some block runs without its MBConv
        arch = dataclasses.replace(arch, branches=((3,) + arch.branches[0][1:],) + arch.branches[1:])
        g = space.encode(arch)
    supernet.set_active(g)
    net = supernet.extract(g).eval()
    out = export_network(net, tmp_path / "n", classes=CLASSES, resolution=32, mean=MEAN, std=STD)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = supernet(x)
        for got in (load_network(out)(x), load_torchscript(out)(x)):
            torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)
    assert load_config(out)["net"]["dense"] == ("D" in variant)
    if "P" in variant:
        assert load_config(out)["net"]["stages"][0][0]["branches"] == 3


@pytest.mark.parametrize("variant", ["ofa_mbv3", "EE_B", "SE_P"])
def test_onnx_export_matches_torch_logits(tmp_path, variant):
    """model.onnx under onnxruntime gives torch's logits within 1e-4 (plain, early-exit, parallel-block)."""
    from net_helpers import randomize

    from natv2.nets import build_supernet

    torch.manual_seed(3)
    supernet = build_supernet({"variant": variant, "resolutions": [24], "widths": [1.0]}, len(CLASSES))
    genome = supernet.space.sample(1, np.random.default_rng(4), policy="natv2")[0]
    net = randomize(supernet.extract(genome), 5).eval()
    out = export_network(net, tmp_path / variant, classes=CLASSES, resolution=24, mean=MEAN, std=STD)
    x = torch.randn(5, 3, 24, 24, generator=torch.Generator().manual_seed(6))  # batch 5: dynamic axis
    with torch.no_grad():
        reference = net(x)
    got = load_onnx(out)(x)
    assert got.shape == (5, len(CLASSES))
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-4)


def test_predict_with_the_onnx_runtime_prints_the_same_classes(tmp_path, exported, capsys):
    from PIL import Image

    _, out = exported
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--net", str(out), "--top", "3", str(image)]) == 0
    torch_line = capsys.readouterr().out.strip()
    assert main(["predict", "--net", str(out), "--runtime", "onnx", "--top", "3", str(image)]) == 0
    onnx_line = capsys.readouterr().out.strip()
    assert [c.split(" ")[0] for c in onnx_line.split(": ", 1)[1].split(", ")] == \
        [c.split(" ")[0] for c in torch_line.split(": ", 1)[1].split(", ")]
    (out / "model.onnx").rename(tmp_path / "moved.onnx")
    try:
        with pytest.raises(Natv2Error, match="model.onnx: ONNX file not found"):
            load_onnx(out)
    finally:
        (tmp_path / "moved.onnx").rename(out / "model.onnx")
