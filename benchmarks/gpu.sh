#!/usr/bin/env bash
# Every GPU check and timing in one call of at most 10 minutes on one H200 (docs/benchmarks.md, "GPU: every check
# in one call").
#
# Before the call, in the root of the checkout that the device tool sends (needs pip, the network and data/raw):
#   bash benchmarks/gpu.sh prepare
# writes .whl (benchmarks/gpu-wheels.txt as Python 3.12 wheels, 46 MB: dvc, mlflow, pydantic and their needs, which
# the machine's image lacks) and .gpu/mnist (data/raw gzipped, 12 MB), both git-ignored (.git/info/exclude); the tree
# itself is ~3 MB, so ~61 MB of the 64 MiB that may travel. The call:
#   run(command="bash benchmarks/gpu.sh", carry=[".whl", ".gpu"], timeout_s=600)
# Back in $OUT: summary.txt (a line per part and the headline figures), machine.txt, logs.tar.gz (every log and JSON).
# On a CPU, `TINY=1 RAW=data/raw bash benchmarks/gpu.sh` runs the same parts on small data (600 images, 1 epoch,
# 2 seeds) and skips what needs CUDA, saying so.
#
# Parts, most valuable first, each under `timeout` within BUDGET_S (default 570 s) counted from the start (all of
# them, or the ones named: `bash benchmarks/gpu.sh pipeline tests`):
#   tta       benchmarks/time_to_accuracy.py: seconds to 99.0 / 99.5 % test from the data's move to the GPU, with
#             CUDA graphs (digits_cnn_gpu at 6 and 3 epochs), then eager for comparison
#   pipeline  dvc repro, stage by stage and forced, in a temporary git repository of this tree (sqlite MLflow store):
#             time per stage, the device and AMP that trained
#   ddp       the train stage under torchrun --nproc-per-node=<GPUs> with NCCL, 2 epochs (the command that
#             -S train.nproc=N runs for N > 1; N = 1 does not relaunch, so it is started directly)
#   top_alone digits_cnn_gpu_top, seed 42, alone on the GPU: its training time is the recipe's time per run
#   top       digits_cnn_gpu_top, seeds 42,1..7 at once (benchmarks/recipes.py --jobs 8), beside
#   tests     pytest tests/test_devices.py (CPU and CUDA) and
#   exp       dvc exp run -S train.lr=0.01 in the same repository
set -uo pipefail
{ # read whole before it runs: an edit of this file during a run cannot change the run
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-python3}

if [[ ${1:-} == prepare ]]; then
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")" || exit
    for d in /.whl/ /.gpu/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
    platforms=()
    for p in manylinux_2_{17,27,28,31,34}_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
    grep -v '^#\|# sdist only' benchmarks/gpu-wheels.txt | $py -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl -r /dev/stdin || exit
    sed -n 's/  # sdist only$//p' benchmarks/gpu-wheels.txt | xargs $py -m pip wheel -q --no-deps -w .whl || exit
    mkdir -p .gpu/mnist && for f in data/raw/*-ubyte; do gzip -c "$f" > ".gpu/mnist/${f##*/}.gz" || exit; done
    du -sh .whl .gpu; exit
fi

export parts=$* py tiny=${TINY:-0} out && out=$(realpath -m "${OUT:-gpu-out}") && export budget=${BUDGET_S:-570}
export logs=$out/logs tmp && tmp=$(mktemp -d) && export work=$tmp/digits
mkdir -p "$logs" "$work/data/raw" "$tmp/site"
say() { echo "$*" | tee -a "$out/summary.txt"; }
export -f say
# the wheels are Python 3.12's (the GPU image's); another Python (a TINY run on a developer's machine) goes without
if compgen -G ".whl/*.whl" > /dev/null && $py -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$tmp/site" .whl/*.whl \
        > "$logs/wheels.log" 2>&1 || say "wheels: install failed (logs/wheels.log)"
    export PYTHONPATH=$tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=$tmp/site/bin:$PATH
fi
export PYTHONPATH=$work/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 PATH=$(dirname "$(command -v "$py")"):$PATH
unset MLFLOW_TRACKING_URI  # the sqlite store at the temporary repository's root; no network there, so no telemetry:
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
command -v python > /dev/null || { printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$py")" > "$tmp/site/python" &&
    chmod +x "$tmp/site/python" && export PATH=$tmp/site:$PATH; }  # the stages' commands say `python`
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  $py -c "import os, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'cpus', len(os.sched_getaffinity(0)))"
  for m in dvc mlflow pydantic; do $py -c "import $m; print('$m', $m.__version__)" 2>&1 | tail -1; done
} > "$out/machine.txt" 2>&1
export ngpu && ngpu=$($py -c "import torch; print(torch.cuda.device_count())")
export cuda=$((ngpu > 0)) seeds=42,1,2,3,4,5,6,7 jobs=8
((cuda)) || say "no CUDA: the CUDA parts are skipped or run on the CPU, as each line says"
((tiny)) && seeds=42,1 jobs=2

