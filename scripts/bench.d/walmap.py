#!/usr/bin/env python3
"""walmap.py -- which B-trees a module's COMMITs write to its WAL.

Every COMMIT appends a frame (a 24-byte header and a whole page) for each
page it changed. This samples a live -wal file during a run and, after the
run, names the table or index of each frame's page (SQLite's dbstat over the
database file), so a report can say where the write volume goes:

  walmap.py sample --wal DB-wal --out FILE [--after A] --seconds S
      A seconds from now, for S seconds, copies the WAL every 0.25 s and
      keeps the copy that holds the most frames of one WAL generation (a
      checkpoint starts the file over, so a late copy can hold few)
  walmap.py map --wal FILE --db DB
      one line: "frames F, commits C: NAME x/COMMIT (U pages), ..." with
      the frames of each B-tree per COMMIT and its distinct pages, largest
      first

The WAL format: a 32-byte header (magic, version, page size, checkpoint
sequence, salt-1, salt-2, checksums), then frames whose header repeats the
salts (a frame of an older generation does not) and whose second word is
the database size after a commit frame, 0 in the others.
"""

import argparse
import collections
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import time


def frames(data):
    """[(page number, is a commit frame)] of the WAL's current generation."""
    if len(data) < 32:
        return []
    page_size, _, salt1, salt2 = struct.unpack(">IIII", data[8:24])
    if page_size < 512 or page_size > 65536:
        return []
    out, at = [], 32
    while at + 24 + page_size <= len(data):
        page, commit, s1, s2 = struct.unpack(">IIII", data[at:at + 16])
        if (s1, s2) != (salt1, salt2):
            break
        out.append((page, commit != 0))
        at += 24 + page_size
    # frames after the last commit frame belong to no committed transaction
    while out and not out[-1][1]:
        out.pop()
    return out


def sample(args):
    time.sleep(args.after)  # the part of the run to sample, not a wait for anything
    best, deadline = -1, time.monotonic() + args.seconds
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)))
    os.close(fd)
    try:
        while time.monotonic() < deadline:
            try:
                shutil.copyfile(args.wal, tmp)
            except FileNotFoundError:
                pass
            else:
                with open(tmp, "rb") as f:
                    n = len(frames(f.read()))
                if n > best:
                    best = n
                    shutil.copyfile(tmp, args.out)
            time.sleep(0.25)  # a sampling period, not a wait for anything
    finally:
        os.unlink(tmp)
    return 0 if best >= 0 else 1


def owners(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT pageno, name FROM dbstat"))
    finally:
        conn.close()


def describe(data, owner):
    got = frames(data)
    commits = sum(1 for _, c in got if c)
    if commits == 0:
        return "no committed frames in the sample"
    per, pages = collections.Counter(), collections.defaultdict(set)
    for page, _ in got:
        name = owner.get(page, "(freed)")
        per[name] += 1
        pages[name].add(page)
    parts = [f"{name} {n / commits:.1f}/COMMIT ({len(pages[name])} pages)"
             for name, n in per.most_common()]
    return f"frames {len(got)}, commits {commits}: " + ", ".join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--wal", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--after", type=float, default=0.0)
    s.add_argument("--seconds", type=float, required=True)
    m = sub.add_parser("map")
    m.add_argument("--wal", required=True)
    m.add_argument("--db", required=True)
    args = p.parse_args()
    if args.cmd == "sample":
        return sample(args)
    try:
        with open(args.wal, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        print(f"no sample: {args.wal} was never copied (no WAL during the window)")
        return 1
    print(describe(data, owners(args.db)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
