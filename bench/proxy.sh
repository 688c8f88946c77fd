#!/usr/bin/env bash
# Compares nginx, HAProxy and hostscale-balancer as HTTP/1.1 reverse proxies in
# front of the same two backends. Each proxy is pinned to one core (PROXY_CPU),
# wrk and the backends to the other (LOAD_CPU). Prints, per proxy: requests/s,
# p50 and p99 latency, and the proxy's CPU time per request (utime+stime from
# /proc/PID/stat over the measured run, divided by the requests wrk completed).
#
# With ROUNDS > 1 the proxies take turns ROUNDS times and each proxy's row is
# its median round by CPU per request, which damps noise from other work on
# the machine.
#
# With TLS=1 each proxy terminates TLS for the clients (a P-256 certificate,
# HTTP/1.1 by ALPN; wrk keeps its connections, so this is the cost of TLS
# records, with the handshakes amortised) and the backends stay plain.
#
# With H2=1 (TLS implied) the clients speak HTTP/2: h2load (nghttp2-client)
# in place of wrk, CONNS connections of STREAMS concurrent streams each; each
# proxy speaks HTTP/1.1 to the backends (nginx http2, HAProxy alpn h2,
# hostscale-balancer -tls-http2). h2load gives no percentiles: the p50 and
# p99 columns then hold the mean request time and its standard deviation.
#
# Env: DURATION (10s), WARMUP (2s), CONNS (64), ROUNDS (3), PROXY_CPU (0),
#      LOAD_CPU (1), PROXIES ("nginx haproxy hostscale"), TLS (0), H2 (0),
#      STREAMS (10, with H2),
#      OUT (bench/results/proxy-<time>.txt).
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PROXIES=${PROXIES:-"nginx haproxy hostscale"}
ROUNDS=${ROUNDS:-3}
TLS=${TLS:-0}
H2=${H2:-0}
STREAMS=${STREAMS:-10}
[ "$H2" = 0 ] || TLS=1

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
run=$(mktemp -d /tmp/hostscale-bench.XXXXXX)
mkdir -p "$root/bench/results"
OUT=${OUT:-$root/bench/results/proxy-$(date +%Y%m%d-%H%M%S).txt}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ "$H2" = 0 ]; then
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
else
    command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
fi
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
[ "$TLS" = 0 ] || command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT

render() { sed "s#@RUN@#$run#g" "$1" > "$2"; }

# tlsify turns a rendered proxy config into its TLS variant.
tlsify() {
    [ "$TLS" = 0 ] && return 0
    case $1 in
    nginx)
        local h2=""
        [ "$H2" = 0 ] || h2=" http2"
        sed -i "s#listen 127.0.0.1:18081 backlog=4096;#listen 127.0.0.1:18081 ssl$h2 backlog=4096; ssl_certificate $run/certs/site.pem; ssl_certificate_key $run/certs/site.pem;#" "$2" ;;
    haproxy)
        local alpn=http/1.1
        [ "$H2" = 0 ] || alpn=h2,http/1.1
        sed -i -e "s#bind 127.0.0.1:18082#bind 127.0.0.1:18082 ssl crt $run/certs/site.pem alpn $alpn#" \
        -e "s#X-Forwarded-Proto http#X-Forwarded-Proto https#" "$2" ;;
    esac
}
scheme=http
if [ "$TLS" != 0 ]; then
    scheme=https
    mkdir -p "$run/certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null
    cat "$run/cert.pem" "$run/key.pem" > "$run/certs/site.pem"
fi

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

# cpu_ticks PID... prints utime+stime of the processes, in clock ticks.
cpu_ticks() {
    local sum=0 p
    for p in "$@"; do
        # Fields after the ")" of comm: utime is the 12th, stime the 13th.
        local f
        f=$(sed 's/^.*) //' "/proc/$p/stat")
        set -- $f
        sum=$((sum + ${12} + ${13}))
        shift $#
    done
    echo "$sum"
}

# pid_tree PID prints PID and its children (nginx workers).
pid_tree() { echo "$1"; pgrep -P "$1" || true; }

echo "building hostscale-balancer" >&2
(cd "$root/balancer" && GOWORK=off go build -trimpath -o "$run/hostscale-balancer" ./cmd/hostscale-balancer)

render "$here/proxy/backend.nginx.conf" "$run/backend.conf"
taskset -c "$LOAD_CPU" nginx -c "$run/backend.conf" -e "$run/backend.error.log" &
pids+=($!)
wait_port 19001
wait_port 19002

