#include "control/protocol.h"

#include "control/usage.h"

namespace ioband::control {

using nlohmann::json;

namespace {

constexpr std::string_view kCommands[] = {"create", "remove", "message", "calibrate", "table", "status", "targets", "tenant"};

std::optional<Error> malformed(const std::string& what) {
  return Error::bad_usage("malformed request: " + what, usage_of(""));
}

}  // namespace

std::optional<Error> parse_request(const std::string& line, Request& out) {
  json object;
  try {
    object = json::parse(line);
  } catch (const json::parse_error& e) {
    return malformed("not JSON (" + std::string(e.what()) + ")");
  } catch (const json::exception& e) {
    // Valid JSON the parser cannot hold, as 1e999 (out_of_range.406): this
    // escaped once and ended the daemon (found by fuzz/control_protocol).
    return malformed("a value out of range (" + std::string(e.what()) + ")");
  }
  if (!object.is_object()) return malformed("expected a JSON object");
  Request request;
  if (auto it = object.find("id"); it != object.end()) {
    request.id = *it;
    out.id = *it;  // echoed even when the rest is malformed
  }
  auto string_field = [&](const char* key, std::string& field, bool required) -> std::optional<Error> {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) return malformed(std::string("\"") + key + "\" is missing");
      return std::nullopt;
    }
    if (!it->is_string()) return malformed(std::string("\"") + key + "\" must be a string");
    field = it->get<std::string>();
    return std::nullopt;
  };
  if (auto e = string_field("command", request.command, true)) return e;
  bool known = false;
  for (auto command : kCommands) known |= command == request.command;
  if (!known) {
    return Error::bad_usage("unknown command \"" + request.command + "\"", usage_of(""));
  }
  if (auto e = string_field("name", request.name, false)) return e;
  if (auto e = string_field("table", request.table, false)) return e;
  if (auto it = object.find("sector"); it != object.end()) {
    if (it->is_string()) {
      request.sector = it->get<std::string>();
    } else if (it->is_number_integer()) {
      request.sector = std::to_string(it->get<int64_t>());
    } else {
      return malformed("\"sector\" must be a string or an integer");
    }
  }
  if (auto it = object.find("args"); it != object.end()) {
    if (!it->is_array()) return malformed("\"args\" must be an array of strings");
    for (const auto& arg : *it) {
      if (!arg.is_string()) return malformed("\"args\" must be an array of strings");
      request.args.push_back(arg.get<std::string>());
    }
  }
  if (auto it = object.find("force"); it != object.end()) {
    if (!it->is_boolean()) return malformed("\"force\" must be true or false");
    request.force = it->get<bool>();
  }
  if (auto it = object.find("seconds"); it != object.end() && !it->is_null()) {
    if (!it->is_number()) return malformed("\"seconds\" must be a number");
    request.seconds = it->get<double>();
  }
  if (auto it = object.find("target"); it != object.end() && !it->is_null()) {
    if (!it->is_string()) return malformed("\"target\" must be a string");
    request.target = it->get<std::string>();
  }
  out = std::move(request);
  return std::nullopt;
}

json request_to_json(const Request& request) {
  json object = {{"command", request.command}};
  if (!request.name.empty()) object["name"] = request.name;
  if (request.command == "create") object["table"] = request.table;
  if (request.command == "message") {
    object["sector"] = request.sector;
    object["args"] = request.args;
  }
  if (request.command == "tenant") object["args"] = request.args;
  if (request.command == "remove") object["force"] = request.force;
  if (request.seconds) object["seconds"] = *request.seconds;
  if (request.target) object["target"] = *request.target;
  if (!request.id.is_null()) object["id"] = request.id;
  return object;
}

json reply_to_json(const Reply& reply, const json& id) {
  json object;
  object["ok"] = reply.ok;
  if (!id.is_null()) object["id"] = id;
  if (reply.ok) {
    object["text"] = reply.text;
    object["data"] = reply.data;
  } else {
    object["kind"] = reply.error.kind == Error::Kind::usage ? "usage" : "refused";
    object["error"] = reply.error.message;
    if (!reply.error.usage.empty()) object["usage"] = reply.error.usage;
  }
  return object;
}

std::string reply_to_line(const Reply& reply, const json& id) {
  // Invalid UTF-8 from a client (a path, a name) must not make dump() throw.
  return reply_to_json(reply, id).dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace ioband::control
