#!/usr/bin/env bash
# Installs (with apt-get) everything needed to build and test lightunet.
# Idempotent: when every package is already installed it returns at once.
set -euo pipefail

packages=(
    build-essential
    cmake
    ccache
    libeigen3-dev
    libxtensor-dev
    xtl-dev
    libxsimd-dev
    libhdf5-dev
    libnifti2-dev
    libniftiio-dev
    zlib1g-dev
    libpng-dev
    catch2
    libbenchmark-dev
    libdnnl-dev
    ocl-icd-opencl-dev
    libonnx-dev
    libopenmpi-dev
    openmpi-bin
    libprotobuf-dev
    libomp-dev
    python3
    python3-h5py
    clang
    libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo" >&2; exit 1; }
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
