# Helpers of egs/*/run.sh, sourced after the options are parsed: option word lists, stage banners,
# settings-aware sentinels (tools/sentinel.py) and the division of work between the nodes of a
# multi-node run. They read run.sh's variables: force, node_rank, num_nodes, job, failed_marker,
# node_wait_timeout, and the array `settings` (the sentinel options of the step at hand).

# words NAME OPTION TEXT: split TEXT into the array NAME as a shell splits a command line: spaces separate
# words, quotes group them ("train.init_from='/my models/a.pt'"), nothing is expanded or run.
# OPTION names the option in the error message.
words() {
  local _quoted
  _quoted=$(python -c '
import shlex, sys
try:
    print(" ".join(shlex.quote(w) for w in shlex.split(sys.argv[2])))
except ValueError as err:
    sys.exit(f"run.sh: --{sys.argv[1]}: {err}: {sys.argv[2]!r}")
' "$2" "$3") || exit 1
  eval "$1=($_quoted)"  # safe: every word is single-quoted by shlex.quote
}

# banner LABEL WHAT WHERE: the first line of a step; `wrote` ends it.
banner() {
  step_label=$1
  step_start=$SECONDS
  echo "==== $1: $2 -> $3"
}

# wrote LABEL PATH...: the paths the step wrote (those that exist) and how long it took.
wrote() {
  local label=$1 path list=""
  shift
  for path in "$@"; do
    [ -e "$path" ] && list+="${list:+, }$path"
  done
  echo "---- $label wrote ${list:-nothing} ($(( SECONDS - step_start )) s)"
}

# on_node0 COMMAND...: run COMMAND on node 0 only (steps that are not torchrun launches).
on_node0() {
  if [ "$node_rank" -eq 0 ]; then
    "$@"
  fi
}

# step_todo FILE LABEL HINT: set `todo` to skip, run (not done) or rerun (done, but --force true or an
# earlier step ran again) from the sentinel FILE and ${settings[@]}. Done with other settings: the
# message names the changes and HINT, and the script stops.
step_todo() {
  local rc=0
  step_label=$2
  sentinel.py check "$1" --what "$2" --force "$force" --hint "$3" ${settings[@]+"${settings[@]}"} || rc=$?
  case $rc in
    0) todo=skip ;;
    3) todo=run ;;
    4) todo=rerun ;;
    *) exit 1 ;;
  esac
}

# step_verify FILE LABEL HINT: a step before --stage: stop if it was done with other settings or is out
# of date (what this run reads would not be what those settings make); not done is fine.
step_verify() {
  sentinel.py verify "$1" --what "$2" --hint "$3" ${settings[@]+"${settings[@]}"} || exit 1
}

# step_done FILE LABEL [--note KEY=VALUE ...]: node 0 writes the sentinel FILE; the other nodes wait until
# it has (written by this job, with their settings), so every node takes the same next decision.
step_done() {
  local file=$1 label=$2
  shift 2
  if [ "$node_rank" -eq 0 ]; then
    sentinel.py write "$file" --what "$label" --job "$job" "$@" ${settings[@]+"${settings[@]}"}
  else
    sentinel.py wait "$file" --what "$label" --job "$job" --failed "$failed_marker" \
      --timeout "$node_wait_timeout" --node "$node_rank" ${settings[@]+"${settings[@]}"}
  fi
}

# node0_failed: EXIT trap of node 0 in a multi-node run: a failure leaves a marker that stops the waits
# of the other nodes at once (they also give up after --node_wait_timeout if node 0 dies without it).
node0_failed() {
  local status=$?
  if [ "$status" -ne 0 ] && [ "$node_rank" -eq 0 ] && [ "$num_nodes" -gt 1 ]; then
    sentinel.py fail "$failed_marker" --job "$job" \
      --message "${step_label:-run.sh} exited with status $status" || true
  fi
}
