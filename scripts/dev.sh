#!/usr/bin/env bash
# make dev: a whole hostscale on loopback, in the foreground, until Ctrl-C.
#   controllers c1 c2 c3    gRPC 127.0.0.1:7700, 7710, 7720 (Raft +1, HTTP +2): one
#                           Raft cluster; kill any one and it goes on with two
#   agent       dev-host    admin 127.0.0.1:7703, runs the demo pool's instances
#   balancer    dev-lb      HTTP 127.0.0.1:8080, admin 127.0.0.1:8081
#   pool        demo        2 instances of bin/hostscale-demo, autoscaled (1-6) on
#                           40 requests/s per instance
#   pool        sleepy      /sleepy/: scales to zero after 30s without a request,
#                           starts with none; a request wakes it
# State, logs and the controllers' pid files (.dev/c1.pid...) go to .dev/
# (emptied at each start). Ctrl-C stops every process started here, the
# instances included. Dev mode runs until Ctrl-C or until the agent or the
# balancer exits; a controller may be stopped on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=.dev
rm -rf "$dir"
mkdir -p "$dir"

pids=()
stopping=0
stop_all() {
	[ "$stopping" = 1 ] && return
	stopping=1
	trap - INT TERM HUP
	echo
	echo "stopping hostscale dev mode..."
	# The agent first: it stops the instances (-stop-instances-on-exit).
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	echo "stopped."
}
trap 'stop_all; exit 130' INT TERM HUP
trap stop_all EXIT

start() { # name, then the command
	local name=$1
	shift
	"$@" >"$dir/$name.log" 2>&1 &
	pids+=($!)
}

wait_for() { # what, url
	for _ in $(seq 1 200); do
		if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "dev: $1 did not come up within 20s; its log:" >&2
	tail -n 20 "$dir/$1.log" >&2
	exit 1
}

for port in 7700 7701 7702 7710 7711 7712 7720 7721 7722 7703 8080 8081; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "dev: 127.0.0.1:$port is in use (make cluster-down? another make dev?)" >&2
		exit 1
	fi
done

controllers=127.0.0.1:7700,127.0.0.1:7710,127.0.0.1:7720
for i in 1 2 3; do
	base=$((7690 + 10 * i))
	start "c$i" bin/hostscale-controller -id "c$i" -data-dir "$dir/c$i" \
		-peers c1=127.0.0.1:7701,c2=127.0.0.1:7711,c3=127.0.0.1:7721 \
		-grpc-addr "127.0.0.1:$base" -raft-addr "127.0.0.1:$((base + 1))" -http-addr "127.0.0.1:$((base + 2))" \
		-heartbeat-ttl 5s -drain-deadline 5s
	echo "${pids[-1]}" >"$dir/c$i.pid"
done
for i in 1 2 3; do wait_for "c$i" "http://127.0.0.1:$((7692 + 10 * i))/readyz"; done
# A workstation's disk and memory are often fuller than a server's: only
# the last percent puts the dev host under a condition (no new instance).
start agent bin/hostscale-agent -node-id dev-host -controllers "$controllers" -data-dir "$dir/agent" \
	-advertise-addr 127.0.0.1 -http-addr 127.0.0.1:7703 -labels tier=web -stop-instances-on-exit \
	-disk-pressure-free 1 -memory-pressure-free 1
agent=${pids[-1]}
start balancer bin/hostscale-balancer -listen 127.0.0.1:8080 -http-addr 127.0.0.1:8081 -controllers "$controllers" \
	-name dev-lb -data-dir "$dir/balancer"
balancer=${pids[-1]}
wait_for agent http://127.0.0.1:7703/readyz

