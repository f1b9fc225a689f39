#!/usr/bin/env python3
"""Sends one hostile SFTP packet per session over a real connection (paramiko for SSH, raw SFTP
bytes on the channel) and prints what the server did with each, one line per case:
`CASE: status N`, `CASE: closed`, `CASE: data`, `CASE: handle` or `CASE: no answer`. Then a
fresh session must still work: `fresh: ok`.

    malformed_packets.py PORT USER KEY_FILE READABLE_PATH WRITABLE_DIR
"""

import select
import struct
import sys
import time

import paramiko

INIT, VERSION, OPEN, CLOSE, READ, WRITE, OPENDIR, READDIR = 1, 2, 3, 4, 5, 6, 11, 12
REALPATH, RENAME, SETSTAT, EXTENDED = 16, 18, 9, 200
STATUS, HANDLE, DATA, NAME = 101, 102, 103, 104
READ_FLAG, WRITE_FLAGS = 0x01, 0x02 | 0x08 | 0x10


def string(b):
    return struct.pack(">I", len(b)) + b


def packet(kind, body):
    payload = bytes([kind]) + body
    return struct.pack(">I", len(payload)) + payload


class Session:
    def __init__(self, port, user, key):
        self.t = paramiko.Transport(("127.0.0.1", int(port)))
        self.t.connect(username=user, pkey=key)
        self.chan = self.t.open_session()
        self.chan.invoke_subsystem("sftp")
        self.buf = b""

    def init(self):
        self.chan.sendall(packet(INIT, struct.pack(">I", 3)))
        kind, _ = self.reply(5)
        assert kind == VERSION, kind

    def recv_exact(self, n, timeout):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.chan], [], [], left)
            if not r:
                raise TimeoutError
            chunk = self.chan.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def reply(self, timeout=3):
        (length,) = struct.unpack(">I", self.recv_exact(4, timeout))
        body = self.recv_exact(length, timeout)
        return body[0], body[1:]

    def handle(self, kind, body):
        self.chan.sendall(packet(kind, body))
        k, rest = self.reply()
        assert k == HANDLE, (k, rest)
        (n,) = struct.unpack(">I", rest[4:8])
        return rest[8 : 8 + n]

    def close(self):
        self.t.close()


def outcome(s, timeout=3):
    try:
        kind, rest = s.reply(timeout)
    except EOFError:
        return "closed"
    except TimeoutError:
        return "closed" if s.chan.closed or s.chan.eof_received else "no answer"
    except (paramiko.SSHException, OSError):
        return "closed"
    if kind == STATUS:
        (code,) = struct.unpack(">I", rest[4:8])
        return f"status {code}"
    return {HANDLE: "handle", DATA: "data", NAME: "name"}.get(kind, f"type {kind}")


