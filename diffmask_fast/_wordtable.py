"""Numba kernels behind ``count_words``: whitespace splitting on raw UTF-8 bytes, per-thread hash
tables of distinct byte strings, normalization of ASCII words, sorting and merging of count tables.

Why raw bytes give exactly ``reference.count_words``. The reference decodes a file as UTF-8 with
``errors="replace"`` and splits with ``str.split()``. Every code point ``str.split()`` treats as
whitespace (``WHITESPACE``) is either an ASCII byte or a complete, valid 2- or 3-byte sequence.
UTF-8 is self-synchronizing: an ASCII byte is never swallowed by a replaced invalid sequence, and
the lead byte of a valid sequence (0xC2, 0xE1, 0xE2, 0xE3 here) is never a continuation byte, so
the decoder always decodes a complete valid whitespace sequence as that whitespace character, and
U+FFFD (what invalid bytes become) is not whitespace. Hence the words of the decoded text are the
maximal runs of bytes between whitespace sequences, each decoded on its own: the run ends at a
character boundary, and an incomplete sequence at its end becomes one U+FFFD either way. The
kernel therefore splits and counts byte strings and never decodes; each *distinct* byte string is
normalized once afterwards (in Numba for ASCII words, with ``reference.normalize_word`` otherwise).

A table is open addressing with linear probing over 32-byte slots (int64 rows, at most half
full), so a lookup touches one cache line: a word of up to 16 bytes (almost every word) is stored
in the slot itself, a longer one in an ``arena`` of bytes with its offset and hash in the slot.
Row layout: ``[bytes 0-7 | arena offset, bytes 8-15 | hash, length (0 = empty), count]``.
``meta`` holds counters (``META_*``). Tables grow by doubling; kernels that may grow one return
the (possibly reallocated) arrays, and the hot loops only signal "full" to keep them free of
reference counting.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.cpython.unsafe.numbers import trailing_zeros

from . import reference

#: Every code point ``str.split()`` treats as whitespace (tests check this against Python).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

#: Byte classes: 0 = inside a word, 1 = ASCII whitespace, 2 = lead byte of a multi-byte
#: whitespace sequence (only a whitespace character if the whole sequence follows).
BYTE_CLASS = np.zeros(256, np.uint8)
for _ch in WHITESPACE:
    _encoded = _ch.encode("utf-8")
    BYTE_CLASS[_encoded[0]] = 1 if len(_encoded) == 1 else 2

#: ASCII bytes that normalize_word strips from word ends (Unicode categories P* and S*, and
#: whitespace, which never is inside a word split on it).
ASCII_STRIP = np.zeros(256, np.bool_)
for _byte in range(128):
    ASCII_STRIP[_byte] = reference._is_stripped_from_word_ends(chr(_byte))

#: meta[] slots: distinct strings, arena bytes used, "\n" bytes, "\r" bytes, "\r\n" pairs, words.
META_DISTINCT, META_ARENA, META_LF, META_CR, META_CRLF, META_WORDS = range(6)
META_SIZE = 8
#: Longest string stored inside its slot.
INLINE = 16

_FNV_OFFSET = np.int64(-3750763034362895579)  # 0xcbf29ce484222325 as a signed 64-bit integer
_FNV_PRIME = np.int64(1099511628211)
_MIX_A = np.int64(-7046029254386353131)  # 0x9e3779b97f4a7c15
_MIX_B = np.int64(-4417276706812531889)  # 0xc2b2ae3d27d4eb4f
_MIX_C = np.int64(-2994355149440213613)  # 0xd6e8feb86659fd93


@intrinsic
def _load8(typingctx, array, position):
    """The 8 bytes array[position:position + 8] as a little-endian int64 (an unaligned load)."""
    signature = types.int64(array, types.intp)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
        value = builder.load(pointer, align=1)
        return builder.bswap(value) if sys.byteorder == "big" else value

    return signature, codegen


@intrinsic
def _prefetch(typingctx, array, position):
    """Hint the CPU to load the cache line of array.flat[position] (llvm.prefetch; no effect on
    results)."""
    signature = types.void(array, types.intp)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(function, [builder.bitcast(builder.gep(data, [args[1]]), byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _popcount(typingctx, value):
    """The number of bits set in an int64 (llvm.ctpop)."""
    signature = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(function, [args[0]])

    return signature, codegen


def new_table(capacity: int = 1 << 14, arena_bytes: int = 1 << 16):
    """An empty table with room for ``capacity`` distinct strings before it first grows."""
    capacity = max(16, 1 << (int(capacity) - 1).bit_length())
    slots = np.zeros((2 * capacity, 4), np.int64)
    arena = np.zeros(max(16, int(arena_bytes)), np.uint8)
    meta = np.zeros(META_SIZE, np.int64)
    return slots, arena, meta


@njit(inline="always")
def _space_length(buf, i, end):
    """Length of the multi-byte whitespace sequence at buf[i] (a class-2 byte), or 0."""
    c = buf[i]
    if c == 0xC2:
        if i + 1 < end:
            d = buf[i + 1]
            if d == 0x85 or d == 0xA0:
                return 2
        return 0
    if i + 2 >= end:
        return 0
    d = buf[i + 1]
    e = buf[i + 2]
    if c == 0xE2:
        if d == 0x80:
            if (0x80 <= e and e <= 0x8A) or e == 0xA8 or e == 0xA9 or e == 0xAF:
                return 3
            return 0
        if d == 0x81 and e == 0x9F:
            return 3
        return 0
    if c == 0xE1:
        return 3 if (d == 0x9A and e == 0x80) else 0
    if c == 0xE3:
        return 3 if (d == 0x80 and e == 0x80) else 0
    return 0


@njit(inline="always")
def _mix(a, b, length):
    h = (a * _MIX_A) ^ ((b + length) * _MIX_B)
    h ^= h >> 32
    h *= _MIX_C
    h ^= h >> 29
    return h


@njit(nogil=True, cache=True)
def _grow(slots, arena, meta, length):
    """Room for one more string of ``length`` bytes: doubles whatever is full (the kernels stop
    and return when a string does not fit, so that the hot loops never reallocate)."""
    n = meta[META_DISTINCT]
    used = meta[META_ARENA]
    if length > INLINE and used + length > arena.shape[0]:
        bigger = np.zeros(max(2 * arena.shape[0], used + length), np.uint8)
        bigger[:used] = arena[:used]
        arena = bigger
    if 2 * (n + 1) > slots.shape[0]:
        grown = np.zeros((2 * slots.shape[0], 4), np.int64)
        mask = grown.shape[0] - 1
        for i in range(slots.shape[0]):
            size = slots[i, 2]
            if size == 0:
                continue
            if size <= INLINE:
                h = _mix(slots[i, 0], slots[i, 1], size)
            else:
                h = _mix(slots[i, 1], np.int64(0), size)
            j = h & mask
            while grown[j, 2] != 0:
                j = (j + 1) & mask
            grown[j, :] = slots[i, :]
        slots = grown
    return slots, arena


@njit(nogil=True, cache=True)
def count_lines(buf, start, end, prev):
    r"""Line ends in buf[start:end]: (\n bytes, \r bytes, \r\n pairs); ``prev`` is the byte before
    ``start`` (-1 if none), for a pair split between two spans."""
    if end <= start:
        return 0, 0, 0
    first = buf[start]
    lf = 1 if first == 10 else 0
    cr = 1 if first == 13 else 0
    crlf = 1 if (first == 10 and prev == 13) else 0
    for i in range(start + 1, end):
        c = buf[i]
        is_lf = c == 10
        lf += is_lf
        cr += c == 13
        crlf += is_lf & (buf[i - 1] == 13)
    return lf, cr, crlf


@intrinsic
def _block_masks(typingctx, array, position):
    """Bit masks of the 64 bytes array[position:position + 64] (bit j for byte position + j):
    ASCII whitespace, "\\n", "\\r", and non-ASCII bytes (vector compares in LLVM IR)."""
    signature = types.UniTuple(types.int64, 4)(array, types.intp)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        vector = ir.VectorType(ir.IntType(8), 64)
        v = builder.load(builder.bitcast(builder.gep(data, [args[1]]), vector.as_pointer()), align=1)
        i64 = ir.IntType(64)

        def splat(value):
            return ir.Constant(vector, [value] * 64)

        def bits(flags):  # element j of a <64 x i1> vector -> bit j
            value = builder.bitcast(flags, i64)
            if sys.byteorder == "big":
                function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]),
                                                          "llvm.bitreverse.i64")
                value = builder.call(function, [value])
            return value

        control = builder.or_(builder.icmp_unsigned("<", builder.sub(v, splat(0x09)), splat(5)),
                              builder.icmp_unsigned("<", builder.sub(v, splat(0x1C)), splat(4)))
        space = builder.or_(control, builder.icmp_unsigned("==", v, splat(0x20)))
        masks = [bits(space), bits(builder.icmp_unsigned("==", v, splat(0x0A))),
                 bits(builder.icmp_unsigned("==", v, splat(0x0D))), bits(builder.icmp_signed("<", v, splat(0)))]
        return context.make_tuple(builder, sig.return_type, masks)

    return signature, codegen


#: Words scanned ahead of their lookups: the slots of a batch are prefetched together, so the
#: cache misses of a batch overlap instead of following one another.
BATCH = 32
#: Bytes scanned at a time: whitespace is found with vector compares as a 64-bit mask.
BLOCK = 64


@njit(nogil=True, cache=True)
def _count_until_full(buf, start, end, prev, slots, arena, meta):
    """Count the words and line ends of buf[start:end] until a word does not fit; returns where
    it stopped (a word start, or ``end``) and the length of the word that did not fit. ``prev``
    is the byte before ``start`` (-1 if none), for a "\\r\\n" pair split between two spans.

    The text is scanned 64 bytes at a time: vector compares give bit masks of its whitespace
    and line ends, and the words are read off the mask (bit tricks, no branch per byte or per
    word length); a non-ASCII byte only costs a look at whether it starts a whitespace
    character. Each word is packed into its slot key with two masked loads and hashed; when a
    batch of words is gathered it is looked up, its slots prefetched so that their cache misses
    overlap. Key packing and lookup are written out here rather than in a helper: Numba passes
    arrays to a function, even an inlined one, with reference counting that would cost more
    than the lookup itself."""
    size_buf = buf.shape[0]
    mask = slots.shape[0] - 1
    n = meta[META_DISTINCT]
    limit = slots.shape[0] // 2
    room = BATCH + BLOCK + 1
    starts = np.empty(room, np.int64)
    ends = np.empty(room, np.int64)
    key0 = np.empty(room, np.int64)
    key1 = np.empty(room, np.int64)
    hashes = np.empty(room, np.int64)
    tail = np.empty(BLOCK, np.uint8)
    words = 0
    lf = 0
    cr = 0
    crlf = 0
    cr_before = np.int64(1) if prev == 13 else np.int64(0)  # whether the byte before p is "\r"
    space_before = np.int64(1)  # whether the byte before p is whitespace (start is a boundary)
    carry = np.int64(0)  # whitespace bits of a multi-byte character that runs into the next block
    pending = -1  # start of a word that runs on past the scanned blocks
    m = 0
    p = start
    while p < end or m > 0:
        if p < end:
            # Scan a block: its whitespace mask, then the words that start or end in it.
            if p + BLOCK <= end:
                space, lfs, crs, high = _block_masks(buf, p)
            else:
                for t in range(BLOCK):
                    tail[t] = buf[p + t] if p + t < end else 32
                space, lfs, crs, high = _block_masks(tail, 0)
            space |= carry
            carry = 0
            while high != 0:
                j = trailing_zeros(high)
                high &= high - 1
                if BYTE_CLASS[buf[p + j]] == 2:
                    size = _space_length(buf, p + j, end)
                    if size > 0:
                        run = ((np.int64(1) << np.int64(size)) - 1)
                        space |= run << np.int64(j)
                        if j + size > BLOCK:
                            carry = run >> np.int64(BLOCK - j)
            lf += _popcount(lfs)
            cr += _popcount(crs)
            crlf += _popcount(lfs & ((crs << np.int64(1)) | cr_before))
            cr_before = (crs >> np.int64(63)) & 1
            shifted = (space << np.int64(1)) | space_before
            space_before = (space >> np.int64(63)) & 1
            firsts = ~space & shifted  # word starts
            lasts = space & ~shifted  # first whitespace byte after a word
            if pending >= 0 and lasts != 0:
                starts[m] = pending
                ends[m] = p + trailing_zeros(lasts)
                lasts &= lasts - 1
                m += 1
                pending = -1
            while firsts != 0:
                s = p + trailing_zeros(firsts)
                firsts &= firsts - 1
                if lasts == 0:
                    pending = s
                    break
                starts[m] = s
                ends[m] = p + trailing_zeros(lasts)
                lasts &= lasts - 1
                m += 1
            p += BLOCK
            if p >= end:
                p = end
                if pending >= 0:
                    starts[m] = pending
                    ends[m] = end
                    m += 1
                    pending = -1
            if m < BATCH and p < end:
                continue
        # Key, hash and prefetch the words of the batch, then look them up.
        for q in range(m):
            s = starts[q]
            length = ends[q] - s
            w0 = np.int64(0)
            w1 = np.int64(0)
            if length <= INLINE:
                if s + 16 <= size_buf:
                    low = length if length < 8 else 8
                    rest = length - low
                    w0 = _load8(buf, s) & (((np.int64(1) << np.int64(4 * low)) << np.int64(4 * low)) - 1)
                    w1 = _load8(buf, s + 8) & (((np.int64(1) << np.int64(4 * rest)) << np.int64(4 * rest)) - 1)
                else:
                    for t in range(length if length < 8 else 8):
                        w0 |= np.int64(buf[s + t]) << np.int64(8 * t)
                    for t in range(8, length):
                        w1 |= np.int64(buf[s + t]) << np.int64(8 * (t - 8))
                h = _mix(w0, w1, length)
            else:
                f = _FNV_OFFSET
                for t in range(s, s + length):
                    f = (f ^ np.int64(buf[t])) * _FNV_PRIME
                w1 = f
                h = _mix(f, w0, length)
            key0[q] = w0
            key1[q] = w1
            hashes[q] = h
            _prefetch(slots, (h & mask) * 4)
        for q in range(m):
            s = starts[q]
            length = ends[q] - s
            w0 = key0[q]
            w1 = key1[q]
            slot = hashes[q] & mask
            found = False
            while True:
                stored = slots[slot, 2]
                if stored == 0:
                    break
                if stored == length and slots[slot, 1] == w1:
                    if length <= INLINE:
                        if slots[slot, 0] == w0:
                            found = True
                            break
                    else:
                        offset = slots[slot, 0]
                        same = True
                        for t in range(length):
                            if arena[offset + t] != buf[s + t]:
                                same = False
                                break
                        if same:
                            found = True
                            break
                slot = (slot + 1) & mask
            if found:
                slots[slot, 3] += 1
                words += 1
                continue
            full = n + 1 > limit
            if not full and length > INLINE:
                used = meta[META_ARENA]
                if used + length > arena.shape[0]:
                    full = True
                else:
                    for t in range(length):
                        arena[used + t] = buf[s + t]
                    meta[META_ARENA] = used + length
                    w0 = used
            if full:
                # Line ends scanned past the word that did not fit are counted again on resuming.
                d_lf, d_cr, d_crlf = count_lines(buf, s, p, buf[s - 1] if s > start else prev)
                meta[META_DISTINCT] = n
                meta[META_WORDS] += words
                meta[META_LF] += lf - d_lf
                meta[META_CR] += cr - d_cr
                meta[META_CRLF] += crlf - d_crlf
                return s, length
            slots[slot, 0] = w0
            slots[slot, 1] = w1
            slots[slot, 2] = length
            slots[slot, 3] = 1
            n += 1
            words += 1
        m = 0
    meta[META_DISTINCT] = n
    meta[META_WORDS] += words
    meta[META_LF] += lf
    meta[META_CR] += cr
    meta[META_CRLF] += crlf
    return end, 0


@njit(nogil=True, cache=True)
def count_span(buf, start, end, prev, slots, arena, meta):
    """Count the words of buf[start:end] into a table, growing it as needed, and its line ends
    into ``meta``; returns the table's (possibly reallocated) slots and arena. ``start`` and
    ``end`` must be word boundaries (see ``find_cut``); ``prev`` is the byte before ``start`` in
    the text (-1 if none)."""
    while True:
        stop, need = _count_until_full(buf, start, end, prev, slots, arena, meta)
        if stop >= end:
            return slots, arena
        slots, arena = _grow(slots, arena, meta, need)
        prev = np.int64(buf[stop - 1]) if stop > start else prev
        start = stop


@njit(nogil=True, cache=True)
def find_cut(buf, lo, hi, last):
    """A word boundary in buf[lo:hi]: the position just after a whitespace sequence lying wholly
    inside it, the last one if ``last`` else the first; -1 if there is none."""
    if last:
        i = hi - 1
        while i >= lo:
            k = BYTE_CLASS[buf[i]]
            if k == 1:
                return i + 1
            if k == 2:
                n = _space_length(buf, i, hi)
                if n > 0:
                    return i + n
            i -= 1
        return -1
    i = lo
    while i < hi:
        k = BYTE_CLASS[buf[i]]
        if k == 1:
            return i + 1
        if k == 2:
            n = _space_length(buf, i, hi)
            if n > 0:
                return i + n
        i += 1
    return -1


@njit(nogil=True, cache=True)
def is_cut(buf, p):
    """Whether position ``p`` (1 <= p <= len(buf)) is just after a whitespace sequence. Depends
    only on the three bytes before ``p``, so readers of neighbouring byte ranges agree."""
    if BYTE_CLASS[buf[p - 1]] == 1:
        return True
    for n in (2, 3):
        if p - n >= 0 and BYTE_CLASS[buf[p - n]] == 2 and _space_length(buf, p - n, p) == n:
            return True
    return False


@njit(nogil=True, cache=True)
def next_cut(buf, q, lines_only):
    """The first position p >= q (1 <= p <= len(buf)) that is a word boundary (``is_cut``), or a
    line start if ``lines_only``; -1 if there is none in ``buf``."""
    for p in range(max(q, 1), buf.shape[0] + 1):
        if lines_only:
            if buf[p - 1] == 10:
                return p
        elif is_cut(buf, p):
            return p
    return -1


@njit(nogil=True, cache=True)
def table_strings(slots, arena, meta):
    """The strings of a table as (blob, starts, lengths, counts), in slot order."""
    n = meta[META_DISTINCT]
    starts = np.empty(n, np.int64)
    lengths = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    total = 0
    for i in range(slots.shape[0]):
        total += slots[i, 2]
    blob = np.empty(total, np.uint8)
    m = 0
    o = 0
    for i in range(slots.shape[0]):
        size = slots[i, 2]
        if size == 0:
            continue
        if size <= INLINE:
            for t in range(size):
                word = slots[i, 0] if t < 8 else slots[i, 1]
                blob[o + t] = np.uint8((word >> np.int64(8 * (t % 8))) & 255)
        else:
            offset = slots[i, 0]
            for t in range(size):
                blob[o + t] = arena[offset + t]
        starts[m] = o
        lengths[m] = size
        counts[m] = slots[i, 3]
        o += size
        m += 1
    return blob, starts, lengths, counts


@njit(nogil=True, cache=True)
def _insert_until_full(blob, starts, lengths, counts, first, slots, arena, meta):
    """Add counts[i] to the string blob[starts[i]:starts[i] + lengths[i]] for i = first, ...;
    returns the first i that did not fit (or the number of strings). The lookup is written out,
    as in ``_count_until_full``, with the slots of a batch prefetched before they are probed."""
    total = counts.shape[0]
    mask = slots.shape[0] - 1
    n = meta[META_DISTINCT]
    limit = slots.shape[0] // 2
    key0 = np.empty(BATCH, np.int64)
    key1 = np.empty(BATCH, np.int64)
    hashes = np.empty(BATCH, np.int64)
    i = first
    while i < total:
        stop = min(i + BATCH, total)
        for q in range(stop - i):
            s = starts[i + q]
            length = lengths[i + q]
            w0 = np.int64(0)
            w1 = np.int64(0)
            if length <= INLINE:
                for t in range(length if length < 8 else 8):
                    w0 |= np.int64(blob[s + t]) << np.int64(8 * t)
                for t in range(8, length):
                    w1 |= np.int64(blob[s + t]) << np.int64(8 * (t - 8))
                h = _mix(w0, w1, length)
            else:
                f = _FNV_OFFSET
                for t in range(s, s + length):
                    f = (f ^ np.int64(blob[t])) * _FNV_PRIME
                w1 = f
                h = _mix(f, w0, length)
            key0[q] = w0
            key1[q] = w1
            hashes[q] = h
            _prefetch(slots, (h & mask) * 4)
        for q in range(stop - i):
            s = starts[i + q]
            length = lengths[i + q]
            w0 = key0[q]
            w1 = key1[q]
            slot = hashes[q] & mask
            found = False
            while True:
                stored = slots[slot, 2]
                if stored == 0:
                    break
                if stored == length and slots[slot, 1] == w1:
                    if length <= INLINE:
                        if slots[slot, 0] == w0:
                            found = True
                            break
                    else:
                        offset = slots[slot, 0]
                        same = True
                        for t in range(length):
                            if arena[offset + t] != blob[s + t]:
                                same = False
                                break
                        if same:
                            found = True
                            break
                slot = (slot + 1) & mask
            if found:
                slots[slot, 3] += counts[i + q]
                continue
            full = n + 1 > limit
            if not full and length > INLINE:
                used = meta[META_ARENA]
                if used + length > arena.shape[0]:
                    full = True
                else:
                    for t in range(length):
                        arena[used + t] = blob[s + t]
                    meta[META_ARENA] = used + length
                    w0 = used
            if full:
                meta[META_DISTINCT] = n
                return i + q
            slots[slot, 0] = w0
            slots[slot, 1] = w1
            slots[slot, 2] = length
            slots[slot, 3] = counts[i + q]
            n += 1
        i = stop
    meta[META_DISTINCT] = n
    return total


@njit(nogil=True, cache=True)
def insert_strings(blob, starts, lengths, counts, slots, arena, meta):
    """Add counts[i] to the string blob[starts[i]:starts[i] + lengths[i]] for every i, growing
    the table as needed; returns its (possibly reallocated) slots and arena."""
    i = 0
    while True:
        i = _insert_until_full(blob, starts, lengths, counts, i, slots, arena, meta)
        if i >= counts.shape[0]:
            return slots, arena
        slots, arena = _grow(slots, arena, meta, lengths[i])


@njit(nogil=True, cache=True)
def normalize_ascii(blob, starts, lengths, lowercase, stripped):
    """``normalize_word`` of every pure-ASCII string (A-Z lowercased, the bytes ``stripped``
    marks, ``ASCII_STRIP``, stripped from both ends, kept whole if nothing else is left). The
    table is an argument, not a global: Numba's on-disk cache would keep a global's old value.

    Returns (normalized blob, starts, lengths, rows) of the ASCII strings and the rows of the
    others, which Python normalizes."""
    n = starts.shape[0]
    rows = np.empty(n, np.int64)
    others = np.empty(n, np.int64)
    out = np.empty(blob.shape[0], np.uint8)
    out_starts = np.empty(n, np.int64)
    out_lengths = np.empty(n, np.int64)
    m = 0
    k = 0
    o = 0
    for j in range(n):
        offset = starts[j]
        length = lengths[j]
        ascii = True
        for t in range(length):
            if blob[offset + t] >= 128:
                ascii = False
                break
        if not ascii:
            others[k] = j
            k += 1
            continue
        s = offset
        e = offset + length
        while s < e and stripped[blob[s]]:
            s += 1
        while e > s and stripped[blob[e - 1]]:
            e -= 1
        if s == e:
            s = offset
            e = offset + length
        for t in range(e - s):
            c = blob[s + t]
            if lowercase and c >= 65 and c <= 90:
                c += 32
            out[o + t] = c
        rows[m] = j
        out_starts[m] = o
        out_lengths[m] = e - s
        o += e - s
        m += 1
    return out[:o], out_starts[:m], out_lengths[:m], rows[:m], others[:k]


@njit(inline="always")
def _compare(arena_a, sa, la, arena_b, sb, lb):
    """-1, 0 or 1 as byte string a sorts before b, equals it or sorts after it (bytes order, a
    prefix first), 8 bytes at a time: the lowest set bit of the two loads' difference marks the
    first byte that differs."""
    m = la if la < lb else lb
    t = 0
    while t + 8 <= m:
        x = _load8(arena_a, sa + t)
        y = _load8(arena_b, sb + t)
        if x != y:
            shift = trailing_zeros(x ^ y) & ~7
            return -1 if ((x >> shift) & 255) < ((y >> shift) & 255) else 1
        t += 8
    while t < m:
        x = arena_a[sa + t]
        y = arena_b[sb + t]
        if x != y:
            return -1 if x < y else 1
        t += 1
    return -1 if la < lb else (1 if la > lb else 0)


@njit(inline="always")
def _less(arena_a, sa, la, arena_b, sb, lb):
    """Whether byte string a sorts before b (bytes order, a prefix first)."""
    return _compare(arena_a, sa, la, arena_b, sb, lb) < 0


@njit(inline="always")
def _key8(arena, start, length, skip):
    """A string's bytes ``skip`` to ``skip + 7`` as a big-endian integer (zeros past its end):
    integers in the order of those bytes."""
    key = np.uint64(0)
    for t in range(skip, skip + 8):
        key = key << np.uint64(8)
        if t < length:
            key = key | np.uint64(arena[start + t])
    return key


@njit(nogil=True, cache=True)
def _prefix_keys(arena, starts, lengths):
    """Each string's bytes 0-7 (``high``) and 8-15 (``low``) as ``_key8`` keys, in one pass."""
    n = starts.shape[0]
    high = np.zeros(n, np.uint64)
    low = np.zeros(n, np.uint64)
    for i in range(n):
        high[i] = _key8(arena, starts[i], lengths[i], 0)
        if lengths[i] > 8:
            low[i] = _key8(arena, starts[i], lengths[i], 8)
    return high, low


