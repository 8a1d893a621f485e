#!/usr/bin/env python3
"""Pretend to deploy: report the arguments received, as JSON on stdout."""
import json
import sys

args = sys.argv[1:]
named = {}
positional = []
for a in args:
    if a.startswith("--"):
        key, _, value = a[2:].partition("=")
        named[key] = value if _ else True
    else:
        positional.append(a)
token = named.pop("token", "")
# A careless script that logs its secret: airlock masks it in the result.
print("authenticating with " + token, file=sys.stderr)
print(json.dumps({
    "service": positional[0] if positional else None,
    "version": named.get("version"),
    "environment": named.get("environment"),
    "dry_run": named.get("dry_run", False),
    "argv": args,
    "token_length": len(token),
}))
