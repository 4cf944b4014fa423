#!/usr/bin/env python3
"""Turns the load generator's JSON reports of one `bench/run.sh` run into the markdown report.

Usage: report.py RESULTS_DIR < settings.json
"""

import json
import statistics
import sys
from pathlib import Path

results = Path(sys.argv[1])
meta = json.load(sys.stdin)


def load(name):
    return json.loads((results / f"{name}.json").read_text())


def rps(name):
    return load(name)["summary"]["requestsPerSec"]


def failures(name):
    """Answers other than 200, and errors other than the runs cut at the deadline."""
    r = load(name)
    bad = sum(n for code, n in r["statusCodeDistribution"].items() if code != "200")
    bad += sum(n for e, n in r.get("errorDistribution", {}).items() if "deadline" not in e)
    return bad


def requests(name):
    return sum(load(name)["statusCodeDistribution"].values())


def cpu_secs(name, user_only=False):
    ticks, per_sec, user, _ = (results / f"{name}.cpu").read_text().split()
    return int(user if user_only else ticks) / int(per_sec)


def ns_per_request(name):
    """Time on a CPU per request of a run, in microseconds, from the scheduler's nanoseconds."""
    ns = int((results / f"{name}.cpu").read_text().split()[3])
    return ns / 1e3 / max(requests(name), 1)


def us_per_request(name, user_only=False):
    """CPU time the proxy spent per request of a run, in microseconds (or its user-space part)."""
    return cpu_secs(name, user_only) * 1e6 / max(requests(name), 1)


def pct(name, p):
    """Latency percentile in microseconds."""
    return load(name)["latencyPercentiles"][p] * 1e6


def verdict(ok):
    return "PASS" if ok else "MISS"


out = []
w = out.append
rounds = meta["rounds"]
m = meta["machine"]
layout = (
    "proxy under test pinned to CPU 1 (one nginx worker, one gateway runtime worker); "
    "load generator, static backend and demo backends pinned to CPU 0"
    if meta["pin"]
    else f"no pinning; {meta['workers']} nginx workers and {meta['workers']} gateway runtime workers"
)
w("## Figures\n")
w(f"- Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['nginx']}; {m['oha']}; {m['wrk']}; {m['rustc']}")
w(f"- Layout: {layout}")
w(
    f"- Runs: {meta['duration']} s each, {rounds} interleaved throughput round(s), {meta['conns']} connections, "
    f"access logs {'on in both proxies' if meta['access_log'] else 'off in both proxies'}, no compression asked"
)
w("")

# --- throughput ---
ng = [rps(f"tput-nginx-{r}") for r in range(1, rounds + 1)]
gw = [rps(f"tput-gateway-{r}") for r in range(1, rounds + 1)]
mi = [rps(f"tput-alt-{r}") for r in range(1, rounds + 1)] if meta["allocators"] else []
h2 = [rps(f"tput-h2-{r}") for r in range(1, rounds + 1)] if meta.get("h2") else []
alloc = {"system": "system allocator"}.get(meta.get("allocator"), meta.get("allocator", "mimalloc"))
ratios = [g / n for g, n in zip(gw, ng)]
ratio = statistics.median(ratios)
w(f"### Throughput: pass-through, {meta['conns']} connections, 1 KB JSON\n")
head = "| round | nginx req/s | gateway req/s | gateway / nginx | nginx CPU | gateway CPU |"
sep = "|---|---:|---:|---:|---:|---:|"
if mi:
    head += f" gateway + {alloc} req/s | {alloc} / jemalloc |"
    sep += "---:|---:|"
if h2:
    head += " gateway, HTTP/2 to the backend, req/s | HTTP/2 / HTTP/1.1 | its CPU |"
    sep += "---:|---:|---:|"
w(head)
w(sep)
for i in range(rounds):
    cpu = [cpu_secs(f"tput-{who}-{i + 1}") / meta["duration"] * 100 for who in ("nginx", "gateway")]
    row = f"| {i + 1} | {ng[i]:,.0f} | {gw[i]:,.0f} | {ratios[i]:.2f}× | {cpu[0]:.0f}% | {cpu[1]:.0f}% |"
    if mi:
        row += f" {mi[i]:,.0f} | {mi[i] / gw[i]:.2f}× |"
    if h2:
        h2_cpu = cpu_secs(f"tput-h2-{i + 1}") / meta["duration"] * 100
        row += f" {h2[i]:,.0f} | {h2[i] / gw[i]:.2f}× | {h2_cpu:.0f}% |"
    w(row)
