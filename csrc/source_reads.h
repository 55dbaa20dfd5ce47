// Reading a batch's source rows from the files, off the interpreter: the
// file-to-file engine lists each chunk's read, and the batch performs them
// (adjacent ones as one) right before its kernel calls, on its own thread.
#pragma once
#include <cstdint>
#include <vector>

namespace ws {

// nbytes at file offset `pos` of the open file `fd`, into the buffer at `dst`.
struct SourceRead {
  int fd = -1;
  int64_t pos = 0, nbytes = 0;
  uintptr_t dst = 0;
};

// Which read failed (-1: none) and why: an errno, or 0 when the file ended
// before its bytes (it was truncated after its header was read).
struct ReadFailure {
  int64_t index = -1;
  int error = 0;
};

// Performs `reads` in order; a run of reads that continue each other in the
// same file and in memory is one system call (many small tensors read in file
// order cost a few large reads). Stops at the first failure.
ReadFailure read_sources(const std::vector<SourceRead>& reads);

}  // namespace ws
