#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by recipes after their defaults are set:
#   --name value  or  --name=value   sets the existing shell variable "name" ("-" in names reads as "_").
# Unknown options are errors; "--help" prints $help_message. Positional arguments are left in "$@".
_parse_positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "${help_message:-no help available}"; exit 0 ;;
    --*=*)
      _name="${1%%=*}"; _value="${1#*=}"; shift ;;
    --*)
      _name="$1"
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _value="$2"; shift 2 ;;
    *)
      _parse_positional+=("$1"); shift; continue ;;
  esac
  _var="${_name#--}"; _var="${_var//-/_}"
  if ! declare -p "$_var" >/dev/null 2>&1; then
    echo "$0: unknown option $_name (see --help)" >&2; exit 1
  fi
  printf -v "$_var" '%s' "$_value"
done
set -- ${_parse_positional[@]+"${_parse_positional[@]}"}
unset _name _value _var _parse_positional
