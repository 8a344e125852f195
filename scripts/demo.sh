#!/bin/bash
# Builds rdmig (installing what it needs) and runs the live-migration demo: a
# synthetic guest migrated between two local processes over loopback TCP.
# Extra arguments go to `rdmig demo` (see `build/tools/rdmig --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec build/tools/rdmig demo --ram-size 512M --dirty-rate 50 "$@"
