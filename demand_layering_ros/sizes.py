# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Byte sizes the whole package agrees on: one MiB, one page, rounding up to an alignment.

Budgets and every *_mb figure are MiB (2**20 bytes). O_DIRECT needs buffer addresses, lengths
and file offsets aligned to the disk's logical block; 4096 covers every disk we meet, so packs,
arenas and reads all align to PAGE.
"""

MB = 1 << 20
PAGE = 4096


def align_up(n, alignment=PAGE):
    """Round `n` up to a multiple of `alignment`."""
    return (int(n) + alignment - 1) // alignment * alignment


def mib(nbytes, digits=3):
    """Return bytes as MiB rounded to `digits` decimals (None stays None), for reports."""
    return None if nbytes is None else round(nbytes / MB, digits)


def mib_up(nbytes):
    """Return bytes as MiB rounded up to 0.001 (None stays None): a stated peak never under."""
    return None if nbytes is None else -(-int(nbytes) * 1000 // MB) / 1000


def pinned_size(nbytes):
    """
    Return the pinned host bytes a request of `nbytes` holds: the next power of two.

    torch's caching host allocator (pinned memory for CUDA copies) rounds every block up so;
    staging accounts for pinned memory with this rule.
    """
    nbytes = int(nbytes)
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()
