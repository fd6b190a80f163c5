#!/usr/bin/env bash
# Download, here, the Python wheels that the GPU machine lacks for scripts/gpu-check.sh, into .whl/
# (ignored by git, carried to the device with `carry: [".whl"]`).
#
# The device (see the device tool's KINDS.md) runs Python 3.12 on manylinux x86_64, has torch, JAX,
# CuPy, nvidia-ml-py, grpcio, psutil, prometheus-client, pytest and numpy, and cannot reach any
# package registry. The GPU check runs the GPU-host side only (tf_remoting: worker, nanny, kernels,
# %vgpu) from the source tree that travels with the working tree; the Jupyter-server side and its
# JupyterLab extension are not needed there, so the project itself is NOT built into a wheel (a
# wheel would need hatch, jupyterlab and the built extension here, and could lag the tree).
#
# What is fetched: the closure of the packages below, pinned to the versions this checkout's .venv
# runs (pip freeze as constraints), for cp312 manylinux x86_64, minus what the device already has,
# except the version-critical ones (ALWAYS), which the device may have too old: the generated
# _proto code needs protobuf >= 7.35.1 and grpcio >= 1.85.1. scripts/gpu-check.sh installs a carried
# wheel only where the device lacks the package or has an older version.
#
# Usage: scripts/gpu-wheels.sh          (idempotent; prints each wheel and the total size)
# Needs: network access to PyPI here, .venv (for the pinned versions).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
PY=.venv/bin/python
LIMIT_MIB=32   # stay well under the 64 MiB the device tool carries (the working tree, ~2 MiB, counts too)

# What the worker, the kernels and the gpu tests import that the device may lack.
TOP=(grpcio grpcio-health-checking protobuf pyzmq ipykernel jupyter_client pytest pytest-asyncio)
ALWAYS=" grpcio grpcio-health-checking protobuf pytest pluggy pytest-asyncio "

# Distributions on the device's image, from KINDS.md ("Python packages already there", read on a
# machine on 2026-11-17), normalised names.
DEVICE_HAS=" absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp "
DEVICE_HAS=$(echo "$DEVICE_HAS" | tr '\n' ' ')

[ -x "$PY" ] || { echo "gpu-wheels: $PY is missing; make the venv first (scripts/test.sh)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip freeze --exclude-editable 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' >"$tmp/constraints.txt"

"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -c "$tmp/constraints.txt" -d "$tmp/all" "${TOP[@]}" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for whl in "$tmp"/all/*.whl; do
    file=$(basename "$whl")
    # Normalised distribution name: the wheel file name's first field, '_' -> '-', lower case.
    name=$(echo "${file%%-*}" | tr 'A-Z_.' 'a-z--')
    if [[ "$DEVICE_HAS" == *" $name "* && "$ALWAYS" != *" $name "* ]]; then
        continue
    fi
    cp "$whl" "$DEST/"
done

total=0
printf '%-70s %8s\n' "wheel" "KiB"
for whl in "$DEST"/*.whl; do
    size=$(stat -c %s "$whl")
    total=$((total + size))
    printf '%-70s %8d\n' "$(basename "$whl")" $((size / 1024))
done
printf '%-70s %8d\n' "total ($(ls "$DEST"/*.whl | wc -l) wheels)" $((total / 1024))
if [ $((total / 1048576)) -ge "$LIMIT_MIB" ]; then
    echo "gpu-wheels: the wheels take $((total / 1048576)) MiB, over the $LIMIT_MIB MiB budget; the device" \
         "tool carries 64 MiB in all, the working tree included" >&2
    exit 1
fi
