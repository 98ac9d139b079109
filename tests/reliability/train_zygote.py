"""Fork server for the kill-and-resume test: import the trainer once, then fork one training process per
request (each runs ``adaptor-peft train ...`` through the CLI's ``main``), so SIGKILL trials cost no
interpreter start-up. Started fresh with OMP_NUM_THREADS=1: forking is safe (no OpenMP pool exists).

Protocol (JSON lines): ``{"ready": true}`` once imported; then stdin ``{"argv": [...], "log": PATH,
"env": {NAME: VALUE}}`` (env optional: set in the child only) -> stdout ``{"pid": N}`` when the child
starts, then ``{"pid": N, "signal": S | null, "exit": E | null}`` when it ends (a child stopped by
SIGSTOP has not ended); stdin EOF stops the server.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from adaptor_peft.cli import main as cli_main


def _child(argv: list[str], log: str, env: dict[str, str]) -> None:
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.environ.update(env)
        code = cli_main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    """Serve fork requests until stdin closes."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["argv"], request["log"], request.get("env") or {})
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)  # no WUNTRACED: a stopped child is still running
        signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        print(json.dumps({"pid": pid, "signal": signal, "exit": code}), flush=True)


if __name__ == "__main__":
    main()
