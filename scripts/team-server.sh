#!/usr/bin/env bash
# Team tracking server: a local PostgreSQL cluster (loopback only) as MLflow's backend store and `mlflow server`
# serving the artifacts itself. Runs in the foreground; Ctrl-C (or SIGTERM) stops both.
#   bash scripts/team-server.sh
#   MLFLOW_TRACKING_URI=http://127.0.0.1:5000 bash scripts/dev.sh repro     # in another shell
# Settings (environment): PORT (mlflow, default 5000), PGPORT (default 5433), TEAM_DIR (default .team-server/:
# password, logs, artifacts), TEAM_PGDATA (the cluster, default $TEAM_DIR/pgdata), MLFLOW (default .venv/bin/mlflow),
# WORKERS (uvicorn workers, default 1).
# Run as root, PostgreSQL runs as the `postgres` user, which must be able to reach TEAM_PGDATA.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
port=${PORT:-5000}
pgport=${PGPORT:-5433}
team_dir=$(realpath -m "${TEAM_DIR:-$root/.team-server}")
pgdata=$(realpath -m "${TEAM_PGDATA:-$team_dir/pgdata}")
mlflow_bin=${MLFLOW:-$root/.venv/bin/mlflow}

die() { echo "team-server: $*" >&2; exit 1; }

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[[ -n $pg_bin ]] || pg_bin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
[[ -x $pg_bin/initdb && -x $pg_bin/pg_ctl ]] || die "PostgreSQL not found: apt-get install -y postgresql"
[[ -x $mlflow_bin ]] || mlflow_bin=$(command -v mlflow) || die "mlflow not found: bash scripts/dev.sh setup"

mkdir -p "$team_dir/artifacts" "$pgdata"
if [[ $(id -u) == 0 ]]; then  # PostgreSQL refuses to run as root
    chown postgres: "$pgdata"
    runuser=$(PATH=$PATH:/usr/sbin:/sbin command -v runuser) || die "runuser not found (util-linux)"
    as_pg() { "$runuser" -u postgres -- "$@"; }
    as_pg test -w "$pgdata" || die "the postgres user cannot reach $pgdata; set TEAM_PGDATA to a directory it can"
else
    as_pg() { "$@"; }
fi

password_file=$team_dir/password
if [[ ! -s $password_file ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$password_file")
fi
export PGPASSWORD; PGPASSWORD=$(cat "$password_file")  # libpq (psql, and mlflow's psycopg2) reads it

if [[ ! -f $pgdata/PG_VERSION ]]; then
    echo "team-server: creating the PostgreSQL cluster in $pgdata" >&2
    pwfile=$(as_pg mktemp)
    printf '%s\n' "$PGPASSWORD" | as_pg tee "$pwfile" >/dev/null
    as_pg "$pg_bin/initdb" -D "$pgdata" -U mlflow --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 \
        >"$team_dir/initdb.log" || { as_pg rm -f "$pwfile"; die "initdb failed: $team_dir/initdb.log"; }
    as_pg rm -f "$pwfile"
fi

stop() {
    trap - EXIT INT TERM
    if [[ -n ${server_pid:-} ]]; then  # mlflow server and its uvicorn workers: one process group
        kill -TERM -- "-$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    as_pg "$pg_bin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
}
trap stop EXIT
trap 'exit 130' INT TERM

as_pg "$pg_bin/pg_ctl" -D "$pgdata" -l "$pgdata/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $pgport -c unix_socket_directories=''" >/dev/null \
    || die "PostgreSQL did not start on 127.0.0.1:$pgport (port in use?): see $pgdata/postgres.log"
psql=("$pg_bin/psql" -h 127.0.0.1 -p "$pgport" -U mlflow -d postgres -v ON_ERROR_STOP=1 -qtA)
[[ $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'") == 1 ]] \
    || "${psql[@]}" -c "CREATE DATABASE mlflow"

echo "team-server: PostgreSQL on 127.0.0.1:$pgport; MLflow on http://127.0.0.1:$port (artifacts in" \
     "$team_dir/artifacts)" >&2
echo "team-server: point the pipeline at it with  MLFLOW_TRACKING_URI=http://127.0.0.1:$port" >&2
setsid "$mlflow_bin" server --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$pgport/mlflow" \
    --artifacts-destination "$team_dir/artifacts" --host 127.0.0.1 --port "$port" --workers "${WORKERS:-1}" &
server_pid=$!
wait "$server_pid"
