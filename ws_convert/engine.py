"""Executing a plan: every planned tensor through the fused SZP op, in memory
(`grow_state_dict`) or streamed from files to files (`grow`).

The streaming path reads source rows with positional reads (a source file
truncated meanwhile is then an error, not a SIGBUS), computes output row
chunks into a few reused buffers and hands each to a writer thread, so
reading, computing and writing overlap and memory stays at a few chunks
whatever the model size. On the CPU it calls the compiled
kernel on raw buffers and never imports torch (importing it takes longer
than growing a 1 GB checkpoint); on a GPU the chunks go through pinned host
buffers and a CUDA stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import _ext, ranks
from .errors import CheckpointError, OutputError
from .gc_pause import collection_paused
from .hub import resolve
from .plan import GrowthOptions, Plan, Source, TensorPlan, make_plan, write_base_shapes
from .provenance import GROWN, HASH_ALGORITHM, HASHES, SourceHasher, record, record_text, without_hashes
from .reader import (INDEX_NAME, PICKLE_SUFFIXES, SINGLE_NAME, Checkpoint, TensorInfo, open_checkpoint, open_regular,
                     tensor_bytes)
from .safetensors_spec import ITEMSIZE
from .szp_spec import KERNEL_DTYPES, Buffer, as_rows, kernel_args, knobs_key, tensor_id
from .writer import (BASE_SHAPES_NAME, CONFIG_NAME, OPTIMIZER_NAME, PROVENANCE_NAME, CheckpointWriter, output_dir,
                     parse_size)


if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_BYTES = 32 << 20
SLOTS = 3  # chunk buffers in flight: one computing, one writing, one spare
BATCH_FILES = 16  # source files one slot's batch of kernel calls reads (it keeps each open until reused)


def run_tensor(t: TensorPlan, src: torch.Tensor | None, seed: int, *, rows: tuple[int, int] | None = None,
               src_row_start: int = 0, out: torch.Tensor | None = None, threads: int | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Output rows `rows` (default all) of one planned tensor; `src` holds the
    source rows from `src_row_start` (or is None for pure init)."""
    from .op import szp
    from .torch_dtypes import DTYPES

    return szp(src, t.shape, t.maps, shrink=t.shrink, perturb=t.perturb, init=t.init, seed=seed,
               tid=tensor_id(t.noise_name), rows=rows, src_shape=t.src_shape, src_row_start=src_row_start,
               out=out, out_dtype=DTYPES[t.dtype], threads=threads, device=device, noise_maps=t.noise_maps)


def grow_state_dict(state_dict: Mapping[str, torch.Tensor], to_width: int | None = None, *, config: dict | None = None,
                    base_shapes: str | None = None, threads: int | None = None,
                    **options) -> tuple[dict[str, torch.Tensor], Plan]:
    """Grow an in-memory state dict (tensors on any one device); the same
    bytes as growing the same weights from files. `options` are GrowthOptions'
    fields (shrink, perturb, seed, head_policy, to_depth, ...)."""
    from .torch_dtypes import NAMES

    source = Source("state_dict", {n: (NAMES[t.dtype], tuple(t.shape)) for n, t in state_dict.items()}, config)
    plan = make_plan(source, GrowthOptions(to_width=to_width, **options), base_shapes)
    grown = {}
    for t in plan.tensors:
        src = state_dict[t.source].contiguous() if t.source is not None else None
        device = src.device if src is not None else next(iter(state_dict.values())).device
        grown[t.name] = src.clone() if t.verbatim else run_tensor(t, src, plan.options.seed, threads=threads,
                                                                  device=device)
    return grown, plan


# -- chunking ---------------------------------------------------------------

