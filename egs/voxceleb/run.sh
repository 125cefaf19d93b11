#!/usr/bin/env bash
# Speaker verification with Layer Attentive Pooling (LAP) on an s3prl upstream, in six stages:
#   1 data preparation                                  (prepare_data in conf/recipe.sh)
#   2 upstream weights + augmentation lists, staged once (prepare_resources in conf/recipe.sh); tar shards
#   3 training: phase 1 frozen upstream, phase 2 joint fine-tuning, phase 3 large-margin fine-tuning
#   4 model averaging and embeddings: test sets, training mean, AS-Norm cohort
#   5 scoring: cosine (training mean subtracted), AS-Norm, quality-aware calibration
#   6 result table (EER with 95% CI, minDCF at p=0.01 and 0.05), DET curves, LAP gate heat map
# The same file drives every recipe (egs/mini/run.sh links here); conf/ and local/ hold what differs:
# conf/recipe.sh the corpus paths, set names and the hooks prepare_data, prepare_resources and
# upstream_overrides; conf/<phase>.yaml and conf/systems/ the training; conf/eval.yaml stages 4-6.
#
# Each step leaves a sentinel recording the settings that made it (tools/sentinel.py): a re-run skips
# it ("already done"), stops when the settings changed (naming them; --force true redoes it), and
# redoes it when a step it builds on ran again. Training resumes itself.
# Several nodes (README "Several nodes"): the same command on every node with --num_nodes N and its
# --node_rank; node 0 alone runs the steps that are not torchrun launches, the others wait for them.
# Option lists (--train_overrides, --eval_overrides, --prepare_opts) are split like a shell command
# line: "train.epochs=2 'train.init_from=/my models/a.pt'" is two words.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh
. ./conf/recipe.sh   # corpus defaults: train_set, eval_set, trials, system, gpus, ...

stage=1
stop_stage=6
exp_dir=""           # default: exp/<system>, or exp/<system>_<upstream> with --upstream
upstream=""          # any s3prl name (wavlm_large, hubert_large_ll60k, ...); empty keeps the system's
# torchrun: GPUs "0,1,2,3" (empty: CPU with $cpu_procs processes); several nodes via c10d rendezvous
num_nodes=1
node_rank=0          # this node (0 .. num_nodes-1); node 0 runs the single-process steps
rdzv_endpoint=localhost:29400
rdzv_id=${SLURM_JOB_ID:-}   # several nodes: the same on every node, new for every job
node_wait_timeout=86400     # seconds a node > 0 waits for one of node 0's steps
force=false          # true re-runs the stages in --stage..--stop_stage that are done
eval_conf=conf/eval.yaml
eval_overrides=""    # key=value overrides of $eval_conf for stages 4-6, e.g. "cohort.top_k=300 extraction.mode=fast"
help_message="Usage: $0 [--stage N] [--stop_stage N] [--system NAME] [--upstream NAME] [--exp_dir DIR]
                [--gpus 0,1,...] [--cpu_procs N] [--force true]
                [--num_nodes N --node_rank R --rdzv_endpoint HOST:PORT --rdzv_id ID] [--node_wait_timeout S]
                [--train_overrides \"key=value ...\"] [--eval_conf YAML] [--eval_overrides \"key=value ...\"]
Every variable of conf/recipe.sh is an option too. Lists of overrides are split like a shell command line.
Systems: $(cd conf/systems && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')"
. ../../tools/parse_options.sh
. ../../tools/recipe_lib.sh
exp_dir=${exp_dir:-exp/${system}${upstream:+_$upstream}}

# ---------------------------------------------------------------- checks, launcher, node roles
system_conf=conf/systems/${system}.yaml
[ -f "$system_conf" ] || { echo "$0: no system config $system_conf" >&2; exit 1; }
case "$force" in true|false) ;; *) echo "$0: --force must be true or false, got '$force'" >&2; exit 1 ;; esac
case "$num_nodes:$node_rank" in *[!0-9:]*|:*|*:|0*:*)
  echo "$0: --num_nodes must be a positive and --node_rank a non-negative integer" >&2; exit 1 ;;
