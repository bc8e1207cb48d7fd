"""bench/fairness --classic: the seed experiments of issue 5, with io_limit and policy set explicitly.

(Moved from bench/fairness when it became the matrix of issue 13; the
options below follow `bench/fairness --classic`.)

The experiments of seeds/003 (dm-ioband on KVM, 2008), run through iobandd:

  1. seed:    two ioband devices in one device group, weights 80 and 20, each
              driven by one NBD client with 128 outstanding 4 KiB random
              read/write requests (O_DIRECT on the server), under the `weight`
              and the `fair` policy. Prints the seed's table.
  2. 3dev:    the same with weights 40/20/10 on three devices.
  3. lowqd:   a low-concurrency client (1, then 4 outstanding requests) at
              weight 80 against a 128-deep client at weight 20; the low one's
              throughput as a share of what it gets alone (alone and
              together alternate in 3 pairs: the median of their ratios).
  4. per-second shares of 1-3 as CSV and one PNG (gnuplot).

Each device serves its own 2 GiB file of random data on the root file system
(var/bench-fair/fair{1,2,3}.img, created once and reused).  The disk itself is
measured in the same run (fio io_uring, O_DIRECT, same workload) before and
after.  iobandd's status is sampled every second (queue length and requests
in flight per device) so that a missed target can be traced to where the
requests were: queued in the scheduler, in flight below it, or not yet sent.

Run:   bench/fairness --classic            # full: 60 s per run, ~14 min
       bench/fairness --classic --quick    # ~1 min smoke run (5 s per run), output in var/bench-fair/quick/
       bench/fairness --classic --only seed,lowqd --runtime 30
       bench/fairness --classic --diag-io-limits 64,32,16    # also rerun with smaller in-flight windows
Tables go to stdout, progress to stderr; CSV and PNG to --out-dir (docs/).
"""

import argparse
import os
import shutil

import fair_common  # noqa: E402
from fair_common import (GiB, CpuMeter, Iobandd, StatusSampler, die, drop_cache, fill_random, fio_run,  # noqa: E402
                         gnuplot, log, machine_info, median, need, pass_miss, print_machine, scratch_dir,
                         summarize_samples, write_csv, REPO)

IMAGE_SIZE = 2 * GiB
DEVICE_GROUP = 1
DEFAULT_IO_LIMIT = 128
WORKLOAD = {"ioengine": "nbd", "rw": "randrw", "bs": "4k"}

verdicts = []  # (what, ok, detail)


def verdict(what, ok, detail):
    verdicts.append((what, ok, detail))
    return pass_miss(ok)


# --------------------------------------------------------------------------
# One contended run
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args, images, workdir):
        self.args, self.images, self.workdir = args, images, workdir
        self.d = Iobandd(workdir).start()
        self.count = 0

    def setup(self, devices, policy, io_limit):
        """devices: list of (name, image index, weight)."""
        self.d.remove_all()
        for name, index, weight in devices:
            self.d.create(name, self.images[index], DEVICE_GROUP)
            self.d.message(name, "weight", weight)
        first = devices[0][0]
        self.d.message(first, "policy", policy)
        # io_throttle (default 4) may not exceed io_limit: order the two changes.
        if io_limit == "auto":  # the adaptive window, capped at the default
            self.d.message(first, "io_limit", DEFAULT_IO_LIMIT)
            self.d.message(first, "io_throttle", 4)
            self.d.message(first, "io_limit", "auto")
        elif io_limit >= 4:
            self.d.message(first, "io_limit", io_limit)
            self.d.message(first, "io_throttle", 4)
        else:
            self.d.message(first, "io_throttle", io_limit)
            self.d.message(first, "io_limit", io_limit)
        for name, _, _ in devices:
            self.d.message(name, "reset")

    def run(self, devices, clients, policy="fair", io_limit=None, runtime=None):
        """devices: (name, image index, weight); clients: (device name, iodepth).
        io_limit: a number or "auto" (default: --io-limit).
        Returns per-client fio results plus the server's view."""
        runtime = runtime or self.args.runtime
        io_limit = self.args.io_limit if io_limit is None else io_limit
        self.setup(devices, policy, io_limit)
        for _, index, _ in devices:
            drop_cache(self.images[index])
        self.count += 1
        jobs = [dict(WORKLOAD, name=dev, uri=self.d.uri(dev), iodepth=qd) for dev, qd in clients]
        sampler = StatusSampler(self.d)
        meter = CpuMeter(self.d.pid)
        sampler.start()
        results = fio_run(self.workdir, "run%d" % self.count, jobs, runtime)
        busy, daemon_cpu = meter.read()
        samples = sampler.stop()
        server = {dev["name"]: sum(g["read_requests"] + g["write_requests"] for g in dev["groups"])
                  for dev in self.d.status()}
        names = [dev for dev, _ in clients]
        return {"clients": results, "server": server, "busy": busy, "daemon_cpu": daemon_cpu,
                "diag": summarize_samples(samples, sorted(set(names)),
                                          DEFAULT_IO_LIMIT if io_limit == "auto" else io_limit),
                "policy": policy,
                "io_limit": io_limit, "runtime": runtime}

    def stop(self):
        self.d.stop()


