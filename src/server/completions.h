// POST /v1/completions and /v1/chat/completions: a request becomes one engine request per prompt and per
// choice (n), whose tokens come back as one JSON response or as server-sent events; a client that goes away
// cancels its requests, which frees their KV blocks.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "server/context.h"
#include "server/http.h"

namespace rill {

void post_completion(ServerContext& ctx, const http::Request& req, http::Response& res, bool chat);

// A whole (non-streamed) JSON reply to work that runs while its client waits. `step(until)` takes what the
// engine has produced until that time and says whether the work is done; between steps the client is checked,
// and one that has left ends the work (`cancel`, also called on an error: it must do nothing once the work is
// done). Once done, `body` is the reply. Work still running at `deadline` (--request-timeout) is cancelled: a
// 504.
using Until = std::chrono::steady_clock::time_point;
void reply_when_done(ServerContext& ctx, const http::Request& req, http::Response& res, Until deadline,
                     const std::function<bool(Until)>& step, const std::function<std::string()>& body,
                     const std::function<void()>& cancel);

// The server-sent event that ends a stream the engine ended without finishing it (cancelled by the server's
// shutdown, or failed): an OpenAI error object, as the SDKs read mid-stream errors.
std::string stream_error_event(const Event& end);
// The event that ends a stream cut at --request-timeout.
std::string stream_timeout_event(const ServerContext& ctx);

}  // namespace rill
