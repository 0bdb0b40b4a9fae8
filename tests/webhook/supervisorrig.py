"""The `serve --workers` supervisor with stand-in workers, as a process of its own (it forks, and handles
signals while it runs, which a test process should not do to itself).

    python -m tests.webhook.supervisorrig fail-at-start CODE

runs two workers that report "no luck" and exit with CODE before they listen, and the supervisor with a
short back-off; it prints what `serve` prints (`extproc-guard serve: error: ...`) and exits as `serve` would.
The real workers behind `serve --workers` are tested through the command (test_server_workers.py); what
makes a real worker fail to start (certificate files, the kubeconfig) the command finds before it forks.
"""

from __future__ import annotations

import logging
import sys

from telemetry.logoutput import install_log_output, open_line_atomic_stderr
from webhook.workers import Backoff, Channel, Supervisor, SupervisorPolicy, WorkersFailed

WORKERS = 2
POLICY = SupervisorPolicy(backoff=Backoff(initial=0.01, ceiling=0.05), max_start_failures=3)


def main(argv: list[str]) -> int:
    mode, code = argv[0], int(argv[1])
    if mode != "fail-at-start":
        raise SystemExit(f"unknown mode {mode!r}")
    output = install_log_output(logging.INFO, stream=open_line_atomic_stderr())

    def fail(index: int, channel: Channel, lifeline: int) -> int:
        channel.failed(f"worker {index}: no luck")
        return code

    supervisor = Supervisor(WORKERS, fail, policy=POLICY, before_fork=output.flush, announce=output.flush)
    try:
        return supervisor.run()
    except WorkersFailed as error:
        output.flush()
        print(f"extproc-guard serve: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