def shares(counts):
    total = sum(counts)
    return [100.0 * c / total if total else 0.0 for c in counts]


def window_shares(per_second_lists):
    """Per-second share (%) of each client; windows with no I/O are skipped."""
    out = []
    for values in zip(*per_second_lists):
        if any(v is None for v in values):  # a window missing from one client's log
            out.append(None)
            continue
        total = sum(values)
        out.append([100.0 * v / total for v in values] if total else None)
    return out


def diag_line(r, names):
    d = r["diag"]
    text = "machine busy %.0f%%, iobandd CPU %.0f%% of a core" % (100 * r["busy"], 100 * r["daemon_cpu"])
    if d:
        text += ("; in flight (mean) %.1f of a window of %.1f (io_limit %s), window full in %.0f%% of samples; "
                 "queue empty: %s"
                 % (d["mean_in_flight"], d["mean_window"], r["io_limit"], 100 * d["window_full"],
                    ", ".join("%s %.0f%%" % (n, 100 * d[n + ".queue_empty"]) for n in names)))
        text += "; mean queued/in flight: " + ", ".join(
            "%s %.1f/%.1f" % (n, d[n + ".mean_queued"], d[n + ".mean_in_flight"]) for n in names)
        if "unread_requests_kib" in d:
            text += ("; in the sockets (mean, all connections): %.0f KiB of requests not yet read by iobandd, "
                     "%.0f KiB of replies not yet read by the clients" % (d["unread_requests_kib"], d["unread_replies_kib"]))
    return text


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def seed_table(title, names, weights, rows):
    """The seed's table: one block of (I/Os, ratio to total) per row label."""
    wtotal = sum(weights)
    col = 19
    width = 30 + (col + 1) * len(names)
    print("    " + title.center(width))
    print("     " + "-" * (width - 1))
    print("    |%s|" % "device".center(28) + "".join("%s|" % n.center(col) for n in names))
    print("    |%s|" % "weight setting".center(28) +
          "".join("%s|" % ("%d (%.1f%%)" % (w, 100.0 * w / wtotal)).center(col) for w in weights))
    for label, counts in rows:
        print("    |" + "-" * 11 + "+" + "-" * 16 + "+" + "+".join("-" * col for _ in names) + "|")
        print("    |%s|%s|" % (label.center(11), "I/Os".center(16)) + "".join("%s|" % str(c).center(col) for c in counts))
        print("    |%s|%s|" % ("".center(11), "ratio to total".center(16)) +
              "".join("%s|" % ("%.1f%%" % s).center(col) for s in shares(counts)))
    print("     " + "-" * (width - 1))


# --------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------