#: Bits of a key each pass of ``_radix_by_high`` sorts by.
RADIX_BITS = 11


@njit(nogil=True, cache=True)
def _radix_by_high(high, low, lengths):
    """(order, high[order], low[order], lengths[order]) with ``order`` the rows stably sorted by
    ``high``: least significant digit first, ``RADIX_BITS`` bits a pass, carrying the keys and
    lengths along so that each pass, and what comes after, reads them in sequence; digits every
    key shares are skipped (short words leave their low bytes 0)."""
    n = high.shape[0]
    buckets = 1 << RADIX_BITS
    passes = (64 + RADIX_BITS - 1) // RADIX_BITS
    mask = np.uint64(buckets - 1)
    histograms = np.zeros((passes, buckets), np.int64)
    for i in range(n):
        for p in range(passes):
            histograms[p, (high[i] >> np.uint64(p * RADIX_BITS)) & mask] += 1
    order = np.arange(n)
    high = high.copy()
    low = low.copy()
    lengths = lengths.copy()
    order_out = np.empty(n, np.int64)
    high_out = np.empty(n, np.uint64)
    low_out = np.empty(n, np.uint64)
    lengths_out = np.empty(n, np.int64)
    for p in range(passes):
        counts = histograms[p]
        if counts.max() == n:
            continue
        total = 0
        for digit in range(buckets):
            count = counts[digit]
            counts[digit] = total
            total += count
        shift = np.uint64(p * RADIX_BITS)
        for i in range(n):
            digit = (high[i] >> shift) & mask
            at = counts[digit]
            counts[digit] = at + 1
            order_out[at] = order[i]
            high_out[at] = high[i]
            low_out[at] = low[i]
            lengths_out[at] = lengths[i]
        order, order_out = order_out, order
        high, high_out = high_out, high
        low, low_out = low_out, low
        lengths, lengths_out = lengths_out, lengths
    return order, high, low, lengths


