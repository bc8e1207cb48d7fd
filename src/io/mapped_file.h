#pragma once
// A read-only shared mapping of an image on a memory file system, read
// under a guard. Small reads of such a file cost a system call each
// (pread: the call, the page-cache lookup, the copy); through the mapping
// they are one copy. A file that another process truncates takes pages out
// from under the mapping, and touching one raises SIGBUS, which would end
// the daemon: copy() catches it (a SIGBUS handler that jumps back out of
// the copy when the fault lies in a mapping being copied on this thread)
// and reports the read as failed. Faults anywhere else go to the handler
// that was there before (the sanitizers') or to the default action.
//
// What the mapping cannot say, its user checks: the bytes of the last page
// past a new end of file read as zeros rather than fault, so copy() also
// touches the mapping's last page after the copy (a fault there means the
// file may now end inside the range: the caller checks the file's size);
// and reading a hole through a shared mapping of tmpfs allocates the page,
// where pread would not (map only files without holes).

#include <cstddef>
#include <cstdint>
#include <memory>

namespace ioband::io {

class MappedFile {
 public:
  // The first length bytes of fd, or nullptr if they cannot be mapped.
  static std::unique_ptr<MappedFile> map(int fd, uint64_t length) noexcept;
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint64_t length() const noexcept { return length_; }
  enum class Copy : uint8_t {
    whole,   // copied, and the file went on past the range's last page
    at_end,  // copied, but the file may end inside the range's last page
    failed,  // a page of the range is gone (the file was cut under the mapping)
  };
  // Copies [offset, offset + length) of the file to out. The range must lie
  // within length().
  Copy copy(uint8_t* out, uint64_t offset, size_t length) const noexcept;

 private:
  MappedFile(const uint8_t* base, uint64_t length) noexcept : base_(base), length_(length) {}
  const uint8_t* base_;
  uint64_t length_;
};

}  // namespace ioband::io
