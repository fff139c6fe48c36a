# Sourced by bin/run-local and bin/test: a project virtualenv with the pinned requirements.
# Reinstalls only when a requirements file changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
requirements_file="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$requirements_file")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements_file"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
