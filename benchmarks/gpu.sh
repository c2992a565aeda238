#!/usr/bin/env bash
# Issue 17's GPU evidence, one prepared script for the device tool (an NVIDIA H200, no network, ≤ 10 min a
# command, 15 min a session): PA-RL with a 0.49B Llama built here from a config (random weights; 24 layers ×
# 1024, 16 heads / 8 KV heads, MLP 5632: 492M parameters) in bf16 autocast through `pa-rl train --policy hf
# --device cuda` on pointmaze-umaze and the pixel maze at small budgets, and benchmarks/speed.py rows on CUDA
# (that model's first, then the other policy classes). Random weights: this measures that it runs, its speed
# and its memory, not what a pretrained model would learn.
#
#   bash benchmarks/gpu.sh wheels          # here, with network: what the device image lacks, into .whl/
#   device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)
#   GPU_SH_DRY=1 bash benchmarks/gpu.sh    # a CPU rehearsal: the tiny Llama, tiny budgets, OUT=runs/gpu-sh-dry
#
# Every step runs under a timeout that ends before GPU_SH_SECONDS (570) and never stops the script; after
# each, $OUT is brought up to date, so a later failure or the tool's kill keeps what came before. $OUT holds
# (the tool returns ≤ 8 files): gpu.log (all output), summary.md (each step's exit status and seconds; each
# run's BC → offline → online, updates/s, peak GPU memory), env.txt, speed.md, speed.json, runs.tar.gz (run
# folders without checkpoints or weights, each step's log, nvidia-smi samples). Budgets: GPU_BC_STEPS,
# GPU_OFFLINE_STEPS, GPU_ONLINE_STEPS, GPU_EVAL_EPISODES.
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD

# Packages the device image lacks (its KINDS.md list), pinned to what the tests ran with here; transformers
# and peft too, so that the hf policy runs on the versions it was tested with (the image has transformers 5.17).
WHEELS=(gymnasium==1.4.0 farama-notifications==0.0.6 minari==0.5.4 tyro==1.0.17 docstring-parser==0.18.0
        typeguard==4.6.1 gymnasium-robotics==1.4.2 mujoco==3.3.0 glfw==2.11.0 pyopengl==3.1.10 pettingzoo==1.27.0
        transformers==5.24.0 peft==0.21.2)
if [[ "${1:-}" == wheels ]]; then  # cp312 x86-64 wheels (the device's python3 is 3.12): about 50 MB
    PIP=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
    exec "$PIP" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
fi

DRY=${GPU_SH_DRY:-0}
START=$SECONDS
BUDGET=${GPU_SH_SECONDS:-570}
RESERVE=10  # seconds kept for the last packing
if [[ "$DRY" == 1 ]]; then
    OUT=${OUT:-$ROOT/runs/gpu-sh-dry}
    DEVICE=cpu
    PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
    MODEL_ARGS=()  # make_tiny_hf's default: the 2-layer, hidden-32 Llama
    BC=${GPU_BC_STEPS:-20} OFFLINE=${GPU_OFFLINE_STEPS:-10} ONLINE=${GPU_ONLINE_STEPS:-40}
    EPISODES=${GPU_EVAL_EPISODES:-2} DATA_SIZE=(--size 3000)
    SPEED_ARGS=(--config cpu --batch-size 32 --repeats 1 --warmup 1)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    OUT=${OUT:?the device tool sets OUT; for a CPU rehearsal use GPU_SH_DRY=1}
    DEVICE=cuda
    PYTHON=${PYTHON:-python3}
    MODEL_ARGS=(--hidden 1024 --layers 24 --heads 16 --kv-heads 8 --intermediate 5632 --init-range 0.02)
    BC=${GPU_BC_STEPS:-300} OFFLINE=${GPU_OFFLINE_STEPS:-100} ONLINE=${GPU_ONLINE_STEPS:-300}
    EPISODES=${GPU_EVAL_EPISODES:-10} DATA_SIZE=()
    SPEED_ARGS=(--config cpu default)
fi
export OUT
WORK=${GPU_SH_WORK:-$( [[ "$DRY" == 1 ]] && echo "$OUT.work" || echo /tmp/gpu-sh )}  # big files stay out of $OUT
MODEL=$WORK/models/llama
SITE=/tmp/gpu-sh-site  # the carried wheels, installed by the setup step
if compgen -G ".whl/*.whl" > /dev/null && [[ "$DRY" != 1 ]]; then
    export PYTHONPATH=$SITE:$ROOT/src
else
    export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
