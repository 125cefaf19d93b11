# Environment for the recipe: the repository's package and tools, whether or not it is pip-installed.
root=$(cd ../.. && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$root/tools:$PATH"
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
