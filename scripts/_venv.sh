# Sourced by scripts/dlogit and scripts/test: create .venv with dlogit (editable) and its test extra
# on first use, or again when pyproject.toml changed. Sets $root and $venv.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.dlogit-installed"
if [ ! -x "$venv/bin/python" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "dlogit: setting up $venv (first run only)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -e "$root[test]" >&2
  touch "$stamp"
fi
