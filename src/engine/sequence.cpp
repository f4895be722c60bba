#include "engine/sequence.h"

namespace rill {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "";
}

std::optional<Event> RequestStream::next(double timeout_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  if (timeout_seconds < 0) {
    cv_.wait(lock, [&] { return !events_.empty(); });
  } else if (!cv_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), [&] { return !events_.empty(); })) {
    return std::nullopt;
  }
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void RequestStream::push(Event e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_one();
}

}  // namespace rill
