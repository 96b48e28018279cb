#!/usr/bin/env bash
# Create a worker environment for one model family beside the main one, with mlipserve installed editable.
#
#   deploy/make-env.sh mace              # -> .venv-mace (CPU torch from deploy/constraints-cpu.txt)
#   TORCH_CONSTRAINTS=my-cuda.txt deploy/make-env.sh mace   # another torch build, e.g. CUDA
#   CUEQ=1 deploy/make-env.sh mace       # also cuEquivariance kernels (CUDA 12 machines only)
#
# The environment serves that family's models with `.venv-<family>/bin/mlipserve worker --redis URL --model NAME`,
# or alone with `.venv-<family>/bin/mlipserve serve --model NAME`.
set -euo pipefail
cd "$(dirname "$0")/.."

families="$(for file in deploy/*/constraints.txt; do basename "$(dirname "$file")"; done | tr '\n' ' ')"
family="${1:?usage: deploy/make-env.sh FAMILY [VENV] (families with their own environment: $families)}"
venv="${2:-.venv-$family}"
python="${PYTHON:-python3}"
torch_constraints="${TORCH_CONSTRAINTS:-deploy/constraints-cpu.txt}"
family_constraints="deploy/$family/constraints.txt"
if [ ! -f "$family_constraints" ]; then
    echo "make-env.sh: no $family_constraints; families with their own environment: $families" >&2
    exit 2
fi

"$python" -m venv "$venv"
# pip install, rerun when the network drops mid-download (TensorFlow's wheel alone is hundreds of MB)
pip=(deploy/pip-install.sh "$venv" -c "$torch_constraints" -c "$family_constraints")
deploy/pip-install.sh "$venv" --upgrade pip
"${pip[@]}" torch
if [ -f "deploy/$family/no-deps.txt" ]; then
    # packages whose declared requirements cannot be installed as they stand (GRACE's tensorflow[and-cuda] on a CPU
    # machine): what they really need first (requirements.txt), then the packages without their own dependencies
    "${pip[@]}" -r "deploy/$family/requirements.txt"
    "${pip[@]}" --no-deps -r "deploy/$family/no-deps.txt"
    "${pip[@]}" -e .
else
    "${pip[@]}" -e ".[$family]"
fi
if [ "${CUEQ:-0}" = 1 ]; then
    "${pip[@]}" cuequivariance-torch cuequivariance-ops-torch-cu12
fi
"$venv/bin/python" -c "import mlipserve.models.backends.$family" 2>/dev/null \
    || { echo "make-env.sh: $venv cannot import the $family backend" >&2; exit 1; }
touch "$venv/.installed"
echo "created $venv; start a worker with: $venv/bin/mlipserve worker --redis URL --model NAME"
