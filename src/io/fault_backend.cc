// The fault backend: wraps any backend and makes ops fail with a chosen
// errno at a chosen rate, and/or waits a fixed delay before each op, so that
// error paths and slow storage are tested, not hoped for (STYLE.md point 10).
// Both may be limited to a range of the export (a bad spot on a disk), so
// that failing and healthy requests can be in flight together.

#include <cerrno>
#include <new>

#include "io/backend.h"

namespace ioband::io {
namespace {

class FaultBackend final : public Backend {
 public:
  FaultBackend(std::unique_ptr<Backend> inner, const FaultOptions& options)
      : inner_(std::move(inner)), options_(options), state_(options.seed | 1) {}

  uint64_t size() const noexcept override { return inner_->size(); }
  BackendTraits traits() const noexcept override {
    BackendTraits t = inner_->traits();
    if (options_.delay_ms) {
      t.memory_speed = false;
      t.writes_consumed_below = 0;
    }
    return t;
  }
  std::string describe() const override {
    std::string d = inner_->describe() + " with faults:";
    if (options_.error_number) {
      d += " errno " + std::to_string(options_.error_number) + " at rate " + std::to_string(options_.rate);
    }
    if (options_.delay_ms) d += " delay " + std::to_string(options_.delay_ms) + " ms";
    if (options_.length) {
      d += " in bytes " + std::to_string(options_.offset) + " to " + std::to_string(options_.offset + options_.length);
    }
    return d;
  }

  void submit(Reactor& reactor, IoOp& op) noexcept override {
    op.handler = this;
    op.reactor = &reactor;
    if (!in_range(op)) return inner_->submit(reactor, op);
    if (options_.delay_ms == 0) return after_delay(reactor, op);
    // The op is idle while its timer runs, so its bounce field can carry the
    // timespec: the timer needs storage that lives until it fires.
    auto* ts = new (std::nothrow) __kernel_timespec{};
    if (!ts) return op.finish(-ENOMEM);
    ts->tv_sec = options_.delay_ms / 1000;
    ts->tv_nsec = static_cast<long long>(options_.delay_ms % 1000) * 1000000;
    op.bounce = reinterpret_cast<uint8_t*>(ts);
    reactor.arm_timer(&op, ts);
  }

  void complete(Reactor& reactor, IoOp& op, int32_t) noexcept override {
    delete reinterpret_cast<__kernel_timespec*>(op.bounce);
    op.bounce = nullptr;
    after_delay(reactor, op);
  }

  int block_status(uint64_t offset, uint32_t length, std::vector<Extent>& out) noexcept override {
    return inner_->block_status(offset, length, out);
  }

 private:
  bool in_range(const IoOp& op) const noexcept {
    if (options_.length == 0) return true;
    return op.length != 0 && op.offset < options_.offset + options_.length && options_.offset < op.offset + op.length;
  }

  void after_delay(Reactor& reactor, IoOp& op) noexcept {
    if (options_.error_number && next_uniform() < options_.rate) {
      const int32_t error = -options_.error_number;
      reactor.defer([&op, error] { op.finish(error); });
      return;
    }
    inner_->submit(reactor, op);
  }

  // xorshift64*: deterministic for a given seed, so failures are repeatable.
  double next_uniform() noexcept {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return static_cast<double>((state_ * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
  }

  std::unique_ptr<Backend> inner_;
  FaultOptions options_;
  uint64_t state_;
};

}  // namespace

std::unique_ptr<Backend> wrap_fault_backend(std::unique_ptr<Backend> inner, const FaultOptions& options) {
  return std::make_unique<FaultBackend>(std::move(inner), options);
}

}  // namespace ioband::io
