#!/usr/bin/env python3
"""Tables and plots for docs/benchmarks.md from the JSON reports of load/bench/run.sh.

    python3 load/bench/plot.py [--out DIR] LABEL=RESULTS_DIR[,RESULTS_DIR...] [LABEL=...]

Each RESULTS_DIR holds the <name>-r<k>.json reports of one run.sh run (LABEL names it in the
tables and plots, e.g. before=... after=...); several directories under one label are taken
as more repetitions of the same run (run.sh runs alternated with another revision's). Prints
markdown tables of medians with the min-max spread over the repetitions and writes two PNGs
into --out (default docs/benchmarks):
latency percentiles against offered rate, and server RSS against participants. matplotlib is
installed into target/bench-venv with pip when it is missing.
"""
import glob
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    venv = os.path.join(ROOT, "target", "bench-venv")
    python = os.path.join(venv, "bin", "python3")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        sys.exit("plot.py: matplotlib is still missing inside " + venv)
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    subprocess.check_call([python, "-m", "pip", "install", "-q", "matplotlib"])
    os.execv(python, [python] + sys.argv)


def load(directories):
    """{name: [report, ...]} over all directories, repetition suffixes stripped from file names."""
    groups = {}
    paths = [p for d in directories for p in sorted(glob.glob(os.path.join(d, "*.json")))]
    for path in paths:
        name = re.sub(r"-r\d+$", "", os.path.basename(path)[:-5])
        with open(path) as f:
            groups.setdefault(name, []).append(json.load(f))
    return groups


def run_of(report, scenario, target):
    for r in report["runs"]:
        if r["scenario"] == scenario and r["target"] == target:
            return r
    return None


def values(reports, scenario, target, get):
    out = []
    for rep in reports:
        r = run_of(rep, scenario, target)
        if r is not None:
            v = get(r)
            if v is not None:
                out.append(v)
    return out


def ratio_values(reports, what):
    return [x["ratio"] for rep in reports for x in rep.get("ratios", []) if x["what"] == what]


def med(vs, fmt="{:.0f}"):
    """median (min–max), or — without values."""
    if not vs:
        return "—"
    m = statistics.median(vs)
    if len(vs) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(vs))}–{fmt.format(max(vs))})"


def rss_per(r):
    s = [x for x in r["servers"] if x.get("rss_per_participant_bytes") is not None]
    n = sum(x["participants"] for x in s)
    grown = sum(max(0, x["rss_after_bytes"] - x["rss_before_bytes"]) for x in s)
    return grown / n / 1024 if n else None


def cpu_per(r):
    d = r.get("delivery") or {}
    cpu = sum(x["cpu_seconds"] for x in r["servers"])
    return cpu * 1e6 / d["delivered"] if d.get("delivered") and cpu > 0 else None


def wrong(reports):
    return sum(len(rep["problems"]) for rep in reports)


def lat(key):
    return lambda r: (r.get("latency") or {}).get(key, 0) / 1000 if r.get("latency") else None


