#!/usr/bin/env python3
"""Uploads LOCAL to REMOTE with paramiko's SFTP client (open, writes, close: what pysftp and
many MIS scripts do) and prints `OK`, or `ERROR: ` and the server's own message for the failed
request, which OpenSSH's sftp does not show. paramiko's own close ignores a failed CLOSE (its
put() notices only through the stat after it), so the CLOSE is sent here and its answer read.

    put_file.py PORT USER KEY_FILE LOCAL REMOTE [put]

With `put`, paramiko's own `SFTPClient.put` (confirm on) runs instead, as pysftp calls it.
"""

import sys

import paramiko


def main():
    port, user, key_file, local, remote = sys.argv[1:6]
    own_put = sys.argv[6:7] == ["put"]
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key_file))
    sftp = paramiko.SFTPClient.from_transport(t)
    try:
        if own_put:
            sftp.put(local, remote)
            print("OK")
            return
        f = sftp.open(remote, "wb")
        with open(local, "rb") as src:
            while True:
                block = src.read(32768)
                if not block:
                    break
                f.write(block)
        f.flush()
        f._closed = True  # paramiko must not send a second CLOSE from its destructor
        sftp._request(paramiko.sftp.CMD_CLOSE, f.handle)
        print("OK")
    except IOError as e:
        print("ERROR: " + str(e.args[-1] if e.args else e))
    finally:
        t.close()


if __name__ == "__main__":
    main()
