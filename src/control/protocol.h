// The control protocol: one JSON object per line each way.
//
// Requests (fields other than "command" depend on it; "id", if present, is
// echoed in the response):
//   {"command":"create","name":"ioband1","table":"0 2048 ioband /x.img 1"}
//   {"command":"remove","name":"ioband1","force":false}
//   {"command":"message","name":"ioband1","sector":"0","args":["weight","1000:30"]}
//   {"command":"table","name":"ioband1","target":"ioband"}   name, target optional
//   {"command":"status","name":"ioband1","target":"ioband"}  name, target optional
//   {"command":"targets"}
//   {"command":"calibrate","name":"ioband1","seconds":25}            seconds optional
//   {"command":"tenant","args":["create","acme","weight","300"]}      (control/tenant.h)
// Responses:
//   {"ok":true,"text":"<what iobandctl prints>","data":{...}}
//   {"ok":false,"kind":"usage"|"refused","error":"<sentence>","usage":"<usage line>"}
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/error.h"

namespace ioband::control {

struct Request {
  std::string command;
  std::string name;
  std::string table;
  std::string sector = "0";
  std::vector<std::string> args;
  bool force = false;
  std::optional<std::string> target;
  std::optional<double> seconds;  // calibrate: how long to measure
  nlohmann::json id;  // null when absent
};

// Parses one request line. The error names the field that is wrong.
std::optional<Error> parse_request(const std::string& line, Request& out);
nlohmann::json request_to_json(const Request& request);

struct Reply {
  bool ok = true;
  std::string text;
  nlohmann::json data = nlohmann::json::object();
  Error error;

  static Reply failure(Error error) {
    Reply reply;
    reply.ok = false;
    reply.error = std::move(error);
    return reply;
  }
};

nlohmann::json reply_to_json(const Reply& reply, const nlohmann::json& id);
// One line, no newline.
std::string reply_to_line(const Reply& reply, const nlohmann::json& id);

}  // namespace ioband::control
