#!/usr/bin/env bash
# Unattended, resumable GPU script for a short lease:
#   benchmarks/gpu_run.sh OUT [--budget-s S] [--benchmark-s S] [--skip-benchmark]
#                             [--resume TARBALL_OR_PARTS_PREFIX] [--prune K_LIST] [--models-s S]
# Phases, inside the budget (default 360 s): (1) the speed/accuracy benchmark (at most
# --benchmark-s, default 60% of the budget), (2) as many
# influence models of the reference case as fit, (3) estimates. With --prune (e.g. 10,20,40)
# phase 2 is instead `prune` of the run (needs a config that ranks on a validation split, e.g.
# TI_CONFIG=configs/cifar100-to-cifar10-validation.toml; $TI_PRUNE_SEEDS seeds, default 3),
# unless --models-s gives the models that long first: then the prune ranks on the grown run.
# $TI_WORKERS trains the models with that many worker processes (they share the GPUs); should
# they fail, the rest of the phase runs with one. $TI_SEED sets a new run's run.seed: each run
# added to benchmarks/data/reference-validation.npz (benchmarks/reference_archive.py RUN_DIR,
# after the lease) takes a seed not archived yet.
# Leaves in OUT: the benchmark JSON, the run directory as a tarball (split into 15 MB parts),
# a log and a summary.
# $TI_VARIANTS (e.g. plain,stack16-fast-r20x4) limits the benchmark's recipe variants;
# $TI_SPEED_ARGS passes more options to it (e.g. "--no-baselines --models 32").
# Needs no network; data from $TI_DATASETS (default ../shared/datasets). Where .git does not
# travel, set TRANSFER_INFLUENCE_GIT_SHA so that results name the commit they measured.
set -euo pipefail
out=${1:?usage: gpu_run.sh OUT [--budget-s S] [--resume TARBALL] [--skip-benchmark]}
shift
budget=360 resume="" benchmark=1 prune="" benchmark_s="" models_s=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-s) budget=$2; shift 2 ;;
    --resume) resume=$2; shift 2 ;;
    --benchmark-s) benchmark_s=$2; shift 2 ;;
    --skip-benchmark) benchmark=0; shift ;;
    --prune) prune=$2; shift 2 ;;
    --models-s) models_s=$2; shift 2 ;;
    *) echo "gpu_run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TI_DATASETS=${TI_DATASETS:-../shared/datasets}
config=${TI_CONFIG:-configs/cifar100-to-cifar10.toml}
run_dir=${TI_RUN_DIR:-runs/reference}
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
log="$out/gpu_run.log"
{
  echo "== $(date -u +%FT%TZ) budget ${budget}s, config $config, data $TI_DATASETS"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
  if [ -n "$resume" ]; then
    mkdir -p "$(dirname "$run_dir")"
    cat "$resume"* | tar -xzf - -C "$(dirname "$run_dir")"
    echo "resumed $(ls "$run_dir/chunks" | wc -l) chunks from $resume"
  fi
  if [ "$benchmark" = 1 ]; then
    echo "== benchmark ($(left) s left)"
    timeout "${benchmark_s:-$(( $(left) * 6 / 10 ))}" python3 benchmarks/gpu_speed.py --datasets "$TI_DATASETS" \
      --out "$out/gpu_speed.json" ${TI_VARIANTS:+--variants "$TI_VARIANTS"} ${TI_SPEED_ARGS:-} \
      || echo "benchmark stopped early (status $?)"
  fi
  limit=$(( $(left) - 60 ))
  if [ -z "$prune" ] || [ -n "$models_s" ]; then
    [ -n "$models_s" ] && [ "$models_s" -lt "$limit" ] && limit=$models_s
    if [ "$limit" -gt 30 ]; then
      echo "== influence models for ${limit}s"
      # A resumed run continues under its own stored config (its recipe may be an older one).
      if [ -f "$run_dir/run.json" ]; then what=("$run_dir")
      else what=("$config" --run-dir "$run_dir" ${TI_SEED:+--set run.seed=$TI_SEED}); fi
      models() {
        python3 -m transfer_influence run "${what[@]}" --time-limit "$1" --quiet \
          ${TI_MODELS:+--set run.models=$TI_MODELS} "${@:2}"
      }
      phase_start=$(date +%s)
      if [ -n "${TI_WORKERS:-}" ] && ! models "$limit" --workers "$TI_WORKERS"; then
        rest=$(( limit - ($(date +%s) - phase_start) ))
        echo "$TI_WORKERS workers failed; one worker for the remaining ${rest}s"
        if [ -f "$run_dir/run.json" ]; then what=("$run_dir"); fi
        if [ "$rest" -gt 30 ]; then models "$rest" || echo "models stopped (status $?)"; fi
      elif [ -z "${TI_WORKERS:-}" ]; then
        models "$limit"
      fi
    fi
  fi
  limit=$(( $(left) - 60 ))
  if [ -n "$prune" ] && [ "$limit" -gt 30 ]; then
    echo "== prune k=$prune for ${limit}s"
    python3 -m transfer_influence prune "$run_dir" --k "$prune" --seeds "${TI_PRUNE_SEEDS:-3}" \
      --time-limit "$limit" --quiet || echo "prune stopped (status $?)"  # keep the run
  fi
  if [ -d "$run_dir/chunks" ]; then
    python3 -m transfer_influence status "$run_dir"
    python3 -m transfer_influence estimate "$run_dir" --top 5
    tar -czf - -C "$(dirname "$run_dir")" "$(basename "$run_dir")" \
      | split -b 15m - "$out/run.tar.gz.part-"
  fi
  echo "== done in $(( $(date +%s) - start )) s"
} 2>&1 | tee "$log"
