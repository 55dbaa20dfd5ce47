#include "source_reads.h"

#include <cerrno>
#include <unistd.h>

namespace ws {

ReadFailure read_sources(const std::vector<SourceRead>& reads) {
  const size_t n = reads.size();
  for (size_t i = 0; i < n;) {
    // reads[i, j) continue each other: one range of the file into one range of memory
    size_t j = i + 1;
    int64_t total = reads[i].nbytes;
    while (j < n && reads[j].fd == reads[i].fd && reads[j].pos == reads[i].pos + total &&
           reads[j].dst == reads[i].dst + static_cast<uintptr_t>(total)) {
      total += reads[j].nbytes;
      ++j;
    }
    char* dst = reinterpret_cast<char*>(reads[i].dst);
    int64_t done = 0;
    while (done < total) {
      const ssize_t got = pread(reads[i].fd, dst + done, static_cast<size_t>(total - done), reads[i].pos + done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        // name the read holding the first byte missing
        size_t k = i;
        for (int64_t end = reads[i].nbytes; end <= done && k + 1 < j; end += reads[++k].nbytes) {
        }
        return {static_cast<int64_t>(k), got < 0 ? errno : 0};
      }
      done += got;
    }
    i = j;
  }
  return {};
}

}  // namespace ws
