#pragma once
// Classification: which ioband group of its device a connection's requests
// belong to, from who the client is and the device's group type.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ioband::nbd {

enum class GroupType : uint8_t { none, user, gid, pid, pgrp, cgroup };

std::string_view to_string(GroupType type) noexcept;
std::optional<GroupType> parse_group_type(std::string_view name) noexcept;

// Who is on the other end, read once at accept.
struct PeerIdentity {
  bool unix_socket = false;
  int pid = -1;
  unsigned uid = 0;
  unsigned gid = 0;
  int pgrp = -1;
  uint64_t cgroup_id = 0;  // inode of the client's cgroup v2 directory
  uint32_t ipv4 = 0;       // TCP over IPv4: the address as a number
  std::string address;     // for logs: "host:port" or "pid N uid N"
  std::string tls_identity;  // after TLS: the PSK username or the client certificate's DN
};

inline constexpr int64_t kDefaultGroupId = -1;

// The group id a request of this peer carries on a device of this type.
// Unix-socket peers: uid, gid, pid, process group or cgroup id. TCP peers:
// the IPv4 address under every type but none. The scheduler sends an id
// that is not attached on the device to its default group.
int64_t group_id_for(GroupType type, const PeerIdentity& peer) noexcept;

// Fills pgrp and cgroup_id of a Unix-socket peer from /proc (best effort:
// a process that is gone leaves them unset).
void read_process_identity(PeerIdentity& peer);

}  // namespace ioband::nbd
