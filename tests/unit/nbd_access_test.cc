// Access lists (nbd/access.h): the rule language, its canonical text, and
// who each rule matches — CIDR edges in IPv4 and IPv6, IPv4 clients of an
// IPv6 socket, uids and supplementary gids, TLS identities — and what an
// export then offers: refused, read-only (NBD_FLAG_READ_ONLY) or read-write.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>

#include "io/backend.h"
#include "nbd/access.h"
#include "nbd/export.h"

namespace ioband::nbd {
namespace {

AccessRule rule(const std::string& text) {
  AccessRule out;
  const std::string why = parse_access_rule(text, out);
  EXPECT_EQ(why, "") << text;
  return out;
}

std::string error_of(const std::string& text) {
  AccessRule out;
  return parse_access_rule(text, out);
}

PeerIdentity unix_peer(unsigned uid, unsigned gid, std::vector<unsigned> groups = {}) {
  PeerIdentity peer;
  peer.unix_socket = true;
  peer.has_credentials = true;
  peer.uid = uid;
  peer.gid = gid;
  peer.groups = std::move(groups);
  return peer;
}

// A TCP peer as identify() fills it: IPv4 as ::ffff:a.b.c.d.
PeerIdentity tcp_peer(const std::string& address, const std::string& tls = "") {
  PeerIdentity peer;
  peer.has_ip = true;
  peer.tls_identity = tls;
  in_addr v4{};
  if (inet_pton(AF_INET, address.c_str(), &v4) == 1) {
    peer.ip[10] = peer.ip[11] = 0xff;
    std::memcpy(&peer.ip[12], &v4, 4);
  } else {
    EXPECT_EQ(inet_pton(AF_INET6, address.c_str(), peer.ip.data()), 1) << address;
  }
  return peer;
}

AccessList list(const std::vector<std::string>& words) {
  AccessList out;
  const std::string why = parse_access_list(words, out);
  EXPECT_EQ(why, "");
  return out;
}

TEST(NbdAccessRule, CanonicalTextRoundTrips) {
  const std::pair<const char*, const char*> cases[] = {
      {"allow=all", "allow=all"},
      {"allow=any", "allow=all"},
      {"deny=unix", "deny=unix"},
      {"allow-ro=tcp", "allow-ro=tcp"},
      {"allow=uid:1000", "allow=uid:1000"},
      {"allow=uid:root", "allow=uid:0"},
      {"allow=gid:root", "allow=gid:0"},
      {"allow=uid:4294967294", "allow=uid:4294967294"},
      {"allow=127.0.0.1", "allow=127.0.0.1"},
      {"allow=127.0.0.1/32", "allow=127.0.0.1"},
      {"allow=10.0.0.0/8", "allow=10.0.0.0/8"},
      {"allow=0.0.0.0/0", "allow=0.0.0.0/0"},
      {"allow=172.16.0.0/12", "allow=172.16.0.0/12"},
      {"allow=::1", "allow=::1"},
      {"allow=[::1]", "allow=::1"},
      {"allow=::1/128", "allow=::1"},
      {"allow=fd00::/8", "allow=fd00::/8"},
      {"allow=[fd00::]/8", "allow=fd00::/8"},
      {"allow=::/0", "allow=::/0"},
      {"allow=2001:DB8::/32", "allow=2001:db8::/32"},
      // An IPv4-mapped network is the IPv4 network it names.
      {"allow=::ffff:10.0.0.0/104", "allow=10.0.0.0/8"},
      {"allow=::ffff:0:0/96", "allow=0.0.0.0/0"},
      {"allow=tls", "allow=tls"},
      {"allow=tls:alice", "allow=tls:alice"},
      {"allow=tls:CN=client,O=Example Corp", "allow=tls:CN=client,O=Example Corp"},
      {"allow=tls:a=b", "allow=tls:a=b"},
  };
  for (const auto& [text, canonical] : cases) {
    const AccessRule parsed = rule(text);
    EXPECT_EQ(to_string(parsed), canonical) << text;
    EXPECT_EQ(rule(canonical), parsed) << text;
  }
}

TEST(NbdAccessRule, BadRulesSayWhatIsWrong) {
  const std::pair<std::string, const char*> cases[] = {
      {"uid:1000", "expected allow=WHO, allow-ro=WHO or deny=WHO"},
      {"permit=all", "unknown action \"permit\""},
      {"allow-rw=all", "unknown action \"allow-rw\""},
      {"allow=", "the rule names nobody"},
      {"allow=everyone", "\"everyone\" is not a rule subject"},
      {"allow=uid:", "uid: needs a user"},
      {"allow=gid:", "gid: needs a group"},
      {"allow=uid:no-such-user-here", "no user named \"no-such-user-here\""},
      {"allow=gid:no-such-group-here", "no group named \"no-such-group-here\""},
      {"allow=uid:4294967295", "\"4294967295\" is not a user id"},
      {"allow=uid:99999999999", "is not a user id"},
      {"allow=uid:-1", "no user named \"-1\""},
      {"allow=tls:", "tls: needs a name"},
      {"allow=tls:a\tb", "control character"},
      {"allow=tls:" + std::string(4097, 'x'), "longer than 4096 bytes"},
      {"allow=10.0.0.0/33", "must be a number from 0 to 32"},
      {"allow=::/129", "must be a number from 0 to 128"},
      {"allow=10.0.0.0/", "must be a number from 0 to 32"},
      {"allow=10.0.0.0/x", "must be a number from 0 to 32"},
      {"allow=10.0.0.0/-1", "must be a number from 0 to 32"},
      {"allow=10.1.2.3/8", "has bits set past its prefix; the network is 10.0.0.0/8"},
      {"allow=10.0.0.1/31", "the network is 10.0.0.0/31"},
      {"allow=fd00::1/64", "the network is fd00::/64"},
      {"allow=::ffff:0:0/80", "the network is ::/80"},
      {"allow=256.0.0.1", "is not a rule subject"},
      {"allow=10.0.0", "is not a rule subject"},
      {"allow=1::2::3", "is not a rule subject"},
      {"allow=[10.0.0.1", "is not a rule subject"},
  };
  for (const auto& [text, says] : cases) {
    const std::string why = error_of(text);
    EXPECT_NE(why.find(says), std::string::npos) << text << ": " << why;
    EXPECT_EQ(why.rfind("access rule \"" + text + "\"", 0), 0u) << why;
  }
}

TEST(NbdAccessList, ARuleAfterAllIsRefusedAndAllowAllAloneIsTheDefault) {
  AccessList out;
  std::string why = parse_access_list({"allow=uid:1", "deny=all", "allow=uid:2"}, out);
  EXPECT_NE(why.find("\"allow=uid:2\" can never apply: \"deny=all\" before it"), std::string::npos) << why;
  why = parse_access_list({"allow=uid:1", "bad"}, out);
  EXPECT_NE(why.find("access rule \"bad\""), std::string::npos) << why;

  EXPECT_TRUE(list({"allow=all"}).empty());
  EXPECT_EQ(list({"allow-ro=all"}).size(), 1u);
  EXPECT_EQ(access_words({}), std::vector<std::string>{"allow=all"});
  EXPECT_EQ(access_words(list({"allow=uid:0", "deny=all"})), (std::vector<std::string>{"allow=uid:0", "deny=all"}));
}

TEST(NbdAccessMatch, Ipv4Networks) {
  const AccessRule net = rule("allow=10.0.0.0/8");
  EXPECT_TRUE(matches(net, tcp_peer("10.0.0.0")));
  EXPECT_TRUE(matches(net, tcp_peer("10.255.255.255")));
  EXPECT_FALSE(matches(net, tcp_peer("11.0.0.0")));
  EXPECT_FALSE(matches(net, tcp_peer("9.255.255.255")));

  const AccessRule odd = rule("allow=172.16.0.0/12");  // a prefix inside a byte
  EXPECT_TRUE(matches(odd, tcp_peer("172.31.255.255")));
  EXPECT_FALSE(matches(odd, tcp_peer("172.32.0.0")));
  EXPECT_FALSE(matches(odd, tcp_peer("172.15.255.255")));

  const AccessRule host = rule("allow=127.0.0.1");
  EXPECT_TRUE(matches(host, tcp_peer("127.0.0.1")));
  EXPECT_FALSE(matches(host, tcp_peer("127.0.0.2")));

  const AccessRule pair = rule("allow=192.168.1.2/31");
  EXPECT_TRUE(matches(pair, tcp_peer("192.168.1.3")));
  EXPECT_FALSE(matches(pair, tcp_peer("192.168.1.4")));

  const AccessRule any4 = rule("allow=0.0.0.0/0");
  EXPECT_TRUE(matches(any4, tcp_peer("203.0.113.9")));
  EXPECT_FALSE(matches(any4, tcp_peer("::1")));  // every IPv4 client, no IPv6 one
  EXPECT_FALSE(matches(any4, tcp_peer("2001:db8::1")));
}

TEST(NbdAccessMatch, Ipv6NetworksAndIpv4ClientsOfIpv6Sockets) {
  const AccessRule loop = rule("allow=::1");
  EXPECT_TRUE(matches(loop, tcp_peer("::1")));
  EXPECT_FALSE(matches(loop, tcp_peer("::2")));
  EXPECT_FALSE(matches(loop, tcp_peer("127.0.0.1")));

  const AccessRule ula = rule("allow=fd00::/8");
  EXPECT_TRUE(matches(ula, tcp_peer("fdff:ffff::1")));
  EXPECT_FALSE(matches(ula, tcp_peer("fe00::1")));

  const AccessRule odd = rule("allow=2001:db8:8000::/33");
  EXPECT_TRUE(matches(odd, tcp_peer("2001:db8:ffff::1")));
  EXPECT_FALSE(matches(odd, tcp_peer("2001:db8:7fff::1")));

  const AccessRule any = rule("allow=::/0");  // every TCP client, IPv4 ones too
  EXPECT_TRUE(matches(any, tcp_peer("2001:db8::1")));
  EXPECT_TRUE(matches(any, tcp_peer("10.0.0.1")));

  // An IPv4 client that reached a dual-stack socket is ::ffff:10.1.2.3:
  // identify() keeps it in that form, and IPv4 rules match it.
  PeerIdentity mapped = tcp_peer("::ffff:10.1.2.3");
  EXPECT_TRUE(matches(rule("allow=10.0.0.0/8"), mapped));
  EXPECT_TRUE(matches(rule("allow=::ffff:10.1.2.3"), tcp_peer("10.1.2.3")));
  EXPECT_FALSE(matches(rule("allow=fd00::/8"), mapped));
}

TEST(NbdAccessMatch, EachRuleMatchesItsKindOfConnectionOnly) {
  const PeerIdentity local = unix_peer(1000, 100, {27, 44});
  const PeerIdentity remote = tcp_peer("10.0.0.5");
  PeerIdentity unknown_address;  // TCP, but getpeername failed
  EXPECT_TRUE(matches(rule("allow=uid:1000"), local));
  EXPECT_FALSE(matches(rule("allow=uid:1001"), local));
  EXPECT_TRUE(matches(rule("allow=gid:100"), local));  // primary
  EXPECT_TRUE(matches(rule("allow=gid:44"), local));   // supplementary
  EXPECT_FALSE(matches(rule("allow=gid:1000"), local));
  EXPECT_TRUE(matches(rule("allow=unix"), local));
  EXPECT_FALSE(matches(rule("allow=tcp"), local));
  EXPECT_FALSE(matches(rule("allow=::/0"), local));  // addresses never match a Unix socket
  PeerIdentity anonymous = local;  // SO_PEERCRED failed: no uid 0 by default
  anonymous.has_credentials = false;
  anonymous.uid = anonymous.gid = 0;
  EXPECT_FALSE(matches(rule("allow=uid:0"), anonymous));
  EXPECT_FALSE(matches(rule("allow=gid:0"), anonymous));
  EXPECT_TRUE(matches(rule("allow=unix"), anonymous));

  // A TCP peer has uid 0 in its (unset) fields: a uid rule must not match it.
  EXPECT_EQ(remote.uid, 0u);
  EXPECT_FALSE(matches(rule("allow=uid:0"), remote));
  EXPECT_FALSE(matches(rule("allow=gid:0"), remote));
  EXPECT_TRUE(matches(rule("allow=tcp"), remote));
  EXPECT_FALSE(matches(rule("allow=unix"), remote));
  EXPECT_FALSE(matches(rule("allow=::/0"), unknown_address));
  EXPECT_TRUE(matches(rule("allow=all"), unknown_address));
}

TEST(NbdAccessMatch, TlsRulesNeverMatchAPlainConnection) {
  const PeerIdentity plain = tcp_peer("10.0.0.5");
  const PeerIdentity alice = tcp_peer("10.0.0.5", "alice");
  const PeerIdentity dn = tcp_peer("10.0.0.5", "CN=client,O=Example Corp");
  EXPECT_FALSE(matches(rule("allow=tls"), plain));
  EXPECT_FALSE(matches(rule("allow=tls:alice"), plain));
  EXPECT_TRUE(matches(rule("allow=tls"), alice));
  EXPECT_TRUE(matches(rule("allow=tls:alice"), alice));
  EXPECT_FALSE(matches(rule("allow=tls:Alice"), alice));  // exact, case included
  EXPECT_FALSE(matches(rule("allow=tls:alic"), alice));
  EXPECT_TRUE(matches(rule("allow=tls:CN=client,O=Example Corp"), dn));
  EXPECT_FALSE(matches(rule("allow=tls:CN=client"), dn));
  // A TLS client is still a TCP client of its address.
  EXPECT_TRUE(matches(rule("allow=10.0.0.0/8"), alice));
}

TEST(NbdAccessList, TheFirstMatchDecidesAndNoMatchIsRefused) {
  const AccessList rules = list({"deny=10.0.0.66", "allow=10.0.0.0/8", "allow-ro=0.0.0.0/0", "allow=uid:0",
                                 "allow-ro=gid:44", "deny=uid:1000", "allow=unix"});
  EXPECT_EQ(access_for(rules, tcp_peer("10.0.0.66")), Access::denied);
  EXPECT_EQ(access_for(rules, tcp_peer("10.0.0.67")), Access::read_write);
  EXPECT_EQ(access_for(rules, tcp_peer("192.0.2.1")), Access::read_only);
  EXPECT_EQ(access_for(rules, tcp_peer("2001:db8::1")), Access::denied);  // no rule for it
  EXPECT_EQ(access_for(rules, unix_peer(0, 0)), Access::read_write);
  EXPECT_EQ(access_for(rules, unix_peer(1000, 1000, {44})), Access::read_only);  // gid 44 comes first
  EXPECT_EQ(access_for(rules, unix_peer(1000, 1000)), Access::denied);
  EXPECT_EQ(access_for(rules, unix_peer(1001, 1001)), Access::read_write);

  EXPECT_EQ(access_for({}, tcp_peer("192.0.2.1")), Access::read_write);  // no list: everyone
  EXPECT_EQ(access_for(list({"allow-ro=all"}), unix_peer(0, 0)), Access::read_only);
  EXPECT_EQ(access_for(list({"allow=uid:5"}), unix_peer(6, 6)), Access::denied);
}

TEST(NbdAccessList, DescribesThePeerAsTheRulesSeeIt) {
  EXPECT_EQ(describe_for_access(unix_peer(1000, 100)), "uid 1000 gid 100");
  EXPECT_EQ(describe_for_access(tcp_peer("10.1.2.3")), "10.1.2.3");
  EXPECT_EQ(describe_for_access(tcp_peer("::ffff:10.1.2.3")), "10.1.2.3");
  EXPECT_EQ(describe_for_access(tcp_peer("2001:db8::1", "alice")), "2001:db8::1 tls \"alice\"");
}

TEST(NbdAccessExport, ReadOnlyRulesAndReadOnlyExports) {
  std::string error;
  Export e;
  e.name = "disk";
  e.backend = io::open_memory_backend(1 << 20, error);
  ASSERT_TRUE(e.backend) << error;
  const PeerIdentity root = unix_peer(0, 0);
  const PeerIdentity user = unix_peer(1000, 1000);
  EXPECT_EQ(e.access_for(user), Access::read_write);  // no list yet

  e.set_access(list({"allow=uid:0", "allow-ro=uid:1000"}));
  EXPECT_EQ(e.access_for(root), Access::read_write);
  EXPECT_EQ(e.access_for(user), Access::read_only);
  EXPECT_EQ(e.access_for(unix_peer(1001, 1001)), Access::denied);
  EXPECT_FALSE(e.transmission_flags(false) & kTxReadOnly);
  EXPECT_TRUE(e.transmission_flags(false) & kTxSendWriteZeroes);
  // A read-only client is told so, and is offered no write command.
  EXPECT_TRUE(e.transmission_flags(true) & kTxReadOnly);
  EXPECT_FALSE(e.transmission_flags(true) & kTxSendWriteZeroes);
  EXPECT_FALSE(e.transmission_flags(true) & kTxSendTrim);

  // A read-only export is read-only for everyone an allow rule lets in.
  e.read_only = true;
  EXPECT_EQ(e.access_for(root), Access::read_only);
  EXPECT_EQ(e.access_for(unix_peer(1001, 1001)), Access::denied);
}

}  // namespace
}  // namespace ioband::nbd
