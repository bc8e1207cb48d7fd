// Internal state of groups and ioband devices (not part of the public API).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <vector>

#include "qos/device_group.h"
#include "qos/group_table.h"
#include "qos/indexed_heap.h"
#include "qos/observation.h"
#include "qos/request.h"
#include "qos/reservation.h"
#include "qos/stats.h"
#include "qos/token_bucket.h"
#include "qos/tree.h"

namespace ioband::qos::detail {

struct Device;
struct Group;

enum class RequestState : std::uint8_t { idle = 0, queued = 1, in_flight = 2 };

// Rarely used per-group settings, allocated only when set: limits, range-bw,
// reservations and latency targets.
// Laid out so that a dispatch under range-bw touches the first two cache
// lines, and one checking limits the second and third (two buckets).
struct alignas(64) GroupExtras {
  Group* group = nullptr;
  std::uint32_t reservation_index = kNotInHeap;  // Device::reserved (range-bw)
  RangeBw range{};
  Nanos reservation = 0;   // range-bw: when the group's next min-bw byte is due
  Nanos limit_paced_at = INT64_MIN;  // last time a limit of the group held it back (observation.h)
  TokenBucket max_bw;      // range-bw max-bw, bytes/s
  LimitState limits;       // inline: one pointer less to chase per request
  GroupReservation reserve;  // reservation-iops / -bps (reservation.h)
};

// A group's statistics (dm-ioband's counters, stats.h, and the
// observation, observation.h) in two parts.
//
// The narrow part, NarrowCounters, sits in the group's dispatch lines: the
// dispatch fetches them anyway and the completion, a window's worth of
// requests later, finds them still in the cache, so a request's counting
// costs no line of its own. Its counters are 8, 16 and 32 bits wide.
//
// The wide part, WideCounters (64-bit), is kept beside the groups by the
// device group and made on a group's first fold: before any narrow
// counter would overflow, the narrow part is added to the wide one and
// cleared (every 255 requests, or 4.3 s of summed
// time). What does not fit the narrow part goes to the wide part at once:
// completions of other operations than read and write, failed ones, and
// times over 4.3 s. A reader adds the two parts.
//
// Write requests are not counted: every dispatched request lands in one
// delay bucket, so writes = sum(delay_histogram) - read_requests.
// Per-direction counters are indexed by Direction, so counting takes no
// branch on it.
struct GroupCounters {
  std::uint64_t read_requests = 0;
  std::array<std::uint64_t, 2> delayed_requests{};  // by Direction
  std::array<std::uint64_t, 2> sectors{};           // by Direction
  std::uint64_t delayed_nanos = 0;
  std::array<std::uint64_t, kDelayBuckets> delay_histogram{};
};

inline constexpr std::size_t kNarrowOps = 2;  // OpKind::read and OpKind::write

struct NarrowCounters {
  // Counted at dispatch (accounting.h); a dm-ioband `reset` clears them.
  struct Dispatch {
    std::array<std::uint32_t, 2> sectors{};  // by Direction
    std::uint32_t delayed_nanos = 0;
    std::uint16_t read_requests = 0;
    std::array<std::uint16_t, 2> delayed_requests{};  // by Direction
    std::array<std::uint8_t, kDelayBuckets> delay_histogram{};
    // Requests counted since the last fold: a fold at 255 keeps every
    // count above within its width, and the sectors too (255 requests of
    // at most 2^23 sectors), so only the summed time needs a check of its own.
    std::uint8_t requests = 0;
  };
  // Counted at completion (accounting.h); only ever grow.
  struct Completion {
    struct Op {
      std::uint32_t bytes = 0;
      std::uint32_t duration_ns = 0;
      std::array<std::uint8_t, kDurationBuckets> duration_histogram{};  // its sum is the requests
    };
    std::array<Op, kNarrowOps> ops{};  // by OpKind
    std::array<std::uint16_t, kHoldReasons> held_requests{};
    std::array<std::uint32_t, kHoldReasons> held_ns{};
    // Completions counted since the last fold: the histograms' buckets and
    // held_requests stay within their widths; bytes and times are checked.
    std::uint8_t completions = 0;
  };
  Dispatch dispatch;
  Completion completion;
};
static_assert(sizeof(NarrowCounters) <= 108,
              "the narrow counters share two lines with the weight policy's state and the lingering");

// One group is three cache lines. The first holds all that enqueue and
// complete touch, and what next() needs to pick and unlink a request; the
// other two what a dispatch touches (next() prefetches them with the
// first), and the completion's counting, which finds them still in the
// cache. With thousands of active groups each of these lines is a cache
// miss, so a field moved into the first line must earn its place.
struct alignas(64) Group {
  // ---- line 0: enqueue, next, complete ----
  // FIFO of queued requests, oldest first. The tail is kept here so that
  // neither end of the queue touches a neighbouring request.
  Request* head = nullptr;
  Request* tail = nullptr;
  Device* device = nullptr;
  // Policy state. fair / range-bw: the virtual start time of the head
  // request. weight / weight-iosize: tokens left (cost units, may be a debt).
  union {
    std::int64_t vtime = 0;
    std::int64_t tokens;
  };
  std::unique_ptr<GroupExtras> extras;           // null: no limits, no range-bw
  std::uint32_t weight = kDefaultWeight;
  std::uint32_t queue_length = 0;
  std::uint32_t in_flight = 0;
  std::uint32_t slot = 0;                        // dense number (GroupPool), key of the ready heaps
  std::uint32_t timer_index = kNotInHeap;        // parked until a limit allows
  std::uint16_t generation = 0;                  // weight: settings generation its tokens belong to
  bool retired = false;                          // detached, waiting for its in-flight requests
  std::uint8_t busy_peak = 0;                    // most requests outstanding since it was last empty (saturating)

