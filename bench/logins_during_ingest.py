#!/usr/bin/env python3
"""Logins of another user while a large file is applied (SPEC §8: one organisation's large file
must not hold the database lock so long that other users' logins fail). A fresh gateway on
SQLite (as bench/ingest.py builds it) takes a 1,000,000-row register from a provider and then a
50,000-row referral CSV from a school, each put with the real `sftp`; meanwhile a school user
logs in and lists `/` again and again. Prints, per file, how long its upload and apply took and
how the logins fared (all must succeed; the slowest waited for the write lock).

    python3 bench/logins_during_ingest.py
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ingest as b  # noqa: E402  (the gateway set-up of bench/ingest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    binary = os.path.join(REPO, "target", "release", "apgate")
    work = tempfile.mkdtemp(prefix="apgate-logins-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    d, config, port, key = b.gateway(work, binary, "g")
    b.place(binary, config, work, "g", b.REGISTER_LEARNERS, b.register_courses(1_000_000), "2025-09-01")
    # The user who logs in meanwhile.
    skey = os.path.join(d, "clients", "school")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", skey], check=True)
    subprocess.run([binary, "--config", config, "user", "add", "--org", "school-a", "--username", "school-user", "--role", "coordinator", "--key-file", skey + ".pub"], check=True, capture_output=True)
    reg = os.path.join(work, "reg.csv")
    b.write_register(reg, 1_000_000)
    # A 50,000-row referral CSV from the school.
    ref = os.path.join(work, "ref.csv")
    with open(ref, "w") as f:
        f.write("tier,student.upn,student.forename,student.surname,student.date_of_birth,school.name,parent_carer.name,parent_carer.phone,safeguarding.concerns,attendance.percentage,behaviour.summary,academic.attainment,provision.requested_courses,risk_assessment.date_completed\n")
        today = time.strftime("%Y-%m-%d")
        for i in range(50_000):
            f.write(f"2,{b.upn(100000 + i)},Sam,Taylor,14/03/2011,School A,Pat,0770,None,82.5,OK,G4,MV L1,{today}\n")
    serve = subprocess.Popen([binary, "--config", config, "serve"], stderr=subprocess.DEVNULL)
    time.sleep(2)
    def sftp(k, user, batch):
        bf = os.path.join(work, f"b-{time.monotonic_ns()}")
        open(bf, "w").write(batch)
        t = time.monotonic()
        r = subprocess.run(["sftp", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", k, "-P", str(port), "-b", bf, user], capture_output=True)
        return time.monotonic() - t, r.returncode
    try:
        for label, k, user, path, folder in [("1,000,000-row register", key, "prov-user@127.0.0.1", reg, "/registers/"), ("50,000-row referral CSV", skey, "school-user@127.0.0.1", ref, "/referrals/")]:
            res = {}
            th = threading.Thread(target=lambda: res.setdefault("up", sftp(k, user, f"put {path} {folder}\n")))
            th.start()
            logins = []
            while th.is_alive():
                logins.append(sftp(skey, "school-user@127.0.0.1", "ls /\n"))
            th.join()
            ok = sum(1 for _, rc in logins if rc == 0)
            times = [t for t, _ in logins]
            print(f"{label}: upload+apply {res['up'][0]:.1f} s (rc {res['up'][1]}); logins during it: {ok}/{len(logins)} succeeded, median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    finally:
        serve.terminate()
        serve.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