fi
# MUJOCO_GL stays unset, as in the tests here: MuJoCo then imports its GLFW context (the glfw wheel brings its
# library; nothing is rendered by MuJoCo), where "egl" would need the EGL loader the device image may lack.
export PYTHONUNBUFFERED=1 MINARI_DATASETS_PATH=$WORK/datasets TQDM_DISABLE=1

pack() {  # summary.md from the step table and run lines; the run folders (no checkpoints, no weights) and logs
    { printf '# gpu.sh %s (dry %s, %s)\n\n| step | exit | seconds |\n|---|---:|---:|\n' "$STARTED" "$DRY" "$DEVICE"
      cat "$WORK/steps.md"; echo; cat "$WORK/results.md"; } > "$OUT/summary.md" 2> /dev/null || true
    tar -czf "$OUT/runs.tar.gz.tmp" -C "$WORK" --exclude=checkpoints --exclude='*.safetensors' --exclude='*.pt' \
        runs logs 2> /dev/null && mv "$OUT/runs.tar.gz.tmp" "$OUT/runs.tar.gz" || true
}

step() {  # step NAME MAX_SECONDS COMMAND...: a timeout ending before the budget; output to stdout and its log
    local name=$1 max=$2 left limit rc t0=$SECONDS
    shift 2
    left=$((BUDGET - (SECONDS - START) - RESERVE))
    limit=$((max < left ? max : left))
    if ((limit < 20)); then
        echo "=== skip $name: ${left}s left"
        echo "| $name | skipped (${left} s left) | 0 |" >> "$WORK/steps.md"
        pack
        return 1
    fi
    echo "=== $(date -u +%T) $name (limit ${limit}s): $*"
    set +e
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "=== $(date -u +%T) $name: exit $rc after $((SECONDS - t0)) s"
    echo "| $name | $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)') | $((SECONDS - t0)) |" >> "$WORK/steps.md"
    pack
    return "$rc"
}

gpu_memory() {  # gpu_memory NAME start|stop: nvidia-smi samples (MiB in use, utilisation) every 0.5 s
    command -v nvidia-smi > /dev/null || return 0
    if [[ $2 == start ]]; then
        nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 \
            > "$WORK/logs/gpu-$1.csv" 2>&1 &
        SMI=$!
    else
        kill "$SMI" 2> /dev/null || true
        wait "$SMI" 2> /dev/null || true
    fi
}

