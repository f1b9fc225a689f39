#!/usr/bin/env python3
"""Ingest speed of apgate against `sqlite3 .import`, and upload-to-receipt latency.

1. A register CSV of N rows (default 1,000,000) is ingested with `apgate ingest` (store, encrypt,
   commit, parse, validate every row, check its learner's placement, apply with history,
   receipt) into a fresh gateway whose 2,000 learners are on a school's roll and placed on the
   register's courses (not timed); in the
   same run `sqlite3 .import` loads the same CSV into a bare table of a fresh file database: the
   ceiling. Runs both side by side --runs times (a fresh database and gateway each time) and
   prints every run, the medians' rows/s and their ratio (target >= 0.5).
2. 100 small register files are put one after the other through `apgate serve` with the real
   `sftp`; the latency from the commit of each upload to its receipt is read from the database
   (both timestamps are written by the gateway). Prints p50/p99 (target p99 < 1 s).

    python3 bench/ingest.py [--rows 1000000] [--runs 3] [--files 100] [--postgres URL]
                            [--baseline OLD_APGATE_BINARY]

With --baseline (an apgate binary built from an earlier commit), each run also ingests the same
CSV with that binary into its own fresh gateway (without placements, which releases before them
did not have), so that a change is measured against the code before it in the same run.

With --postgres (a URL of a server where the benchmark may create and drop databases), the
ingest is also measured with `database.url` on PostgreSQL, beside PostgreSQL's own `COPY` of the
same CSV into a bare table of a fresh database (its ceiling).
"""

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"


def upn(n):
    body = f"801200{n:06d}"
    total = sum(int(d) * (i + 2) for i, d in enumerate(body))
    return LETTERS[total % 23] + body


REGISTER_LEARNERS = [upn(i) for i in range(1, 2001)]


