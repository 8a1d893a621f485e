#!/usr/bin/env python3
"""A stand-in for StackStorm's API, for airlock's tests.

A real StackStorm needs MongoDB and RabbitMQ, which no registry here ships,
so the tests run this instead. It implements the part of st2's published
contract (../shared/compat/st2-openapi.yaml) that a chat front end uses:

  GET    /api/v1/actions/{ref}              an action's metadata
  GET    /api/v1/runnertypes/?name=…        its runner's metadata
  POST   /api/v1/executions                 run an action (201, the execution)
  GET    /api/v1/executions?action=…&limit= list, newest first
  GET    /api/v1/executions/{id}            one execution
  GET    /api/v1/executions/{id}/output     what it printed
  DELETE /api/v1/executions/{id}            cancel it
  GET    /api/v1/inquiries/{id}             a workflow's question
  PUT    /api/v1/inquiries/{id}             its answer
  GET    /stream/v1/stream                  the event stream (SSE), filtered by
                                            events, execution_ids, end_event

with st2's API-key auth (St2-Api-Key header or st2-api-key query) and its
`faultstring` errors. Like st2, it renders every parameter value that holds
`{{` or `{%` as Jinja, with the datastore as `st2kv.system`, so a test can
see a template reach it. That it speaks st2's dialect is checked with st2's
own client, PyPI st2client (tests/st2client.rs).

Actions are scripted by their ref (see ACTIONS). Test controls, not part of
st2: POST /_test/cut_streams closes every open stream; POST
/_test/fail?status=503&count=2 answers the next API calls with that status.

  python3 stand_in.py --port 0 --api-key KEY --datastore ds.json --url-file F
"""

import argparse
import itertools
import json
import os
import secrets
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jinja2

COMPLETED = {"succeeded", "failed", "timeout", "abandoned", "canceled"}
RUNNING = {"requested", "scheduled", "delayed", "running", "pending", "canceling", "paused"}

# The actions this stand-in knows: st2 metadata plus what each does.
ACTIONS = {
    "tests.echo": {
        "runner_type": "python-script",
        "parameters": {"message": {"type": "string", "required": True}},
        "behaviour": "echo",
    },
    "tests.fail": {
        "runner_type": "python-script",
        "parameters": {"message": {"type": "string"}},
        "behaviour": "fail",
    },
    "tests.slow": {
        "runner_type": "local-shell-cmd",
        "parameters": {"seconds": {"type": "integer", "default": 3}},
        "behaviour": "slow",
    },
    "tests.queued": {
        "runner_type": "python-script",
        "parameters": {"message": {"type": "string", "required": True}},
        "behaviour": "echo",
        "schedule_delay": 2.0,
    },
    "tests.timeout": {
        "runner_type": "local-shell-cmd",
        "parameters": {},
        "behaviour": "timeout",
    },
    "tests.abandon": {
        "runner_type": "local-shell-cmd",
        "parameters": {},
        "behaviour": "abandon",
    },
    "tests.ask": {
        "runner_type": "orquesta",
        "parameters": {"question": {"type": "string", "default": "Continue?"}},
        "behaviour": "ask",
    },
    "tests.announce": {
        "runner_type": "python-script",
        "parameters": {
            "message": {"type": "string", "required": True},
            "channel": {"type": "string", "required": True},
        },
        "behaviour": "announce",
    },
}

RUNNERS = {
    "python-script": {"name": "python-script", "runner_parameters": {}},
    "local-shell-cmd": {
        "name": "local-shell-cmd",
        "runner_parameters": {"cmd": {"type": "string"}, "timeout": {"type": "integer", "default": 60}},
    },
    "orquesta": {"name": "orquesta", "runner_parameters": {}},
}


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def object_id():
    """A MongoDB ObjectId's shape: st2 ids are 24 hex digits."""
    return "%08x" % int(time.time()) + secrets.token_hex(8)


class State:
    def __init__(self, api_key, datastore):
        self.api_key = api_key
        self.datastore = datastore
        self.lock = threading.Condition()
        self.executions = {}  # id -> execution dict
        self.order = []  # ids, oldest first
        self.output = {}  # id -> [output records]
        self.inquiries = {}  # id -> inquiry dict
        self.events = []  # (seq, event name, body)
        self.seq = itertools.count(1)
        self.cut = 0  # bumped to close every stream
        self.fail = None  # (status, remaining)

    def publish(self, event, body):
        with self.lock:
            self.events.append((next(self.seq), event, json.loads(json.dumps(body))))
            self.lock.notify_all()

    def update(self, ex, **changes):
        with self.lock:
            ex.update(changes)
            if ex["status"] in COMPLETED and "end_timestamp" not in ex:
                ex["end_timestamp"] = now_iso()
        self.publish("st2.execution__update", ex)

    def out(self, ex, text, stream="stdout"):
        record = {
            "execution_id": ex["id"],
            "action_ref": ex["action"]["ref"],
            "runner_ref": ex["runner"]["name"],
            "timestamp": now_iso(),
            "output_type": stream,
            "data": text,
        }
        with self.lock:
            self.output.setdefault(ex["id"], []).append(record)
        self.publish("st2.execution.output__create", record)


