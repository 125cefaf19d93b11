# VoxCeleb recipe settings (sourced by run.sh; every variable here is also a --option of run.sh).
train_set=vox2_dev                    # data/<train_set>: Kaldi dir of VoxCeleb2 dev (5,994 speakers)
eval_set=vox1                         # data/<eval_set>: all of VoxCeleb1 (dev + test, for the E and H lists)
trials="vox1/trials/vox1_O_cleaned.kaldi vox1/trials/vox1_E_cleaned.kaldi vox1/trials/vox1_H_cleaned.kaldi"
system=lap_wavlm_base_plus            # conf/systems/<system>.yaml
phases="phase1_frozen phase2_joint_ft phase3_lmft"   # conf/<phase>.yaml, run in order
gpus="0,1,2,3,4,5,6,7"               # CUDA devices; torchrun starts one process per device
cpu_procs=1                           # processes when gpus is empty (CPU, gloo)
archive_dir=/path/to/voxceleb_archives  # the official archives you downloaded (see README)
prepare_opts=""                       # more options of bin.prepare_voxceleb, split like a shell command line:
                                      # --skip_failed_conversions, --raw_dir DIR, --md5_file F, --skip_md5, ...
cache_dir=$PWD/s3prl_cache            # pre-staged upstream weights (stage 2 fills it)
nj=8                                  # parallel jobs for ffmpeg and list making
train_overrides=""                    # key=value overrides for every phase, split like a shell command line
data_format=raw                       # raw: read the wav.scp files; shard: tar shards written in stage 2
utts_per_shard=1000                   # utterances per shard (data_format=shard)
# Stages 4-6 (averaging, extraction, scoring, report) are set in conf/eval.yaml.

# Config overrides that place the upstream: a different s3prl name (or the system's), cached weights.
upstream_overrides() {
  if [ -n "$1" ]; then echo "model.upstream.name=$1"; fi
  echo "model.upstream.cache_dir=$cache_dir"
}

# Stage 1: official archives -> Kaldi dirs and cleaned trials, by the entry script itself.
# The variables its output depends on (recorded in stage 1's sentinel; a change is named at the next run):
prepare_data_settings="prepare_opts"
prepare_data() {
  local opts
  words opts prepare_opts "$prepare_opts"   # tools/recipe_lib.sh
  python -m wespeaker_lap.bin.prepare_voxceleb --archive_dir "$archive_dir" --data_dir data --nj "$nj" \
    ${opts[@]+"${opts[@]}"}
}

# Stage 2: the upstream's weights ($upstream_name: --upstream or the system's), downloaded once into
# $cache_dir, and the MUSAN/RIR lists.
prepare_resources_settings="cache_dir"
prepare_resources() {
  download_upstream.py "$upstream_name" --cache_dir "$cache_dir"
  python -m wespeaker_lap.bin.prepare_augment --archive_dir "$archive_dir" --data_dir data --nj "$nj"
}
