"""This process's peak resident memory, read without MindSpore: the benchmark's isolated measurements and
the official PyTorch PPT's timing (``tools/official_ppt_timing.py``, run under a torch venv) report the
same number."""
import resource

__all__ = ["process_peak_mb"]


def process_peak_mb():
    """This process's peak resident memory so far (MB; compile included): the high-water mark of its own
    address space (``VmHWM``). Not ``ru_maxrss``: Linux carries that over an exec from the forking parent,
    so a child started by a large parent would report at least the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