row = f"| median | {statistics.median(ng):,.0f} | {statistics.median(gw):,.0f} | **{ratio:.2f}×** | | |"
if mi:
    mi_ratio = statistics.median(m_ / g_ for m_, g_ in zip(mi, gw))
    row += f" {statistics.median(mi):,.0f} | **{mi_ratio:.2f}×** |"
if h2:
    h2_ratio = statistics.median(h_ / g_ for h_, g_ in zip(h2, gw))
    row += f" {statistics.median(h2):,.0f} | **{h2_ratio:.2f}×** | |"
w(row)
bad = sum(
    failures(f"tput-{who}-{r}")
    for who in ("nginx", "gateway") + (("alt",) if mi else ()) + (("h2",) if h2 else ())
    for r in range(1, rounds + 1)
)
ceiling = rps("direct-max")
cpu_per_request = {
    who: statistics.median(us_per_request(f"tput-{who}-{r}") for r in range(1, rounds + 1))
    for who in ("nginx", "gateway")
}
cpu_ratio = cpu_per_request["gateway"] / cpu_per_request["nginx"]
user_per_request = {
    who: statistics.median(us_per_request(f"tput-{who}-{r}", True) for r in range(1, rounds + 1))
    for who in ("nginx", "gateway")
}
# A proxy within 10% of what the load generator reaches without one is held back by the load
# generator: its rate then says more about the machine than about the proxy.
load_bound = statistics.median(ng) >= 0.9 * ceiling
w(
    f"\nCPU is the proxy's user + system time over the run, as a share of one core; per request "
    f"(median of the rounds) nginx {cpu_per_request['nginx']:.1f} µs, the gateway "
    f"{cpu_per_request['gateway']:.1f} µs (**{cpu_ratio:.2f}×**); of which in user space nginx "
    f"{user_per_request['nginx']:.1f} µs, the gateway {user_per_request['gateway']:.1f} µs "
    f"(the rest is the kernel's: nginx {cpu_per_request['nginx'] - user_per_request['nginx']:.1f} µs, "
    f"the gateway {cpu_per_request['gateway'] - user_per_request['gateway']:.1f} µs). "
    f"Load generator ceiling (wrk direct to the backend, same connections): {ceiling:,.0f} req/s"
    + (" (nginx within 10% of it: the ratio above is bound by the load generator, and CPU per request is the better comparison)" if load_bound else "")
    + f". Failed or non-200 answers in the rounds: {bad}.\n"
)

