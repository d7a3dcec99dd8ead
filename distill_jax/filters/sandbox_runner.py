"""Runs one untrusted Python program and its tests inside the sandbox.

Started by `code_exec` as `python -I sandbox_runner.py` in a fresh temporary
directory with an empty environment. It reads its job (JSON) from stdin, locks
itself down, tells the parent which layers are in force, and runs the program.
It never judges: for function-call tests it answers calls from the trusted
harness (trusted_harness.py, another process) with plain data (`_serve`); for
stdin/stdout tests it runs the program once per input and hands the outputs
back to the parent, which compares them (`_judge_io`). Nothing the program can
reach here decides a verdict.

Lock-down, in order (each layer is best effort where the OS refuses it; the
layers in force are reported back; started as root, the runner also becomes
`nobody` after the namespaces, so the kernel keeps the program away from every
other process -- `_drop_root`):
  1. resource limits: CPU seconds, address space, file size, no core dumps,
     open files; RLIMIT_NPROC when not root (root ignores it);
  2. a pids cgroup prepared by the parent, when the machine allows one (a
     kernel limit on forks that also holds for root);
  3. Linux namespaces: a new network namespace (no interfaces but a down
     loopback: no network at all) and a mount namespace where every mount is
     read-only except the work directory (writes elsewhere fail in the kernel).
     Needs root or unprivileged user namespaces;
  4. a Python audit hook: no new processes (fork/exec/spawn/subprocess), no
     sockets, no ctypes, writes only under the work directory, no reading
     other processes' /proc entries (the parent's environment).
"""
import json
import os
import resource
import sys
import traceback

# plain_data.py sits next to this script; `-I` keeps the script's folder off sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plain_data  # noqa: E402
del sys.path[0]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MOUNT_FLAG_NAMES = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                     "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                     "relatime": MS_RELATIME}


