#!/usr/bin/env bash
# diagnose-eof.sh: the three-layer EOF diagnosis (client, proxy, kernel) as
# one report in plain words. Read-only: it changes nothing.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: bash scripts/diagnose-eof.sh [options]

Looks for the causes of "EOF", "connection reset" and 502/504 errors in three
layers and prints what it found, what it means and what to do:

  1. client  - curl timing phases against a URL, and (root + tcpdump) who
               sends FIN/RST on that port
  2. proxy   - 499/502/504 and "upstream prematurely closed" / "reset by
               peer" in nginx's access and error logs; nginx's upstream
               keep-alive and read timeouts against the service's own
  3. kernel  - listen queue overflows, socket states (CLOSE-WAIT, TIME-WAIT),
               sysctls against the recommended values, NIC and softnet drops

and, with --metrics, the service's own view from its Prometheus metrics:

  4. service - who closed its connections and why (peer reset, client gone
               mid-request, idle/read/write timeouts, requests cut at
               SHUTDOWN_TIMEOUT), 499s, requests net/http rejected, TLS
               handshake errors, the pod's listen overflows and accept
               queue, retransmissions to its clients, open circuits,
               fallbacks, its own retries towards its dependencies, the
               pooled connections its dependencies had closed (with the
               idle time that bounds their keep-alive timeout) and the
               rate limiter's fallback; with nginx's error log,
               whether nginx's premature closes are the keep-alive race
               with the service's idle timeout

and, with --service-log, the service's own close lines:

  5. service log - clients behind a lossy path (retransmissions, by
               client address) and responses cut by the write timeout,
               with the data the client never got

Every part is optional: a missing tool or input is reported, not fatal.
Findings are OK, NOTE, WARN (evidence that connections failed, or a setting
that makes them fail) or TUNE (kernel settings that differ from the
recommended values: listed in the summary as settings to review).
Exit status: 0 when nothing was found to warn about, 3 when the summary lists
warnings (for runbooks and cron jobs; TUNE findings alone leave it 0), 2 for
bad usage.

Options:
  -u, --url URL          probe URL with curl (e.g. http://127.0.0.1:8080/healthz)
  -n, --requests N       requests sent over one connection (default 3)
  -t, --timeout SEC      curl's limit per request (default 10)
  -c, --capture SEC      capture FIN/RST packets on the URL's port for SEC
                         seconds while probing (root and tcpdump needed)
  -a, --nginx-access F   nginx access log (combined or deploy/nginx format)
  -e, --nginx-error F    nginx error log
  -N, --nginx-conf F     nginx configuration: best the output of nginx -T
                         (includes expanded); a single file's includes are
                         not followed. Its upstream keepalive_timeout and
                         proxy_read_timeout are checked against the
                         service's idle and write timeouts (read from
                         --metrics, else the service's defaults), and
                         its listen directives for a backlog= (511
                         without one, whatever somaxconn says);
                         ingress-nginx proxies through one upstream_balancer
                         with no port: leave -p out there
  -l, --service-log F    the service's JSON log (kubectl logs POD > F): its
                         "connection closed" lines, which carry the kernel's
                         view of each connection at close (retransmissions,
                         round trip, response bytes never sent), by client;
                         the whole file is read: for a window, save only it
                         (kubectl logs --since=1h POD > F)
  -m, --metrics URL      the service's metrics (its admin port), e.g.
                         http://127.0.0.1:9090/metrics; read at the start and
                         at the end, like the kernel counters
  -p, --port PORT        only count sockets on this local or remote port
                         (and only check nginx upstreams with a server on it,
                         and line up only their errors with the service's)
  -i, --interval SEC     seconds between two readings of the kernel counters
                         and the service's metrics,
                         to tell "rising now" from "since boot" (default 2; 0:
                         one reading). nginx's logs are read whole (since
                         their rotation), not over the interval: to look at
                         an incident after it, use -i 0 (the service's
                         totals since it started)
  -h, --help             this help

Example:
  bash scripts/diagnose-eof.sh -u http://127.0.0.1:8080/api/v1/ping \
    -a /var/log/nginx/access.log -e /var/log/nginx/error.log -p 8080 \
    -m http://127.0.0.1:9090/metrics
  nginx -T > /tmp/nginx-T.txt && bash scripts/diagnose-eof.sh -N /tmp/nginx-T.txt -p 8080
EOF
}

url=""
requests=3
timeout=10
capture=0
access_log=""
error_log=""
nginx_conf=""
port=""
metrics_url=""
service_log=""
interval=2

need_arg() {
	if [[ $# -lt 2 || -z $2 ]]; then
		echo "diagnose-eof: $1 needs a value (see -h)" >&2
		exit 2
	fi
}
need_int() {
	if ! [[ $2 =~ ^[0-9]+$ ]]; then
		echo "diagnose-eof: $1 wants a whole number, got '$2'" >&2
		exit 2
	fi
}
need_pos() {
	need_int "$@"
	if ((10#$2 < 1)); then
		echo "diagnose-eof: $1 wants at least 1, got '$2'" >&2
		exit 2
	fi
}

while [[ $# -gt 0 ]]; do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	-u | --url) need_arg "$@" && url=$2 && shift ;;
	-n | --requests) need_arg "$@" && need_pos "$1" "$2" && requests=$2 && shift ;;
	-t | --timeout) need_arg "$@" && need_pos "$1" "$2" && timeout=$2 && shift ;;
	-c | --capture) need_arg "$@" && need_int "$1" "$2" && capture=$2 && shift ;;
	-a | --nginx-access) need_arg "$@" && access_log=$2 && shift ;;
	-e | --nginx-error) need_arg "$@" && error_log=$2 && shift ;;
	-N | --nginx-conf) need_arg "$@" && nginx_conf=$2 && shift ;;
	-p | --port) need_arg "$@" && need_int "$1" "$2" && port=$2 && shift ;;
	-m | --metrics) need_arg "$@" && metrics_url=$2 && shift ;;
	-l | --service-log) need_arg "$@" && service_log=$2 && shift ;;
	-i | --interval) need_arg "$@" && need_int "$1" "$2" && interval=$2 && shift ;;
	*)
		echo "diagnose-eof: unknown argument '$1' (see -h)" >&2
		exit 2
		;;
	esac
	shift
