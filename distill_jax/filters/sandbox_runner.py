"""Runs one untrusted Python program and its tests inside the sandbox.

Started by `code_exec.run_python_tests` as `python -I sandbox_runner.py` in a
fresh temporary directory with an empty environment. It reads its job (JSON)
from stdin, locks itself down, runs the program and then the test code in one
namespace, and reports the outcome on a private pipe, signed with a nonce the
program never sees (so `os._exit(0)` in the program cannot fake a pass).

Lock-down, in order (each layer is best effort where the OS refuses it; the
layers in force are reported back):
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


def main() -> None:
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)      # fd 0 again, pointing nowhere
    result_fd = int(job["result_fd"])
    nonce = job["nonce"]
    workdir = os.path.realpath(job["workdir"])
    layers: list = []

    def report(status: str, reason: str) -> None:
        os.write(result_fd, json.dumps({"nonce": nonce, "status": status, "reason": reason,
                                        "layers": layers}).encode())
        os.close(result_fd)

    _join_cgroup(job.get("cgroup_dir", ""), layers)
    if job["limits"].get("namespaces", True):
        try:
            _enter_namespaces(workdir, layers)
        except OSError:
            pass
    _set_limits(job["limits"], layers)
    os.chdir(workdir)
    sys.path[:] = [p for p in sys.path if p and os.path.isdir(p)]
    sys.path.insert(0, workdir)
    program, test_code = job["program"], job["test_code"]
    try:
        compiled_program = compile(program, "<program>", "exec")
        compiled_tests = compile(test_code, "<tests>", "exec") if test_code else None
    except SyntaxError as e:
        report("error", f"SyntaxError: {e}")
        return
    if job["limits"].get("audit_hook", True):
        sys.addaudithook(_audit_hook(workdir))
        layers.append("audit-hook")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    phase = "program"
    try:
        exec(compiled_program, namespace)
        phase = "tests"
        if compiled_tests is not None:
            exec(compiled_tests, namespace)
    except MemoryError:
        report("error", f"MemoryError in the {phase}: memory limit reached")
        return
    except SystemExit as e:
        # exit() cuts the tests short, whatever its code: never a pass.
        report("error" if phase == "program" else "failed", f"SystemExit({e.code!r}) in the {phase}")
        return
    except BaseException as e:  # noqa: BLE001 — report everything the program raises
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:])
        sys.stderr.write(tb)
        status = "failed" if phase == "tests" else "error"
        report(status, f"{type(e).__name__} in the {phase}: {str(e)[:300]}")
        return
    sys.stdout.flush()
    report("passed", "")


if __name__ == "__main__":
    main()