@njit(inline="always")
def _sorts_before(low_x, length_x, x, low_y, length_y, y, arena, starts):
    """Whether string x sorts before string y, given that their first 8 bytes agree: by bytes
    8-15, then, where those agree too, by length if either ends there (the other then continues
    with it as prefix, or equals it), else by the bytes after them."""
    if low_x != low_y:
        return low_x < low_y
    if length_x <= 16 or length_y <= 16:
        return length_x < length_y
    return _less(arena, starts[x] + 16, length_x - 16, arena, starts[y] + 16, length_y - 16)


#: Strings sharing their first 8 bytes that ``_sort_high_ties`` sorts by insertion, more by merging.
INSERTION_RUN = 32


@njit(nogil=True, cache=True)
def _sort_high_ties(order, high, low, lengths, arena, starts):
    """Sort, in place, each run of ``order`` (and of ``low`` and ``lengths``, in its order) whose
    ``high`` keys are equal, by the rest of the strings: most runs are a few words, sorted by
    insertion; longer ones by a bottom-up merge sort, O(n log n) however many words share their
    first 8 bytes."""
    n = order.shape[0]
    merged_order = np.empty(n, np.int64)
    merged_low = np.empty(n, np.uint64)
    merged_lengths = np.empty(n, np.int64)
    a = 0
    while a < n:
        b = a + 1
        while b < n and high[b] == high[a]:
            b += 1
        if b - a <= INSERTION_RUN:
            for i in range(a + 1, b):
                x, low_x, length_x = order[i], low[i], lengths[i]
                j = i
                while j > a and _sorts_before(low_x, length_x, x, low[j - 1], lengths[j - 1], order[j - 1], arena,
                                              starts):
                    order[j], low[j], lengths[j] = order[j - 1], low[j - 1], lengths[j - 1]
                    j -= 1
                order[j], low[j], lengths[j] = x, low_x, length_x
        else:
            width = 1
            while width < b - a:
                lo = a
                while lo < b:
                    mid = min(lo + width, b)
                    hi = min(lo + 2 * width, b)
                    i = lo
                    j = mid
                    for k in range(lo, hi):
                        if j < hi and (i >= mid or _sorts_before(low[j], lengths[j], order[j], low[i], lengths[i],
                                                                  order[i], arena, starts)):
                            take = j
                            j += 1
                        else:
                            take = i
                            i += 1
                        merged_order[k], merged_low[k], merged_lengths[k] = order[take], low[take], lengths[take]
                    lo = hi
                order[a:b] = merged_order[a:b]
                low[a:b] = merged_low[a:b]
                lengths[a:b] = merged_lengths[a:b]
                width *= 2
        a = b