def exp_seed(b, out, policies=("weight", "fair")):
    names, weights = ["ioband1", "ioband2"], [80, 20]
    devices = [(n, i, w) for i, (n, w) in enumerate(zip(names, weights))]
    clients = [(n, 128) for n in names]
    runs = {}
    for policy in policies:
        log("seed 80/20, policy %s, %d s" % (policy, b.args.runtime))
        runs[policy] = b.run(devices, clients, policy=policy)
    print("== 1. Seed experiment: weights 80/20, 128 x 4 KiB random read/write each, %d s ==" % b.args.runtime)
    print()
    seed_table("The number of issued I/Os for %d seconds" % b.args.runtime, names, weights,
               [(p, [c["ios"] for c in runs[p]["clients"]]) for p in policies])
    print()
    csv_rows = {}
    for policy in policies:
        r = runs[policy]
        counts = [c["ios"] for c in r["clients"]]
        share = shares(counts)[0]
        windows = [w[0] for w in window_shares([c["per_second"] for c in r["clients"]]) if w]
        worst = max(windows, key=lambda s: abs(s - 80.0)) if windows else float("nan")
        outside = sum(1 for s in windows if abs(s - 80.0) > 5.0)
        print("%-6s ioband1 share %.1f%% (target 80); per-second share min %.1f%% max %.1f%% (%d windows), "
              "%d outside 75..85; total %.0f IOPS; server counted %s"
              % (policy, share, min(windows or [0]), max(windows or [0]), len(windows), outside,
                 sum(c["iops"] for c in r["clients"]), "/".join(str(r["server"].get(n, "?")) for n in names)))
        print("       " + diag_line(r, names))
        if policy == "fair":
            print("       target 80/20 +-2 points over the run: %s (%.1f)" %
                  (verdict("seed fair: 80/20 +-2 over the run", abs(share - 80) <= 2, "%.1f%%" % share), share))
            print("       target every 1-s window within +-5 points: %s (worst %.1f%%, %d of %d outside)" %
                  (verdict("seed fair: every 1-s window 80 +-5", windows != [] and outside == 0,
                           "worst %.1f%%, %d/%d outside" % (worst, outside, len(windows))), worst, outside, len(windows)))
        else:
            print("       target 80/20 +-3 points over the run: %s (%.1f)" %
                  (verdict("seed weight: 80/20 +-3 over the run", abs(share - 80) <= 3, "%.1f%%" % share), share))
        for k, c in enumerate(r["clients"]):
            for second, value in enumerate(c["per_second"], 1):
                csv_rows.setdefault(second, {})["%s_%s" % (policy, names[k])] = value
        print()
    header = ["second"]
    for policy in policies:
        header += ["%s_%s_ios" % (policy, n) for n in names] + ["%s_share_ioband1" % policy]
    rows = []
    for second in sorted(csv_rows):
        row = [second]
        for policy in policies:
            vals = [csv_rows[second].get("%s_%s" % (policy, n)) for n in names]
            row += vals + [100.0 * vals[0] / sum(vals) if None not in vals and sum(vals) else None]
        rows.append(row)
    write_csv(os.path.join(out, "fairness-seed.csv"), header, rows,
              "bench/fairness: seed experiment, weights 80/20, per-second I/Os (fio iops log) and share of ioband1 (%)")
    return runs


def exp_3dev(b, out, policies=("weight", "fair")):
    names, weights = ["ioband1", "ioband2", "ioband3"], [40, 20, 10]
    targets = [100.0 * w / sum(weights) for w in weights]
    devices = [(n, i, w) for i, (n, w) in enumerate(zip(names, weights))]
    clients = [(n, 128) for n in names]
    runs = {}
    for policy in policies:
        log("40/20/10, policy %s, %d s" % (policy, b.args.runtime))
        runs[policy] = b.run(devices, clients, policy=policy)
    print("== 2. Weights 40/20/10 on three devices (dm-ioband's 2008 test), 128 x 4 KiB random r/w each, %d s =="
          % b.args.runtime)
    print()
    seed_table("The number of issued I/Os for %d seconds" % b.args.runtime, names, weights,
               [(p, [c["ios"] for c in runs[p]["clients"]]) for p in policies])
    print()
    csv = {}
    for policy in policies:
        r = runs[policy]
        s = shares([c["ios"] for c in r["clients"]])
        ok = all(abs(x - t) <= 1.5 for x, t in zip(s, targets))
        windows = [w for w in window_shares([c["per_second"] for c in r["clients"]]) if w]
        spread = ["%s %.1f..%.1f" % (n, min(w[k] for w in windows), max(w[k] for w in windows))
                  for k, n in enumerate(names)] if windows else []
        print("%-6s shares %s (target %s, each +-1.5): %s; per-second range %s; total %.0f IOPS"
              % (policy, "/".join("%.1f" % x for x in s), "/".join("%.1f" % t for t in targets),
                 verdict("40/20/10 %s: each share +-1.5" % policy, ok, "/".join("%.1f" % x for x in s)),
                 ", ".join(spread), sum(c["iops"] for c in r["clients"])))
        print("       " + diag_line(r, names))
        for k, c in enumerate(r["clients"]):
            for second, value in enumerate(c["per_second"], 1):
                csv.setdefault(second, {})["%s_%s" % (policy, names[k])] = value
    print()
    header = ["second"]
    for policy in policies:
        header += ["%s_%s_ios" % (policy, n) for n in names] + ["%s_share_%s" % (policy, n) for n in names]
    rows = []
    for second in sorted(csv):
        row = [second]
        for policy in policies:
            vals = [csv[second].get("%s_%s" % (policy, n)) for n in names]
            ok = None not in vals and sum(vals) > 0
            row += vals + [100.0 * v / sum(vals) if ok else None for v in vals]
        rows.append(row)
    write_csv(os.path.join(out, "fairness-3dev.csv"), header, rows,
              "bench/fairness: weights 40/20/10, per-second I/Os (fio iops log) and shares (%)")
    return runs