# The tree (tracked and untracked files git does not ignore; all but data and carried folders without git) and data.
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
else
    tar --exclude=./.git --exclude=./.whl --exclude=./.gpu --exclude=./data --exclude=./.dvc/cache \
        --exclude=./.dvc/tmp --exclude=./mlflow.db --exclude=./mlartifacts -cf - . | tar -xf - -C "$work"
fi
raw=${RAW:-$([[ -d .gpu/mnist ]] && echo .gpu/mnist || echo data/raw)}
for f in "$raw"/*-ubyte*; do
    case $f in *.gz) gunzip -c "$f" > "$work/data/raw/$(basename "$f" .gz)" ;; *) cp "$f" "$work/data/raw/" ;; esac
done
cd "$work" || exit
edit_params() {  # the Python statements "$1" change the dict p, read from params.yaml and written back
    $py -c "import yaml; p = yaml.safe_load(open('params.yaml'))
$1
yaml.safe_dump(p, open('params.yaml', 'w'), sort_keys=False)"
}
if ((tiny)); then  # small data, a tiny network, one epoch, no compilation: the parts' plumbing in minutes on a CPU
    edit_params "p['preprocess'].update(train_limit=600, test_limit=200); p['render']['per_class'] = 20
p['evaluate']['compile'] = False; p['train'].update(width=4, head=8, epochs=1, batch_size=64)"
fi
if [[ -n ${EPOCHS:-} ]]; then  # EPOCHS=N: the default model trains N epochs in every part (a shorter pipeline check)
    edit_params "p['train']['epochs'] = $EPOCHS" && say "train.epochs=$EPOCHS"
fi
$py src/preprocess.py data/raw data/processed reports/figures > "$logs/preprocess.log" 2>&1 || say "preprocess failed"
command -v git > /dev/null && git init -q && git add -A && git -c user.name=gpu.sh -c user.email=gpu.sh@localhost \
    commit -qm "gpu.sh: the tree under test"

part_tta() {  # a failed graph run does not stop the eager one
    local args=(--model digits_cnn_gpu --checks 8) e rc=0
    ((tiny)) && args+=(--limit 512 --checks 2)
    ((cuda)) || echo "CUDA graphs: skipped: no CUDA (eager steps on the CPU)"
    for e in 6 3; do
        $py benchmarks/time_to_accuracy.py "${args[@]}" --set epochs=$((tiny ? 1 : e)) --json "$logs/tta-$e.json" || rc=1
        ((cuda)) || return $rc
    done
    $py benchmarks/time_to_accuracy.py "${args[@]}" --no-graphs --json "$logs/tta-eager.json" || rc=1
    return $rc
}
part_pipeline() {
    command -v git > /dev/null || { echo "skipped: no git"; return 0; }
    command -v dvc > /dev/null || { echo "skipped: no dvc (bash benchmarks/gpu.sh prepare; carry .whl)"; return 0; }
    local stage t0
    for stage in $($py -c "import yaml; print(*yaml.safe_load(open('dvc.yaml'))['stages'])"); do
        t0=$(date +%s%N)
        dvc repro -f -s "$stage" || return
        echo "stage $stage: $((($(date +%s%N) - t0) / 1000000)) ms" | tee -a "$logs/stage-times.txt"
    done
    cp metrics/train.json metrics/evaluate.json models/run.json models/registered.json "$logs/"
}
part_top_alone() {
    $py benchmarks/recipes.py --model digits_cnn_gpu_top --recipe top --seeds 42 --jobs 1 --out "$logs/top-alone.jsonl"
}
part_top() {
    $py benchmarks/recipes.py --model digits_cnn_gpu_top --recipe top --seeds "$seeds" --jobs "$jobs" \
        --out "$logs/top.jsonl"
}
part_tests() {
    ((cuda)) || { echo "skipped: no CUDA (CI runs the CPU half)"; return 0; }
    $py -m pytest --noconftest -p no:cacheprovider -q tests/test_devices.py
}
part_exp() {
    command -v dvc > /dev/null || { echo "skipped: no dvc"; return 0; }
    dvc exp run -S train.lr=0.01 && dvc exp show --no-pager --only-changed --csv || return
    for f in metrics/train.json metrics/evaluate.json models/run.json; do cp "$f" "$logs/exp-${f##*/}"; done
}
part_ddp() {
    local n=$ngpu
    ((cuda)) || { echo "NCCL: skipped: no CUDA (gloo, 1 CPU process)"; n=1; }
    cp params.yaml "$tmp/params.yaml"  # 2 epochs for this part only
    edit_params "p['train']['epochs'] = min(2, p['train']['epochs'] or 2)"
    NCCL_DEBUG=INFO $py -m torch.distributed.run --standalone --nproc-per-node="$n" src/train.py data/processed \
        "$tmp/ddp/models" "$tmp/ddp/metrics" "$tmp/ddp/figures"
    local rc=$?
    cp "$tmp/params.yaml" params.yaml
    ((rc == 0)) || return $rc
    echo "NCCL INFO lines: $(grep -c 'NCCL INFO' "$logs/ddp.log")"
    cp "$tmp/ddp/metrics/train.json" "$logs/ddp-train.json" && cp "$tmp/ddp/models/run.json" "$logs/ddp-run.json"
}
export -f edit_params part_tta part_pipeline part_top_alone part_top part_tests part_exp part_ddp
part() {  # NAME CAP_S: part_NAME under `timeout`, at most CAP_S and what is left of the budget; its log in logs/
    local name=$1 cap=$2 left=$((budget - SECONDS)) t0=$SECONDS rc
    [[ -z $parts || " $parts " == *" $name "* ]] || return 0
    ((left >= 20)) || { say "$name: skipped: out of time (${left} s of the budget left)"; return; }
    timeout -k 5 $((cap < left ? cap : left)) bash -c "part_$name" > "$logs/$name.log" 2>&1
    rc=$?
    say "$name: exit $rc$( ((rc == 124)) && echo ' (timed out)') in $((SECONDS - t0)) s; $(grep -h 'skipped' \
        "$logs/$name.log" | head -1)"
}
part tta 90
part pipeline 240
part ddp 60
part top_alone 90
part top 200 & part tests 150 & part exp 200 & wait

