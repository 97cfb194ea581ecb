"""Exported networks: what a user takes home, and the one way to load it back.

An exported network is a directory::

    weights.pt    the state_dict (tensors only; loaded with weights_only=True)
    config.json   how to rebuild it: {"format": "natv2-network", "kind": "single", "class":
                  "StaticNet", "net": <StaticNet.config>, "classes", "resolution", "mean", "std"}
    model.ts      TorchScript (traced at ``resolution``), for use without natv2
    model.onnx    ONNX (opset ``ONNX_OPSET``, dynamic batch; input ``input``, output ``output``),
                  for onnxruntime and other runtimes: ``natv2 predict --runtime onnx``

An exported ensemble is a directory with ``config.json`` (``"kind": "ensemble"``, ``"members"``:
the sub-directory names, ``"mode"``), ``model.ts``, and one exported member per sub-directory.
Its module returns the **mean of the members' softmax probabilities**, not logits (a single
network returns logits); ``config.json`` says which in ``"outputs"``.

Inputs are float images normalised with the config's ``mean``/``std`` (in [0, 1] pixel units)
at ``resolution`` x ``resolution``; an ensemble resizes its input to each member's resolution.

    net = natv2.load_network("results/cifar10/nets/007")       # eval-mode nn.Module
    net = torch.hub.load("/path/to/natv2", "natnet", source="local", path="results/cifar10/nets/007")
"""
from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from natv2.errors import Natv2Error
from natv2.io import atomic_path, load_torch, read_json, save_torch, write_bytes, write_json

FORMAT = "natv2-network"
VERSION = 1
WEIGHTS, CONFIG, TORCHSCRIPT = "weights.pt", "config.json", "model.ts"
ONNX = "model.onnx"
#: ONNX opset of the exports: 17 has every op the nets use (hardswish, resize, ...) and is read
#: by every onnxruntime since 1.11
ONNX_OPSET = 17

# class name in config.json -> class with ``from_config(cfg)``, for networks that are not natv2
# static nets (natv2's own are rebuilt by natv2.nets.static_from_config from the config's variant)
_NETWORK_CLASSES: dict[str, Any] = {}


def register_network_class(name: str, cls: Any) -> None:
    """Allow ``config.json`` files whose ``class`` is ``name`` to be rebuilt with ``cls.from_config``."""
    _NETWORK_CLASSES[name] = cls


def _rebuild(config: Mapping[str, Any]):
    """The network described by an export's config (weights not loaded)."""
    name = config.get("class", "StaticNet")
    if name in _NETWORK_CLASSES:
        return _NETWORK_CLASSES[name].from_config(config["net"])
    from natv2.nets import static_from_config  # dispatches on config["net"]["variant"]

    return static_from_config(config["net"])


# --------------------------------------------------------------------------------------------
# the ensemble module


def _ensemble_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class EnsembleNet(nn.Module):
        """Mean of the members' softmax probabilities; each member sees the input at its resolution."""

        def __init__(self, members: Sequence[nn.Module], resolutions: Sequence[int]):
            super().__init__()
            if len(members) < 2:
                raise Natv2Error(f"ensemble: needs at least 2 members, got {len(members)}")
            self.members = nn.ModuleList(members)
            self.resolutions = [int(r) for r in resolutions]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            total = torch.zeros(0)
            for i, member in enumerate(self.members):
                r = self.resolutions[i]
                xi = x if x.shape[-1] == r and x.shape[-2] == r else F.interpolate(
                    x, size=(r, r), mode="bilinear", align_corners=False
                )
                p = member(xi).float().softmax(dim=1)
                total = p if i == 0 else total + p
            return total / len(self.members)

    return EnsembleNet


def EnsembleNet(members, resolutions):  # noqa: N802 - a class built lazily to keep torch out of import
    """An ``nn.Module`` averaging the members' probabilities (see module docstring)."""
    return _ensemble_module()(members, resolutions)


# --------------------------------------------------------------------------------------------
# export


def _trace(model, resolution: int, out: Path) -> None:
    import torch

    example = torch.zeros(1, 3, int(resolution), int(resolution))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export but is still the portable format
            # users load without natv2; the ensemble's resize branch is fixed at export time on purpose
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
            # in memory first: saved to a path, the archive records the (temporary) file name
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            write_bytes(out, _without_local_paths(buffer.getvalue()))
    finally:
        model.train(was_training)


def _without_local_paths(archive: bytes) -> bytes:
    """The TorchScript ``archive`` saved again with no path of the exporting machine in it.

    A trace keeps, for its error messages, the absolute path of every source file it ran through
    (the checkout, the venv, a home directory) in the archive's ``*.debug_pkl`` records: the same
    net exported from two checkouts differed in bytes, and the file told its users where the
    exporter kept its code. Loaded without those records and saved again, the archive points its
    messages at its own TorchScript code instead, and computes the same outputs.
    """
    import zipfile

    import torch

    source = zipfile.ZipFile(io.BytesIO(archive))
    stripped = io.BytesIO()
    with zipfile.ZipFile(stripped, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            if not info.filename.endswith(".debug_pkl"):
                target.writestr(info.filename, source.read(info))  # an intermediate: only torch reads it
    stripped.seek(0)
    module = torch.jit.load(stripped, map_location="cpu")
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _onnx(model, resolution: int, out: Path) -> None:
    """Write ``model`` as ONNX (TorchScript-based exporter, dynamic batch axis)."""
    import torch

    example = torch.zeros(1, 3, int(resolution), int(resolution))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), atomic_path(out) as tmp:
            # dynamo=False: the TorchScript exporter needs no onnxscript and handles these static nets
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        model.train(was_training)


