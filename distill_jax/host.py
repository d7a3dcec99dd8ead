"""What the host gives this process: the CPU cores it may run on."""
import os


def available_cores() -> int:
    """The cores this process may run on (its affinity: a worker pinned to one core
    sees 1, whatever the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # not Linux
        return os.cpu_count() or 1
