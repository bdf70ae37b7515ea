# Sourced by the scripts: create .venv on first use and install the project
# with the extras named in $1 whenever pyproject.toml changed since.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv
extras=${1:-}
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
fi
stamp=$venv/.installed${extras:+-$extras}
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "installing hookrelay${extras:+[$extras]} into $venv" >&2
    log=$venv/install.log
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root${extras:+[$extras]}" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "error: installing hookrelay failed; the full log is $log" >&2
        exit 1
    fi
    touch "$stamp"
fi
