#!/usr/bin/env python3
"""Opens COUNT files for writing on one SFTP session over a real connection (paramiko for SSH,
raw SFTP packets) and then writes BYTES to each in turn, without closing any. Prints the
answers: `opened N refused M` and `written N failed M`.

    many_uploads.py PORT USER KEY_FILE COUNT BYTES [SERVER_PID [READ_PATH]]

With SERVER_PID, it also prints the server's thread count while the files are still open:
`threads N`; with READ_PATH, it first opens READ_PATH for reading COUNT times as well and reads
a little from each (`reading N`).
"""

import struct
import sys

import paramiko

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_READ, FXP_WRITE, FXP_STATUS, FXP_HANDLE, FXP_DATA = 1, 2, 3, 5, 6, 101, 102, 103
FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x02, 0x08, 0x10


def string(b):
    return struct.pack(">I", len(b)) + b


def main():
    port, user, key_file, count, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    server_pid = sys.argv[6] if len(sys.argv) > 6 else None
    read_path = sys.argv[7].encode() if len(sys.argv) > 7 else None
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key_file))
    chan = t.open_session()
    chan.invoke_subsystem("sftp")

    def send(kind, body):
        payload = bytes([kind]) + body
        chan.sendall(struct.pack(">I", len(payload)) + payload)

    def recv_exact(n):
        out = b""
        while len(out) < n:
            chunk = chan.recv(n - len(out))
            if not chunk:
                raise EOFError("closed")
            out += chunk
        return out

    def recv():
        (n,) = struct.unpack(">I", recv_exact(4))
        body = recv_exact(n)
        return body[0], body[1:]

    send(FXP_INIT, struct.pack(">I", 3))
    assert recv()[0] == FXP_VERSION
    handles, refused = [], 0
    for i in range(count):
        send(FXP_OPEN, struct.pack(">I", i) + string(f"/outbox/coordinator/f{i}.bin".encode())
             + struct.pack(">I", FXF_WRITE | FXF_CREAT | FXF_TRUNC) + struct.pack(">I", 0))
        kind, body = recv()
        if kind == FXP_HANDLE:
            (n,) = struct.unpack(">I", body[4:8])
            handles.append(body[8:8 + n])
        else:
            refused += 1
    print(f"opened {len(handles)} refused {refused}", flush=True)
    written, failed = 0, 0
    for i, h in enumerate(handles):
        ok = True
        offset = 0
        while offset < size:
            n = min(32768, size - offset)
            send(FXP_WRITE, struct.pack(">I", 100000 + i) + string(h) + struct.pack(">Q", offset) + string(b"\0" * n))
            kind, body = recv()
            (code,) = struct.unpack(">I", body[4:8])
            if code != 0:
                ok = False
                break
            offset += n
        written += ok
        failed += not ok
    print(f"written {written} failed {failed}", flush=True)
    if read_path:
        reading = 0
        for i in range(count):
            send(FXP_OPEN, struct.pack(">I", 200000 + i) + string(read_path) + struct.pack(">I", 0x01)
                 + struct.pack(">I", 0))
            kind, body = recv()
            if kind != FXP_HANDLE:
                continue
            (n,) = struct.unpack(">I", body[4:8])
            send(FXP_READ, struct.pack(">I", 300000 + i) + string(body[8:8 + n]) + struct.pack(">QI", 0, 1000))
            kind, _ = recv()
            reading += kind == FXP_DATA
        print(f"reading {reading}", flush=True)
    if server_pid:
        with open(f"/proc/{server_pid}/status") as f:
            threads = next(line.split()[1] for line in f if line.startswith("Threads:"))
        print(f"threads {threads}", flush=True)
    t.close()


if __name__ == "__main__":
    main()
