#!/usr/bin/env bash
# Speaker verification with Layer Attentive Pooling (LAP) on an s3prl upstream, in six stages:
#   1 data preparation                                  (prepare_data in conf/recipe.sh)
#   2 upstream weights + augmentation lists, staged once (prepare_resources in conf/recipe.sh)
#   3 training: phase 1 frozen upstream, phase 2 joint fine-tuning, phase 3 large-margin fine-tuning
#   4 model averaging and embeddings: test sets, training mean, AS-Norm cohort
#   5 scoring: cosine (training mean subtracted), AS-Norm, quality-aware calibration
#   6 result table (EER with 95% CI, minDCF at p=0.01 and 0.05), DET curves, LAP gate heat map
# The same file drives every recipe (egs/mini/run.sh links here); conf/ and local/ hold what differs:
# conf/recipe.sh the corpus paths, set names and the hooks prepare_data, prepare_resources and
# upstream_overrides; conf/<phase>.yaml and conf/systems/ the training; conf/eval.yaml stages 4-6.
# Each stage leaves a sentinel file, so re-running a finished stage does nothing; training resumes itself.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh
. ./conf/recipe.sh   # corpus defaults: train_set, eval_set, trials, system, gpus, ...

stage=1
stop_stage=6
exp_dir=""           # default: exp/<system>
upstream=""          # any s3prl name (wavlm_large, hubert_large_ll60k, ...); empty keeps the system's
# torchrun: GPUs "0,1,2,3" (empty: CPU with $cpu_procs processes); several nodes via c10d rendezvous
num_nodes=1
rdzv_endpoint=localhost:29400
rdzv_id=wespeaker_lap
force=false          # true re-runs stages whose sentinel exists
eval_conf=conf/eval.yaml
eval_overrides=""    # key=value overrides of $eval_conf for stages 4-6, e.g. "cohort.top_k=300 extraction.mode=fast"
help_message="Usage: $0 [--stage N] [--stop_stage N] [--system NAME] [--upstream NAME] [--exp_dir DIR]
                [--gpus 0,1,...] [--cpu_procs N] [--num_nodes N --rdzv_endpoint HOST:PORT --rdzv_id ID]
                [--eval_conf YAML] [--eval_overrides \"key=value ...\"]
Systems: $(cd conf/systems && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')"
. ../../tools/parse_options.sh
exp_dir=${exp_dir:-exp/$system}

# ---------------------------------------------------------------- helpers
must_run() {  # must_run <sentinel>: true when the stage still has to run (no sentinel, or --force true)
  [ "$force" = true ] || [ ! -f "$1" ]
}
if [ -n "$gpus" ]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
  nproc=$(echo "$gpus" | tr ',' '\n' | grep -c .)
else
  export CUDA_VISIBLE_DEVICES=""   # CPU processes, gloo
  nproc=$cpu_procs
fi
if [ "$num_nodes" -gt 1 ]; then
  launch=(torchrun --nnodes="$num_nodes" --nproc_per_node="$nproc" --rdzv_backend=c10d
          --rdzv_endpoint="$rdzv_endpoint" --rdzv_id="$rdzv_id")
else
  launch=(torchrun --standalone --nnodes=1 --nproc_per_node="$nproc")
fi
system_conf=conf/systems/${system}.yaml
[ -f "$system_conf" ] || { echo "$0: no system config $system_conf" >&2; exit 1; }
model_overrides=($(upstream_overrides "$upstream"))   # from conf/recipe.sh

# ---------------------------------------------------------------- 1. data
if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  if must_run data/.done_prepare; then
    echo "stage 1: data preparation"
    prepare_data
    touch data/.done_prepare
  fi
fi

# ---------------------------------------------------------------- 2. upstream weights, augmentation lists
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  if must_run "data/.done_resources_${upstream:-$system}"; then
    echo "stage 2: staging upstream weights and augmentation lists"
    prepare_resources
    touch "data/.done_resources_${upstream:-$system}"
  fi
  if [ "$data_format" = shard ]; then   # tar shards of the training set (a rerun with the same inputs does nothing)
    echo "stage 2: tar shards of data/$train_set ($utts_per_shard utterances each)"
    python -m wespeaker_lap.bin.make_shards --data_dir "data/$train_set" --utts_per_shard "$utts_per_shard" \
      --nj "${nj:-$cpu_procs}"
  fi
fi

# ---------------------------------------------------------------- 3. training, three phases
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  init=()
  for phase in $phases; do
    phase_dir=$exp_dir/$phase
    if must_run "$phase_dir/.done"; then
      echo "stage 3: training $phase -> $phase_dir"
      "${launch[@]}" -m wespeaker_lap.bin.train \
        --config "conf/${phase}.yaml" --config "$system_conf" --exp_dir "$phase_dir" \
        data.train_dir=data/$train_set data.format=$data_format data.augment.musan_list=data/musan.list \
        data.augment.rir_list=data/rirs.list ${init[@]+"${init[@]}"} \
        ${model_overrides[@]+"${model_overrides[@]}"} ${train_overrides:-}
      touch "$phase_dir/.done"
    fi
    init=(train.init_from="$phase_dir/final_model.pt")
  done
fi

# ---------------------------------------------------------------- 4. averaging and embeddings
last_phase=${phases##* }
eval_opts=(--config "$eval_conf" $eval_overrides)
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  if must_run "$exp_dir/.done_extract"; then
    echo "stage 4: averaging the last checkpoints of $last_phase, extracting embeddings"
    python -m wespeaker_lap.bin.average_model --exp_dir "$exp_dir/$last_phase" --out "$exp_dir/final_model.pt" \
      "${eval_opts[@]}"
    cohort_set=$(config_value.py --schema eval --config "$eval_conf" cohort.source $eval_overrides)
    case "$cohort_set" in train|"$train_set"|"$eval_set") cohort_set="" ;; esac   # extracted anyway
    for dset in $eval_set $train_set $cohort_set; do
      mean_opt=()
      [ "$dset" = "$train_set" ] && mean_opt=(--mean_out "$exp_dir/embeddings/train_mean.npy")
      "${launch[@]}" -m wespeaker_lap.bin.extract --model "$exp_dir/final_model.pt" \
        --data_dir "data/$dset" --out_dir "$exp_dir/embeddings/$dset" ${mean_opt[@]+"${mean_opt[@]}"} "${eval_opts[@]}"
    done
    touch "$exp_dir/.done_extract"
  fi
fi

# ---------------------------------------------------------------- 5. scoring
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  if must_run "$exp_dir/.done_score"; then
    echo "stage 5: cosine, AS-Norm and calibrated scoring"
    trial_files=()
    for t in $trials; do trial_files+=("data/$t"); done
    python -m wespeaker_lap.bin.score --trials "${trial_files[@]}" --data_dir data \
      --embeddings_dir "$exp_dir/embeddings" --train_set "$train_set" --eval_set "$eval_set" \
      --out_dir "$exp_dir/scores" "${eval_opts[@]}"
    touch "$exp_dir/.done_score"
  fi
fi

# ---------------------------------------------------------------- 6. results
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  echo "stage 6: results table, DET curves, LAP gates"
  python -m wespeaker_lap.bin.make_report --scores_dir "$exp_dir/scores" --system "$system" \
    --out "$exp_dir/results.md" "${eval_opts[@]}"
  first_utt=$(head -n 1 "data/$eval_set/wav.scp" | cut -d' ' -f2-)
  python -m wespeaker_lap.bin.plot_gates --model "$exp_dir/final_model.pt" --wav "$first_utt" \
    --out "$exp_dir/lap_gates.png" || echo "(no LAP gates for system $system)"
fi
