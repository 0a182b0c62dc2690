"""Process duties of the supervisor: starting the workload, the loop, signals, reaping.

Owns the workload's process (``child``), the listener fd once the child handed it over
(``listener``) and the start-up pipes; nothing here judges a call (``handle_one``, in
moray.micro.supervisor, is called for each notification).

Start-up (``Supervisor.run``), in order:

1. clone with a shared fd table (CLONE_FILES); the child puts itself in its own process
   group (the terminal's foreground one when stdin is a tty, as tini does:
   ``kill(0, ...)`` by the workload never reaches the supervisor), restores the signal
   dispositions Python changed, sets no_new_privs, installs the filter and writes the
   listener's fd *number* to a pipe;
2. the supervisor has that fd already (shared table: no pidfd_getfd, which container
   runtimes' seccomp profiles refuse, no sendmsg, which the filter may notify), makes
   itself non-dumpable (the workload, same uid, can then neither ptrace it nor read its
   memory) and tells the child to go;
3. the child execs the command (the first notified call); exec unshares the fd table and
   closes the close-on-exec fds, the listener among them.

Then one thread, one loop: ``select`` on the listener and a signal wake-up pipe; every
notification is answered before the next is taken; signals (TERM, INT, HUP, QUIT, USR1,
USR2, WINCH, CONT) are forwarded to the workload; every child is reaped (the supervisor
is a child subreaper, and PID 1 in a container); when the workload's first process
exits, the supervisor exits with its code (128 + signal when it was killed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from collections.abc import Callable, Sequence

from moray.micro import filter as bpf

log = logging.getLogger(__name__)

FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


class ProcessDuties:
    """Mixed into ``Supervisor``: what it needs from it is declared here."""

    prog: list[bpf.Insn]
    child: int
    listener: int
    _pipes: tuple[int, ...]
    after_spawn: Callable[[], object] | None

    def handle_one(self) -> None:  # pragma: no cover - the supervisor's
        raise NotImplementedError

    def spawn(self, argv: Sequence[str]) -> int:
        """Start the child with a fd table shared with the supervisor (clone
        CLONE_FILES): the listener its seccomp(2) returns is then in the supervisor's
        table at once. Not pidfd_getfd, which the default seccomp profiles of Docker,
        containerd and CRI-O allow only with CAP_SYS_PTRACE; not SCM_RIGHTS, whose sendmsg
        the filter may already notify. The child's execve unshares the table and drops
        the close-on-exec fds (the listener, the pipes below, the event file): the
        workload keeps only what the supervisor inherited as inheritable (stdio)."""
        r_fd, w_fd = os.pipe()
        r_go, w_go = os.pipe()
        self._pipes = (r_fd, w_fd, r_go, w_go)   # shared with the child until its exec
        pid = bpf.clone_files()
        if pid == 0:  # pragma: no cover - the child, until exec; closes nothing (shared)
            try:
                self._child(argv, w_fd, r_go)
            except BaseException as err:
                os.write(2, f"moray micro: cannot start {argv[0]}: {err}\n".encode())
            os._exit(127)
        self.child = pid
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = os.read(r_fd, 16)
            if not chunk or chunk == b"!":
                return pid  # the child failed before the filter: it exits 127, reaped below
            raw += chunk
        self.listener = int(raw)
        bpf._libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        os.write(w_go, b"g")
        return pid

    def _child(self, argv: Sequence[str], w_fd: int, r_go: int) -> None:  # pragma: no cover
        try:
            os.setpgid(0, 0)
            if os.isatty(0):
                old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                with contextlib.suppress(OSError):
                    os.tcsetpgrp(0, os.getpgrp())
                signal.signal(signal.SIGTTOU, old)
            for s in (*FORWARD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD,
                      signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP):
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            fd = bpf.install(self.prog)
        except BaseException:
            os.write(w_fd, b"!")
            raise
        os.write(w_fd, f"{fd}\n".encode())
        os.read(r_go, 1)  # the supervisor holds the listener and is not dumpable now
        os.execvp(argv[0], list(argv))

    # ------------------------------------------------------------------ the loop

    def run(self, argv: Sequence[str]) -> int:
        bpf._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        pending: list[int] = []
        for s in FORWARD:
            signal.signal(s, lambda n, _f: pending.append(n))
        signal.signal(signal.SIGCHLD, lambda _n, _f: None)
        self.spawn(argv)
        if self.after_spawn is not None:
            self.after_spawn()
        status: int | None = None
        try:
            while status is None:
                fds = [wake_r] + ([self.listener] if self.listener >= 0 else [])
                try:
                    ready, _, _ = select.select(fds, [], [], 1.0)
                except InterruptedError:  # pragma: no cover - PEP 475 retries
                    ready = []
                if self.listener in ready:
                    self.handle_one()
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                while pending:
                    sig = pending.pop(0)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.child, sig)
                status = self._reap()
        finally:
            if self.listener >= 0:
                os.close(self.listener)
            for fd in self._pipes:
                os.close(fd)
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
            128 + os.WTERMSIG(status)

    def _reap(self) -> int | None:
        """Reap every exited child; the workload's wait status once it exited."""
        found = None
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return found
            if pid == 0:
                return found
            if pid == self.child:
                found = st
