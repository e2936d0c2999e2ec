#!/usr/bin/env bash
# The Python 3.12 wheels that the lent GPU machines' image lacks, fetched on a
# machine that reaches PyPI, into benchmarks/gpu/wheels/ (ignored by git;
# carried along with the repository: `run(..., carry=['benchmarks/gpu/wheels'])`).
#
#   bash benchmarks/gpu/wheels.sh [DIR]
#
# The image (docs/gpu.md) has Python 3.12, JAX 0.11 with the CUDA 13 plugin,
# flax, optax, orbax-checkpoint, PyTorch, torchvision, OpenCV, Pillow, SciPy,
# pytest and pytest-xdist, and with them absl-py, etils, cloudpickle,
# protobuf, PyYAML, numpy, packaging, psutil, tensorboard and tqdm. It lacks
# grain, ml-collections, simplejpeg, tensorboardX, array-record,
# tensorflow-datasets, submitit and wandb. Fetched, at the versions
# requirements.txt pins, without their dependencies (pip --no-deps), so that
# nothing the image has comes twice:
#   grain           the input pipeline (imported by every training run)
#   array_record    grain's dependency on Linux (imported with it)
#   portpicker      grain's dependency, which the image lacks (imported with it)
#   ml_collections  the configs
#   simplejpeg      JPEG decoding (the input-pipeline step)
#   tensorboardX    a run's event files (tracking.tensorboard, on by default)
#   submitit        the SLURM launcher of `sweep` and `search`: not run by the
#                   suite, but 80 KB, and then every module of the package imports
# Left out, and why:
#   tensorflow-datasets  only `data.name='tfds:…'` imports it; the suite reads
#                   synthetic data and a folder of JPEGs. It is 5.3 MB, and of
#                   the nine dependencies the image lacks one, promise,
#                   publishes no wheel at all.
#   wandb           20 MB (its Go service inside) and about a dozen
#                   dependencies the image lacks (pydantic, OpenTelemetry, …);
#                   a run without wandb installed logs without it, and the
#                   suite turns tracking.wandb off anyway.
# A Python of 3.11 or 3.12 with pip runs this; PYTHON picks it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$ROOT/benchmarks/gpu/wheels}
PYTHON=${PYTHON:-$([[ -x "$ROOT/.venv/bin/python" ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
PACKAGES=(grain array_record portpicker ml_collections simplejpeg tensorboardX submitit)
LIMIT_MIB=40      # with the working tree, what a device call carries stays under 64 MiB

pin() {
  # NAME==VERSION as requirements.txt (the lock) pins it.
  local line
  line=$(grep -i -E "^$1==" "$ROOT/requirements.txt") || {
    echo "wheels.sh: requirements.txt pins no $1" >&2
    exit 2
  }
  echo "$line"
}

pins=()
for package in "${PACKAGES[@]}"; do
  pins+=("$(pin "$package")")
done

rm -rf "$DEST"
mkdir -p "$DEST"
# CPython 3.12 on x86-64 Linux: the image's glibc takes manylinux wheels up to 2_28.
"$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${pins[@]}"

count=$(find "$DEST" -name '*.whl' | wc -l)
if ((count != ${#PACKAGES[@]})); then
  echo "wheels.sh: expected ${#PACKAGES[@]} wheels in $DEST, found $count" >&2
  exit 1
fi
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
if ((bytes > LIMIT_MIB * 1024 * 1024)); then
  echo "wheels.sh: $DEST holds $bytes bytes, more than $LIMIT_MIB MiB" >&2
  exit 1
fi
ls -l "$DEST"
echo "$count wheels, $((bytes / 1024)) KiB in $DEST"