def render(params, datastore):
    """st2's render_live_params: values holding Jinja are rendered with the
    datastore and the other parameters in context."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    context = dict(params)
    context["st2kv"] = {"system": datastore}
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and ("{{" in v or "{%" in v):
            out[k] = env.from_string(v).render(context)
        else:
            out[k] = v
    return out


def run(state, ex, behaviour):
    """What an action does, on its own thread, as st2's runners would."""
    params = ex["parameters"]
    delay = float(ACTIONS[ex["action"]["ref"]].get("schedule_delay", 0.1))
    time.sleep(delay)
    if ex["status"] == "canceled":
        return
    state.update(ex, status="running", start_timestamp=ex["start_timestamp"])
    if behaviour == "echo":
        state.out(ex, params["message"] + "\n")
        state.update(ex, status="succeeded", result={"stdout": params["message"], "stderr": "", "return_code": 0, "succeeded": True, "failed": False, "parameters": params})
    elif behaviour == "fail":
        state.out(ex, "boom\n", "stderr")
        state.update(ex, status="failed", result={"stdout": "", "stderr": "boom", "return_code": 1, "succeeded": False, "failed": True})
    elif behaviour == "slow":
        for i in range(int(params.get("seconds", 3)) * 10):
            time.sleep(0.1)
            if ex["status"] in ("canceling", "canceled"):
                state.update(ex, status="canceled", result={"stdout": "", "stderr": "", "return_code": -15})
                return
            if i % 10 == 0:
                state.out(ex, "tick %d\n" % (i // 10))
        state.update(ex, status="succeeded", result={"stdout": "done", "stderr": "", "return_code": 0})
    elif behaviour == "timeout":
        state.update(ex, status="timeout", result={"error": "Action failed to complete in 60 seconds", "return_code": -9})
    elif behaviour == "abandon":
        state.update(ex, status="abandoned", result={})
    elif behaviour == "ask":
        inquiry_id = object_id()
        inquiry = {
            "id": inquiry_id,
            "schema": {
                "type": "object",
                "properties": {"approved": {"type": "boolean", "description": params.get("question", "Continue?")}},
                "required": ["approved"],
            },
            "roles": [],
            "users": [],
            "route": "",
            "ttl": 1440,
            "liveaction": {"id": ex["liveaction"]["id"]},
            "parent": ex["id"],
        }
        with state.lock:
            state.inquiries[inquiry_id] = inquiry
        state.update(ex, status="pending", result={"inquiry": inquiry_id})
        state.publish("st2.inquiry__create", inquiry)
        with state.lock:
            state.lock.wait_for(lambda: "response" in inquiry or ex["status"] in COMPLETED)
        if ex["status"] in COMPLETED:
            return
        state.update(ex, status="succeeded", result={"response": inquiry["response"]})
    elif behaviour == "announce":
        state.publish(
            "st2.announcement__chatops",
            {"channel": params["channel"], "message": params["message"], "user": None, "whisper": False, "extra": {}},
        )
        state.update(ex, status="succeeded", result={"sent": True})


def fault(handler, status, message):
    handler.reply(status, {"faultstring": message})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set in main

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def parsed(self):
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        return u.path.rstrip("/") or "/", q

    def authorized(self, q):
        key = self.headers.get("St2-Api-Key") or (q.get("st2-api-key") or [None])[0]
        if key == self.state.api_key:
            return True
        if key:
            fault(self, 401, "Unauthorized - ApiKey with key_hash=%s not found." % key[:4])
        else:
            fault(self, 401, "Unauthorized - One of Token or API key required.")
        return False

    def injected_failure(self, path):
        s = self.state
        with s.lock:
            if path.startswith("/_test") or not s.fail or s.fail[1] <= 0:
                return False
            status, left = s.fail
            s.fail = (status, left - 1)
        fault(self, status, "Service Unavailable (stand-in failure)")
        return True

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    # ------------------------------------------------------------ GET
    def do_GET(self):
        path, q = self.parsed()
        if self.injected_failure(path) or not self.authorized(q):
            return
        s = self.state
        parts = path.split("/")
        if path == "/stream/v1/stream":
            return self.stream(q)
        if path.startswith("/api/v1/actions/"):
            ref = urllib.parse.unquote(parts[4])
            a = ACTIONS.get(ref)
            if not a:
                return fault(self, 404, 'Resource with a reference or id "%s" not found' % ref)
            pack, name = ref.split(".", 1)
            return self.reply(200, {
                "id": "5f" + secrets.token_hex(11), "ref": ref, "pack": pack, "name": name,
                "uid": "action:%s:%s" % (pack, name), "enabled": True, "entry_point": "",
                "runner_type": a["runner_type"], "parameters": a["parameters"],
                "description": "stand-in action %s" % ref, "tags": [], "notify": {},
            })
        if path == "/api/v1/runnertypes":
            name = (q.get("name") or [None])[0]
            return self.reply(200, [RUNNERS[name]] if name in RUNNERS else [])
        if path == "/api/v1/executions":
            with s.lock:
                rows = [s.executions[i] for i in reversed(s.order)]
            action = (q.get("action") or [None])[0]
            if action:
                rows = [r for r in rows if r["action"]["ref"] == action]
            limit = int((q.get("limit") or ["100"])[0])
            return self.reply(200, rows[:limit])
        if len(parts) >= 5 and parts[3] == "executions":
            ex = s.executions.get(parts[4])
            if not ex:
                return fault(self, 404, 'Resource with a id "%s" not found' % parts[4])
            if len(parts) == 6 and parts[5] == "children":
                return self.reply(200, [])  # the stand-in's workflows have no tasks
            if len(parts) == 6 and parts[5] == "output":
                kind = (q.get("output_type") or [None])[0]
                recs = [r for r in s.output.get(ex["id"], []) if kind in (None, r["output_type"])]
                data = "".join(r["data"] for r in recs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            with s.lock:
                return self.reply(200, ex)
        if len(parts) == 5 and parts[3] == "inquiries":
            inq = s.inquiries.get(parts[4])
            if not inq or "response" in inq:
                return fault(self, 404, 'Inquiry with id "%s" not found' % parts[4])
            return self.reply(200, {k: inq[k] for k in ("id", "schema", "roles", "users", "route", "ttl")})
        fault(self, 404, "The resource could not be found.")

    def stream(self, q):
        """st2's event stream: `event: NAME\\ndata: JSON\\n\\n`, keep-alive
        blank lines, filtered by `events` and `execution_ids`, ended after
        `end_event` for `end_execution_id`."""
        s = self.state
        wanted = set(",".join(q.get("events", [])).split(",")) - {""}
        ids = set(",".join(q.get("execution_ids", [])).split(",")) - {""}
        end_event = (q.get("end_event") or [None])[0]
        end_id = (q.get("end_execution_id") or [None])[0]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with s.lock:
            cursor = s.events[-1][0] if s.events else 0
            cut = s.cut
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            while True:
                with s.lock:
                    s.lock.wait_for(lambda: (s.events and s.events[-1][0] > cursor) or s.cut != cut, timeout=1.0)
                    if s.cut != cut:
                        return
                    new = [e for e in s.events if e[0] > cursor]
                if not new:
                    self.wfile.write(b"\n")  # keep-alive
                    self.wfile.flush()
                    continue
                for seq, event, body in new:
                    cursor = seq
                    if wanted and event not in wanted:
                        continue
                    eid = body.get("id") if event.startswith("st2.execution__") else body.get("execution_id")
                    if ids and eid not in ids:
                        continue
                    self.wfile.write(("event: %s\ndata: %s\n\n" % (event, json.dumps(body))).encode())
                    self.wfile.flush()
                    if end_event and event == end_event and eid == end_id and body.get("status") in COMPLETED:
                        return
        except (BrokenPipeError, ConnectionResetError):
            return

    # ------------------------------------------------------------ POST
    def do_POST(self):
        path, q = self.parsed()
        s = self.state
        if path == "/_test/cut_streams":
            with s.lock:
                s.cut += 1
                s.lock.notify_all()
            return self.reply(200, {"cut": s.cut})
        if path == "/_test/fail":
            with s.lock:
                s.fail = (int(q["status"][0]), int(q.get("count", ["1"])[0]))
            return self.reply(200, {"fail": list(s.fail)})
        if self.injected_failure(path) or not self.authorized(q):
            return
        if path != "/api/v1/executions":
            return fault(self, 404, "The resource could not be found.")
        req = self.body()
        if not isinstance(req, dict) or "action" not in req:
            return fault(self, 400, "'action' is a required property")
        ref = req["action"]
        a = ACTIONS.get(ref)
        if not a:
            return fault(self, 400, 'Action "%s" cannot be found.' % ref)
        given = req.get("parameters") or {}
        schema = dict(RUNNERS[a["runner_type"]]["runner_parameters"])
        schema.update(a["parameters"])
        unknown = sorted(set(given) - set(schema))
        if unknown:
            return fault(self, 400, "Additional properties are not allowed (%s were unexpected)" % ", ".join("'%s'" % u for u in unknown))
        params = {k: v["default"] for k, v in schema.items() if "default" in v}
        params.update(given)
        missing = [k for k, v in schema.items() if v.get("required") and k not in params]
        if missing:
            return fault(self, 400, "'%s' is a required property" % missing[0])
        for k, v in params.items():
            kind = schema[k].get("type")
            if kind == "integer" and not (isinstance(v, int) or (isinstance(v, str) and v.lstrip("-").isdigit())):
                return fault(self, 400, "%r is not of type 'integer'" % v)
        try:
            params = render(params, s.datastore)
        except jinja2.TemplateError as e:
            return fault(self, 400, "Failed to render parameter: %s" % e)
        context = {"user": "airlock-bot"}
        header = self.headers.get("st2-context")
        if header:
            try:
                context.update(json.loads(header))
            except ValueError:
                return fault(self, 400, "Unable to convert st2-context from the headers into JSON")
        context.update(req.get("context") or {})
        ex_id, la_id = object_id(), object_id()
        ex = {
            "id": ex_id,
            "action": {"ref": ref, "runner_type": a["runner_type"], "parameters": a["parameters"]},
            "runner": RUNNERS[a["runner_type"]],
            "liveaction": {"id": la_id, "action": ref, "parameters": params},
            "parameters": params,
            "context": context,
            "status": "requested",
            "start_timestamp": now_iso(),
            "log": [],
            "result": {},
            "children": [],
        }
        with s.lock:
            s.executions[ex_id] = ex
            s.order.append(ex_id)
        s.publish("st2.execution__create", ex)
        s.update(ex, status="scheduled")
        threading.Thread(target=run, args=(s, ex, a["behaviour"]), daemon=True).start()
        with s.lock:
            return self.reply(201, ex)

    # ------------------------------------------------------------ PUT
    def do_PUT(self):
        path, q = self.parsed()
        if self.injected_failure(path) or not self.authorized(q):
            return
        s = self.state
        parts = path.split("/")
        if len(parts) != 5 or parts[3] != "inquiries":
            return fault(self, 404, "The resource could not be found.")
        body = self.body()
        with s.lock:
            inq = s.inquiries.get(parts[4])
            if not inq or "response" in inq:
                return fault(self, 404, 'Inquiry with id "%s" not found' % parts[4])
            response = (body or {}).get("response")
            if not isinstance(response, dict) or not isinstance(response.get("approved"), bool):
                return fault(self, 400, "Response did not pass schema validation.")
            inq["response"] = response
            s.lock.notify_all()
        return self.reply(200, {"id": inq["id"], "response": response})

    # ------------------------------------------------------------ DELETE
    def do_DELETE(self):
        path, q = self.parsed()
        if self.injected_failure(path) or not self.authorized(q):
            return
        s = self.state
        parts = path.split("/")
        if len(parts) != 5 or parts[3] != "executions" or parts[4] not in s.executions:
            return fault(self, 404, "The resource could not be found.")
        ex = s.executions[parts[4]]
        if ex["status"] == "canceled":
            with s.lock:
                return self.reply(200, ex)
        if ex["status"] not in RUNNING:
            return fault(self, 200, "Action cannot be canceled. State = %s." % ex["status"])
        # Not yet running, or waiting on an inquiry: canceled at once;
        # running: the runner sees "canceling" and stops.
        s.update(ex, status="canceling" if ex["status"] == "running" else "canceled")
        with s.lock:
            s.lock.notify_all()
            return self.reply(200, ex)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--api-key", required=True)
    p.add_argument("--datastore", help="JSON object: st2kv.system")
    p.add_argument("--url-file", help="where to write the base URL once listening")
    args = p.parse_args()
    datastore = {}
    if args.datastore:
        with open(args.datastore) as f:
            datastore = json.load(f)
    Handler.state = State(args.api_key, datastore)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    url = "http://127.0.0.1:%d" % server.server_address[1]
    if args.url_file:
        tmp = args.url_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(url)
        os.replace(tmp, args.url_file)
    print(url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
