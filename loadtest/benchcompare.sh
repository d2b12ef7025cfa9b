#!/usr/bin/env bash
# benchcompare.sh — `make bench-compare`: the standard load-test scenarios against Sluice and
# Mosquitto on this machine, side by side.
#
# Installs Mosquitto from Debian when it is missing, starts it and bin/sluice on loopback ports
# of their own, runs configs/loadtest/*.yaml against both with `sluice loadtest --compare`
# (sampling both processes' RSS and CPU); bridge-queue runs against Sluice alone (Mosquitto has
# no queues). Writes out/bench-compare.{json,html}, prints the tables, and stops only the two
# brokers it started. Exit status: that of `sluice loadtest` (1 when a broker lost messages).
#
# Environment: BIN (default bin/sluice), OUT (default out), SCENARIOS (names in configs/loadtest),
# DURATION (overrides every scenario's duration, e.g. 2s for a quick run), SLUICE_PORT,
# SLUICE_HTTP_PORT, MOSQUITTO_PORT (defaults 21883, 28080, 21884).
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-bin/sluice}
OUT=${OUT:-out}
SCENARIOS=${SCENARIOS:-"fan-in fan-out p2p shared max-throughput idle storm bridge-queue"}
DURATION=${DURATION:-}
SLUICE_PORT=${SLUICE_PORT:-21883}
SLUICE_HTTP_PORT=${SLUICE_HTTP_PORT:-28080}
MOSQUITTO_PORT=${MOSQUITTO_PORT:-21884}

say() { echo "bench-compare: $*" >&2; }

if [ ! -x "$BIN" ]; then
	say "$BIN is missing; run make build first."
	exit 2
fi

MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
	say "installing mosquitto from Debian"
	SUDO=""
	[ "$(id -u)" -ne 0 ] && SUDO="sudo"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
	MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
if [ ! -x "$MOSQUITTO" ]; then
	say "mosquitto could not be installed."
	exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_port PID PORT NAME: until PORT accepts connections, while PID lives (10s at most).
wait_port() {
	local i
	for i in $(seq 100); do
		if ! kill -0 "$1" 2>/dev/null; then
			say "$3 exited at start:"
			cat "$work/$3.log" >&2
			return 1
		fi
		(exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
		sleep 0.1
	done
	say "$3 does not listen on 127.0.0.1:$2 after 10s."
	return 1
}

for p in "$SLUICE_PORT" "$SLUICE_HTTP_PORT" "$MOSQUITTO_PORT"; do
	if ! port_free "$p"; then
		say "port 127.0.0.1:$p is in use; set SLUICE_PORT, SLUICE_HTTP_PORT or MOSQUITTO_PORT."
		exit 2
	fi
done

cat >"$work/sluice.yaml" <<YAML
log: {level: warn, format: json}
mqtt:
  listeners:
    - {name: tcp, type: tcp, address: "127.0.0.1:$SLUICE_PORT", allow_anonymous: true}
http: {address: "127.0.0.1:$SLUICE_HTTP_PORT"}
data_dir: $work/data
YAML
cat >"$work/mosquitto.conf" <<CONF
listener $MOSQUITTO_PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
log_dest stderr
log_type error
CONF

"$BIN" serve --config "$work/sluice.yaml" >"$work/sluice.log" 2>&1 &
sluice_pid=$!
pids+=("$sluice_pid")
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mosquitto_pid=$!
pids+=("$mosquitto_pid")
wait_port "$sluice_pid" "$SLUICE_PORT" sluice
wait_port "$mosquitto_pid" "$MOSQUITTO_PORT" mosquitto
say "sluice (pid $sluice_pid) on 127.0.0.1:$SLUICE_PORT, $("$MOSQUITTO" -h 2>/dev/null | head -1 || echo mosquitto) (pid $mosquitto_pid) on 127.0.0.1:$MOSQUITTO_PORT"

mkdir -p "$OUT"
args=()
for s in $SCENARIOS; do
	args+=(--scenario "configs/loadtest/$s.yaml")
done
over=()
[ -n "$DURATION" ] && over+=(--duration "$DURATION" --warmup 0s)

status=0
"$BIN" loadtest "${args[@]}" "${over[@]}" \
	--broker "tcp://127.0.0.1:$SLUICE_PORT" --label sluice --pid "$sluice_pid" \
	--compare "tcp://127.0.0.1:$MOSQUITTO_PORT" --compare-label mosquitto --compare-pid "$mosquitto_pid" \
	--queue-api "http://127.0.0.1:$SLUICE_HTTP_PORT" \
	--json "$OUT/bench-compare.json" --html "$OUT/bench-compare.html" || status=$?

say "reports: $OUT/bench-compare.html $OUT/bench-compare.json"
exit "$status"
