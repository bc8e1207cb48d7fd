#include "nbd/access.h"

#include <arpa/inet.h>
#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>

namespace ioband::nbd {

namespace {

using Action = AccessRule::Action;
using Who = AccessRule::Who;

constexpr std::string_view kExpected =
    "expected allow=WHO, allow-ro=WHO or deny=WHO, WHO being all, unix, tcp, uid:USER, gid:GROUP, an address or "
    "network (127.0.0.1, 10.0.0.0/8, ::1, fd00::/8), tls or tls:NAME";

std::string quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

bool is_mapped_ipv4(const std::array<uint8_t, 16>& a) noexcept {
  for (int i = 0; i < 10; ++i) {
    if (a[i] != 0) return false;
  }
  return a[10] == 0xff && a[11] == 0xff;
}

std::optional<uint32_t> parse_number(std::string_view text, uint32_t max) {
  if (text.empty() || text.size() > 10) return std::nullopt;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  uint64_t value = 0;
  std::from_chars(text.data(), text.data() + text.size(), value);
  if (value > max) return std::nullopt;
  return static_cast<uint32_t>(value);
}

// A user or group: a number, or a name known to this system now.
std::string parse_account(std::string_view text, bool is_group, uint32_t& id) {
  const char* kind = is_group ? "group" : "user";
  if (text.empty()) return std::string(is_group ? "gid:" : "uid:") + " needs a " + kind + " (a number or a name)";
  // (uid_t)-1 means "no user" to the kernel's interfaces.
  if (auto number = parse_number(text, UINT32_MAX - 1)) {
    id = *number;
    return {};
  }
  if (text.front() >= '0' && text.front() <= '9') return quoted(text) + " is not a " + kind + " id";
  const std::string name(text);
  char buffer[16384];
  if (is_group) {
    group entry{};
    group* found = nullptr;
    if (getgrnam_r(name.c_str(), &entry, buffer, sizeof buffer, &found) == 0 && found) {
      id = found->gr_gid;
      return {};
    }
  } else {
    passwd entry{};
    passwd* found = nullptr;
    if (getpwnam_r(name.c_str(), &entry, buffer, sizeof buffer, &found) == 0 && found) {
      id = found->pw_uid;
      return {};
    }
  }
  return "no " + std::string(kind) + " named " + quoted(text) + " on this system";
}

// "10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8", "[fd00::]/8", "[::1]".
std::string parse_network(std::string_view text, AccessRule& rule) {
  std::string_view host = text;
  std::string_view prefix_text;
  bool has_prefix = false;
  if (const auto slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    prefix_text = text.substr(slash + 1);
    has_prefix = true;
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string host_text(host);
  std::array<uint8_t, 16> address{};
  unsigned max_prefix = 128;
  in_addr v4{};
  if (host.find(':') == std::string_view::npos && inet_pton(AF_INET, host_text.c_str(), &v4) == 1) {
    address[10] = address[11] = 0xff;
    std::memcpy(&address[12], &v4, 4);
    max_prefix = 32;
  } else if (inet_pton(AF_INET6, host_text.c_str(), address.data()) != 1) {
    return quoted(text) + " is not a rule subject; " + std::string(kExpected);
  }
  unsigned prefix = max_prefix;
  if (has_prefix) {
    auto value = parse_number(prefix_text, max_prefix);
    if (!value) {
      return "the prefix of " + quoted(text) + " must be a number from 0 to " + std::to_string(max_prefix) +
             " (the network's leading bits)";
    }
    prefix = *value;
  }
  if (max_prefix == 32) prefix += 96;
  // Bits past the prefix are most likely a typo for another network.
  for (unsigned bit = prefix; bit < 128; ++bit) {
    if (address[bit / 8] & (0x80u >> (bit % 8))) {
      AccessRule network = rule;
      network.who = Who::address;
      network.address = address;
      network.prefix = static_cast<uint8_t>(prefix);
      for (unsigned b = prefix; b < 128; ++b) network.address[b / 8] &= static_cast<uint8_t>(~(0x80u >> (b % 8)));
      const std::string canonical = to_string(network);
      return quoted(text) + " has bits set past its prefix; the network is " +
             canonical.substr(canonical.find('=') + 1);
    }
  }
  rule.who = Who::address;
  rule.address = address;
  rule.prefix = static_cast<uint8_t>(prefix);
  return {};
}

std::string parse_who(std::string_view who, AccessRule& rule) {
  if (who == "all" || who == "any") {
    rule.who = Who::all;
  } else if (who == "unix") {
    rule.who = Who::unix_socket;
  } else if (who == "tcp") {
    rule.who = Who::tcp;
  } else if (who == "tls") {
    rule.who = Who::tls_any;
  } else if (who.starts_with("uid:") || who.starts_with("gid:")) {
    const bool group = who.starts_with("gid:");
    rule.who = group ? Who::gid : Who::uid;
    return parse_account(who.substr(4), group, rule.id);
  } else if (who.starts_with("tls:")) {
    const std::string_view name = who.substr(4);
    if (name.size() > 4096) return "the TLS identity in the rule is longer than 4096 bytes";
    if (name.empty()) return "tls: needs a name (a PSK username or a certificate's distinguished name); tls alone "
                             "matches every TLS client";
    for (unsigned char c : name) {
      if (c < 0x20 || c == 0x7f) return "the TLS identity in " + quoted(who) + " contains a control character";
    }
    rule.who = Who::tls;
    rule.tls_identity = std::string(name);
  } else if (who.empty()) {
    return "the rule names nobody; " + std::string(kExpected);
  } else {
    return parse_network(who, rule);
  }
  return {};
}

// IPv4-mapped addresses as IPv4, unless as_ipv6.
std::string address_text(const std::array<uint8_t, 16>& address, bool as_ipv6 = false) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (is_mapped_ipv4(address) && !as_ipv6) {
    inet_ntop(AF_INET, &address[12], text, sizeof text);
  } else {
    inet_ntop(AF_INET6, address.data(), text, sizeof text);
  }
  return text;
}

}  // namespace

std::string_view to_string(Access access) noexcept {
  switch (access) {
    case Access::denied: return "denied";
    case Access::read_only: return "read-only";
    case Access::read_write: return "read-write";
  }
  return "denied";
}

std::string parse_access_rule(std::string_view text, AccessRule& out) {
  const auto equals = text.find('=');
  if (equals == std::string_view::npos) return "access rule " + quoted(text) + ": " + std::string(kExpected);
  const std::string_view action = text.substr(0, equals);
  AccessRule rule;
  if (action == "allow") {
    rule.action = Action::allow;
  } else if (action == "allow-ro") {
    rule.action = Action::allow_read_only;
  } else if (action == "deny") {
    rule.action = Action::deny;
  } else {
    return "access rule " + quoted(text) + ": unknown action " + quoted(action) +
           " (expected allow, allow-ro or deny)";
  }
  if (std::string why = parse_who(text.substr(equals + 1), rule); !why.empty()) {
    return "access rule " + quoted(text) + ": " + why;
  }
  out = std::move(rule);
  return {};
}

std::string check_access_list(const AccessList& rules) {
  for (size_t i = 0; i < rules.size(); ++i) {
    if (rules[i].who != Who::all) continue;
    if (i + 1 < rules.size()) {
      return "access rule " + quoted(to_string(rules[i + 1])) + " can never apply: " + quoted(to_string(rules[i])) +
             " before it matches every client";
    }
  }
  return {};
}

std::string parse_access_list(const std::vector<std::string>& words, AccessList& out) {
  AccessList rules;
  for (const std::string& word : words) {
    AccessRule rule;
    if (std::string why = parse_access_rule(word, rule); !why.empty()) return why;
    rules.push_back(std::move(rule));
  }
  if (std::string why = check_access_list(rules); !why.empty()) return why;
  if (rules.size() == 1 && rules[0] == AccessRule{}) rules.clear();  // allow=all: the default
  out = std::move(rules);
  return {};
}

std::string to_string(const AccessRule& rule) {
  std::string text;
  switch (rule.action) {
    case Action::allow: text = "allow="; break;
    case Action::allow_read_only: text = "allow-ro="; break;
    case Action::deny: text = "deny="; break;
  }
  switch (rule.who) {
    case Who::all: return text + "all";
    case Who::unix_socket: return text + "unix";
    case Who::tcp: return text + "tcp";
    case Who::uid: return text + "uid:" + std::to_string(rule.id);
    case Who::gid: return text + "gid:" + std::to_string(rule.id);
    case Who::tls_any: return text + "tls";
    case Who::tls: return text + "tls:" + rule.tls_identity;
    case Who::address: {
      const bool v4 = is_mapped_ipv4(rule.address) && rule.prefix >= 96;
      const unsigned bits = v4 ? rule.prefix - 96u : rule.prefix;
      text += address_text(rule.address, !v4);
      if (bits != (v4 ? 32u : 128u)) text += "/" + std::to_string(bits);
      return text;
    }
  }
  return text;
}

std::vector<std::string> access_words(const AccessList& rules) {
  if (rules.empty()) return {"allow=all"};
  std::vector<std::string> words;
  for (const AccessRule& rule : rules) words.push_back(to_string(rule));
  return words;
}

bool matches(const AccessRule& rule, const PeerIdentity& peer) noexcept {
  switch (rule.who) {
    case Who::all: return true;
    case Who::unix_socket: return peer.unix_socket;
    case Who::tcp: return !peer.unix_socket;
    case Who::uid: return peer.unix_socket && peer.has_credentials && peer.uid == rule.id;
    case Who::gid:
      return peer.unix_socket && peer.has_credentials &&
             (peer.gid == rule.id || std::find(peer.groups.begin(), peer.groups.end(), rule.id) != peer.groups.end());
    case Who::tls_any: return !peer.tls_identity.empty();
    case Who::tls: return !peer.tls_identity.empty() && peer.tls_identity == rule.tls_identity;
    case Who::address: {
      if (peer.unix_socket || !peer.has_ip) return false;
      const unsigned whole = rule.prefix / 8u;
      if (!std::equal(rule.address.begin(), rule.address.begin() + whole, peer.ip.begin())) return false;
      const unsigned rest = rule.prefix % 8u;
      if (rest == 0) return true;
      const auto mask = static_cast<uint8_t>(0xffu << (8 - rest));
      return (rule.address[whole] & mask) == (peer.ip[whole] & mask);
    }
  }
  return false;
}

Access access_for(const AccessList& rules, const PeerIdentity& peer) noexcept {
  if (rules.empty()) return Access::read_write;
  for (const AccessRule& rule : rules) {
    if (!matches(rule, peer)) continue;
    switch (rule.action) {
      case Action::allow: return Access::read_write;
      case Action::allow_read_only: return Access::read_only;
      case Action::deny: return Access::denied;
    }
  }
  return Access::denied;
}

std::string describe_for_access(const PeerIdentity& peer) {
  std::string text;
  if (peer.unix_socket) {
    text = "uid " + std::to_string(peer.uid) + " gid " + std::to_string(peer.gid);
  } else {
    text = peer.has_ip ? address_text(peer.ip) : std::string("an unknown address");
  }
  if (!peer.tls_identity.empty()) text += " tls " + quoted(peer.tls_identity);
  return text;
}

}  // namespace ioband::nbd