start_proxy() {
    case $1 in
    nginx)
        render "$here/proxy/nginx.conf" "$run/nginx.conf"
        tlsify nginx "$run/nginx.conf"
        taskset -c "$PROXY_CPU" nginx -c "$run/nginx.conf" -e "$run/nginx.error.log" &
        echo $! > "$run/pid"; port=18081 ;;
    haproxy)
        render "$here/proxy/haproxy.cfg" "$run/haproxy.cfg"
        tlsify haproxy "$run/haproxy.cfg"
        taskset -c "$PROXY_CPU" haproxy -db -f "$run/haproxy.cfg" &
        echo $! > "$run/pid"; port=18082 ;;
    hostscale)
        tls=()
        [ "$TLS" = 0 ] || tls=(-tls-listen 127.0.0.1:18093 -tls-cert-dir "$run/certs")
        [ "$H2" = 0 ] || tls+=(-tls-http2)
        taskset -c "$PROXY_CPU" "$run/hostscale-balancer" -listen 127.0.0.1:18083 "${tls[@]}" \
            -http-addr 127.0.0.1:17802 -table "$here/proxy/table.json" -log-level warn &
        echo $! > "$run/pid"; port=18083
        [ "$TLS" = 0 ] || port=18093 ;;
    esac
    pids+=("$(cat "$run/pid")")
    wait_port "$port"
}

results=()
for round in $(seq 1 "$ROUNDS"); do
for proxy in $PROXIES; do
    start_proxy "$proxy"
    pid=$(cat "$run/pid")
    url="$scheme://127.0.0.1:$port/"
    curl -fsSk "$url" >/dev/null 2>&1 || { echo "$proxy: $url does not answer" >&2; exit 1; }
    if [ "$H2" = 0 ]; then
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >/dev/null
    else
        taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$STREAMS" -D"${WARMUP%s}" "$url" >/dev/null
    fi
    mapfile -t tree < <(pid_tree "$pid")
    t0=$(cpu_ticks "${tree[@]}")
    if [ "$H2" = 0 ]; then
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" > "$run/$proxy.wrk"
    else
        taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$STREAMS" -D"${DURATION%s}" "$url" > "$run/$proxy.wrk"
    fi
    t1=$(cpu_ticks "${tree[@]}")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    if [ "$H2" = 0 ]; then
        reqs=$(awk '/requests in/ {print $1}' "$run/$proxy.wrk")
        rps=$(awk '/Requests\/sec:/ {print $2}' "$run/$proxy.wrk")
        p50=$(awk '$1=="50%" {print $2}' "$run/$proxy.wrk")
        p99=$(awk '$1=="99%" {print $2}' "$run/$proxy.wrk")
        errs=$(awk '/Non-2xx|Socket errors/ {print}' "$run/$proxy.wrk" | tr '\n' ' ')
    else
        grep -q "h2" "$run/$proxy.wrk" || { echo "$proxy: h2load did not speak HTTP/2" >&2; cat "$run/$proxy.wrk" >&2; exit 1; }
        reqs=$(awk '/^requests:/ {print $8}' "$run/$proxy.wrk")
        rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$run/$proxy.wrk")
        p50=$(awk '/^time for request:/ {print $6}' "$run/$proxy.wrk")
        p99=$(awk '/^time for request:/ {print $7}' "$run/$proxy.wrk")
        errs=$(awk '/^requests:/ && ($10 != "0" || $12 != "0") {print "failed " $10 " errored " $12}' "$run/$proxy.wrk")
    fi
    hz=$(getconf CLK_TCK)
    us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    echo "round $round: $proxy $rps rps, $us us/req" >&2
    results+=("$proxy $rps $p50 $p99 $us $reqs ${errs:-}")
done
done

# median picks, for one proxy, the row of its median round by CPU per request.
median() {
    local rows=() r
    for r in "${results[@]}"; do
        [ "${r%% *}" = "$1" ] && rows+=("$r")
    done
    printf '%s\n' "${rows[@]}" | sort -k5,5 -g | awk -v n=${#rows[@]} 'NR == int((n + 1) / 2)'
}
rows=()
for proxy in $PROXIES; do rows+=("$(median "$proxy")"); done

{
    echo "# bench/proxy.sh $(date -u +%FT%TZ) tls=$TLS h2=$H2 streams=$STREAMS conns=$CONNS duration=$DURATION rounds=$ROUNDS (median) proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
    printf '%-10s %10s %9s %9s %12s %10s %s\n' proxy rps p50 p99 cpu_us/req requests notes
    base=""
    for r in "${rows[@]}"; do
        set -- $r
        [ "$1" = haproxy ] && base=$5
    done
    for r in "${rows[@]}"; do
        set -- $r
        name=$1 rps=$2 p50=$3 p99=$4 us=$5 reqs=$6
        shift 6
        ratio=""
        [ -n "$base" ] && ratio=$(awk -v a="$us" -v b="$base" 'BEGIN { printf "%.2fx haproxy", a / b }')
        printf '%-10s %10s %9s %9s %12s %10s %s %s\n' "$name" "$rps" "$p50" "$p99" "$us" "$reqs" "$ratio" "$*"
    done
} | tee "$OUT"