def register_courses(rows):
    """The courses write_register names for `rows` rows."""
    per_course = len(REGISTER_LEARNERS) * 300
    return [f"Course {c}" for c in range(min(50, (rows + per_course - 1) // per_course))]


def write_register(path, rows):
    learners = REGISTER_LEARNERS
    start = date(2025, 9, 1)
    statuses = ["present"] * 16 + ["late", "unexplained_absence", "not_required", "dismissed_other"]
    with open(path, "w") as f:
        f.write("date,start,end,course,upn,surname,forename,status,contribution,dfe_code,note\n")
        for i in range(rows):
            learner = learners[i % len(learners)]
            day = start + timedelta(days=(i // len(learners)) % 300)
            course = f"Course {(i // (len(learners) * 300)) % 50}"
            status = statuses[i % len(statuses)]
            contribution = (i % 5) - 2 if status in ("present", "late") else ""
            f.write(f"{day},09:00,12:00,{course},{learner},Surname{i % 2000},Forename,{status},{contribution},,\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def place(binary, config, work, name, learners, courses, start):
    """Puts the learners on a school's roll and places each with prov-a on each course (SPEC
    §4.0): a register row is accepted only for a placed learner."""
    roster = os.path.join(work, f"{name}-roster.csv")
    with open(roster, "w") as f:
        f.write("upn,surname,forename,date_of_birth,gender,year_group\n")
        for i, u in enumerate(learners):
            f.write(f"{u},Surname{i},Forename,2011-03-14,F,10\n")
    placements = os.path.join(work, f"{name}-placements.csv")
    with open(placements, "w") as f:
        f.write("upn,provider,course,start_date\n")
        for c in courses:
            for u in learners:
                f.write(f"{u},prov-a,{c},{start}\n")
    for org, kind, path in (("school-a", "roster", roster), ("cap", "placements", placements)):
        subprocess.run([binary, "--config", config, "ingest", path, "--org", org, "--kind", kind],
                       check=True, capture_output=True)


def gateway(work, binary, name, extra=""):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "clients"))
    port = free_port()
    config = os.path.join(d, "apgate.yaml")
    with open(config, "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\ndata_dir: ./data\nkeys_dir: ./keys\nlog: {{ level: warn }}\n"
                "limits: { connections_per_second: 1000 }\n" + extra)

    def cli(*args):
        subprocess.run([binary, "--config", config, *args], check=True, capture_output=True)

    cli("init")
    cli("org", "add", "--kind", "hub", "--slug", "cap", "--name", "Hub")
    cli("org", "add", "--kind", "provider", "--slug", "prov-a", "--name", "Provider A")
    cli("org", "add", "--kind", "school", "--slug", "school-a", "--name", "School A")
    key = os.path.join(d, "clients", "prov")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    cli("user", "add", "--org", "prov-a", "--username", "prov-user", "--role", "coordinator", "--key-file", key + ".pub")
    return d, config, port, key


def psql(url, sql, stdin=None):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL, stdin=stdin)


def db_url(admin_url, name):
    head, _, _ = admin_url.rpartition("/")
    return f"{head}/{name}"


def ingest(binary, config, csv_path):
    t = time.monotonic()
    r = subprocess.run([binary, "--config", config, "ingest", csv_path, "--org", "prov-a", "--kind", "register"],
                       capture_output=True, text=True)
    seconds = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"apgate ingest failed: {r.stderr}")
    accepted = next((line for line in r.stdout.splitlines() if line.startswith("Result:")), "").strip()
    return seconds, accepted


def postgres_run(admin_url, work, binary, csv_path, rows):
    names = [f"apgate_bench_bare_{os.getpid()}", f"apgate_bench_{os.getpid()}"]
    for n in names:
        psql(admin_url, f"DROP DATABASE IF EXISTS {n}")
        psql(admin_url, f"CREATE DATABASE {n}")
    try:
        bare = db_url(admin_url, names[0])
        psql(bare, "CREATE TABLE marks (date text, start text, end_time text, course text, upn text, "
                   "surname text, forename text, status text, contribution text, dfe_code text, note text)")
        t = time.monotonic()
        with open(csv_path) as f:
            psql(bare, "\\copy marks FROM STDIN WITH (FORMAT csv, HEADER)", stdin=f)
        copy_s = time.monotonic() - t
        _, config, _, _ = gateway(work, binary, "apgate-postgres",
                                  f'database: {{ url: "{db_url(admin_url, names[1])}" }}\n')
        place(binary, config, work, "apgate-postgres", REGISTER_LEARNERS, register_courses(rows), "2025-09-01")
        apgate_s, accepted = ingest(binary, config, csv_path)
        print(f"PostgreSQL COPY (bare table):       {copy_s:7.2f} s  {rows / copy_s:10.0f} rows/s")
        print(f"apgate ingest on PostgreSQL:        {apgate_s:7.2f} s  {rows / apgate_s:10.0f} rows/s  "
              f"ratio {copy_s / apgate_s:.2f}   [{accepted}]")
    finally:
        for n in names:
            psql(admin_url, f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3, help="runs of the 1,000,000-row comparison (medians)")
    ap.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL server")
    ap.add_argument("--baseline", metavar="BINARY", help="an earlier apgate binary to run beside this one")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    binary = os.path.join(REPO, "target", "release", "apgate")
    work = tempfile.mkdtemp(prefix="apgate-ingest-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        csv_path = os.path.join(work, "register.csv")
        write_register(csv_path, args.rows)
        size_mb = os.path.getsize(csv_path) / 1e6

        # The ceiling: sqlite3 .import into a bare table of a fresh file database; each run
        # against a fresh database and a fresh gateway, the two side by side.
        print(f"register CSV: {args.rows} rows, {size_mb:.0f} MB; {args.runs} runs")
        sqlite_runs, apgate_runs, baseline_runs = [], [], []
        for run in range(args.runs):
            if args.baseline:
                d, config, _, _ = gateway(work, args.baseline, f"baseline-{run}")
                baseline_s, baseline_accepted = ingest(args.baseline, config, csv_path)
                baseline_runs.append(baseline_s)
                print(f"  run {run + 1}: baseline ingest {baseline_s:5.2f} s   [{baseline_accepted}]")
                shutil.rmtree(d, ignore_errors=True)
            db = os.path.join(work, f"bare-{run}.db")
            t = time.monotonic()
            subprocess.run(["sqlite3", db], input=f".mode csv\n.import {csv_path} marks\n", text=True, check=True)
            sqlite_runs.append(time.monotonic() - t)
            d, config, _, _ = gateway(work, binary, f"apgate-{run}")
            place(binary, config, work, f"apgate-{run}", REGISTER_LEARNERS, register_courses(args.rows), "2025-09-01")
            apgate_s, accepted = ingest(binary, config, csv_path)
            apgate_runs.append(apgate_s)
            print(f"  run {run + 1}: sqlite3 .import {sqlite_runs[-1]:5.2f} s, apgate ingest {apgate_s:5.2f} s, "
                  f"ratio {sqlite_runs[-1] / apgate_s:.2f}   [{accepted}]")
            shutil.rmtree(d, ignore_errors=True)
            os.remove(db)
        sqlite_s, apgate_s = statistics.median(sqlite_runs), statistics.median(apgate_runs)
        print(f"sqlite3 .import (bare table), median:      {sqlite_s:7.2f} s  {args.rows / sqlite_s:10.0f} rows/s")
        print(f"apgate ingest (validated, applied), median: {apgate_s:7.2f} s  {args.rows / apgate_s:10.0f} rows/s  "
              f"ratio {sqlite_s / apgate_s:.2f}")
        if baseline_runs:
            b = statistics.median(baseline_runs)
            print(f"baseline ingest, median:                    {b:7.2f} s  {args.rows / b:10.0f} rows/s  "
                  f"ratio {sqlite_s / b:.2f}")
        if args.postgres:
            postgres_run(args.postgres, work, binary, csv_path, args.rows)

        # Upload-close to receipt latency through the real server.
        d, config, port, key = gateway(work, binary, "latency")
        place(binary, config, work, "latency", [upn(j + 1) for j in range(10)],
              [f"C{i}" for i in range(args.files)], "2026-09-01")
        serve = subprocess.Popen([binary, "--config", config, "serve"], stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        sys.exit("serve did not start")
                    time.sleep(0.05)
            small = os.path.join(work, "small")
            os.makedirs(small)
            batch = []
            for i in range(args.files):
                p = os.path.join(small, f"reg-{i:03d}.csv")
                with open(p, "w") as f:
                    f.write("date,start,end,course,upn,surname,forename,status\n")
                    for j in range(10):
                        f.write(f"2026-11-{(i % 20) + 1:02d},09:00,12:00,C{i},{upn(j + 1)},S,F,present\n")
                batch.append(f"put {p} /registers/")
            bfile = os.path.join(work, "batch")
            with open(bfile, "w") as f:
                f.write("\n".join(batch) + "\n")
            subprocess.run(["sftp", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", key,
                            "-P", str(port), "-b", bfile, "prov-user@127.0.0.1"], check=True,
                           stdout=subprocess.DEVNULL)
        finally:
            serve.terminate()
            serve.wait()
        con = sqlite3.connect(os.path.join(d, "data", "apgate.db"))
        rows = con.execute("SELECT u.created_at, r.created_at FROM receipts r JOIN uploads u ON u.id = r.upload_id "
                           "WHERE u.folder = 'registers'").fetchall()

        def ts(s):
            return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")

        lat = sorted((ts(b) - ts(a)).total_seconds() * 1000 for a, b in rows)
        if len(lat) != args.files:
            sys.exit(f"expected {args.files} receipts, found {len(lat)}")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"upload commit -> receipt, {len(lat)} files of 10 rows: p50 {statistics.median(lat):.1f} ms, "
              f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
