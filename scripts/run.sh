#!/usr/bin/env bash
# `make run`: the whole stack of shoal.yaml's programs: (redis-server,
# broker, workers, frontend) on this host, under `shoal supervisor`, in
# the foreground. Ctrl-C stops every process, dependents first.
#
# Everything the stack writes goes under $RUN_DIR (default ./run): the
# control socket, the logs, redis's data. Nothing is written elsewhere.
#
#   CFG=shoal.yaml BIN=bin/shoal RUN_DIR=$PWD/run scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=${CFG:-shoal.yaml}
BIN=${BIN:-bin/shoal}
RUN_DIR=${RUN_DIR:-$PWD/run}
LISTEN=${SHOAL_FRONTEND_LISTEN:-127.0.0.1:8080}

"$BIN" check -c "$CFG" >/dev/null
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)

# shoal ctl finds the supervisor's socket from the config and the run dir;
# --run-dir is only needed when the run dir is not the config's default.
where="-c $CFG"
if [ "$RUN_DIR" != "$(cd "$(dirname "$CFG")" && pwd)/run" ]; then
  where="$where --run-dir $RUN_DIR"
fi

# Beside the supervisor: wait until every program is RUNNING, then say how
# to use the stack. The supervisor takes this shell's place (exec), so
# Ctrl-C reaches it directly and $$ is its pid.
(
  if "$BIN" ctl wait $where --timeout 120s; then
    cat <<MSG

Shoal is running; logs in $RUN_DIR/log, everything else under $RUN_DIR.

  curl 'http://$LISTEN/echo?hello=world'
  curl -d 'some body' http://$LISTEN/echo
  curl http://$LISTEN/hello/shoal

  $BIN ctl status $where
  $BIN ctl tail -f echo $where
  $BIN broker stats -c $CFG

Ctrl-C stops everything, dependents first.
MSG
  else
    echo "the stack did not become ready; see $RUN_DIR/log/ and: $BIN ctl status $where" >&2
    kill -TERM $$ 2>/dev/null || true
  fi
) &

exec "$BIN" supervisor -c "$CFG" --run-dir "$RUN_DIR"