def tables(label, g):
    print(f"\n### {label}\n")
    rows = sorted(
        (int(m.group(1)), k) for k in g if (m := re.match(r"connections-(\d+)$", k))
    )
    if rows:
        print("| participants | joins/s | ceiling joins/s | ratio | RSS KiB/participant | ceiling KiB/participant | wrong results |")
        print("|---|---|---|---|---|---|---|")
        for n, k in rows:
            rs = g[k]
            print(
                f"| {n} | {med(values(rs, 'connections', 'switchboard', lambda r: r['joins']['per_sec']))}"
                f" | {med(values(rs, 'connections', 'ceiling', lambda r: r['joins']['per_sec']))}"
                f" | {med(ratio_values(rs, 'connections: joins/s'), '{:.2f}')}"
                f" | {med(values(rs, 'connections', 'switchboard', rss_per), '{:.1f}')}"
                f" | {med(values(rs, 'connections', 'ceiling', rss_per), '{:.1f}')}"
                f" | {wrong(rs)} |"
            )
    traffic = [
        ("relay-ice", "relay", "relay, 50 pairs × 2 × 2,000 × 200 B"),
        ("relay-sdp", "relay", "relay, 50 pairs × 2 × 500 × 1–4 KiB"),
        ("fanout", "fanout", "fanout, 10 rooms × 10 × 200 broadcasts"),
        ("churn", "churn", "churn, 10 rooms: pair at 50/s + 2 churners × 20 cycles"),
        ("redis-relay", "relay", "relay across 3 instances on one Redis"),
    ]
    present = [t for t in traffic if t[0] in g]
    if present:
        print("\n| scenario | delivered msg/s | ceiling msg/s | ratio | p50 ms | p99 ms | ceiling p99 ms | server CPU µs/msg | ceiling CPU µs/msg | wrong results |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for key, scen, title in present:
            rs = g[key]
            print(
                f"| {title} | {med(values(rs, scen, 'switchboard', lambda r: r['delivered_per_sec']))}"
                f" | {med(values(rs, scen, 'ceiling', lambda r: r['delivered_per_sec']))}"
                f" | {med(ratio_values(rs, scen + ': delivered msg/s'), '{:.2f}')}"
                f" | {med(values(rs, scen, 'switchboard', lat('p50_us')), '{:.2f}')}"
                f" | {med(values(rs, scen, 'switchboard', lat('p99_us')), '{:.2f}')}"
                f" | {med(values(rs, scen, 'ceiling', lat('p99_us')), '{:.2f}')}"
                f" | {med(values(rs, scen, 'switchboard', cpu_per), '{:.1f}')}"
                f" | {med(values(rs, scen, 'ceiling', cpu_per), '{:.1f}')}"
                f" | {wrong(rs)} |"
            )
    if "churn" in g:
        rs = g["churn"]
        p = lambda key: (lambda r: (r.get("presence") or {}).get(key))
        print("\n| churn | joins/s | ceiling joins/s | user-joined p99 ms | user-left p99 ms | presence seen once / expected |")
        print("|---|---|---|---|---|---|")
        print(
            f"| one instance | {med(values(rs, 'churn', 'switchboard', lambda r: r['joins']['per_sec']))}"
            f" | {med(values(rs, 'churn', 'ceiling', lambda r: r['joins']['per_sec']))}"
            f" | {med(values(rs, 'churn', 'switchboard', lambda r: r['presence']['join_latency']['p99_us'] / 1000), '{:.2f}')}"
            f" | {med(values(rs, 'churn', 'switchboard', lambda r: r['presence']['leave_latency']['p99_us'] / 1000), '{:.2f}')}"
            f" | {med(values(rs, 'churn', 'switchboard', lambda r: r['presence']['joins_seen_once'] + r['presence']['leaves_seen_once']))}"
            f" / {med(values(rs, 'churn', 'switchboard', lambda r: r['presence']['joins_expected'] + r['presence']['leaves_expected']))} |"
        )
    if "redis-relay" in g:
        rs = g["redis-relay"]
        print("\n| across 3 instances, one Redis | value |")
        print("|---|---|")
        print(f"| relay msg/s across instances | {med(values(rs, 'relay', 'switchboard', lambda r: r['delivered_per_sec']))} |")
        print(f"| relay msg/s, one of them alone | {med(values(rs, 'relay', 'switchboard-one-instance', lambda r: r['delivered_per_sec']))} |")
        print(f"| ratio across / one instance | {med(ratio_values(rs, 'relay: across instances / one instance, msg/s'), '{:.2f}')} |")
        print(f"| redis-benchmark PUBLISH -P 16, requests/s | {med([rep['redis_benchmark']['requests_per_sec'] for rep in rs if rep.get('redis_benchmark')])} |")
        print(f"| ratio relay msg/s / PUBLISH requests/s | {med(ratio_values(rs, 'relay msg/s / redis-benchmark PUBLISH requests/s'), '{:.2f}')} |")
        for other in ("redis-fanout", "redis-churn"):
            if other in g:
                scen = other.split("-")[1]
                print(f"| {scen} msg/s across instances (p99 ms) | {med(values(g[other], scen, 'switchboard', lambda r: r['delivered_per_sec']))} ({med(values(g[other], scen, 'switchboard', lat('p99_us')), '{:.2f}')}) |")
    if "one-redis-relay" in g and "cluster-relay" in g:
        print("\n| 3 instances, same load | one Redis | 3-master Redis Cluster | cluster / one Redis |")
        print("|---|---|---|---|")
        for scen, title in (("relay", "relay, 50 pairs × 2 × 2,000 × 200 B"), ("fanout", "fanout, 10 rooms × 10 × 200 broadcasts")):
            one, many = g.get(f"one-redis-{scen}"), g.get(f"cluster-{scen}")
            if not one or not many:
                continue
            for what, get, fmt in (
                ("msg/s", lambda r: r["delivered_per_sec"], "{:.0f}"),
                ("p50 ms", lat("p50_us"), "{:.2f}"),
                ("p99 ms", lat("p99_us"), "{:.2f}"),
                ("server CPU µs/msg", cpu_per, "{:.1f}"),
            ):
                a = values(one, scen, "switchboard", get)
                b = values(many, scen, "switchboard", get)
                ratio = [y / x for x, y in zip(a, b) if x]
                print(f"| {title}: {what} | {med(a, fmt)} | {med(b, fmt)} | {med(ratio, '{:.2f}')} |")
            print(f"| {title}: wrong results | {wrong(one)} | {wrong(many)} | |")
    pj = [k for k in ("peerjs-relay-ice", "peerjs-relay-sdp", "peerjs-connections-10000") if k in g]
    if pj:
        print("\n| same load, PeerJS server 1.0.2 | PeerJS | Switchboard | Switchboard / PeerJS |")
        print("|---|---|---|---|")
        for key, ours, scen, title, get in (
            ("peerjs-relay-ice", "relay-ice", "relay", "relay 200 B, msg/s", lambda r: r["delivered_per_sec"]),
            ("peerjs-relay-sdp", "relay-sdp", "relay", "relay 1–4 KiB, msg/s", lambda r: r["delivered_per_sec"]),
            ("peerjs-connections-10000", "connections-10000", "connections", "10,000 joins, joins/s", lambda r: r["joins"]["per_sec"]),
            ("peerjs-connections-10000", "connections-10000", "connections", "10,000 idle, RSS KiB/participant", rss_per),
        ):
            if key not in g or ours not in g:
                continue
            theirs = values(g[key], scen, "peerjs", get)
            mine = values(g[ours], scen, "switchboard", get)
            r = f"{statistics.median(mine) / statistics.median(theirs):.2f}" if theirs and mine and statistics.median(theirs) else "—"
            print(f"| {title} | {med(theirs, '{:.1f}')} | {med(mine, '{:.1f}')} | {r} |")
    for prefix, title in (("paced", "one instance"), ("redis-paced", "3 instances, one Redis")):
        rates = sorted(
            (int(m.group(1)), k) for k in g if (m := re.match(prefix + r"-(\d+)$", k))
        )
        if rates:
            print(f"\n| paced relay, {title}: offered msg/s | delivered msg/s | p50 ms | p90 ms | p99 ms | max ms | wrong results |")
            print("|---|---|---|---|---|---|---|")
            for rate, k in rates:
                rs = g[k]
                print(
                    f"| {rate} | {med(values(rs, 'relay', 'switchboard', lambda r: r['delivered_per_sec']))}"
                    f" | {med(values(rs, 'relay', 'switchboard', lat('p50_us')), '{:.3f}')}"
                    f" | {med(values(rs, 'relay', 'switchboard', lat('p90_us')), '{:.3f}')}"
                    f" | {med(values(rs, 'relay', 'switchboard', lat('p99_us')), '{:.3f}')}"
                    f" | {med(values(rs, 'relay', 'switchboard', lat('max_us')), '{:.3f}')}"
                    f" | {wrong(rs)} |"
                )


def plots(sets, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (prefix, title) in zip(axes, (("paced", "one instance, in-process bus"), ("redis-paced", "3 instances, one Redis"))):
        for label, g in sets:
            rates = sorted((int(m.group(1)), k) for k in g if (m := re.match(prefix + r"-(\d+)$", k)))
            if not rates:
                continue
            for key, style in (("p50_us", ":"), ("p90_us", "--"), ("p99_us", "-")):
                ys = [statistics.median(values(g[k], "relay", "switchboard", lat(key)) or [0]) for _, k in rates]
                ax.plot([r for r, _ in rates], ys, style, marker="o", label=f"{label} {key[:3]}")
        ax.set_xscale("log")
        ax.set_xlabel("offered msg/s (100 senders, 200 B)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("latency, ms (median of repetitions)")
    fig.suptitle("Relay latency percentiles against offered rate")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "latency-vs-rate.png"), dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, g in sets:
        rows = sorted((int(m.group(1)), k) for k in g if (m := re.match(r"connections-(\d+)$", k)))
        if not rows:
            continue
        for target, style in (("switchboard", "-"), ("ceiling", "--")):
            ys = []
            for _, k in rows:
                vs = values(g[k], "connections", target, lambda r: r["servers"][0]["rss_after_bytes"] / 2**20)
                ys.append(statistics.median(vs) if vs else float("nan"))
            ax.plot([n for n, _ in rows], ys, style, marker="o", label=f"{label}: {target}")
    ax.set_xlabel("idle participants on one instance")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title("Server resident memory against participants")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rss-vs-participants.png"), dpi=110)


def main():
    args = sys.argv[1:]
    out = os.path.join(ROOT, "docs", "benchmarks")
    if len(args) >= 2 and args[0] == "--out":
        out, args = args[1], args[2:]
    if not args:
        sys.exit(__doc__)
    ensure_matplotlib()
    sets = []
    for a in args:
        label, _, directories = a.partition("=")
        sets.append((label, load(directories.split(","))))
    for label, g in sets:
        tables(label, g)
    plots(sets, out)
    print(f"\nplots written to {out}")


if __name__ == "__main__":
    main()
