// A 4-ary min-heap of (key, item*) whose items know their position, so an
// item can be removed or re-keyed in O(log n). Keys live in the heap entries
// so comparisons do not touch the items; four children share a cache line
// and the tree is half as deep as a binary one, which halves the writes of
// positions back into the (cold) items on the hot path.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <utility>
#include <vector>

namespace ioband::qos::detail {

inline constexpr std::uint32_t kNotInHeap = UINT32_MAX;

template <typename Item, std::uint32_t Item::*Index>
class IndexedHeap {
 public:
  struct Entry {
    std::int64_t key;
    Item* item;
  };

  bool empty() const noexcept { return entries_.empty(); }
  std::size_t size() const noexcept { return entries_.size(); }
  const Entry& top() const noexcept {
    assert(!entries_.empty());
    return entries_.front();
  }
  static bool contains(const Item* item) noexcept { return item->*Index != kNotInHeap; }
  std::int64_t key_of(const Item* item) const noexcept { return entries_[item->*Index].key; }

  void reserve(std::size_t n) { entries_.reserve(n); }
  std::size_t capacity() const noexcept { return entries_.capacity(); }

  // Capacity is reserved by the control plane (attach), so push does not
  // allocate on the hot path in practice; if it must, it does.
  void push(Item* item, std::int64_t key) {
    assert(!contains(item));
    entries_.push_back({key, item});
    std::uint32_t i = static_cast<std::uint32_t>(entries_.size() - 1);
    item->*Index = i;
    sift_up(i);
  }

  void erase(Item* item) noexcept {
    assert(contains(item));
    std::uint32_t i = item->*Index;
    item->*Index = kNotInHeap;
    std::uint32_t last = static_cast<std::uint32_t>(entries_.size() - 1);
    if (i != last) {
      entries_[i] = entries_[last];
      entries_[i].item->*Index = i;
      entries_.pop_back();
      fix(i);
    } else {
      entries_.pop_back();
    }
  }

  Item* pop() noexcept {
    Item* item = entries_.front().item;
    erase(item);
    return item;
  }

  void update(Item* item, std::int64_t key) noexcept {
    assert(contains(item));
    std::uint32_t i = item->*Index;
    entries_[i].key = key;
    fix(i);
  }

  // Re-keys every item with `key_of(item)` and restores the heap in O(n).
  template <typename KeyOf>
  void rekey(KeyOf key_of) {
    for (Entry& entry : entries_) entry.key = key_of(entry.item);
    for (std::size_t i = entries_.size() / kArity + 1; i-- > 0;) {
      if (i < entries_.size()) sift_down(static_cast<std::uint32_t>(i));
    }
  }

  template <typename Visit>
  void for_each(Visit visit) const {
    for (const Entry& entry : entries_) visit(entry.item);
  }

  // Removes everything (items are marked as not in the heap).
  void clear() noexcept {
    for (Entry& entry : entries_) entry.item->*Index = kNotInHeap;
    entries_.clear();
  }

 private:
  static constexpr std::uint32_t kArity = 4;

  void fix(std::uint32_t i) noexcept {
    if (i > 0 && entries_[i].key < entries_[(i - 1) / kArity].key) {
      sift_up(i);
    } else {
      sift_down(i);
    }
  }

  void sift_up(std::uint32_t i) noexcept {
    Entry moving = entries_[i];
    while (i > 0) {
      std::uint32_t parent = (i - 1) / kArity;
      if (!(moving.key < entries_[parent].key)) break;
      entries_[i] = entries_[parent];
      entries_[i].item->*Index = i;
      i = parent;
    }
    entries_[i] = moving;
    moving.item->*Index = i;
  }

  void sift_down(std::uint32_t i) noexcept {
    std::uint32_t n = static_cast<std::uint32_t>(entries_.size());
    Entry moving = entries_[i];
    for (;;) {
      std::uint32_t first = kArity * i + 1;
      if (first >= n) break;
      std::uint32_t last = std::min(first + kArity, n);
      std::uint32_t child = first;
      for (std::uint32_t c = first + 1; c < last; ++c) {
        if (entries_[c].key < entries_[child].key) child = c;
      }
      if (!(entries_[child].key < moving.key)) break;
      entries_[i] = entries_[child];
      entries_[i].item->*Index = i;
      i = child;
    }
    entries_[i] = moving;
    moving.item->*Index = i;
  }

  std::vector<Entry> entries_;
};

}  // namespace ioband::qos::detail

