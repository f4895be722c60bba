// Fuzzes the OpenAI request path below HTTP: a body parsed as JSON (server/json_body) and read as a
// completion, a chat completion or a session generation (server/openai: validation, chat template, tokenizer,
// response_format and grammar compilation), with the qwen2-style tokenizer and its chat template. The first
// byte picks the route. Every input must end in a result or an openai::ApiError (a 4xx/5xx answer); any other
// exception is a finding (the server would answer it as a 500 naming a library's exception, as /tokenize once
// did).
#include <cstdint>
#include <memory>

#include "cli/model_loading.h"
#include "common.h"
#include "server/json_body.h"
#include "server/openai.h"
#include "server/structured.h"
#include "template/chat_template.h"
#include "tokenizer/hf_tokenizer.h"

namespace {

rill::openai::ModelInfo* info = nullptr;

void setup() {
  const std::string dir = rill::fuzz::shared_dir() + "/data/tokenizers/qwen2-style";
  static auto tok = rill::HfTokenizer::load(dir + "/tokenizer.json");
  const auto chat = rill::cli::open_chat(dir, "");
  static auto tmpl = std::make_unique<rill::ChatTemplate>(chat.template_source);
  info = new rill::openai::ModelInfo();
  info->name = "m";
  info->tokenizer = tok.get();
  info->chat_template = tmpl.get();
  info->bos_token = chat.bos_token;
  info->eos_token = chat.eos_token;
  info->max_model_len = 512;
  info->tool_style = rill::openai::tool_style_of(chat.template_source);
  std::vector<std::string> bytes = tok->token_bytes();
  info->vocab = std::make_shared<rill::grammar::Vocabulary>(std::move(bytes), std::vector<int32_t>{0});
  info->grammars = std::make_shared<rill::openai::GrammarCache>();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setup();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const auto j = rill::openai::parse_body(body);
    switch (data[0] % 3) {
      case 0:
        rill::openai::parse_completion(j, false, *info);
        break;
      case 1:
        rill::openai::parse_completion(j, true, *info);
        break;
      default:
        rill::openai::parse_session_generation(nlohmann::ordered_json::object(), j, *info);
        break;
    }
  } catch (const rill::openai::ApiError&) {
  }
  return 0;
}
