// GroupId -> Group* for one ioband device: open addressing, linear probing,
// 16 bytes a slot, load at most 3/4 (3/8 right after it doubles; it does not
// shrink), backward-shift deletion (no tombstones), so a lookup on the hot
// path is a hash and one or two cache lines.
#pragma once

#include <cstdint>
#include <vector>

#include "qos/request.h"

namespace ioband::qos::detail {

template <typename Value>
class GroupTable {
 public:
  Value* find(GroupId id) const noexcept {
    if (size_ == 0) return nullptr;
    for (std::size_t i = slot_of(id);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.value == nullptr) return nullptr;
      if (slot.id == id) return slot.value;
    }
  }

  // The id must not be present.
  void insert(GroupId id, Value* value) {
    if ((size_ + 1) * 4 > slots_.size() * 3) grow();
    place(id, value);
    ++size_;
  }

  bool erase(GroupId id) noexcept {
    if (size_ == 0) return false;
    std::size_t i = slot_of(id);
    for (;; i = (i + 1) & mask_) {
      if (slots_[i].value == nullptr) return false;
      if (slots_[i].id == id) break;
    }
    // Backward-shift: move later entries of the probe run into the hole.
    std::size_t hole = i;
    for (std::size_t j = (i + 1) & mask_; slots_[j].value != nullptr; j = (j + 1) & mask_) {
      std::size_t home = slot_of(slots_[j].id);
      // Move j into the hole unless its home lies cyclically in (hole, j].
      bool home_after_hole = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (!home_after_hole) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = Slot{};
    --size_;
    return true;
  }

  std::size_t size() const noexcept { return size_; }
  std::size_t memory_bytes() const noexcept { return slots_.capacity() * sizeof(Slot); }

  template <typename Visit>
  void for_each(Visit visit) const {
    for (const Slot& slot : slots_) {
      if (slot.value != nullptr) visit(slot.id, slot.value);
    }
  }

 private:
  struct Slot {
    GroupId id = 0;
    Value* value = nullptr;
  };

  std::size_t slot_of(GroupId id) const noexcept {
    // Fibonacci hashing: ids are often small consecutive integers (uids, pids).
    std::uint64_t h = static_cast<std::uint64_t>(id) * 0x9E3779B97F4A7C15ull;
    return static_cast<std::size_t>(h >> shift_) & mask_;
  }

  void place(GroupId id, Value* value) noexcept {
    std::size_t i = slot_of(id);
    while (slots_[i].value != nullptr) i = (i + 1) & mask_;
    slots_[i] = Slot{id, value};
  }

  void grow() {
    std::size_t capacity = slots_.empty() ? 8 : slots_.size() * 2;
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    shift_ = 64 - static_cast<unsigned>(__builtin_ctzll(capacity));
    for (const Slot& slot : old) {
      if (slot.value != nullptr) place(slot.id, slot.value);
    }
  }

  std::vector<Slot> slots_;
  std::size_t size_ = 0;
  std::size_t mask_ = 0;
  unsigned shift_ = 64;
};

}  // namespace ioband::qos::detail
