// The streaming sessions' routes (/v1/sessions...): create (with a KV policy and generation defaults, which
// the engine keeps with the session), list, status, append (text, token ids or chat messages), generate
// (streamed or whole) and delete. Sessions themselves live in the engine (engine/sessions). With API keys, a
// session belongs to the key that made it: other keys neither see it listed nor reach it (404, as for a
// session that does not exist), and --max-sessions-per-key bounds how many one key holds.
#pragma once

#include <string>

#include "server/context.h"
#include "server/http.h"

namespace rill {

void create_session(ServerContext& ctx, const http::Request& req, http::Response& res);
void list_sessions(ServerContext& ctx, const http::Request& req, http::Response& res);
void get_session(ServerContext& ctx, const std::string& id, const http::Request& req, http::Response& res);
void delete_session(ServerContext& ctx, const std::string& id, const http::Request& req, http::Response& res);
void append_session(ServerContext& ctx, const std::string& id, const http::Request& req, http::Response& res);
void generate_session(ServerContext& ctx, const std::string& id, const http::Request& req,
                      http::Response& res);

}  // namespace rill
