// The etcd client's codecs and the agent's formats (cluster/etcd.h,
// cluster/agent.h), and cluster tenants' settings text (state_file.h),
// without a server; test_cluster.py runs them against a real etcd.
#include <gtest/gtest.h>

#include "cluster/agent.h"
#include "cluster/etcd.h"
#include "control/state_file.h"

namespace ioband::cluster {
namespace {

TEST(Base64, RoundTripsEveryLengthAndRefusesGarbage) {
  std::string bytes;
  for (int n = 0; n < 64; ++n) {
    const std::string text = base64_encode(bytes);
    EXPECT_EQ(text.size() % 4, 0u);
    EXPECT_EQ(base64_decode(text), bytes) << n;
    bytes += static_cast<char>(n * 37 + 200);
  }
  EXPECT_EQ(base64_encode("/ioband/v1/nodes/a"), "L2lvYmFuZC92MS9ub2Rlcy9h");
  EXPECT_EQ(base64_decode("YQ=="), "a");
  EXPECT_EQ(base64_decode("YQ"), "a");  // etcd pads, but unpadded is read too
  EXPECT_EQ(base64_decode("Y*=="), std::nullopt);
  EXPECT_EQ(base64_decode("YQ==YQ"), std::nullopt);
  EXPECT_EQ(base64_decode("Y"), std::nullopt);
}

TEST(Endpoints, ParsesListsAndNamesWhatIsWrong) {
  std::vector<std::string> urls;
  EXPECT_EQ(parse_endpoints("http://127.0.0.1:2379,https://e2:2379/", urls), "");
  EXPECT_EQ(urls, (std::vector<std::string>{"http://127.0.0.1:2379", "https://e2:2379"}));
  EXPECT_NE(parse_endpoints("127.0.0.1:2379", urls).find("not an http:// or https:// URL"), std::string::npos);
  EXPECT_NE(parse_endpoints("http://a:1,,http://b:1", urls).find("empty endpoint"), std::string::npos);
  EXPECT_NE(parse_endpoints("", urls).find("no endpoint"), std::string::npos);
}

TEST(Agent, NodeNamesAndReports) {
  EXPECT_EQ(check_node_name("node-1.rack_2"), "");
  EXPECT_NE(check_node_name(""), "");
  EXPECT_NE(check_node_name("a/b"), "");
  EXPECT_NE(check_node_name(std::string(65, 'a')), "");
  NodeReport report;
  report.node = "a";
  report.sequence = 42;
  report.tenants["web"] = TenantLoad{3.5, 1200, 0.25};
  const auto back = report_from_text("a", report_to_text(report));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->sequence, 42u);
  EXPECT_EQ(back->tenants.at("web"), report.tenants.at("web"));
  // The part of a shared capacity the node applied travels too (absent: 0).
  report.tenants["batch"] = TenantLoad{1, 60, 1, 0.15};
  const auto with_part = report_from_text("a", report_to_text(report));
  ASSERT_TRUE(with_part);
  EXPECT_EQ(with_part->tenants.at("batch"), report.tenants.at("batch"));
  EXPECT_EQ(with_part->tenants.at("web").part, 0);
  EXPECT_FALSE(report_from_text("a", "{}"));
  EXPECT_FALSE(report_from_text("a", "not json"));
  EXPECT_FALSE(report_from_text("a", R"({"sequence": -1, "tenants": {}})"));
}

TEST(Agent, SettingsWaitForTheThreadAndSayWhenEtcdIsAway) {
  AgentOptions options;
  options.node = "a";
  options.endpoints = {"http://127.0.0.1:1"};
  Agent idle(options);  // never started
  std::optional<std::string> text;
  EXPECT_NE(idle.get_settings("web", text).find("not running"), std::string::npos);
  Agent agent(options);
  agent.start();
  EXPECT_NE(agent.put_settings("web", std::string("{}")).find("http://127.0.0.1:1"), std::string::npos);
  const Agent::Snapshot snapshot = agent.snapshot();
  EXPECT_FALSE(snapshot.connected);
}

TEST(ClusterSettings, RoundTripAndRefuseWhatStateJsonRefuses) {
  qos::Limits limits;
  ASSERT_TRUE(qos::set_limit_key(limits, "iops-total", 3000));
  uint32_t weight = 0;
  qos::Limits read;
  EXPECT_EQ(control::cluster_settings_from_text(control::cluster_settings_to_text(200, limits), weight, read),
            std::nullopt);
  EXPECT_EQ(weight, 200u);
  EXPECT_EQ(read, limits);
  EXPECT_TRUE(control::cluster_settings_from_text(R"({"weight": 0, "limits": {}})", weight, read));
  EXPECT_TRUE(control::cluster_settings_from_text(R"({"weight": 5, "limits": {"iops": 1}})", weight, read));
  EXPECT_TRUE(control::cluster_settings_from_text(R"({"weight": 5, "limits": {}, "x": 1})", weight, read));
  EXPECT_EQ(weight, 200u);  // unchanged by a refusal
}

}  // namespace
}  // namespace ioband::cluster
