#!/usr/bin/env python3
"""A hostile SFTP client: after INIT, COUNT tiny requests (an unknown type, 5 bytes each)
pipelined without reading a single answer. Prints `closed|open rss_kib`: whether the server
ended the session within 20 s, and its RSS read from /proc then.

    flood_requests.py PORT USER KEY_FILE SERVER_PID COUNT
"""

import socket
import struct
import sys
import time

import paramiko


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    port, user, key_file, pid, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key_file))
    chan = t.open_session()
    chan.invoke_subsystem("sftp")
    chan.sendall(struct.pack(">IBI", 5, 1, 3))
    batch = b"".join(struct.pack(">IBI", 5, 200, i) for i in range(count))
    closed = False
    try:
        # The server stops reading once its window is spent on answers nobody reads; a send
        # that cannot finish is what an ended session looks like too.
        chan.settimeout(20)
        chan.sendall(batch)
    except (socket.timeout, OSError, EOFError):
        pass
    deadline = time.time() + 20
    while time.time() < deadline:
        if chan.closed or not t.is_active() or chan.exit_status_ready():
            closed = True
            break
        time.sleep(0.1)
    print(f"{'closed' if closed else 'open'} {rss_kib(pid)}", flush=True)
    t.close()


if __name__ == "__main__":
    main()
