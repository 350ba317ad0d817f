"""Out-of-bounds accesses of Triton kernels, caught under the interpreter (``TRITON_INTERPRET=1``).

A GPU reports a load or store outside every allocation as an illegal memory access, which poisons the process and
names no kernel; one inside a neighbouring allocation it does not report at all. The interpreter runs each program
on numpy arrays whose addresses are the host tensors' own, so every masked-in address can be checked there::

    with checked_memory() as log:         # OutOfBounds (inside the interpreter's error) at the first fault
        forward(...)                      # any code that launches Triton kernels
    print(log.launches)

Within the block each load, store and atomic read-modify-write or compare-and-swap of a kernel must address, at
every lane its mask leaves on, bytes inside the storage of one of that launch's tensor arguments (``views=True``:
inside the elements the argument's own sizes and strides reach, so that an access from one view of an allocation
into the next is caught too). The first access that does not is refused before it is made (the interpreter reads
and writes host memory: a store past an argument would corrupt the process's heap) and raises, naming the kernel,
the operation, the lanes outside and where the first of them fell beside the nearest argument."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np


class OutOfBounds(AssertionError):
    """A kernel's access outside its arguments, found by :func:`checked_memory`."""


@dataclass
class MemoryLog:
    """What :func:`checked_memory` saw: the launches checked; the current launch's kernel and argument ranges."""

    launches: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [start, end) in bytes
    kernel: str = ""

    def check(self, op: str, ptrs, mask, itemsize: int):
        addresses = np.asarray(ptrs, dtype=np.int64)
        if mask is not None:
            addresses = addresses[np.broadcast_to(np.asarray(mask, dtype=bool), addresses.shape)]
        if addresses.size == 0:
            return
        lo, hi = int(addresses.min()), int(addresses.max()) + itemsize
        if any(start <= lo and hi <= end for start, end in self.ranges):  # the usual case: one argument's
            return
        addresses = addresses.ravel()
        inside = np.zeros(addresses.shape, dtype=bool)
        for start, end in self.ranges:
            inside |= (addresses >= start) & (addresses + itemsize <= end)
        if not inside.all():
            bad = int(addresses[~inside][0])
            near = min(self.ranges, key=lambda r: min(abs(bad - r[0]), abs(bad - r[1])), default=None)
            where = f"{bad - near[0]:+d} bytes from a {near[1] - near[0]}-byte argument's start" if near else "no range"
            raise OutOfBounds(f"{self.kernel}: {op} of {int((~inside).sum())} lanes outside its arguments ({where})")


def byte_range(arg, views: bool) -> tuple[int, int] | None:
    """``arg``'s bytes: its storage's, or (``views``) those its own sizes and strides reach from its first element."""
    if not hasattr(arg, "untyped_storage"):
        return None
    if not views:
        storage = arg.untyped_storage()
        return storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    if arg.numel() == 0:
        return arg.data_ptr(), arg.data_ptr()
    reach = sum((n - 1) * st for n, st in zip(arg.shape, arg.stride()))  # non-negative strides (torch's)
    return arg.data_ptr(), arg.data_ptr() + (reach + 1) * arg.element_size()


@contextlib.contextmanager
def checked_memory(views: bool = False):
    """Check every interpreted launch's memory accesses inside the block (see the module's docstring). ``views``:
    each argument's own elements only, not its whole storage (catches an access from one view of an allocation into
    another; a kernel that reaches past the view it was given on purpose fails it)."""
    from triton.runtime import interpreter as it

    log = MemoryLog()
    builder = type(it.interpreter_builder)
    saved = {name: getattr(builder, name) for name in (
        "create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")}
    saved_init = it.GridExecutor._init_args_hst

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = saved_init(self, args_dev, kwargs)
        found = [byte_range(a, views) for a in [*args_hst, *kwargs_hst.values()]]
        log.ranges = [r for r in found if r is not None]
        log.kernel = getattr(self.fn, "__name__", str(self.fn))
        log.launches += 1
        return args_hst, kwargs_hst

    def itemsize(ptrs):
        return np.dtype(it._get_np_dtype(ptrs.get_element_ty())).itemsize

    def load(self, ptrs, mask, *args):
        log.check("load", ptrs.data, mask.data, itemsize(ptrs))
        return saved["create_masked_load"](self, ptrs, mask, *args)

    def store(self, ptrs, value, mask, *args):
        log.check("store", ptrs.data, mask.data, itemsize(ptrs))
        return saved["create_masked_store"](self, ptrs, value, mask, *args)

    def rmw(self, op, ptr, val, mask, *args):
        log.check("atomic", ptr.data, mask.data, itemsize(ptr))
        return saved["create_atomic_rmw"](self, op, ptr, val, mask, *args)

    def cas(self, ptr, cmp, val, *args):
        log.check("atomic_cas", ptr.data, None, itemsize(ptr))
        return saved["create_atomic_cas"](self, ptr, cmp, val, *args)

    it.GridExecutor._init_args_hst = init_args
    for name, fn in (("create_masked_load", load), ("create_masked_store", store), ("create_atomic_rmw", rmw),
                     ("create_atomic_cas", cas)):
        setattr(builder, name, fn)
    try:
        yield log
    finally:
        it.GridExecutor._init_args_hst = saved_init
        for name, fn in saved.items():
            setattr(builder, name, fn)
