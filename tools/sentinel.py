#!/usr/bin/env python3
"""Settings-aware stage sentinels of the recipes (``egs/*/run.sh``), and the waits of a multi-node run.

A sentinel is a small JSON file a step writes when it is done. It records the settings that produced
it, so a re-run can tell "already done" from "done with other settings":

* ``--set KEY=VALUE`` (a setting, e.g. ``upstream=wavlm_local``), ``--lines TEXT`` (several ``KEY=VALUE``
  lines, e.g. a resolved config from ``config_value.py --flat``) and ``--hash KEY TEXT`` (only a
  hash of TEXT is kept, e.g. the body of a recipe hook): compared with the current ones;
* ``--input LABEL FILE``: the settings digest of an earlier step's sentinel (what this step read was
  made with those settings): compared like a setting;
* ``--after LABEL FILE``: the run id of an earlier step's sentinel, new at every run of that step:
  when it differs, the earlier step was re-run since, this step's output is stale and it runs again.

Commands (exit status in brackets)::

    sentinel.py check FILE --what LABEL [--force true|false] [--hint TEXT] SETTINGS
        [0] done with these settings ("LABEL: already done"); [3] not done; [4] done, but must run
        again (--force true, or an --after step was re-run); [1] done with other settings: the
        message names each change and ends with --hint
    sentinel.py verify FILE --what LABEL [--hint TEXT] SETTINGS
        a step the run does not reach: [0] done with these settings, or not done; [1] otherwise
    sentinel.py write FILE --what LABEL [--job ID] [--note KEY=VALUE ...] SETTINGS
    sentinel.py wait FILE --what LABEL --job ID --failed MARKER --timeout SECONDS [--node N] SETTINGS
        [0] once FILE holds these settings and was written by job ID; [1] when node 0 wrote MARKER
        for job ID (it failed), when FILE holds other settings (the nodes run different commands),
        or after SECONDS
    sentinel.py fail MARKER --job ID --message TEXT     (node 0 failed: the other nodes stop waiting)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

NOT_DONE, RERUN, CHANGED = 3, 4, 1
MAX_CHANGES_SHOWN = 12


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(path: Path) -> Optional[Dict[str, Any]]:
    """The sentinel at ``path``, or None when there is none; an unreadable one is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    if not text.strip():
        return {"legacy": True}  # touched by a run.sh that did not record settings
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        sys.exit(f"sentinel.py: {path}: not a sentinel ({err}); delete it to redo its step")
    if not isinstance(data, dict):
        sys.exit(f"sentinel.py: {path}: not a sentinel; delete it to redo its step")
    return data


def _write_atomic(path: Path, data: Dict[str, Any]) -> None:
    from wespeaker_lap.utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


class Settings:
    """What a step's output depends on (see the module doc)."""

    def __init__(self, args: argparse.Namespace):
        self.values: Dict[str, str] = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                sys.exit(f"sentinel.py: --set {item!r}: expected KEY=VALUE")
            self.values[key] = value
        self.set_keys = list(self.values)
        for text in args.lines:
            for line in text.splitlines():
                if line.strip():
                    key, sep, value = line.partition("=")
                    if not sep or not key:
                        sys.exit(f"sentinel.py: --lines: expected KEY=VALUE lines, got {line!r}")
                    self.values[key] = value
        self.hashes = {key: _sha256(text) for key, text in args.hash}
        self.input_files = dict(args.input)
        self.inputs = {label: self._field(file, "digest") for label, file in args.input}
        self.after = {label: self._field(file, "run_id") for label, file in args.after}

    @staticmethod
    def _field(file: str, name: str) -> Optional[str]:
        data = _read(Path(file))
        return None if data is None else data.get(name)

    def digest(self) -> str:
        return _sha256(json.dumps([self.values, self.hashes, self.inputs], sort_keys=True))

    def changes(self, done: Dict[str, Any]) -> List[str]:
        """What differs from the sentinel ``done`` (run ids of --after steps aside), one phrase each."""
        out = []
        old_values = done.get("settings", {})
        named = list(self.set_keys)  # the --set ones first, as given; then the others, sorted
        for key in named + sorted((set(old_values) | set(self.values)) - set(named)):
            old, new = old_values.get(key), self.values.get(key)
            if old != new:
                out.append(f"{key}={_shown(old)}, now {_shown(new)}")
        old_hashes = done.get("hashes", {})
        for key in sorted(set(old_hashes) | set(self.hashes)):
            if old_hashes.get(key) != self.hashes.get(key):
                out.append(f"{key} changed")
        old_inputs = done.get("inputs", {})
        for label in sorted(set(old_inputs) | set(self.inputs)):
            old, new = old_inputs.get(label), self.inputs.get(label)
            if old != new:
                file = self.input_files.get(label, "gone")
                out.append(f"{label} is not done ({file})" if new is None else
                           f"the output of {label} differs ({file} was done with other settings)")
        return out

    def stale(self, done: Dict[str, Any]) -> List[str]:
        """The --after steps that were re-run (or are gone) since ``done`` was written."""
        old_after = done.get("after", {})
        return [label for label in sorted(self.after) if self.after[label] != old_after.get(label)]


def _shown(value: Optional[str]) -> str:
    if value is None:
        return "(unset)"
    return value if value.strip() else "''"


def _changed_message(what: str, changes: List[str], hint: str) -> str:
    if len(changes) == 1:
        return f"{what} was done with {changes[0]}; {hint}"
    shown = changes[:MAX_CHANGES_SHOWN]
    more = len(changes) - len(shown)
    lines = [f"{what} was done with other settings; {hint}:", *(f"  {c}" for c in shown)]
    if more:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)


