#include "io/mapped_file.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <cstring>
#include <mutex>

namespace ioband::io {

namespace {

// The copy in progress on this thread, if any: where its source lies and
// where to jump back to.
struct Guard {
  sigjmp_buf jump;
  const uint8_t* begin;
  const uint8_t* end;
};
thread_local Guard* t_guard = nullptr;

struct sigaction g_previous {};
std::once_flag g_installed;

void on_sigbus(int signal, siginfo_t* info, void* context) {
  const Guard* guard = t_guard;
  const auto* address = static_cast<const uint8_t*>(info->si_addr);
  if (guard && address >= guard->begin && address < guard->end) siglongjmp(const_cast<Guard*>(guard)->jump, 1);
  // Not a page of a guarded copy: what would have happened without us.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(signal, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    return g_previous.sa_handler(signal);
  }
  // The default action: returning re-runs the faulting instruction, which
  // faults again with no handler (a core dump, as without us).
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  sigaction(SIGBUS, &fallback, nullptr);
}

void install_handler() {
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  // SA_NODEFER: the jump out of the handler leaves SIGBUS unblocked without
  // restoring a saved signal mask (sigsetjmp(..., 0) saves none: no system
  // call per copy).
  action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, &g_previous);
}

}  // namespace

std::unique_ptr<MappedFile> MappedFile::map(int fd, uint64_t length) noexcept {
  if (length == 0) return nullptr;
  void* base = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return nullptr;
  // Random small reads: no readahead of the mapping (the pages are in
  // memory already; fault-around still maps neighbours present).
  madvise(base, length, MADV_RANDOM);
  std::call_once(g_installed, install_handler);
  return std::unique_ptr<MappedFile>(new MappedFile(static_cast<const uint8_t*>(base), length));
}

MappedFile::~MappedFile() { munmap(const_cast<uint8_t*>(base_), length_); }

MappedFile::Copy MappedFile::copy(uint8_t* out, uint64_t offset, size_t length) const noexcept {
  assert(offset <= length_ && length <= length_ - offset);
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // The mapping's last page: while it is there, the file reaches past the
  // last page of every range that ends before it. The same page each time,
  // so touching it costs no cache or TLB miss.
  const uint64_t last_page = (length_ - 1) / page * page;
  const bool before_last_page = offset + length <= last_page;
  Guard guard;
  guard.begin = base_;
  guard.end = base_ + length_;
  // Set before the jump: 1 once the range is copied and only the look at
  // the last page is left.
  volatile int stage = 0;
  if (sigsetjmp(guard.jump, 0) != 0) {
    t_guard = nullptr;
    return stage == 0 ? Copy::failed : Copy::at_end;
  }
  t_guard = &guard;
  // The handler must see the guard before the copy touches a page, and
  // the copy must be over before the guard goes.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memcpy(out, base_ + offset, length);
  Copy result = Copy::at_end;
  if (before_last_page) {
    stage = 1;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    (void)*static_cast<const volatile uint8_t*>(base_ + last_page);
    result = Copy::whole;
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_guard = nullptr;
  return result;
}

}  // namespace ioband::io
