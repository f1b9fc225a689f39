#!/usr/bin/env python3
"""Throughput of apgate against OpenSSH's sshd + internal-sftp, side by side on loopback.

Both servers run on 127.0.0.1 with their files on tmpfs; the same OpenSSH `sftp` client moves the
same file with the same cipher. apgate encrypts at rest with age, sshd stores plaintext. For each
cipher and direction: median MB/s of N runs, server CPU seconds per GiB, the client's (sftp + ssh)
CPU seconds per GiB, and the ratio apgate/OpenSSH. First, 200 concurrent sessions each upload
100 KiB: wall time, apgate's peak RSS, and the peak summed PSS of sshd with all its children
(sampled every 0.2 s).

Before timing, each server takes one untimed upload and download, so neither pays for the first
touch of fresh tmpfs memory in its first timed run. Downloads are written by the client to
/dev/null (`--download-to null`, the default): written to a tmpfs file instead, the client's own
page allocation is the bottleneck of both servers and varies twofold from run to run, which hides
the servers. `--download-to file` measures that way. Either way, one untimed apgate download per
cipher is written to a file and compared with the source.

    python3 bench/throughput.py [--size-mib 1024] [--runs 3] [--sessions 200] [--download-to null] [--scan]

With `--scan`, a clamd of the benchmark's own (Debian's clamav-daemon; one test signature, as
no signature database can be downloaded here; its TemporaryDirectory on --tmp) scans every apgate
upload (`scan.clamd`), and `clamdscan --stream` of the same file gives clamd's own speed: the
ceiling for an upload that is scanned as it arrives.

Needs: cargo, OpenSSH client and server (/usr/sbin/sshd), ssh-keygen. Not part of the test suite.
"""

import argparse
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")
CIPHERS = ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def cpu_seconds(pid, children=False):
    """utime+stime of a process (and of its reaped children when asked), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK


def descendants(pid):
    """pid and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def summed_pss_mib(pid):
    """Proportional set size of pid and its descendants (shared pages counted once in all)."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 1024


class PeakPss:
    """Samples the summed PSS of a process tree every 0.2 s while in a `with` block."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0.0, False

    def __enter__(self):
        import threading

        def run():
            while not self.stop:
                self.peak = max(self.peak, summed_pss_mib(self.pid))
                time.sleep(0.2)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sftp(port, key, user, cipher, batch_text, work, extra=()):
    batch = os.path.join(work, f"batch-{time.monotonic_ns()}")
    with open(batch, "w") as f:
        f.write(batch_text)
    cmd = [
        "sftp", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", f"UserKnownHostsFile={work}/known_hosts", "-o", "IdentitiesOnly=yes",
        "-o", f"Ciphers={cipher}", "-o", "LogLevel=ERROR", "-i", key, "-P", str(port),
        *extra, "-b", batch, f"{user}@127.0.0.1",
    ]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if r.returncode != 0:
        sys.exit(f"sftp failed: {r.stdout}{r.stderr}")
    return elapsed