bin/hostscale -addr "$controllers" create-pool - >/dev/null <<JSON
{"name": "demo", "template": {"command": "$root/bin/hostscale-demo", "healthPath": "/healthz",
 "healthInterval": "0.5s", "stopGrace": "5s", "env": {"DEMO_CPU": "2ms"}},
 "min": 1, "max": 6, "desired": 2,
 "scaling": {"metric": "SCALING_METRIC_REQUESTS_PER_INSTANCE", "target": 40,
  "evaluationPeriod": "2s", "window": "6s", "initializationPeriod": "3s",
  "scaleDownStabilization": "20s",
  "scaleDownLimits": [{"kind": "RATE_LIMIT_KIND_PERCENT", "value": 50, "period": "5s"}]}}
JSON
bin/hostscale -addr "$controllers" create-pool - >/dev/null <<JSON
{"name": "sleepy", "pathPrefix": "/sleepy/", "template": {"command": "$root/bin/hostscale-demo",
 "healthPath": "/healthz", "healthInterval": "0.1s", "stopGrace": "5s"},
 "min": 0, "max": 3,
 "scaling": {"metric": "SCALING_METRIC_CONCURRENCY_PER_INSTANCE", "target": 2,
  "evaluationPeriod": "2s", "window": "6s", "scaleToZeroAfter": "30s"}}
JSON
bin/hostscale -addr "$controllers" create-rule - >/dev/null <<'JSON'
{"name": "demo-errors", "kind": "ALERT_RULE_KIND_POOL_THRESHOLD", "metric": "error_ratio", "op": ">",
 "threshold": 0.1, "window": "30s", "selector": "pool=demo",
 "annotations": {"summary": "{{ .Pool }} fails {{ printf \"%.2f\" .Value }} of its requests"}}
JSON
for _ in $(seq 1 300); do
	if curl -fsS -o /dev/null http://127.0.0.1:8080/ 2>/dev/null; then break; fi
	sleep 0.1
done

cat <<'MSG'

hostscale dev mode is up: three controllers, one agent, a balancer and the demo pool.

  curl http://127.0.0.1:8080/                   # answered by an instance of the demo pool
  bin/hostscale instances demo                  # where they run, and their state
  bin/hostscale scale demo 4                    # two more; watch curl answer from them
  bin/hostscale nodes                           # the host and its latest sample
  make load                                     # traffic in steps: watch the pool scale out and back in
  bin/hostscale events demo                     # why it scaled: every evaluation, its inputs and rule
  bin/hostscale traffic demo                    # req/s, errors, latency, in flight, per instance too
  for i in $(seq 100); do curl -s -o /dev/null '127.0.0.1:8080/?status=503'; done
  bin/hostscale alerts                          # demo-errors fires on pool demo (error_ratio > 0.1 over 30s)
  curl http://127.0.0.1:8080/sleepy/            # the sleepy pool has no instance: held while one starts
  bin/hostscale events sleepy -acted            # woken ("activation"); back to 0 after 30s idle ("idle")
  bin/hostscale status                          # c1, c2, c3: which one leads
  kill $(cat .dev/c1.pid)                       # stop a controller, the leader even: curl still answers,
                                                # another leads within seconds, the CLI asks the next one

  grpcurl -plaintext 127.0.0.1:7700 list
  grpcurl -plaintext 127.0.0.1:7700 hostscale.v1.NodeService/ListNodes
  grpcurl -plaintext -d '{"pool":"demo"}' 127.0.0.1:7700 hostscale.v1.PoolService/GetPool
  grpcurl -plaintext -d '{"pool":"demo","desired":3}' 127.0.0.1:7700 hostscale.v1.PoolService/ScalePool
  grpcurl -plaintext -d '{"pool":"demo"}' 127.0.0.1:7700 hostscale.v1.PoolService/ListInstances

  metrics: http://127.0.0.1:7702/metrics (c1; c2 :7712, c3 :7722), :7703 (agent), :8081 (balancer)
  logs:    .dev/*.log, instance output under .dev/agent/instances/

Ctrl-C stops everything.
MSG

# Run until Ctrl-C, or until the agent or the balancer exits.
set +e
wait -n "$agent" "$balancer"
echo "dev: the agent or the balancer exited; see $dir/*.log" >&2
exit 1
