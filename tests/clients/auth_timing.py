#!/usr/bin/env python3
"""Times failed password authentications of a known and an unknown user, alternating, each on
a connection of its own (only the authentication is timed). Prints
`known_median_ms unknown_median_ms known_answer | unknown_answer`.

    auth_timing.py PORT KNOWN_USER UNKNOWN_USER ROUNDS
"""

import statistics
import sys
import time

import paramiko


def attempt(port, user):
    t = paramiko.Transport(("127.0.0.1", int(port)))
    t.start_client(timeout=10)
    start = time.monotonic()
    answer = ""
    try:
        t.auth_password(user, "not the password here")
        answer = "accepted"
    except paramiko.AuthenticationException as e:
        answer = f"{type(e).__name__}: {e} {getattr(e, 'allowed_types', '')}"
    elapsed = time.monotonic() - start
    t.close()
    return elapsed * 1000, answer


def main():
    port, known, unknown, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    times = {known: [], unknown: []}
    answers = {known: set(), unknown: set()}
    for _ in range(rounds):
        for user in (known, unknown):
            ms, answer = attempt(port, user)
            times[user].append(ms)
            answers[user].add(answer)
    print(f"{statistics.median(times[known]):.1f} {statistics.median(times[unknown]):.1f} "
          f"{sorted(answers[known])} | {sorted(answers[unknown])}", flush=True)


if __name__ == "__main__":
    main()
