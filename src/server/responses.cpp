#include "server/responses.h"

#include <chrono>
#include <ctime>

namespace rill::openai {

std::string StopMatcher::feed(const std::string& delta) {
  if (stopped_) return "";
  pending_ += delta;
  // The earliest stop string wins.
  size_t at = std::string::npos;
  for (const auto& s : stops_) at = std::min(at, pending_.find(s));
  if (at != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, at);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that begins some stop string.
  size_t hold = 0;
  for (const auto& s : stops_)
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(pending_);
  return out;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int64_t unix_time() {
  return int64_t(std::time(nullptr));
}

Choice::Choice(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt, std::vector<std::string> stops)
    : detok(std::make_unique<IncrementalDecoder>(tokenizer, true, prompt)),
      stop(std::make_unique<StopMatcher>(std::move(stops))),
      submitted(now_seconds()),
      last_token(submitted) {}

std::string Choice::apply(const Event& e, ServerMetrics& metrics) {
  const double t = now_seconds();
  if (e.token < 0) {
    done = true;
    end = e;
    std::string tail;
    if (!stop->stopped()) tail = stop->feed(detok->finish()) + stop->flush();
    if (tools) tail = tools->feed(tail) + tools->finish();
    text += tail;
    metrics.request_done(t - submitted);
    return tail;
  }
  if (tokens == 0)
    metrics.first_token(t - submitted);
  else
    metrics.between_tokens(t - last_token);
  last_token = t;
  ++tokens;
  if (stop->stopped()) return "";  // tokens that raced the cancellation
  std::string out = stop->feed(detok->add(e.token));
  if (stop->stopped()) {
    stopped_by_string = true;
    stop_tokens = tokens;
    stream->cancel();
  }
  if (tools) out = tools->feed(out);
  text += out;
  return out;
}

std::string Choice::finish_reason() const {
  if (tools && !tools->calls().empty() && (stopped_by_string || end.finish == FinishReason::Stop))
    return "tool_calls";
  if (stopped_by_string) return "stop";
  return openai::finish_reason(end.finish);
}

json token_logprobs(const Tokenizer& tok, const Event& e, bool chat) {
  auto text = [&](int32_t id) { return tok.decode({id}, false); };
  if (chat) {
    json top = json::array();
    for (const auto& [id, lp] : e.top_logprobs) top.push_back({{"token", text(id)}, {"logprob", lp}});
    return {{"token", text(e.token)}, {"logprob", e.logprob}, {"top_logprobs", top}};
  }
  json top = json::object();
  for (const auto& [id, lp] : e.top_logprobs) top[text(id)] = lp;
  return {{"token", text(e.token)}, {"logprob", e.logprob}, {"top_logprobs", top}};
}

std::string finish_reason(FinishReason r) {
  switch (r) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "abort";
    case FinishReason::Error:
      return "error";
    default:
      return "";
  }
}

json usage(int prompt_tokens, int completion_tokens, int cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

namespace {

// The completions API's top_logprobs ({token: logprob}) from the chat form's list.
json completion_top(const json& chat_style) {
  json top = json::object();
  for (const auto& t : chat_style["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
  return top;
}

}  // namespace

json CompletionReply::chunk(int index, const std::string& text, const json& logprob,
                            const std::string& finish, bool role) const {
  const CompletionRequest& cr = request;
  json choice;
  if (cr.chat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (!text.empty() || role) delta["content"] = text;
    choice = {{"index", index},
              {"delta", delta},
              {"logprobs", logprob.is_null() ? json() : json{{"content", {logprob}}}},
              {"finish_reason", finish.empty() ? json() : json(finish)}};
  } else {
    json lp;
    if (!logprob.is_null())
      lp = {{"tokens", {logprob["token"]}},
            {"token_logprobs", {logprob["logprob"]}},
            {"top_logprobs", {completion_top(logprob)}},
            {"text_offset", {0}}};
    choice = {{"index", index},
              {"text", text},
              {"logprobs", lp},
              {"finish_reason", finish.empty() ? json() : json(finish)}};
  }
  json c = {{"id", id},
            {"object", cr.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", model},
            {"choices", {choice}}};
  if (cr.include_usage) c["usage"] = nullptr;
  return c;
}

json CompletionReply::tool_calls_chunk(int index, const std::vector<json>& calls, size_t from) const {
  json c = chunk(index, "", json(), "", false);
  json list = json::array();
  for (size_t i = from; i < calls.size(); ++i) {
    json call = calls[i];
    call["index"] = i;
    list.push_back(call);
  }
  c["choices"][0]["delta"]["tool_calls"] = list;
  return c;
}

json CompletionReply::usage_chunk(const std::vector<Choice>& choices) const {
  return {{"id", id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", total_usage(choices)}};
}

json CompletionReply::total_usage(const std::vector<Choice>& choices) const {
  int prompt = 0, completion = 0, cached = 0;
  std::vector<bool> counted(request.prompts.size(), false);
  for (const auto& c : choices) {
    // A stop string ends the completion at its token, whatever the engine made before it saw the cancellation
    // (one more token, or a speculative step's several): the same count with and without speculation.
    completion += c.stopped_by_string ? c.stop_tokens : c.end.completion_tokens;
    if (!counted[size_t(c.prompt_index)]) {
      counted[size_t(c.prompt_index)] = true;
      prompt += int(request.prompts[size_t(c.prompt_index)].prompt.size());
      cached += c.end.cached_tokens;
    }
  }
  return usage(prompt, completion, cached);
}

json CompletionReply::response(const std::vector<Choice>& choices) const {
  const CompletionRequest& cr = request;
  json out = json::array();
  for (const auto& c : choices) {
    if (c.end.finish == FinishReason::Error && !c.stopped_by_string)
      throw ApiError(500, "internal_error", "generation failed: " + c.end.error);
    if (c.end.finish == FinishReason::Cancelled && !c.stopped_by_string)
      throw ApiError(503, "server_shutting_down", "the server cancelled the request: it is shutting down");
    if (cr.chat) {
      json lp;
      if (cr.logprobs >= 0) lp = {{"content", c.logprobs}};
      json message = {{"role", "assistant"}, {"content", c.text}};
      if (c.tools && !c.tools->calls().empty()) {
        message["tool_calls"] = c.tools->calls();
        if (c.text.find_first_not_of(" \t\r\n") == std::string::npos) message["content"] = nullptr;
      }
      out.push_back(
          {{"index", c.index}, {"message", message}, {"logprobs", lp}, {"finish_reason", c.finish_reason()}});
    } else {
      json lp;
      if (cr.logprobs >= 0) {
        json tokens = json::array(), values = json::array(), tops = json::array(), offsets = json::array();
        size_t offset = cr.echo ? cr.prompt_texts[size_t(c.prompt_index)].size() : 0;
        for (const auto& t : c.logprobs) {
          tokens.push_back(t["token"]);
          values.push_back(t["logprob"]);
          tops.push_back(completion_top(t));
          offsets.push_back(offset);
          offset += t["token"].get<std::string>().size();
        }
        lp = {
            {"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offsets}};
      }
      const std::string text = (cr.echo ? cr.prompt_texts[size_t(c.prompt_index)] : "") + c.text;
      out.push_back(
          {{"index", c.index}, {"text", text}, {"logprobs", lp}, {"finish_reason", c.finish_reason()}});
    }
  }
  return {{"id", id},           {"object", cr.chat ? "chat.completion" : "text_completion"},
          {"created", created}, {"model", model},
          {"choices", out},     {"usage", total_usage(choices)}};
}

}  // namespace rill::openai
