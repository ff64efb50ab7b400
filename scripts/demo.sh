#!/usr/bin/env bash
# The main job: install, build the BraTS program, generate a synthetic BraTS set (NIfTI,
# BraTS 2018 naming), train the 2D slice U-Net, predict the held-out cases, evaluate Dice/HD95
# and write the pictures. Everything lands in ${LIGHTUNET_DEMO_DIR:-demo}/.
# Fails (non-zero) when the held-out whole-tumour Dice is below 0.80.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${LIGHTUNET_DEMO_DIR:-$root/demo}
build=${LIGHTUNET_BUILD_ROOT:-$root/build}/demo
threads=${LIGHTUNET_THREADS:-2}

bash "$root/scripts/install-deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLIGHTUNET_NATIVE=ON \
    -DLIGHTUNET_BUILD_TESTS=OFF -DLIGHTUNET_BUILD_BENCH=OFF -DLIGHTUNET_CUDA=OFF
cmake --build "$build" --target brats -j "$threads"
brats=$build/examples/brats

rm -rf "$out"
"$brats" synth --out "$out/data/train" --cases 12 --seed 1 --prefix Synth
"$brats" synth --out "$out/data/test" --cases 4 --seed 1001 --prefix Held
"$brats" train --data "$out/data/train" --out "$out/run" --model 2d --patch 96x96 --batch 8 \
    --epochs 6 --steps-per-epoch 30 --val-batches 4 --threads "$threads" --autosave 60
"$brats" predict --run "$out/run" --data "$out/data/test" --out "$out/predictions" --threads "$threads" --pictures 4
"$brats" evaluate --pred "$out/predictions" --truth "$out/data/test" --out "$out/metrics.csv" --min-wt-dice 0.80
echo "demo: pictures in $out/run/pictures, $out/run/curves.png and $out/predictions/*.png; metrics in $out/metrics.csv"