def combine_runs(runs):
    """Runs of the same clients one after the other, as one: I/Os and
    seconds summed, latency percentiles the median of the runs', per-second
    series joined; the server's view of the last run."""
    clients = []
    for k in range(len(runs[0]["clients"])):
        parts = [r["clients"][k] for r in runs]
        ios, secs = sum(c["ios"] for c in parts), sum(c["seconds"] for c in parts)
        clients.append({"name": parts[0]["name"], "ios": ios, "seconds": secs, "iops": ios / secs if secs else 0.0,
                        "p50": median([c["p50"] for c in parts if c["p50"] is not None]),
                        "p99": median([c["p99"] for c in parts if c["p99"] is not None]),
                        "per_second": [v for c in parts for v in c["per_second"]]})
    return dict(runs[-1], clients=clients, runtime=sum(r["runtime"] for r in runs))


def exp_lowqd(b, out, depths=(1, 4), policy="fair"):
    names = ["ioband1", "ioband2"]
    devices = [("ioband1", 0, 80), ("ioband2", 1, 20)]
    # Alone and together alternate in `pairs` pairs of runtime/pairs seconds:
    # the disk's own rate drifts by tens of percent over a minute here, and
    # a client's rate "alone" is only worth comparing with one measured
    # next to it. kept = the median of the pairs' ratios.
    pairs = max(1, min(b.args.lowqd_pairs, b.args.runtime // 5))
    piece = b.args.runtime // pairs
    result, kept_pairs = {}, {}
    for qd in depths:
        solos, boths = [], []
        for k in range(pairs):
            log("low concurrency: QD%d alone, %d s (pair %d of %d)" % (qd, piece, k + 1, pairs))
            solos.append(b.run(devices, [("ioband1", qd)], policy=policy, runtime=piece))
            log("low concurrency: QD%d (weight 80) against QD128 (weight 20), %d s (pair %d of %d)"
                % (qd, piece, k + 1, pairs))
            boths.append(b.run(devices, [("ioband1", qd), ("ioband2", 128)], policy=policy, runtime=piece))
        kept_pairs[qd] = [bo["clients"][0]["iops"] / so["clients"][0]["iops"] if so["clients"][0]["iops"] else 0.0
                          for so, bo in zip(solos, boths)]
        result[qd] = (combine_runs(solos), combine_runs(boths))
    print("== 3. Low-concurrency client at weight 80 against a 128-deep client at weight 20 (policy %s), %d s =="
          % (policy, b.args.runtime))
    if pairs > 1:
        print("(alone and together alternate in %d pairs of %d s; I/Os are the sums, kept is the median of the pairs)"
              % (pairs, piece))
    print()
    col = 19
    print("    " + ("The number of issued I/Os for %d seconds" % b.args.runtime).center(30 + 2 * (col + 1)))
    print("     " + "-" * (29 + 2 * (col + 1)))
    print("    |%s|%s|%s|" % ("issue from".center(28), "low-concurrency".center(col), "128 outstanding".center(col)))
    print("    |%s|%s|%s|" % ("device".center(28), names[0].center(col), names[1].center(col)))
    print("    |%s|%s|%s|" % ("weight setting".center(28), "80%".center(col), "20%".center(col)))
    for qd in depths:
        solo, both = result[qd]
        counts = [c["ios"] for c in both["clients"]]
        s = shares(counts)
        print("    |" + "-" * 11 + "+" + "-" * 16 + "+" + "-" * col + "+" + "-" * col + "|")
        print("    |%s|%s|%s|%s|" % (("QD%d" % qd).center(11), "I/Os".center(16), str(counts[0]).center(col),
                                   str(counts[1]).center(col)))
        print("    |%s|%s|%s|%s|" % ("".center(11), "ratio to total".center(16), ("%.1f%%" % s[0]).center(col),
                                   ("%.1f%%" % s[1]).center(col)))
        print("    |%s|%s|%s|%s|" % ("".center(11), "alone".center(16), str(solo["clients"][0]["ios"]).center(col),
                                   "".center(col)))
    print("     " + "-" * (29 + 2 * (col + 1)))
    print()
    csv_cols = {}
    for qd in depths:
        solo, both = result[qd]
        low_solo, low_both = solo["clients"][0], both["clients"][0]
        kept = median(kept_pairs[qd])
        print("QD%-3d alone %.0f IOPS (p50 %.0f us, p99 %.0f us); against QD128: %.0f IOPS (p50 %.0f us, p99 %.0f us) "
              "= %.1f%% of alone%s (target >= 90%%): %s" %
              (qd, low_solo["iops"], low_solo["p50"] or 0, low_solo["p99"] or 0, low_both["iops"], low_both["p50"] or 0,
               low_both["p99"] or 0, 100 * kept,
               " (median of pairs %s)" % ", ".join("%.1f%%" % (100 * x) for x in kept_pairs[qd])
               if len(kept_pairs[qd]) > 1 else "",
               verdict("low concurrency QD%d at weight 80 keeps >= 90%% of alone" % qd, kept >= 0.9,
                       "%.1f%%" % (100 * kept))))
        print("       the QD128 client (weight 20) did %.0f IOPS; alone: %s" % (both["clients"][1]["iops"], diag_line(solo, names[:1])))
        print("       together: " + diag_line(both, names))
        csv_cols["qd%d_alone" % qd] = low_solo["per_second"]
        csv_cols["qd%d_with_qd128" % qd] = low_both["per_second"]
        csv_cols["qd128_with_qd%d" % qd] = both["clients"][1]["per_second"]
    print()
    header = ["second"] + list(csv_cols)
    n = max(len(v) for v in csv_cols.values())
    rows = [[k + 1] + [v[k] if k < len(v) else None for v in csv_cols.values()] for k in range(n)]
    write_csv(os.path.join(out, "fairness-lowqd.csv"), header, rows,
              "bench/fairness: low-concurrency client (weight 80) alone and against a QD128 client (weight 20); "
              "I/Os per second")
    return result


def exp_diag(b, io_limits):
    """Reruns the seed under fair and the QD1 client with smaller in-flight
    windows: where the share is lost, and what a smaller io_limit costs."""
    names = ["ioband1", "ioband2"]
    devices = [("ioband1", 0, 80), ("ioband2", 1, 20)]
    rt = b.args.diag_runtime
    print("== Diagnosis: the same runs with smaller io_limit (in-flight window of the device group), %d s each ==" % rt)
    print()
    print("%-9s | %-44s | %-40s" % ("io_limit", "seed 80/20 (fair): share, worst 1-s, IOPS", "QD1 w80 vs QD128 w20: QD1 IOPS, % alone"))
    solo = b.run(devices, [("ioband1", 1)], runtime=rt)
    for lim in io_limits:
        log("diagnosis: io_limit %s" % lim)
        seed = b.run(devices, [(n, 128) for n in names], io_limit=lim, runtime=rt)
        counts = [c["ios"] for c in seed["clients"]]
        windows = [w[0] for w in window_shares([c["per_second"] for c in seed["clients"]]) if w]
        worst = max(windows, key=lambda s: abs(s - 80.0)) if windows else float("nan")
        low = b.run(devices, [("ioband1", 1), ("ioband2", 128)], io_limit=lim, runtime=rt)
        kept = low["clients"][0]["iops"] / solo["clients"][0]["iops"] if solo["clients"][0]["iops"] else 0
        print("%-9s | %5.1f%%, worst %5.1f%%, %6.0f IOPS (%s) | %6.0f IOPS, %5.1f%% (total %.0f IOPS)"
              % (lim, shares(counts)[0], worst, sum(c["iops"] for c in seed["clients"]),
                 "W %.0f, full %.0f%%" % (seed["diag"]["mean_window"], 100 * seed["diag"]["window_full"])
                 if seed["diag"] else "?",
                 low["clients"][0]["iops"], 100 * kept, sum(c["iops"] for c in low["clients"])))
    print("(alone: QD1 %.0f IOPS)" % solo["clients"][0]["iops"])
    print()


# --------------------------------------------------------------------------
# The disk itself
# --------------------------------------------------------------------------


def disk_baseline(images, workdir, runtime, label):
    """fio's io_uring engine, O_DIRECT, on the image files: the same 4 KiB
    random read/write at the depths the experiments use."""
    rows = []
    for qd, files in ((1, 1), (4, 1), (128, 1), (128, 2)):
        for path in images[:files]:
            drop_cache(path)
        jobs = [{"name": "disk%d" % k, "filename": images[k], "ioengine": "io_uring", "direct": 1,
                 "rw": "randrw", "bs": "4k", "iodepth": qd} for k in range(files)]
        res = fio_run(workdir, "disk-%s-%d-%d" % (label, qd, files), jobs, runtime)
        rows.append((qd, files, sum(r["iops"] for r in res), median([r["p50"] for r in res]),
                     median([r["p99"] for r in res])))
    return rows


def print_disk(baselines):
    print("== The disk itself: fio io_uring O_DIRECT on the image files, 4 KiB random r/w ==")
    print()
    print("%-22s | %s" % ("depth", " | ".join("%-30s" % label for label, _ in baselines)))
    for i, (qd, files, _, _, _) in enumerate(baselines[0][1]):
        cells = []
        for _, rows in baselines:
            _, _, iops, p50, p99 = rows[i]
            cells.append("%-30s" % ("%6.0f IOPS p50 %5.0f p99 %6.0f us" % (iops, p50 or 0, p99 or 0)))
        print("%-22s | %s" % ("QD%d x %d file(s)" % (qd, files), " | ".join(cells)))
    print()


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot(out, workdir, runtime, mode, have):
    png = os.path.join(out, "fairness-shares.png")
    panels = sum(1 for k in ("seed", "3dev", "lowqd") if k in have)
    parts = ["set terminal pngcairo size 1000,%d font 'sans,10'" % (330 * panels),
             "set output '%s'" % png, "set datafile separator ','", "set key outside right top",
             "set grid", "set multiplot layout %d,1 title 'bench/fairness (%s), per-second shares over the run'"
             % (panels, mode), "set xrange [0:%d]" % (runtime + 1)]
    seed = os.path.join(out, "fairness-seed.csv")
    if "seed" in have:
        parts += ["set title 'Seed 80/20: share of ioband1 (weight 80), 128 outstanding each'",
                  "set ylabel 'share of I/Os (%)'", "set yrange [0:100]",
                  "plot '%s' using 1:4 with linespoints lw 2 title 'weight', "
                  "'' using 1:7 with linespoints lw 2 title 'fair', "
                  "80 with lines dt 2 lc 'black' title 'target 80', "
                  "75 with lines dt 3 lc 'gray' title '+-5 points', 85 with lines dt 3 lc 'gray' notitle" % seed]
    if "3dev" in have:
        f = os.path.join(out, "fairness-3dev.csv")
        parts += ["set title 'Weights 40/20/10: shares (solid: fair, dashed: weight)'",
                  "set ylabel 'share of I/Os (%)'", "set yrange [0:100]",
                  "plot '%s' using 1:11 with lines lw 2 lc 1 title 'ioband1 (40)', "
                  "'' using 1:12 with lines lw 2 lc 2 title 'ioband2 (20)', "
                  "'' using 1:13 with lines lw 2 lc 3 title 'ioband3 (10)', "
                  "'' using 1:5 with lines dt 2 lc 1 notitle, '' using 1:6 with lines dt 2 lc 2 notitle, "
                  "'' using 1:7 with lines dt 2 lc 3 notitle, "
                  "57.1 with lines dt 3 lc 'black' title 'targets', 28.6 with lines dt 3 lc 'black' notitle, "
                  "14.3 with lines dt 3 lc 'black' notitle" % f]
    if "lowqd" in have:
        f = os.path.join(out, "fairness-lowqd.csv")
        parts += ["set title 'Low-concurrency client (weight 80): I/Os per second alone and against QD128 (weight 20)'",
                  "set ylabel 'I/Os per second'", "set yrange [0:*]", "set xlabel 'second'",
                  "plot '%s' using 1:2 with lines lw 2 lc 1 title 'QD1 alone', "
                  "'' using 1:3 with lines lw 2 dt 2 lc 1 title 'QD1 vs QD128', "
                  "'' using 1:5 with lines lw 2 lc 2 title 'QD4 alone', "
                  "'' using 1:6 with lines lw 2 dt 2 lc 2 title 'QD4 vs QD128'" % f]
    parts.append("unset multiplot")
    if gnuplot("\n".join(parts) + "\n", workdir):
        log("plot: " + png)


# --------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench/fairness --classic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 s per run, no diagnosis (~1 min)")
    ap.add_argument("--runtime", type=int, help="seconds per run (default 60, --quick 5)")
    ap.add_argument("--only", default="seed,3dev,lowqd", help="experiments: seed,3dev,lowqd (default all)")
    ap.add_argument("--lowqd-pairs", type=int, default=3,
                    help="lowqd: alone and together alternate in this many pairs of runtime/N seconds (default 3)")
    ap.add_argument("--image-dir", default=os.path.join(REPO, "var", "bench-fair"),
                    help="where the 2 GiB images live (created once, reused)")
    ap.add_argument("--out-dir", help="CSV and PNG (default docs/, --quick: IMAGE_DIR/quick)")
    ap.add_argument("--io-limit", default="auto",
                    help="io_limit of the device group in experiments 1-3: a number or auto (default auto, the "
                         "learned window; dm-ioband's default is 128)")
    ap.add_argument("--diag-io-limits", help="also rerun with these io_limit values, numbers or auto (default 128,32,8; --quick: none)")
    ap.add_argument("--diag-runtime", type=int, help="seconds per diagnosis run (default 20, --quick 4)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (fio logs, job files)")
    ap.add_argument("--baseline-runtime", type=int, help="seconds per disk baseline run (default 10, --quick 2)")
    args = ap.parse_args(argv)
    args.runtime = args.runtime or (5 if args.quick else 60)
    args.diag_runtime = args.diag_runtime or (4 if args.quick else 20)
    baseline_rt = args.baseline_runtime or (2 if args.quick else 10)
    if args.diag_io_limits is None:
        args.diag_io_limits = "" if args.quick else "128,32,8"
    diag_limits = [x if x == "auto" else int(x) for x in args.diag_io_limits.split(",") if x]
    if args.io_limit != "auto":
        try:
            args.io_limit = int(args.io_limit)
        except ValueError:
            die("--io-limit: expected a number or auto, not %r" % args.io_limit)
    only = set(args.only.split(","))
    out = args.out_dir or (os.path.join(args.image_dir, "quick") if args.quick else os.path.join(REPO, "docs"))
    need("fio", "gnuplot", fair_common.IOBANDD, fair_common.IOBANDCTL)
    os.makedirs(out, exist_ok=True)
    os.makedirs(args.image_dir, exist_ok=True)
    images = [os.path.join(args.image_dir, "fair%d.img" % k) for k in (1, 2, 3)]
    for path in images:
        fill_random(path, IMAGE_SIZE)
    workdir = scratch_dir("bench-fair.")
    print("bench/fairness (%s), %d s per run, io_limit %s" % ("quick" if args.quick else "full", args.runtime,
                                                             args.io_limit))
    print_machine(machine_info({"images": args.image_dir}), " ".join(["bench/fairness", "--classic"] + (argv or [])))
    baselines = [("before", disk_baseline(images, workdir, baseline_rt, "before"))]
    b = Bench(args, images, workdir)
    have = set()
    try:
        if "seed" in only:
            exp_seed(b, out)
            have.add("seed")
        if "3dev" in only:
            exp_3dev(b, out)
            have.add("3dev")
        if "lowqd" in only:
            exp_lowqd(b, out)
            have.add("lowqd")
        if diag_limits:
            exp_diag(b, diag_limits)
    finally:
        b.d.remove_all()
        b.stop()
    if not args.quick:
        baselines.append(("after", disk_baseline(images, workdir, baseline_rt, "after")))
    print_disk(baselines)
    if have:
        plot(out, workdir, args.runtime, "quick" if args.quick else "full", have)
    print("== Targets ==")
    for what, ok, detail in verdicts:
        print("%-4s  %-55s %s" % (pass_miss(ok), what, detail))
    print("CSV and PNG in %s" % out + ("; scratch files in %s" % workdir if args.keep else ""))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