def row_chunks(t: TensorPlan, chunk_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(out_row0, out_row1, src_row0, src_row1) per chunk of at most
    `chunk_bytes` of output (at least one row), with the source rows it reads."""
    if not t.shape:  # a 0-d tensor: one chunk of one element
        yield 0, 1, 0, 1
        return
    rows, segments = t.shape[0], t.maps[0]
    step = max(1, chunk_bytes // max(1, t.row_bytes))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        s0, s1 = None, 0  # a plain loop: this runs once per tensor of a checkpoint of many small ones
        for dst, src, length, _ in segments:
            lo, hi = max(r0, dst), min(r1, dst + length)
            if lo < hi:
                s0 = src + lo - dst if s0 is None else min(s0, src + lo - dst)
                s1 = max(s1, src + hi - dst)
        yield r0, r1, s0 or 0, s1


# -- the streaming grow ---------------------------------------------------------

@dataclass
class GrowReport:
    out: Path
    plan: Plan
    device: str
    bytes_written: int
    seconds: float
    copied: list[str] = field(default_factory=list)  # the source's other files, copied beside the weights
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why) of those not copied

    @property
    def params_before(self) -> int:
        return self.plan.params_before

    @property
    def params_after(self) -> int:
        return self.plan.params_after

    @property
    def gb_per_s(self) -> float:
        return self.bytes_written / max(self.seconds, 1e-9) / 1e9


def default_out(src: Path, to_width: int | None, to_depth: int | None = None) -> Path:
    """A new directory beside the source, named after it and the width
    (`-w<width>`), or the depth when only that grows (`-d<depth>`)."""
    src = Path(src).absolute()
    stem = src.name if src.is_dir() else src.stem.removesuffix(".safetensors.index").removesuffix(".safetensors")
    if not src.is_dir() and src.name in ("model.safetensors", "model.safetensors.index.json"):
        stem = src.parent.name
        src = src.parent
    return src.parent / (f"{stem}-w{to_width}" if to_width is not None else f"{stem}-d{to_depth}")


def source_dir(src: str | Path) -> Path | None:
    """The model directory whose other files (tokenizer, generation config,
    ...) belong with the weights: the source when it is a directory, or the
    one holding a source given as its `model.safetensors` or index. A lone
    file elsewhere has none: its neighbours need not be the model's."""
    src = Path(src)
    if src.is_dir():
        return src
    return src.parent if src.name in (SINGLE_NAME, INDEX_NAME) else None


def _is_weights_or_written(name: str) -> bool:
    """Weights (copied only as grown tensors) and files grow writes itself."""
    return (name.endswith((".safetensors", ".safetensors.index.json", *PICKLE_SUFFIXES))
            or name in (CONFIG_NAME, PROVENANCE_NAME, BASE_SHAPES_NAME))


# Files that describe the source's sizes in another format: copied beside the
# grown weights they would load (or configure) the small model, with a warning
# at most. Left out, and said so.
OTHER_FORMAT_SUFFIXES = (".index.json", ".h5", ".msgpack", ".ot", ".onnx", ".gguf", ".tflite", ".ckpt")
OTHER_FORMAT_NAMES = ("params.json", OPTIMIZER_NAME)  # Mistral's config, with the sizes; a trainer's state


def side_files(directory: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The files of the model directory grow copies beside the weights, and
    (name, why) of those it leaves out that a person may expect: a symlink
    leading out of the directory (it could point at any file of the user's),
    anything that is not a regular file, and the source's weights or sizes in
    another format (they would describe the small model beside the grown one). Hidden files, folders, weights
    and the files grow writes itself are left out silently."""
    root = directory.resolve()
    copy, skipped = [], []
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if name.startswith(".") or _is_weights_or_written(name) or path.is_dir():
            continue
        target = path.resolve()
        if name.endswith(OTHER_FORMAT_SUFFIXES) or name in OTHER_FORMAT_NAMES:
            skipped.append((name, "weights or sizes of the source in another format, not grown"))
        elif root not in target.parents:
            skipped.append((name, "a symlink leading out of the source directory"))
        elif not target.is_file():
            skipped.append((name, "not a regular file"))
        else:
            copy.append(name)
    return copy, skipped


def copy_side_files(writer: CheckpointWriter, directory: Path, names: list[str]) -> dict[str, dict]:
    """Copy `names` from `directory` into the output; {name: {"bytes", "xxh3_128"}}
    for the record. A file replaced by a link or a FIFO since `side_files`
    looked is an error, never followed or read."""
    copied = {}
    for name in names:
        path = directory / name
        if path.is_symlink() and directory.resolve() not in path.resolve().parents:
            raise CheckpointError(path, "became a symlink leading out of the source directory")
        fd = open_regular(path)
        try:
            size, digest = writer.copy_file(name, fd)
        finally:
            os.close(fd)
        copied[name] = {"bytes": size, HASH_ALGORITHM: digest}
    return copied


def write_bytes(writer: CheckpointWriter, name: str, data: bytes) -> dict:
    """Write `data` into the output as `name`; {"bytes", "xxh3_128"} for the record."""
    fd = os.memfd_create(name)
    try:
        os.write(fd, data)
        size, digest = writer.copy_file(name, fd)
    finally:
        os.close(fd)
    return {"bytes": size, HASH_ALGORITHM: digest}


def pick_device(device: str) -> str:
    """`auto` is the GPU when the CUDA module is built and sees one (torch is
    imported only then), else the CPU."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise OutputError(f"--device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return device
    why = "the CUDA extension is not built" if _ext.cuda is None else "no CUDA GPU is visible"
    if _ext.cuda is not None and _ext.cuda.device_count() > 0:
        import torch

        if torch.cuda.is_available():
            return "cuda" if device == "auto" else device
        why = "this torch build has no CUDA"
    if device == "auto":
        return "cpu"
    raise OutputError(f"--device {device}: {why}")


def source_rows(ckpt: Checkpoint, t: TensorPlan, s0: int, s1: int,
                buffer: Callable[[int], memoryview]) -> torch.Tensor | None:
    """Source rows [s0, s1) of a planned tensor, read into `buffer(nbytes)`,
    as a tensor (None: pure init)."""
    import torch

    from .torch_dtypes import DTYPES

    if t.source is None:
        return None
    data = ckpt.read_rows(t.source, s0, s1, buffer)
    dtype = DTYPES[ckpt.info(t.source).dtype]
    shape = (s1 - s0, *t.src_shape[1:]) if t.src_shape else (1,)  # a 0-d source is one row
    return torch.frombuffer(data, dtype=dtype).reshape(shape) if data.nbytes else torch.empty(shape, dtype=dtype)


def address(buf: memoryview | mmap.mmap) -> int:
    """The address of a writable buffer (an mmap, or a view of one)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def kernel_dtype(dtype: str, what: str) -> str:
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"{what} has dtype {dtype}; the op takes F32, BF16 or F16")
    return KERNEL_DTYPES[dtype]


# A finished chunk: (tensor name, first row, bytes).
Chunk = tuple[str, int, int]
# Where finished chunks go: bytes holding chunks back to back, and the chunks.
# Writing them (grow) or comparing them with a file (verify).
Sink = Callable[[memoryview, list[Chunk]], None]


class _Stream:
    """Computes chunks into SLOTS reused host buffers of `chunk_bytes` and
    hands each slot to the sink on a worker thread; a slot is reused only
    after its sink call finished. Chunks smaller than a slot share one, back
    to back, where the subclass allows (`share`), so that many small tensors
    cost one hand-off between threads and one sink call per slot, not one
    per tensor. The subclasses say how a chunk is computed."""

    share = True

    def __init__(self, sink: Sink, ckpt: Checkpoint, chunk_bytes: int):
        self.sink, self.ckpt, self.chunk_bytes = sink, ckpt, chunk_bytes
        self.pending: list[Future | None] = [None] * SLOTS
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ws-convert-sink")
        self.slot, self.used = 0, 0
        self.chunks: list[Chunk] = []  # those of the slot being filled

    def submit(self, t: TensorPlan, seed: int, r0: int, r1: int, s0: int, s1: int) -> None:
        n = (r1 - r0) * t.row_bytes
        if self.chunks and not self.fits(t, n, s0, s1):
            self.flush()
        if not self.chunks:
            if self.pending[self.slot] is not None:
                self.pending[self.slot].result()  # re-raises a sink error here
            self.start(self.slot)
        if t.verbatim:
            self.copy(self.slot, self.used, t, r0, r1)
        else:
            self.compute(self.slot, self.used, t, seed, r0, r1, s0, s1)
        self.chunks.append((t.name, r0, n))
        self.used += n
        if not self.share:
            self.flush()

    def fits(self, t: TensorPlan, n: int, s0: int, s1: int) -> bool:
        """Whether a chunk of n output bytes (source rows [s0, s1)) still fits
        the slot being filled."""
        return self.used + n <= self.chunk_bytes

    def start(self, k: int) -> None:
        """Slot k is free (its chunks were handed to the sink) and about to be filled."""

    def compute(self, k: int, offset: int, t: TensorPlan, seed: int, r0: int, r1: int, s0: int, s1: int) -> None:
        """Start computing output rows [r0, r1) of `t` into slot k at `offset`
        (`ready(k)` waits for them)."""
        raise NotImplementedError

    def ready(self, k: int) -> None:
        """Wait until the chunks started in slot k are in its host bytes."""

    def slot_bytes(self, k: int) -> memoryview:
        """Host slot k as bytes."""
        raise NotImplementedError

    def copy(self, k: int, offset: int, t: TensorPlan, r0: int, r1: int) -> None:
        """Rows [r0, r1) of a tensor copied byte for byte (`TensorPlan.verbatim`),
        read straight into slot k at `offset`: its source rows are its rows."""
        n = (r1 - r0) * t.row_bytes
        self.ckpt.read_rows(t.source, r0, r1, lambda _: self.slot_bytes(k)[offset:offset + n])

    def flush(self) -> None:
        """Hand the current slot's chunks to the sink; move to the next slot."""
        if self.chunks:
            self.pending[self.slot] = self.pool.submit(self._drain, self.slot, self.used, self.chunks)
            self.slot, self.used, self.chunks = (self.slot + 1) % SLOTS, 0, []

    def _drain(self, k: int, used: int, chunks: list[Chunk]) -> None:
        self.ready(k)
        self.sink(self.slot_bytes(k)[:used], chunks)

    def finish(self) -> None:
        try:
            for f in self.pending:
                if f is not None:
                    f.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _anonymous(size: int) -> mmap.mmap:
    """Private anonymous pages: plain process memory, page-aligned, touched
    (so paid for) only as far as used."""
    return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class _KernelBatch:
    """One slot's kernel calls, run together when the slot is handed off:
    first the reads of their source rows from the files into the slot's
    arena (which must outlive the calls), then the calls. The batch holds
    descriptors of its own of the files it reads, so that the checkpoint's
    may close meanwhile."""

    def __init__(self, arena: mmap.mmap):
        self.arena, self.arena_address, self.used = arena, address(arena), 0
        self.own: list[mmap.mmap] = []  # sources that did not fit the arena
        self.calls = _ext.cpu.Batch()
        self.ran: Future | None = None
        self.fds: dict[Path, int] = {}
        self.read: list[TensorInfo] = []  # the tensor of each read, for messages

    def source_space(self, n: int) -> int:
        """The address of n free bytes for source rows."""
        if self.used + n > len(self.arena):
            self.own.append(_anonymous(n))
            return address(self.own[-1])
        self.used += n
        return self.arena_address + self.used - n

    def descriptor(self, ckpt: Checkpoint, info: TensorInfo) -> int:
        """The batch's descriptor of the file holding `info`; notes the read for messages."""
        self.read.append(info)
        fd = self.fds.get(info.file)
        if fd is None:
            fd = self.fds[info.file] = ckpt.descriptor(info.file)
        return fd

    def run(self, threads: int) -> None:
        failed = _ext.cpu.run(self.calls, threads)
        if failed is not None:
            index, error = failed
            info = self.read[index]
            why = f"cannot read: {os.strerror(error)}" if error else "the file was truncated while it was read"
            raise CheckpointError(info.file, why, info.name)

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])


class _KernelStream(_Stream):
    """A stream that calls a compiled kernel on raw addresses, from a
    template of its arguments built once per kind of tensor."""

    def __init__(self, sink: Sink, ckpt: Checkpoint, chunk_bytes: int):
        super().__init__(sink, ckpt, chunk_bytes)
        self.templates: dict[tuple, object] = {}
        self.same_objects: dict[tuple, object] = {}

    def template(self, t: TensorPlan, seed: int, lands: bool):
        """The arguments of every chunk of `t` but where it lies, which rows
        and which tensor, as `prepare` makes them from the keyword record of
        `kernel_args`. Shared by every tensor of the same shapes, dtypes,
        maps and knobs: a checkpoint of many small tensors has few distinct
        ones. `lands`: the chunk reads source bytes (for none, the kernel
        takes no source and no maps)."""
        src_dtype = None if t.source is None else self.ckpt.info(t.source).dtype
        # Planning gives the tensors of one kind the same maps, init and knob objects: asked by
        # identity first (they live as long as the stream), the cache needs no hashing of the maps.
        same = (id(t.maps), id(t.noise_maps), id(t.init), id(t.shrink), id(t.perturb), t.shape, t.src_shape,
                t.dtype, src_dtype, seed, lands)
        args = self.same_objects.get(same)
        if args is None:
            key = (t.shape, t.src_shape, t.maps, t.noise_maps, knobs_key(t.shrink, t.perturb, t.init), t.dtype,
                   src_dtype, seed, lands)
            args = self.templates.get(key)
            if args is None:
                shape, src_shape, maps = as_rows(t.shape, t.src_shape, t.maps)
                out = Buffer(0, 0, kernel_dtype(t.dtype, f"output tensor '{t.name}'"))
                src = None if src_dtype is None else \
                    Buffer(0, int(lands), kernel_dtype(src_dtype, f"source tensor '{t.source}'"))
                args = self.templates[key] = self.prepare(
                    kernel_args(out, shape, (0, 0), src, src_shape, 0, maps, shrink=t.shrink, perturb=t.perturb,
                                init=t.init, seed=seed, tid=0, noise_maps=t.noise_maps if t.shape else None), lands)
            self.same_objects[same] = args
        return args

    def prepare(self, args: dict, lands: bool):
        """What `template` keeps of a keyword record: here the record itself."""
        return args


class _CpuStream(_KernelStream):
    """The compiled CPU kernel on raw buffers: no tensors, no torch. Each
    chunk's call is validated as its source rows are read (into the slot's
    arena), and a slot's calls run as one batch on a thread of their own,
    their chunks shared over all cores with the interpreter lock released,
    while the next slot is read and the previous one written. So a checkpoint
    of many small tensors starts the kernel's threads once per slot, not once
    per tensor, and its Python work overlaps the computing."""

    def __init__(self, sink: Sink, ckpt: Checkpoint, chunk_bytes: int, threads: int | None):
        super().__init__(sink, ckpt, chunk_bytes)
        self.threads = threads or 0
        self.slots = [_anonymous(chunk_bytes) for _ in range(SLOTS)]
        self.addresses = [address(m) for m in self.slots]
        self.arenas = [_anonymous(chunk_bytes) for _ in range(SLOTS)]
        self.batches = [_KernelBatch(a) for a in self.arenas]
        self.kernel = ThreadPoolExecutor(1, thread_name_prefix="ws-convert-kernel")

    def slot_bytes(self, k: int) -> memoryview:
        return memoryview(self.slots[k])

    def prepare(self, args: dict, lands: bool):
        return _ext.cpu.Template(args, lands)

    def fits(self, t: TensorPlan, n: int, s0: int, s1: int) -> bool:
        batch = self.batches[self.slot]  # holds a descriptor per file it reads: a bounded number
        return super().fits(t, n, s0, s1) and (len(batch.fds) < BATCH_FILES or t.source is None
                                               or self.ckpt.info(t.source).file in batch.fds)

    def start(self, k: int) -> None:
        self.batches[k].close()
        self.batches[k] = _KernelBatch(self.arenas[k])

    def ready(self, k: int) -> None:
        self.batches[k].ran.result()

    def compute(self, k, offset, t, seed, r0, r1, s0, s1):
        batch = self.batches[k]
        src = src_nbytes = pos = 0
        fd = -1
        if t.source is not None:
            info, src_nbytes, pos, src = self.ckpt.locate_rows(t.source, s0, s1)
            if pos >= 0 and src_nbytes:  # in a file, not in memory: read when the batch runs
                src, fd = batch.source_space(src_nbytes), batch.descriptor(self.ckpt, info)
        batch.calls.add(self.template(t, seed, src_nbytes > 0), self.addresses[k] + offset, (r1 - r0) * t.row_bytes,
                        r0, r1, src if src_nbytes else 0, src_nbytes, s0, tensor_id(t.noise_name), fd, pos)

    def flush(self) -> None:
        if self.chunks:
            batch = self.batches[self.slot]
            batch.ran = self.kernel.submit(batch.run, self.threads)
        super().flush()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.kernel.shutdown(wait=True, cancel_futures=True)
            for batch in self.batches:
                batch.close()


ALIGN = 16  # device offsets of chunks in a slot: the kernel's widest access


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _CudaStream(_KernelStream):
    """The compiled CUDA kernel, fed by a staging thread. The main thread only
    places each chunk in its slot; the staging thread reads the chunk's
    source rows from the file into the slot's pinned arena and enqueues, on
    one CUDA stream, the copy to the device, the kernel and the copy of the
    output back into the slot's pinned host bytes; the sink thread waits for
    the slot's last copy and writes it. So reading the source, the device's
    copies and kernels, and writing the output overlap, and the Python work
    of planning the next chunks runs beside all of them. Small chunks share
    a slot, each at an offset aligned for the kernel's 16-byte accesses."""

    def __init__(self, sink: Sink, ckpt: Checkpoint, chunk_bytes: int, device: str):
        import torch

        super().__init__(sink, ckpt, chunk_bytes)
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        self.handle = self.stream.cuda_stream
        self.host = [self._pinned(chunk_bytes) for _ in range(SLOTS)]
        self.arena = [self._pinned(chunk_bytes) for _ in range(SLOTS)]  # source rows, staged
        self.dev_in = [self._device(chunk_bytes) for _ in range(SLOTS)]
        self.dev_out = [self._device(2 * chunk_bytes) for _ in range(SLOTS)]  # room for the alignment gaps
        self.src_used, self.dev_used = 0, 0  # of the slot being filled, aligned
        self.staged: list[list[Future]] = [[] for _ in range(SLOTS)]  # a slot's jobs on the staging thread
        self.events = [torch.cuda.Event() for _ in range(SLOTS)]
        self.stager = ThreadPoolExecutor(1, thread_name_prefix="ws-convert-stage",
                                         initializer=torch.cuda.set_device, initargs=(self.device,))

    def _pinned(self, n: int) -> torch.Tensor:
        import torch

        return torch.empty(max(n, 1), dtype=torch.uint8, pin_memory=True)

    def _device(self, n: int) -> torch.Tensor:
        import torch

        return torch.empty(max(n, 1), dtype=torch.uint8, device=self.device)

    def slot_bytes(self, k: int) -> memoryview:
        return tensor_bytes(self.host[k])

    def source_nbytes(self, t: TensorPlan, s0: int, s1: int) -> int:
        """The bytes of source rows [s0, s1) of `t`, staged in the slot's arena."""
        if t.source is None:
            return 0
        info = self.ckpt.info(t.source)
        return (s1 - s0) * info.nbytes // info.shape[0] if info.shape and info.shape[0] else info.nbytes

    def fits(self, t, n, s0, s1):
        return (super().fits(t, n, s0, s1) and self.dev_used + n <= self.dev_out[self.slot].numel()
                and self.src_used + self.source_nbytes(t, s0, s1) <= self.arena[self.slot].numel())

    def start(self, k: int) -> None:
        self.src_used, self.dev_used, self.staged[k] = 0, 0, []

    def ready(self, k: int) -> None:
        for job in self.staged[k]:
            job.result()  # re-raises a staging error
        self.events[k].synchronize()

    def _room(self, k: int, n: int, src_n: int) -> None:
        """Slot k (empty, its last use finished) made large enough for one
        chunk larger than a slot."""
        if src_n > self.arena[k].numel():
            self.arena[k], self.dev_in[k] = self._pinned(src_n), self._device(src_n)
        if n > self.dev_out[k].numel():
            self.dev_out[k] = self._device(n)

    def compute(self, k, offset, t, seed, r0, r1, s0, s1):
        n, src_n = (r1 - r0) * t.row_bytes, self.source_nbytes(t, s0, s1)
        if not self.chunks:
            self._room(k, n, src_n)
        src_at, dev_at = self.src_used, self.dev_used
        self.src_used, self.dev_used = _aligned(src_at + src_n), _aligned(dev_at + n)
        self.staged[k].append(self.stager.submit(self._stage, k, offset, dev_at, src_at, t, seed, r0, r1, s0, s1))

    def copy(self, k, offset, t, r0, r1):
        self.staged[k].append(self.stager.submit(super().copy, k, offset, t, r0, r1))

    def call(self, t: TensorPlan, seed: int, out_ptr: int, r0: int, r1: int, src_ptr: int, src_nbytes: int,
             s0: int) -> dict:
        """The kernel's arguments for output rows [r0, r1) of `t` at `out_ptr`,
        from `src_nbytes` bytes of source rows from s0 at `src_ptr`."""
        return dict(self.template(t, seed, src_nbytes > 0), out_ptr=out_ptr, out_nbytes=(r1 - r0) * t.row_bytes,
                    row_start=r0, row_stop=r1, src_ptr=src_ptr if src_nbytes else 0, src_nbytes=src_nbytes,
                    src_row_start=s0, tid=tensor_id(t.noise_name))

    def _stage(self, k: int, offset: int, dev_at: int, src_at: int, t: TensorPlan, seed: int, r0: int, r1: int,
               s0: int, s1: int) -> None:
        import torch

        n = (r1 - r0) * t.row_bytes
        src_ptr, src_n = 0, 0
        with torch.cuda.stream(self.stream):
            if t.source is not None:
                staged = tensor_bytes(self.arena[k])[src_at:]
                src_n = self.ckpt.read_rows(t.source, s0, s1, lambda nb: staged[:nb]).nbytes
                self.dev_in[k][src_at:src_at + src_n].copy_(self.arena[k][src_at:src_at + src_n], non_blocking=True)
                src_ptr = self.dev_in[k].data_ptr() + src_at
            _ext.cuda.szp(self.call(t, seed, self.dev_out[k].data_ptr() + dev_at, r0, r1, src_ptr, src_n, s0),
                          self.handle)
            self.host[k][offset:offset + n].copy_(self.dev_out[k][dev_at:dev_at + n], non_blocking=True)

    def flush(self) -> None:
        if self.chunks:
            self.staged[self.slot].append(self.stager.submit(self.events[self.slot].record, self.stream))
        super().flush()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.stager.shutdown(wait=True, cancel_futures=True)
            self.stream.synchronize()  # no copy may still use the buffers freed after this


class _TorchStream(_Stream):
    """The PyTorch reference on the CPU, when the compiled module is missing."""

    def __init__(self, sink: Sink, ckpt: Checkpoint, chunk_bytes: int, threads: int | None):
        import torch

        super().__init__(sink, ckpt, chunk_bytes)
        self.threads = threads
        self.host = [torch.empty(chunk_bytes, dtype=torch.uint8) for _ in range(SLOTS)]
        self.staging = [torch.empty(chunk_bytes, dtype=torch.uint8) for _ in range(SLOTS)]

    def slot_bytes(self, k: int) -> memoryview:
        return tensor_bytes(self.host[k])

    def source_buffer(self, k: int, n: int) -> memoryview:
        """Slot k's source staging, grown to n bytes if smaller."""
        import torch

        if n > self.staging[k].numel():
            self.staging[k] = torch.empty(n, dtype=torch.uint8)
        return tensor_bytes(self.staging[k])

    def compute(self, k, offset, t, seed, r0, r1, s0, s1):
        from .torch_dtypes import DTYPES

        src = source_rows(self.ckpt, t, s0, s1, lambda nb: self.source_buffer(k, nb))
        shape = (r1 - r0, *t.shape[1:]) if t.shape else ()
        n = (r1 - r0) * t.row_bytes
        host_out = self.host[k][offset:offset + n].view(DTYPES[t.dtype]).reshape(shape)
        run_tensor(t, src, seed, rows=(r0, r1) if t.shape else None, src_row_start=s0, out=host_out,
                   threads=self.threads)


def reading_order(ckpt: Checkpoint, tensors: list[TensorPlan]) -> list[TensorPlan]:
    """`tensors` sorted by where their sources lie (file, then offset); pure inits last."""
    files = {f: i for i, f in enumerate(ckpt.files)}

    def where(t: TensorPlan) -> tuple[int, int]:
        if t.source is None:
            return len(files), 0
        info = ckpt.info(t.source)
        return files[info.file], info.start

    return sorted(tensors, key=where)


@collection_paused()  # its loop makes only short-lived objects; collections would walk the plan's over and over
def execute(plan: Plan, ckpt: Checkpoint, sink: Sink, *, device: str = "cpu", threads: int | None = None,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES, tensors: list[TensorPlan] | None = None,
            progress: Callable[[int, int], None] | None = None) -> None:
    """Compute `tensors` (default: all of the plan) from the source `ckpt`
    in row chunks and hand each to `sink` on a worker thread, while the next
    one is computed. Tensors go in the order their sources lie in the files
    (the output is written by position, so the order changes no byte), which
    makes the reads of many small ones sequential. `progress(nbytes, i)`
    follows the computing of the i-th tensor in that order."""
    tensors = reading_order(ckpt, plan.tensors if tensors is None else tensors)
    if not tensors:
        return
    largest_row = max(t.row_bytes for t in tensors)
    chunk_bytes = max(chunk_bytes, largest_row)  # a chunk holds at least one row
    if device != "cpu":
        stream: _Stream = _CudaStream(sink, ckpt, chunk_bytes, device)
    elif _ext.cpu is not None:
        stream = _CpuStream(sink, ckpt, chunk_bytes, threads)
    else:
        stream = _TorchStream(sink, ckpt, chunk_bytes, threads)
    cuts: dict[tuple, list] = {}  # tensors of one shape, row size and row map are cut alike (the plan shares maps)
    try:
        for i, t in enumerate(tensors):
            cut = (t.shape, t.row_bytes, id(t.maps))
            chunks = cuts.get(cut)
            if chunks is None:
                chunks = cuts[cut] = list(row_chunks(t, chunk_bytes))
            for r0, r1, s0, s1 in chunks:
                stream.submit(t, plan.options.seed, r0, r1, s0, s1)
                if progress:
                    progress((r1 - r0) * t.row_bytes, i)
        stream.flush()
    finally:
        stream.finish()


@collection_paused()
def planned_writer(out: str | Path, plan: Plan, prov: dict, **kwargs) -> CheckpointWriter:
    """The writer of grow's output, every file of which follows from the plan
    and the record (`verify` plans the same files to compare them)."""
    return CheckpointWriter(out, plan.tensors, max_shard_size=prov["max_shard_size"], provenance=without_hashes(prov),
                            config=plan.config, base_shapes=write_base_shapes(plan.base_shapes), **kwargs)


def grow(src: str | Path, to_width: int | None = None, *, out: str | Path | None = None, overwrite: bool = False,
         device: str = "auto", threads: int | None = None, max_shard_size: int | str = "5GB",
         base_shapes: str | Path | None = None, allow_pickle: bool = False,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: Callable[[int, int, int, int], None] | None = None,
         dry_run: bool = False, revision: str | None = None, optimizer_state: str | Path | None = None,
         on_plan: Callable[[Plan], None] | None = None, **options) -> GrowReport:
    """Grow the checkpoint at `src` (a path, or a Hugging Face Hub repo id at
    `revision`) into a new directory (default: beside it, named after it and
    the width, or the depth when only that grows; for a repo id, in the
    current directory, named after the repo).
    `options` are GrowthOptions' fields.
    `progress(nbytes, total_bytes, tensor_index, n_tensors)` is called as
    output bytes are computed, `on_plan(plan)` once it is planned, before
    anything is written (the command line prints its warnings there).
    `optimizer_state` (an optimizer.pt of the
    trainer) is grown with the weights' maps and written beside them. A dry
    run plans and checks everything a real run would, the target included,
    and writes nothing."""
    t_start = time.perf_counter()
    hub = resolve(src, revision)
    src = hub.path
    named = Path(hub.repo_id.split("/")[-1]) if hub.repo_id else src
    out = output_dir(out) if out is not None else default_out(named, to_width, options.get("to_depth"))
    dev = pick_device(device)
    with open_checkpoint(src, allow_pickle=allow_pickle) as ckpt:
        opts = GrowthOptions(to_width=to_width, **options)
        plan = make_plan(Source.of(ckpt), opts, base_shapes)
        if on_plan is not None:
            on_plan(plan)
        protect = [*ckpt.files, Path(src)]
        prov = record(ckpt, plan.options, plan.arch, str(base_shapes) if base_shapes else None, allow_pickle, out,
                      parse_size(max_shard_size))
        if hub.repo_id:
            prov["source"].update(hub_repo_id=hub.repo_id, hub_revision=hub.revision)
        writer = planned_writer(out, plan, prov, overwrite=overwrite, protect=protect)
        directory = source_dir(src)
        names, skipped = side_files(directory) if directory is not None else ([], [])
        grown_state = None
        if optimizer_state is not None:
            from .optimizer_state import grow_state

            grown_state = grow_state(plan, optimizer_state, ckpt.config)
        if dry_run:
            writer.check()
            return GrowReport(out, plan, dev, 0, time.perf_counter() - t_start, names, skipped)
        def finish(hashes: dict) -> None:
            copied = copy_side_files(writer, directory, names) if names else {}
            grown = {} if grown_state is None else {OPTIMIZER_NAME: write_bytes(writer, OPTIMIZER_NAME, grown_state)}
            writer.add_file(PROVENANCE_NAME, record_text({**prov, HASHES: {**hashes, "files": copied,
                                                                           **({GROWN: grown} if grown else {})}}))

        rank, size = ranks.world()
        if size > 1:
            _grow_shared(plan, ckpt, writer, finish, rank, size, device=dev, threads=threads,
                         chunk_bytes=chunk_bytes, progress=progress)
        else:
            with writer, SourceHasher(ckpt) as hasher:
                count, total = len(plan.tensors), writer.total_size
                execute(plan, ckpt, writer.write_chunks, device=dev, threads=threads, chunk_bytes=chunk_bytes,
                        progress=progress and (lambda n, i: progress(n, total, i + 1, count)))
                finish(hasher.result())
    return GrowReport(out, plan, dev, writer.total_size, time.perf_counter() - t_start, names, skipped)


def _grow_shared(plan: Plan, ckpt: Checkpoint, writer: CheckpointWriter, finish: Callable[[dict], None],
                 rank: int, size: int, *, device: str, threads: int | None, chunk_bytes: int,
                 progress: Callable[[int, int, int, int], None] | None) -> None:
    """One rank's part of a grow under torchrun (ranks.py): its share of the
    tensors into the shards rank 0 laid out; rank 0 also hashes the source,
    and adds the side files and commits once every rank has succeeded."""
    mine = ranks.share(plan.tensors, rank, size)
    with ranks.Group() as group:
        opened = None
        if rank == 0:
            try:
                writer.__enter__()
                opened = str(writer.tmp_dir)
            finally:
                group.broadcast(opened)  # None: the others stop too
        else:
            opened = group.broadcast(None)
            if opened is None:
                raise OutputError(f"{writer.out_dir}: the first process of the run could not open the output")
            writer.attach(Path(opened))
        failure, hashes = None, None
        try:
            with SourceHasher(ckpt) if rank == 0 else contextlib.nullcontext() as hasher:
                count, total = len(mine), sum(t.numel * ITEMSIZE[t.dtype] for t in mine)
                execute(replace(plan, tensors=mine), ckpt, writer.write_chunks, device=device, threads=threads,
                        chunk_bytes=chunk_bytes, progress=progress and (lambda n, i: progress(n, total, i + 1, count)))
                writer.sync()
                hashes = hasher.result() if rank == 0 else None
        except BaseException as exc:
            failure = exc
        if not group.all_ok(failure is None):
            if rank == 0:
                writer.__exit__(OutputError, None, None)  # removes the temporary directory
            group.barrier()  # no rank leaves (and has torchrun stop the others) before that is done
            raise failure or OutputError(f"{writer.out_dir}: another process of the run failed; nothing was written")
        if rank == 0:
            try:
                own = {t.name for t in mine}
                writer.written_elsewhere(t.name for t in plan.tensors if t.name not in own)
                finish(hashes)
            except BaseException as exc:
                writer.__exit__(type(exc), exc, None)
                raise
            writer.__exit__(None, None, None)


__all__ = ["execute", "grow", "grow_state_dict", "run_tensor", "GrowReport", "default_out"]
