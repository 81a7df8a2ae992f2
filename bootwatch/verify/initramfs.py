"""Walk an initramfs the way the kernel unpacks it: a chain of cpio archives, some compressed.

The kernel's ``unpack_to_rootfs()`` (init/initramfs.c) reads the image as a sequence of members:

* zero bytes between members are skipped;
* a member that starts with ``0`` at a 4-byte aligned offset is an uncompressed newc (``070701``)
  or crc (``070702``) cpio archive, read header by header up to its ``TRAILER!!!`` entry. This is
  how early microcode is prepended to the real initramfs;
* any other member must start with the magic of a compression format; the decompressed stream is
  itself one or more cpio archives separated by zero padding, and the next member starts where the
  compressed stream ends.

We do the same, streaming: nothing is loaded whole into memory. gzip, bzip2, lzma and xz use the
standard library. zstd, lz4 and lzo use the system's ``zstd``/``lz4``/``lzop``; where the tool is
missing the image is reported as not checked, which is not a failure. Every header, name, data
length and (for ``070702``) checksum is checked; a truncated or corrupt archive anywhere in the
chain raises :class:`ArchiveError` with the offset and the problem.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Callable

__all__ = ["ArchiveError", "NameSink", "ToolMissing", "check_initramfs", "compression_of", "decompressed_length",
           "modules_release", "peek_decompressed"]

CHUNK = 1 << 20
CPIO_MAGICS = (b"070701", b"070702")
TRAILER = b"TRAILER!!!"
PATH_MAX = 4096

# Magic numbers as the kernel's decompress_method() knows them (lib/decompress.c).
COMPRESSION_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x89LZO", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

ZSTD_MAGIC = 0xFD2FB528
LZ4_LEGACY_MAGIC = 0x184C2102


class ArchiveError(Exception):
    """The chain is truncated or corrupt; the message names the offset and the problem."""


class ToolMissing(Exception):
    """The decompressor for a member is not installed; ``args[0]`` is the tool's name."""


def compression_of(head: bytes) -> str | None:
    """The compression format whose magic starts ``head``, or None."""
    for magic, name in COMPRESSION_MAGICS:
        if head.startswith(magic):
            return name
    return None


def _pread(f: BinaryIO, offset: int, n: int) -> bytes:
    return os.pread(f.fileno(), n, offset)


