#!/usr/bin/env bash
# bench-http.sh: throughput of GET /api/v1/ping through the service's full
# middleware chain (cmd/api) against a bare gin.New() handler serving the same
# bytes (internal/benchtarget/baregin), measured with wrk on loopback in one
# run, alternating the targets round by round (A B A B ...) so drift and
# neighbours' load hit every target alike. Prints per-round req/s, medians and
# the ratio full/bare (target >= 0.85).
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: bash scripts/bench-http.sh [options]

Builds ./cmd/api and the bare-Gin baseline, starts each on free loopback ports
(never 8080/9090), runs wrk against /api/v1/ping alternating the variants
round by round, and prints per-round req/s, medians and ratios to bare Gin.

Variants (every round runs each of them once, in this order):
  bare        gin.New() + the ping handler, plain http.Server (the baseline)
  bare-tuned  the same engine on the service's own http.Server (every timeout
              and the header limit at their defaults): full/bare-tuned is
              the middleware chain's cost alone, full/bare adds the server's
              hardening (read/write/idle deadlines on every request)
  full        cmd/api, default LOG_LEVEL (access log on, written to a file),
              rate limiter on but out of the way (RATELIMIT_RATE/BURST 1e9),
              plus EXTRA_ENV
  core        as full with RATELIMIT_ENABLED=false: the service core's chain
              (request ID, tracing, access log and metrics, recovery, body
              limit, connection telemetry) without the /api/v1 rate limiter
  full-warn   as full with LOG_LEVEL=warn: no access lines (the log's cost)
  trace-1     (-T) as full, traces exported to a local OTLP/HTTP sink, sampler 1.0
  trace-0.01  (-T) as full, sampler parentbased_traceidratio 0.01
  trace-core  (-T) as core (no rate limiter), sampler 0.01: the observability
              chain with tracing on, without the limiter's cost
  bare-otel   (-T) bare with stock OpenTelemetry: otelgin and the SDK's
              batching OTLP/HTTP exporter to the same sink, sampler 0.01:
              what tracing costs a Gin service instrumented the usual way

Options:
  -r N       rounds per variant (default 3, at least 3 recommended)
  -d DUR     wrk duration per round (default 10s)
  -t N       wrk threads (default 2)
  -c N       wrk connections (default 64)
  -w DUR     warm-up per target before the rounds (default 3s)
  -e "K=V .." extra environment for the full-chain variants (also read from
             $EXTRA_ENV), e.g.
             -e "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_TRACES_SAMPLER_ARG=0.01"
  -T         add the tracing variants (starts internal/benchtarget/otlpsink)
  -W         skip the full-warn variant
  -p FILE    also profile bare Gin and the full chain: a 5 s CPU profile
             of each while wrk runs (the service's admin port with
             PPROF_ENABLED=true; baregin's PPROF_ADDR); writes FILE (full
             chain) and FILE.bare (pprof proto), prints the full chain's top
             functions and both sides' CPU per request by where it is spent
  -h         this help

Per round and variant it prints req/s, latency, the server's CPU time per
request and its involuntary context switches per request (preempt/req: on
shared cores the wrk thread a response wakes preempts the server, more often
the longer a request takes), and wrk's voluntary context switches per request
(wrk sleep/req, with GNU time: each is a wrk thread the server's response
has to wake, at the server's expense; a slower server lets wrk sleep more
often, a cost that a load generator on another host does not put on it). With -T it also prints tracing's own cost: each
traced variant's req/s against the same chain untraced, round by round.

The machine's cores are shared by wrk and the server: on 2 cores wrk takes
about one. Compare ratios from one run, not absolute req/s across runs.
Installs wrk with apt-get when it is missing. Only processes this script
started are stopped (by PID).
EOF
}

ROUNDS=3
DURATION=10s
THREADS=2
CONNS=64
WARMUP=3s
EXTRA_ENV="${EXTRA_ENV:-}"
TRACING=0
WARN=1
PROFILE=""

