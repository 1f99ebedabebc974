#!/usr/bin/env bash
# The GPU run of the pipeline benchmark in one command, on a machine without network:
#
#   bash benchmarks/gpu/run.sh            # figures in $OUT, or .xsd/gpu-bench/ without it
#
# 1. Installs .whl/*.whl (benchmarks/gpu/prepare_wheels.sh) into a target folder with
#    --no-deps when .whl/ is there, and puts that folder and the repository on PYTHONPATH.
# 2. Runs `python -m benchmarks.pipeline` once per step, most important figures first:
#    fp16-eager, bf16-eager and fp16-compiled at the first size for every batch size, then
#    each further size (2K, 4K output) at batch 1 against the first size, then
#    bf16-compiled, then the fast path (XSD_COMPILE=static with CUDA graphs, alone and
#    with an fp8 UNet), which runs only with time left or when named in
#    XSD_GPU_BENCH_ONLY. Each step writes <step>.json and <step>.txt (its table and log).
#    The fast path's differences from float16 are `python -m benchmarks.fastpath`'s.
# 3. Writes summary.json and summary.md (one Markdown table) from whatever finished.
#
# Every step has its own timeout and the whole run a budget (default 450 s, inside the
# 8 minutes a device call may take): a step is cut at what is left of the budget, steps
# that would get under a minute are skipped, and a cut step loses its figures, not the
# others'. Settings, all optional:
#   XSD_GPU_BENCH_MODEL     sdxl-random        XSD_GPU_BENCH_DEVICE    cuda
#   XSD_GPU_BENCH_STEPS     20                 XSD_GPU_BENCH_GUIDANCE  8
#   XSD_GPU_BENCH_BATCHES   1,2,4,8            XSD_GPU_BENCH_SIZES     1024x1024,2048x2048,4096x4096
#   XSD_GPU_BENCH_WARMUP    1                  XSD_GPU_BENCH_REPEATS   2
#   XSD_GPU_BENCH_BUDGET_S  450                XSD_GPU_BENCH_MIN_STEP_S 60
#   XSD_GPU_BENCH_ONLY      step names to run, comma-separated (default: all)
#   XSD_GPU_BENCH_PYTHON    python3            XSD_GPU_BENCH_WHEELS    .whl
#   XSD_GPU_BENCH_SITE      /tmp/site (where the wheels are installed)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1

PYTHON=${XSD_GPU_BENCH_PYTHON:-python3}
MODEL=${XSD_GPU_BENCH_MODEL:-sdxl-random}
DEVICE=${XSD_GPU_BENCH_DEVICE:-cuda}
STEPS=${XSD_GPU_BENCH_STEPS:-20}
GUIDANCE=${XSD_GPU_BENCH_GUIDANCE:-8}
BATCHES=${XSD_GPU_BENCH_BATCHES:-1,2,4,8}
SIZES=${XSD_GPU_BENCH_SIZES:-1024x1024,2048x2048,4096x4096}
WARMUP=${XSD_GPU_BENCH_WARMUP:-1}
REPEATS=${XSD_GPU_BENCH_REPEATS:-2}
BUDGET_S=${XSD_GPU_BENCH_BUDGET_S:-450}
MIN_STEP_S=${XSD_GPU_BENCH_MIN_STEP_S:-60}
ONLY=${XSD_GPU_BENCH_ONLY:-}
WHEELS=${XSD_GPU_BENCH_WHEELS:-$ROOT/.whl}
SITE=${XSD_GPU_BENCH_SITE:-/tmp/site}
OUT=${OUT:-$ROOT/.xsd/gpu-bench}
BASE_SIZE=${SIZES%%,*}

mkdir -p "$OUT"
: >"$OUT/steps.tsv"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

install_wheels() {
    local wheels=("$WHEELS"/*.whl)
    [[ -e ${wheels[0]} ]] || return 0
    # A warm machine keeps the folder: the same wheels are not installed twice.
    local listing
    listing=$(cd "$WHEELS" && ls -- *.whl)
    if [[ "$(cat "$SITE/.xsd-wheels" 2>/dev/null)" != "$listing" ]]; then
        echo "installing ${#wheels[@]} wheels into $SITE"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "${wheels[@]}" || return 1
        printf '%s\n' "$listing" >"$SITE/.xsd-wheels"
    fi
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#"$ROOT"}"
}

# step NAME TIMEOUT_S WHAT ARGS...: one benchmark process, cut at its timeout or at the
# budget left, whichever comes first; records its outcome in steps.tsv.
step() {
    local name=$1 limit=$2 what=$3
    shift 3
    if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then
        return 0
    fi
    local left=$((BUDGET_S - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < MIN_STEP_S)); then
        printf '%s\tskipped (budget)\t0\t0\t%s\n' "$name" "$what" >>"$OUT/steps.tsv"
        return 0
    fi
    echo "== $name ($what), up to ${limit}s"
    local started=$SECONDS code status
    timeout --kill-after=10 "$limit" "$PYTHON" -m benchmarks.pipeline --model "$MODEL" \
        --device "$DEVICE" --steps "$STEPS" --guidance "$GUIDANCE" --warmup "$WARMUP" \
        --repeats "$REPEATS" --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1
    code=$?
    case $code in
        0) status=ok ;;
        124 | 137) status="timed out after ${limit}s" ;;
        *) status=failed ;;
    esac
    tail -n 20 "$OUT/$name.txt"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" $((SECONDS - started)) "$code" "$what" \
        >>"$OUT/steps.tsv"
}

if ! install_wheels; then
    echo "installing $WHEELS failed; running with what the machine has" >&2
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'

step fp16-eager 150 "float16, eager, $BASE_SIZE, batches $BATCHES" \
    --dtype float16 --batch-sizes "$BATCHES" --size "$BASE_SIZE"
step bf16-eager 120 "bfloat16, eager, $BASE_SIZE, batches $BATCHES" \
    --dtype bfloat16 --batch-sizes "$BATCHES" --size "$BASE_SIZE"
step fp16-compiled 180 "float16, torch.compile, $BASE_SIZE, batches $BATCHES" \
    --dtype float16 --compile --batch-sizes "$BATCHES" --size "$BASE_SIZE"
IFS=, read -r -a LARGE <<<"${SIZES#"$BASE_SIZE"}"
for size in "${LARGE[@]}"; do
    [[ -n $size ]] || continue
    step "fp16-eager-$size" 90 "float16, eager, $size output against $BASE_SIZE, batch 1" \
        --dtype float16 --batch-sizes 1 --size "$BASE_SIZE,$size"
done
step bf16-compiled 180 "bfloat16, torch.compile, $BASE_SIZE, batches $BATCHES" \
    --dtype bfloat16 --compile --batch-sizes "$BATCHES" --size "$BASE_SIZE"
step fp16-static 180 "float16, static compile + CUDA graphs, $BASE_SIZE, batches $BATCHES" \
    --dtype float16 --compile static --batch-sizes "$BATCHES" --size "$BASE_SIZE"
step fp8-static 180 "float16, fp8 UNet linears, static compile, $BASE_SIZE, batches $BATCHES" \
    --dtype float16 --quantize fp8 --compile static --batch-sizes "$BATCHES" --size "$BASE_SIZE"

"$PYTHON" -m benchmarks.gpu.summary "$OUT"
cat "$OUT/summary.md"
echo "figures in $OUT"