  // ---- lines 1 and 2: dispatch (and the completion's counting) ----
  std::uint32_t epoch = 0;                       // weight: epoch its tokens belong to (mod 2^32); fair: busy_start()
  std::uint32_t consumed = 0;                    // weight: tokens used this epoch (saturating)
  NarrowCounters counters;
  // Lingering (admission.h): 0, or the low 24 bits of when it ends and its
  // claim (8 bits, at least 1); its neighbours in the list, by slot.
  std::uint32_t linger = 0;
  std::uint32_t linger_prev = UINT32_MAX;
  std::uint32_t linger_next = UINT32_MAX;

  bool parked() const noexcept { return timer_index != kNotInHeap; }

  // fair: its tag when it last came back from idle (device_group.cc, the
  // order wait), kept in the two words only the weight policies use.
  std::int64_t busy_start() const noexcept {
    return static_cast<std::int64_t>(std::uint64_t{epoch} << 32 | consumed);
  }
  void set_busy_start(std::int64_t tag) noexcept {
    epoch = static_cast<std::uint32_t>(static_cast<std::uint64_t>(tag) >> 32);
    consumed = static_cast<std::uint32_t>(tag);
  }
};

// The per-group cost the memory target counts (an idle group: this, one
// GroupTable slot at 3/8..3/4 load, one ready-heap entry and its position).
static_assert(sizeof(Group) == 192);

struct Device {
  Device(std::vector<std::uint32_t>* ready_positions, std::vector<std::uint32_t>* returning_positions) noexcept
      : ready(ready_positions), returning(returning_positions) {}

  DeviceId id = 0;
  Group* default_group = nullptr;
  GroupTable<Group> groups;  // attached groups, not the default one
  SlotHeap ready;            // ready groups by policy key
  IndexedHeap<GroupExtras, &GroupExtras::reservation_index> reserved;  // range-bw: by reservation time
  LimitState limits;
  GroupReservation reserve;  // of the whole device (reservation.h)
  std::uint32_t queued = 0;
  std::uint32_t in_flight = 0;
  std::uint32_t groups_with_extras = 0;  // may be parked or hold a reservation
  std::uint32_t top_index = kNotInHeap;
  std::uint32_t top_reservation_index = kNotInHeap;
  std::uint32_t timer_index = kNotInHeap;
  Nanos limit_paced_at = INT64_MIN;  // last time a limit of the device held it back (observation.h)
  // Parked by a limit keeping tokens for groups whose requests are in
  // flight (device_group.cc, kept_for_returns): one coming back releases it.
  bool held_for_returns = false;
  // Its groups between two requests under its or its tenant's limit, by
  // policy key (device_group.cc, kept_for_returns), and a weight no
  // heavier than any of theirs (the lightest since the heap was empty).
  SlotHeap returning;
  std::uint32_t returning_lightest = UINT32_MAX;
  DeviceNode tree;                   // its tenant, if any, and its active groups (tree.h)

