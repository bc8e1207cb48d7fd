#pragma once
// An export: a name clients ask for, a backend, and the reactor that serves
// its connections (a device group, and so its exports, lives on one reactor).

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/backend.h"
#include "io/reactor.h"
#include "nbd/access.h"
#include "nbd/classify.h"
#include "nbd/protocol.h"
#include "qos/request.h"

namespace ioband::nbd {

class DeviceGroupDriver;

// How an export's requests are scheduled; empty for an export outside any
// device group (iobandd --export), whose requests go straight to storage.
struct Scheduling {
  DeviceGroupDriver* driver = nullptr;
  qos::DeviceId device = 0;
  std::atomic<GroupType> type{GroupType::none};
  // Bumped whenever classification may have changed (type, attach, detach):
  // sessions then compute their group again.
  std::atomic<uint32_t> epoch{0};
};

struct Export {
  std::string name;
  std::string description;
  std::unique_ptr<io::Backend> backend;
  bool read_only = false;
  io::Reactor* reactor = nullptr;
  std::atomic<int> connections{0};
  // Held: new connections are refused (iobandctl calibrate is rewriting the
  // storage in place). See admit().
  std::atomic<bool> held{false};
  Scheduling scheduling;
  // Who may open it (nbd/access.h); null: everyone. Replaced whole by the
  // control plane, read by handshakes; a session keeps what it was given.
  std::atomic<std::shared_ptr<const AccessList>> access;

  Access access_for(const PeerIdentity& peer) const noexcept {
    const std::shared_ptr<const AccessList> rules = access.load();
    const Access given = rules ? nbd::access_for(*rules, peer) : Access::read_write;
    return given == Access::read_write && is_read_only() ? Access::read_only : given;
  }
  void set_access(AccessList rules) {
    access.store(std::make_shared<const AccessList>(std::move(rules)));
  }

  // Counts a new connection, unless the export is held. The count goes up
  // before `held` is read, and the control plane sets `held` before it reads
  // the count (both sequentially consistent): so either it sees this
  // connection, or this connection sees the hold.
  bool admit() noexcept {
    connections.fetch_add(1);
    if (!held.load()) return true;
    connections.fetch_sub(1);
    return false;
  }

  // client_read_only: this client may only read (an allow-ro rule).
  uint16_t transmission_flags(bool client_read_only = false) const noexcept {
    const io::BackendTraits traits = backend->traits();
    uint16_t flags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendCache | kTxCanMultiConn | kTxSendDf;
    if (read_only || traits.read_only || client_read_only) {
      flags |= kTxReadOnly;
    } else {
      flags |= kTxSendWriteZeroes;
      if (traits.can_trim) flags |= kTxSendTrim;
      if (traits.can_fast_zero) flags |= kTxSendFastZero;
    }
    if (traits.rotational) flags |= kTxRotational;
    return flags;
  }
  bool is_read_only() const noexcept { return read_only || backend->traits().read_only; }
};

// The exports by name. Looked up during handshakes on any reactor, changed by
// the control plane, hence the lock (never held on the request path).
class ExportRegistry {
 public:
  bool add(std::shared_ptr<Export> e) {
    std::unique_lock lock(mutex_);
    return exports_.emplace(e->name, std::move(e)).second;
  }
  std::shared_ptr<Export> remove(const std::string& name) {
    std::unique_lock lock(mutex_);
    auto it = exports_.find(name);
    if (it == exports_.end()) return nullptr;
    auto e = std::move(it->second);
    exports_.erase(it);
    return e;
  }
  std::shared_ptr<Export> find(const std::string& name) const {
    std::shared_lock lock(mutex_);
    auto it = exports_.find(name);
    return it == exports_.end() ? nullptr : it->second;
  }
  // The export a client names; the empty name means the only export, when
  // there is exactly one (the spec's "default export").
  std::shared_ptr<Export> find_for_client(const std::string& name) const {
    std::shared_lock lock(mutex_);
    if (name.empty()) return exports_.size() == 1 ? exports_.begin()->second : nullptr;
    auto it = exports_.find(name);
    return it == exports_.end() ? nullptr : it->second;
  }
  std::vector<std::shared_ptr<Export>> list() const {
    std::shared_lock lock(mutex_);
    std::vector<std::shared_ptr<Export>> out;
    for (auto& [name, e] : exports_) out.push_back(e);
    return out;
  }

 private:
  mutable std::shared_mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<Export>> exports_;
};

}  // namespace ioband::nbd
