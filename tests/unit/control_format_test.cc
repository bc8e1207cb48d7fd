// `table` and `status` lines exactly as the dm-ioband reference prints them.
#include <gtest/gtest.h>

#include "control/format.h"

namespace ioband::control {
namespace {

DeviceState device(const std::string& name, uint64_t sectors, int device_group_id) {
  DeviceState d;
  d.name = name;
  d.sectors = sectors;
  d.device_group_id = device_group_id;
  return d;
}

GroupStatus group(int64_t id, std::initializer_list<uint64_t> counters) {
  GroupStatus g;
  g.id = id;
  auto it = counters.begin();
  g.stats.read_requests = *it++;
  g.stats.delayed_read_requests = *it++;
  g.stats.read_sectors = *it++;
  g.stats.write_requests = *it++;
  g.stats.delayed_write_requests = *it++;
  g.stats.write_sectors = *it++;
  return g;
}

TEST(ControlFormat, TableLineOfTheReference) {
  DeviceState d = device("ioband1", 44371467, 128);
  d.major = 202;
  d.minor = 33;
  DeviceGroupSettings settings;
  settings.id = 128;
  settings.io_throttle = 10;
  settings.io_limit = 400;
  EXPECT_EQ(table_line(d, settings, true), "ioband1: 0 44371467 ioband 202:33 128 10 400");
  EXPECT_EQ(table_line(d, settings, false), "0 44371467 ioband 202:33 128 10 400");
}

TEST(ControlFormat, StatusLinesOfTheReference) {
  DeviceState ioband2 = device("ioband2", 44371467, 128);
  EXPECT_EQ(status_line(ioband2, {group(-1, {143, 90, 424, 122, 78, 352})}, true),
            "ioband2: 0 44371467 ioband 128 -1 143 90 424 122 78 352");
  DeviceState ioband1 = device("ioband1", 44371467, 128);
  EXPECT_EQ(status_line(ioband1,
                        {group(-1, {223, 172, 408, 211, 136, 600}), group(1001, {166, 107, 472, 139, 95, 352}),
                         group(1002, {211, 146, 520, 210, 147, 504})},
                        true),
            "ioband1: 0 44371467 ioband 128 -1 223 172 408 211 136 600 1001 166 107 "
            "472 139 95 352 1002 211 146 520 210 147 504");
  EXPECT_EQ(status_line(ioband2, {group(-1, {1, 2, 3, 4, 5, 6})}, false), "0 44371467 ioband 128 -1 1 2 3 4 5 6");
}

TEST(ControlFormat, StatusJsonCarriesMoreThanTheLine) {
  DeviceState d = device("ioband1", 8, 1);
  GroupStatus g = group(-1, {1, 2, 3, 4, 5, 6});
  g.stats.delayed_time = std::chrono::microseconds(1500);
  g.stats.queue_length = 3;
  g.stats.in_flight = 2;
  g.stats.delay_histogram[2] = 9;
  nlohmann::json json = status_json(d, {g}, 4);
  EXPECT_EQ(json["connections"], 4);
  EXPECT_EQ(json["device_group_id"], 1);
  const nlohmann::json& group_json = json["groups"][0];
  EXPECT_EQ(group_json["id"], -1);
  EXPECT_EQ(group_json["delayed_write_requests"], 5);
  EXPECT_EQ(group_json["delayed_time_ns"], 1500000);
  EXPECT_EQ(group_json["queue_length"], 3);
  EXPECT_EQ(group_json["in_flight"], 2);
  EXPECT_EQ(group_json["delay_histogram"][2],
            (nlohmann::json{{"from_us", qos::delay_bucket_floor(2).count()}, {"count", 9}}));
  EXPECT_EQ(group_json["delay_histogram"].size(), qos::kDelayBuckets);
}

TEST(ControlFormat, ObservationShowsOperationsSeenAndEveryHoldReason) {
  qos::GroupObservation o;
  qos::OpObservation& write = o.ops[static_cast<size_t>(qos::OpKind::write)];
  write.requests = 3;
  write.bytes = 12288;
  write.errors = 1;
  write.duration_ns = 90'000;
  write.duration_histogram[qos::duration_bucket(30'000)] = 3;
  o.held_requests[static_cast<size_t>(qos::HoldReason::limit)] = 2;
  o.held_ns[static_cast<size_t>(qos::HoldReason::limit)] = 5'000;
  const nlohmann::json json = observation_json(o);
  EXPECT_EQ(json["ops"].size(), 1u);  // reads, flushes... never seen: left out
  const nlohmann::json& w = json["ops"]["write"];
  EXPECT_EQ(w["requests"], 3);
  EXPECT_EQ(w["bytes"], 12288);
  EXPECT_EQ(w["errors"], 1);
  EXPECT_EQ(w["duration_ns"], 90000);
  EXPECT_EQ(w["duration_histogram"].size(), qos::kDurationBuckets);
  EXPECT_EQ(w["duration_histogram"][qos::duration_bucket(30'000)], (nlohmann::json{{"count", 3}, {"le_ns", 50000}}));
  EXPECT_TRUE(w["duration_histogram"].back()["le_ns"].is_null());  // +Inf
  EXPECT_EQ(json["held"]["limit"], (nlohmann::json{{"requests", 2}, {"ns", 5000}}));
  EXPECT_EQ(json["held"]["weight"], (nlohmann::json{{"requests", 0}, {"ns", 0}}));
  EXPECT_EQ(json["held"]["window"], (nlohmann::json{{"requests", 0}, {"ns", 0}}));
}

TEST(ControlFormat, LimitsShowOnlyWhatIsSet) {
  qos::Limits limits;
  EXPECT_EQ(limits_to_json(limits), nlohmann::json::object());
  limits.iops_total = {100, 200, 5};
  limits.bps_read.rate = 1 << 20;
  limits.iops_size = 4096;
  EXPECT_EQ(limits_to_json(limits), (nlohmann::json{{"iops-total", 100},
                                                    {"iops-total-max", 200},
                                                    {"iops-total-max-length", 5},
                                                    {"bps-read", 1 << 20},
                                                    {"iops-size", 4096}}));
}

}  // namespace
}  // namespace ioband::control

namespace ioband::control {
namespace {

TEST(ControlFormat, TableJsonCarriesIoLimitAuto) {
  DeviceState d = device("ioband1", 8, 1);
  DeviceGroupSettings settings;
  settings.io_limit = 400;
  EXPECT_EQ(table_json(d, settings)["io_limit_auto"], true);  // the default
  settings.io_limit_auto = false;
  EXPECT_EQ(table_json(d, settings)["io_limit_auto"], false);
  settings.io_limit_auto = true;
  nlohmann::json object = table_json(d, settings);
  EXPECT_EQ(object["io_limit_auto"], true);
  EXPECT_EQ(object["io_limit"], 400);  // the cap
  // The table line stays the reference's: the numeric cap.
  EXPECT_EQ(table_line(d, settings, false), "0 8 ioband 0:0 1 4 400");
}

TEST(ControlFormat, AccessRulesFollowTheTableLineAsCreateTakesThem) {
  DeviceState d = device("vm1", 8, 1);
  DeviceGroupSettings settings;
  EXPECT_EQ(table_json(d, settings)["access"], nlohmann::json::array({"allow=all"}));
  ASSERT_EQ(nbd::parse_access_list({"allow=uid:1000", "allow-ro=fd00::/8", "deny=all"}, d.access), "");
  EXPECT_EQ(table_line(d, settings, true), "vm1: 0 8 ioband 0:0 1 4 128 allow=uid:1000 allow-ro=fd00::/8 deny=all");
  EXPECT_EQ(table_json(d, settings)["access"],
            nlohmann::json::array({"allow=uid:1000", "allow-ro=fd00::/8", "deny=all"}));
}

}  // namespace
}  // namespace ioband::control