  bool parked() const noexcept { return timer_index != kNotInHeap; }
};

// A group's weight compared across the tree (tree.h): its effective weight
// e(g), its share of the storage in the root's units, as if it were active
// (a group between two requests weighs what it will when it asks); its own
// weight outside every tenant. The anticipation and the places compare
// groups of different tenants by it.
// Inline for a group outside every tenant (every completion asks), the
// tree's arithmetic out of line.
[[gnu::noinline]] inline double tree_weight_of(const Group& group) noexcept {
  return effective_weight(group.weight, group.queue_length + group.in_flight != 0, group.device->tree);
}
[[gnu::always_inline]] inline double weight_of(const Group& group) noexcept {
  if (group.device->tree.tenant == nullptr) return group.weight;
  return tree_weight_of(group);
}

// A group's wide counters (see GroupCounters), kept beside the groups for
// groups that folded, found by the group's slot
// (DeviceGroup::Impl::wide_by_slot).
struct WideCounters {
  const Group* group = nullptr;  // whose they are
  GroupCounters dispatch;
  GroupObservation completion;
};

// Groups come from fixed-size slabs: no per-group allocator header, and
// attach/detach reuse freed slots.
class GroupPool {
 public:
  GroupPool() = default;
  GroupPool(const GroupPool&) = delete;
  GroupPool& operator=(const GroupPool&) = delete;
  ~GroupPool() = default;  // owners destroy live groups first

  Group* create() {
    if (free_ == kNone) grow();
    std::uint32_t number = free_;
    Slot& slot = at_slot(number);
    free_ = slot.next_free;
    ++live_;
    Group* group = new (slot.storage) Group();
    group->slot = number;
    return group;
  }

  void destroy(Group* group) noexcept {
    std::uint32_t number = group->slot;
    group->~Group();
    at_slot(number).next_free = free_;
    free_ = number;
    --live_;
  }

  // The group in slot `number` (which must be live).
  Group* at(std::uint32_t number) const noexcept {
    return std::launder(reinterpret_cast<Group*>(at_slot(number).storage));
  }

  // Slot numbers are below this.
  std::size_t slots() const noexcept { return chunks_.size() * kSlotsPerChunk; }
  std::size_t live() const noexcept { return live_; }
  std::size_t memory_bytes() const noexcept { return chunks_.size() * kSlotsPerChunk * sizeof(Slot); }

 private:
  static constexpr std::uint32_t kSlotsPerChunk = 256;
  static constexpr std::uint32_t kNone = UINT32_MAX;
  union Slot {
    std::uint32_t next_free;
    alignas(Group) unsigned char storage[sizeof(Group)];
  };

  Slot& at_slot(std::uint32_t number) const noexcept {
    return chunks_[number / kSlotsPerChunk][number % kSlotsPerChunk];
  }

  void grow() {
    std::uint32_t base = static_cast<std::uint32_t>(chunks_.size()) * kSlotsPerChunk;
    chunks_.push_back(std::make_unique<Slot[]>(kSlotsPerChunk));
    for (std::uint32_t i = kSlotsPerChunk; i-- > 0;) {
      chunks_.back()[i].next_free = free_;
      free_ = base + i;
    }
  }

  std::vector<std::unique_ptr<Slot[]>> chunks_;
  std::uint32_t free_ = kNone;
  std::size_t live_ = 0;
};

}  // namespace ioband::qos::detail