while getopts ":hr:d:t:c:w:e:TWp:" opt; do
	case "$opt" in
	h) usage; exit 0 ;;
	r) ROUNDS="$OPTARG" ;;
	d) DURATION="$OPTARG" ;;
	t) THREADS="$OPTARG" ;;
	c) CONNS="$OPTARG" ;;
	w) WARMUP="$OPTARG" ;;
	e) EXTRA_ENV="$OPTARG" ;;
	T) TRACING=1 ;;
	W) WARN=0 ;;
	p) PROFILE="$OPTARG" ;;
	:) echo "bench-http: -$OPTARG needs a value (see -h)" >&2; exit 2 ;;
	*) echo "bench-http: unknown option -$OPTARG (see -h)" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
if [[ $# -gt 0 ]]; then
	echo "bench-http: unexpected argument $1 (see -h)" >&2
	exit 2
fi
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-http: -r wants a positive number, got '$ROUNDS'" >&2; exit 2; }
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-http: -t wants a positive number, got '$THREADS'" >&2; exit 2; }
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-http: -c wants a positive number, got '$CONNS'" >&2; exit 2; }
((CONNS >= THREADS)) || { echo "bench-http: -c ($CONNS) must be at least -t ($THREADS): wrk gives each thread a connection" >&2; exit 2; }
# wrk's durations: a number with s, m or h (10s, 2m).
[[ "$DURATION" =~ ^[1-9][0-9]*[smh]$ ]] || { echo "bench-http: -d wants a duration like 10s or 2m, got '$DURATION'" >&2; exit 2; }
[[ "$WARMUP" =~ ^[0-9]+[smh]$ ]] || { echo "bench-http: -w wants a duration like 3s, got '$WARMUP'" >&2; exit 2; }

cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
	echo "bench-http: installing wrk" >&2
	if [[ $(id -u) -eq 0 ]]; then
		apt-get update -qq && apt-get install -y -qq wrk >/dev/null
	else
		sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null
	fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-http.XXXXXX")"
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building into $WORK ..." >&2
go build -o "$WORK/api" ./cmd/api
go build -o "$WORK/baregin" ./internal/benchtarget/baregin
go build -o "$WORK/otlpsink" ./internal/benchtarget/otlpsink
go build -o "$WORK/freeport" ./internal/benchtarget/freeport

# The servers get a clean environment (a developer's REDIS_URL or OTEL_*
# must not leak into the baseline or the full chain); the Go runtime knobs
# pass through to every target alike.
BASE_ENV=("PATH=$PATH")
for v in GOMAXPROCS GOGC GOMEMLIMIT GODEBUG; do
	if [[ -n "${!v:-}" ]]; then BASE_ENV+=("$v=${!v}"); fi
done

# http_get HOSTPORT PATH: prints "STATUS BODY" using bash's /dev/tcp (no curl).
http_get() {
	local host="${1%:*}" port="${1##*:}" path="$2" resp
	resp="$(
		exec 2>/dev/null 3<>"/dev/tcp/$host/$port" || exit 1
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$1" >&3
		timeout 5 cat <&3
	)" || return 1
	local status
	status="$(printf '%s' "$resp" | head -n1 | awk '{print $2}')"
	printf '%s %s\n' "$status" "${resp#*$'\r\n\r\n'}"
}

# wait_listening LOG PID: the benchtarget programs print "listening ADDR".
wait_listening() {
	local log="$1" pid="$2" i addr
	for ((i = 0; i < 100; i++)); do
		addr="$(awk '$1 == "listening" {print $2; exit}' "$log" 2>/dev/null || true)"
		if [[ -n "$addr" ]]; then
			echo "$addr"
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "bench-http: process $pid did not start:" >&2
	tail -n 20 "$log" >&2
	return 1
}

# wait_ping ADDR PID LOG: until GET /api/v1/ping answers 200.
wait_ping() {
	local addr="$1" pid="$2" log="$3" i out
	for ((i = 0; i < 100; i++)); do
		out="$(http_get "$addr" /api/v1/ping || true)"
		if [[ "$out" == 200\ * ]]; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "bench-http: $addr/api/v1/ping never answered 200 (pid $pid):" >&2
	tail -n 20 "$log" >&2
	return 1
}

declare -A ADDR LOG ADMIN PID_OF

# start_simple NAME BINARY [ENV...]: a benchtarget program on 127.0.0.1:0.
start_simple() {
	local name="$1" bin="$2"
	shift 2
	LOG[$name]="$WORK/$name.log"
	env -i "${BASE_ENV[@]}" HTTP_ADDR=127.0.0.1:0 "$@" "$bin" >>"${LOG[$name]}" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	PID_OF[$name]="$pid"
	ADDR[$name]="$(wait_listening "${LOG[$name]}" "$pid")"
}

# start_api NAME [ENV...]: cmd/api on two free loopback ports. Its stdout
# (the JSON logs, access lines included) goes to a file opened O_APPEND, so
# the script can count and truncate it between rounds.
start_api() {
	local name="$1"
	shift
	local attempt pid ports pub adm
	LOG[$name]="$WORK/$name.log"
	for attempt in 1 2 3; do
		mapfile -t ports < <("$WORK/freeport" 2)
		pub="127.0.0.1:${ports[0]}" adm="127.0.0.1:${ports[1]}"
		: >"${LOG[$name]}"
		# shellcheck disable=SC2086 # EXTRA_ENV is a list of K=V words
		env -i "${BASE_ENV[@]}" \
			HTTP_ADDR="$pub" ADMIN_ADDR="$adm" \
			RATELIMIT_RATE=1000000000 RATELIMIT_BURST=1000000000 \
			SHUTDOWN_DELAY=0s SHUTDOWN_TIMEOUT=5s \
			"$@" "$WORK/api" >>"${LOG[$name]}" 2>&1 &
		pid=$!
		if wait_ping "$pub" "$pid" "${LOG[$name]}" 2>/dev/null; then
			PIDS+=("$pid")
			PID_OF[$name]="$pid"
			ADDR[$name]="$pub"
			ADMIN[$name]="$adm"
			return 0
		fi
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		echo "bench-http: $name did not start on $pub (attempt $attempt):" >&2
		tail -n 5 "${LOG[$name]}" >&2
	done
	return 1
}

read -r -a EXTRA <<<"$EXTRA_ENV"

VARIANTS=(bare bare-tuned full)
start_simple bare "$WORK/baregin"
wait_ping "${ADDR[bare]}" "${PIDS[-1]}" "${LOG[bare]}"
start_simple bare-tuned "$WORK/baregin" BARE_TUNED=1
wait_ping "${ADDR[bare-tuned]}" "${PIDS[-1]}" "${LOG[bare-tuned]}"
start_api full "${EXTRA[@]}"
start_api core "${EXTRA[@]}" RATELIMIT_ENABLED=false
VARIANTS+=(core)
if [[ $WARN -eq 1 ]]; then
	start_api full-warn "${EXTRA[@]}" LOG_LEVEL=warn
	VARIANTS+=(full-warn)
fi
if [[ $TRACING -eq 1 ]]; then
	start_simple sink "$WORK/otlpsink"
	SINK="http://${ADDR[sink]}"
	start_api trace-1 "${EXTRA[@]}" OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
		OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0
	start_api trace-0.01 "${EXTRA[@]}" OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
		OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
	start_api trace-core "${EXTRA[@]}" RATELIMIT_ENABLED=false OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
		OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
	start_simple bare-otel "$WORK/baregin" BARE_OTEL=1 OTEL_EXPORTER_OTLP_ENDPOINT="$SINK" \
		OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
	wait_ping "${ADDR[bare-otel]}" "${PIDS[-1]}" "${LOG[bare-otel]}"
	VARIANTS+=(trace-1 trace-0.01 trace-core bare-otel)
fi

# cpu_ticks PID: user+system CPU time of the process in clock ticks.
cpu_ticks() {
	# Fields after the ")" of the command name: utime is the 12th, stime the 13th.
	awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
CLK_TCK="$(getconf CLK_TCK)"

# preemptions PID: the involuntary context switches of all of the process's
# threads so far. With wrk on the same cores, a server thread is preempted
# by the wrk thread its response wakes; a slower request is preempted more
# often, which adds kernel time on top of the chain's own.
preemptions() {
	cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

# GNU time reports wrk's voluntary context switches: each is wrk waiting in
# epoll_wait for a response, and the response then pays for waking it
# (sock_def_readable, an inter-processor interrupt: a hypervisor exit on a
# VM). A slower server lets wrk fall asleep more often, so part of a slower
# chain's CPU per request is spent waking a load generator on the same
# host, which clients across a network do not cost it.
GNU_TIME=""
if [[ -x /usr/bin/time ]] && /usr/bin/time -f '%w' -o /dev/null true 2>/dev/null; then GNU_TIME=/usr/bin/time; fi

# run_wrk NAME DURATION: prints "req/s p50 p99 non2xx sockerr requests
# wrk-sleeps" (wrk-sleeps "-" without GNU time).
run_wrk() {
	local name="$1" dur="$2" out sleeps="-"
	if [[ -n "$GNU_TIME" ]]; then
		out="$("$GNU_TIME" -f '%w' -o "$WORK/wrk-rusage" wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency "http://${ADDR[$name]}/api/v1/ping")"
		sleeps="$(tail -n1 "$WORK/wrk-rusage")"
	else
		out="$(wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency "http://${ADDR[$name]}/api/v1/ping")"
	fi
	printf '%s\n' "$out" >>"$WORK/wrk-$name.txt"
	awk -v sleeps="$sleeps" '
		/^Requests\/sec:/ { rps = $2 }
		/ requests in / { n = $1 }
		/^ +50%/ { p50 = $2 }
		/^ +99%/ { p99 = $2 }
		/Non-2xx or 3xx responses:/ { non2xx = $NF }
		/Socket errors:/ {
			# Socket errors: connect 0, read 0, write 0, timeout 0
			gsub(",", ""); err = $4 + $6 + $8 + $10
		}
		END { printf "%s %s %s %d %d %d %s\n", rps, p50, p99, non2xx, err, n, sleeps }
	' <<<"$out"
}

log_lines() {
	local f="${LOG[$1]:-}"
	if [[ -n "$f" && -f "$f" ]]; then wc -l <"$f"; else echo 0; fi
}

WRK_VERSION="$(wrk --version 2>&1 | head -n1 | awk '{print $2}' || true)"
echo "wrk $WRK_VERSION: $THREADS threads, $CONNS connections, $DURATION per round, $ROUNDS rounds per variant, warm-up $WARMUP"
echo "cores: $(nproc) (shared by wrk and the server), $(go version | awk '{print $3}'), GOMAXPROCS=${GOMAXPROCS:-default}"
if [[ -n "$EXTRA_ENV" ]]; then echo "EXTRA_ENV for the full chain: $EXTRA_ENV"; fi
echo

for v in "${VARIANTS[@]}"; do
	run_wrk "$v" "$WARMUP" >/dev/null
	if [[ "$v" != bare* ]]; then : >"${LOG[$v]}"; fi
done

declare -A RPS CPU PRE SLP
printf '%-6s %-11s %12s %10s %10s %8s %8s %11s %12s %12s %14s\n' round variant "req/s" p50 p99 non2xx sockerr "log lines" "cpu us/req" "preempt/req" "wrk sleep/req"
FAIL=0
for ((r = 1; r <= ROUNDS; r++)); do
	for v in "${VARIANTS[@]}"; do
		before="$(log_lines "$v")"
		t0="$(cpu_ticks "${PID_OF[$v]}")"
		s0="$(preemptions "${PID_OF[$v]}")"
		res="$(run_wrk "$v" "$DURATION")"
		t1="$(cpu_ticks "${PID_OF[$v]}")"
		s1="$(preemptions "${PID_OF[$v]}")"
		read -r rps p50 p99 non2xx sockerr nreq sleeps <<<"$res"
		after="$(log_lines "$v")"
		# Server CPU per request: steadier than req/s on a shared machine,
		# since it does not depend on how much CPU the server was given.
		cpu="$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$nreq" 'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }')"
		pre="$(awk -v s="$((s1 - s0))" -v n="$nreq" 'BEGIN { printf "%.3f", (n > 0 ? s / n : 0) }')"
		slp="-"
		if [[ "$sleeps" != "-" ]]; then slp="$(awk -v s="$sleeps" -v n="$nreq" 'BEGIN { printf "%.3f", (n > 0 ? s / n : 0) }')"; fi
		lines=$((after - before))
		# Keep the disk bounded: the access log of one round is ~100 MB.
		if [[ "$v" == bare* ]]; then lines="-"; else : >"${LOG[$v]}"; fi
		RPS[$v]+="$rps "
		CPU[$v]+="$cpu "
		PRE[$v]+="$pre "
		SLP[$v]+="$slp "
		printf '%-6s %-11s %12s %10s %10s %8s %8s %11s %12s %12s %14s\n' "$r" "$v" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" "$lines" "$cpu" "$pre" "$slp"
		if [[ "$non2xx" != 0 || "$sockerr" != 0 ]]; then FAIL=1; fi
	done
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# summary BASE: every variant's median req/s and CPU per request against
# the baseline BASE, two ways: ratio of the medians, and the median of the
# per-round ratios (each round's variants ran back to back).
summary() {
	local base="$1" v med paired i ratio pmed cmed cratio range slp
	local base_med base_cpu
	base_med="$(median <<<"${RPS[$base]}")"
	base_cpu="$(median <<<"${CPU[$base]}")"
	read -r -a BASE_R <<<"${RPS[$base]}"
	echo
	echo "against $base:"
	printf '%-11s %14s %14s %18s %16s %12s %18s %12s %14s\n' variant "median req/s" "ratio" "median round ratio" "round ratio range" "cpu us/req" "cpu ratio base/x" "preempt/req" "wrk sleep/req"
	for v in "${VARIANTS[@]}"; do
		med="$(median <<<"${RPS[$v]}")"
		read -r -a VR <<<"${RPS[$v]}"
		paired=""
		for ((i = 0; i < ${#VR[@]}; i++)); do
			paired+="$(awk -v a="${VR[$i]}" -v b="${BASE_R[$i]}" 'BEGIN { printf "%.4f", a / b }') "
		done
		ratio="$(awk -v a="$med" -v b="$base_med" 'BEGIN { printf "%.3f", a / b }')"
		pmed="$(median <<<"$paired")"
		cmed="$(median <<<"${CPU[$v]}")"
		cratio="$(awk -v a="$base_cpu" -v b="$cmed" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
		# The lowest and highest per-round ratio: how far one round can be
		# trusted on this machine.
		range="$(tr ' ' '\n' <<<"$paired" | awk 'NF { if (n++ == 0 || $1 < lo) lo = $1; if (n == 1 || $1 > hi) hi = $1 } END { printf "%.3f-%.3f", lo, hi }')"
		slp="-"
		if [[ -n "$GNU_TIME" ]]; then slp="$(median <<<"${SLP[$v]}")"; fi
		printf '%-11s %14.0f %14s %18.3f %16s %12.2f %18s %12.3f %14s\n' "$v" "$med" "$ratio" "$pmed" "$range" "$cmed" "$cratio" "$(median <<<"${PRE[$v]}")" "$slp"
	done
}
summary bare
summary bare-tuned
echo
echo "target: >= 0.85 of bare Gin (req/s ratio; the cpu ratio is the same question asked of CPU time per request)"

# paired X BASE: the median of X's per-round req/s ratios to BASE.
paired() {
	local -a a b
	local i out=""
	read -r -a a <<<"${RPS[$1]}"
	read -r -a b <<<"${RPS[$2]}"
	for ((i = 0; i < ${#a[@]}; i++)); do
		out+="$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { printf "%.4f", x / y }') "
	done
	median <<<"$out"
}

if [[ $TRACING -eq 1 ]]; then
	echo
	echo "tracing's own cost (median of per-round req/s ratios, traced to untraced, same chain):"
	printf '  trace-0.01 / full  %.3f\n  trace-core / core  %.3f\n  trace-1 / full     %.3f\n  bare-otel / bare   %.3f (stock otelgin)\n' \
		"$(paired trace-0.01 full)" "$(paired trace-core core)" "$(paired trace-1 full)" "$(paired bare-otel bare)"
	stats="$(http_get "${ADDR[sink]}" /stats || true)"
	echo
	echo "otlp sink: ${stats#* }"
	if [[ "$stats" == *'"spans":0'* ]]; then
		echo "WARNING: the OTLP sink received no spans: this build of cmd/api does not export traces," >&2
		echo "         so the trace-* rows measure the chain without tracing." >&2
	fi
fi

if [[ -n "$PROFILE" ]]; then
	echo
	echo "profiling bare Gin and the full chain (5 s CPU profile of each under wrk) ..."
	LOG[bare-prof]="$WORK/bare-prof.log"
	env -i "${BASE_ENV[@]}" HTTP_ADDR=127.0.0.1:0 PPROF_ADDR=127.0.0.1:0 "$WORK/baregin" >>"${LOG[bare-prof]}" 2>&1 &
	PIDS+=("$!")
	ADDR[bare-prof]="$(wait_listening "${LOG[bare-prof]}" "$!")"
	ADMIN[bare-prof]="$(awk '$1 == "pprof" {print $2; exit}' "${LOG[bare-prof]}")"
	start_api prof "${EXTRA[@]}" PPROF_ENABLED=true
	declare -A PROF_FILE=([bare-prof]="$PROFILE.bare" [prof]="$PROFILE") PROF_REQS
	for v in bare-prof prof; do
		wrk -t"$THREADS" -c"$CONNS" -d8s "http://${ADDR[$v]}/api/v1/ping" >"$WORK/$v.wrk" &
		WRKPID=$!
		sleep 1
		go tool pprof -proto "http://${ADMIN[$v]}/debug/pprof/profile?seconds=5" >"${PROF_FILE[$v]}" 2>/dev/null
		wait "$WRKPID" || true
		# Requests served while profiling: wrk's steady rate times 5 s.
		PROF_REQS[$v]="$(awk '/^Requests\/sec/ {printf "%.0f", $2 * 5}' "$WORK/$v.wrk")"
	done
	go tool pprof -top -nodecount=35 "$WORK/api" "$PROFILE" 2>/dev/null | sed -n '1,45p'
	# The same buckets on both sides, in µs of CPU per request (a syscall's
	# kernel time counts to it): what the chain adds and where.
	breakdown() { # PROFILE BINARY REQUESTS
		go tool pprof -top -cum -nodecount=5000 "$2" "$1" 2>/dev/null | awk -v reqs="$3" '
			function secs(v) { return v ~ /ms$/ ? substr(v, 1, length(v) - 2) / 1000 : (v ~ /us$/ ? substr(v, 1, length(v) - 2) / 1e6 : substr(v, 1, length(v) - 1)) }
			/Total samples = / { for (i = 1; i <= NF; i++) if ($i == "=") { total = secs($(i + 1)) } }
			NF >= 6 && $4 ~ /s$/ { name = $6; for (i = 7; i <= NF; i++) name = name " " $i; if (!(name in cum)) cum[name] = secs($4) }
			END {
				n = split("total|syscall.write|syscall.read|github.com/gin-gonic/gin.(*Engine).ServeHTTP|net/http.(*chunkWriter).writeHeader|internal/poll.setDeadlineImpl|runtime.mallocgc|runtime.gcBgMarkWorker|runtime.schedule", k, "|")
				for (i = 1; i <= n; i++) printf "%s %.2f\n", i, (k[i] == "total" ? total : cum[k[i]]) / reqs * 1e6
			}'
	}
	if [[ -n "${PROF_REQS[bare-prof]}" && -n "${PROF_REQS[prof]}" ]]; then
		echo
		echo "CPU per request (µs) by where it is spent, bare Gin vs full chain (${PROF_REQS[bare-prof]} and ${PROF_REQS[prof]} requests profiled):"
		join <(breakdown "${PROF_FILE[bare-prof]}" "$WORK/baregin" "${PROF_REQS[bare-prof]}") \
			<(breakdown "$PROFILE" "$WORK/api" "${PROF_REQS[prof]}") | sort -n | awk '
			BEGIN { split("total|write(2) of responses|read(2) of requests|Gin: routing, middleware, handler|net/http: response header bytes|deadlines (SetReadDeadline ...)|allocation (mallocgc)|GC marking (background)|scheduler (runtime.schedule)", label, "|")
				printf "  %-38s %8s %8s %8s\n", "", "bare", "full", "diff" }
			{ printf "  %-38s %8.2f %8.2f %+8.2f\n", label[$1], $2, $3, $3 - $2 }'
	fi
	echo "profiles written to $PROFILE (full chain) and $PROFILE.bare (go tool pprof -http=: FILE)"
fi

if [[ $FAIL -ne 0 ]]; then
	echo "bench-http: some rounds had non-2xx responses or socket errors; figures are not comparable" >&2
	exit 1
fi
