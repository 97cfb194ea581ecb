"""``natv2 predict --net DIR image.png [...]``: the top classes of images under an exported network."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="print the top classes of images under an exported network or ensemble")
    p.add_argument("--net", required=True, metavar="DIR", help="exported network directory (config.json, weights.pt)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="torch (weights.pt rebuilt by natv2, default) or onnx (model.onnx under onnxruntime)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes printed per image (default 5)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    p.set_defaults(func=run)


def read_image(path: str):
    """An RGB image as a uint8 tensor (1, 3, H, W); an unreadable file raises a one-line Natv2Error."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from natv2.errors import Natv2Error

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise Natv2Error(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise Natv2Error(f"{path}: cannot read the image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def predict(net, config: dict, paths: list[str], top: int) -> tuple[list[str], list[str]]:
    """Lines ``path: class p, ...`` for readable images, and one error line per unreadable one."""
    from natv2.errors import Natv2Error
    from natv2.export import preprocess, probabilities

    lines, errors = [], []
    classes = config["classes"]
    for path in paths:
        try:
            image = read_image(path)
        except Natv2Error as e:
            errors.append(f"natv2: error: {e}")
            continue
        p = probabilities(net, preprocess(image, config), config)[0]
        values, indices = p.topk(min(top, len(classes)))
        ranked = ", ".join(f"{classes[int(i)]} {float(v):.3f}" for v, i in zip(values, indices))
        lines.append(f"{path}: {ranked}")
    return lines, errors


def run(args: argparse.Namespace) -> int:
    import sys

    from natv2.errors import Natv2Error
    from natv2.export import load_network, load_onnx

    if args.top < 1:
        raise Natv2Error(f"--top {args.top}: expected >= 1")
    net = load_onnx(args.net) if args.runtime == "onnx" else load_network(args.net)
    lines, errors = predict(net, net.natv2_config, args.images, args.top)
    for line in lines:
        print(line)
    for line in errors:
        print(line, file=sys.stderr)
    return 2 if errors else 0
