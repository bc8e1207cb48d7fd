// A fake platform for the control engine: a file system of named paths, NBD
// exports as records, run_on_owner inline. Every call is logged so tests can
// assert that a refused command did nothing.
#pragma once

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/engine.h"

namespace ioband::control::testing {

struct FakePlatform {
  std::map<std::string, PathInfo> paths;
  std::map<std::string, DeviceConfig> exports;
  std::map<std::string, int> connections;
  std::map<std::string, GroupType> types;
  std::map<std::string, std::vector<std::string>> access;  // each export's rules as the platform got them
  std::vector<std::string> log;
  std::string create_error;  // create_export fails with this when set
  std::string remove_error;  // remove_export leaves connections with this when set
  int released = 0;
  // Set before platform(): remove unpublishes and hands its wait back
  // (Platform::unpublish_export), as the daemon does.
  bool two_step_remove = false;

  FakePlatform() {
    // The reference's disks: 8:1 and 8:2 on sda, 8:19/8:20 on sdb; xvdc1 as in
    // the reference's table example. A file system on 253:0 holds images.
    paths["/dev/sda1"] = {uint64_t{44371467} * 512, 8, 1};
    paths["/dev/sda2"] = {uint64_t{44371467} * 512, 8, 2};
    paths["/dev/sdb3"] = {uint64_t{2097152} * 512, 8, 19};
    paths["/dev/sdb4"] = {uint64_t{2097152} * 512, 8, 20};
    paths["/dev/xvdc1"] = {uint64_t{44371467} * 512, 202, 33};
    paths["/vmdisk/vm1.img"] = {uint64_t{2147483648}, 253, 0};
    paths["/vmdisk/vm2.img"] = {uint64_t{2147483648}, 253, 0};
    paths["/small.img"] = {1048576, 253, 0};
  }

  Platform platform() {
    Platform p;
    p.create_export = [this](const DeviceConfig& config, qos::DeviceGroup& group, qos::DeviceId device) {
      log.push_back("create_export " + config.name);
      if (!create_error.empty()) return create_error;
      if (!group.has_device(device)) return std::string("device not added to its group");
      exports[config.name] = config;
      types[config.name] = config.type;
      access[config.name] = nbd::access_words(config.access);
      return std::string();
    };
    p.remove_export = [this](const std::string& name, bool force) {
      log.push_back("remove_export " + name + (force ? " force" : ""));
      if (!remove_error.empty()) return remove_error;
      exports.erase(name);
      connections.erase(name);
      return std::string();
    };
    if (two_step_remove) {
      p.unpublish_export = [this](const std::string& name, bool force) {
        log.push_back("unpublish_export " + name + (force ? " force" : ""));
        exports.erase(name);
        return std::function<std::string()>([this, name] {
          log.push_back("wait " + name);
          if (!remove_error.empty()) return remove_error;
          connections.erase(name);
          return std::string();
        });
      };
    }
    p.connections = [this](const std::string& name) {
      auto it = connections.find(name);
      return it == connections.end() ? 0 : it->second;
    };
    p.set_type = [this](const std::string& name, GroupType type) {
      log.push_back("set_type " + name + " " + std::string(nbd::to_string(type)));
      types[name] = type;
    };
    p.set_access = [this](const std::string& name, const nbd::AccessList& rules) {
      log.push_back("set_access " + name);
      access[name] = nbd::access_words(rules);
    };
    p.run_on_owner = [](int, const std::function<void()>& fn) { fn(); };
    p.release_device_group = [this](int id, qos::DeviceGroup&) {
      log.push_back("release_device_group " + std::to_string(id));
      ++released;
    };
    p.probe = [this](const std::string& path, PathInfo& info) {
      auto it = paths.find(path);
      if (it == paths.end()) return path + ": No such file or directory";
      info = it->second;
      return std::string();
    };
    return p;
  }
};

// A private directory, removed with its contents.
struct TempDir {
  std::string path;
  TempDir() {
    std::string pattern = std::filesystem::temp_directory_path().string() + "/ioband-control-XXXXXX";
    path = ::mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Splits "weight 1000:30" into words.
inline std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string word; in >> word;) out.push_back(word);
  return out;
}

// Drives an engine with requests as iobandctl sends them.
struct Client {
  Engine& engine;
  bool may_change = true;

  nlohmann::json send(const nlohmann::json& request) {
    return nlohmann::json::parse(engine.handle_line(request.dump(), may_change));
  }
  nlohmann::json create(const std::string& name, const std::string& table) {
    return send({{"command", "create"}, {"name", name}, {"table", table}});
  }
  nlohmann::json message(const std::string& name, const std::string& args, const std::string& sector = "0") {
    return send({{"command", "message"}, {"name", name}, {"sector", sector}, {"args", words(args)}});
  }
  nlohmann::json remove(const std::string& name, bool force = false) {
    return send({{"command", "remove"}, {"name", name}, {"force", force}});
  }
  nlohmann::json table(const std::string& name = "", const char* target = nullptr) {
    nlohmann::json request = {{"command", "table"}};
    if (!name.empty()) request["name"] = name;
    if (target) request["target"] = target;
    return send(request);
  }
  nlohmann::json status(const std::string& name = "") {
    nlohmann::json request = {{"command", "status"}};
    if (!name.empty()) request["name"] = name;
    return send(request);
  }
  std::string table_text() { return table().value("text", std::string("<error>")); }
  std::string status_text() { return status().value("text", std::string("<error>")); }
};

}  // namespace ioband::control::testing
