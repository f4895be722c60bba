// ChatTemplate: renders a model's chat template (a Jinja2 subset: the statements, expressions, filters
// and tests real chat templates use) exactly as transformers' apply_chat_template does. Parsing happens
// once, in the constructor; render() is const and may run on many threads at once.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace rill {

namespace jinja {
struct Program;
}

class ChatTemplate {
 public:
  // Throws rill::Error "chat template line N: ..." naming an unsupported construct.
  explicit ChatTemplate(const std::string& source);
  ~ChatTemplate();

  // context: {"messages": [...], "add_generation_prompt": bool, "bos_token": ..., "eos_token": ...,
  // "tools": [...], ...}; every key becomes a template variable. Throws rill::Error for template errors,
  // including raise_exception(), with the line.
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  std::unique_ptr<jinja::Program> program_;
};

// What tokenizer_config.json says about chat: the template (a string, or the entry named "default" of a
// list) and the BOS/EOS strings (plain strings or {"content": ...} objects).
struct ChatConfig {
  std::string chat_template;  // empty when the file has none
  std::string bos_token, eos_token;
};
ChatConfig read_chat_config(const std::string& tokenizer_config_path);

}  // namespace rill
