#!/usr/bin/env bash
# Test support: a local PostgreSQL for tests/test_tracking_scale.py (MLflow server on PostgreSQL).
#
#   bash .ci/postgres.sh start   # prints the database's SQLAlchemy URI (no password in it)
#   bash .ci/postgres.sh stop
#
# Run as root on Debian. `start` installs Debian's `postgresql` if it is missing, starts the
# cluster ($SSLBENCH_PG_VERSION, default: the installed major version; cluster "main"), which
# listens on localhost only (Debian's default listen_addresses), and makes sure the role and the
# database `sslbench_mlflow` exist. The role's password is $PGPASSWORD, the variable libpq (and so
# MLflow's driver psycopg2) reads; when it is unset the CI-only default below is used, so export
# the same PGPASSWORD for the processes that connect. Idempotent: running `start` again changes
# nothing but the password. Only the URI goes to stdout; messages go to stderr.
set -euo pipefail

NAME=sslbench_mlflow
PASSWORD="${PGPASSWORD:-sslbench-ci-only}"  # a default for CI only: set PGPASSWORD anywhere else
CLUSTER=main

log() { echo "postgres.sh: $*" >&2; }
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

version() {
    if [ -n "${SSLBENCH_PG_VERSION:-}" ]; then
        echo "$SSLBENCH_PG_VERSION"
    else
        # The newest installed server (Debian 12: 15).
        ls /usr/lib/postgresql | sort -n | tail -n 1
    fi
}

start() {
    if [ "$(id -u)" != 0 ]; then
        log "run as root (it starts the system's PostgreSQL cluster)"; exit 1
    fi
    if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        log "installing postgresql (apt)"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    local v port
    v="$(version)"
    if ! pg_lsclusters -h | awk -v v="$v" -v c="$CLUSTER" '$1 == v && $2 == c {found = 1} END {exit !found}'; then
        log "creating cluster $v/$CLUSTER"
        pg_createcluster "$v" "$CLUSTER" >&2
    fi
    if ! pg_lsclusters -h | awk -v v="$v" -v c="$CLUSTER" '$1 == v && $2 == c && $4 == "online" {found = 1} END {exit !found}'; then
        log "starting cluster $v/$CLUSTER"
        pg_ctlcluster "$v" "$CLUSTER" start >&2
    fi
    port="$(pg_lsclusters -h | awk -v v="$v" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')"
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 0.5
    done
    pg_isready -q -h 127.0.0.1 -p "$port" || { log "PostgreSQL on 127.0.0.1:$port does not answer"; exit 1; }

    # The password goes through psql's stdin, never a command line (`ps` shows those to everyone).
    local quoted="${PASSWORD//\'/\'\'}"
    as_postgres psql -q -v ON_ERROR_STOP=1 -p "$port" -d postgres >&2 <<SQL
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$NAME') THEN
        CREATE ROLE $NAME LOGIN;
    END IF;
END \$\$;
ALTER ROLE $NAME WITH LOGIN PASSWORD '$quoted';
SQL
    if [ "$(as_postgres psql -tAq -p "$port" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$NAME'")" != 1 ]; then
        log "creating database $NAME"
        as_postgres createdb -p "$port" -O "$NAME" "$NAME"
    fi
    # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, 2.0 to psycopg2.
    echo "postgresql+psycopg2://$NAME@127.0.0.1:$port/$NAME"
}

stop() {
    command -v pg_ctlcluster >/dev/null || exit 0
    local v
    v="$(version)"
    if pg_lsclusters -h | awk -v v="$v" -v c="$CLUSTER" '$1 == v && $2 == c && $4 == "online" {found = 1} END {exit !found}'; then
        log "stopping cluster $v/$CLUSTER"
        pg_ctlcluster "$v" "$CLUSTER" stop >&2
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
