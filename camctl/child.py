"""Launch one supervised process: ``python -m camctl.child SPEC.json``.

The host supervisor (supervisord) runs every program through this launcher, which
reads the program's argv, environment, working directory and account from a JSON
file written by :mod:`camctl.cluster`, drops privileges when asked, asks the kernel
to kill the program when the supervisor dies (``PR_SET_PDEATHSIG``), and then
``exec``s the program, so the supervisor sees the real process and its real pid.

The parent-death signal is what makes "kill ``camctl`` or a host supervisor with
SIGKILL" leave no orphan behind: supervisord cannot run cleanup it never gets to run.
The environment comes from a file rather than supervisord's ``environment=`` line so
that no value (database URLs, keys) needs quoting for supervisord's parser.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import Any

from camcore.runtime import set_parent_death_signal


def drop_to(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def launch(spec: dict[str, Any]) -> None:
    parent = os.getppid()
    if spec.get("user") and os.geteuid() == 0:
        drop_to(spec["user"])
    # After the user change: the kernel clears the setting on a credential change.
    set_parent_death_signal(getattr(signal, spec.get("pdeathsig", "SIGKILL")))
    if os.getppid() != parent:  # the supervisor died before the signal was armed
        raise SystemExit(1)
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
    argv = [str(a) for a in spec["argv"]]
    os.execvpe(argv[0], argv, {str(k): str(v) for k, v in spec["env"].items()})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m camctl.child SPEC.json", file=sys.stderr)
        return 2
    launch(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    return 1  # not reached: launch() replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