def _file_chunks(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    pos = start
    while pos < end:
        data = _pread(f, pos, min(CHUNK, end - pos))
        if not data:
            return
        pos += len(data)
        yield data


class _Stream:
    """Buffered, position-counting reads over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes], pos: int = 0) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self.pos = pos  # offset of _buf[0] in the stream

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buf += chunk
        return True

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buf[:n])

    def read_exact(self, n: int) -> bytes:
        if not self._fill(n):
            raise EOFError
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self.pos += n
        return data

    def consume(self, n: int, checksum: bool) -> int:
        """Skip ``n`` bytes (EOFError if there are fewer); their byte sum if ``checksum``."""
        total = 0
        while n:
            if not self._buf and not self._fill(1):
                raise EOFError
            take = min(n, len(self._buf))
            if checksum:
                total += sum(memoryview(self._buf)[:take])
            del self._buf[:take]
            self.pos += take
            n -= take
        return total

    def skip_zeros(self) -> bool:
        """Skip zero bytes; False at the end of the stream."""
        while True:
            if not self._buf and not self._fill(1):
                return False
            stripped = self._buf.lstrip(b"\0")
            skipped = len(self._buf) - len(stripped)
            if skipped < len(self._buf):
                del self._buf[:skipped]
                self.pos += skipped
                return True
            self.pos += skipped
            self._buf.clear()


NameSink = Callable[[bytes], None]
"""Called with each entry's name (without its NUL) as the walk reads it."""


def modules_release(name: bytes) -> str | None:
    """The kernel release whose modules directory holds the archive entry ``name``
    (``lib/modules/<release>/...`` or ``usr/lib/modules/<release>/...``, with or without a
    leading ``./`` or ``/``), else None."""
    parts = name.decode("utf-8", "replace").lstrip("./").split("/")
    if parts[:1] == ["usr"]:
        parts = parts[1:]
    if len(parts) >= 3 and parts[0] == "lib" and parts[1] == "modules" and parts[2]:
        return parts[2]
    return None


def _walk_cpio(stream: _Stream, where: str, on_name: NameSink | None = None) -> int:
    """Read one newc/crc archive up to and including its trailer; the number of entries."""
    start = stream.pos
    entries = 0
    while True:
        at = stream.pos
        try:
            header = stream.read_exact(110)
        except EOFError:
            raise ArchiveError(f"{where}: the cpio archive starting at offset {start} ends at "
                               f"offset {at} without its TRAILER!!! (truncated)") from None
        magic = header[:6]
        if magic not in CPIO_MAGICS:
            raise ArchiveError(f"{where}: bad cpio header magic {magic!r} at offset {at}")
        try:
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ArchiveError(f"{where}: corrupt cpio header at offset {at} "
                               "(a field is not hexadecimal)") from None
        filesize, namesize, check = fields[6], fields[11], fields[12]
        if namesize < 2 or namesize > PATH_MAX + 1:
            raise ArchiveError(f"{where}: corrupt cpio header at offset {at} "
                               f"(name size {namesize})")
        try:
            name = stream.read_exact(namesize)
            stream.read_exact(-(110 + namesize) % 4)
        except EOFError:
            raise ArchiveError(f"{where}: truncated cpio entry name at offset {at}") from None
        if name[-1] != 0 or 0 in name[:-1]:
            raise ArchiveError(f"{where}: corrupt cpio entry name at offset {at}")
        if name[:-1] == TRAILER:
            return entries
        if on_name is not None:
            on_name(name[:-1])
        try:
            total = stream.consume(filesize, checksum=magic == b"070702")
            stream.read_exact(-filesize % 4)
        except EOFError:
            shown = name[:-1].decode("utf-8", "replace")
            raise ArchiveError(f"{where}: cpio entry {shown!r} at offset {at} is truncated "
                               f"(needs {filesize} bytes of data)") from None
        if magic == b"070702" and total & 0xFFFFFFFF != check:
            shown = name[:-1].decode("utf-8", "replace")
            raise ArchiveError(f"{where}: checksum mismatch in cpio entry {shown!r} at offset {at}")
        entries += 1


def _walk_archives(stream: _Stream, where: str, on_name: NameSink | None = None) -> int:
    """The decompressed content of one member: cpio archives separated by zero padding."""
    entries = archives = 0
    while stream.skip_zeros():
        head = stream.peek(6)
        if head not in CPIO_MAGICS:
            raise ArchiveError(f"{where}: junk at decompressed offset {stream.pos} "
                               f"(expected a cpio header, found {head!r})")
        entries += _walk_cpio(stream, where, on_name)
        archives += 1
    if not archives:
        raise ArchiveError(f"{where}: no cpio archive inside")
    return entries


# --- decompressors ----------------------------------------------------------------------------

def _zlib_chunks(f: BinaryIO, start: int, end: int, where: str,
                 end_out: list[int]) -> Iterator[bytes]:
    """Decompress one gzip member; its end offset goes to ``end_out``."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pos = start
    data = b""
    while True:
        if not data:
            if pos >= end:
                raise ArchiveError(f"{where}: the stream is truncated at offset {end}")
            data = _pread(f, pos, min(CHUNK, end - pos))
            pos += len(data)
        try:
            out = d.decompress(data, CHUNK)
        except zlib.error as err:
            raise ArchiveError(f"{where}: corrupt data ({err})") from None
        data = d.unconsumed_tail
        if out:
            yield out
        if d.eof:
            end_out.append(pos - len(d.unused_data) - len(data))
            return


def _stdlib_chunks(f: BinaryIO, start: int, end: int, where: str, method: str,
                   end_out: list[int]) -> Iterator[bytes]:
    """Decompress one bzip2, lzma or xz stream; its end offset goes to ``end_out``."""
    d: bz2.BZ2Decompressor | lzma.LZMADecompressor
    if method == "bzip2":
        d = bz2.BZ2Decompressor()
    else:
        d = lzma.LZMADecompressor(lzma.FORMAT_XZ if method == "xz" else lzma.FORMAT_ALONE)
    pos = start
    data = b""
    while True:
        if d.needs_input and not data:
            if pos >= end:
                raise ArchiveError(f"{where}: the stream is truncated at offset {end}")
            data = _pread(f, pos, min(CHUNK, end - pos))
            pos += len(data)
        try:
            out = d.decompress(data, CHUNK)
        except (OSError, EOFError, lzma.LZMAError) as err:
            raise ArchiveError(f"{where}: corrupt data ({err})") from None
        data = b""
        if out:
            yield out
        if d.eof:
            end_out.append(pos - len(d.unused_data))
            return


class _Window:
    """Small reads of ``f`` below ``end`` served from one :data:`CHUNK` read at a time."""

    def __init__(self, f: BinaryIO, end: int) -> None:
        self.f, self.end = f, end
        self.base, self.data = 0, b""

    def read(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer at ``end``)."""
        if not (self.base <= pos and pos + n <= self.base + len(self.data)):
            self.base, self.data = pos, _pread(self.f, pos, max(0, min(max(CHUNK, n), self.end - pos)))
        return self.data[pos - self.base:pos - self.base + n]

    def zeros(self, pos: int) -> int:
        """How many zero bytes start at ``pos`` (within one window)."""
        data = self.read(pos, CHUNK)
        return len(data) - len(data.lstrip(b"\0"))


def _zstd_end(f: BinaryIO, start: int, end: int) -> int:
    """Where a run of zstd (and skippable) frames ends, from the frame and block headers.

    ``zstd -d`` refuses trailing zero padding, so it must be given the frames only.
    """
    window = _Window(f, end)
    pos = start
    while pos + 4 <= end:
        magic = int.from_bytes(window.read(pos, 4), "little")
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
            pos += 8 + int.from_bytes(window.read(pos + 4, 4), "little")
            continue
        if magic != ZSTD_MAGIC:
            break
        descriptor = window.read(pos + 4, 1)
        if not descriptor:
            return end
        fhd = descriptor[0]
        single = (fhd >> 5) & 1
        header = (5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
                  + ((1 if single else 0), 2, 4, 8)[fhd >> 6])
        pos += header
        while True:
            block = window.read(pos, 3)
            if len(block) < 3:
                return end
            value = int.from_bytes(block, "little")
            if value == 0:
                # An empty raw block, not the last: zero bytes (the zero-filled tail a crash leaves
                # in a file) are a run of them, skipped at once, not three bytes at a time.
                zeros = window.zeros(pos)
                pos += zeros - zeros % 3
                continue
            pos += 3 + (1 if (value >> 1) & 3 == 1 else value >> 3)
            if value & 1:
                break
        if (fhd >> 2) & 1:  # content checksum
            pos += 4
    return min(pos, end)


def _lz4_legacy_end(f: BinaryIO, start: int, end: int) -> int:
    """Where an lz4 legacy stream ends: blocks of (LE32 size, data) until zeros or the end."""
    pos = start + 4
    while pos + 4 <= end:
        size = int.from_bytes(_pread(f, pos, 4), "little")
        if size == LZ4_LEGACY_MAGIC:  # concatenated legacy streams
            pos += 4
            continue
        if size == 0:
            break
        pos += 4 + size
    return min(pos, end)


def _tool_chunks(f: BinaryIO, start: int, end: int, where: str,
                 argv: list[str]) -> Iterator[bytes]:
    """Stream the bytes [start, end) through a decompressing tool and yield its output."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errors)
        assert proc.stdin is not None and proc.stdout is not None

        def feed() -> None:
            try:
                for chunk in _file_chunks(f, start, end):
                    proc.stdin.write(chunk)  # type: ignore[union-attr]
            except (BrokenPipeError, ValueError, OSError):
                pass  # the tool died or we stopped reading: its exit status tells
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # type: ignore[union-attr]

        feeder = threading.Thread(target=feed, name=f"feed-{argv[0]}", daemon=True)
        feeder.start()
        try:
            while True:
                out = os.read(proc.stdout.fileno(), CHUNK)
                if not out:
                    break
                yield out
            if proc.wait() != 0:
                errors.seek(0)
                text = errors.read().decode("utf-8", "replace").strip().splitlines()
                detail = text[-1] if text else f"exit status {proc.returncode}"
                raise ArchiveError(f"{where}: corrupt data ({os.path.basename(argv[0])}: "
                                   f"{detail})")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            feeder.join()
            proc.stdout.close()


def _member_chunks(f: BinaryIO, start: int, end: int, method: str, where: str,
                   end_out: list[int]) -> Iterator[bytes]:
    """Decompressed chunks of the member at ``start``; its end offset is put in ``end_out``."""
    if method == "gzip":
        return _zlib_chunks(f, start, end, where, end_out)
    if method in ("bzip2", "lzma", "xz"):
        return _stdlib_chunks(f, start, end, where, method, end_out)
    tool = {"zstd": "zstd", "lz4": "lz4", "lzo": "lzop"}[method]
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(tool)
    if method == "zstd":
        stop = _zstd_end(f, start, end)
    elif method == "lz4":
        stop = _lz4_legacy_end(f, start, end)
    else:
        stop = end  # lzo: the last member by construction
    end_out.append(stop)
    return _tool_chunks(f, start, stop, where, [path, "-d", "-c", "-q"])


def peek_decompressed(f: BinaryIO, start: int, end: int, method: str, n: int = 4096) -> bytes:
    """Up to ``n`` bytes from the start of a compressed member (ArchiveError if it is corrupt)."""
    chunks = _member_chunks(f, start, end, method, f"{method} data at offset {start}", [])
    out = bytearray()
    try:
        for chunk in chunks:
            out += chunk
            if len(out) >= n:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return bytes(out[:n])


def decompressed_length(f: BinaryIO, start: int, end: int, method: str, where: str,
                        check_deadline: Callable[[], None] | None = None) -> tuple[int, bytes]:
    """Decompress the one stream in ``f[start:end]`` to its end: how many bytes it gives, and the
    first 64 of them. :class:`ArchiveError` when it is corrupt or ends early."""
    length = 0
    head = b""
    chunks = _member_chunks(f, start, end, method, where, [])
    try:
        for chunk in chunks:
            if len(head) < 64:
                head += chunk[:64 - len(head)]
            length += len(chunk)
            if check_deadline is not None:
                check_deadline()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return length, head


# --- the chain ----------------------------------------------------------------------------------

def _skip_zeros(f: BinaryIO, pos: int, end: int) -> int:
    while pos < end:
        data = _pread(f, pos, min(CHUNK, end - pos))
        stripped = data.lstrip(b"\0")
        if stripped:
            return pos + len(data) - len(stripped)
        pos += len(data)
    return end


XZ_CHECKS = {0: "none", 1: "CRC32", 4: "CRC64", 10: "SHA-256"}


def _check_xz_flags(head: bytes, where: str) -> None:
    """The kernel's XZ decoder (XZ Embedded) takes a stream whose integrity check is none or
    CRC32 only; any other fails to unpack at boot ("Input was encoded with settings that are not
    supported by this XZ decoder"), which is why mkinitramfs and dracut pass ``--check=crc32``.
    The check type is the low nibble of the stream flags' second byte, right after the magic."""
    if len(head) < 8:
        return  # the decompressor reports the truncated header
    check = head[7] & 0x0F
    if head[6] != 0 or head[7] >> 4 or check > 1:
        name = XZ_CHECKS.get(check, f"type {check}")
        raise ArchiveError(f"{where}: the xz stream's integrity check is {name}, which the kernel's XZ decoder "
                           "cannot read (it takes CRC32 or none: xz --check=crc32)")


def _bounded(chunks: Iterator[bytes], check_deadline: Callable[[], None] | None) -> Iterator[bytes]:
    """``chunks``, with ``check_deadline`` asked before each: one archive or compressed member
    (a small gzip of gigabytes of zero padding) is bounded too, not only the chain between them."""
    try:
        for chunk in chunks:
            if check_deadline is not None:
                check_deadline()
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def check_initramfs(f: BinaryIO, start: int, end: int,
                    check_deadline: Callable[[], None] | None = None, on_name: NameSink | None = None) -> str:
    """Walk the whole chain in ``f[start:end]``; a summary like ``cpio + zstd, 412 entries``.

    ``on_name`` is called with the name of every entry of every archive, in order.

    Raises :class:`ArchiveError` for a corrupt or truncated chain and :class:`ToolMissing` when a
    member needs a decompressor that is not installed.
    """
    parts: list[str] = []
    entries = 0
    pos = start
    while True:
        if check_deadline is not None:
            check_deadline()
        pos = _skip_zeros(f, pos, end)
        if pos >= end:
            break
        head = _pread(f, pos, 8)
        if head[:6] in CPIO_MAGICS:
            if (pos - start) % 4:
                raise ArchiveError(f"cpio archive at unaligned offset {pos} "
                                   "(the kernel only reads 4-byte aligned archives)")
            stream = _Stream(_bounded(_file_chunks(f, pos, end), check_deadline), pos)
            entries += _walk_cpio(stream, f"cpio archive at offset {pos}", on_name)
            pos = stream.pos
            parts.append("cpio")
            continue
        method = compression_of(head)
        if method is None:
            raise ArchiveError(f"junk at offset {pos}: neither a cpio header nor a compressed "
                               f"archive (bytes {head[:6].hex()})")
        where = f"{method} archive at offset {pos}"
        if method == "xz":
            _check_xz_flags(head, where)
        end_out: list[int] = []
        stream = _Stream(_bounded(_member_chunks(f, pos, end, method, where, end_out), check_deadline))
        entries += _walk_archives(stream, where, on_name)
        if not end_out:  # the stream was walked to its end, so this cannot happen
            raise ArchiveError(f"{where}: could not find the end of the compressed stream")
        pos = end_out[0]
        parts.append(method)
    if not parts:
        raise ArchiveError("no cpio archive at all (only zero bytes)")
    return f"{' + '.join(parts)}, {entries} entries"