done
((requests >= 1 && requests <= 100)) || {
	echo "diagnose-eof: --requests must be within 1..100" >&2
	exit 2
}
((capture <= 300)) || {
	echo "diagnose-eof: --capture is at most 300 seconds" >&2
	exit 2
}
((interval <= 60)) || {
	echo "diagnose-eof: --interval is at most 60 seconds" >&2
	exit 2
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/diagnose-eof.XXXXXX")
trap 'rm -rf "$work"' EXIT

have() { command -v "$1" >/dev/null 2>&1; }

# hex() for awk: mawk, Debian's default awk, has no strtonum.
awk_hex='function hex(s,  i, v) { v = 0; s = toupper(s); for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789ABCDEF", substr(s, i, 1)) - 1; return v }'

warnings=()
advice=()    # standing settings to review: in the summary, not warnings (exit status 0)
proxy_died=0 # upstream connections nginx lost under a request (section 2)
access_read=0 # nginx's access log was read: c502/c504 say what clients saw
order_ok=0   # upstreams whose keepalive_timeout --nginx-conf found below the service's idle timeout
order_bad=0  # and those it found not below

section() { printf '\n== %s ==\n' "$1"; }

# finding LEVEL WHAT MEANS DO: one finding in plain words. LEVEL is OK, NOTE,
# TUNE or WARN; WARN headlines are repeated in the summary (and make the exit
# status 3), TUNE ones too, as settings to review: a standing difference from
# the recommended configuration, not evidence that connections failed.
finding() {
	local level=$1 what=$2 means=${3:-} todo=${4:-}
	printf '[%s] %s\n' "$level" "$what"
	[[ -n $means ]] && printf '%s\n' "$means" | fold -s -w 86 | sed '1s/^/       means: /; 2,$s/^/              /'
	[[ -n $todo ]] && printf '%s\n' "$todo" | fold -s -w 86 | sed '1s/^/       do:    /; 2,$s/^/              /'
	if [[ $level == WARN ]]; then
		warnings+=("$what")
	elif [[ $level == TUNE ]]; then
		advice+=("$what")
	fi
	return 0
}

skip() { printf '[SKIP] %s\n' "$1"; }

printf 'EOF diagnosis on %s at %s\n' "$(hostname 2>/dev/null || echo '?')" "$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
if [[ $(id -u) -ne 0 ]]; then
	echo "(not root: packet capture, some dmesg lines and socket owners are not visible)"
fi

# ---------------------------------------------------------------- kernel #1
# The kernel counters are read first and again at the end, so the report
# can say whether they rose while it ran.

counters=(ListenOverflows ListenDrops TCPAbortOnData TCPAbortOnClose TCPAbortOnTimeout TCPAbortOnMemory TCPReqQFullDrop TCPBacklogDrop)

# read_counters FILE: "Name value" lines for the TcpExt counters above.
read_counters() {
	local out=$1
	if have nstat; then
		# -a absolute, -s do not touch nstat's history file, -z zeros too.
		if nstat -asz 2>/dev/null | awk '$1 ~ /^TcpExt/ { sub(/^TcpExt/, "", $1); print $1, $2 }' >"$out" && [[ -s $out ]]; then
			echo nstat
			return
		fi
	fi
	if [[ -r /proc/net/netstat ]]; then
		awk '$1 == "TcpExt:" { if (!n) { for (i = 2; i <= NF; i++) name[i] = $i; n = NF } else { for (i = 2; i <= n; i++) print name[i], $i } }' /proc/net/netstat >"$out"
		echo /proc/net/netstat
		return
	fi
	: >"$out"
	echo none
}

counter() { awk -v k="$1" '$1 == k { print $2; found = 1 } END { if (!found) print "" }' "$2"; }

counter_src=$(read_counters "$work/counters.1")
counter_t0=$(date +%s)

# read_metrics FILE: the service's metrics, or an empty file and a message
# in FILE.err.
read_metrics() {
	: >"$1"
	if [[ -z $metrics_url ]] || ! have curl; then
		return 0
	fi
	curl -sS -f --max-time 5 -o "$1" "$metrics_url" 2>"$1.err" || : >"$1"
}
read_metrics "$work/metrics.1"

# service_timeout FILE NAME: the service's http_server_timeout_seconds
# {timeout="NAME"} in seconds, decimals kept ("" when absent).
service_timeout() {
	awk -v t="timeout=\"$2\"" 'index($1, "http_server_timeout_seconds{") == 1 && index($1, t) { print $2 + 0 }' "$1"
}

# ---------------------------------------------------------------- client
section "1. Client: what a caller sees"

url_port() {
	local u=$1 hostport
	hostport=${u#*://}
	hostport=${hostport%%/*}
	hostport=${hostport##*@}
	if [[ $hostport =~ :([0-9]+)$ ]]; then
		echo "${BASH_REMATCH[1]}"
	elif [[ $u == https://* ]]; then
		echo 443
	else
		echo 80
	fi
}

capture_pid=""
capture_file="$work/capture.txt"
if [[ $capture -gt 0 ]]; then
	if [[ -z $url ]]; then
		skip "packet capture: needs --url to know the port"
	elif [[ $(id -u) -ne 0 ]]; then
		skip "packet capture: needs root (run with sudo)"
	elif ! have tcpdump; then
		skip "packet capture: tcpdump is not installed (apt-get install tcpdump)"
	elif ! have timeout; then
		skip "packet capture: timeout(1) is not installed (coreutils)"
	else
		cport=$(url_port "$url")
		# FIN and RST only: who ends connections, and who aborts them.
		timeout "$capture" tcpdump -nn -l -i any "tcp port $cport and (tcp[tcpflags] & (tcp-fin|tcp-rst) != 0)" \
			>"$capture_file" 2>"$work/tcpdump.err" &
		capture_pid=$!
		sleep 0.5 # let tcpdump attach before the probe starts
	fi
fi

if [[ -z $url ]]; then
	skip "no --url given: client timing not measured"
elif ! have curl; then
	skip "curl is not installed (apt-get install curl): client timing not measured"
else
	fmt='%{http_code} %{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total} %{num_connects}\n'
	args=()
	# -o pairs with one URL each: every response body is discarded.
	for ((i = 0; i < requests; i++)); do args+=(-o /dev/null "$url"); done
	# One curl with the URL repeated reuses the connection like a keep-alive
	# client; num_connects says whether it did.
	set +e
	curl -sS --connect-timeout 5 --max-time "$timeout" -w "$fmt" "${args[@]}" >"$work/curl.out" 2>"$work/curl.err"
	rc=$?
	set -e
	echo "GET $url x$requests over one keep-alive connection (seconds; phases from curl -w):"
	printf '  %-3s %-6s %-8s %-8s %-8s %-10s %-8s %s\n' '#' status dns tcp tls server total new-conn
	n=0
	ok=0
	max_connect=0
	max_server=0
	new_conns=0
	statuses=""
	while read -r code dns conn app pre start total nconn; do
		n=$((n + 1))
		[[ $nconn =~ ^[0-9]+$ ]] || nconn=0
		if [[ $code == 000 ]]; then
			# No response, but the phases it got through still tell a
			# stuck handshake (tcp) from a stuck server (the rest of total).
			tcp=$(awk -v a="$conn" -v b="$dns" 'BEGIN { d = a - b; if (a == 0 || d < 0) d = 0; printf "%.3f", d }')
			tls=$(awk -v a="$app" -v b="$conn" 'BEGIN { d = a - b; if (a == 0 || d < 0) d = 0; printf "%.3f", d }')
			printf '  %-3s %-6s %-8s %-8s %-8s %-10s %-8s %s (no response)\n' "$n" failed "$dns" "$tcp" "$tls" "-" "$total" "$nconn"
			continue
		fi
		ok=$((ok + 1))
		tcp=$(awk -v a="$conn" -v b="$dns" 'BEGIN { d = a - b; if (a == 0 || d < 0) d = 0; printf "%.3f", d }')
		tls=$(awk -v a="$app" -v b="$conn" 'BEGIN { d = a - b; if (a == 0 || d < 0) d = 0; printf "%.3f", d }')
		server=$(awk -v a="$start" -v b="$pre" 'BEGIN { printf "%.3f", a - b }')
		printf '  %-3s %-6s %-8s %-8s %-8s %-10s %-8s %s\n' "$n" "$code" "$dns" "$tcp" "$tls" "$server" "$total" "$nconn"
		max_connect=$(awk -v a="$tcp" -v b="$max_connect" 'BEGIN { print (a > b) ? a : b }')
		max_server=$(awk -v a="$server" -v b="$max_server" 'BEGIN { print (a > b) ? a : b }')
		new_conns=$((new_conns + nconn))
		statuses+="$code "
	done <"$work/curl.out"
	echo "  (dns: name lookup; tcp: handshake; tls: TLS handshake; server: request sent to first byte back; new-conn: 1 = a new TCP connection)"
	# curl prints one error line per failed URL; the first says it.
	curl_err=$(head -n 1 "$work/curl.err" | tr -d '\n')

	case $rc in
	0) ;;
	6) finding WARN "curl could not resolve the host (exit 6)" \
		"DNS failed before any connection was made; nothing reached the server." \
		"Check the host name and the resolver (/etc/resolv.conf, CoreDNS in Kubernetes)." ;;
	7) finding WARN "curl could not connect (exit 7): $curl_err" \
		"Nothing accepted the connection: the process is not listening on that port, it is restarting, or a firewall rejects it. Behind nginx this becomes a 502 with \"connect() failed (111: Connection refused)\"." \
		"Check that the service runs and listens on that address (ss -ltn), and its restarts (kubectl get pods, journalctl)." ;;
	28) finding WARN "curl timed out (exit 28) after at most ${timeout}s" \
		"The server did not answer in time. A stuck connect points at a full listen queue or dropped SYNs (see the kernel section); a stuck response points at a slow handler or dependency." \
		"Compare the phases above: large tcp = kernel/network, large server = the application. Raise the client timeout only if the work is legitimately slow." ;;
	52) finding WARN "curl got an empty reply (exit 52): the server closed the connection without answering" \
		"This is the EOF itself: the peer sent FIN before any response byte. Typical causes: a keep-alive connection the server had just closed as idle, a server-side read/header timeout, a crash, or a proxy dropping the request." \
		"If it happens on reused connections, the client's idle timeout must be shorter than the server's (Go: http.Transport.IdleConnTimeout < the server's IdleTimeout). Check the server's logs at that moment." ;;
	56) finding WARN "curl's connection was reset (exit 56): $curl_err" \
		"The peer (or something in between) sent RST: the server closed the socket with unread data, its accept queue overflowed with tcp_abort_on_overflow, a firewall or conntrack table dropped state, or a process died." \
		"Check the kernel section (ListenOverflows, TCPAbortOnClose, TCPAbortOnData, conntrack), the proxy's error log, and whether the server restarted." ;;
	18) finding WARN "the response was truncated (exit 18): fewer body bytes than Content-Length" \
		"The server or a proxy closed the connection in the middle of the body: a write timeout (Go http.Server.WriteTimeout) that fired during a slow transfer, or a crash." \
		"Make sure the server's write timeout covers the slowest legitimate response, and that proxies buffer responses (proxy_buffering on)." ;;
	35) finding WARN "the TLS handshake failed (exit 35): $curl_err" \
		"The connection was made but TLS did not complete: protocol or certificate mismatch, or a plain-HTTP port spoken to with https." \
		"Check the scheme and the server's certificate (openssl s_client -connect host:port)." ;;
	*) finding WARN "curl failed (exit $rc): $curl_err" \
		"The request did not complete." \
		"See 'man curl' (EXIT CODES) for exit $rc." ;;
	esac

	# curl's exit status is the last transfer's: a request that died in
	# the middle of the run shows only as a row without a status.
	failed=$((n - ok))
	if [[ $failed -gt 0 && $rc -eq 0 ]]; then
		finding WARN "$failed of $n requests got no response, though the last one did" \
			"curl reports the error of its last transfer only: an earlier request died without a status line (an EOF, a reset or a timeout on its connection)." \
			"Run again (a few times) or capture (-c) to see which side closed it; a reused keep-alive connection the server had just closed as idle is the classic cause."
	fi
	if [[ $ok -gt 0 ]]; then
		if [[ $statuses == *502* || $statuses == *504* ]]; then
			finding WARN "the URL answered 502/504: a proxy in front could not get a response" \
				"The client reached a proxy, and the proxy failed towards the service (refused, reset, premature close or timeout)." \
				"Read the proxy section (pass --nginx-access/--nginx-error) for the reason."
		elif [[ $statuses == *" 5"* || $statuses == 5* ]]; then
			finding WARN "the URL answered a 5xx status ($statuses)" \
				"The server answered, so the connection is fine: this is an application error." \
				"Read the service's logs for these requests."
		elif [[ $rc -eq 0 && $failed -eq 0 ]]; then
			finding OK "the URL answered ($statuses) with no transport error"
		fi
		if awk -v a="$max_connect" 'BEGIN { exit !(a >= 1) }'; then
			finding WARN "a TCP handshake took ${max_connect}s" \
				"A handshake above 1s almost always means a lost SYN or SYN-ACK that was retransmitted after 1s: the server's listen queue or SYN backlog was full, or packets were dropped." \
				"Check ListenOverflows/ListenDrops and somaxconn/tcp_max_syn_backlog in the kernel section."
		fi
		if awk -v a="$max_server" 'BEGIN { exit !(a >= 1) }'; then
			finding NOTE "the slowest response took ${max_server}s in the server" \
				"Time from the request sent to the first response byte: handler, dependency or queueing time." \
				"If clients time out at this level they give up first: nginx logs 499, the service logs status 499."
		fi
		if [[ $failed -gt 0 ]]; then
			: # connection reuse cannot be judged from a run with failures
		elif [[ $ok -gt 1 && $new_conns -ge $ok ]]; then
			finding NOTE "every request opened a new connection (no keep-alive reuse)" \
				"The server (or proxy) closes the connection after each response (Connection: close), which costs a handshake per request and leaves TIME-WAIT sockets behind." \
				"Behind nginx: upstream keepalive + proxy_http_version 1.1 + proxy_set_header Connection \"\" (see deploy/nginx). During a graceful shutdown this is expected."
		elif [[ $ok -gt 1 ]]; then
			finding OK "keep-alive works: $ok requests used $new_conns new connection(s)"
		fi
	fi
fi

capture_rc=0
if [[ -n $capture_pid ]]; then
	wait "$capture_pid" 2>/dev/null || capture_rc=$?
fi
# timeout(1) ends a capture that ran its course with 124; anything else
# but 0 is tcpdump failing (no CAP_NET_RAW in a container, a bad
# interface): nothing was seen, which says nothing.
if [[ -n $capture_pid && $capture_rc -ne 0 && $capture_rc -ne 124 ]]; then
	skip "packet capture failed (tcpdump exit $capture_rc): $(head -n 1 "$work/tcpdump.err" 2>/dev/null)"
	capture_pid=""
fi
if [[ -n $capture_pid ]]; then
	cport=$(url_port "$url")
	echo "Packets with FIN or RST on port $cport during ${capture}s:"
	# Lines look like "IP 10.0.0.1.8080 > 10.0.0.2.5555: Flags [F.], ..."; the
	# sender is the server when its address ends in the service port.
	awk -v p="$cport" '
		/Flags \[/ {
			for (i = 1; i <= NF; i++) if ($i == ">") { src = $(i - 1); break }
			n = split(src, a, "."); sport = a[n]
			who = (sport == p) ? "server" : "client"
			match($0, /Flags \[[^]]*\]/); f = substr($0, RSTART + 7, RLENGTH - 8)
			if (f ~ /R/) rst[who]++; else if (f ~ /F/) fin[who]++
		}
		END {
			printf "  FIN from server %d, FIN from client %d, RST from server %d, RST from client %d\n", fin["server"], fin["client"], rst["server"], rst["client"]
			print "CAPTURE", fin["server"] + 0, fin["client"] + 0, rst["server"] + 0, rst["client"] + 0
		}' "$capture_file" >"$work/capture.sum"
	grep -v '^CAPTURE' "$work/capture.sum"
	read -r _ fin_s fin_c rst_s rst_c < <(grep '^CAPTURE' "$work/capture.sum")
	if ((rst_s > 0)); then
		finding WARN "the server side sent $rst_s RST packet(s)" \
			"The server aborted connections instead of closing them: it closed a socket with unread data (e.g. an idle keep-alive connection closed just as a request arrived), its accept queue overflowed, or the process died." \
			"Correlate the times with the proxy's error log; keep every client's idle timeout shorter than the server's."
	fi
	if ((rst_c > 0)); then
		finding NOTE "the client side sent $rst_c RST packet(s)" \
			"Clients aborted connections: a client timeout or cancellation, or a client closing with unread response data." \
			"Compare client timeouts with the server's latency; these show up as 499 in nginx and in the service."
	fi
	if ((fin_s > fin_c && fin_s > 0)); then
		finding NOTE "the server closed more connections ($fin_s) than the clients ($fin_c)" \
			"Server-side closes are idle timeouts, Connection: close responses or shutdowns. A client that reuses such a connection at that instant gets EOF." \
			"Clients (and proxies) should give up idle connections before the server does."
	fi
	if ((fin_s + fin_c + rst_s + rst_c == 0)); then
		finding OK "no connection ended on port $cport during the capture"
	fi
fi

# ---------------------------------------------------------------- proxy
section "2. Proxy: nginx logs and configuration"

if [[ -z $access_log ]]; then
	skip "no --nginx-access given: 499/502/504 not counted"
elif [[ ! -r $access_log ]]; then
	skip "cannot read $access_log"
else
	# The status is the first 3-digit field after the quoted request line,
	# in the combined format and in deploy/nginx's "upstream" format.
	awk '
		{ total++ }
		match($0, /" [0-9][0-9][0-9] /) { s = substr($0, RSTART + 2, 3); st[s]++; if (s ~ /^5/) s5++ }
		/ us="[^"]*,/ { retried++ }
		END { printf "%d %d %d %d %d %d %d\n", total, st["499"], st["502"], st["503"], st["504"], s5, retried }
	' "$access_log" >"$work/access.sum"
	read -r total c499 c502 c503 c504 c5xx retried <"$work/access.sum"
	access_read=1
	pct() { awk -v a="$1" -v t="$total" 'BEGIN { if (t == 0) print "0%"; else printf "%.2f%%", 100 * a / t }'; }
	echo "$access_log: $total requests; 499: $c499, 502: $c502, 503: $c503, 504: $c504, all 5xx: $c5xx, retried upstream: $retried"
	if ((c499 > 0)); then
		finding WARN "$c499 requests ended with 499 ($(pct "$c499")): the client closed the connection before nginx answered" \
			"The caller gave up first: its timeout is shorter than the request took, or users navigated away. The service sees the same requests as aborted (status 499 in its access log, client-abort counter)." \
			"Compare the client's timeout with the request times (rt= in deploy/nginx's log format); make the slow path faster or the client patient. Many 499 at once usually follow a slow dependency."
	fi
	if ((c502 > 0)); then
		finding WARN "$c502 requests ended with 502 ($(pct "$c502")): nginx got no valid response from the service" \
			"The connection to the service was refused (instance down or restarting), reset, or closed before the response header. See the error-log findings for which." \
			"If the error log says \"upstream prematurely closed\" or \"reset by peer\": make nginx's upstream keepalive_timeout shorter than the service's HTTP_IDLE_TIMEOUT (deploy/nginx). If \"Connection refused\": look for restarts and make shutdowns graceful (readiness fails before the listener closes)."
	fi
	if ((c504 > 0)); then
		finding WARN "$c504 requests ended with 504 ($(pct "$c504")): the service did not answer within proxy_read_timeout" \
			"A request took longer than nginx waits. The service's own timeouts (HTTP_WRITE_TIMEOUT, BREAKER_TIMEOUT) should fire first, so a 504 means a request hung past them." \
			"Find the slow requests (urt= in the log), check the dependency's latency and the breaker; keep proxy_read_timeout above the service's write timeout."
	fi
	if ((c503 > 0)); then
		finding NOTE "$c503 requests ended with 503 ($(pct "$c503"))" \
			"Either the service refused them (shutting down, overloaded) or nginx had no live upstream." \
			"Check the error log for \"no live upstreams\" and the service's readiness."
	fi
	if ((retried > 0)); then
		# What the clients got is counted above (a retry that failed too
		# ends 502 or 504); the retries themselves reached no client.
		finding NOTE "$retried requests needed a second upstream attempt (us=\"..., ...\")" \
			"nginx hid a failure by retrying on another connection or server: each is an error-log line. GETs are retried, POSTs are not, so the same cause produces 502 for POSTs (counted above if any did). A rolling restart behind a static upstream list causes a few." \
			"Find the cause in the error log (premature close / reset = keep-alive order; refused = restarts)."
	fi
	if ((total > 0 && c499 + c502 + c503 + c504 == 0)); then
		finding OK "no 499, 502, 503 or 504 among $total requests"
	fi
fi

if [[ -z $error_log ]]; then
	skip "no --nginx-error given: upstream errors not counted"
elif [[ ! -r $error_log ]]; then
	skip "cannot read $error_log"
else
	count() { grep -c -- "$1" "$error_log" || true; }
	# Resets and broken pipes towards the upstream only: "while reading
	# client request line" or "while sending to client" is the client's
	# side (such lines may still carry an upstream: "..." field).
	upstream_side_re() { printf '%s\\) while [^,]*upstream' "$1"; }
	upstream_side() { grep -cE -- "$(upstream_side_re "$1")" "$error_log" || true; }
	premature=$(count "upstream prematurely closed")
	reset=$(upstream_side "reset by peer")
	pipe=$(upstream_side "Broken pipe")
	refused=$(count "(111: Connection refused)")
	timedout=$(count "upstream timed out")
	nolive=$(count "no live upstreams")
	fds=$(count "Too many open files")
	workers=$(count "worker_connections are not enough")
	echo "$error_log: upstream prematurely closed: $premature, reset by peer: $reset, broken pipe: $pipe, connection refused: $refused, upstream timed out: $timedout, no live upstreams: $nolive"
	# Section 4 lines these up with the service's own close reasons: with
	# -p, only the lines of upstreams on that port (one nginx may proxy to
	# several services).
	proxy_died=$((premature + reset + pipe))
	if [[ -n $port ]]; then
		proxy_died=$(grep -E -- "upstream prematurely closed|$(upstream_side_re "(reset by peer|Broken pipe)")" "$error_log" |
			grep -cE -- "upstream: \"[a-z]+://[^\"]*:$port(/|\")" || true)
	fi
	# With the access log read, a failure no client saw (nginx retried it
	# elsewhere: no 502 or 504) is a note; without it, a warning.
	seen=WARN
	((access_read == 1 && c502 + c504 == 0)) && seen=NOTE
	if ((premature + reset + pipe > 0)); then
		finding $seen "$((premature + reset + pipe)) upstream connections died under a request (prematurely closed: $premature, reset by peer: $reset, broken pipe: $pipe)" \
			"nginx sent a request on a connection the service was closing. Usually a reused keep-alive connection that the service closed as idle at that instant: nginx's upstream keepalive_timeout is not shorter than the service's idle timeout. Also: the service crashed or was killed mid-request." \
			"Set upstream { keepalive_timeout } below HTTP_IDLE_TIMEOUT (reference: 60s < 75s, deploy/nginx/nginx.conf); on ingress-nginx, upstream-keepalive-timeout. Check for restarts/OOM kills at the same times."
	fi
	if ((refused > 0)); then
		finding $seen "$refused connects to the service were refused" \
			"Nothing listened on the upstream address: the instance was down, restarting, or had closed its listener during shutdown while still in the load balancer. nginx tries the next server of the upstream for any method (nothing was sent); with none left the client gets 502." \
			"Keep serving during SHUTDOWN_DELAY after readiness fails; check restarts and the endpoint list."
	fi
	if ((timedout > 0)); then
		finding WARN "$timedout upstream timeouts" \
			"The service accepted the request but did not answer within proxy_read_timeout (or connect within proxy_connect_timeout)." \
			"Look for slow requests and dependencies; the service's timeouts should be shorter than nginx's."
	fi
	if ((nolive > 0)); then
		finding WARN "$nolive requests found no live upstream" \
			"Every server of the upstream group was marked failed (max_fails within fail_timeout)." \
			"Fix the underlying errors above; failures of reused connections count against max_fails too."
	fi
	if ((fds + workers > 0)); then
		finding WARN "nginx ran out of connections or file descriptors ($fds + $workers lines)" \
			"New connections were refused or dropped by nginx itself." \
			"Raise worker_connections and worker_rlimit_nofile (and the LimitNOFILE of the service manager)."
	fi
	if ((premature + reset + pipe + refused + timedout + nolive + fds + workers == 0)); then
		finding OK "no upstream connection errors in the error log"
	fi
fi

# nginx's configuration: the keep-alive race is decided by two settings on
# two sides, nginx's upstream keepalive_timeout and the service's idle
# timeout. Checked here before any request has to fail on it.
if [[ -z $nginx_conf ]]; then
	skip "no --nginx-conf given: nginx's upstream timeouts not checked (nginx -T > file; -N file)"
elif [[ ! -r $nginx_conf ]]; then
	skip "cannot read $nginx_conf"
else
	# The service's timeouts: its own metrics if given, else its defaults.
	svc_idle=75 svc_write=30 svc_src="the service's defaults (pass --metrics to read the instance's)"
	conf_err=""
	if [[ -s $work/metrics.1 ]] && ! grep -q '^http_server_timeout_seconds{' "$work/metrics.1"; then
		svc_src="the service's defaults ($metrics_url has no http_server_timeout_seconds: an older build?)"
	elif [[ -n $metrics_url ]]; then
		svc_src="the service's defaults (could not read $metrics_url)"
	fi
	if [[ -s $work/metrics.1 ]] && grep -q '^http_server_timeout_seconds{' "$work/metrics.1"; then
		svc_idle=$(service_timeout "$work/metrics.1" idle)
		svc_write=$(service_timeout "$work/metrics.1" write)
		svc_idle=${svc_idle:-75} svc_write=${svc_write:-30}
		svc_src="$metrics_url"
	fi
	# The configuration as nginx reads it: an nginx -T dump is split into
	# its files and each include is expanded where it stands; stream {}
	# (TCP) is left out; Lua blocks (ingress-nginx) are skipped. Then, for
	# every location that proxy_passes, the settings in force there, with
	# nginx's inheritance (a level that sets any proxy_set_header inherits
	# none). Output, tab-separated:
	#   U name keepalive overridden-by timeout servers locations not-kept
	#     first-not-kept shortest-read-timeout its-location
	#   D address locations first-location shortest-read-timeout its-location
	#   L listen-address backlog (- when not set: nginx's 511)
	#   META includes is-dump
	# Quote-aware: a ';' or '{' inside a quoted value is not syntax.
	awk -v port="$port" '
		function secs(t,   total, n, u) {
			gsub(/[ \t]+/, "", t) # nginx takes "1m 30s" too
			if (t !~ /^([0-9]+(ms|s|m|h|d|w|M|y)?)+$/) return -1
			total = 0
			while (match(t, /^[0-9]+/)) {
				n = substr(t, 1, RLENGTH) + 0; t = substr(t, RLENGTH + 1)
				u = ""
				if (match(t, /^(ms|s|m|h|d|w|M|y)/)) { u = substr(t, 1, RLENGTH); t = substr(t, RLENGTH + 1) }
				if (u == "ms") total += n / 1000
				else if (u == "" || u == "s") total += n
				else if (u == "m") total += n * 60
				else if (u == "h") total += n * 3600
				else if (u == "d") total += n * 86400
				else if (u == "w") total += n * 604800
				else if (u == "M") total += n * 2592000
				else total += n * 31536000
			}
			return total
		}
		# glob2re: an include pattern (fnmatch: * ? [...]) as an anchored regex.
		function glob2re(g,   r, i, c, cls) {
			r = "^"
			for (i = 1; i <= length(g); i++) {
				c = substr(g, i, 1)
				if (c == "*") r = r "[^/]*"
				else if (c == "?") r = r "[^/]"
				else if (c == "[" && match(substr(g, i + 1), /^!?[^]\/]+]/)) {
					# a class: [abc], [!abc] (fnmatch) is [^abc]
					cls = substr(g, i + 1, RLENGTH - 1); sub(/^!/, "^", cls)
					gsub(/\\/, "\\\\\\\\", cls)
					r = r "[" cls "]"; i += RLENGTH
				} else if (index("\\^$.|+(){}[]", c)) r = r "\\" c
				else r = r c
			}
			return r "$"
		}
		# portof: the port of a server or proxy_pass address ("" for unix:).
		function portof(a, dflt) {
			if (a ~ /^unix:/) return ""
			if (a ~ /^\[/) return match(a, /\]:[0-9]+$/) ? substr(a, RSTART + 2) + 0 : dflt
			return match(a, /:[0-9]+$/) ? substr(a, RSTART + 1) + 0 : dflt
		}
		function in_stream(   f) { for (f = cf; f > 0; f = parent[f]) if (name[f] == "stream") return 1; return 0 }
		function word(w) { if (w != "" || quoted) { words[++nw] = w; quoted = 0 } }
		function open_block(   f) {
			# Every "{" opens a frame, even an empty statement (Lua "{{"),
			# so every "}" closes its own.
			f = ++nf; parent[f] = cf; name[f] = nw ? words[1] : ""
			if (name[f] ~ /_by_lua_block$/) {
				if (lua == 0 && name[f] == "balancer_by_lua_block" && up != "" && (up in keep)) lbafter[up] = name[f]
				lua++
			} else if (lua == 0 && name[f] == "upstream") {
				up = ""
				if (!in_stream()) { up = words[2]; if (!(up in ups)) { ups[up] = 1; order[++nups] = up; timeout[up] = 60 } }
			} else if (lua == 0 && name[f] == "map" && nw >= 3) mapvar[f] = words[3]
			else if (lua == 0 && name[f] == "location") locpath[f] = words[nw]
			cf = f
			nw = 0
		}
		function close_block() {
			nw = 0
			if (cf == 0) return
			if (name[cf] ~ /_by_lua_block$/) lua--
			else if (name[cf] == "upstream") up = ""
			cf = parent[cf]
		}
		function directive(   d, t, pat, re, n, f, bl) {
			if (nw == 0 || lua > 0) { nw = 0; return }
			d = words[1]
			if (d == "include") {
				inc++
				if (nparts > 1) {
					# An nginx -T dump: expand the include from the files
					# it holds (absolute paths; relative ones are relative
					# to the main file'"'"'s directory).
					pat = words[2]; nw = 0
					if (pat !~ /^\//) pat = confdir "/" pat
					re = glob2re(pat)
					for (n = 1; n <= nparts; n++) { f = part[n]; if (f ~ re && !(f in feeding)) { feeding[f] = 1; feed(f); delete feeding[f] } }
				}
				nw = 0
				return
			}
			if (in_stream()) { nw = 0; return }
			if (name[cf] == "upstream") {
				if (up != "") {
					if (d == "keepalive") { keep[up] = words[2]; delete lbafter[up] }
					else if (d == "keepalive_timeout") timeout[up] = secs(words[2])
					else if (d == "server") servers[up] = servers[up] (servers[up] == "" ? "" : " ") words[2]
					else if (d ~ /^(least_conn|ip_hash|hash|random|least_time|sticky|ntlm|balancer_by_lua_file)$/ && (up in keep)) lbafter[up] = d
				}
			} else if (name[cf] == "map") {
				if (words[1] == "" && nw >= 2 && (cf in mapvar)) { mapset[mapvar[cf]] = 1; mapempty[mapvar[cf]] = words[2] }
			} else if (d == "listen" && name[cf] == "server") {
				# nginx'"'"'s own accept queue: backlog=N, else 511.
				bl = "-"
				for (n = 3; n <= nw; n++) if (words[n] ~ /^backlog=/) bl = substr(words[n], 9)
				if (!((words[2], bl) in listens)) { listens[words[2], bl] = 1; lorder[++nl] = words[2] "\t" bl }
			} else if (d == "proxy_http_version") h11[cf] = words[2]
			else if (d == "proxy_set_header") {
				hdr[cf] = 1
				if (tolower(words[2]) == "connection") connval[cf] = words[3]
			} else if (d == "proxy_read_timeout") { t = secs(words[2]); if (t >= 0) prt[cf] = t }
			else if (d == "proxy_pass") pass[cf] = words[2]
			nw = 0
		}
		function scan(line,   i, c, rest) {
			line = line "\n"
			for (i = 1; i <= length(line); i++) {
				c = substr(line, i, 1)
				if (lbclose != "") {
					# In a Lua long string or comment: skip to its end.
					rest = index(substr(line, i), lbclose)
					if (rest == 0) return
					i += rest + length(lbclose) - 2; lbclose = ""
					continue
				}
				if (q != "") {
					if (c == "\\") { cur = cur substr(line, i + 1, 1); i++ }
					else if (c == q) q = ""
					else cur = cur c
					continue
				}
				if (lua > 0) {
					# Lua: [[...]], [==[...]==], --[[...]] and "--" comments;
					# "#" is an operator there.
					rest = substr(line, i)
					if (match(rest, /^(--)?\[=*\[/)) {
						lbclose = substr(rest, 1, RLENGTH); sub(/^--/, "", lbclose); gsub(/\[/, "]", lbclose)
						word(cur); cur = ""; i += RLENGTH - 1
						continue
					}
					if (c == "-" && substr(line, i + 1, 1) == "-") { word(cur); cur = ""; return }
				} else if (c == "#" && cur == "") { word(cur); cur = ""; return }
				if (c == "\"" || c == "\047") { q = c; quoted = 1; continue }
				if (c == " " || c == "\t" || c == "\n" || c == "\r") { word(cur); cur = ""; continue }
				if (c == ";") { word(cur); cur = ""; directive(); continue }
				if (c == "{") { word(cur); cur = ""; open_block(); continue }
				if (c == "}") { word(cur); cur = ""; close_block(); continue }
				cur = cur c
			}
		}
		function feed(f,   n) { for (n = 1; n <= cnt[f]; n++) scan(text[f, n]) }
		function eff_h11(f) { for (; f > 0; f = parent[f]) if (f in h11) return h11[f]; return "1.0" }
		function eff_prt(f) { for (; f > 0; f = parent[f]) if (f in prt) return prt[f]; return 60 }
		# kept: the location sends HTTP/1.1 without "Connection: close".
		function kept(f,   v) {
			if (eff_h11(f) != "1.1") return 0
			for (; f > 0; f = parent[f]) {
				if (!(f in hdr)) continue
				if (!(f in connval)) return 0 # this level'"'"'s headers replace the inherited ones: nginx sends "close"
				v = connval[f]
				return v == "" || ((v in mapset) && mapempty[v] == "")
			}
			return 0 # nginx'"'"'s default: Connection: close
		}
		function where(f) { for (; f > 0; f = parent[f]) if (f in locpath) return "location " locpath[f]; return "server" }
		{
			# An nginx -T dump: "# configuration file PATH:" starts each file.
			# What comes before the first (nginx -T 2>&1: its "syntax is
			# ok" lines) is not configuration.
			if ($0 ~ /^# configuration file .*:$/) {
				if (!dump) nparts = 0
				dump = 1; f = substr($0, 22, length($0) - 22); part[++nparts] = f
				next
			}
			if (!dump && nparts == 0) { f = FILENAME; part[++nparts] = f }
			if (nparts > 0) text[f, ++cnt[f]] = $0
		}
		END {
			confdir = part[1]; sub(/\/[^\/]*$/, "", confdir)
			feed(part[1])
			for (f = 1; f <= nf; f++) {
				if (!(f in pass)) continue
				target = pass[f]; scheme = "http"
				if (match(target, /^[a-z]+:\/\//)) { scheme = substr(target, 1, RLENGTH - 3); target = substr(target, RLENGTH + 1) }
				if (target ~ /^unix:/) { sub(/:.*$/, "", target); target = "unix:" substr(pass[f], index(pass[f], "unix:") + 5) }
				else sub(/\/.*$/, "", target)
				if (target ~ /\$/) continue # a variable: not known before a request
				p = eff_prt(f)
				if (target in ups) {
					u = target; nloc[u]++
					if (!kept(f)) { nbad[u]++; if (!(u in badloc)) badloc[u] = where(f) }
					if (!(u in minprt) || p < minprt[u]) { minprt[u] = p; prtloc[u] = where(f) }
				} else {
					if (!(target in dloc)) { dorder[++nd] = target; dport[target] = portof(target, scheme == "https" ? 443 : 80); dfirst[target] = where(f) }
					dloc[target]++
					if (!(target in dprt) || p < dprt[target]) { dprt[target] = p; dprtloc[target] = where(f) }
				}
			}
			for (i = 1; i <= nups; i++) {
				u = order[i]
				if (port != "") {
					n = split(servers[u], s, " "); hit = 0
					for (j = 1; j <= n; j++) if (portof(s[j], 80) == port + 0) hit = 1
					if (!hit) continue
				}
				printf "U\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", u, (u in keep) ? keep[u] : "none", (u in lbafter) ? lbafter[u] : "-", \
					timeout[u], servers[u] == "" ? "-" : servers[u], nloc[u], nbad[u], (u in badloc) ? badloc[u] : "-", \
					(u in minprt) ? minprt[u] : "-", (u in prtloc) ? prtloc[u] : "-"
			}
			for (i = 1; i <= nd; i++) {
				t = dorder[i]
				if (port != "" && dport[t] != port + 0) continue
				printf "D\t%s\t%d\t%s\t%s\t%s\n", t, dloc[t], dfirst[t], dprt[t], dprtloc[t]
			}
			for (i = 1; i <= nl; i++) printf "L\t%s\n", lorder[i]
			printf "META\t%d\t%d\n", inc, dump
		}' "$nginx_conf" >"$work/nginx-conf" 2>"$work/nginx-conf.err" || {
		conf_err=$(head -n 1 "$work/nginx-conf.err")
		printf 'META\t0\t0\n' >"$work/nginx-conf"
	}
	IFS=$'\t' read -r _ includes dumped < <(grep '^META' "$work/nginx-conf")
	nups=$(grep -c '^U' "$work/nginx-conf" || true)
	ndirect=$(grep -c '^D' "$work/nginx-conf" || true)
	echo "-- $nginx_conf: $nups upstream(s)${port:+ with a server on port $port}; the service's idle timeout ${svc_idle}s, write timeout ${svc_write}s, from $svc_src"
	# lt A B: A < B for decimal seconds.
	lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }
	# read_timeout WHAT SECONDS WHERE: nginx must wait longer than the
	# service takes to answer.
	read_timeout() {
		lt "$svc_write" "$2" && return 0
		finding WARN "nginx waits ${2}s for a response from $1 (proxy_read_timeout, $3), not more than the service's write timeout ${svc_write}s" \
			"nginx can give up on a request the service is still serving: the caller gets 504 and the service logs 499 (client gone). The service's own timeouts should fire first, so the caller gets its answer (a fallback, a 503) instead." \
			"Raise proxy_read_timeout above ${svc_write}s there, or lower HTTP_WRITE_TIMEOUT and the dependency timeouts below it."
	}
	# Every warning and note is shown; of the upstreams in order, ten.
	oks=0
	ok() {
		oks=$((oks + 1))
		((oks <= 10)) && finding OK "$1"
		return 0
	}
	while IFS=$'\t' read -r kind name keepalive lb kt servers nloc nbad badloc minprt prtloc; do
		if [[ $kind == D ]]; then
			# name: the address; then locations, the first, the shortest
			# read timeout and its location
			finding NOTE "nginx proxies straight to $name ($lb; $keepalive location(s) in all), with no upstream block: no keep-alive" \
				"Without an upstream block nginx cannot keep connections to the service: a TCP handshake per request, and TIME_WAIT sockets piling up on nginx's side (port exhaustion under load). No keep-alive race either." \
				"Declare upstream { server $name; keepalive 64; keepalive_timeout 60s; } and proxy_pass to it (deploy/nginx/nginx.conf)."
			read_timeout "$name" "$kt" "$servers"
			continue
		fi
		if [[ $keepalive == none ]]; then
			finding NOTE "upstream $name ($servers) keeps no connections alive" \
				"Without a keepalive directive nginx opens a new connection to the service for every request: no keep-alive race, but a TCP handshake per request and TIME_WAIT sockets piling up on nginx's side (port exhaustion under load)." \
				"Add keepalive N (e.g. 64) to the upstream, with keepalive_timeout below the service's idle timeout (deploy/nginx/nginx.conf)."
		elif [[ $lb != - ]]; then
			finding WARN "upstream $name ($servers): $lb after keepalive switches keep-alive off" \
				"A balancing method replaces what the directives before it set up: after keepalive, it drops the connection cache, and every request opens a new connection (nginx -t says 'load balancing method redefined')." \
				"Put $lb before keepalive in upstream $name."
		elif [[ $kt == -1 ]]; then
			finding NOTE "upstream $name: keepalive_timeout not understood, not checked" \
				"The value is not an nginx time (e.g. 60s, 1m30s, 500ms)." \
				"Check it with nginx -t."
		elif [[ $svc_idle == 0 ]]; then
			order_ok=$((order_ok + 1))
			ok "upstream $name ($servers): the service has no idle timeout, nginx's keepalive_timeout ${kt}s ends every idle connection"
		elif ! lt "$kt" "$svc_idle"; then
			order_bad=$((order_bad + 1))
			finding WARN "upstream $name ($servers) keeps idle connections for ${kt}s, not less than the service's idle timeout ${svc_idle}s" \
				"The keep-alive race: the service closes a kept-alive connection as idle at the moment nginx reuses it for a request. nginx logs 'upstream prematurely closed' or 'reset by peer'; GETs are retried, POSTs answered 502. The shorter idle timeout must be nginx's. (Before nginx 1.15.3 an upstream has no keepalive_timeout: it keeps idle connections until the service closes them.)" \
				"Set keepalive_timeout in upstream $name below ${svc_idle}s (reference: 60s against 75s, deploy/nginx/nginx.conf), or raise HTTP_IDLE_TIMEOUT above ${kt}s."
		else
			order_ok=$((order_ok + 1))
			ok "upstream $name ($servers): keepalive_timeout ${kt}s is below the service's idle timeout ${svc_idle}s"
		fi
		if [[ $keepalive != none && $lb == - ]] && ((nbad > 0)); then
			finding WARN "upstream $name: $nbad of $nloc locations that proxy to it do not keep connections alive ($badloc first)" \
				"nginx talks HTTP/1.0 to upstreams and sends 'Connection: close' unless the location sets proxy_http_version 1.1 and clears the Connection header. A level (http, server, location) that sets any proxy_set_header inherits none from above, so its Connection header falls back to close: every request then costs a new connection, whatever the keepalive directive says." \
				"In those locations, or the level they inherit from: proxy_http_version 1.1; proxy_set_header Connection \"\"; (deploy/nginx/nginx.conf)."
		fi
		if [[ $minprt != - ]]; then
			read_timeout "upstream $name" "$minprt" "$prtloc"
		fi
	done < <(grep -E '^(U|D)' "$work/nginx-conf")
	if ((oks > 10)); then
		finding OK "$((oks - 10)) more upstreams checked, all as above"
	fi
	# nginx's own listeners: without backlog= the accept queue is 511,
	# whatever net.core.somaxconn says.
	short=$(awk -F'\t' '$1 == "L" && ($3 == "-" || $3 + 0 < 511) { printf "%s%s%s", sep, $2, ($3 == "-" ? "" : " (backlog=" $3 ")"); sep = ", " }' "$work/nginx-conf")
	if [[ -n $short ]]; then
		finding NOTE "nginx listens on $short with an accept queue of at most 511 (no backlog= sets its own)" \
			"nginx asks the kernel for a queue of 511 connections unless listen says backlog=N, so raising net.core.somaxconn does not lengthen it. Connections that arrive faster than nginx accepts them overflow it: their SYNs are dropped, clients see connect timeouts (a retry after 1s, 3s ...), and ListenOverflows rises on nginx's host." \
			"Add backlog=65535 to those listen directives (the kernel caps it at somaxconn; deploy/nginx/nginx.conf), raise somaxconn on nginx's host (sysctl-tune.sh) and reload nginx. ss -ltn on that host shows each listener's limit (Send-Q)."
	fi
	if [[ -n ${conf_err:-} ]]; then
		skip "could not parse $nginx_conf: $conf_err"
	elif ((nups + ndirect == 0)); then
		if ((includes > 0 && dumped == 0)); then
			skip "nginx proxies nowhere${port:+ on port $port} in $nginx_conf, which has $includes include(s): pass the output of nginx -T"
		else
			skip "nginx proxies nowhere${port:+ on port $port} in $nginx_conf"
		fi
	elif ((includes > 0 && dumped == 0)); then
		finding NOTE "$nginx_conf has $includes include(s) this check did not follow: what they set is not in the findings above" \
			"Included files (snippets, conf.d) can hold keepalive, keepalive_timeout, proxy_http_version, proxy_set_header or proxy_read_timeout, and change the answer." \
			"Pass the output of nginx -T: every file, each include where it stands."
	fi
fi

# ---------------------------------------------------------------- kernel
section "3. Kernel: queues, sockets, settings, NIC"

echo "-- listen queue and aborts (TcpExt counters, source: $counter_src)"
if [[ $counter_src == none ]]; then
	skip "neither nstat (iproute2) nor /proc/net/netstat is available"
else
	elapsed=$(($(date +%s) - counter_t0))
	if ((interval > elapsed)); then
		sleep $((interval - elapsed))
	fi
	window=$(($(date +%s) - counter_t0))
	if ((interval > 0)); then
		read_counters "$work/counters.2" >/dev/null
	else
		cp "$work/counters.1" "$work/counters.2"
	fi
	printf '  %-20s %14s %14s\n' counter since-boot "in-last-${window}s"
	for c in "${counters[@]}"; do
		a=$(counter "$c" "$work/counters.1")
		b=$(counter "$c" "$work/counters.2")
		[[ -z $b ]] && continue
		printf '  %-20s %14s %14s\n' "$c" "$b" "$((b - ${a:-$b}))"
		declare "k_$c=$b"
		declare "d_$c=$((b - ${a:-$b}))"
	done
	lo=${k_ListenOverflows:-0}
	ld=${k_ListenDrops:-0}
	dlo=${d_ListenOverflows:-0}
	if ((dlo > 0)); then
		finding WARN "the listen queue is overflowing now (+$dlo in ${window}s)" \
			"A listening socket's accept queue is full: the kernel drops the final ACK of new handshakes. Clients see connect timeouts, 1s+ handshakes and resets; proxies log 502/504." \
			"Raise net.core.somaxconn and tcp_max_syn_backlog (sysctl-tune.sh), then restart the listeners: a listen queue's limit is fixed when it is opened (Go takes somaxconn once, at start; nginx takes listen ... backlog=N, 511 by default, capped by somaxconn). Add replicas, and check that the process is not starved (CPU throttling, GC pauses). ss -ltn shows each listener's queue (Recv-Q) and limit (Send-Q)."
	elif ((lo > 0 || ld > 0)); then
		finding NOTE "listen queue overflows happened since boot (ListenOverflows $lo, ListenDrops $ld), none in the last ${window}s" \
			"An accept queue was full at some point in the past (a burst, a stall, a restart)." \
			"Watch the rate during the incident window: nstat -z TcpExtListenOverflows, or the service's kernel TCP metrics."
	else
		finding OK "no listen queue overflows since boot"
	fi
	if ((${d_TCPAbortOnClose:-0} > 0)); then
		finding NOTE "connections were closed with unread data (+${d_TCPAbortOnClose} TCPAbortOnClose in ${window}s)" \
			"A program closed a socket that still had unread bytes in its receive queue, so the kernel sent RST instead of FIN. A server that answers or gives up without reading the whole request does this, and so does one that closes an idle keep-alive connection just as a request arrives." \
			"If the peer is a proxy, order the idle timeouts (client side shorter than server side); a server should read (or drain) the request before it closes."
	fi
	if ((${d_TCPAbortOnData:-0} > 0)); then
		finding NOTE "data arrived on connections already closed (+${d_TCPAbortOnData} TCPAbortOnData in ${window}s)" \
			"A peer kept sending on a connection this host had closed, and the kernel answered with RST. Two usual causes: a client on this host gave up on a slow answer and closed its connection, so the late answer is reset (a timed-out call to a dependency: the service's own outbound client does this at DOWNSTREAM_ATTEMPT_TIMEOUT and BREAKER_TIMEOUT); or a peer sent a request on a keep-alive connection a server here had just closed as idle." \
			"If the service's metrics (section 4) show outbound timeouts or fallbacks, look at the slow dependency. Otherwise order the idle timeouts: the client's (or proxy's) keep-alive timeout must be shorter than the server's."
	fi
	if ((${d_TCPAbortOnMemory:-0} > 0)); then
		finding WARN "the kernel aborted connections for lack of socket memory (+${d_TCPAbortOnMemory})" \
			"TCP memory pressure (net.ipv4.tcp_mem) forced resets." \
			"Check /proc/net/sockstat (mem) against net.ipv4.tcp_mem; look for sockets with large unread queues."
	fi
fi

echo "-- socket states${port:+ (port $port)}"
states_file="$work/states"
if have ss; then
	if [[ -n $port ]]; then
		ss -tanH "( sport = :$port or dport = :$port )" 2>/dev/null | awk '{ n = split($4, a, ":"); print $1, a[n] }' >"$states_file" || true
	else
		ss -tanH 2>/dev/null | awk '{ n = split($4, a, ":"); print $1, a[n] }' >"$states_file" || true
	fi
	state_src="ss -tan"
elif [[ -r /proc/net/tcp ]]; then
	# st column codes from include/net/tcp_states.h.
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$port" "$awk_hex"'
		BEGIN { split("ESTAB SYN-SENT SYN-RECV FIN-WAIT-1 FIN-WAIT-2 TIME-WAIT UNCONN CLOSE-WAIT LAST-ACK LISTEN CLOSING", n, " ") }
		$1 ~ /:$/ {
			nl = split($2, l, ":"); nr = split($3, r, ":")
			if (p != "" && hex(l[nl]) != p && hex(r[nr]) != p) next
			print n[hex($4)], hex(l[nl])
		}' >"$states_file" 2>/dev/null || : >"$states_file"
	state_src="/proc/net/tcp (ss not installed)"
else
	state_src=""
fi
if [[ -z $state_src ]]; then
	skip "neither ss (iproute2) nor /proc/net/tcp is available"
else
	# Lines are "STATE LOCAL-PORT".
	awk '{ print $1 }' "$states_file" | sort | uniq -c | sort -rn | awk -v src="$state_src" 'BEGIN { printf "  from %s:", src } { printf " %s %d,", $2, $1 } END { print "" }'
	in_state() { awk -v s="$1" '$1 == s { n++ } END { print n + 0 }' "$states_file"; }
	cw=$(in_state CLOSE-WAIT)
	tw=$(in_state TIME-WAIT)
	sr=$(in_state SYN-RECV)
	echo "  CLOSE-WAIT: $cw, TIME-WAIT: $tw, SYN-RECV: $sr"
	if ((cw > 0)); then
		level=NOTE
		((cw >= 50)) && level=WARN
		who=""
		if have ss; then
			# With a state filter ss drops the State column: $3 is the local
			# address, the last field the owner (root only).
			who=$(ss -tanpH state close-wait 2>/dev/null | awk '{ o = ($NF ~ /^users:/) ? " " $NF : ""; print $3 o }' | sort | uniq -c | sort -rn | awk 'NR <= 3 { printf "%s%s x%d", sep, $2 ($3 != "" ? " " $3 : ""), $1; sep = "; " }' || true)
		fi
		finding "$level" "$cw sockets in CLOSE-WAIT${who:+ (top: $who)}" \
			"The peer closed these connections but the local program never closed its end. They do not time out: a steadily growing number is a leak in that program (a Go client that does not close resp.Body, a pool that never evicts), and it ends in 'too many open files'." \
			"Find the owner (ss -tanp state close-wait) and fix where it forgets to close; a few that come and go are normal."
	else
		finding OK "no sockets in CLOSE-WAIT"
	fi
	range=$(tr -s ' \t' '  ' </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo "32768 60999")
	read -r plo phi <<<"$range"
	ports=$((phi - plo + 1))
	# Only this host's client side holds ephemeral ports: a server's
	# TIME-WAIT sockets sit on its listening port.
	tw_eph=$(awk -v lo="$plo" -v hi="$phi" '$1 == "TIME-WAIT" && $2 >= lo && $2 <= hi { n++ } END { print n + 0 }' "$states_file")
	if ((tw_eph > ports / 2)); then
		finding WARN "$tw_eph client sockets in TIME-WAIT, over half of the $ports ephemeral ports ($range)" \
			"Every connection closed by this side waits 60s in TIME-WAIT holding its port. Clients that open a connection per request run out of ports towards one destination: connect fails (EADDRNOTAVAIL), seen as errors or timeouts." \
			"Reuse connections (keep-alive; nginx upstream keepalive), enable net.ipv4.tcp_tw_reuse=1 and widen ip_local_port_range (sysctl-tune.sh)."
	elif ((tw > 0)); then
		finding NOTE "$tw sockets in TIME-WAIT (of $ports ephemeral ports)" \
			"Normal for connections this host closed in the last minute; harmless while well below the port range." \
			"Nothing, unless it grows towards the port range; then reuse connections."
	fi
	if ((sr > 256)); then
		finding WARN "$sr half-open connections (SYN-RECV)" \
			"Handshakes waiting for the client's final ACK: a SYN flood, or replies lost on the way back." \
			"Keep tcp_syncookies=1 and a large tcp_max_syn_backlog; check the network path."
	fi
	if have ss; then
		# Listeners: Recv-Q = connections waiting for accept(), Send-Q = backlog.
		ss -ltnH 2>/dev/null | awk -v p="$port" '{ n = split($4, a, ":"); if (p != "" && a[n] != p) next; printf "  listener %-24s queued %s of %s\n", $4, $2, $3; if ($3 > 0 && $2 >= $3) full = full " " $4 } END { if (full != "") print "FULL" full }' >"$work/listen" || true
		grep -v '^FULL' "$work/listen" | head -n 20 || true
		if grep -q '^FULL' "$work/listen"; then
			finding WARN "accept queue full right now on:$(grep '^FULL' "$work/listen" | cut -c5-)" \
				"The process is not calling accept() fast enough for these listeners (stalled, overloaded, or the backlog is tiny)." \
				"Check the process's CPU and the backlog (somaxconn); see ListenOverflows above."
		fi
	fi
fi

echo "-- sysctls against the recommended values"
if [[ ! -r $script_dir/sysctl-tune.sh ]]; then
	skip "scripts/sysctl-tune.sh not found next to this script"
else
	set +e
	bash "$script_dir/sysctl-tune.sh" --check >"$work/sysctl.out" 2>&1
	src=$?
	set -e
	# The table only; the explanations are in sysctl-tune.sh's own output.
	awk '/^KEY / { on = 1 } on && /^$/ { exit } on { print "  " $0 }' "$work/sysctl.out"
	case $src in
	0) finding OK "all kernel settings are as recommended or better" ;;
	3) finding TUNE "$(grep -oE '^[0-9]+ of [0-9]+ settings differ' "$work/sysctl.out" || echo 'some settings differ') from the recommended values" \
		"Small accept/SYN queues drop connections under bursts; without tw_reuse and a wide port range busy clients run out of ports; long keep-alive timers keep dead peers around for hours." \
		"Review 'bash scripts/sysctl-tune.sh' (it explains each one), then 'sudo bash scripts/sysctl-tune.sh --apply'; in Kubernetes the sysctl init container of deploy/k8s sets the per-namespace ones." ;;
	4) skip "kernel settings: none could be read here ($(grep -m1 '^none of' "$work/sysctl.out"))" ;;
	*) skip "sysctl-tune.sh failed (exit $src): $(head -n 1 "$work/sysctl.out")" ;;
	esac
fi

echo "-- NIC, softnet and conntrack drops"
if [[ -r /proc/net/dev ]]; then
	awk 'NR > 2 { sub(/:/, " ", $0); if ($4 + $5 + $12 + $13 > 0) printf "  %-12s rx errors %s dropped %s, tx errors %s dropped %s\n", $1, $4, $5, $12, $13 }' /proc/net/dev >"$work/nic" || true
	if [[ -s $work/nic ]]; then
		cat "$work/nic"
		finding NOTE "interfaces with errors or drops since boot (listed above)" \
			"Packets lost at the NIC or driver level; TCP retransmits them (latency) and, if losses persist, connections time out." \
			"Watch whether the counters rise (ip -s link); check the driver, ring sizes (ethtool -g) and the link."
	else
		finding OK "no interface errors or drops in /proc/net/dev"
	fi
else
	skip "/proc/net/dev not readable"
fi
if [[ -r /proc/net/softnet_stat ]]; then
	sdrop=$(awk "$awk_hex"'{ s += hex($2) } END { print s + 0 }' /proc/net/softnet_stat 2>/dev/null || echo 0)
	if ((sdrop > 0)); then
		finding WARN "$sdrop packets dropped by softnet (backlog full) since boot" \
			"The per-CPU queue between the NIC and TCP (net.core.netdev_max_backlog) overflowed; the packets never reached TCP." \
			"Raise net.core.netdev_max_backlog (host-wide; sysctl-tune.sh) and spread interrupts (RPS/irqbalance)."
	fi
fi
if [[ -r /proc/sys/net/netfilter/nf_conntrack_count && -r /proc/sys/net/netfilter/nf_conntrack_max ]]; then
	ccount=$(cat /proc/sys/net/netfilter/nf_conntrack_count)
	cmax=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
	echo "  conntrack: $ccount of $cmax entries"
	if ((cmax > 0 && ccount * 100 >= cmax * 80)); then
		finding WARN "the conntrack table is ${ccount}/${cmax} full" \
			"When it is full the kernel drops new connections ('nf_conntrack: table full, dropping packet' in dmesg): clients see timeouts." \
			"Raise net.netfilter.nf_conntrack_max (host-wide) or reduce short-lived connections (keep-alive)."
	fi
fi
if ! have dmesg; then
	skip "dmesg is not installed (util-linux): kernel messages not checked"
elif ! dmesg >"$work/dmesg" 2>/dev/null; then
	skip "dmesg is not readable here (kernel.dmesg_restrict=1 or a container): run as root on the host"
else
	grep -iE 'link is down|link down|tx timeout|transmit queue .* timed out|reset adapter|rx (fifo )?overrun|dropping packet|nf_conntrack: table full|possible syn flooding|out of memory: kill|oom-kill|too many orphaned sockets|tcp: out of memory' "$work/dmesg" >"$work/dmesg.hits" || true
	hits=$(wc -l <"$work/dmesg.hits")
	if ((hits > 0)); then
		echo "  last matching kernel messages:"
		tail -n 10 "$work/dmesg.hits" | sed 's/^/    /'
		finding WARN "$hits kernel messages about NIC errors, dropped packets, SYN floods or OOM kills" \
			"The kernel itself dropped packets or killed processes: link flaps and TX timeouts lose packets, 'SYN flooding' means a listen queue overflowed, 'table full' means conntrack dropped connections, an OOM kill ends every connection of that process." \
			"Match the times with the errors; fix the NIC/driver, the queue sizes (sysctl-tune.sh), or the memory limit."
	else
		finding OK "no NIC, drop, SYN-flood or OOM messages in dmesg"
	fi
fi

# ---------------------------------------------------------------- service
section "4. Service: its own metrics"

# msum FILE NAME [LABEL=VALUE ...]: the sum of NAME's series whose labels
# include every LABEL="VALUE" given (Prometheus text format).
msum() {
	local file=$1 name=$2
	shift 2
	awk -v name="$name" -v want="$*" '
		/^#/ || NF < 2 { next }
		{
			series = $1; n = name
			if (series != n && substr(series, 1, length(n) + 1) != n "{") next
			nw = split(want, w, " ")
			for (i = 1; i <= nw; i++) {
				eq = index(w[i], "=")
				pat = substr(w[i], 1, eq - 1) "=\"" substr(w[i], eq + 1) "\""
				if (index(series, "{" pat) == 0 && index(series, "," pat) == 0) next
			}
			s += $2
		}
		END { printf "%.0f\n", s + 0 }' "$file"
}

if [[ -z $metrics_url ]]; then
	skip "no --metrics given: the service's own view not read (its admin port serves /metrics)"
elif ! have curl; then
	skip "curl is not installed (apt-get install curl): the service's metrics not read"
else
	elapsed=$(($(date +%s) - counter_t0))
	if ((interval > elapsed)); then
		sleep $((interval - elapsed))
	fi
	mwindow=$(($(date +%s) - counter_t0))
	if ((interval > 0)); then
		read_metrics "$work/metrics.2"
	else
		cp "$work/metrics.1" "$work/metrics.2"
		[[ -e $work/metrics.1.err ]] && cp "$work/metrics.1.err" "$work/metrics.2.err"
	fi
	if [[ ! -s $work/metrics.2 ]]; then
		finding WARN "could not read the service's metrics at $metrics_url: $(head -n 1 "$work/metrics.2.err" 2>/dev/null | tr -d '\n')" \
			"The admin port did not answer: the service may be down or restarting (then clients see refused connections, and a proxy 502s), or it listens elsewhere (ADMIN_ADDR)." \
			"Check that the process runs and its ADMIN_ADDR; curl the URL."
	elif ! grep -q '^http_server_connections_closed_total' "$work/metrics.2"; then
		skip "$metrics_url has no http_server_connections_closed_total: not this service's admin port?"
	else
		[[ -s $work/metrics.1 ]] || cp "$work/metrics.2" "$work/metrics.1"
		# mval NAME [LABEL=VALUE ...]: "total delta" (delta over the run;
		# the total again when there was one reading).
		mval() {
			local a b
			a=$(msum "$work/metrics.1" "$@")
			b=$(msum "$work/metrics.2" "$@")
			if ((interval > 0)); then
				echo "$b $((b - a))"
			else
				echo "$b $b"
			fi
		}
		# rising NAME LABEL VALUE...: "VALUE: delta, ..." for the values
		# of LABEL whose series of NAME rose (over the run, or since start).
		rising() {
			local name=$1 label=$2 v d out=""
			shift 2
			for v in "$@"; do
				read -r _ d < <(mval "$name" "$label=$v")
				((d > 0)) && out+="${out:+, }$v: $d"
			done
			echo "$out"
		}
		if ((interval > 0)); then
			span="in the last ${mwindow}s"
		else
			span="since the service started"
		fi
		echo "-- connections (now: $(msum "$work/metrics.2" http_server_connections state=active) active, $(msum "$work/metrics.2" http_server_connections state=idle) idle, $(msum "$work/metrics.2" http_server_connections state=new) new)"
		if ((interval > 0)); then
			printf '  %-34s %12s %14s\n' "closed by (state)" since-start "in-last-${mwindow}s"
		else
			printf '  %-34s %12s\n' "closed by (state)" since-start
		fi
		for r in peer_closed peer_reset idle_timeout read_timeout write_timeout server shutdown_timeout unknown; do
			for st in new active idle; do
				read -r tot d < <(mval http_server_connections_closed_total reason=$r state=$st)
				if ((tot > 0 && interval > 0)); then
					printf '  %-34s %12s %14s\n' "$r ($st)" "$tot" "$d"
				elif ((tot > 0)); then
					printf '  %-34s %12s\n' "$r ($st)" "$tot"
				fi
			done
		done
		read -r _ reset < <(mval http_server_connections_closed_total reason=peer_reset state=active)
		read -r _ reset_quiet < <(mval http_server_connections_closed_total reason=peer_reset)
		reset_quiet=$((reset_quiet - reset)) # on new and idle connections: no request lost
		read -r _ gone < <(mval http_server_connections_closed_total reason=peer_closed state=active)
		read -r _ aborts < <(mval http_server_client_aborts_total)
		read -r idle_total idle < <(mval http_server_connections_closed_total reason=idle_timeout)
		read -r _ rtimeout < <(mval http_server_connections_closed_total reason=read_timeout)
		read -r _ wtimeout < <(mval http_server_connections_closed_total reason=write_timeout)
		read -r _ scut < <(mval http_server_connections_closed_total reason=shutdown_timeout)
		if ((reset > 0)); then
			finding WARN "$reset connections were reset by the peer (RST) in the middle of a request $span" \
				"A client or a proxy aborted connections instead of closing them: a proxy that gave up on a slow upstream (proxy_read_timeout), a client that timed out, or a NAT/conntrack entry that expired. The other side logs 'connection reset by peer'." \
				"Line the resets up with the proxy's 499/504 and error log (section 2), and with request latency: a peer timeout shorter than the slowest response resets the connection."
		fi
		if ((reset_quiet > 0)); then
			finding NOTE "$reset_quiet connections were reset by the peer (RST) between requests or before the first $span" \
				"No request was lost: TCP health checks, and clients that abort their connections (SO_LINGER 0) rather than close them, end connections that way. The peer's own log may still show its timeouts." \
				"Nothing to do unless the peer reports errors; the 'connection closed' lines (reason peer_reset) give the addresses."
		fi
		if ((gone > 0 || aborts > 0)); then
			finding WARN "clients left in the middle of a request: $gone connections, $aborts requests logged as 499 $span" \
				"The caller (or the proxy in front) stopped waiting before the response was ready: its timeout is shorter than the request took. The service logs those requests once, with status 499, counts them in http_server_client_aborts_total{route}, and names them (request_id, route) in its 'connection closed' log lines." \
				"Compare the callers' timeouts with the p99 of http_server_request_duration_seconds for those routes; find slow dependencies in the traces."
		fi
		if ((rtimeout > 0)); then
			finding WARN "$rtimeout connections were cut by the read-header/read timeout $span" \
				"Clients opened a connection and did not send a whole request in time (HTTP_READ_HEADER_TIMEOUT, HTTP_READ_TIMEOUT): slow networks, stalled uploads or slowloris-style clients. They see EOF, or 408 for a body that stalled." \
				"If legitimate clients are slow, raise the timeouts; otherwise this is the protection working."
		fi
		if ((wtimeout > 0)); then
			finding WARN "$wtimeout responses were cut by the write timeout $span" \
				"A response took longer than HTTP_WRITE_TIMEOUT to produce or send: the client gets a truncated body or EOF with no status, while the access line may say 200." \
				"The service's 'connection closed' log lines with reason write_timeout name the request_id and route. Raise HTTP_WRITE_TIMEOUT above the slowest legitimate response, or make the handler's own deadline shorter so it answers with an error in time."
		fi
		if ((scut > 0)); then
			finding WARN "$scut requests in flight were cut when the shutdown's drain ran out of time (SHUTDOWN_TIMEOUT) $span" \
				"At a rollout or scale-down the service waited SHUTDOWN_TIMEOUT for its requests to finish, then closed their connections: their clients got EOF or a reset stream. The service logs them at WARN with error server_closed, and their 'connection closed' lines (reason shutdown_timeout) name the request_id and route." \
				"Raise SHUTDOWN_TIMEOUT above the slowest legitimate request (and terminationGracePeriodSeconds above preStop + SHUTDOWN_DELAY + SHUTDOWN_TIMEOUT), or shorten the handlers' own deadlines so they answer in time."
		fi
		idle_s=$(service_timeout "$work/metrics.2" idle)
		# nginx's error log is read whole (since its rotation), the metrics
		# over the interval: the two are lined up on the service's totals
		# since it started, not on the interval's.
		start=$(awk '$1 == "process_start_time_seconds" { printf "%d", $2 }' "$work/metrics.2")
		started=""
		[[ -n $start ]] && started=$(date -u -d "@$start" '+%Y-%m-%dT%H:%M:%SZ' 2>/dev/null || true)
		if ((idle_total > 0 && proxy_died > 0 && order_ok > 0 && order_bad == 0)); then
			# --nginx-conf found the order right: not the race.
			finding NOTE "nginx lost $proxy_died upstream connections under a request, though its keepalive_timeout is below the service's idle timeout (--nginx-conf above)" \
				"With that order nginx ends idle connections before the service does, so the keep-alive race is not their cause: the connections died another way. A restart, crash or OOM kill of the service (this process started ${started:-at process_start_time_seconds}; errors before that were another process's), connections reset by the peer (above), or another instance or service behind the same upstream (-p narrows the error log to one port)." \
				"Check the service's restarts (kubectl get pod: RESTARTS, the previous container's exit) against the times of nginx's error lines; read these metrics on every instance of the upstream group."
		elif ((idle_total > 0 && proxy_died > 0)); then
			# Both sides of the same race: nginx wrote a request onto an
			# idle upstream connection the service was closing.
			finding WARN "keep-alive order: nginx lost $proxy_died upstream connections under a request, and the service closed $idle_total idle connections by its own idle timeout since the service started" \
				"Most likely the two layers describe the same race: the service closed a kept-alive connection as idle (HTTP_IDLE_TIMEOUT) at the moment nginx reused it for a request, so nginx logged 'upstream prematurely closed' or 'reset by peer' and answered 502 (POST) or retried (GET): nginx's upstream keepalive_timeout is not shorter than the service's idle timeout. If --nginx-conf found that order right, look for another instance or service behind the same nginx (-p narrows the error log to one port)." \
				"Set upstream { keepalive_timeout } below HTTP_IDLE_TIMEOUT (${idle_s:-?}s on this instance; reference: 60s < 75s, deploy/nginx/nginx.conf); on ingress-nginx, upstream-keepalive-timeout; behind a cloud load balancer, its idle timeout below HTTP_IDLE_TIMEOUT. --nginx-conf checks the setting."
		elif ((idle > 0 && proxy_died == 0)); then
			# Without a proxy's log the client side of the race shows in
			# the kernel: a request that reaches a connection the service
			# has closed is answered with a reset (TCPAbortOnData), which
			# the client sees as EOF or "connection reset". Only a rise
			# within the run lines the two up in time.
			read -r _ aod < <(mval kernel_tcp_abort_on_data_total)
			if ((interval > 0 && aod > 0)); then
				finding WARN "keep-alive race: the service closed $idle idle connections by its idle timeout $span, and $aod requests reached connections it had already closed (TCPAbortOnData)" \
					"Clients (or a load balancer) reused kept-alive connections at the moment the service closed them as idle (HTTP_IDLE_TIMEOUT, ${idle_s:-?}s here): their request met a reset, seen as EOF or 'connection reset by peer', and was not retried unless it was idempotent. The kernel counter is the pod's network namespace (one service per pod), so other sockets of the pod count too." \
					"Make the callers' idle timeout shorter than HTTP_IDLE_TIMEOUT: Go: Transport.IdleConnTimeout; nginx: upstream keepalive_timeout; a cloud load balancer: its idle timeout. Or raise HTTP_IDLE_TIMEOUT above theirs."
			else
				finding NOTE "$idle idle keep-alive connections were closed by the service's idle timeout $span" \
					"Normal housekeeping. It causes EOF/502 only if a client or proxy sends a request on a connection at the moment the service closes it: their idle timeout must be shorter than the service's HTTP_IDLE_TIMEOUT. A request that crossed the service's FIN on the wire shows as TCPAbortOnData rising in the same window (-i N lines them up); a client that sends on the connection after the FIN reached it gets a reset or EOF that no counter here names, so its own error log is the evidence." \
					"nginx: upstream keepalive_timeout below HTTP_IDLE_TIMEOUT (deploy/nginx); Go clients: Transport.IdleConnTimeout below it."
			fi
		elif ((proxy_died > 0)); then
			finding NOTE "the service closed no connection by its idle timeout since the service started, yet nginx lost $proxy_died upstream connections under a request" \
				"If nginx's errors fall in that period, the keep-alive order is not their cause: the connections died another way. A restart, crash or OOM kill of the service (its uptime is process_start_time_seconds), connections reset by the peer (above), or another instance behind the same upstream." \
				"Check the service's restarts and the time of nginx's error lines; read these metrics on every instance of the upstream group."
		fi
		if ((reset == 0 && gone == 0 && aborts == 0 && rtimeout == 0 && wtimeout == 0 && scut == 0)); then
			finding OK "no connection was reset or left mid-request, and none was cut by a timeout, $span"
		fi

		echo "-- requests net/http rejected, TLS handshakes, kernel, protections"
		rejected=$(rising http_server_rejected_requests_total code 400 408 417 431 501 505 unknown)
		if [[ -n $rejected ]]; then
			finding WARN "the service rejected requests before routing $span ($rejected)" \
				"net/http could not read them: 431 headers larger than HTTP_MAX_HEADER_BYTES (big cookies or tokens), 400 a malformed request line or header, 408 one cut off by the read-header timeout, 417 an Expect header other than 100-continue, 501/505 an unsupported transfer encoding or HTTP version; unknown: one of these on the TLS listener, where the status is not readable. They have no access line; each has a 'request rejected' log line." \
				"Look up the 'request rejected' lines for the client addresses; raise HTTP_MAX_HEADER_BYTES for legitimate large headers."
		fi
		tls=$(rising http_server_tls_handshake_errors_total reason eof timeout bad_certificate other)
		if [[ -n $tls ]]; then
			finding NOTE "TLS handshakes failed $span ($tls)" \
				"eof: the client hung up during the handshake (health checkers and port scanners do this); timeout: it stalled; bad_certificate: it does not trust the certificate; other: not TLS at all, often plain HTTP to the TLS port." \
				"Only bad_certificate and other point at a client or certificate problem; read the 'tls handshake error' log lines."
		fi
		# HTTP/2 protocol errors: net/http's types are a fixed but long set,
		# read from the page.
		h2types=$(awk '/^http_server_http2_errors_total\{/ { if (match($1, /type="[^"]*"/)) print substr($1, RSTART + 6, RLENGTH - 7) }' "$work/metrics.2" | sort -u | tr '\n' ' ')
		# shellcheck disable=SC2086 # one argument per type
		h2=$(rising http_server_http2_errors_total type $h2types)
		if [[ $h2 == *too_many_early_resets* ]]; then
			finding WARN "HTTP/2 clients reset streams as fast as they opened them $span ($h2)" \
				"The rapid-reset pattern (CVE-2023-44487): the server closed those connections with ENHANCE_YOUR_CALM. A client or proxy bug, or an attack; other clients are not affected." \
				"Find the clients in the 'connection closed' lines (peer address) or at the proxy; block or rate-limit them there."
		elif [[ -n $h2 ]]; then
			finding NOTE "HTTP/2 clients broke the protocol $span ($h2)" \
				"The server answered with a stream reset or a GOAWAY, which those clients see as a stream error or an EOF. conn_*: the whole connection ended; stream_*: one request." \
				"A client or proxy with a faulty HTTP/2 implementation, or a scanner; the type names what it did."
		fi
		# The kernel's counters are the network namespace's (the pod's),
		# not the process's: with one reading they count since it was made.
		read -r _ overflows < <(mval kernel_tcp_listen_overflows_total)
		qlim=0
		if grep -q '^http_server_listen_queue_limit_connections{' "$work/metrics.2"; then
			qlen=$(msum "$work/metrics.2" http_server_listen_queue_connections listener=public)
			qlim=$(msum "$work/metrics.2" http_server_listen_queue_limit_connections listener=public)
			smc=$(msum "$work/metrics.2" kernel_sysctl name=net.core.somaxconn)
			echo "  public listener's accept queue now: $qlen waiting, limit $qlim (net.core.somaxconn now $smc)"
		fi
		kspan=$span
		((interval > 0)) || kspan="since the network namespace (the pod, or the host) was created"
		overflow_level=WARN
		((interval > 0)) || overflow_level=NOTE # a total since the namespace began: maybe long ago
		if ((overflows > 0)); then
			finding $overflow_level "the service's network namespace counted $overflows listen queue overflows $kspan" \
				"The pod's accept queue was full: the kernel dropped handshakes. Clients see connect timeouts and resets before the service ever sees them." \
				"Raise net.core.somaxconn in the pod (the sysctl init container of deploy/k8s sets it before the service starts; a running process keeps the limit it opened its listener with), add replicas, check CPU throttling."
		fi
		# The accept queue now, against its limit, and the limit against
		# the namespace's somaxconn now: a listener keeps the limit it was
		# opened with.
		qfind=""
		if ((qlim > 0)); then
			if ((qlen * 2 > qlim)); then
				qfind=1
				finding WARN "the public listener's accept queue is more than half full: $qlen of $qlim connections wait to be accepted" \
					"The service accepts connections slower than they arrive: it is starved of CPU (throttling) or flooded with new connections. Once the queue is full the kernel drops handshakes." \
					"Check CPU throttling and the connection rate (Connection: close clients, no keep-alive at the proxy); add CPU or replicas."
			fi
			if ((smc > qlim)); then
				qfind=1
				limit_level=NOTE
				((overflows > 0)) && limit_level=WARN
				finding $limit_level "the public listener's accept queue limit is $qlim, but net.core.somaxconn is now $smc" \
					"A listener's limit is fixed when it opens: somaxconn was raised after the service started, and this process still holds at most $qlim connections in its queue." \
					"Restart the service (roll the pods) to open its listener with the new limit."
			fi
		fi
		# How long connections waited before the service first read them
		# (older builds have no such series: 0).
		read -r _ wall < <(mval http_server_accept_wait_seconds_count)
		read -r _ wfast < <(mval http_server_accept_wait_seconds_bucket le=0.1)
		if ((wall > wfast)); then
			qfind=1
			wait_level=NOTE
			(((wall - wfast) * 100 > wall)) && wait_level=WARN # over 1% of them
			finding $wait_level "$((wall - wfast)) of the $wall connections accepted $span waited over 100 ms before the service read them" \
				"The accept queue was backed up: the process did not get to new connections for that long (CPU throttling, a burst of connections, a stopped or swapping process). Their clients saw slow connects; past the queue's limit, handshakes are dropped." \
				"Check CPU throttling and the Go run-queue wait (dashboard), the rate of new connections (clients or a proxy without keep-alive), and the replica count."
		fi
		# Retransmissions on the service's own client connections, counted
		# as each closes (older builds have no such series: 0).
		read -r _ rsegs < <(mval http_server_retransmitted_segments_total)
		read -r _ rconns < <(mval http_server_retransmitting_connections_total)
		read -r _ nclosed < <(mval http_server_connections_closed_total)
		rfind=""
		if ((rconns > 0)); then
			rfind=1
			retrans_level=NOTE
			((rconns * 100 > nclosed)) && retrans_level=WARN # over 1% of them
			finding $retrans_level "$rconns of the $nclosed connections closed $span needed retransmissions ($rsegs segments sent again)" \
				"Segments the service sent to its clients were not acknowledged in time: packets or ACKs were lost between the clients (or the proxy in front) and the service. Those requests were slower, and a connection that keeps losing them ends in a timeout or a reset: the network's share of the EOFs." \
				"The 'connection closed' lines carry tcp_retrans and tcp_rtt_ms with the client's address (clean closes at LOG_LEVEL=debug): find which clients or proxy, then check that path (NIC drops in the kernel section, MTU, a saturated node or link)."
		fi
		open=$(awk '/^breaker_open\{/ && $2 + 0 > 0 { match($1, /command="[^"]*"/); printf "%s%s", sep, substr($1, RSTART + 9, RLENGTH - 10); sep = ", " }' "$work/metrics.2")
		if [[ -n $open ]]; then
			finding WARN "circuit open now: $open" \
				"The dependency failed or timed out often enough that calls are short-circuited: /api/v1/items answers from the fallback (X-Degraded: true)." \
				"Check the dependency; the circuit half-opens after BREAKER_SLEEP_WINDOW and closes on a good probe."
		fi
		if [[ $(msum "$work/metrics.2" ratelimit_fallback_active) -gt 0 ]]; then
			finding WARN "the rate limiter is on its fallback now (Redis failing or slower than its budget)" \
				"Decisions come from RATELIMIT_ON_REDIS_ERROR (local bucket, allow or deny) until Redis answers again; /readyz says degraded." \
				"Check Redis (redis-cli ping, latency) and ratelimit_redis_errors_total{kind}."
		fi
		fallbacks=$(rising items_fallbacks_total reason open timeout rejected panic failure caller_error)
		if [[ -n $fallbacks ]]; then
			finding WARN "responses were served from the fallback $span ($fallbacks)" \
				"The dependency behind /api/v1/items failed, was slow, or its circuit was open: callers got 200 with X-Degraded: true. timeout: it did not answer within BREAKER_TIMEOUT, so those requests took that long, and a proxy or client with a shorter timeout gave up first (504 at nginx, 499 here)." \
				"Look at the dependency: http_client_request_duration_seconds and http_client_requests_total{code} by host, breaker_events_total; the traces show where the time went."
		fi
		retries=$(rising http_client_retries_total reason eof reset refused timeout status_429 status_502 status_503 status_504)
		if [[ -n $retries ]]; then
			finding NOTE "the service retried calls to its dependencies $span ($retries)" \
				"The service is the client here. eof, reset: the dependency (or a proxy in front of it) closed kept-alive connections as the service reused them, the same race as in front of the service the other way round; refused: it was down or restarting; timeout: it was slower than DOWNSTREAM_ATTEMPT_TIMEOUT; status_*: it answered with that error. The retry budget bounds them." \
				"eof, reset: keep DOWNSTREAM_IDLE_CONN_TIMEOUT below the dependency's keep-alive timeout. Otherwise, look at the dependency."
		fi
		# The service as a client: pooled connections to a dependency that
		# the dependency had closed when they were reused. The lowest idle
		# bucket that filled bounds the dependency's keep-alive timeout.
		read -r _ stale < <(mval http_client_stale_connection_idle_seconds_count)
		sfind=""
		if ((stale > 0)); then
			sfind=1
			byhost=$(awk '/^http_client_stale_connection_idle_seconds_count\{/ { match($1, /host="[^"]*"/); print substr($1, RSTART + 6, RLENGTH - 7) }' "$work/metrics.2" | sort -u |
				while read -r h; do
					read -r _ d < <(mval http_client_stale_connection_idle_seconds_count "host=$h")
					((d > 0)) && printf '%s: %s\n' "$h" "$d"
				done | paste -sd, - | sed 's/,/, /g')
			lo=0 hi=""
			while read -r le; do
				read -r _ d < <(mval http_client_stale_connection_idle_seconds_bucket "le=$le")
				if ((d > 0)); then
					hi=$le
					break
				fi
				lo=$le
			done < <(grep -o '^http_client_stale_connection_idle_seconds_bucket{[^}]*le="[^"]*"' "$work/metrics.2" | sed 's/.*le="//; s/"$//' | grep -v Inf | sort -u -g)
			if [[ -z $hi ]]; then
				shortest="over $lo s"
			elif [[ $lo == 0 ]]; then
				shortest="under $hi s"
			else
				shortest="$lo to $hi s"
			fi
			read -r _ s_eof < <(mval http_client_attempt_errors_total connection=reused kind=eof)
			read -r _ s_reset < <(mval http_client_attempt_errors_total connection=reused kind=reset)
			surfaced=$((s_eof + s_reset))
			client_idle=$(awk '$1 == "http_client_idle_timeout_seconds" { print $2 + 0 }' "$work/metrics.2")
			stale_level=NOTE
			((surfaced > 0)) && stale_level=WARN
			if [[ $lo == 0 ]]; then
				stale_fix="The dependency closed connections idle under $hi s: it keeps none alive for long (keep-alive off, a very short timeout) or it restarted; lower DOWNSTREAM_IDLE_CONN_TIMEOUT (now ${client_idle:-?}s) under its keep-alive timeout, or raise that."
			else
				stale_fix="Connections idle under $lo s did not fail: keep DOWNSTREAM_IDLE_CONN_TIMEOUT (now ${client_idle:-?}s) below the dependency's keep-alive timeout, under $lo s, or raise that timeout on the dependency (or the proxy or NAT in front of it)."
			fi
			finding $stale_level "$stale calls to dependencies found their kept-alive connection closed by the dependency $span ($byhost); idle $shortest at the shortest" \
				"The dependency (or a proxy or NAT in front of it) closes connections idle longer than its keep-alive timeout, and the service reused one just as it did: the keep-alive race, with the service as the client. net/http replays idempotent requests (GET) on a new connection by itself, at the cost of a round trip; the others fail with EOF or a reset ($surfaced of these), their errors ending '(on a kept-alive connection idle Ns)'." \
				"$stale_fix"
		fi
		if [[ -z $rejected$tls$h2$open$fallbacks$qfind$rfind$sfind && $overflows -eq 0 ]]; then
			finding OK "no rejected requests, TLS handshake or HTTP/2 errors, listen queue overflows or backlog, retransmissions, open circuits, fallbacks or stale dependency connections $span"
		fi
	fi
fi

# ---------------------------------------------------------------- service log
section "5. Service: its connection close lines"
if [[ -z $service_log ]]; then
	skip "no --service-log given: the close lines not read (kubectl logs POD > F, then -l F)"
elif [[ ! -r $service_log ]]; then
	finding WARN "cannot read the service log $service_log" \
		"The file does not exist or is not readable: the service's own close lines were not read." \
		"Check the path and its permissions; save the log first (kubectl logs POD > F)."
else
	# One pass over the JSON lines (keys as the service writes them; no
	# JSON parser needed): close reasons, the TCP_INFO fields, the clients
	# with retransmissions, write-timeout cuts with data never sent, and
	# the lines the log's rate limit held back.
	awk '
		function num(key,  m) {
			if (match($0, "\"" key "\":[0-9.e+-]+")) { m = substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3); return m + 0 }
			return -1
		}
		function str(key,  m) {
			if (match($0, "\"" key "\":\"[^\"]*\"")) return substr($0, RSTART + length(key) + 4, RLENGTH - length(key) - 5)
			return ""
		}
		index($0, "\"msg\":\"connection closed\"") == 0 { next }
		{
			n++
			reason = str("reason"); reasons[reason]++
			sup = num("suppressed"); if (sup > 0) suppressed += sup
			rt = num("tcp_retrans")
			if (rt < 0) next
			tcp++
			rtt = num("tcp_rtt_ms")
			ip = str("remote_addr"); sub(/:[0-9]+$/, "", ip); gsub(/[][]/, "", ip)
			if (rt > 0) {
				rconns++; rsegs += rt; if (rt > rmax) rmax = rt
				if (rtt > rttmax) rttmax = rtt
				bycli[ip] += rt; clic[ip]++
			}
			ns = num("tcp_notsent_bytes"); un = num("tcp_unacked_segs")
			if (reason == "write_timeout") {
				cut++; if (ns > nsmax) nsmax = ns
				id = str("request_id"); if (id != "" && ncutids < 3) { cutids = cutids (ncutids ? ", " : "") id; ncutids++ }
			}
		}
		END {
			printf "lines %d %d %d\n", n, tcp, suppressed
			for (r in reasons) printf "reason %s %d\n", r, reasons[r]
			printf "retrans %d %d %d %s\n", rconns, rsegs, rmax, (rttmax > 0 ? rttmax : 0)
			# The three clients with the most segments sent again.
			top = ""
			for (k = 0; k < 3; k++) {
				best = ""; bv = 0
				for (c in bycli) if (bycli[c] > bv) { best = c; bv = bycli[c] }
				if (best == "") break
				top = top (top == "" ? "" : ", ") best " (" clic[best] " connections, " bv " segments)"
				delete bycli[best]
			}
			printf "top %s\n", top
			printf "cut %d %d %s\n", cut, nsmax, cutids
		}' "$service_log" >"$work/closes"
	read -r _ nlines ntcp nsup < <(grep '^lines ' "$work/closes")
	reasons=$(awk '$1 == "reason" { print $2 ": " $3 }' "$work/closes" | sort | paste -sd , - | sed 's/,/, /g')
	read -r _ rconns_l rsegs_l rmax_l rttmax_l < <(grep '^retrans ' "$work/closes")
	top=$(sed -n 's/^top //p' "$work/closes")
	read -r _ ncut nsmax cutids < <(grep '^cut ' "$work/closes")
	if ((nlines == 0)); then
		skip "no 'connection closed' lines in $service_log (not this service's log, or LOG_LEVEL above info)"
	else
		echo "-- $nlines close lines ($reasons)"
		if ((ntcp == 0)); then
			finding NOTE "the close lines carry no TCP_INFO fields (tcp_retrans, tcp_rtt_ms)" \
				"The service runs on a system without Linux's TCP_INFO, or is an older build: retransmissions and unsent bytes cannot be read from its log." \
				"Use the kernel section (RetransSegs, netstat -s) for the network's share."
		fi
		if ((rconns_l > 0)); then
			level=NOTE
			((rmax_l >= 3)) && level=WARN # three timeouts on one connection: seconds lost
			finding $level "$rconns_l of the $ntcp connections in the log needed retransmissions ($rsegs_l segments sent again, up to $rmax_l on one; round trip up to $rttmax_l ms): $top" \
				"The service sent segments these clients did not acknowledge in time: packets or ACKs were lost on the way. Each loss costs a round trip or, past the first, a retransmission timeout (200 ms, then doubling): slow requests, and a connection that keeps losing ends in a timeout or a reset. A proxy in front shows as the client here." \
				"Look at the path to those addresses: NIC and softnet drops (section 3) on both ends, MTU mismatches (a VPN or overlay network), a saturated link or node."
		fi
		if ((ncut > 0)); then
			unsent=""
			((nsmax > 0)) && unsent="; up to $nsmax bytes still unsent in the kernel: the client had stopped reading"
			finding WARN "$ncut responses were cut by the write timeout: their clients never got them whole (request_id $cutids$unsent)" \
				"Either the client stopped reading (its receive window closed: a stalled client, a proxy that does not drain its buffer; the close line then shows tcp_notsent_bytes), or the handler and the response did not fit in HTTP_WRITE_TIMEOUT. The client sees an EOF; the access line of the same request_id says the handler's status (200)." \
				"Match the request_id with its access line (route, bytes); raise HTTP_WRITE_TIMEOUT for large or slow downloads, or find the stalled clients by their address in the close lines."
		fi
		if ((nsup > 0)); then
			finding NOTE "the log's rate limit held back $nsup close lines (at most 5 a second are written): the counts above are lower bounds" \
				"Under a flood of closes the service writes a burst of lines, then at most 5 a second, and the next line written says how many it left out." \
				"For totals, read the service's counters (--metrics): http_server_connections_closed_total, http_server_retransmitting_connections_total."
		fi
		if ((ntcp > 0 && rconns_l == 0 && ncut == 0)); then
			finding OK "no retransmissions and no response cut by the write timeout among the $ntcp connections in the log"
		fi
	fi
fi

# ---------------------------------------------------------------- summary
section "Summary"
if ((${#advice[@]} > 0)); then
	echo "Settings to review (not counted as warnings):"
	for w in "${advice[@]}"; do
		printf '  - %s\n' "$w"
	done
fi
if ((${#warnings[@]} == 0)); then
	echo "No warnings. If clients still see EOF, capture while it happens: --capture 30 (root, tcpdump) and pass the proxy's logs."
else
	echo "${#warnings[@]} warning(s), client layer first:"
	for w in "${warnings[@]}"; do
		printf '  - %s\n' "$w"
	done
	exit 3
fi
