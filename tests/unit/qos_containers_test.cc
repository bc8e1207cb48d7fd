// The scheduler's containers against reference implementations.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "qos/group_table.h"
#include "qos/indexed_heap.h"

namespace ioband::qos::detail {
namespace {

struct Item {
  std::uint32_t index = kNotInHeap;
  int id = 0;
};

TEST(IndexedHeap, MatchesAMultisetUnderRandomOperations) {
  std::mt19937_64 random(42);
  std::vector<Item> items(500);
  for (int i = 0; i < 500; ++i) items[static_cast<std::size_t>(i)].id = i;
  IndexedHeap<Item, &Item::index> heap;
  std::map<int, std::int64_t> keys;  // id -> key of items in the heap
  for (int step = 0; step < 100'000; ++step) {
    Item& item = items[random() % items.size()];
    std::int64_t key = static_cast<std::int64_t>(random() % 1000) - 500;
    switch (random() % 4) {
      case 0:
        if (!heap.contains(&item)) {
          heap.push(&item, key);
          keys[item.id] = key;
        }
        break;
      case 1:
        if (heap.contains(&item)) {
          heap.update(&item, key);
          keys[item.id] = key;
        }
        break;
      case 2:
        if (heap.contains(&item)) {
          heap.erase(&item);
          keys.erase(item.id);
        }
        break;
      case 3:
        if (!heap.empty()) {
          std::int64_t smallest = INT64_MAX;
          for (auto& [id, k] : keys) smallest = std::min(smallest, k);
          ASSERT_EQ(heap.top().key, smallest);
          Item* top = heap.pop();
          ASSERT_EQ(keys.at(top->id), smallest);
          keys.erase(top->id);
        }
        break;
    }
    ASSERT_EQ(heap.size(), keys.size());
  }
  heap.rekey([](Item* item) { return -static_cast<std::int64_t>(item->id); });
  int last = INT32_MAX;
  while (!heap.empty()) {
    Item* item = heap.pop();
    ASSERT_LT(item->id, last);
    last = item->id;
  }
}

// visit_below gives exactly the items whose key is below the bound, each
// once, and stops when told: the index of the tokens a limit keeps
// (device_group.cc, kept_for_returns) counts on both.
TEST(IndexedHeap, VisitBelowGivesEveryItemBelowTheBoundOnceAndStopsWhenTold) {
  std::mt19937_64 random(7);
  for (int round = 0; round < 200; ++round) {
    const std::size_t n = random() % 300;
    std::vector<Item> items(n);
    IndexedHeap<Item, &Item::index> heap;
    std::map<int, std::int64_t> keys;
    for (std::size_t i = 0; i < n; ++i) {
      items[i].id = static_cast<int>(i);
      keys[items[i].id] = static_cast<std::int64_t>(random() % 100);
      heap.push(&items[i], keys[items[i].id]);
    }
    const std::int64_t below = static_cast<std::int64_t>(random() % 110);
    std::set<int> expected, seen;
    for (auto& [id, key] : keys) {
      if (key < below) expected.insert(id);
    }
    heap.visit_below(below, [&](Item* item) {
      EXPECT_TRUE(seen.insert(item->id).second) << "visited twice";
      return true;
    });
    ASSERT_EQ(seen, expected) << "round " << round;
    // Told to stop after k items: k are visited, all below.
    const std::size_t k = expected.empty() ? 0 : random() % expected.size();
    std::size_t visited = 0;
    heap.visit_below(below, [&](Item* item) {
      EXPECT_LT(keys.at(item->id), below);
      return ++visited < k;
    });
    EXPECT_EQ(visited, std::min(expected.size(), std::max<std::size_t>(k, 1)));
  }
}

TEST(GroupTable, MatchesAMapUnderRandomOperations) {
  std::mt19937_64 random(7);
  GroupTable<int> table;
  std::map<GroupId, int*> reference;
  std::vector<int> values(2000);
  for (int step = 0; step < 200'000; ++step) {
    // Small consecutive ids (uids), large ones and negative ones.
    GroupId id = step % 3 == 0 ? static_cast<GroupId>(random() % 3000)
                               : (step % 3 == 1 ? static_cast<GroupId>(random() % 3000) << 32
                                                : -static_cast<GroupId>(random() % 3000) - 2);
    int* value = &values[random() % values.size()];
    if (random() % 2 == 0) {
      if (!reference.count(id)) {
        table.insert(id, value);
        reference[id] = value;
      }
    } else {
      ASSERT_EQ(table.erase(id), reference.erase(id) == 1);
    }
    GroupId probe = static_cast<GroupId>(random() % 3000);
    auto it = reference.find(probe);
    ASSERT_EQ(table.find(probe), it == reference.end() ? nullptr : it->second);
    ASSERT_EQ(table.size(), reference.size());
  }
  std::size_t seen = 0;
  table.for_each([&](GroupId id, int* value) {
    EXPECT_EQ(reference.at(id), value);
    ++seen;
  });
  EXPECT_EQ(seen, reference.size());
}

}  // namespace
}  // namespace ioband::qos::detail
