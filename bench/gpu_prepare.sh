#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on a lent GPU machine, here (with ../shared and PyPI):
#   .gpu/cifar10_u8.pt  a stratified uint8 subset of CIFAR-10 at 32 px (train + test), ~37 MB
#   .gpu/whl/           Python 3.12 wheels of what the device image lacks (snakemake, pymoo, lightgbm, ...)
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=540).
# The device image already holds torch, numpy, pandas, scipy, scikit-learn, matplotlib (see
# bench/gpu_device_packages.txt, read off the device tool's KINDS.md): their wheels are dropped,
# and so is PuLP (16 MB; gpu_check runs snakemake with --scheduler greedy). Budget: 64 MiB travel.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${GPU_TRAIN_PER_CLASS:-1000}
TEST=${GPU_TEST_PER_CLASS:-200}
DATA=${GPU_DATA:-../shared/data/cifar10}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl
python - "$DATA" "$TRAIN" "$TEST" <<'PY'
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

root, per_train, per_test = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
out = {"classes": classes}
for split, per in (("train", per_train), ("test", per_test)):
    images, labels = [], []
    for k, name in enumerate(classes):
        files = sorted((root / split / name).iterdir())[:per]
        for f in files:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.uint8))
        labels += [k] * len(files)
    out[split] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    out[f"{split}_labels"] = torch.tensor(labels, dtype=torch.int64)
torch.save(out, ".gpu/cifar10_u8.pt")
print({k: tuple(v.shape) for k, v in out.items() if hasattr(v, "shape")})
PY
PIP="python -m pip"
$PIP wheel -q --no-deps -w .gpu/whl connection_pool==0.0.3   # sdist only on PyPI; pure Python
$PIP download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any --find-links .gpu/whl -d .gpu/whl \
    "$(grep '^snakemake==' requirements.txt)" "$(grep '^pymoo==' requirements.txt)" \
    "$(grep '^lightgbm==' requirements.txt)" "$(grep '^jsonschema==' requirements.txt)" "$(grep '^tqdm==' requirements.txt)"
# drop what the device image has, and PuLP
for f in .gpu/whl/*.whl; do
    name=$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
    if grep -qx "$name" bench/gpu_device_packages.txt || [ "$name" = pulp ]; then rm -f "$f"; fi
done
du -sh .gpu .gpu/whl
