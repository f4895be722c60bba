// POST /v1/completions and /v1/chat/completions: a request becomes one engine request per prompt and per choice
// (n), whose tokens come back as one JSON response or as server-sent events; a client that goes away cancels its
// requests, which frees their KV blocks.
#pragma once

#include <httplib.h>

#include "server/context.h"

namespace rill {

void post_completion(ServerContext& ctx, const httplib::Request& req, httplib::Response& res, bool chat);

}  // namespace rill