namespace ioband::qos::detail {

// The same 4-ary min-heap over dense slot numbers instead of pointers, with
// positions kept in an array shared by all heaps of one kind (an item is in
// at most one of them). Sifting writes positions into that small dense array
// and never touches the items themselves: on the hot path with thousands of
// groups that saves a cache miss per level.
class SlotHeap {
 public:
  struct Entry {
    std::int64_t key;
    std::uint32_t slot;
  };

  explicit SlotHeap(std::vector<std::uint32_t>* positions) noexcept : positions_(positions) {}

  bool empty() const noexcept { return entries_.empty(); }
  std::size_t size() const noexcept { return entries_.size(); }
  const Entry& top() const noexcept {
    assert(!entries_.empty());
    return entries_.front();
  }
  bool contains(std::uint32_t slot) const noexcept { return (*positions_)[slot] != kNotInHeap; }
  void reserve(std::size_t n) { entries_.reserve(n); }
  std::size_t capacity() const noexcept { return entries_.capacity(); }

  void push(std::uint32_t slot, std::int64_t key) {
    assert(!contains(slot));
    entries_.push_back({key, slot});
    std::uint32_t i = static_cast<std::uint32_t>(entries_.size() - 1);
    (*positions_)[slot] = i;
    sift_up(i);
  }

  void erase(std::uint32_t slot) noexcept {
    assert(contains(slot));
    std::uint32_t i = (*positions_)[slot];
    (*positions_)[slot] = kNotInHeap;
    std::uint32_t last = static_cast<std::uint32_t>(entries_.size() - 1);
    if (i != last) {
      entries_[i] = entries_[last];
      (*positions_)[entries_[i].slot] = i;
      entries_.pop_back();
      fix(i);
    } else {
      entries_.pop_back();
    }
  }

  void update(std::uint32_t slot, std::int64_t key) noexcept {
    assert(contains(slot));
    std::uint32_t i = (*positions_)[slot];
    entries_[i].key = key;
    fix(i);
  }

  template <typename KeyOf>
  void rekey(KeyOf key_of) {
    for (Entry& entry : entries_) entry.key = key_of(entry.slot);
    for (std::size_t i = entries_.size() / kArity + 1; i-- > 0;) {
      if (i < entries_.size()) sift_down(static_cast<std::uint32_t>(i));
    }
  }

  template <typename Visit>
  void for_each(Visit visit) const {
    for (const Entry& entry : entries_) visit(entry.slot);
  }

  void clear() noexcept {
    for (Entry& entry : entries_) (*positions_)[entry.slot] = kNotInHeap;
    entries_.clear();
  }

 private:
  static constexpr std::uint32_t kArity = 4;

  void fix(std::uint32_t i) noexcept {
    if (i > 0 && entries_[i].key < entries_[(i - 1) / kArity].key) {
      sift_up(i);
    } else {
      sift_down(i);
    }
  }

  void sift_up(std::uint32_t i) noexcept {
    Entry* entries = entries_.data();
    std::uint32_t* positions = positions_->data();
    Entry moving = entries[i];
    while (i > 0) {
      std::uint32_t parent = (i - 1) / kArity;
      if (!(moving.key < entries[parent].key)) break;
      entries[i] = entries[parent];
      positions[entries[i].slot] = i;
      i = parent;
    }
    entries[i] = moving;
    positions[moving.slot] = i;
  }

  // The smallest of the children of i, without branches when all four exist
  // (keys are unpredictable: a mispredicted branch costs more than a cmov).
  std::uint32_t smallest_child(const Entry* entries, std::uint32_t first, std::uint32_t n) const noexcept {
    if (first + kArity <= n) {
      std::uint32_t a = entries[first + 1].key < entries[first].key ? first + 1 : first;
      std::uint32_t b = entries[first + 3].key < entries[first + 2].key ? first + 3 : first + 2;
      return entries[b].key < entries[a].key ? b : a;
    }
    std::uint32_t child = first;
    for (std::uint32_t c = first + 1; c < n; ++c) child = entries[c].key < entries[child].key ? c : child;
    return child;
  }

  void sift_down(std::uint32_t i) noexcept {
    Entry* entries = entries_.data();
    std::uint32_t* positions = positions_->data();
    std::uint32_t n = static_cast<std::uint32_t>(entries_.size());
    Entry moving = entries[i];
    for (;;) {
      std::uint32_t first = kArity * i + 1;
      if (first >= n) break;
      std::uint32_t child = smallest_child(entries, first, n);
      if (!(entries[child].key < moving.key)) break;
      entries[i] = entries[child];
      positions[entries[i].slot] = i;
      i = child;
    }
    entries[i] = moving;
    positions[moving.slot] = i;
  }

  std::vector<Entry> entries_;
  std::vector<std::uint32_t>* positions_;
};

}  // namespace ioband::qos::detail