class Clamd:
    def __init__(self, work):
        self.dir = os.path.join(work, "clamd")
        os.makedirs(os.path.join(self.dir, "db"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        # The EICAR file, as a body signature (its hex here, so no file of the repo is one).
        eicar = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR" + b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
        with open(os.path.join(self.dir, "db", "bench.ndb"), "w") as f:
            f.write(f"Eicar-Test-Signature:0:*:{eicar.hex()}\n")
        self.socket = os.path.join(self.dir, "clamd.sock")
        self.conf = os.path.join(self.dir, "clamd.conf")
        with open(self.conf, "w") as f:
            f.write(f"LocalSocket {self.socket}\nDatabaseDirectory {self.dir}/db\n"
                    f"TemporaryDirectory {self.dir}/tmp\nForeground yes\nBytecode no\n"
                    "StreamMaxLength 4000M\nMaxFileSize 4000M\nMaxScanSize 4000M\n")
        self.proc = subprocess.Popen(["/usr/sbin/clamd", f"--config-file={self.conf}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                    s.sendall(b"zPING\0")
                    if s.recv(5) == b"PONG\0":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("clamd did not start")
            time.sleep(0.2)

    def scan_seconds(self, path):
        start = time.monotonic()
        r = subprocess.run(["clamdscan", f"--config-file={self.conf}", "--stream", "--no-summary", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"clamdscan failed: {r.stdout}{r.stderr}")
        return time.monotonic() - start

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Apgate:
    def __init__(self, work, binary, clamd=None):
        self.dir = os.path.join(work, "apgate")
        os.makedirs(os.path.join(self.dir, "clients"))
        self.port = free_port()
        self.binary = binary
        self.config = os.path.join(self.dir, "apgate.yaml")
        with open(self.config, "w") as f:
            f.write(
                f"listen: 127.0.0.1:{self.port}\ndata_dir: ./data\nkeys_dir: ./keys\n"
                "limits: { max_file_size: 8GiB, quota_per_org: 1TiB, sessions_per_user: 2000,\n"
                "          connections_per_second: 2000, handles_per_session: 64,\n"
                "          max_startups: 2000, max_startups_per_address: 2000, uploads_per_user: 2000 }\n"
                "log: { level: warn }\n"
            )
            if clamd:
                f.write(f'scan: {{ clamd: "unix:{clamd.socket}", on_error: refuse, timeout_s: 600 }}\n')
        self.cli("init")
        for slug, kind in [("cap", "hub"), ("school-a", "school")]:
            self.cli("org", "add", "--kind", kind, "--slug", slug, "--name", slug)
            key = os.path.join(self.dir, "clients", slug)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
            self.cli("user", "add", "--org", slug, "--username", f"{slug}-user", "--role", "coordinator",
                     "--key-file", key + ".pub")
        log = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen([binary, "--config", self.config, "serve"], stderr=log)
        wait_port(self.port)

    def cli(self, *args):
        subprocess.run([self.binary, "--config", self.config, *args], check=True, capture_output=True)

    def key(self, slug):
        return os.path.join(self.dir, "clients", slug)

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def drop_stored(self):
        shutil.rmtree(os.path.join(self.dir, "data", "store"), ignore_errors=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class OpenSSH:
    def __init__(self, work):
        self.dir = os.path.join(work, "sshd")
        os.makedirs(os.path.join(self.dir, "files"))
        self.port = free_port()
        hostkey = os.path.join(self.dir, "host_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey], check=True)
        key = os.path.join(self.dir, "client")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        shutil.copy(key + ".pub", os.path.join(self.dir, "authorized_keys"))
        self.key = key
        self.user = os.environ.get("USER") or "root"
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {hostkey}\n"
                f"PidFile {self.dir}/sshd.pid\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
                "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
                "MaxStartups 1000:30:1000\nMaxSessions 1000\n"
            )
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", config, "-E", f"{self.dir}/log"])
        wait_port(self.port)

    def cpu(self):
        return cpu_seconds(self.proc.pid, children=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def client_cpu():
    """CPU seconds of the reaped clients (sftp and the ssh it runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(run, cpu, size):
    before, client_before = cpu(), client_cpu()
    seconds = run()
    time.sleep(0.3)  # let the server finish its side of the close
    used, client = cpu() - before, client_cpu() - client_before
    gib = size / 2**30
    return size / seconds / 1e6, used / gib, client / gib


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--ciphers", default=",".join(CIPHERS), help="comma-separated OpenSSH cipher names")
    ap.add_argument("--binary", help="an apgate binary to measure instead of building this checkout")
    ap.add_argument("--scan", action="store_true",
                    help="scan apgate's uploads with a clamd of the benchmark's own, and time clamdscan --stream")
    ap.add_argument("--download-to", choices=["null", "file"], default="null",
                    help="where the client writes downloads: /dev/null, or a file on --tmp")
    args = ap.parse_args()

    binary = args.binary
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
        binary = os.path.join(REPO, "target", "release", "apgate")
    work = tempfile.mkdtemp(prefix="apgate-bench-", dir=args.tmp)
    size = args.size_mib * 2**20
    src = os.path.join(work, "source.bin")
    with open(src, "wb") as f:
        chunk = os.urandom(2**20)
        for _ in range(args.size_mib):
            f.write(chunk)
    back = os.path.join(work, "back.bin")
    sink = "/dev/null" if args.download_to == "null" else back
    source_sha = sha256_of(src)

    clamd = Clamd(work) if args.scan else None
    ag, ssh = Apgate(work, binary, clamd), OpenSSH(work)
    print(f"file {args.size_mib} MiB on {args.tmp or 'the default temp dir'}; median of {args.runs} runs; "
          f"downloads to {sink}; "
          f"OpenSSH client: {subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")
    try:
        if args.sessions > 0:
            # Many small sessions at once (first, so apgate's peak RSS is theirs alone).
            small = os.path.join(work, "small.bin")
            with open(small, "wb") as f:
                f.write(os.urandom(100 * 1024))

            def one(i, port, key, user, dest):
                return sftp(port, key, user, CIPHERS[0], f"put {small} {dest}/s-{i}.bin\n", work)

            for label, port, key, user, dest, pid in [
                ("OpenSSH", ssh.port, ssh.key, ssh.user, os.path.join(ssh.dir, "files"), ssh.proc.pid),
                ("apgate", ag.port, ag.key("school-a"), "school-a-user", "/outbox/coordinator", ag.proc.pid),
            ]:
                start = time.monotonic()
                with PeakPss(pid) as pss, ThreadPoolExecutor(max_workers=args.sessions) as pool:
                    list(pool.map(lambda i: one(i, port, key, user, dest), range(args.sessions)))
                wall = time.monotonic() - start
                extra = f", peak summed PSS {pss.peak:.0f} MiB (sshd and its children)" if label == "OpenSSH" else ""
                if label == "apgate":
                    extra = f", apgate peak RSS {peak_rss_mib(ag.proc.pid):.0f} MiB (peak PSS sampled {pss.peak:.0f} MiB)"
                print(f"{args.sessions} concurrent sessions x 100 KiB to {label}: all succeeded in {wall:.2f} s{extra}")
        # Warm-up: one untimed upload and download through each server.
        warm = CIPHERS[0]
        sftp(ssh.port, ssh.key, ssh.user, warm, f"put {src} {ssh.dir}/files/warm.bin\n", work)
        sftp(ssh.port, ssh.key, ssh.user, warm, f"get {ssh.dir}/files/warm.bin {sink}\n", work)
        os.remove(os.path.join(ssh.dir, "files", "warm.bin"))
        sftp(ag.port, ag.key("cap"), "cap-user", warm,
             f"put {src} /outbox/school-a/coordinator/warm.bin\n", work)
        sftp(ag.port, ag.key("school-a"), "school-a-user", warm, f"get /inbox/warm.bin {sink}\n", work)
        ag.drop_stored()
        if os.path.exists(back):
            os.remove(back)
        if clamd:
            runs = []
            for _ in range(args.runs):
                before = clamd.cpu()
                seconds = clamd.scan_seconds(src)
                runs.append((size / seconds / 1e6, (clamd.cpu() - before) / (size / 2**30)))
            print(f"clamdscan --stream of the same file (clamd's own speed, the ceiling): "
                  f"{statistics.median(r[0] for r in runs):.0f} MB/s, clamd CPU "
                  f"{statistics.median(r[1] for r in runs):.2f} s/GiB; runs "
                  f"{' '.join(f'{r[0]:.0f}' for r in runs)}; apgate uploads below are scanned")

        print(f"{'cipher':32} {'dir':5} {'OpenSSH MB/s':>12} {'apgate MB/s':>12} {'ratio':>6} "
              f"{'sshd CPU s/GiB':>15} {'apgate CPU s/GiB':>17} {'client CPU s/GiB (OpenSSH, apgate)':>35}")
        for cipher in args.ciphers.split(","):
            rows = {"up": ([], []), "down": ([], [])}
            for i in range(args.runs):
                name = f"big-{i}.bin"
                # OpenSSH, plaintext on disk.
                rows["up"][0].append(measure(
                    lambda: sftp(ssh.port, ssh.key, ssh.user, cipher,
                                 f"put {src} {ssh.dir}/files/{name}\n", work), ssh.cpu, size))
                rows["down"][0].append(measure(
                    lambda: sftp(ssh.port, ssh.key, ssh.user, cipher,
                                 f"get {ssh.dir}/files/{name} {sink}\n", work), ssh.cpu, size))
                os.remove(os.path.join(ssh.dir, "files", name))
                if os.path.exists(back):
                    os.remove(back)
                # apgate, age at rest.
                stored = f"{cipher[:6]}-{name}"
                rows["up"][1].append(measure(
                    lambda: sftp(ag.port, ag.key("cap"), "cap-user", cipher,
                                 f"put {src} /outbox/school-a/coordinator/{stored}\n", work),
                    ag.cpu, size))
                rows["down"][1].append(measure(
                    lambda: sftp(ag.port, ag.key("school-a"), "school-a-user", cipher,
                                 f"get /inbox/{stored} {sink}\n", work), ag.cpu, size))
                if os.path.exists(back):
                    os.remove(back)
                if i + 1 == args.runs:
                    # Untimed: what apgate sends back is the file that was sent.
                    sftp(ag.port, ag.key("school-a"), "school-a-user", cipher,
                         f"get /inbox/{stored} {back}\n", work)
                    if sha256_of(back) != source_sha:
                        sys.exit("apgate download differs from the file uploaded")
                    os.remove(back)
                ag.drop_stored()
            for direction, (o, a) in rows.items():
                o_mbs, a_mbs, o_cpu, a_cpu, o_cl, a_cl = (
                    statistics.median(x[k] for x in rows_)
                    for k, rows_ in [(0, o), (0, a), (1, o), (1, a), (2, o), (2, a)])
                print(f"{cipher:32} {direction:5} {o_mbs:12.0f} {a_mbs:12.0f} {a_mbs / o_mbs:6.2f} "
                      f"{o_cpu:15.2f} {a_cpu:17.2f} {o_cl:27.2f}, {a_cl:.2f}", flush=True)
                print(f"{'':32} {'':5} runs, MB/s: OpenSSH "
                      f"{' '.join(f'{x[0]:.0f}' for x in o)}; apgate {' '.join(f'{x[0]:.0f}' for x in a)}",
                      flush=True)

    finally:
        ag.stop()
        ssh.stop()
        if clamd:
            clamd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
