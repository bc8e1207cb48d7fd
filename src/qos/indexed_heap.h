// A 4-ary min-heap of (key, item) whose items know their position, so an
// item can be removed or re-keyed in O(log n). Keys live in the heap entries
// so comparisons do not touch the items; four children share a cache line
// and the tree is half as deep as a binary one, which halves the writes of
// positions on the hot path.
//
// One algorithm, two ways to keep positions:
//   IndexedHeap<Item, &Item::index>  items are pointers; the position is a
//                                    member of the item.
//   SlotHeap                         items are dense slot numbers; positions
//                                    live in an array shared by all heaps of
//                                    one kind (an item is in at most one).
//                                    Sifting then writes into that small
//                                    array and never touches the items: with
//                                    thousands of groups that saves a cache
//                                    miss per level.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <utility>
#include <vector>

namespace ioband::qos::detail {

inline constexpr std::uint32_t kNotInHeap = UINT32_MAX;

// Positions: a callable giving `std::uint32_t&` for an item.
template <typename Handle, typename Positions>
class DaryHeap {
 public:
  struct Entry {
    std::int64_t key;
    Handle item;
  };

  explicit DaryHeap(Positions positions = Positions()) noexcept : position_(positions) {}

  bool empty() const noexcept { return entries_.empty(); }
  std::size_t size() const noexcept { return entries_.size(); }
  const Entry& top() const noexcept {
    assert(!entries_.empty());
    return entries_.front();
  }
  // The second smallest entry (the smallest child of the top), if any.
  const Entry* runner_up() const noexcept {
    std::uint32_t n = static_cast<std::uint32_t>(entries_.size());
    return n < 2 ? nullptr : &entries_[smallest_child(entries_.data(), 1, n).index];
  }
  bool contains(Handle item) const noexcept { return position_(item) != kNotInHeap; }
  std::int64_t key_of(Handle item) const noexcept { return entries_[position_(item)].key; }

  void reserve(std::size_t n) { entries_.reserve(n); }
  std::size_t capacity() const noexcept { return entries_.capacity(); }

  // Capacity is reserved by the control plane (attach), so push does not
  // allocate on the hot path in practice; if it must, it does.
  void push(Handle item, std::int64_t key) {
    assert(!contains(item));
    entries_.push_back({key, item});
    std::uint32_t i = static_cast<std::uint32_t>(entries_.size() - 1);
    position_(item) = i;
    sift_up(i);
  }

  void erase(Handle item) noexcept {
    assert(contains(item));
    std::uint32_t i = position_(item);
    position_(item) = kNotInHeap;
    std::uint32_t last = static_cast<std::uint32_t>(entries_.size() - 1);
    if (i != last) {
      entries_[i] = entries_[last];
      position_(entries_[i].item) = i;
      entries_.pop_back();
      fix(i);
    } else {
      entries_.pop_back();
    }
  }

  Handle pop() noexcept {
    Handle item = entries_.front().item;
    erase(item);
    return item;
  }

