#!/usr/bin/env bash
# Run checkov on the CloudFormation template, offline, from its own venv:
# checkov's pins conflict with requirements.lock, so it never enters .venv.
# Usage: infra/checkov.sh [extra checkov args]   (CHECKOV_VENV overrides the venv path)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CHECKOV_VENV:-.cache/checkov-venv}"
VERSION=3.3.30
if ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "checkov==$VERSION"
fi
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
exec "$VENV/bin/checkov" --skip-download --compact -f infra/bayesfan.yaml "$@"
