// Fuzzes the chat-template interpreter (template/): the input is a Jinja template, parsed and rendered with a
// conversation and tools as the server passes them. Any input ends in text or a rill::Error with its line.
#include "template/chat_template.h"

#include <cstdint>

#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::ordered_json context = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "user"}, {"content", "Hi there"}},
        {{"role", "assistant"},
         {"content", "Hello."},
         {"tool_calls", {{{"type", "function"}, {"function", {{"name", "f"}, {"arguments", {{"x", 1}}}}}}}}},
        {{"role", "tool"}, {"content", "42"}}}},
      {"tools",
       {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", {{"type", "object"}}}}}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"}};
  try {
    const rill::ChatTemplate t(std::string(reinterpret_cast<const char*>(data), size));
    (void)t.render(context);
  } catch (const rill::Error&) {
  }
  return 0;
}