def _set_limits(limits: dict, layers: list) -> None:
    cpu = int(limits["cpu_time_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    size = int(limits["max_file_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    layers.append("rlimits")
    if os.geteuid() != 0:
        # NPROC counts every task of this user; allow what already runs plus a few.
        own = _count_user_tasks(os.getuid())
        n = own + int(limits["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
        layers.append("nproc")


def _count_user_tasks(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def _join_cgroup(cgroup_dir: str, layers: list) -> None:
    if not cgroup_dir:
        return
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        layers.append("pids-cgroup")
    except OSError:
        pass


def _enter_namespaces(workdir: str, layers: list) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0:
            return
        # Map ourselves to ourselves so file ownership looks unchanged.
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            except OSError:
                pass
        layers.append("userns")
    layers.append("netns")

    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                      ctypes.c_void_p]
    if mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return
    if mount(workdir.encode(), workdir.encode(), None, MS_BIND | MS_REC, None) != 0:
        return
    readonly_ok = True
    with open("/proc/self/mountinfo") as f:
        entries = [line.split() for line in f]
    for fields in entries:
        point = fields[4].replace("\\040", " ")
        if point == workdir or point.startswith(workdir + "/") or point.startswith("/proc"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
            flags |= _MOUNT_FLAG_NAMES.get(opt, 0)
        if mount(None, point.encode(), None, flags, None) != 0 and point == "/":
            readonly_ok = False
    if readonly_ok:
        layers.append("readonly-fs")


def _audit_hook(workdir: str):
    own_pid = str(os.getpid())
    allowed_write_roots = (workdir, "/dev/null")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    denied_events = {
        "os.fork": "starting processes", "os.forkpty": "starting processes",
        "os.system": "starting processes", "os.exec": "starting processes",
        "os.posix_spawn": "starting processes", "os.spawn": "starting processes",
        "subprocess.Popen": "starting processes", "pty.spawn": "starting processes",
        "socket.__new__": "network access", "socket.connect": "network access",
        "socket.bind": "network access", "socket.getaddrinfo": "network access",
        "ctypes.dlopen": "loading native code", "ctypes.dlsym": "loading native code",
        "os.kill": "signalling processes", "os.killpg": "signalling processes",
        "os.setuid": "changing identity", "os.chroot": "changing root",
    }
    path_events = {"os.remove", "os.rmdir", "os.rename", "os.replace", "os.mkdir",
                   "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate",
                   "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
                   "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr"}

    def inside(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return any(real == root or real.startswith(root.rstrip("/") + "/")
                   for root in allowed_write_roots)

    def hook(event, args):
        if event in denied_events:
            raise PermissionError(f"sandbox: {denied_events[event]} is not allowed ({event})")
        if event == "import" and args[0] in ("ctypes", "_ctypes", "cffi", "_posixsubprocess"):
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int) or path is None:
                return
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags is not None and flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the work directory: {path}")
            real = os.path.realpath(os.fsdecode(path))
            parts = real.split("/")
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() \
                    and parts[2] != own_pid:
                raise PermissionError(f"sandbox: reading another process's {real}")
            return
        if event in path_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the work directory: {a}")
    return hook


NOBODY = 65534


def _world_readable(path: str) -> bool:
    """Whether any user can list `path` and reach it (o+rx on it, o+x on its parents)."""
    import stat
    path = os.path.realpath(path)
    try:
        if os.stat(path).st_mode & (stat.S_IROTH | stat.S_IXOTH) != (stat.S_IROTH | stat.S_IXOTH):
            return False
        while path != "/":
            path = os.path.dirname(path)
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


def _drop_root(workdir: str, layers: list) -> None:
    """Started as root: become `nobody` (uid/gid 65534, no groups) once the root-only
    layers are up. The kernel then refuses the program every process that is not its
    own -- /proc/<pid>/fd, /mem and /environ of the harness or the caller, signals --
    whatever it does to the audit hook. The work directory becomes nobody's.

    Only where nobody can still read Python itself: an interpreter under /root (pyenv,
    conda) is not, and a program that cannot import `math` is no test of anything; the
    layer is then not in force (and not reported)."""
    if os.geteuid() != 0 or not all(_world_readable(p) for p in sys.path if os.path.isdir(p)):
        return
    try:
        os.chown(workdir, NOBODY, NOBODY)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError:
        return
    layers.append("nobody")


def _lock_down(job: dict, layers: list) -> str:
    """Layers 1-3 for this process (the audit hook comes later: it would stop the runner
    itself); the work directory, now the current one."""
    workdir = os.path.realpath(job["workdir"])
    _join_cgroup(job.get("cgroup_dir", ""), layers)
    if job["limits"].get("namespaces", True):
        try:
            _enter_namespaces(workdir, layers)
        except OSError:
            pass
    _drop_root(workdir, layers)
    _set_limits(job["limits"], layers)
    os.chdir(workdir)
    sys.path[:] = [p for p in sys.path if p and os.path.isdir(p)]
    sys.path.insert(0, workdir)
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)     # big integers cross the wire as JSON numbers
    return workdir


def _send(fd: int, message) -> None:
    data = (plain_data.encode(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _serve(job: dict, workdir: str, layers: list, status) -> None:
    """Function-call tests: run the program, then answer the trusted harness's calls.

    Messages (plain_data lines): to the harness ("ready", [callable names]) or ("error",
    reason) once, then per call ("value", v) | ("raised", type name, message) |
    ("not plain", reason); from the harness ("call", name, args, kwargs). The program
    never sees the tests, the expected values or the verdict: a forged message is at
    most a value of its choosing, compared in the harness.
    """
    calls = os.fdopen(int(job["call_fd"]), "rb")
    replies = int(job["reply_fd"])
    try:
        compiled = compile(job["program"], "<program>", "exec")
    except SyntaxError as e:
        _send(replies, ("error", f"SyntaxError: {e}"))
        return
    if job["limits"].get("audit_hook", True):
        sys.addaudithook(_audit_hook(workdir))
        layers.append("audit-hook")
    status(layers)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
    except MemoryError:
        _send(replies, ("error", "MemoryError in the program: memory limit reached"))
        return
    except BaseException as e:  # noqa: BLE001 — report everything the program raises
        _print_tail(e)
        _send(replies, ("error", f"{type(e).__name__} in the program: {str(e)[:300]}"))
        return
    sys.stdout.flush()
    _send(replies, ("ready", sorted(k for k, v in namespace.items()
                                    if callable(v) and not k.startswith("__"))))
    for line in calls:
        try:
            _, name, args, kwargs = plain_data.decode(line)
            value = namespace[name](*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 — the harness decides what it means
            _print_tail(e)
            _send(replies, ("raised", type(e).__name__, str(e)[:1000]))
            if isinstance(e, SystemExit):
                return
            continue
        sys.stdout.flush()
        try:
            _send(replies, ("value", value))
        except plain_data.NotPlainData as e:
            _send(replies, ("not plain", str(e)))


def _print_tail(e: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:])
    sys.stderr.write(tb)


def main() -> None:
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)      # fd 0 again, pointing nowhere
    layers: list = []
    status_fd = int(job["status_fd"])

    def status(layers_in_force: list) -> None:
        """The layers in force, told to the parent before any untrusted code runs."""
        os.write(status_fd, json.dumps({"layers": layers_in_force}).encode())
        os.close(status_fd)

    workdir = _lock_down(job, layers)
    if job.get("mode") == "io":
        _judge_io(job, workdir, layers, status)
    else:
        _serve(job, workdir, layers, status)


def _io_write_line(fd: int, message: dict) -> bool:
    """One JSON line to the parent; False when it stopped listening."""
    data = (json.dumps(message) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        return False
    return True


def _io_exit_status(e: SystemExit) -> int:
    """The exit status Python gives `SystemExit(e.code)`; never 250 (kept for MemoryError)."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        code &= 0xFF
        return 1 if code == 250 else code
    try:
        sys.stderr.write(f"{code}\n")
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _io_child(compiled, workdir: str, job: dict, in_r: int, out_w: int, err_w: int) -> None:
    """The forked child of one I/O case: runs the program with the case on stdin, then
    `os._exit`s -- 0 normal exit (or `sys.exit(0)`), 1 uncaught exception (traceback
    tail on stderr), 250 MemoryError, else the program's own `sys.exit` status.
    It never returns into the runner, whatever the program does."""
    code = 1
    try:
        import atexit
        import builtins
        import io
        import math
        import types
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Everything else goes: the result fd, the pipes of the runner, the pidfd.
        os.closerange(3, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 16))
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False),
                                                     encoding="utf-8")
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.open(1, "wb", closefd=False),
                                                       encoding="utf-8")
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            io.open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
            line_buffering=True)
        # CPU seconds of this case (a forked child starts from 0): the job's CPU limit,
        # or the case's wall limit if lower.
        cpu = max(1, min(int(job["limits"]["cpu_time_s"]),
                         math.ceil(float(job["case_wall_time_s"]))))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard == resource.RLIM_INFINITY or hard > cpu + 1:
            hard = cpu + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, hard), hard))
        hook = job["limits"].get("audit_hook", True)
        if isinstance(job.get("cases"), list):
            job["cases"].clear()    # this copy only: no other case's input is an object here
        job.clear()
        if hook:
            sys.addaudithook(_audit_hook(workdir))
        main_module = types.ModuleType("__main__")
        main_module.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main_module
        sys.argv = ["<program>"]
        atexit._clear()
        try:
            exec(compiled, main_module.__dict__)
            code = 0
        except SystemExit as e:
            code = _io_exit_status(e)
        except MemoryError:
            code = 250
            try:
                sys.stderr.write("MemoryError\n")
            except BaseException:  # noqa: BLE001
                pass
        except BaseException as e:  # noqa: BLE001 — any exception is a runtime error
            code = 1
            try:
                _print_tail(e)
            except BaseException:  # noqa: BLE001
                pass
        # What Python does at exit: wait for non-daemon threads, run atexit, flush.
        try:
            threading = sys.modules.get("threading")
            if threading is not None:
                threading._shutdown()
        except BaseException:  # noqa: BLE001
            pass
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            pass
        for stream in (sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__):
            try:
                stream.flush()
            except MemoryError:
                code = code or 250
            except BaseException:  # noqa: BLE001
                code = code or 1
    finally:
        os._exit(code)


def _io_read(fd: int) -> bytes | None:
    """A chunk, b"" at end of file, None when nothing is there now."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _io_case(compiled, data: bytes, workdir: str, job: dict) -> dict:
    """Forks one child on one input; the runner itself never runs program code.

    The child's stdin is a pipe the runner feeds (no file: RLIMIT_FSIZE would cap the
    input); stdout and stderr are pipes the runner drains, stdout kept up to
    `max_output_bytes` (the child is killed as soon as it prints more: "output_limit"),
    stderr's last 4 KiB. The case ends when the child exits (seen through a pidfd, so
    a grandchild holding a pipe open cannot stall it), or is killed at the wall limit.
    The child stays in the runner's process group: killing the sandbox kills it too.
    """
    import base64
    import selectors
    import signal
    import time
    wall = float(job["case_wall_time_s"])
    cap = int(job["limits"]["max_output_bytes"])
    tail = 4096
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _io_child(compiled, workdir, job, in_r, out_w, err_w)   # never returns
        os._exit(1)
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None                       # old kernel: poll with waitid(WNOWAIT)
    sel = selectors.DefaultSelector()
    for fd in (in_w, out_r, err_r):
        os.set_blocking(fd, False)
    if data:
        sel.register(in_w, selectors.EVENT_WRITE, "in")
    else:
        os.close(in_w)
        in_w = -1
    sel.register(out_r, selectors.EVENT_READ, "out")
    sel.register(err_r, selectors.EVENT_READ, "err")
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    out, err = bytearray(), bytearray()
    out_total, sent = 0, 0
    view = memoryview(data)
    exited = timed_out = too_much = False
    end = start

    def take(name: str, chunk: bytes) -> None:
        nonlocal out_total, too_much
        if name == "out":
            out_total += len(chunk)
            room = cap - len(out)
            if room > 0:
                out.extend(chunk[:room])
            too_much = out_total > cap
        else:
            err.extend(chunk)
            del err[:-tail]

    try:
        while not exited and not too_much:
            remaining = start + wall - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            events = sel.select(remaining if pidfd is not None else min(remaining, 0.002))
            for key, _ in events:
                if key.data == "in":
                    try:
                        sent += os.write(in_w, view[sent:sent + (1 << 16)])
                    except BlockingIOError:
                        pass
                    except OSError:            # the child closed stdin or exited
                        sent = len(data)
                    if sent >= len(data):
                        sel.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
                elif key.data == "exit":
                    exited = True
                else:
                    chunk = _io_read(key.fd)
                    if chunk == b"":
                        sel.unregister(key.fd)
                    elif chunk:
                        take(key.data, chunk)
            if pidfd is None and not exited:
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) \
                    is not None
        end = time.monotonic()
        if timed_out or too_much:
            os.kill(pid, signal.SIGKILL)
        else:
            # Exited: what it wrote is in the pipes. Drain without waiting for EOF
            # (a grandchild may hold them open), within the case's time.
            for fd, name in ((out_r, "out"), (err_r, "err")):
                while not too_much and time.monotonic() < start + wall:
                    chunk = _io_read(fd)
                    if not chunk:
                        break
                    take(name, chunk)
            if too_much:
                os.kill(pid, signal.SIGKILL)   # a zombie by now; harmless
        _, wait_status = os.waitpid(pid, 0)
    finally:
        sel.close()
        for fd in (in_w, out_r, err_r, -1 if pidfd is None else pidfd):
            if fd >= 0:
                os.close(fd)
    exit_code = os.waitstatus_to_exitcode(wait_status)
    return {"stdout_b64": base64.b64encode(bytes(out)).decode(), "stdout_total": out_total,
            "stderr": err.decode("utf-8", errors="replace"),
            "exit": exit_code if exit_code >= 0 else None,
            "signal": -exit_code if exit_code < 0 else None,
            "wall_s": round(end - start, 4), "memory": exit_code == 250,
            "timeout": timed_out, "output_limit": too_much}


def _judge_io(job: dict, workdir: str, layers: list, status) -> None:
    """Stdin/stdout tests: run the program once per input and hand the outputs back.

    Job fields: "program", "cases" (the inputs, str: expected outputs never enter the
    sandbox; the parent compares), "case_wall_time_s", "result_fd",
    "stop_on_first_failure". The program is compiled once here; a compile error is
    one line {"compile_error": "SyntaxError: ..."} for all cases. Then each case runs
    in a forked child (`_io_case`, `_io_child`: fresh `__main__`, the audit hook, its
    own CPU limit) and gets one line on result_fd:
      {"case": i, "stdout_b64": ..., "stdout_total": n, "stderr": tail, "exit": code,
       "signal": sig, "wall_s": t, "memory": bool, "timeout": bool, "output_limit": bool}
    "exit" is None when a signal ended the child (SIGKILL from the runner at the wall
    or output limit, SIGXCPU at the CPU limit, ...). With stop_on_first_failure the
    runner stops after a case that failed in a way it can see (a limit, a signal, a
    non-zero exit); a wrong answer only the parent can see, and it then stops reading
    and kills the sandbox.
    """
    result_fd = int(job["result_fd"])
    try:
        compiled = compile(job["program"], "<program>", "exec", dont_inherit=True)
        error = ""
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
        compiled, error = None, f"{type(e).__name__}: {e}"
    if job["limits"].get("audit_hook", True):
        layers.append("audit-hook")       # installed in each case's child
    status(layers)
    if compiled is None:
        _io_write_line(result_fd, {"compile_error": error})
        return
    for i, text in enumerate(job["cases"]):
        result = {"case": i, **_io_case(compiled, text.encode("utf-8", "surrogatepass"),
                                         workdir, job)}
        if not _io_write_line(result_fd, result):
            return
        if job.get("stop_on_first_failure") and (
                result["timeout"] or result["output_limit"] or result["exit"] != 0):
            return


if __name__ == "__main__":
    main()
