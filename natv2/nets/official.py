"""The official OFA MobileNetV3 supernets (ImageNet weights): mirrors, cache, SHA-256, key mapping.

    path = fetch_official("ofa_mbv3_d234_e346_k357_w1.0", cache_dir="data/weights")
    net = load_official(path, settings.supernet, n_classes=10, generator=g)   # new head

The files are ``torch.save({"state_dict": ...})`` of ``ofa``'s OFAMobileNetV3
(first_conv, blocks.N.conv.{inverted_bottleneck, depth_conv, point_linear, se},
final_expand_layer, feature_mix_layer, classifier); :func:`map_ofa_state_dict` renames them
onto our layout (natv2.nets.mbv3). Older files use ``mobile_inverted_conv`` and un-nested
``conv.weight`` / ``bn.*`` names; both spellings are accepted.

SHA-256: the real hashes of the hosted files cannot be known offline when this was written, so
:data:`OFFICIAL` holds ``None`` and the hash of the first successful download is recorded in the
cache's ``manifest.json``; every later load checks the file against it (a known hash in
OFFICIAL, once filled in, takes precedence). Nothing downloads in tests (they use file:// URLs
and a local http.server).
"""
from __future__ import annotations

import re
import urllib.parse
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.hub import download_url_to_file

from natv2.config import setting
from natv2.errors import Natv2Error
from natv2.io import load_torch, read_json, sha256_file, write_json
from natv2.nets.checkpoint import MAX_LISTED, state_dict_mismatches

# The hosts used by the ofa package (ofa/model_zoo.py: ofa_net) and the MIT HAN lab site.
MIRRORS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/han-cai/files/master/ofa/ofa_nets/{name}",
    "https://hanlab18.mit.edu/files/OnceForAll/ofa_nets/{name}",
    "https://file.hanlab.ai/files/OnceForAll/ofa_nets/{name}",
)

OFFICIAL: dict[str, dict[str, Any]] = {
    # sha256 None: recorded in the cache manifest on first download (see module docstring)
    "ofa_mbv3_d234_e346_k357_w1.0": {"width": 1.0, "sha256": None},
    "ofa_mbv3_d234_e346_k357_w1.2": {"width": 1.2, "sha256": None},
}
MANIFEST = "manifest.json"


def official_name(width: float) -> str:
    for name, info in OFFICIAL.items():
        if abs(info["width"] - width) < 1e-9:
            return name
    raise Natv2Error(f"supernet.widths: no official OFA weights for width {width}; expected one of 1.0, 1.2")


# ------------------------------------------------------------------------------------- download


def _manifest(cache_dir: Path) -> dict:
    path = cache_dir / MANIFEST
    return read_json(path) if path.is_file() else {}


def _expected_sha(name: str, cache_dir: Path) -> str | None:
    return OFFICIAL.get(name, {}).get("sha256") or _manifest(cache_dir).get(name, {}).get("sha256")


def fetch_official(
    name: str,
    cache_dir: str | Path,
    mirrors: Sequence[str] | None = None,
    *,
    download: bool = True,
) -> Path:
    """The path of the cached official checkpoint ``name``, downloading it on first use.

    ``mirrors`` are URL templates with ``{name}`` (default :data:`MIRRORS`), tried in order: URLs
    (http(s)://, file://) or local paths. Downloads go through ``torch.hub.download_url_to_file``
    (a temporary file renamed when complete; checked against the known or recorded hash when
    there is one). The cached file's SHA-256 is checked too; a mismatch is an error.
    """
    if name not in OFFICIAL:
        raise Natv2Error(f"official weights {name!r}: expected one of {sorted(OFFICIAL)}")
    cache_dir = Path(cache_dir)
    dest = cache_dir / name
    if not dest.is_file():
        if not download:
            raise Natv2Error(f"official weights {name}: not in the cache and downloads are off; place the file at {dest}")
        errors = []
        for template in mirrors if mirrors is not None else MIRRORS:
            url = template.format(name=name)
            if not urllib.parse.urlparse(url).scheme:  # a local path
                url = Path(url).resolve().as_uri()
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                download_url_to_file(url, str(dest), hash_prefix=_expected_sha(name, cache_dir), progress=False)
                load_torch(dest)  # an error page or a cut-off transfer is not a checkpoint
                break
            except Exception as e:  # noqa: BLE001 - any failure: try the next mirror
                dest.unlink(missing_ok=True)
                errors.append(f"{url}: {type(e).__name__}: {e}")
        else:
            tried = "; ".join(errors) or "no mirrors configured"
            raise Natv2Error(
                f"official weights {name}: could not download ({tried}). Offline? Download it by hand from "
                f"{MIRRORS[0].format(name=name)} and place the file at {dest}"
            )
    digest = sha256_file(dest)
    expected = _expected_sha(name, cache_dir)
    if expected is None:
        manifest = _manifest(cache_dir)
        manifest[name] = {"sha256": digest, "bytes": dest.stat().st_size}
        write_json(cache_dir / MANIFEST, manifest)
    elif digest != expected:
        raise Natv2Error(
            f"{dest}: SHA-256 {digest[:16]}... does not match the recorded {expected[:16]}... "
            f"(corrupt or replaced file; delete it to download again)"
        )
    return dest


# ------------------------------------------------------------------------------------- key mapping

