#!/usr/bin/env python3
"""A hostile SFTP client over a real SSH connection (paramiko for the SSH layer, raw SFTP
packets inside): out-of-order one-byte WRITEs, first each padded with 260 KB after its data,
then plain. Prints one line per phase: `phase statuses rss_kib`, the server's RSS read from
/proc after the phase.

    padded_writes.py PORT USER KEY_FILE SERVER_PID COUNT
"""

import struct
import sys

import paramiko

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_WRITE, FXP_STATUS, FXP_HANDLE = 1, 2, 3, 6, 101, 102
FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x02, 0x08, 0x10


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def string(b):
    return struct.pack(">I", len(b)) + b


class Raw:
    def __init__(self, chan):
        self.chan = chan

    def send(self, kind, body):
        payload = bytes([kind]) + body
        self.chan.sendall(struct.pack(">I", len(payload)) + payload)

    def recv_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.chan.recv(n - len(out))
            if not chunk:
                raise EOFError("the server closed the channel")
            out += chunk
        return out

    def recv(self):
        (n,) = struct.unpack(">I", self.recv_exact(4))
        body = self.recv_exact(n)
        return body[0], body[1:]


def main():
    port, user, key_file, pid, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key_file))
    chan = t.open_session()
    chan.invoke_subsystem("sftp")
    raw = Raw(chan)
    raw.send(FXP_INIT, struct.pack(">I", 3))
    kind, _ = raw.recv()
    assert kind == FXP_VERSION, kind
    raw.send(FXP_OPEN, struct.pack(">I", 1) + string(b"/outbox/coordinator/padded.bin")
             + struct.pack(">I", FXF_WRITE | FXF_CREAT | FXF_TRUNC) + struct.pack(">I", 0))
    kind, body = raw.recv()
    assert kind == FXP_HANDLE, (kind, body)
    (hlen,) = struct.unpack(">I", body[4:8])
    handle = body[8:8 + hlen]
    print(f"start - {rss_kib(pid)}", flush=True)
    for phase, padding in (("padded", b"\0" * 260_000), ("plain", b"")):
        statuses = {}
        # Pipelined: all sent, then all answers read (offset 0 is never sent: every one waits).
        for i in range(count):
            req = struct.pack(">I", 1000 + i) + string(handle) + struct.pack(">Q", 1 + i) + string(b"x") + padding
            raw.send(FXP_WRITE, req)
        for _ in range(count):
            kind, body = raw.recv()
            assert kind == FXP_STATUS, kind
            (code,) = struct.unpack(">I", body[4:8])
            statuses[code] = statuses.get(code, 0) + 1
        print(f"{phase} {','.join(f'{k}:{v}' for k, v in sorted(statuses.items()))} {rss_kib(pid)}", flush=True)
    t.close()


if __name__ == "__main__":
    main()