  void update(Handle item, std::int64_t key) noexcept {
    assert(contains(item));
    std::uint32_t i = position_(item);
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

  // Calls visit(item) for the items whose key is below `below`, parents
  // before their children, until visit returns false. The heap's order
  // prunes: a subtree whose root is not below is skipped whole, so the cost
  // is that of the items visited (and of their children's keys). A walk by
  // index, without a stack. visit must not change the heap.
  template <typename Visit>
  void visit_below(std::int64_t below, Visit&& visit) const {
    const Entry* entries = entries_.data();
    const std::uint32_t n = static_cast<std::uint32_t>(entries_.size());
    std::uint32_t i = 0;
    for (;;) {
      if (i < n && entries[i].key < below) {
        if (!visit(entries[i].item)) return;
        const std::uint32_t child = kArity * i + 1;
        if (child < n) {
          i = child;
          continue;
        }
      }
      // On to the next sibling, or up to the parent's.
      for (;;) {
        if (i == 0) return;
        if ((i - 1) % kArity != kArity - 1) {
          ++i;
          break;
        }
        i = (i - 1) / kArity;
      }
    }
  }

  // Removes everything (items are marked as not in the heap).
  void clear() noexcept {
    for (Entry& entry : entries_) position_(entry.item) = kNotInHeap;
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
    Entry moving = entries[i];
    while (i > 0) {
      std::uint32_t parent = (i - 1) / kArity;
      if (!(moving.key < entries[parent].key)) break;
      entries[i] = entries[parent];
      position_(entries[i].item) = i;
      i = parent;
    }
    entries[i] = moving;
    position_(moving.item) = i;
  }

  // The smallest of the children from `first` on (the first of equals),
  // and its key. Without branches when all four exist (keys are
  // unpredictable: a mispredicted branch costs more than a cmov); the
  // choice is written as arithmetic on the comparisons' results, and each
  // minimum is taken with the other comparison than the index's: GCC turns
  // the `?:` form, or a min on the same comparison, into conditional jumps,
  // which mispredict about once per level in a heap of thousands of groups.
  struct Child {
    std::uint32_t index;
    std::int64_t key;
  };
  [[gnu::always_inline]] static Child four_children(const Entry* entries, std::uint32_t first) noexcept {
    const Entry* c = entries + first;
    const std::int64_t k0 = c[0].key, k1 = c[1].key, k2 = c[2].key, k3 = c[3].key;
    const std::uint32_t a = static_cast<std::uint32_t>(k1 < k0);
    const std::uint32_t b = static_cast<std::uint32_t>(k3 < k2);
    const std::int64_t key_a = std::min(k1, k0), key_b = std::min(k3, k2);
    const std::uint32_t b_smaller = static_cast<std::uint32_t>(key_b < key_a);
    const std::uint32_t mask = 0u - b_smaller;
    return {first + ((a & ~mask) | ((2 | b) & mask)), std::min(key_b, key_a)};
  }
  static Child some_children(const Entry* entries, std::uint32_t first, std::uint32_t n) noexcept {
    Child child{first, entries[first].key};
    for (std::uint32_t c = first + 1; c < n; ++c) {
      if (entries[c].key < child.key) child = {c, entries[c].key};
    }
    return child;
  }
  static Child smallest_child(const Entry* entries, std::uint32_t first, std::uint32_t n) noexcept {
    return first + kArity <= n ? four_children(entries, first) : some_children(entries, first, n);
  }

  // The moving entry goes down while a child's key is smaller; the path
  // follows the smallest child (the first of equals) at every level. The
  // child's key comes with it (no second load), and a level asks once
  // whether all its children exist: the nodes below `full` have kArity.
  void sift_down(std::uint32_t i) noexcept {
    Entry* entries = entries_.data();
    const std::uint32_t n = static_cast<std::uint32_t>(entries_.size());
    const std::uint32_t full = (n - 1) / kArity;  // i < full <=> kArity * i + kArity <= n - 1
    const Entry moving = entries[i];
    Entry* hole = entries + i;
    for (;;) {
      Child child;
      if (i < full) {
        child = four_children(entries, kArity * i + 1);
      } else if (kArity * i + 1 < n) {
        child = some_children(entries, kArity * i + 1, n);
      } else {
        break;
      }
      if (!(child.key < moving.key)) break;
      Entry* up = entries + child.index;
      hole->key = child.key;
      hole->item = up->item;
      position_(up->item) = i;
      hole = up;
      i = child.index;
    }
    *hole = moving;
    position_(moving.item) = i;
  }

  std::vector<Entry> entries_;
  Positions position_;
};

template <typename Item, std::uint32_t Item::*Index>
struct MemberPosition {
  std::uint32_t& operator()(Item* item) const noexcept { return item->*Index; }
};

template <typename Item, std::uint32_t Item::*Index>
using IndexedHeap = DaryHeap<Item*, MemberPosition<Item, Index>>;

struct SlotPosition {
  std::vector<std::uint32_t>* positions;
  std::uint32_t& operator()(std::uint32_t slot) const noexcept { return (*positions)[slot]; }
};

class SlotHeap : public DaryHeap<std::uint32_t, SlotPosition> {
 public:
  explicit SlotHeap(std::vector<std::uint32_t>* positions) noexcept
      : DaryHeap<std::uint32_t, SlotPosition>(SlotPosition{positions}) {}
};

}  // namespace ioband::qos::detail