$py - "$logs" >> "$out/summary.txt" 2>&1 <<'EOF'
import json, statistics, sys
from pathlib import Path
logs = Path(sys.argv[1])
for f in sorted(logs.glob("tta-*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem}: to 99.0 % {r['seconds_to_99.0%']} s (floor {r['floor_to_99.0%']}), to 99.5 % "
          f"{r['seconds_to_99.5%']} s (floor {r['floor_to_99.5%']}); start-up {r['startup_context_s']} + "
          f"{r['startup_prepare_s']} s; graphs {r['graphs']}; {r['device']}")
if (times := logs / "stage-times.txt").exists():
    print("pipeline: " + "; ".join(times.read_text().splitlines()))
KEYS = ("device", "machine", "train_seconds", "epochs_run", "best_epoch", "val_accuracy", "test_accuracy")
for run in ("", "exp-", "ddp-"):  # the pipeline's run, the experiment's, the one under torchrun
    found = {}
    for f in (logs / f"{run}{name}.json" for name in ("run", "train", "evaluate")):
        r = json.loads(f.read_text()) if f.exists() else {}
        found |= {k: r[k] for k in KEYS if k in r} | {k: r["params"][k] for k in ("model", "lr", "amp") if "params" in r}
    if found:
        print(f"{run or 'pipeline-'}run: " + ", ".join(f"{k} {v}" for k, v in found.items()))
rows = {n: [json.loads(x) for x in (logs / f"{n}.jsonl").read_text().splitlines()]
        for n in ("top-alone", "top") if (logs / f"{n}.jsonl").exists()}
if rows.get("top"):
    test = [r["test_accuracy"] for r in rows["top"]]
    alone = [r["fit_seconds"] for r in rows.get("top-alone", [])]
    met = statistics.mean(test) >= 0.997 and alone and max(alone) <= 60 and len(test) == 8
    print(f"digits_cnn_gpu_top: {len(test)} seeds at once, mean test {statistics.mean(test):.4%} (min {min(test):.2%},"
          f" max {max(test):.2%}), mean val {statistics.mean(r['val_accuracy'] for r in rows['top']):.4%}; "
          f"fit alone {alone} s, at once {[r['fit_seconds'] for r in rows['top']]} s; rule met: {bool(met)}")
EOF
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
rm -rf "$tmp"
cat "$out/summary.txt"
exit
}