esac
if [ "$node_rank" -ge "$num_nodes" ]; then
  echo "$0: --node_rank must be in 0..$(( num_nodes - 1 )) (--num_nodes $num_nodes), got $node_rank" >&2; exit 1
fi
if [ "$num_nodes" -gt 1 ] && [ -z "$rdzv_id" ]; then
  echo "$0: --num_nodes $num_nodes needs --rdzv_id ID: the same on every node and new for every job" \
       "(e.g. the job id; under SLURM it defaults to \$SLURM_JOB_ID)" >&2; exit 1
fi
job=$rdzv_id
words train_override_list train_overrides "$train_overrides"
words eval_override_list eval_overrides "$eval_overrides"
overrides_text=$(upstream_overrides "$upstream")   # from conf/recipe.sh: one key=value per line
model_overrides=()
[ -z "$overrides_text" ] || mapfile -t model_overrides <<< "$overrides_text"
upstream_name=${upstream:-$(config_value.py --config "$system_conf" model.upstream.name)}

if [ -n "$gpus" ]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
  nproc=$(echo "$gpus" | tr ',' '\n' | grep -c .)
else
  export CUDA_VISIBLE_DEVICES=""   # CPU processes, gloo
  nproc=$cpu_procs
fi
# launch ID ...: torchrun; with several nodes, a rendezvous of its own per launch (every node derives the same)
launch() {
  local id=$1
  shift
  if [ "$num_nodes" -gt 1 ]; then
    torchrun --nnodes="$num_nodes" --nproc_per_node="$nproc" --rdzv_backend=c10d \
      --rdzv_endpoint="$rdzv_endpoint" --rdzv_id="$rdzv_id-$id" "$@"
  else
    torchrun --standalone --nnodes=1 --nproc_per_node="$nproc" "$@"
  fi
}
failed_marker=$exp_dir/.node0_failed
if [ "$num_nodes" -gt 1 ]; then
  echo "run.sh: node $node_rank of $num_nodes (rendezvous $rdzv_endpoint, job $job), $nproc processes per node," \
       "experiment $exp_dir"
  [ "$node_rank" -ne 0 ] || rm -f "$failed_marker"
  trap node0_failed EXIT
  trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM   # the EXIT trap runs on these too
fi
in_range() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
exp_hint="use --force true to redo it, or another --exp_dir"
before_hint="run from that stage with --force true to redo it, or use another --exp_dir"

# settings_vars NAME...: the sentinel settings of recipe variables (conf/recipe.sh lists them per hook)
settings_vars() {
  local name
  for name in "$@"; do settings+=(--set "$name=${!name}"); done
}

# ---------------------------------------------------------------- 1. data
if in_range 1; then
  settings=(--hash "prepare_data (conf/recipe.sh)" "$(declare -f prepare_data)")
  settings_vars $prepare_data_settings
  step_todo data/.done_prepare "stage 1" \
    "use --force true to prepare the data again (data/ is shared by every experiment)"
  if [ "$todo" != skip ]; then
    banner "stage 1" "data preparation" "data/"
    on_node0 prepare_data
    step_done data/.done_prepare "stage 1"
    wrote "stage 1" "data/$train_set" "data/$eval_set"
  fi
fi

# ---------------------------------------------------------------- 2. upstream weights, augmentation lists, shards
if in_range 2; then
  settings=(--set "upstream=$upstream_name" --input "stage 1" data/.done_prepare
            --hash "prepare_resources (conf/recipe.sh)" "$(declare -f prepare_resources)")
  settings_vars $prepare_resources_settings
  step_todo "data/.done_resources_$upstream_name" "stage 2" "use --force true to stage them again"
  if [ "$todo" != skip ]; then
    banner "stage 2" "upstream weights ($upstream_name) and augmentation lists" "data/"
    on_node0 prepare_resources
    step_done "data/.done_resources_$upstream_name" "stage 2"
    wrote "stage 2" data/musan.list data/rirs.list
  fi
  if [ "$data_format" = shard ]; then   # tar shards of the training set
    settings=(--set "train_set=$train_set" --set "utts_per_shard=$utts_per_shard" --input "stage 1" data/.done_prepare)
    step_todo "data/.done_shards_$train_set" "stage 2 shards" "use --force true to write them again"
    if [ "$todo" != skip ]; then
      banner "stage 2 shards" "tar shards of data/$train_set ($utts_per_shard utterances each)" "data/$train_set/shards"
      on_node0 python -m wespeaker_lap.bin.make_shards --data_dir "data/$train_set" \
        --utts_per_shard "$utts_per_shard" --nj "${nj:-$cpu_procs}"
      step_done "data/.done_shards_$train_set" "stage 2 shards"
      wrote "stage 2 shards" "data/$train_set/shards/shard.list"
    fi
  fi
