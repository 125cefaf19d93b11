#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu/check.sh installs on a GPU machine without network access.
#
#   bash benchmarks/gpu/prepare_wheels.sh [--python-version 3.12] [--dest benchmarks/gpu/wheels]
#
# Such a machine has PyTorch, torchaudio, transformers, scipy, numpy, PyYAML, tqdm, matplotlib and
# pytest, but not the project's espnet-s3prl, kaldiio and soundfile. This fetches exactly those
# (at the versions pinned in requirements.txt) and their dependencies that are missing there too
# (omegaconf for s3prl; cffi and pycparser for soundfile), as binary wheels for CPython
# --python-version on x86-64 Linux: about 3 MB. Run it here (pip needs the package index); the
# wheels stay out of git (.gitignore) and travel with the working tree as an ignored, carried path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python_version=3.12
dest=$here/wheels
while [ $# -gt 0 ]; do
  case $1 in
    --python-version) python_version=$2; shift 2 ;;
    --dest) dest=$2; shift 2 ;;
    *) echo "prepare_wheels.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

pin() {  # the requirements.txt line of package $1
  grep -E "^$1==" "$repo/requirements.txt" || { echo "prepare_wheels.sh: $1 is not pinned in requirements.txt" >&2; exit 2; }
}
# Dependencies the GPU machine lacks, at the versions tested with the pins above.
packages=("$(pin espnet-s3prl)" "$(pin kaldiio)" "$(pin soundfile)" omegaconf==2.4.0 cffi==2.1.1 pycparser==3.12)

tmp="$dest.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$python_version" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$tmp" "${packages[@]}"
rm -rf "$dest"
mv "$tmp" "$dest"  # all or nothing
echo "wheels for CPython $python_version in $dest:"
ls -1 "$dest"
du -sh "$dest" | cut -f1