def check(args: argparse.Namespace) -> int:
    done = _read(Path(args.file))
    if done is None:
        return 0 if args.verify else NOT_DONE
    if done.get("legacy"):
        if args.force == "true" and not args.verify:
            print(f"{args.what}: done before (settings not recorded); --force true: running it again")
            return RERUN
        print(f"run.sh: {args.what} was done by an older run.sh that did not record its settings; {args.hint}",
              file=sys.stderr)
        return CHANGED
    settings = Settings(args)
    stale = settings.stale(done)
    if stale:  # the output was made from something that is gone: redo it, whatever the settings say
        if args.verify:
            print(f"run.sh: {args.what} is out of date ({', '.join(stale)} ran again since); {args.hint}",
                  file=sys.stderr)
            return CHANGED
        print(f"{args.what}: {', '.join(stale)} ran again since it was done: running it again")
        return RERUN
    changes = settings.changes(done)
    if args.verify:
        if changes:
            print(f"run.sh: {_changed_message(args.what, changes, args.hint)}", file=sys.stderr)
            return CHANGED
        return 0
    if changes and args.force != "true":
        print(f"run.sh: {_changed_message(args.what, changes, args.hint)}", file=sys.stderr)
        return CHANGED
    if args.force == "true":
        reason = f" with other settings ({'; '.join(changes)})" if changes else ""
        print(f"{args.what}: done before{reason}; --force true: running it again")
        return RERUN
    print(f"{args.what}: already done")
    return 0


def write(args: argparse.Namespace) -> int:
    settings = Settings(args)
    notes = dict(item.partition("=")[::2] for item in args.note)
    _write_atomic(Path(args.file), {
        "what": args.what, "run_id": uuid.uuid4().hex, "job": args.job, "host": socket.gethostname(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings.values, "hashes": settings.hashes,
        "inputs": settings.inputs, "after": settings.after, "digest": settings.digest(), "notes": notes,
    })
    return 0


def fail(args: argparse.Namespace) -> int:
    _write_atomic(Path(args.file), {"job": args.job, "host": socket.gethostname(), "message": args.message,
                                    "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return 0


def _poll_intervals(first: float = 0.5, factor: float = 1.5, longest: float = 15.0):
    interval = first
    while True:
        yield interval
        interval = min(interval * factor, longest)


def wait(args: argparse.Namespace) -> int:
    settings = Settings(args)
    digest = settings.digest()
    marker, file = Path(args.failed), Path(args.file)
    start = time.monotonic()
    next_note = start + 300.0
    node = f"node {args.node}" if args.node is not None else "this node"
    print(f"{args.what}: {node} waits for node 0 ({file})", flush=True)
    for interval in _poll_intervals():
        failed = _read(marker)
        if failed is not None and failed.get("job") == args.job:
            print(f"run.sh: {args.what}: node 0 failed ({failed.get('message', '?')}, on {failed.get('host', '?')} "
                  f"at {failed.get('written', '?')}); {node} stops too", file=sys.stderr)
            return 1
        done = _read(file)
        if done is not None and done.get("job") == args.job:
            if done.get("digest") == digest:
                print(f"{args.what}: node 0 is done", flush=True)
                return 0
            changes = settings.changes(done) or ["(settings digest differs)"]
            print(f"run.sh: {args.what}: node 0 ran it with other settings than {node}; every node must run the "
                  f"same command:\n" + "\n".join(f"  {c}" for c in changes), file=sys.stderr)
            return 1
        now = time.monotonic()
        if now - start >= args.timeout:
            print(f"run.sh: {args.what}: {node} waited {args.timeout:g} s for node 0 to write {file} and gives "
                  f"up (--node_wait_timeout); is node 0 running with --rdzv_id {args.job}?", file=sys.stderr)
            return 1
        if now >= next_note:
            print(f"{args.what}: {node} still waits for node 0 ({(now - start) / 60:.0f} min)", flush=True)
            next_note = now + 300.0
        time.sleep(min(interval, max(args.timeout - (now - start), 0.05)))
    return 1  # not reached


def _settings_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the sentinel (fail: the failure marker)")
    p.add_argument("--what", default="this step", help="the step, for messages (e.g. 'stage 3 phase1_frozen')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lines", action="append", default=[], metavar="TEXT", help="KEY=VALUE lines")
    p.add_argument("--hash", action="append", default=[], nargs=2, metavar=("KEY", "TEXT"))
    p.add_argument("--input", action="append", default=[], nargs=2, metavar=("LABEL", "FILE"))
    p.add_argument("--after", action="append", default=[], nargs=2, metavar=("LABEL", "FILE"))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("check", "verify"):
        c = sub.add_parser(name)
        _settings_options(c)
        c.add_argument("--force", choices=("true", "false"), default="false")
        c.add_argument("--hint", default="use --force true to redo it")
        c.set_defaults(run=check, verify=name == "verify")
    w = sub.add_parser("write")
    _settings_options(w)
    w.add_argument("--job", default="", help="the job that wrote it (run.sh: --rdzv_id)")
    w.add_argument("--note", action="append", default=[], metavar="KEY=VALUE", help="recorded, not compared")
    w.set_defaults(run=write)
    wt = sub.add_parser("wait")
    _settings_options(wt)
    wt.add_argument("--job", required=True)
    wt.add_argument("--failed", required=True, help="node 0's failure marker")
    wt.add_argument("--timeout", type=float, required=True, help="seconds")
    wt.add_argument("--node", type=int, default=None, help="this node's rank, for messages")
    wt.set_defaults(run=wait)
    f = sub.add_parser("fail")
    f.add_argument("file")
    f.add_argument("--job", required=True)
    f.add_argument("--message", required=True)
    f.set_defaults(run=fail)
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
