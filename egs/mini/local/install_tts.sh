#!/usr/bin/env bash
# Install the Debian text-to-speech engines and voices used by the mini corpus
# (make_tts_corpus.py): sox, espeak-ng, mbrola + voices, festival + voices, flite,
# SVOX pico, the fortune texts and ffmpeg. The voice list lives in tts_voices.py.
#
# Usage: install_tts.sh [--enable-contrib-nonfree]
#
#   --enable-contrib-nonfree  add the "contrib non-free" components to the Debian
#                             archive entries of the apt sources (shown as a diff)
#                             so that mbrola, its voices, three festival voices and
#                             pico can be installed. Without it only Debian main is
#                             used and the script lists the voices that will be missing.
#
# Needs root (or sudo). Does nothing when every package is already installed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Debian archive URIs (deb.debian.org/debian, ftp.XX.debian.org/debian/, snapshot.debian.org/archive/debian/DATE/);
# debian-security and third-party repositories are left alone.
debian_uri_re='://[^/[:space:]]*debian\.org/(archive/)?debian(/[0-9TZ]+)?/?([[:space:]]|$)'

usage() { sed -n '2,14s/^# \{0,1\}//p' "$here/install_tts.sh"; }

is_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }

missing_pkgs() { local p; for p in "$@"; do is_installed "$p" || echo "$p"; done; }

# The policy is captured first: with pipefail, "apt-cache policy | grep -q" fails when grep exits early.
has_candidate() { local policy; policy=$(apt-cache policy "$1" 2>/dev/null); [[ "$policy" =~ Candidate:\ [^\(] ]]; }

# Print a sources file (one-line .list or deb822 .sources) with "contrib non-free" added to its Debian archive entries.
add_components() {
  local file=$1 format=one-line
  case "$file" in *.sources) format=deb822 ;; esac
  awk -v format="$format" -v uri_re="$debian_uri_re" '
    function has(word, line,   n, a, i) { n = split(line, a, /[[:space:]]+/); for (i = 1; i <= n; i++) if (a[i] == word) return 1; return 0 }
    function add(line) { if (!has("contrib", line)) line = line " contrib"; if (!has("non-free", line)) line = line " non-free"; return line }
    function flush(   i) { for (i = 1; i <= n; i++) print (debian && buf[i] ~ /^Components:/ ? add(buf[i]) : buf[i]); n = 0; debian = 0 }
    format == "deb822" && /^[[:space:]]*$/ { flush(); print; next }
    format == "deb822" { buf[++n] = $0; if ($0 ~ /^URIs:/ && $0 ~ uri_re) debian = 1; next }
    /^[[:space:]]*deb(-src)?[[:space:]]/ && $0 ~ uri_re {
      line = $0; comment = ""; i = index(line, "#")
      if (i) { comment = " " substr(line, i); line = substr(line, 1, i - 1) }
      sub(/[[:space:]]+$/, "", line); print add(line) comment; next
    }
    { print }
    END { if (format == "deb822") flush() }
  ' "$file"
}

# Rewrite the apt sources in place (each change shown as a diff); exits when no Debian entry exists.
enable_contrib_nonfree() {
  local file tmp changed=false found=false
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    grep -Eq "$debian_uri_re" "$file" && found=true
    tmp=$(mktemp "$file.XXXXXX")
    add_components "$file" > "$tmp"
    if cmp -s "$file" "$tmp"; then
      rm -f "$tmp"
    else
      echo "install_tts.sh: enabling contrib non-free in $file:"
      diff -u "$file" "$tmp" | sed 's/^/    /' || true
      chmod --reference="$file" "$tmp"
      mv "$tmp" "$file"
      changed=true
    fi
  done
  if ! $found; then
    echo "install_tts.sh: no Debian archive entry found in the apt sources; add 'contrib non-free' yourself." >&2
    exit 1
  fi
  $changed || echo "install_tts.sh: contrib and non-free are already enabled in the apt sources."
}

main() {
  local enable_contrib=false
  while [ $# -gt 0 ]; do
    case "$1" in
      --enable-contrib-nonfree) enable_contrib=true ;;
      -h|--help) usage; exit 0 ;;
      *) echo "install_tts.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done

  command -v python3 >/dev/null || { echo "install_tts.sh: python3 is needed to read tts_voices.py" >&2; exit 1; }
  local main_pkgs contrib_pkgs missing_main missing_contrib
  read -r -a main_pkgs <<< "$(python3 "$here/tts_voices.py" packages main)"
  read -r -a contrib_pkgs <<< "$(python3 "$here/tts_voices.py" packages contrib)"
  mapfile -t missing_main < <(missing_pkgs "${main_pkgs[@]}")
  mapfile -t missing_contrib < <(missing_pkgs "${contrib_pkgs[@]}")
  if [ ${#missing_main[@]} -eq 0 ] && [ ${#missing_contrib[@]} -eq 0 ]; then
    echo "install_tts.sh: all $(( ${#main_pkgs[@]} + ${#contrib_pkgs[@]} )) TTS packages are installed; nothing to do."
    exit 0
  fi

  if [ "$(id -u)" -ne 0 ]; then
    cat >&2 <<EOF
install_tts.sh: installing Debian packages needs root; run it with sudo.
It would install from Debian main:
  ${missing_main[*]:-(nothing)}
and from Debian contrib/non-free (only with --enable-contrib-nonfree, which adds
"contrib non-free" to the Debian entries of the apt sources, unless already there):
  ${missing_contrib[*]:-(nothing)}
EOF
    exit 1
  fi

  export DEBIAN_FRONTEND=noninteractive
  local apt_opts=(-o DPkg::Lock::Timeout=600)  # wait for another apt/dpkg run instead of failing
  if $enable_contrib && [ ${#missing_contrib[@]} -gt 0 ]; then
    enable_contrib_nonfree
  fi
  echo "install_tts.sh: apt-get update"
  apt-get "${apt_opts[@]}" update -qq

  local p to_install=("${missing_main[@]}") unavailable=() missing_speakers
  for p in "${missing_contrib[@]}"; do
    if has_candidate "$p"; then to_install+=("$p"); else unavailable+=("$p"); fi
  done
  echo "install_tts.sh: installing ${to_install[*]}"
  apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${to_install[@]}" > /dev/null

  if [ ${#unavailable[@]} -gt 0 ]; then
    mapfile -t missing_speakers < <(for p in "${unavailable[@]}"; do
      python3 "$here/tts_voices.py" speakers "$p" | tr ' ' '\n'; done | sort -u)
    cat >&2 <<EOF
install_tts.sh: not available from the enabled apt components (Debian contrib/non-free):
  ${unavailable[*]}
so these ${#missing_speakers[@]} voices of the mini corpus will be missing:
  ${missing_speakers[*]}
Re-run with --enable-contrib-nonfree to add them.
EOF
    exit 0
  fi
  echo "install_tts.sh: done; all voices of the mini corpus are installed."
}

# Sourcing the file (tests) defines the functions only.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
