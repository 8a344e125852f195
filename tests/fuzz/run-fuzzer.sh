#!/bin/sh
# Runs a libFuzzer harness: $1 the harness, $2 the working corpus (made, and
# grown by the run), $3 the seeds (read only), then libFuzzer's options.
# Prints the run's closing statistics (executions, coverage) for the log.
set -e
harness=$1 work=$2 seeds=$3
shift 3
mkdir -p "$work"
exec "$harness" "$@" "$work" "$seeds"
