#include "server/completions.h"

#include <cstdio>
#include <memory>

#include "server/responses.h"

namespace rill {

using openai::json;

namespace {

// Sends the choices' events as server-sent events until every choice is done; false once the client is gone.
bool stream_events(ServerContext& ctx, const openai::CompletionReply& reply,
                   std::vector<openai::Choice>& choices, http::Sink& sink, Until deadline) {
  const openai::CompletionRequest& cr = reply.request;
  auto send = [&](const json& j) {
    const std::string line = "data: " + openai::dump(j) + "\n\n";
    return sink.write(line);  // false once the client is gone
  };
  if (cr.chat)
    for (const auto& c : choices)
      if (!send(reply.chunk(c.index, "", json(), "", true))) return false;
  if (!cr.chat && cr.echo)
    for (const auto& c : choices)
      if (!send(reply.chunk(c.index, cr.prompt_texts[size_t(c.prompt_index)], json(), "", false)))
        return false;
  size_t open = choices.size();
  while (open > 0) {
    if (std::chrono::steady_clock::now() > deadline)
      return sink.write(stream_timeout_event(ctx) + "data: [DONE]\n\n");
    for (auto& c : choices) {
      if (c.done) continue;
      auto e = c.stream->next(choices.size() == 1 ? 0.05 : 0.002);
      if (!e) {
        if (!sink.alive()) return false;
        continue;
      }
      const std::string text = c.apply(*e, ctx.metrics);
      const bool want_lp = e->token >= 0 && cr.logprobs >= 0 && !c.stopped_by_string;
      const json logprob = want_lp ? openai::token_logprobs(*ctx.model.tokenizer, *e, true) : json();
      if (c.tools && c.tools->calls().size() > c.calls_sent) {
        if (!send(reply.tool_calls_chunk(c.index, c.tools->calls(), c.calls_sent))) return false;
        c.calls_sent = c.tools->calls().size();
      }
      if (c.done) {
        --open;
        if ((c.end.finish == FinishReason::Cancelled || c.end.finish == FinishReason::Error) &&
            !c.stopped_by_string)
          return sink.write(stream_error_event(c.end) + "data: [DONE]\n\n");
        if (!send(reply.chunk(c.index, text, json(), c.finish_reason(), false))) return false;
      } else if (!text.empty() || want_lp) {
        if (!send(reply.chunk(c.index, text, logprob, "", false))) return false;
      }
    }
  }
  if (cr.include_usage && !send(reply.usage_chunk(choices))) return false;
  return sink.write("data: [DONE]\n\n");
}

}  // namespace

void reply_when_done(ServerContext& ctx, const http::Request& req, http::Response& res, Until deadline,
                     const std::function<bool(Until)>& step, const std::function<std::string()>& body,
                     const std::function<void()>& cancel) {
  try {
    while (!step(std::chrono::steady_clock::now() + std::chrono::milliseconds(100))) {
      if (std::chrono::steady_clock::now() > deadline) throw ctx.timed_out();
      if (req.client_gone()) {
        cancel();
        res.status = 499;  // (nginx's "client closed request": nobody reads it; the metrics do)
        return;
      }
    }
    res.set_content(body(), "application/json");
  } catch (...) {
    cancel();
    throw;
  }
}

std::string stream_timeout_event(const ServerContext& ctx) {
  return "data: " + openai::dump(ctx.timed_out().body()) + "\n\n";
}

std::string stream_error_event(const Event& end) {
  const openai::ApiError e = end.finish == FinishReason::Cancelled
                                 ? openai::ApiError(503, "server_shutting_down",
                                                    "the server cancelled the request: it is shutting down")
                                 : openai::ApiError(500, "internal_error", "generation failed: " + end.error);
  return "data: " + openai::dump(e.body()) + "\n\n";
}

void post_completion(ServerContext& ctx, const http::Request& req, http::Response& res, bool chat) {
  const Until deadline = ctx.request_deadline();
  const json body = openai::parse_body(req.body);
  auto cr =
      std::make_shared<const openai::CompletionRequest>(openai::parse_completion(body, chat, ctx.model));
  auto reply = std::make_shared<openai::CompletionReply>(
      openai::CompletionReply{*cr, (chat ? "chatcmpl-" : "cmpl-") + std::to_string(ctx.next_id++),
                              ctx.model.name, openai::unix_time()});
  auto choices = std::make_shared<std::vector<openai::Choice>>();
  try {
    for (size_t p = 0; p < cr->prompts.size(); ++p)
      for (int j = 0; j < cr->n; ++j) {
        Request r = cr->prompts[p];
        if (r.sampling.has_seed) r.sampling.seed += uint64_t(j);  // n samples, each reproducible
        openai::Choice c(*ctx.model.tokenizer, r.prompt, cr->stop);
        if (cr->tools.parse) c.tools = std::make_unique<openai::ToolCallParser>(ctx.model.tool_style);
        c.index = int(choices->size());
        c.prompt_index = int(p);
        c.stream = ctx.engine.submit(std::move(r));
        choices->push_back(std::move(c));
      }
  } catch (const EngineFull& e) {
    for (auto& c : *choices) c.stream->cancel();
    res.set_header("Retry-After", "1");
    throw openai::ApiError(503, "server_overloaded", e.what());
  } catch (const openai::ApiError&) {
    for (auto& c : *choices) c.stream->cancel();
    throw;
  } catch (const Error& e) {
    for (auto& c : *choices) c.stream->cancel();
    throw openai::bad_request(e.what());
  }
  if (!cr->stream) {
    reply_when_done(
        ctx, req, res, deadline,
        [&ctx, cr, choices](Until until) {
          for (auto& c : *choices)
            while (!c.done) {
              if (std::chrono::steady_clock::now() > until) return false;
              const auto e = c.stream->next(0.05);
              if (!e) return false;
              c.apply(*e, ctx.metrics);
              if (e->token >= 0 && cr->logprobs >= 0 && !c.stopped_by_string)
                c.logprobs.push_back(openai::token_logprobs(*ctx.model.tokenizer, *e, true));
            }
          return true;
        },
        [reply, choices] { return openai::dump(reply->response(*choices)); },
        [choices] {
          for (auto& c : *choices)
            if (!c.done) c.stream->cancel();
        });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.content_type = "text/event-stream";
  res.stream = [&ctx, cr, reply, choices, deadline](http::Sink& sink) {  // (reply refers to *cr)
    try {
      return stream_events(ctx, *reply, *choices, sink, deadline);
    } catch (const std::exception& e) {  // end this stream, never the server
      std::fprintf(stderr, "rill: stream %s failed: %s\n", reply->id.c_str(), e.what());
      return false;
    }
  };
  res.finally = [choices] {
    for (auto& c : *choices)
      if (!c.done) c.stream->cancel();  // the client went away (or the stream failed): free its blocks
  };
}

}  // namespace rill