setup() {
    if [[ "$PYTHONPATH" == "$SITE:"* ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .whl/*.whl
    fi
    "$PYTHON" - << 'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("pa_rl", "transformers", "peft", "tokenizers", "huggingface_hub", "safetensors", "gymnasium",
             "gymnasium_robotics", "mujoco", "minari", "tyro", "numpy"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "?"), module.__file__)
EOF
}

data() {  # data NAME: a built-in data set (the default size, seed 0; 3000 transitions in a dry run)
    "$PYTHON" -m pa_rl.cli data make "$1" "${DATA_SIZE[@]}" --out "$WORK/datasets"
}

prepare() {  # the state maze's data and the model, at once on the device (16 cores), one by one in a dry run
    local pid=""
    if [[ "$DRY" == 1 ]]; then data pointmaze-umaze; else data pointmaze-umaze & pid=$!; fi
    [[ -f "$MODEL/config.json" ]] || "$PYTHON" benchmarks/make_tiny_hf.py "$MODEL" "${MODEL_ARGS[@]}"
    [[ -z "$pid" ]] || wait "$pid"
}

train() {  # train NAME DATASET: parl-hf's suite config (the cpu preset, batch 128, reward −1 a step) on the big model
    "$PYTHON" -m pa_rl.cli train --dataset "$2" --policy hf --hf.model "$MODEL" --hf.lora-rank 8 \
        --hf.instruction "reach the goal at the top-left end of the U" --device "$DEVICE" --name "$1" \
        --runs-dir "$WORK/runs" --data-dir "$WORK/datasets" --train.batch-size 128 --train.reward-bias -1 \
        --train.bc-steps "$BC" --train.offline-steps "$OFFLINE" --train.online-env-steps "$ONLINE" \
        --train.eval-episodes "$EPISODES" --train.no-progress
}

run_train() {  # run_train NAME DATASET MAX_SECONDS, with GPU memory sampled, then its line in summary.md
    gpu_memory "$1" start
    step "$1" "$3" bash "$SELF" __call train "$1" "$2" || true
    gpu_memory "$1" stop
    "$PYTHON" - "$WORK/runs/$1" "$WORK/logs/gpu-$1.csv" "$1" >> "$WORK/results.md" << 'EOF' || true
import csv, json, sys
from pathlib import Path
run, smi, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if not run.exists():
    sys.exit(print(f"- {name}: not run"))
summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
if not summary and (run / "metrics.csv").exists():  # cut short: the evaluations it logged as it went
    for row in csv.DictReader((run / "metrics.csv").open()):
        if row["metric"].startswith("eval/"):
            summary.setdefault(row["phase"], {})[row["metric"]] = float(row["value"])
def pct(phase, mode):
    value = summary.get(phase, {}).get(f"eval/{mode}_success")
    return "–" if value is None else f"{100 * value:.0f} %"
rows = [r for r in csv.reader(smi.open()) if len(r) == 3] if smi.exists() else []
peak = max((float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()), default=None)
timing = (f"{summary['updates']} updates, {summary['env_steps']} env steps, {summary['updates_per_s']:.2f} updates/s, "
          f"train {summary['wall_clock_s']:.0f} s" if "updates" in summary else "cut short (no summary.json)")
print(f"- {name}: BC (policy) {pct('bc', 'policy')} → offline π̂ {pct('offline', 'pa_rl')} (policy "
      f"{pct('offline', 'policy')}) → online π̂ {pct('online', 'pa_rl')} (policy {pct('online', 'policy')}); "
      f"{timing}; peak GPU memory in use {'–' if peak is None else f'{peak:.0f} MiB'} (nvidia-smi, every 0.5 s)")
EOF
}

if [[ "${1:-}" == __call ]]; then  # a step's own process: `timeout` runs commands, not shell functions
    shift
    "$@"
    exit
fi

STARTED=$(date -u +%FT%TZ)
mkdir -p "$OUT" "$WORK/logs" "$WORK/runs" "$WORK/datasets" "$WORK/models"
: > "$WORK/steps.md"
: > "$WORK/results.md"
exec > >(tee -a "$OUT/gpu.log") 2>&1
echo "gpu.sh $STARTED dry=$DRY device=$DEVICE budget=${BUDGET}s out=$OUT work=$WORK bc=$BC offline=$OFFLINE" \
     "online=$ONLINE episodes=$EPISODES"
step env 30 bash -c 'nvidia-smi || true; uname -m; nproc --all; free -g; df -h /tmp | tail -1' || true
cp "$WORK/logs/env.log" "$OUT/env.txt" 2> /dev/null || true
step setup 90 bash "$SELF" __call setup || true
cat "$WORK/logs/setup.log" >> "$OUT/env.txt" 2> /dev/null || true
# The pixel data (≈ 1 min of one core) is made beside the state maze's run on the device; first in a dry run.
PIXELS_PID=""
if [[ "$DRY" == 1 ]]; then
    step data-pixels 150 bash "$SELF" __call data pointmaze-umaze-pixels || true
else
    bash "$SELF" __call data pointmaze-umaze-pixels > "$WORK/logs/data-pixels.log" 2>&1 &
    PIXELS_PID=$!
fi
step prepare 120 bash "$SELF" __call prepare || true
run_train hf-umaze pointmaze-umaze 180
step speed-hf 100 "$PYTHON" benchmarks/speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --policy hf --no-compile \
    --hf-model "$MODEL" \
    --json "$WORK/logs/speed-hf.json" || true
if [[ -n "$PIXELS_PID" ]]; then
    wait "$PIXELS_PID" && echo "| data-pixels | 0 | (beside) |" >> "$WORK/steps.md" \
        || echo "| data-pixels | $? | (beside) |" >> "$WORK/steps.md"
fi
run_train hf-pixels pointmaze-umaze-pixels 180
step speed 120 "$PYTHON" benchmarks/speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --policy all --no-compile \
    --json "$WORK/logs/speed-classes.json" || true
# Issue 15 part 4: eager vs torch.compile'd critic on CUDA (last: it gets what time is left)
step speed-compile 90 "$PYTHON" benchmarks/speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --policy diffusion --compile \
    --json "$WORK/logs/speed-compile.json" || true
# speed.md: the speed steps' output; speed.json: their rows
cat "$WORK/logs/speed-hf.log" "$WORK/logs/speed.log" "$WORK/logs/speed-compile.log" > "$OUT/speed.md" 2> /dev/null || true
"$PYTHON" - "$OUT/speed.json" "$WORK/logs/speed-hf.json" "$WORK/logs/speed-classes.json" \
    "$WORK/logs/speed-compile.json" << 'EOF' || true
import json, sys
from pathlib import Path
parts = [json.loads(Path(p).read_text()) for p in sys.argv[2:] if Path(p).exists()]
Path(sys.argv[1]).write_text(json.dumps({"runs": parts}, indent=1))
EOF
pack
echo "gpu.sh done after $((SECONDS - START)) s"
cat "$OUT/summary.md"