def export_network(
    net,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``net`` (a module with ``.config`` and ``from_config``) as an exported directory."""
    if not hasattr(net, "config"):
        raise Natv2Error(f"export: {type(net).__name__} has no .config to rebuild it from")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "single",
        "class": type(net).__name__,
        "net": net.config,
        "outputs": "logits",
        "classes": [str(c) for c in classes],
        "resolution": int(resolution),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        **dict(extra or {}),
    }
    save_torch(out_dir / WEIGHTS, {k: v.detach().cpu() for k, v in net.state_dict().items()})
    _trace(net, resolution, out_dir / TORCHSCRIPT)
    _onnx(net, resolution, out_dir / ONNX)
    write_json(out_dir / CONFIG, config)  # last: a directory with config.json is complete
    return out_dir


def export_ensemble(member_dirs: Sequence[str | Path], out_dir: str | Path, *, mode: str = "parallel",
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Copy exported members into ``out_dir/m{i}`` and write the averaging ensemble beside them."""
    if len(member_dirs) < 2:
        raise Natv2Error(f"export_ensemble: needs at least 2 member directories, got {len(member_dirs)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configs, names = [], []
    for i, src in enumerate(member_dirs):
        cfg = load_config(src)
        if cfg["kind"] != "single":
            raise Natv2Error(f"{src}: an ensemble member must be a single exported network")
        name = f"m{i}"
        dst = out_dir / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(Path(src), dst)
        configs.append(cfg)
        names.append(name)
    classes = configs[0]["classes"]
    for src, cfg in zip(member_dirs, configs):
        if cfg["classes"] != classes:
            raise Natv2Error(f"{src}: classes differ from the first member's; members must share the label set")
    resolution = max(int(c["resolution"]) for c in configs)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "ensemble",
        "members": names,
        "sources": [str(s) for s in member_dirs],
        "mode": mode,
        "outputs": "probs",
        "classes": classes,
        "resolution": resolution,
        "mean": configs[0]["mean"],
        "std": configs[0]["std"],
        **({"image_size": configs[0]["image_size"]} if "image_size" in configs[0] else {}),
        **dict(extra or {}),
    }
    ensemble = _load_dir(out_dir, config)
    _trace(ensemble, resolution, out_dir / TORCHSCRIPT)
    _onnx(ensemble, resolution, out_dir / ONNX)
    write_json(out_dir / CONFIG, config)
    return out_dir


# --------------------------------------------------------------------------------------------
# load


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (CONFIG, WEIGHTS, TORCHSCRIPT, ONNX):
        path = path.parent
    if not path.is_dir():
        raise Natv2Error(f"{path}: not an exported network directory (expected {CONFIG}, {WEIGHTS}, {TORCHSCRIPT})")
    return path


def load_config(path: str | Path) -> dict:
    """The ``config.json`` of an exported network directory, checked."""
    path = _resolve(path)
    config = read_json(path / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise Natv2Error(f"{path / CONFIG}: not a natv2 network export (format must be {FORMAT!r})")
    for key in ("kind", "classes", "resolution", "mean", "std"):
        if key not in config:
            raise Natv2Error(f"{path / CONFIG}: key {key!r} missing")
    if config["kind"] not in ("single", "ensemble"):
        raise Natv2Error(f"{path / CONFIG}: kind {config['kind']!r}, expected single or ensemble")
    _check_values(config, path / CONFIG)
    return config


def _check_values(config: Mapping[str, Any], where: Path) -> None:
    """Refuse values that would load but predict nonsense later (NaN probabilities, wrong labels)."""
    import math

    def numbers(key: str) -> list[float] | None:
        v = config[key]
        ok = isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        return [float(x) for x in v] if ok and all(math.isfinite(x) for x in v) else None

    r = config["resolution"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise Natv2Error(f"{where}: resolution {r!r}: expected a positive whole number of pixels")
    if numbers("mean") is None:
        raise Natv2Error(f"{where}: mean {config['mean']!r}: expected 3 finite numbers (R, G, B)")
    std = numbers("std")
    if std is None or min(std) <= 0:
        raise Natv2Error(f"{where}: std {config['std']!r}: expected 3 finite numbers above 0 (R, G, B)")
    classes = config["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise Natv2Error(f"{where}: classes: expected a non-empty list of class names")
    if config["kind"] == "ensemble":
        members = config.get("members")
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) and m for m in members):
            raise Natv2Error(f"{where}: members {members!r}: an ensemble needs a list of at least 2 member folders")


def _member_dir(path: Path, name: str) -> Path:
    """``path/name``, refused unless it is a folder strictly inside the ensemble's folder."""
    member = (path / name).resolve()
    if member == path.resolve() or not member.is_relative_to(path.resolve()):
        raise Natv2Error(f"{path / CONFIG}: member {name!r} is outside the ensemble's folder {path}")
    return member


def _check_head(net, config: Mapping[str, Any], where: Path) -> None:
    """The net must predict one score per class of ``config["classes"]`` (one forward at its resolution)."""
    import torch

    r = int(config["resolution"])
    with torch.no_grad():
        out = net(torch.zeros(1, 3, r, r))
    out = out[-1] if isinstance(out, (list, tuple)) else out
    n = len(config["classes"])
    if out.ndim != 2 or out.shape[1] != n:
        raise Natv2Error(f"{where}: {n} classes listed, but the network predicts {tuple(out.shape[1:])} scores")


def _load_dir(path: Path, config: dict):
    if config["kind"] == "ensemble":
        dirs = [_member_dir(path, name) for name in config["members"]]
        members = [load_network(d) for d in dirs]
        for name, member in zip(config["members"], members):
            if member.natv2_config["classes"] != config["classes"]:
                raise Natv2Error(f"{path / CONFIG}: member {name!r} predicts other classes than the ensemble lists")
        return EnsembleNet(members, [m.natv2_config["resolution"] for m in members]).eval()
    try:
        net = _rebuild(config)
    except Natv2Error as e:
        raise Natv2Error(f"{path / CONFIG}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Natv2Error(f"{path / CONFIG}: 'net' does not describe a network ({type(e).__name__}: {e})") from None
    from natv2.nets.checkpoint import load_state_strict

    load_state_strict(net, load_torch(path / WEIGHTS), path / WEIGHTS, "does not match config.json's network")
    net.eval()
    _check_head(net, config, path / CONFIG)
    return net


def load_network(path: str | Path):
    """Load an exported network (or ensemble) directory as an eval-mode ``nn.Module``.

    The module gets ``natv2_config`` (the config.json dict: classes, resolution, mean, std, ...).
    """
    import torch

    path = _resolve(path)
    config = load_config(path)
    try:
        net = _load_dir(path, config)
    except RuntimeError as e:  # a torch error while loading weights: keep it to one line
        raise Natv2Error(f"{path}: cannot load the exported network ({str(e).splitlines()[0]})") from None
    if not isinstance(net, torch.nn.Module):
        raise Natv2Error(f"{path}: config.json did not rebuild an nn.Module")
    net.natv2_config = config
    return net


def load_torchscript(path: str | Path):
    """The exported TorchScript module (our own file; TorchScript is code, load only exports you trust)."""
    import torch

    path = _resolve(path)
    ts = path / TORCHSCRIPT
    if not ts.is_file():
        raise Natv2Error(f"{ts}: TorchScript file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(ts), map_location="cpu").eval()
    except RuntimeError as e:
        raise Natv2Error(f"{ts}: not a readable TorchScript file ({str(e).splitlines()[0]})") from None


class OnnxNetwork:
    """An exported ``model.onnx`` under onnxruntime, called like the torch module (tensor in, tensor out)."""

    def __init__(self, path: Path, config: Mapping[str, Any]) -> None:
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise Natv2Error(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
        self.natv2_config = dict(config)

    def __call__(self, x):
        import torch

        out = self.session.run(None, {"input": torch.as_tensor(x, dtype=torch.float32).contiguous().numpy()})[0]
        return torch.from_numpy(out)


def load_onnx(path: str | Path) -> OnnxNetwork:
    """The exported ONNX model of a network (or ensemble) directory, run by onnxruntime on the CPU."""
    path = _resolve(path)
    config = load_config(path)
    model = path / ONNX
    if not model.is_file():
        raise Natv2Error(f"{model}: ONNX file not found (exported before natv2 wrote ONNX? export it again)")
    return OnnxNetwork(model, config)


def preprocess(images, config: Mapping[str, Any]):
    """uint8 or [0, 1] float images (N, 3, H, W) -> normalised float at the export's resolution.

    Square-cropped at the centre, resized (bilinear, antialiased) and normalised with the export's
    mean/std; uint8 images first take the dataset cache's path when the export records ``image_size``.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(images)
    if x.dtype == torch.uint8 and "image_size" in config:
        # the path the training images took: fit to the dataset cache's size, then to the net's resolution
        from natv2.sources import fit_images

        x = fit_images(x, int(config["image_size"]))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    h, w = x.shape[-2:]
    if h != w:  # centre square crop, as the dataset cache does (natv2.sources.fit_images)
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    r = int(config["resolution"])
    if tuple(x.shape[-2:]) != (r, r):
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def probabilities(net, x, config: Mapping[str, Any]):
    """Class probabilities of a loaded export (softmax of logits, or the ensemble's own output)."""
    import torch

    with torch.no_grad():
        out = net(x).float()
    return out if config.get("outputs") == "probs" else out.softmax(dim=1)

