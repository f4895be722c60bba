// POST /v1/completions and /v1/chat/completions: a request becomes one engine request per prompt and per choice
// (n), whose tokens come back as one JSON response or as server-sent events; a client that goes away cancels its
// requests, which frees their KV blocks.
#pragma once

#include <httplib.h>

#include <chrono>
#include <functional>
#include <string>

#include "server/context.h"

namespace rill {

void post_completion(ServerContext& ctx, const httplib::Request& req, httplib::Response& res, bool chat);

// A whole (non-streamed) JSON reply to work that runs while its client waits. `step(until)` takes what the engine
// has produced until that time and says whether the work is done. While it is not, a space goes out (JSON allows
// whitespace before a value), so that a client that has left is noticed by the failed write within a fraction of
// a second and ends the work (`cancel`, also called at the end: it must do nothing once the work is done). Once
// done, `body` is sent. The reply is chunked: its length is not known when the headers go out.
using Until = std::chrono::steady_clock::time_point;
void reply_when_done(httplib::Response& res, std::function<bool(Until)> step, std::function<std::string()> body,
                     const std::function<void()>& cancel);

}  // namespace rill