# --- latency ---
def latency_table(tag, title):
    w(f"### {title}\n")
    w("| path | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | proxy CPU µs per request |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    lat = {who: [pct(f"{tag}-{who}", p) for p in ("p50", "p99", "p99.9")] for who in ("direct", "nginx", "gateway")}
    for who, label in (("direct", "direct (client → backend)"), ("nginx", "via nginx"), ("gateway", "via gateway")):
        p = lat[who]
        if who == "direct":
            added = "| – | – | – | – |"
        else:
            d = [a - b for a, b in zip(p, lat["direct"])]
            added = f"| {d[0]:,.0f} | {d[1]:,.0f} | {d[2]:,.0f} | {us_per_request(f'{tag}-{who}'):.1f} |"
        w(f"| {label} | {p[0]:,.0f} | {p[1]:,.0f} | {p[2]:,.0f} {added}")
    achieved = {who: rps(f"{tag}-{who}") for who in lat}
    w(
        "\nRates achieved: "
        + ", ".join(f"{who} {v:,.0f} req/s" for who, v in achieved.items())
        + f". Failed or non-200 answers: {sum(failures(f'{tag}-{who}') for who in lat)}.\n"
    )
    return [a - b for a, b in zip(lat["gateway"], lat["direct"])]


gw_added = latency_table(
    "lat",
    f"Added latency at {meta['rate']:,} req/s (half of nginx's best round): open loop, corrected for coordinated omission",
)
latency_table("latgw", f"Added latency at {meta['rate_gw']:,} req/s (half of the gateway's median round), for reference")

# --- fan-out ---
fan = load("fanout")
fan_p50 = fan["latencyPercentiles"]["p50"] * 1e3
fan_p99 = fan["latencyPercentiles"]["p99"] * 1e3
part = meta["fanout_latency_ms"]
w(f"### Fan-out: `GET /api/v2/user/profile`, three gRPC parts of {part} ms each, response cache off, one request at a time\n")
one = load("part-direct")["latencyPercentiles"]["p50"] * 1e3
w("| route p50 ms | route p99 ms | one part alone, called directly, p50 ms | route over one part (p50) | route over 20 ms (p50) | failed |")
w("|---:|---:|---:|---:|---:|---:|")
w(
    f"| {fan_p50:.2f} | {fan_p99:.2f} | {one:.2f} | {fan_p50 - one:+.2f} ms | {fan_p50 - part:+.2f} ms | {failures('fanout')} |\n"
)
hop = {who: load(f"part-{who}")["latencyPercentiles"]["p50"] * 1e3 for who in ("nginx", "gateway")}
w(
    f"The same {part} ms part through one proxy hop, one request at a time, as a reference for what a hop "
    f"costs on this host while the proxy's core idles: direct p50 {one:.2f} ms, through nginx "
    f"{hop['nginx']:.2f} ms ({hop['nginx'] - one:+.2f} ms), through the gateway's pass-through "
    f"{hop['gateway']:.2f} ms ({hop['gateway'] - one:+.2f} ms). The fan-out over one part through nginx: "
    f"{fan_p50 - hop['nginx']:+.2f} ms. The proxy's CPU a request meanwhile, on a core that idles between "
    f"requests: nginx {ns_per_request('part-nginx'):.0f} µs, the gateway {ns_per_request('part-gateway'):.0f} µs "
    f"({ns_per_request('part-gateway') / ns_per_request('part-nginx'):.2f}×).\n"
)
meta_t = json.loads((results / "fanout-meta.json").read_text())
w(
    f"The gateway's own timing of the parts (`_meta`, 100 requests, one at a time on one connection): "
    f"slowest part p50 {meta_t['slowest_part_p50']:.2f} ms, whole request p50 {meta_t['total_p50']:.2f} ms as the "
    f"client saw it, the difference p50 {meta_t['over_p50']:.2f} ms (the client's own time, authentication, "
    f"the limiter, fan-out, shaping and serialisation). The route's p50 above (oha) is "
    f"{fan_p50 - meta_t['slowest_part_p50']:+.2f} ms over this slowest part's p50.\n"
)
warm_us = us_per_request("fanout-warm")
w(
    f"Without the delay, one request at a time: {rps('fanout-warm'):,.0f} req/s, p50 "
    f"{pct('fanout-warm', 'p50') / 1e3:.2f} ms, the gateway's CPU **{warm_us:.0f} µs per request** "
    f"({warm_us / cpu_per_request['gateway']:.1f}× a pass-through request's in the throughput rounds), "
    f"failed {failures('fanout-warm')}.\n"
)

# --- memory ---
mb = lambda kb: kb / 1024
hc = load("high-gateway")
w("### Memory (VmRSS)\n")
w(f"| process | idle | peak under {meta['high_conns']:,} connections | req/s through them |")
w("|---|---:|---:|---:|")
w(f"| gateway | {mb(meta['rss_idle_kb']):.1f} MB | {mb(meta['rss_loaded_kb']):.1f} MB | {hc['summary']['requestsPerSec']:,.0f} |")
if meta["allocators"]:
    w(
        f"| gateway + {alloc} | {mb(meta['alt_rss_idle_kb']):.1f} MB | {mb(meta['alt_rss_loaded_kb']):.1f} MB "
        f"| {rps('high-alt'):,.0f} |"
    )
if h2:
    w(
        f"| gateway, HTTP/2 to the backend | {mb(meta['h2_rss_idle_kb']):.1f} MB | {mb(meta['h2_rss_loaded_kb']):.1f} MB "
        f"| {rps('high-h2'):,.0f} |"
    )
w(
    f"| nginx (master and workers) | {mb(meta['nginx_rss_idle_kb']):.1f} MB | {mb(meta['nginx_rss_loaded_kb']):.1f} MB "
    f"| {rps('high-nginx'):,.0f} |"
)
high_up = json.loads((results / "reuse-high.json").read_text())["gateway"]
w(
    f"\nThe gateway's RSS a second after the connections closed: {mb(meta['rss_after_kb']):.1f} MB; "
    f"{meta['later_secs']} s after, idle meanwhile: {mb(meta['rss_later_kb']):.1f} MB. Client connections "
    f"seen open at once: {meta['high_open']:,}; upstream connections the gateway used meanwhile: "
    f"{high_up['connections']:,}; failed: {failures('high-gateway')}."
)
if h2:
    high_h2 = json.loads((results / "reuse-high-h2.json").read_text())["h2"]
    w(
        f"The gateway speaking HTTP/2 to the backend used {high_h2['connections']:,} upstream connections "
        f"for its {meta['high_conns']:,}; failed: {failures('high-h2')}."
    )
# Idle keep-alive connections, measured on each proxy before any load.
idle_kb = lambda who: (meta[f"{who}idle_with_kb"] - meta[f"{who}idle_before_kb"]) / meta["idle_conns"]
w(
    f"\n{meta['idle_conns']:,} idle keep-alive connections, each left open after one request, before any load: "
    f"the gateway {mb(meta['idle_before_kb']):.1f} → {mb(meta['idle_with_kb']):.1f} MB, "
    f"**{idle_kb(''):.1f} KB a connection**; nginx {mb(meta['nginx_idle_before_kb']):.1f} → "
    f"{mb(meta['nginx_idle_with_kb']):.1f} MB, {idle_kb('nginx_'):.1f} KB a connection; "
    f"failed: {meta['idle_failed']} and {meta['nginx_idle_failed']}."
)
w("")

# --- reuse ---
reuse = json.loads((results / "reuse.json").read_text())
w("### Upstream connection reuse over the throughput rounds\n")
w("| proxy | requests to the backend | connections opened | reuse |")
w("|---|---:|---:|---:|")
reuse_of = {}
for who in ("nginx", "gateway") + (("alt",) if meta["allocators"] else ()) + (("h2",) if h2 else ()):
    r = reuse[who]
    reuse_of[who] = 1 - r["connections"] / r["requests"] if r["requests"] else 0.0
    label = {"alt": f"gateway + {alloc}", "h2": "gateway, HTTP/2 to the backend"}.get(who, who)
    w(f"| {label} | {r['requests']:,} | {r['connections']:,} | {reuse_of[who] * 100:.3f}% |")
w("")

# --- targets ---
w("### Targets\n")
w("| target | measured | verdict |")
w("|---|---|---|")
rows = [
    (
        f"throughput ≥ 1.0× nginx at {meta['conns']} connections",
        f"{ratio:.2f}× (CPU per request {cpu_ratio:.2f}× nginx's)"
        + ("; nginx at the load generator's ceiling" if load_bound else ""),
        ratio >= 1.0,
    ),
    ("added latency p50 ≤ 100 µs at half nginx's max rate", f"{gw_added[0]:,.0f} µs", gw_added[0] <= 100),
    ("added latency p99 ≤ 1 ms at half nginx's max rate", f"{gw_added[1]:,.0f} µs", gw_added[1] <= 1000),
    (
        f"three parts of {part} ms: p50 ≤ {part + 0.2:.1f} ms",
        f"{fan_p50:.2f} ms (one part through nginx: {hop['nginx']:.2f} ms)",
        fan_p50 <= part + 0.2,
    ),
    (
        "three parts: route p50 over the slowest part's p50 as the gateway timed it ≤ 0.2 ms (the same target, against the real part)",
        f"{fan_p50 - meta_t['slowest_part_p50']:+.2f} ms",
        fan_p50 - meta_t["slowest_part_p50"] <= 0.2,
    ),
    ("RSS idle ≤ 30 MB", f"{mb(meta['rss_idle_kb']):.1f} MB", mb(meta["rss_idle_kb"]) <= 30),
    (
        f"RSS under {meta['high_conns']:,} connections ≤ 64 MB",
        f"{mb(meta['rss_loaded_kb']):.1f} MB",
        mb(meta["rss_loaded_kb"]) <= 64,
    ),
    ("upstream connection reuse ≥ 99.9%", f"{reuse_of['gateway'] * 100:.3f}%", reuse_of["gateway"] >= 0.999),
]
if h2:
    rows.insert(
        7,
        (
            f"RSS under {meta['high_conns']:,} connections ≤ 64 MB, the backend reached over HTTP/2 (`protocol = \"http2\"`)",
            f"{mb(meta['h2_rss_loaded_kb']):.1f} MB",
            mb(meta["h2_rss_loaded_kb"]) <= 64,
        ),
    )
for name, got, ok in rows:
    w(f"| {name} | {got} | {verdict(ok)} |")
if load_bound and ratio >= 1.0:
    w(
        "\nThe throughput PASS is bound by the load generator: nginx ran within 10% of its ceiling, "
        "so the ratio says the gateway kept up, not that it would on a faster load generator."
    )
print("\n".join(out))
