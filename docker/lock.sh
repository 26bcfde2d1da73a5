#!/bin/sh
# Regenerates docker/requirements.lock, the pinned dependencies of the service image (core + serve),
# and docker/torch.txt, the torch and torchvision pins copied from pyproject.toml.
# Run it after any change to the dependencies in pyproject.toml: `sh docker/lock.sh` (needs uv: `pip install uv`).
#
# The lock leaves out what the Dockerfile installs itself or does without:
#  - torch and torchvision (their own layer, from the CPU or CUDA wheel index; their pure-Python
#    dependencies such as sympy stay locked here),
#  - torch's CUDA packages (cuda-*, nvidia-*, triton), which a CPU image does not need and a CUDA
#    index brings in, pinned exactly by torch itself,
#  - opencv-python (Ultralytics asks for it; the image installs opencv-python-headless instead,
#    so it needs no libGL). The image installs the lock with --no-deps for that reason.
set -eu
cd "$(dirname "$0")/.."
uv=${UV:-uv}
out=docker/requirements.lock
compile() {
    "$uv" pip compile pyproject.toml docker/requirements.in --extra serve \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --no-emit-package torch --no-emit-package torchvision \
        --custom-compile-command "sh docker/lock.sh" --quiet "$@"
}
# first pass: everything, to learn which CUDA packages torch asks for directly
full=$(mktemp)
trap 'rm -f "$full"' EXIT
compile -o "$full"
{
    echo "# written by docker/lock.sh: packages the service image leaves out of its resolution"
    echo "opencv-python"
    awk '/^[a-z0-9]/ { pkg = $1; sub(/==.*/, "", pkg) }
         /^ +# +(via )?torch$/ && pkg ~ /^(nvidia-|cuda-|triton)/ { print pkg }' "$full" | sort -u
} > docker/excludes.txt
compile --excludes docker/excludes.txt -o "$out"
{
    echo "# written by docker/lock.sh from pyproject.toml: installed from the CPU or CUDA torch index"
    grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"'
} > docker/torch.txt
echo "wrote $out ($(grep -c '==' "$out") packages), docker/excludes.txt and docker/torch.txt"
