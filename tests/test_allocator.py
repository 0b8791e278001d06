"""reuse_freed_memory: a large buffer allocated again after a free is not page-faulted anew."""
import subprocess
import sys

PROBE = """
import resource, sys, torch
from focalnet_det.allocator import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "reuse" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def cycle():  # what a forward pass does to its activations: allocate, fill, free
    x = torch.ones(64 * 2**20 // 4)  # 64 MB: above glibc's largest mmap threshold
for _ in range(3):
    cycle()
before = faults()
for _ in range(3):
    cycle()
print(took, faults() - before)
"""


def run(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_large_buffers_are_reused_instead_of_faulted_again():
    took, reused_faults = run("reuse")
    assert took
    _, default_faults = run("default")
    pages = 3 * 64 * 2**20 // 4096
    assert default_faults > pages // 2  # glibc's default: fresh pages, each faulted in
    assert reused_faults < pages // 20
