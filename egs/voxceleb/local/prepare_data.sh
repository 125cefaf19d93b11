#!/usr/bin/env bash
# Stage 1 of the VoxCeleb recipe: official archives -> Kaldi data dirs and trial lists.
#   local/prepare_data.sh [--archive_dir DIR] [--raw_dir DIR] [--nj N] [--md5_opts "..."] [data_dir]
# Run from the recipe directory (egs/voxceleb). Outputs, under data_dir (default data):
#   vox2_dev/ vox1_dev/ vox1/ {wav.scp,utt2spk,spk2utt,utt2dur}, vox1/trials/vox1_{O,E,H}_cleaned.kaldi.
# Finished steps are skipped on a re-run. (Stage 2 makes musan.list and rirs.list from the same folder.)
set -euo pipefail
[ -f path.sh ] || { echo "$0: run me from the recipe directory (egs/voxceleb)" >&2; exit 1; }
. ./path.sh
archive_dir=/path/to/voxceleb_archives
[ -f conf/recipe.sh ] && . ./conf/recipe.sh   # the recipe's archive_dir
raw_dir=""      # where audio is unpacked (default: <data_dir>/raw_data)
nj=8            # parallel extraction / ffmpeg / header-reading jobs
md5_opts=""     # e.g. "--md5_file my_sums.txt" or "--skip_md5"; "--download_url_base URL ..." also goes here
help_message="Usage: $0 [--archive_dir DIR] [--raw_dir DIR] [--nj N] [--md5_opts OPTS] [data_dir]"
. ../../tools/parse_options.sh
data_dir=${1:-data}

expected="Expected in $archive_dir (the official files; the VoxCeleb archives may be whole or in parts):
  vox1_dev_wav.zip   or vox1_dev_wav_partaa .. vox1_dev_wav_partad
  vox1_test_wav.zip
  vox2_dev_aac.zip   or vox2_dev_aac_partaa .. vox2_dev_aac_partah
  veri_test2.txt list_test_all2.txt list_test_hard2.txt   (cleaned trial lists)
  musan.tar.gz       or its extracted musan/
  rirs_noises.zip    or its extracted RIRS_NOISES/
Set archive_dir in conf/recipe.sh or pass --archive_dir DIR."
if [ ! -d "$archive_dir" ]; then
  echo "$0: archive folder $archive_dir not found." >&2
  echo "$expected" >&2
  exit 1
fi

common=(--archive_dir "$archive_dir" --data_dir "$data_dir" --nj "$nj")
[ -n "$raw_dir" ] && common+=(--raw_dir "$raw_dir")
# shellcheck disable=SC2086  # md5_opts holds several words on purpose
python -m wespeaker_lap.bin.prepare_voxceleb "${common[@]}" $md5_opts \
  || { echo "$expected" >&2; exit 1; }
echo "$0: data ready in $data_dir"
