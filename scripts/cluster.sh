#!/usr/bin/env bash
# Starts (up) or stops (down) a three-node controller cluster on loopback:
# c1, c2, c3 with gRPC on 127.0.0.1:7700, 7710, 7720 (Raft +1, HTTP +2),
# data and logs under .cluster/ in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cluster
bin=bin/hostscale-controller
peers="c1=127.0.0.1:7701,c2=127.0.0.1:7711,c3=127.0.0.1:7721"

up() {
	mkdir -p "$dir"
	for i in 1 2 3; do
		id=c$i
		base=$((7690 + 10 * i))
		if [ -f "$dir/$id.pid" ] && kill -0 "$(cat "$dir/$id.pid")" 2>/dev/null; then
			echo "$id already running (pid $(cat "$dir/$id.pid"))"
			continue
		fi
		nohup "$bin" -id "$id" -data-dir "$dir/$id" -peers "$peers" \
			-grpc-addr "127.0.0.1:$base" -raft-addr "127.0.0.1:$((base + 1))" -http-addr "127.0.0.1:$((base + 2))" \
			>"$dir/$id.log" 2>&1 &
		echo $! >"$dir/$id.pid"
		echo "started $id (pid $!): grpc 127.0.0.1:$base, raft :$((base + 1)), http :$((base + 2)), log $dir/$id.log"
	done
	for _ in $(seq 1 100); do
		if curl -fsS -o /dev/null http://127.0.0.1:7702/readyz 2>/dev/null &&
			curl -fsS -o /dev/null http://127.0.0.1:7712/readyz 2>/dev/null &&
			curl -fsS -o /dev/null http://127.0.0.1:7722/readyz 2>/dev/null; then
			cat <<'MSG'

cluster ready. Try:
  grpcurl -plaintext 127.0.0.1:7700 list
  grpcurl -plaintext 127.0.0.1:7710 hostscale.v1.ClusterService/GetStatus
  grpcurl -plaintext -d '{"pool":{"name":"web","backends":[{"address":"127.0.0.1:9001"}]}}' 127.0.0.1:7720 hostscale.v1.PoolService/CreatePool
  grpcurl -plaintext 127.0.0.1:7700 hostscale.v1.PoolService/ListPools
  bin/hostscale -addr 127.0.0.1:7700 status
  curl -s 127.0.0.1:7702/metrics | grep hostscale_raft
stop it with: make cluster-down
MSG
			return 0
		fi
		sleep 0.1
	done
	echo "cluster did not become ready in 10s; see $dir/*.log" >&2
	return 1
}

down() {
	for i in 1 2 3; do
		f="$dir/c$i.pid"
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		if kill "$pid" 2>/dev/null; then
			for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$pid" 2>/dev/null || true
			echo "stopped c$i (pid $pid)"
		fi
		rm -f "$f"
	done
}

case "${1:-}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
