#!/usr/bin/env python3
"""Check an airlock audit inclusion proof with nothing but sha256.

    airlock audit prove 457 > proof.json      # on the bot's machine
    python3 check-proof.py proof.json [ROOT]   # anywhere

ROOT is the Merkle root the audit room's seal checkpoint holds for the
segment (`org.airlock.seal.root`); without it the proof's own root is
used. Exit 0 when the entry is in the tree with that root.
"""
import hashlib
import json
import re
import sys


def sha256(b):
    return hashlib.sha256(b).digest()


def main():
    proof = json.load(open(sys.argv[1]))
    root = bytes.fromhex(sys.argv[2] if len(sys.argv) > 2 else proof["root"])
    stored = proof["entry"].encode()
    # 1. The entry's hash covers its stored bytes with the hash left blank.
    m = re.search(rb'"hash":"([0-9a-f]{64})"}$', stored)
    if not m:
        sys.exit("the entry does not end with its hash")
    blank = stored[: m.start(1)] + stored[m.end(1):]
    if sha256(blank).hex() != m.group(1).decode():
        sys.exit("PROBLEM: the entry's content does not match its hash")
    # 2. Its leaf: SHA-256(0x00 || hash bytes); a node: SHA-256(0x01 || l || r).
    r = sha256(b"\x00" + bytes.fromhex(m.group(1).decode()))
    # 3. Up the audit path (RFC 9162, 2.1.3.2).
    fn, sn = proof["index"], proof["size"] - 1
    for p in map(bytes.fromhex, proof["path"]):
        if sn == 0:
            sys.exit("PROBLEM: the path is longer than the tree")
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = sha256(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        sys.exit("PROBLEM: the path does not lead from the entry to the root")
    print(f"entry {proof['index']} of segment {proof['segment']} is in the tree with root {root.hex()}")


main()