fi

# ---------------------------------------------------------------- 3. training, three phases
if [ "$stop_stage" -ge 3 ]; then   # stages before --stage are verified only
  init=()
  prev=""
  for phase in $phases; do
    phase_dir=$exp_dir/$phase
    train_args=(data.train_dir="data/$train_set" data.format="$data_format" data.augment.musan_list=data/musan.list
                data.augment.rir_list=data/rirs.list ${init[@]+"${init[@]}"}
                ${model_overrides[@]+"${model_overrides[@]}"} ${train_override_list[@]+"${train_override_list[@]}"})
    config=$(config_value.py --flat --config "conf/${phase}.yaml" --config "$system_conf" "${train_args[@]}")
    settings=(--set "system=$system" --set "upstream=$upstream_name" --set "train_overrides=${train_override_list[*]}"
              --lines "$config" --input "stage 1" data/.done_prepare
              --input "stage 2" "data/.done_resources_$upstream_name")
    [ "$data_format" != shard ] || settings+=(--input "stage 2 shards" "data/.done_shards_$train_set")
    [ -z "$prev" ] || settings+=(--after "stage 3 $prev" "$exp_dir/$prev/.done")
    if in_range 3; then
      step_todo "$phase_dir/.done" "stage 3 $phase" "$exp_hint"
      if [ "$todo" != skip ]; then
        banner "stage 3 $phase" "training" "$phase_dir"
        if [ "$todo" = rerun ]; then on_node0 rm -rf "$phase_dir"; fi   # a new run, not a resume of the old one
        launch "stage3-$phase" -m wespeaker_lap.bin.train --config "conf/${phase}.yaml" --config "$system_conf" \
          --exp_dir "$phase_dir" "${train_args[@]}"
        step_done "$phase_dir/.done" "stage 3 $phase"
        wrote "stage 3 $phase" "$phase_dir/final_model.pt" "$phase_dir/train.log" "$phase_dir/training_curve.png"
      fi
    else
      step_verify "$phase_dir/.done" "stage 3 $phase" "$before_hint"
    fi
    init=(train.init_from="$phase_dir/final_model.pt")
    prev=$phase
  done
fi