def main():
    port, user, key_file, readable, writable = sys.argv[1:6]
    key = paramiko.Ed25519Key.from_private_key_file(key_file)
    r, w = readable.encode(), writable.encode()
    bogus = b"\x00\x00\x00\x00\x00\x00\x12\x34"

    def raw(data):
        return lambda s, h: s.chan.sendall(data)

    def req(kind, body):
        return lambda s, h: s.chan.sendall(packet(kind, body))

    def with_read_handle(make):
        def run(s, h):
            handle = s.handle(OPEN, struct.pack(">I", 1) + string(r) + struct.pack(">II", READ_FLAG, 0))
            s.chan.sendall(make(handle))
        return run

    def with_write_handle(make):
        def run(s, h):
            handle = s.handle(OPEN, struct.pack(">I", 1) + string(w + b"/hostile.bin")
                              + struct.pack(">II", WRITE_FLAGS, 0))
            s.chan.sendall(make(handle))
        return run

    def with_dir_handle(make):
        def run(s, h):
            handle = s.handle(OPENDIR, struct.pack(">I", 1) + string(b"/"))
            s.chan.sendall(make(handle))
        return run

    def closed_then(make):
        def run(s, h):
            handle = s.handle(OPEN, struct.pack(">I", 1) + string(r) + struct.pack(">II", READ_FLAG, 0))
            s.chan.sendall(packet(CLOSE, struct.pack(">I", 2) + string(handle)))
            s.reply()
            s.chan.sendall(make(handle))
        return run

    cases = [
        ("length 0", raw(b"\x00\x00\x00\x00")),
        ("length 2^32-1", raw(b"\xff\xff\xff\xff" + b"x" * 64)),
        ("length 1 GiB announced", raw(struct.pack(">I", 1 << 30) + b"x" * 1024)),
        ("length over 256 KiB", raw(struct.pack(">I", 300 * 1024) + b"x" * 1024)),
        ("type byte only", raw(struct.pack(">I", 1) + bytes([OPEN]))),
        ("id cut short", raw(struct.pack(">I", 3) + bytes([OPEN, 0, 0]))),
        ("string longer than its packet", req(OPEN, struct.pack(">I", 7) + struct.pack(">I", 5000) + b"/inbox")),
        ("string length 2^32-1", req(OPEN, struct.pack(">I", 8) + b"\xff\xff\xff\xff" + b"/x")),
        ("attrs with 2^32-1 extensions", req(SETSTAT, struct.pack(">I", 9) + string(w) + struct.pack(">II", 0x80000000, 0xffffffff))),
        ("INIT twice", req(INIT, struct.pack(">I", 3))),
        ("VERSION from the client", req(VERSION, struct.pack(">I", 3))),
        ("unknown type 0", req(0, struct.pack(">I", 10))),
        ("unknown type 255", req(255, struct.pack(">I", 11) + b"junk")),
        ("unknown extension", req(EXTENDED, struct.pack(">I", 12) + string(b"nonsense@example.org") + b"xx")),
        ("trailing bytes after a CLOSE", req(CLOSE, struct.pack(">I", 13) + string(bogus) + b"extra")),
        ("rename without its second path", req(RENAME, struct.pack(">I", 14) + string(w + b"/a"))),
        ("write data longer than its packet", req(WRITE, struct.pack(">I", 15) + string(bogus) + struct.pack(">Q", 0) + struct.pack(">I", 1 << 20) + b"abc")),
        ("realpath of 64 KiB", req(REALPATH, struct.pack(">I", 16) + string(b"a/" * 32768))),
        ("open with every flag", req(OPEN, struct.pack(">I", 17) + string(w + b"/f.bin") + struct.pack(">II", 0xffffffff, 0))),
        ("close of a never-issued handle", req(CLOSE, struct.pack(">I", 18) + string(bogus))),
        ("read with a 200 KB handle", req(READ, struct.pack(">I", 19) + string(b"h" * 200_000) + struct.pack(">QI", 0, 4096))),
        ("read at offset 2^64-1", with_read_handle(lambda h: packet(READ, struct.pack(">I", 20) + string(h) + struct.pack(">QI", 2**64 - 1, 4096)))),
        ("read of 2^32-1 bytes", with_read_handle(lambda h: packet(READ, struct.pack(">I", 21) + string(h) + struct.pack(">QI", 0, 2**32 - 1)))),
        ("write at offset 2^64-100", with_write_handle(lambda h: packet(WRITE, struct.pack(">I", 22) + string(h) + struct.pack(">Q", 2**64 - 100) + string(b"x" * 4096)))),
        ("read on a closed handle", closed_then(lambda h: packet(READ, struct.pack(">I", 23) + string(h) + struct.pack(">QI", 0, 10)))),
        ("readdir on a file handle", with_read_handle(lambda h: packet(READDIR, struct.pack(">I", 24) + string(h)))),
        ("read on a folder handle", with_dir_handle(lambda h: packet(READ, struct.pack(">I", 25) + string(h) + struct.pack(">QI", 0, 10)))),
        ("write on a read handle", with_read_handle(lambda h: packet(WRITE, struct.pack(">I", 26) + string(h) + struct.pack(">Q", 0) + string(b"x")))),
    ]
    for name, send in cases:
        s = Session(port, user, key)
        s.init()
        send(s, None)
        print(f"{name}: {outcome(s)}", flush=True)
        s.close()

    # Before INIT: a request where the version must be.
    s = Session(port, user, key)
    s.chan.sendall(packet(OPEN, struct.pack(">I", 1) + string(r) + struct.pack(">II", READ_FLAG, 0)))
    print(f"request before INIT: {outcome(s)}", flush=True)
    s.close()

    # 5,000 opens on one session, never closed: past limits.handles_per_session they fail.
    s = Session(port, user, key)
    s.init()
    for i in range(5000):
        s.chan.sendall(packet(OPEN, struct.pack(">I", i) + string(r) + struct.pack(">II", READ_FLAG, 0)))
    got = {}
    for _ in range(5000):
        o = outcome(s, 10)
        got[o] = got.get(o, 0) + 1
        if o in ("closed", "no answer"):
            break
    print("5000 opens: " + ", ".join(f"{k} x{v}" for k, v in sorted(got.items())), flush=True)
    s.close()

    s = Session(port, user, key)
    s.init()
    s.chan.sendall(packet(REALPATH, struct.pack(">I", 1) + string(b".")))
    print(f"fresh: {'ok' if outcome(s) == 'name' else 'FAILED'}", flush=True)
    s.close()


if __name__ == "__main__":
    main()
