#!/usr/bin/env bash
# Creates (or reuses) the virtual environment of the Python consumer example
# (integration-tests/python-consumer) and prints the path of its python interpreter on stdout.
#
# The environment lives in the Cargo target directory (target/python-consumer-venv), so
# `cargo clean` removes it. It is rebuilt only when the pinned requirements or the Python
# version change: when it is up to date this takes a few milliseconds. Needs python3 (3.10 or
# later) with the venv module, and PyPI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="$root/integration-tests/python-consumer/requirements.txt"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
venv="$target/python-consumer-venv"
python="${PYTHON:-python3}"

stamp_of() {
    { sha256sum "$requirements" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}
want="$(stamp_of)"
if [[ -x "$venv/bin/python" && -f "$venv/.edupulse-stamp" && "$(cat "$venv/.edupulse-stamp")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi

# Built beside the final place and moved into it, so that a run interrupted halfway leaves no
# environment that looks ready; a lock keeps two concurrent runs from building it twice.
mkdir -p "$target"
exec 9>"$target/python-consumer-venv.lock"
flock 9
if [[ -x "$venv/bin/python" && -f "$venv/.edupulse-stamp" && "$(cat "$venv/.edupulse-stamp")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
echo "creating the Python consumer's environment in $venv" >&2
rm -rf "$venv.tmp" "$venv"
"$python" -m venv "$venv.tmp"
"$venv.tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements" >&2
mv "$venv.tmp" "$venv"
# The interpreter's scripts (pip) name the path they were built in; only python itself is used.
echo "$want" >"$venv/.edupulse-stamp"
echo "$venv/bin/python"
