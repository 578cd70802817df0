#!/usr/bin/env bash
# Starts the systems longdoc needs when nothing answers on their port; installs them from
# Debian's packages when they are missing. Usage: ensure-services.sh redis [postgresql] [rabbitmq]
# (The S3 server the tests use, moto's, is started by the tests themselves on a free port.)
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port, name
  for _ in $(seq 1 100); do answers "$1" && return 0; sleep 0.2; done
  echo "ensure-services: $2 did not start on 127.0.0.1:$1" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-services: $* missing; install it (as root: apt-get install $*)" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  answers 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/longdoc-redis.log
  wait_for 6379 Redis
}

ensure_postgresql() {
  if ! answers 5432; then
    ls /etc/postgresql/*/main >/dev/null 2>&1 || apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -1)
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    # Tests connect over loopback without a password, as on the development machines.
    if ! grep -q "longdoc-trust" "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust # longdoc-trust\nhost all all ::1/128 trust # longdoc-trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for 5432 PostgreSQL
  fi
  if command -v psql >/dev/null; then
    psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" \
      | grep -q 1 || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null
  fi
}

ensure_rabbitmq() {
  answers 5672 && return 0
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  # Debian's package listens on every interface by default: loopback is enough here.
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached
  wait_for 5672 RabbitMQ
  # Booted, not only listening: the tests create a vhost per stack with rabbitmqctl.
  rabbitmqctl -q --timeout 60 await_startup
}

for service in "$@"; do
  case "$service" in
    redis) ensure_redis ;;
    postgresql) ensure_postgresql ;;
    rabbitmq) ensure_rabbitmq ;;
    *) echo "ensure-services: unknown service $service" >&2; exit 2 ;;
  esac
done
