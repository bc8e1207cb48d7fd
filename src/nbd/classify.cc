#include "nbd/classify.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

namespace ioband::nbd {

std::string_view to_string(GroupType type) noexcept {
  switch (type) {
    case GroupType::none: return "none";
    case GroupType::user: return "user";
    case GroupType::gid: return "gid";
    case GroupType::pid: return "pid";
    case GroupType::pgrp: return "pgrp";
    case GroupType::cgroup: return "cgroup";
  }
  return "none";
}

std::optional<GroupType> parse_group_type(std::string_view name) noexcept {
  for (GroupType t : {GroupType::none, GroupType::user, GroupType::gid, GroupType::pid, GroupType::pgrp,
                      GroupType::cgroup}) {
    if (to_string(t) == name) return t;
  }
  return std::nullopt;
}

int64_t group_id_for(GroupType type, const PeerIdentity& peer) noexcept {
  if (type == GroupType::none) return kDefaultGroupId;
  if (!peer.unix_socket) return peer.ipv4 ? static_cast<int64_t>(peer.ipv4) : kDefaultGroupId;
  switch (type) {
    case GroupType::none: return kDefaultGroupId;
    case GroupType::user: return peer.uid;
    case GroupType::gid: return peer.gid;
    case GroupType::pid: return peer.pid;
    case GroupType::pgrp: return peer.pgrp;
    case GroupType::cgroup: return peer.cgroup_id ? static_cast<int64_t>(peer.cgroup_id) : kDefaultGroupId;
  }
  return kDefaultGroupId;
}

void read_process_identity(PeerIdentity& peer) {
  if (peer.pid <= 0) return;
  peer.pgrp = getpgid(peer.pid);
  // cgroup v2: one line "0::/path".
  std::ifstream in("/proc/" + std::to_string(peer.pid) + "/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    struct stat st{};
    if (stat(("/sys/fs/cgroup" + line.substr(3)).c_str(), &st) == 0) peer.cgroup_id = st.st_ino;
  }
}

}  // namespace ioband::nbd
