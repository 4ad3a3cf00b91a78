#!/usr/bin/env bash
# Regenerates the image's lock files from pyproject.toml with uv (`pip install uv` anywhere):
#   load.txt     [project] dependencies + the `load` extra (Locust): the loadtest image
#   service.txt  [project] dependencies alone, at load.txt's versions: the service image
#   build.txt    [build-system] requires (setuptools, wheel): the image's editable install
# Universal (any platform) for Python 3.11, every file's sha256 listed, from PyPI only.
# tests/deploy/test_lock.py fails when pyproject.toml and these files disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
export UV_CUSTOM_COMPILE_COMMAND="requirements/lock.sh"
options=(--universal --python-version 3.11 --generate-hashes --quiet
    --index-url https://pypi.org/simple --upgrade)
"$UV" pip compile "${options[@]}" pyproject.toml --extra load -o requirements/load.txt
"$UV" pip compile "${options[@]}" pyproject.toml -c requirements/load.txt -o requirements/service.txt
python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" |
    "$UV" pip compile "${options[@]}" - -o requirements/build.txt
