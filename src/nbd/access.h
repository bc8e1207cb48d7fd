#pragma once
// Access control: which clients may open an export, and whether they may
// write to it.
//
// An access list is an ordered list of rules, each "ACTION=WHO":
//
//   ACTION   allow      read-write (read-only anyway if the export is)
//            allow-ro   read-only: NBD_FLAG_READ_ONLY, writes answer EPERM
//            deny       refused
//   WHO      all        every client
//            unix, tcp  every client of that transport
//            uid:ID     a Unix-socket client of that user (number or name)
//            gid:ID     a Unix-socket client with that primary or
//                       supplementary group (number or name)
//            ADDRESS[/PREFIX]  a TCP client from that IPv4 or IPv6 network:
//                       127.0.0.1, 10.0.0.0/8, ::1, fd00::/8, [fd00::]/8
//            tls        a client that authenticated with TLS (any identity)
//            tls:NAME   a TLS client whose identity (PSK username, or the
//                       certificate's distinguished name) is exactly NAME
//
// The first rule that matches the client decides; when none matches, the
// client is refused. An empty list is the default: every client,
// read-write (what "allow=all" says). Rules about a kind of identity a
// connection does not have never match it: uid and gid never match a TCP
// client, addresses never match a Unix-socket client, tls never matches a
// connection without TLS. An IPv4 client reaching an IPv6 socket
// (::ffff:a.b.c.d) is matched as the IPv4 address it is.
//
// Pure: parsing, printing and matching, no I/O but the user and group
// names looked up while parsing (getpwnam/getgrnam).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "nbd/classify.h"

namespace ioband::nbd {

enum class Access : uint8_t { denied, read_only, read_write };
std::string_view to_string(Access access) noexcept;

struct AccessRule {
  enum class Action : uint8_t { allow, allow_read_only, deny };
  enum class Who : uint8_t { all, unix_socket, tcp, uid, gid, address, tls_any, tls };
  Action action = Action::allow;
  Who who = Who::all;
  uint32_t id = 0;                    // uid, gid
  std::array<uint8_t, 16> address{};  // address: IPv6, IPv4 as ::ffff:a.b.c.d
  uint8_t prefix = 0;                 // address: leading bits that must match, 0..128
  std::string tls_identity;           // tls
  friend bool operator==(const AccessRule&, const AccessRule&) = default;
};

using AccessList = std::vector<AccessRule>;

// One rule from its text ("allow-ro=10.0.0.0/8"). "" or a sentence saying
// what is wrong with it.
std::string parse_access_rule(std::string_view text, AccessRule& out);
// Rules in order. Refuses a rule that can never apply (after "all" of any
// action). "allow=all" alone is the default and gives the empty list.
std::string parse_access_list(const std::vector<std::string>& words, AccessList& out);
// The same check on rules already parsed one at a time.
std::string check_access_list(const AccessList& rules);

// The canonical text of a rule: parse_access_rule gives the same rule back.
std::string to_string(const AccessRule& rule);
// The rules' texts; the empty (default) list reads {"allow=all"}.
std::vector<std::string> access_words(const AccessList& rules);

bool matches(const AccessRule& rule, const PeerIdentity& peer) noexcept;
// What the list gives this peer (the empty list: read_write).
Access access_for(const AccessList& rules, const PeerIdentity& peer) noexcept;

// The peer as the rules see it, for a log line or a refusal: "uid 1000 gid
// 1000", "10.0.0.3", "10.0.0.3 tls alice".
std::string describe_for_access(const PeerIdentity& peer);

}  // namespace ioband::nbd
