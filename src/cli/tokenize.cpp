// rill tokenize | detokenize | chat-template: the tokenizer and chat template of a model, on their own.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/options.h"
#include "core/error.h"
#include <filesystem>

#include "formats/hf_config.h"
#include "formats/json_file.h"
#include "formats/checkpoint.h"
#include "template/chat_template.h"

namespace rill::cli {

namespace {

// --model may be a full model or a directory with only tokenizer files; the vocabulary check needs
// the model's config.json, never its weights.
std::unique_ptr<Tokenizer> need_tokenizer(const std::string& model, const std::string& tokenizer) {
  const std::string config_path = model_dir(model) + "/config.json";
  std::unique_ptr<ModelConfig> config;
  if (std::filesystem::is_directory(model) && std::filesystem::exists(config_path))
    config = std::make_unique<ModelConfig>(read_hf_config(config_path));
  auto tok = open_tokenizer(model, tokenizer, config.get());
  RILL_CHECK(tok, model + ": no tokenizer.json or tokenizer.bin beside the model; pass --tokenizer");
  return tok;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  RILL_CHECK(in, path + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

Run add_tokenize(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, text, text_file, output = "text";
    bool no_special = false, split_special = false;
  };
  auto a = std::make_shared<Args>();
  add_model_option(app, a->model, "Model directory (or .bin) whose tokenizer to use");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json / tokenizer.bin (default: beside the model)");
  auto* text = app.add_option("--text", a->text, "Text to tokenize");
  auto* file = app.add_option("--text-file", a->text_file, "File whose contents to tokenize");
  text->excludes(file);
  app.add_flag("--no-special", a->no_special, "Do not add the tokenizer's special tokens (BOS, ...)");
  app.add_flag("--split-special", a->split_special, "Treat special tokens written in the text as plain text");
  app.add_option("--output", a->output, "text: ids separated by spaces; json: {\"ids\": [...]}")
      ->check(CLI::IsMember({"text", "json"}));
  return [a, text, file] {
    a->model = model_or_default(a->model);
    RILL_CHECK(text->count() + file->count() > 0, "give --text TEXT or --text-file FILE");
    auto tok = need_tokenizer(a->model, a->tokenizer);
    const auto ids = tok->encode(file->count() ? read_file(a->text_file) : a->text, !a->no_special, !a->split_special);
    if (a->output == "json") {
      std::printf("%s\n", nlohmann::json({{"ids", ids}}).dump().c_str());
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
      std::printf("\n");
    }
    return 0;
  };
}

Run add_detokenize(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, ids;
    bool skip_special = false;
  };
  auto a = std::make_shared<Args>();
  add_model_option(app, a->model, "Model directory (or .bin) whose tokenizer to use");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json / tokenizer.bin (default: beside the model)");
  app.add_option("--ids", a->ids, "Comma-separated token ids")->required();
  app.add_flag("--skip-special", a->skip_special, "Leave out special tokens");
  return [a] {
    a->model = model_or_default(a->model);
    auto tok = need_tokenizer(a->model, a->tokenizer);
    const std::string text = tok->decode(parse_id_list(a->ids, "--ids"), a->skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  };
}

Run add_chat_template(CLI::App& app) {
  struct Args {
    std::string model, messages_file, chat_template;
    bool add_generation_prompt = false;
  };
  auto a = std::make_shared<Args>();
  add_model_option(app, a->model, "Model directory with tokenizer_config.json");
  app.add_option("--messages-file", a->messages_file,
                 "JSON file: a list of messages, or {\"messages\": [...], \"tools\": [...], ...}")
      ->required();
  app.add_flag("--add-generation-prompt", a->add_generation_prompt, "End with the assistant's turn header");
  app.add_option("--chat-template", a->chat_template, "Jinja template file to use instead of the model's");
  return [a] {
    a->model = model_or_default(a->model);
    const ChatSetup chat = open_chat(a->model, a->chat_template);
    const nlohmann::ordered_json input = read_ordered_json_file(a->messages_file);
    nlohmann::ordered_json ctx = input.is_array() ? nlohmann::ordered_json{{"messages", input}} : input;
    RILL_CHECK(ctx.is_object() && ctx.contains("messages") && ctx["messages"].is_array(),
               a->messages_file + ": expected a list of messages or an object with 'messages'");
    if (!ctx.contains("tools")) ctx["tools"] = nullptr;
    if (!ctx.contains("documents")) ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = a->add_generation_prompt;
    ctx["bos_token"] = chat.bos_token;
    ctx["eos_token"] = chat.eos_token;
    const std::string out = ChatTemplate(chat.template_source).render(ctx);
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  };
}

}  // namespace rill::cli