def _unaligned_store8(most_significant_first: bool):
    """An intrinsic that writes an integer's 8 bytes to array[position:position + 8] (an
    unaligned store): least significant first (the inverse of ``_load8``), or most significant
    first (a big-endian key back into the bytes it was made of)."""

    @intrinsic
    def store(typingctx, array, position, value):
        signature = types.void(array, types.intp, value)

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer())
            value = args[2]
            if most_significant_first == (sys.byteorder == "little"):
                value = builder.bswap(value)
            builder.store(value, pointer, align=1)
            return context.get_dummy_value()

        return signature, codegen

    return store


_store8 = _unaligned_store8(most_significant_first=False)
_store8_big_endian = _unaligned_store8(most_significant_first=True)


@njit(inline="always")
def _copy_bytes(target, at, source, start, length):
    """target[at:at + length] = source[start:start + length], 8 bytes at a time."""
    t = 0
    while t + 8 <= length:
        _store8(target, at + t, _load8(source, start + t))
        t += 8
    while t < length:
        target[at + t] = source[start + t]
        t += 1


@njit(nogil=True, cache=True)
def _gather_distinct(arena, starts, counts, order, high, low, lengths):
    """The strings in ``order`` (with their keys and lengths in that order) as one table, each
    string once with the counts of its copies summed (sorted, copies lie side by side: "The" and
    "the" both normalized to "the"). A string's first 16 bytes come from its keys with two 8-byte
    stores; only the rest of a longer string is read from ``arena``."""
    n = order.shape[0]
    blob = np.empty(lengths.sum() + 16, np.uint8)
    offsets = np.zeros(n + 1, np.int64)
    merged_counts = np.empty(n, np.int64)
    kept = 0
    for i in range(n):
        length = lengths[i]
        o = offsets[kept]
        if kept > 0 and high[i] == high[i - 1] and low[i] == low[i - 1] and length == lengths[i - 1] \
                and (length <= 16 or _compare(blob, offsets[kept - 1] + 16, length - 16,
                                              arena, starts[order[i]] + 16, length - 16) == 0):
            merged_counts[kept - 1] += counts[order[i]]
            continue
        # The stores run past a short string: the next one overwrites that, the padding the last.
        _store8_big_endian(blob, o, high[i])
        _store8_big_endian(blob, o + 8, low[i])
        if length > 16:
            _copy_bytes(blob, o + 16, arena, starts[order[i]] + 16, length - 16)
        merged_counts[kept] = counts[order[i]]
        kept += 1
        offsets[kept] = o + length
    return blob[: offsets[kept]], offsets[: kept + 1], merged_counts[:kept]


