// The dm-ioband command language: the table line of `create` and the verbs
// of `message`, valid forms and every kind of bad input.
#include <gtest/gtest.h>

#include "control/language.h"
#include "control/usage.h"
#include "unit/control_fake.h"

namespace ioband::control {
namespace {

using testing::words;

Message parse_ok(const std::string& text) {
  Message message;
  auto error = parse_message(words(text), message);
  EXPECT_FALSE(error) << text << ": " << error->message;
  return message;
}

Error parse_error(const std::string& text) {
  Message message;
  auto error = parse_message(words(text), message);
  EXPECT_TRUE(error) << text << " was accepted";
  return error.value_or(Error{});
}

TEST(ControlTableLine, ParsesTheReferenceForms) {
  TableLine line;
  ASSERT_FALSE(parse_table_line("0 44371467 ioband /dev/sda1 1", line));
  EXPECT_EQ(line.sectors, 44371467u);
  EXPECT_EQ(line.path, "/dev/sda1");
  EXPECT_EQ(line.device_group_id, 1);
  EXPECT_FALSE(line.io_throttle);
  EXPECT_FALSE(line.io_limit);

  ASSERT_FALSE(parse_table_line("0 44371467 ioband /dev/sda1 1 10 200\n", line));
  EXPECT_EQ(line.io_throttle, 10u);
  EXPECT_EQ(line.io_limit, 200u);

  ASSERT_FALSE(parse_table_line("0 8 ioband /x.img 128 16", line));
  EXPECT_EQ(line.device_group_id, 128);
  EXPECT_EQ(line.io_throttle, 16u);
  EXPECT_FALSE(line.io_limit);

  // Blank lines, comments and extra spaces, as a here-document may have.
  ASSERT_FALSE(parse_table_line("\n# ioband1\n   0   8  ioband  /x.img  2  \n\n", line));
  EXPECT_EQ(line.device_group_id, 2);
  EXPECT_TRUE(line.access.empty());
}

TEST(ControlTableLine, AccessRulesComeAfterTheNumbers) {
  TableLine line;
  ASSERT_FALSE(parse_table_line("0 8 ioband /x.img 1 allow=uid:0 allow-ro=10.0.0.0/8", line));
  EXPECT_EQ(line.device_group_id, 1);
  EXPECT_FALSE(line.io_throttle);
  EXPECT_EQ(nbd::access_words(line.access), (std::vector<std::string>{"allow=uid:0", "allow-ro=10.0.0.0/8"}));
  ASSERT_FALSE(parse_table_line("0 8 ioband /x.img 1 10 200 deny=::1 allow=all", line));
  EXPECT_EQ(line.io_throttle, 10u);
  EXPECT_EQ(line.io_limit, 200u);
  EXPECT_EQ(nbd::access_words(line.access), (std::vector<std::string>{"deny=::1", "allow=all"}));
  // A path may hold '=': only words after the device group id are rules.
  ASSERT_FALSE(parse_table_line("0 8 ioband /a=b.img 1", line));
  EXPECT_EQ(line.path, "/a=b.img");
  EXPECT_TRUE(line.access.empty());
}

TEST(ControlTableLine, TheImageFormatStandsAmongTheRules) {
  TableLine line;
  ASSERT_FALSE(parse_table_line("0 8 ioband /x.img 1", line));
  EXPECT_EQ(line.format, "");  // detected at create
  ASSERT_FALSE(parse_table_line("0 8 ioband /x.qcow2 1 10 200 allow=uid:0 format=qcow2", line));
  EXPECT_EQ(line.format, "qcow2");
  EXPECT_EQ(nbd::access_words(line.access), (std::vector<std::string>{"allow=uid:0"}));
  ASSERT_FALSE(parse_table_line("0 8 ioband /x.img 1 format=raw", line));
  EXPECT_EQ(line.format, "raw");
  EXPECT_TRUE(line.access.empty());
  auto error = parse_table_line("0 8 ioband /x.img 1 format=vmdk", line);
  ASSERT_TRUE(error);
  EXPECT_NE(error->message.find("\"vmdk\" is not raw or qcow2"), std::string::npos) << error->message;
}

TEST(ControlTableLine, RefusesBadLinesNamingTheField) {
  struct Case {
    const char* line;
    const char* says;
  } cases[] = {
      {"", "no table line"},
      {"# only a comment\n", "no table line"},
      {"0 8 ioband /x.img 1\n0 8 ioband /y.img 1", "expected one table line, got 2"},
      {"0 8 ioband /x.img", "has 4 fields"},
      {"0 8 ioband /x.img 1 2 3 4", "has 8 fields"},
      {"1 8 ioband /x.img 1", "start sector must be 0, not \"1\""},
      {"0 0 ioband /x.img 1", "sectors \"0\" is not a positive integer"},
      {"0 -8 ioband /x.img 1", "sectors \"-8\""},
      {"0 8k ioband /x.img 1", "sectors \"8k\""},
      {"0 99999999999999999999 ioband /x.img 1", "sectors"},
      {"0 8 linear /x.img 1", "unknown target type \"linear\""},
      {"0 8 ioband x.img 1", "not absolute"},
      {"0 8 ioband /x.img one", "device group ID \"one\""},
      {"0 8 ioband /x.img -1", "device group ID \"-1\""},
      {"0 8 ioband /x.img 1 ten", "I/O throttle \"ten\""},
      {"0 8 ioband /x.img 1 10 0", "I/O limit \"0\""},
      {"0 8 ioband /x.img 1 allow=uid:0 4", "access rules come last"},
      {"0 8 ioband /x.img 1 permit=all", "unknown action \"permit\""},
      {"0 8 ioband /x.img 1 2 3 allow=10.1.0.0/8", "the network is 10.0.0.0/8"},
      {"0 8 ioband /x.img 1 deny=all allow=uid:0", "can never apply"},
      {"0 8 ioband /x.img 1 2 3 4 allow=all", "has 9 fields"},
  };
  for (const Case& c : cases) {
    TableLine line;
    auto error = parse_table_line(c.line, line);
    ASSERT_TRUE(error) << c.line;
    EXPECT_EQ(error->kind, Error::Kind::usage);
    EXPECT_NE(error->message.find(c.says), std::string::npos) << error->message;
    EXPECT_EQ(error->usage, usage_of("create"));
  }
}

TEST(ControlMessage, ParsesEveryVerb) {
  EXPECT_EQ(parse_ok("type user").type, nbd::GroupType::user);
  EXPECT_EQ(parse_ok("type cgroup").type, nbd::GroupType::cgroup);
  EXPECT_EQ(parse_ok("type none").type, nbd::GroupType::none);
  // Example #3 of the reference ends the type with a full stop.
  EXPECT_EQ(parse_ok("type user.").type, nbd::GroupType::user);

  Message attach = parse_ok("attach 1000");
  EXPECT_EQ(attach.verb, Message::Verb::attach);
  EXPECT_EQ(attach.group, 1000);
  EXPECT_EQ(parse_ok("attach 127.0.0.1").group, 0x7f000001);
  EXPECT_EQ(parse_ok("detach 10.1.2.3").group, (10 << 24) + (1 << 16) + (2 << 8) + 3);

  Message weight = parse_ok("weight 40");
  EXPECT_EQ(weight.verb, Message::Verb::weight);
  EXPECT_FALSE(weight.group);
  EXPECT_EQ(weight.value, 40u);
  Message group_weight = parse_ok("weight 1000:30");
  EXPECT_EQ(group_weight.group, 1000);
  EXPECT_EQ(group_weight.value, 30u);
  EXPECT_EQ(parse_ok("weight -1:7").group, qos::kDefaultGroup);
  EXPECT_EQ(parse_ok("weight 192.168.0.9:5").group, 0xc0a80009);

  EXPECT_EQ(parse_ok("token 256").value, 256u);
  EXPECT_EQ(parse_ok("carryover 0").value, 0u);
  EXPECT_EQ(parse_ok("io_throttle 16").verb, Message::Verb::io_throttle);
  EXPECT_EQ(parse_ok("io_throttle 0").value, 0u);
  EXPECT_EQ(parse_ok("io_limit 128").value, 128u);
  EXPECT_FALSE(parse_ok("io_limit 128").io_limit_auto);
  EXPECT_TRUE(parse_ok("io_limit auto").io_limit_auto);
  EXPECT_EQ(parse_ok("io_limit auto").verb, Message::Verb::io_limit);
  EXPECT_EQ(parse_ok("policy weight-iosize").policy, qos::Policy::weight_iosize);
  EXPECT_EQ(parse_ok("policy range-bw").policy, qos::Policy::range_bw);
  EXPECT_EQ(parse_ok("reset").verb, Message::Verb::reset);

  Message range = parse_ok("range-bw 1000:100:500");
  EXPECT_EQ(range.group, 1000);
  EXPECT_EQ(range.range_bw, (qos::RangeBw{100, 500}));
  EXPECT_FALSE(parse_ok("range-bw 0:900").group);

  Message limit = parse_ok("limit iops-total=100,bps-write-max=20M,bps-write=10M,bps-write-max-length=5,iops-size=4K");
  EXPECT_FALSE(limit.group);
  ASSERT_EQ(limit.limits.size(), 5u);
  EXPECT_EQ(limit.limits[0], (std::pair<std::string, uint64_t>{"iops-total", 100}));
  EXPECT_EQ(limit.limits[1].second, 20u << 20);
  EXPECT_EQ(limit.limits[4], (std::pair<std::string, uint64_t>{"iops-size", 4096}));
  Message group_limit = parse_ok("limit 1000:iops-read=50");
  EXPECT_EQ(group_limit.group, 1000);
  EXPECT_EQ(parse_ok("limit 127.0.0.1:iops-read=50").group, 0x7f000001);
  EXPECT_TRUE(parse_ok("limit none").clear_limits);
  Message clear = parse_ok("limit 1000:none");
  EXPECT_TRUE(clear.clear_limits);
  EXPECT_EQ(clear.group, 1000);
  for (std::string_view key : qos::kLimitKeys) {
    EXPECT_EQ(parse_ok("limit " + std::string(key) + "=1").limits.at(0).first, key);
  }
  // Reservations and latency targets: a duration and a percentile, kept in us and per mille.
  Message latency = parse_ok("limit 1000:reservation-iops=2K,latency-target=1.5ms,latency-percentile=p99.9");
  ASSERT_EQ(latency.limits.size(), 3u);
  EXPECT_EQ(latency.limits[0], (std::pair<std::string, uint64_t>{"reservation-iops", 2048}));
  EXPECT_EQ(latency.limits[1], (std::pair<std::string, uint64_t>{"latency-target-us", 1500}));
  EXPECT_EQ(latency.limits[2], (std::pair<std::string, uint64_t>{"latency-percentile-permille", 999}));
  EXPECT_EQ(parse_duration_us("500us"), 500u);
  EXPECT_EQ(parse_duration_us("2s"), 2'000'000u);
  EXPECT_EQ(parse_duration_us("0"), 0u);
  EXPECT_EQ(parse_duration_us("2000"), std::nullopt);  // a unit is needed
  EXPECT_EQ(parse_duration_us("2 ms"), std::nullopt);
  EXPECT_EQ(parse_duration_us("ms"), std::nullopt);
  EXPECT_EQ(parse_duration_us("-1ms"), std::nullopt);
  EXPECT_EQ(parse_percentile_permille("99"), 990u);
  EXPECT_EQ(parse_percentile_permille("50"), 500u);
  EXPECT_EQ(parse_percentile_permille("99.99"), std::nullopt);
  EXPECT_EQ(parse_percentile_permille("100"), std::nullopt);
  EXPECT_EQ(parse_percentile_permille("49"), std::nullopt);

  Message show = parse_ok("access");
  EXPECT_EQ(show.verb, Message::Verb::access);
  EXPECT_FALSE(show.access);
  Message access = parse_ok("access allow=uid:0 allow-ro=gid:root deny=all");
  ASSERT_TRUE(access.access);
  EXPECT_EQ(nbd::access_words(*access.access),
            (std::vector<std::string>{"allow=uid:0", "allow-ro=gid:0", "deny=all"}));
  Message open = parse_ok("access allow=all");
  ASSERT_TRUE(open.access);
  EXPECT_TRUE(open.access->empty());  // the default
}

TEST(ControlMessage, RefusesBadInputWithTheVerbsUsage) {
  struct Case {
    const char* args;
    const char* says;
    const char* usage_verb;
  } cases[] = {
      {"", "message needs a verb", ""},
      {"wieght 40", "unknown message verb \"wieght\"", ""},
      {"Weight 40", "unknown message verb \"Weight\"", ""},
      {"attach", "attach needs an argument", "attach"},
      {"detach", "detach needs an argument", "detach"},
      {"weight", "weight needs an argument", "weight"},
      {"type", "type needs an argument", "type"},
      {"weight 40 50", "extra: \"50\"", "weight"},
      {"attach 1000 2000", "extra: \"2000\"", "attach"},
      {"reset now", "reset takes no argument", "reset"},
      {"weight abc", "weight must be an integer from 1 to 1000000, not \"abc\"", "weight"},
      {"weight -5", "not \"-5\"", "weight"},
      {"weight 0", "not \"0\"", "weight"},
      {"weight 1000:0", "not \"0\"", "weight"},
      {"weight 1000:", "not \"\"", "weight"},
      {"weight 4.5", "not \"4.5\"", "weight"},
      {"weight 1000001", "not \"1000001\"", "weight"},
      {"weight x:10", "group ID \"x\" is not a group id", "weight"},
      {"weight -2:10", "group ID \"-2\"", "weight"},
      {"attach abc", "group ID \"abc\"", "attach"},
      {"attach -7", "group ID \"-7\"", "attach"},
      {"attach 300.0.0.1", "group ID \"300.0.0.1\"", "attach"},
      {"type users", "unknown type \"users\"", "type"},
      {"token 0", "token must be an integer larger than 0, not \"0\"", "token"},
      {"token -1", "token must be", "token"},
      {"io_limit 0", "io_limit must be an integer larger than 0", "io_limit"},
      {"io_throttle x", "io_throttle must be a non-negative integer", "io_throttle"},
      {"carryover -2", "carryover must be a non-negative integer", "carryover"},
      {"policy cfq", "unknown policy \"cfq\"", "policy"},
      {"range-bw 100", "range-bw takes ID:MIN:MAX", "range-bw"},
      {"range-bw 1:2:3:4", "range-bw takes ID:MIN:MAX", "range-bw"},
      {"range-bw 1000:a:5", "MIN and MAX must be non-negative integers", "range-bw"},
      {"limit iops=5", "unknown limit \"iops\"", "limit"},
      {"limit iops-total", "\"iops-total\" is not KEY=VAL", "limit"},
      {"limit iops-total=fast", "iops-total must be a non-negative integer", "limit"},
      {"limit 1:latency-target=2000", "latency-target must be a duration with its unit", "limit"},
      {"limit 1:latency-percentile=100", "latency-percentile must be a percentile from 50 to 99.9", "limit"},
      {"limit 1:reservation-iops=lots", "reservation-iops must be a non-negative integer", "limit"},
      {"limit iops-total=-1", "iops-total must be", "limit"},
      {"limit 1000:", "limit needs KEY=VAL", "limit"},
      {"limit bob:iops-total=1", "group ID \"bob\"", "limit"},
      {"access uid:0", "access rule \"uid:0\": expected allow=WHO", "access"},
      {"access allow=uid:0 let=all", "unknown action \"let\"", "access"},
      {"access allow=10.0.0.0/40", "must be a number from 0 to 32", "access"},
      {"access allow=all deny=tcp", "\"deny=tcp\" can never apply", "access"},
  };
  for (const Case& c : cases) {
    Error error = parse_error(c.args);
    EXPECT_EQ(error.kind, Error::Kind::usage) << c.args;
    EXPECT_NE(error.message.find(c.says), std::string::npos) << c.args << " -> " << error.message;
    EXPECT_EQ(error.usage, usage_of("message", c.usage_verb)) << c.args;
  }
}

TEST(ControlMessage, GroupIds) {
  EXPECT_EQ(parse_group_id("0"), 0);
  EXPECT_EQ(parse_group_id("-1"), -1);
  EXPECT_EQ(parse_group_id("4294967295"), 4294967295);
  EXPECT_EQ(parse_group_id("9223372036854775807"), INT64_MAX);
  EXPECT_FALSE(parse_group_id("9223372036854775808"));
  EXPECT_EQ(parse_group_id("255.255.255.255"), 0xffffffff);
  EXPECT_FALSE(parse_group_id("1.2.3"));
  EXPECT_FALSE(parse_group_id("::1"));
  EXPECT_FALSE(parse_group_id("+5"));
  EXPECT_FALSE(parse_group_id(" 5"));
  EXPECT_FALSE(parse_group_id(""));
}

TEST(ControlMessage, DeviceNames) {
  EXPECT_EQ(check_device_name("ioband1"), "");
  EXPECT_EQ(check_device_name("vm-1.disk_0"), "");
  EXPECT_NE(check_device_name(""), "");
  EXPECT_NE(check_device_name("-x"), "");
  EXPECT_NE(check_device_name("a b"), "");
  EXPECT_NE(check_device_name("a\nb"), "");
  EXPECT_NE(check_device_name(std::string(128, 'a')), "");
  EXPECT_EQ(check_device_name(std::string(127, 'a')), "");
}

TEST(ControlUsage, EveryCommandAndVerbHasHelpWithAnExample) {
  for (const char* command : {"create", "remove", "message", "table", "status", "targets"}) {
    const std::string help = help_of(command);
    EXPECT_NE(help.find("usage: iobandctl " + std::string(command)), std::string::npos) << command;
    EXPECT_NE(help.find("Example"), std::string::npos) << command;
  }
  EXPECT_EQ(help_of("frobnicate"), "");
  const std::string message_help = help_of("message");
  for (const char* verb : {"type", "attach", "detach", "weight", "token", "carryover", "io_throttle", "io_limit",
                           "policy", "range-bw", "limit", "access", "reset"}) {
    EXPECT_NE(message_help.find(std::string("  ") + verb + " "), std::string::npos) << verb;
    EXPECT_NE(usage_of("message", verb).find(std::string(" 0 ") + verb), std::string::npos) << verb;
  }
  EXPECT_NE(help_text().find("Example"), std::string::npos);
}

}  // namespace
}  // namespace ioband::control