_BN = r"bn\.(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_CONV_OR_BN = rf"(conv\.weight|{_BN})"
_BLOCK_RULES = [
    (re.compile(rf"^inverted_bottleneck\.{_CONV_OR_BN}$"), r"expand.\1"),
    (re.compile(r"^depth_conv\.conv\.weight$"), r"dw.conv.weight"),
    (re.compile(r"^depth_conv\.conv\.(\d+)to(\d+)_matrix$"), r"dw.conv.transform_\1to\2"),
    (re.compile(rf"^depth_conv\.({_BN})$"), r"dw.\1"),
    (re.compile(r"^depth_conv\.se\.fc\.(reduce|expand)\.(weight|bias)$"), r"se.\1.\2"),
    (re.compile(rf"^point_linear\.{_CONV_OR_BN}$"), r"project.\1"),
]
_TOP_RULES = [
    (re.compile(rf"^first_conv\.{_CONV_OR_BN}$"), r"stem.first.\1"),
    (re.compile(rf"^final_expand_layer\.{_CONV_OR_BN}$"), r"head.expand.\1"),
    (re.compile(r"^feature_mix_layer\.conv\.weight$"), r"head.mix.conv.weight"),
    (re.compile(r"^classifier\.linear\.(weight|bias)$"), r"head.classifier.\1"),
]
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.conv\.(.+)$")


def _canonical(key: str) -> str:
    """One spelling of the ofa key: ``.conv.`` for ``.mobile_inverted_conv.``, no doubled wrappers."""
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    key = key.replace(".conv.conv.", ".conv.").replace(".bn.bn.", ".bn.").replace(".linear.linear.", ".linear.")
    if key.startswith("module."):  # saved from DataParallel
        key = key[len("module."):]
    return key


def map_ofa_state_dict(state: Mapping[str, torch.Tensor], max_blocks: int = 4) -> dict[str, torch.Tensor]:
    """Rename an ``ofa`` OFAMobileNetV3 state_dict onto our layout; unknown keys -> Natv2Error."""
    out, unknown = {}, []
    for key, value in state.items():
        k = _canonical(key)
        new = None
        m = _BLOCK_KEY.match(k)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            prefix = "stem.block" if idx == 0 else "stages.{}.{}".format(*divmod(idx - 1, max_blocks))
            for rule, repl in _BLOCK_RULES:
                if rule.match(rest):
                    new = f"{prefix}.{rule.sub(repl, rest)}"
                    break
        else:
            for rule, repl in _TOP_RULES:
                if rule.match(k):
                    new = rule.sub(repl, k)
                    break
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        more = f" (and {len(unknown) - MAX_LISTED} more)" if len(unknown) > MAX_LISTED else ""
        raise Natv2Error(f"OFA checkpoint: keys not in the OFA MobileNetV3 layout: {', '.join(unknown[:MAX_LISTED])}{more}")
    return out


def load_ofa_state_dict(
    net: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str | Path = "OFA checkpoint",
    new_head: bool | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Load an ``ofa``-layout state_dict into our supernet ``net``.

    ``new_head``: drop the checkpoint's classifier and give ``net`` a fresh one (default: when
    the class counts differ, e.g. ImageNet's 1000 vs the target's 10).
    """
    mapped = map_ofa_state_dict(state, net.space.max_blocks)
    file_classes = mapped.get("head.classifier.weight")
    if new_head is None:
        new_head = file_classes is not None and file_classes.shape[0] != net.n_classes
    if new_head:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("head.classifier.")}
        net.reset_classifier(net.n_classes, generator)
        mapped.update({f"head.classifier.{k}": v for k, v in net.head.classifier.state_dict().items()})
    problems = state_dict_mismatches(net, mapped)
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise Natv2Error(f"{source}: keys/shapes do not fit the supernet: " + "; ".join(problems[:MAX_LISTED]) + more)
    net.load_state_dict(mapped, strict=False)


def load_official(
    path: str | Path,
    cfg: Any,
    n_classes: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.nn.Module:
    """Our supernet (built from the ``supernet:`` config ``cfg``) with the weights of ``path``
    (``{"state_dict": ...}`` in the ofa layout) and a new head for ``n_classes``."""
    from natv2.nets import build_supernet

    obj = load_torch(path)
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise Natv2Error(f"{path}: expected a dict with a 'state_dict' entry (an OFA checkpoint)")
    net = build_supernet(cfg, n_classes)
    load_ofa_state_dict(net, state, source=path, generator=generator)
    return net


def official_supernet(
    cfg: Any,
    n_classes: int,
    *,
    cache_dir: str | Path | None = None,
    mirrors: Sequence[str] | None = None,
    download: bool | None = None,
    generator: torch.Generator | None = None,
) -> torch.nn.Module:
    """Our supernet for the ``supernet:`` config ``cfg`` (a SupernetConfig or mapping) with the
    official weights of its width and a new head for ``n_classes``.

    The file is looked up in ``cache_dir`` (default ``cfg.weights_dir``) and otherwise fetched from
    ``mirrors`` (default ``cfg.mirrors``), then the built-in :data:`MIRRORS`; ``download``
    (default ``cfg.download``) false = never download.
    """
    get = partial(setting, cfg)
    widths = [float(w) for w in get("widths", [1.0])]
    if len(widths) > 1:  # one official supernet per width, behind the width gene (NAT)
        from natv2.nets.multiwidth import build_multiwidth

        return build_multiwidth(cfg, n_classes, lambda one, n: official_supernet(
            one, n, cache_dir=cache_dir, mirrors=mirrors, download=download, generator=generator))
    name = official_name(widths[0])
    extra = list(mirrors if mirrors is not None else (get("mirrors", None) or []))
    cache = Path(cache_dir if cache_dir is not None else get("weights_dir", "data/weights"))
    allow = bool(get("download", True)) if download is None else download
    path = fetch_official(name, cache, extra + [m for m in MIRRORS if m not in extra], download=allow)
    return load_official(path, cfg, n_classes, generator=generator)