def sorted_table(blob, starts, lengths, counts):
    """(blob, offsets, counts) of the distinct strings in bytes order (= code point order), the
    counts of equal strings summed: radix-sorted by their first 8 bytes, then runs alike there
    by the rest."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    high, low = _prefix_keys(blob, starts, lengths)
    order, high, low, lengths = _radix_by_high(high, low, lengths)
    _sort_high_ties(order, high, low, lengths, blob, starts)
    return _gather_distinct(blob, starts, np.ascontiguousarray(counts, dtype=np.int64), order, high, low, lengths)


@njit(nogil=True, cache=True)
def first_inconsistent_row(offsets, counts, blob_bytes):
    """First row whose word bytes are empty or outside [0, blob_bytes) or whose count is not
    positive, or -1: one pass, no temporaries, so a damaged mapped table is refused before any
    lookup reads through its offsets."""
    if offsets.shape[0] != counts.shape[0] + 1 or (offsets.shape[0] > 0 and offsets[0] != 0):
        return 0
    for i in range(counts.shape[0]):
        if offsets[i + 1] <= offsets[i] or offsets[i + 1] > blob_bytes or counts[i] <= 0:
            return i
    return -1


@njit(nogil=True, cache=True)
def first_unsorted_row(blob, offsets):
    """First row whose word does not sort strictly after the one before it (bytes order), or -1:
    lookups bisect the words, so a table out of order would miss words it holds."""
    for i in range(1, offsets.shape[0] - 1):
        if not _less(blob, offsets[i - 1], offsets[i] - offsets[i - 1], blob, offsets[i], offsets[i + 1] - offsets[i]):
            return i
    return -1


@njit(nogil=True, cache=True)
def merge_sorted(blob_a, offsets_a, counts_a, blob_b, offsets_b, counts_b):
    """Merge two sorted tables of distinct strings, adding the counts of strings in both."""
    na = counts_a.shape[0]
    nb = counts_b.shape[0]
    offsets = np.zeros(na + nb + 1, np.int64)
    counts = np.zeros(na + nb, np.int64)
    blob = np.empty(blob_a.shape[0] + blob_b.shape[0], np.uint8)
    i = 0
    j = 0
    n = 0
    while i < na or j < nb:
        take_a = False
        take_b = False
        if j >= nb:
            take_a = True
        elif i >= na:
            take_b = True
        else:
            sa = offsets_a[i]
            la = offsets_a[i + 1] - sa
            sb = offsets_b[j]
            lb = offsets_b[j + 1] - sb
            order = _compare(blob_a, sa, la, blob_b, sb, lb)
            take_a = order <= 0
            take_b = order >= 0
        o = offsets[n]
        if take_a:
            s = offsets_a[i]
            _copy_bytes(blob, o, blob_a, s, offsets_a[i + 1] - s)
            offsets[n + 1] = o + offsets_a[i + 1] - s
            counts[n] = counts_a[i]
            i += 1
            if take_b:
                counts[n] += counts_b[j]
                j += 1
        else:
            s = offsets_b[j]
            _copy_bytes(blob, o, blob_b, s, offsets_b[j + 1] - s)
            offsets[n + 1] = o + offsets_b[j + 1] - s
            counts[n] = counts_b[j]
            j += 1
        n += 1
    return blob[: offsets[n]].copy(), offsets[: n + 1].copy(), counts[:n].copy()


@njit(nogil=True, cache=True)
def search_sorted(blob, offsets, key):
    """Row of ``key`` (a uint8 array) in a sorted table, or -1."""
    lo = 0
    hi = offsets.shape[0] - 1
    lk = key.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        s = offsets[mid]
        if _less(blob, s, offsets[mid + 1] - s, key, 0, lk):
            lo = mid + 1
        else:
            hi = mid
    if lo < offsets.shape[0] - 1 and _compare(blob, offsets[lo], offsets[lo + 1] - offsets[lo], key, 0, lk) == 0:
        return lo
    return -1
