# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Host memory mapped into a GPU's address space: the zero-copy arena, registered and proven.

`cudaHostRegister` runs inside the model's device guard with Portable | Mapped, so every
context maps the memory and `cudaPointerGetAttributes` names the model's device (torch labels a
tensor over the pointer with that device; registered outside the guard, older torch silently
copied it to the right device, a stale snapshot, and newer torch labelled an unmapped pointer).
The GPU's address of the memory equals the host's only when the device says so
(`cudaDevAttrCanUseHostPointerForRegisteredMem`); otherwise `cudaHostGetDevicePointer` gives it.
torch binds neither, so both go through ctypes to the CUDA runtime torch itself loaded. The CUDA
tensor made over that address is checked (its pointer and its device), and a write-then-read
round trip proves that a kernel reads what the host wrote before any weight goes there.
"""

import ctypes
import ctypes.util
import functools
import mmap
import os

from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.sizes import align_up, PAGE
import torch

HOST_REGISTER_PORTABLE = 1              # cudaHostRegisterPortable
HOST_REGISTER_MAPPED = 2                # cudaHostRegisterMapped
ATTR_HOST_POINTER_IS_DEVICE_POINTER = 91     # cudaDevAttrCanUseHostPointerForRegisteredMem
CHECK_BYTES = 64                        # bytes written and read back at each end of the arena


class _DeviceArray:
    """Expose memory at a device address to torch.as_tensor (__cuda_array_interface__ v3)."""

    def __init__(self, addr, nbytes):
        self.__cuda_array_interface__ = {'shape': (nbytes,), 'typestr': '|u1',
                                         'data': (addr, False), 'version': 3}


def _loaded_cudart_paths():
    """Return the paths of the CUDA runtime libraries mapped into this process."""
    paths = []
    try:
        with open('/proc/self/maps') as f:
            for line in f:
                path = line.rstrip('\n').split(None, 5)[-1]
                if os.path.basename(path).startswith('libcudart.so') and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


@functools.lru_cache(maxsize=1)
def cudart_library():
    """
    Return a ctypes handle on the CUDA runtime torch uses (the very library, when loaded).

    Opening the path already mapped returns the same library, so the calls see torch's state.
    Raises ExecutorError when no CUDA runtime library can be found.
    """
    found = ctypes.util.find_library('cudart')
    for path in _loaded_cudart_paths() + ([found] if found else []):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.cudaDeviceGetAttribute.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                               ctypes.c_int]
        lib.cudaDeviceGetAttribute.restype = ctypes.c_int
        lib.cudaHostGetDevicePointer.argtypes = [ctypes.POINTER(ctypes.c_void_p),
                                                 ctypes.c_void_p, ctypes.c_uint]
        lib.cudaHostGetDevicePointer.restype = ctypes.c_int
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        return lib
    raise ExecutorError('zero_copy needs the CUDA runtime library (libcudart), which this '
                        'process has not loaded and ctypes cannot find; use staging=copy')


def _cuda_error(lib, call, rc):
    text = lib.cudaGetErrorString(rc) if lib is not None else None
    text = text.decode(errors='replace') if text else 'unknown error'
    return ExecutorError(f'{call} failed (cudaError {rc}: {text}); use staging=copy')


def device_pointer(addr, index, lib=None):
    """Return the device address of registered host memory at `addr` on device `index`."""
    lib = lib or cudart_library()
    value = ctypes.c_int(-1)
    rc = lib.cudaDeviceGetAttribute(ctypes.byref(value), ATTR_HOST_POINTER_IS_DEVICE_POINTER,
                                    index)
    if rc != 0:
        raise _cuda_error(lib, 'cudaDeviceGetAttribute(CanUseHostPointerForRegisteredMem)', rc)
    if value.value == 1:
        return addr
    ptr = ctypes.c_void_p()
    rc = lib.cudaHostGetDevicePointer(ctypes.byref(ptr), ctypes.c_void_p(addr), 0)
    if rc != 0:
        raise _cuda_error(lib, 'cudaHostGetDevicePointer', rc)
    return ptr.value


def check_mapping(host, dev, device):
    """Raise ExecutorError unless `dev` is a tensor on `device` that reads what `host` holds."""
    if dev.device != device:
        raise ExecutorError(f'zero_copy: torch put the mapped arena on {dev.device}, not on '
                            f'{device}; use staging=copy')
    n = host.numel()
    pattern = torch.frombuffer(bytearray(os.urandom(CHECK_BYTES)), dtype=torch.uint8)
    for off in sorted({0, max(0, n - CHECK_BYTES)}):
        k = min(CHECK_BYTES, n - off)
        host[off:off + k].copy_(pattern[:k])
        seen = dev[off:off + k].to(torch.int16).cpu()      # read by a kernel on the device
        if not torch.equal(seen, pattern[:k].to(torch.int16)):
            raise ExecutorError(f'zero_copy: {device} does not read what the host wrote at '
                                f'byte {off} of the mapped arena; use staging=copy')


def mapped_host_arena(nbytes, device):
    """
    Return (host uint8 tensor, CUDA uint8 tensor over the same memory, unregister fn).

    The memory is registered on `device` (a torch.device with an index), mapped, checked and
    verified; on any failure it is unregistered again before the error propagates.
    """
    nbytes = max(align_up(nbytes), PAGE)
    device = torch.device(device)
    if device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    lib = cudart_library()                  # before registering: nothing to undo if missing
    buf = mmap.mmap(-1, nbytes)
    host = torch.frombuffer(buf, dtype=torch.uint8)
    addr = host.data_ptr()
    cudart = torch.cuda.cudart()
    with torch.cuda.device(device):
        rc = int(cudart.cudaHostRegister(addr, nbytes,
                                         HOST_REGISTER_PORTABLE | HOST_REGISTER_MAPPED))
        if rc != 0:
            raise _cuda_error(lib, f'cudaHostRegister of a {nbytes}-byte zero-copy arena', rc)
        try:
            dptr = device_pointer(addr, device.index, lib)
            dev = torch.as_tensor(_DeviceArray(dptr, nbytes), device=device)
            if dev.data_ptr() != dptr:
                raise ExecutorError(f'zero_copy: torch copied the mapped arena instead of '
                                    f'using it in place (pointer {dev.data_ptr():#x}, mapped '
                                    f'at {dptr:#x}); use staging=copy')
            check_mapping(host, dev, device)
        except BaseException:
            cudart.cudaHostUnregister(addr)
            raise

    def unregister():
        with torch.cuda.device(device):
            torch.cuda.synchronize(device)
            cudart.cudaHostUnregister(addr)         # before the mmap goes

    return host, dev, unregister