# ---------------------------------------------------------------- 4. averaging and embeddings
last_phase=${phases##* }
eval_opts=(--config "$eval_conf" ${eval_override_list[@]+"${eval_override_list[@]}"})
eval_settings() {  # eval_settings SECTION...: the resolved sections of the evaluation config, as sentinel settings
  local section sections=()
  for section in "$@"; do sections+=(--section "$section"); done
  settings+=(--lines "$(config_value.py --schema eval --flat "${sections[@]}" "${eval_opts[@]}")")
}
if [ "$stop_stage" -ge 4 ]; then
  settings=(--set "train_set=$train_set" --set "eval_set=$eval_set"
            --after "stage 3 $last_phase" "$exp_dir/$last_phase/.done")
  eval_settings averaging extraction cohort.source cohort.type
  if in_range 4; then
    step_todo "$exp_dir/.done_extract" "stage 4" "$exp_hint"
    if [ "$todo" != skip ]; then
      banner "stage 4" "averaging the last checkpoints of $last_phase, extracting embeddings" "$exp_dir"
      if [ "$todo" = rerun ]; then on_node0 rm -rf "$exp_dir/embeddings"; fi
      on_node0 python -m wespeaker_lap.bin.average_model --exp_dir "$exp_dir/$last_phase" \
        --out "$exp_dir/final_model.pt" "${eval_opts[@]}"
      step_done "$exp_dir/.done_average" "stage 4 averaging"
      cohort_set=$(config_value.py --schema eval cohort.source "${eval_opts[@]}")
      [ "$cohort_set" != train ] || cohort_set=$train_set
      sets=$(printf '%s\n' $eval_set $train_set $cohort_set | awk 'NF && !seen[$0]++')   # each set once, in order
      for dset in $sets; do
        mean_opt=()
        [ "$dset" = "$train_set" ] && mean_opt=(--mean_out "$exp_dir/embeddings/train_mean.npy")
        launch "stage4-$dset" -m wespeaker_lap.bin.extract --model "$exp_dir/final_model.pt" \
          --data_dir "data/$dset" --out_dir "$exp_dir/embeddings/$dset" ${mean_opt[@]+"${mean_opt[@]}"} \
          "${eval_opts[@]}"
      done
      model_sha=$(on_node0 sha256sum "$exp_dir/final_model.pt" | cut -d' ' -f1)
      step_done "$exp_dir/.done_extract" "stage 4" --note "final_model_sha256=$model_sha"
      wrote "stage 4" "$exp_dir/final_model.pt" "$exp_dir/embeddings"
    fi
  else
    step_verify "$exp_dir/.done_extract" "stage 4" "$before_hint"
  fi
fi

# ---------------------------------------------------------------- 5. scoring (node 0)
if [ "$node_rank" -ne 0 ]; then
  if [ "$stop_stage" -ge 5 ] && [ "$stage" -le 6 ]; then echo "stages 5-6 run on node 0; node $node_rank is done"; fi
  exit 0
fi
if [ "$stop_stage" -ge 5 ]; then
  settings=(--set "trials=$trials" --set "train_set=$train_set" --set "eval_set=$eval_set"
            --after "stage 4" "$exp_dir/.done_extract")
  eval_settings cohort calibration
  if in_range 5; then
    step_todo "$exp_dir/.done_score" "stage 5" "$exp_hint"
    if [ "$todo" != skip ]; then
      banner "stage 5" "cosine, AS-Norm and calibrated scoring" "$exp_dir/scores"
      if [ "$todo" = rerun ]; then rm -rf "$exp_dir/scores"; fi
      trial_files=()
      for t in $trials; do trial_files+=("data/$t"); done
      python -m wespeaker_lap.bin.score --trials "${trial_files[@]}" --data_dir data \
        --embeddings_dir "$exp_dir/embeddings" --train_set "$train_set" --eval_set "$eval_set" \
        --out_dir "$exp_dir/scores" "${eval_opts[@]}"
      step_done "$exp_dir/.done_score" "stage 5"
      wrote "stage 5" "$exp_dir/scores"
    fi
  else
    step_verify "$exp_dir/.done_score" "stage 5" "$before_hint"
  fi
fi

# ---------------------------------------------------------------- 6. results (node 0)
if in_range 6; then
  settings=(--set "system=$system" --after "stage 5" "$exp_dir/.done_score" --after "stage 4" "$exp_dir/.done_extract")
  eval_settings report
  step_todo "$exp_dir/.done_report" "stage 6" "$exp_hint"
  if [ "$todo" != skip ]; then
    banner "stage 6" "results table, DET curves, LAP gates" "$exp_dir"
    python -m wespeaker_lap.bin.make_report --scores_dir "$exp_dir/scores" --system "$system" \
      --out "$exp_dir/results.md" "${eval_opts[@]}"
    first_utt=$(head -n 1 "data/$eval_set/wav.scp" | cut -d' ' -f2-)
    python -m wespeaker_lap.bin.plot_gates --model "$exp_dir/final_model.pt" --wav "$first_utt" \
      --out "$exp_dir/lap_gates.png" --skip_without_gates
    step_done "$exp_dir/.done_report" "stage 6"
    wrote "stage 6" "$exp_dir/results.md" "$exp_dir"/det_*.png "$exp_dir/lap_gates.png"
  fi
fi
