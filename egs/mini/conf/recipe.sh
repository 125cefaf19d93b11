# Mini recipe settings: an offline real-voice TTS corpus and a tiny random-init upstream, on CPU.
# Same stages and code as egs/voxceleb; every variable here is also a --option of run.sh.
train_set=train                       # data/train: 30 speakers (speaker-disjoint from test)
eval_set=test                         # data/test: 10 held-out speakers
trials="test/trials"
system=lap_tiny                       # conf/systems/<system>.yaml
phases="phase1_frozen phase2_joint_ft phase3_lmft"
gpus=""                               # empty: CPU
cpu_procs=2                           # 2-process DDP (gloo), so the distributed path always runs
n_speakers=40                         # corpus size (train + test speakers)
n_test_speakers=10
n_utts=20                             # utterances per speaker
augment=light                         # corpus-level noise/reverb/channel: none|light|medium
seed=0
train_overrides=""                    # key=value overrides for every phase, split like a shell command line
data_format=raw                       # raw: read the wav.scp files; shard: tar shards written in stage 2
utts_per_shard=25                     # utterances per shard (data_format=shard)
# Stages 4-6 (averaging, extraction, scoring, report) are set in conf/eval.yaml.

# Config overrides that place the upstream: the tiny checkpoint of the chosen family (stage 2 writes them).
upstream_overrides() {
  local name=${1:-wavlm_local}
  case "$name" in
    wavlm_local|hubert_local|wav2vec2_local) ;;
    *) echo "mini recipe: --upstream must be wavlm_local, hubert_local or wav2vec2_local (got $name)" >&2
       return 1 ;;
  esac
  echo "model.upstream.name=$name"
  echo "model.upstream.path=$PWD/tiny_upstream/${name%_local}.pt"
}

# Stage 1: the TTS corpus (needs the packages of local/install_tts.sh), by its entry script.
# The variables its output depends on (recorded in stage 1's sentinel; a change is named at the next run):
prepare_data_settings="n_speakers n_test_speakers n_utts augment seed"
prepare_data() {
  python local/make_tts_corpus.py --out data --n_speakers "$n_speakers" --n_test_speakers "$n_test_speakers" \
    --n_utts "$n_utts" --augment "$augment" --seed "$seed" --nj "$cpu_procs"
}

# Stage 2: small random-init upstreams (the offline stand-in for pre-trained weights; a 64-channel CNN and
# twice the test width give the random features enough to learn from) and noise/RIR lists.
prepare_resources_settings="seed"
prepare_resources() {
  python ../../tools/make_tiny_upstream.py --out_dir tiny_upstream --seed "$seed" --conv_channels 64 --width_scale 2
  python local/make_noise_rir.py --out data --seed "$seed"
}
